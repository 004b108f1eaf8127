"""Maintenance inside a running pipeline: a pass every interval, in a thread, taking turns
with the stream writer of the same process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from crypto_sentinel.lake.location import LakeRoot
from crypto_sentinel.lake.maintenance.maintainer import Maintainer
from crypto_sentinel.lake.maintenance.policy import Policy

if TYPE_CHECKING:
    from crypto_sentinel.config import Settings

log = logging.getLogger(__name__)


async def run_maintenance_forever(
    settings: Settings,
    lake: LakeRoot,
    stop: asyncio.Event,
    writer_lock: contextlib.AbstractContextManager[Any],
) -> None:
    """Maintain the lake every `maintenance_interval_s` until `stop` is set (start it from
    the pipeline). Delta work runs in a thread, so the event loop and the stream go on;
    `writer_lock` is the stream writer's, so the two take turns."""
    if not settings.maintenance_enabled:
        log.info("lake maintenance disabled")
        return
    maintainer = Maintainer(
        lake, Policy.from_settings(settings), should_stop=stop.is_set, writer_lock=writer_lock
    )
    interval = settings.maintenance_interval_s
    log.info("lake maintenance every %.0f s", interval)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
            return
        except TimeoutError:
            pass
        try:
            await asyncio.to_thread(maintainer.run_once)
        except Exception:
            log.exception("lake maintenance pass failed")
