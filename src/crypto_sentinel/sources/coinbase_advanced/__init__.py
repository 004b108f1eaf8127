"""Coinbase Advanced Trade: `market_trades`, `ticker` and `heartbeats` (`feed`, resubscribing
on a `sequence_num` break) and their codec (`codec`)."""
