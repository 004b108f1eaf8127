"""Kraken Spot WebSocket v2: `trade` and `ticker` channels (`feed`), their codec (`codec`,
JSON numbers read as exact decimals) and the REST trade history the backfill pages by time
(`rest`)."""
