"""Coinbase Advanced Trade: `market_trades`, `ticker` and `heartbeats` (`feed`, resubscribing
on a `sequence_num` break, backfilling from the recent-trades window) and their codec
(`codec`)."""
