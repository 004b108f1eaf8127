"""The long-lived processes' event loop: the collector tuned before it starts."""

from __future__ import annotations

import gc

from crypto_sentinel.eventloop import FULL_COLLECTION_EVERY, run_event_loop


async def _seen() -> tuple[tuple[int, int, int], int]:
    return gc.get_threshold(), gc.get_freeze_count()


def test_the_loop_runs_with_start_up_objects_frozen_and_full_collections_spaced() -> None:
    before = gc.get_threshold()
    try:
        threshold, frozen = run_event_loop(_seen())
        assert threshold == (before[0], before[1], FULL_COLLECTION_EVERY)
        assert before[2] < FULL_COLLECTION_EVERY
        assert frozen > 1000  # this process's modules and classes, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
