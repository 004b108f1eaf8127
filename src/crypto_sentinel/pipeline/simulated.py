"""The built-in simulator as a run's source: started in the process, continuing the market
the lake (and over Kafka, the log's tail) already holds, with the configured faults.

`sentinel simulate` uses `simulator_resume` and `fault_plan` the same way.
"""

from __future__ import annotations

import logging
from typing import Any

from crypto_sentinel.config import Settings
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.sources.venues import simulated_name

#: Frames per partition read back from the Kafka tail when the built-in simulator resumes.
KAFKA_RESUME_TAIL = 2000

log = logging.getLogger(__name__)


async def start_simulator(settings: Settings, reader: LakeReader, venue: str) -> Any:
    """A running SimulatorServer speaking `venue`'s protocol; its data is stored under the
    venue's simulated twin name and never mixed with the real venue's history."""
    from crypto_sentinel.simulator import SimulatorServer

    s = settings
    name = simulated_name(venue)
    options: dict[str, Any] = {} if venue == "coinbase" else {"venue": venue}
    kafka = s if s.bus == "kafka" else None
    simulator = SimulatorServer(
        products=s.products_for(venue),
        rate=s.simulator_rate,
        seed=s.simulator_seed,
        max_trades=s.simulator_max_trades,
        wait_for_subscriber=True,
        faults=fault_plan(s.simulator_faults),
        **options,
        resume=simulator_resume(reader, s.products_for(venue), kafka, name),
    )
    await simulator.start()
    log.warning(
        "SIMULATED DATA: built-in %s simulator at %s, %.0f trades/s; stored as exchange"
        " %r, never mixed with real %s history",
        venue, simulator.ws_url, s.simulator_rate, name, venue,
    )  # fmt: skip
    return simulator


def rest_url_of(ws_url: str) -> str:
    """The simulator serves REST on its WebSocket port."""
    return ws_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1).rstrip("/")


def simulator_resume(
    reader: LakeReader,
    products: list[str],
    kafka: Settings | None = None,
    exchange: str = "simulator",
) -> dict[str, Any]:
    """Last trade id and price per simulated product in the lake (under `exchange`, the
    simulated twin's name), and over Kafka also in the log's tail (frames not processed yet;
    Coinbase-protocol frames only); {} (a fresh walk) if none or if unreadable."""
    from crypto_sentinel.bus.kafka import tail_texts
    from crypto_sentinel.simulator.resume import merge_points, points_from_frames, resume_points

    try:
        points = resume_points(reader, products, exchange)
        if kafka is not None and exchange == "simulator":
            tail = tail_texts(kafka, "simulator", KAFKA_RESUME_TAIL)
            points = merge_points(points, points_from_frames(tail, products))
    except Exception as exc:
        log.warning("cannot read the simulator's last trades (%s): fresh start", exc)
        return {}
    for product, point in sorted(points.items()):
        log.info(
            "simulator resumes %s after trade %d at price %s", product, point.trade_id, point.price
        )
    return dict(points)


def fault_plan(text: str) -> Any:
    """A FaultPlan for the simulator, or None when no fault is configured."""
    from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec

    spec = FaultSpec.parse(text)
    return FaultPlan(spec) if spec.active else None
