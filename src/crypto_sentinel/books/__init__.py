"""Level-2 order books: the shared book structure, venue-neutral book events, the engine's
book processor and the rebuild of a book at any moment from the lake."""
