"""Binance Spot (and Binance.US by URL): combined `aggTrade` and 24 h ticker streams
(`feed`, with aggTrades REST backfill by id and symbols from exchangeInfo) and their codec
(`codec`)."""
