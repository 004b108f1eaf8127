"""Coinbase Exchange: the `ws-feed` WebSocket (`feed`), its codec (`codec`, frame by frame)
and the same rules column-wise for whole micro-batches (`columnar`)."""
