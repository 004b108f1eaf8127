"""Kraken Spot WebSocket v2: `trade` and `ticker` channels (`feed`) and their codec
(`codec`, JSON numbers read as exact decimals)."""
