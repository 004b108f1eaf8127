"""Kafka phase of `sentinel bench ingest`: `sentinel process` draining a backlog.

A local broker (one KRaft node on free ports, in a folder of its own) gets N trades of a
recording published into the raw topic the way `sentinel ingest` publishes them (the same
publisher: topic per exchange, product id as key, receipt line before the frame). Then
`sentinel process` starts in a child on an empty lake and is timed until every frame is in
bronze and every trade in silver: frames/s from its start, and from its first to its last
commit (start-up, consumer-group join and the first poll left out).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    CommitTail,
    discard,
    finish,
    frames_and_trades,
    free_port_run,
    kill_all,
    recording,
    sentinel_env,
    spawn,
    watch,
)
from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T

DEADLINE_SECONDS = 600
INSTALL_MARKER = ".sentinel-install.json"  # written by `sentinel kafka install` when complete


def jars(data_dir: Path) -> Path | None:
    """The installed Kafka jars' folder (`sentinel kafka install`), or None."""
    from crypto_sentinel.ops import kafka

    home = kafka.kafka_home(data_dir)
    return home.parent if (home / "libs" / INSTALL_MARKER).is_file() else None


async def publish(bootstrap: str, prefix: str, path: Path) -> int:
    """Publish a recording as `sentinel ingest` would; return the frames delivered."""
    from crypto_sentinel.bus.kafka import KafkaPublisher, ensure_topics
    from crypto_sentinel.sources.replay import ReplaySource

    settings = load_settings(kafka_bootstrap=bootstrap, kafka_topic_prefix=prefix)
    await asyncio.to_thread(ensure_topics, settings, ["simulator"])
    publisher = KafkaPublisher(settings)
    await ReplaySource(path, exchange="simulator").run(publisher.publish)
    if await asyncio.to_thread(publisher.flush, 120):
        raise RuntimeError("frames left undelivered to Kafka")
    return publisher.delivered


def run(workdir: Path, trades: int) -> dict[str, Any]:
    from crypto_sentinel.ops import kafka

    installed = jars(load_settings().data_dir)
    if installed is None:
        return {"skipped": "Kafka jars are not installed: run `sentinel kafka install` first"}
    rec = recording(workdir, trades)
    frames, expected = frames_and_trades(rec)
    run_dir = workdir / f"kafka-{int(time.time())}"
    lake, logs, broker = run_dir / "lake", run_dir / "logs", run_dir / "broker"
    broker.mkdir(parents=True)
    (broker / "kafka").symlink_to(installed)  # the broker's own folder, the installed jars
    print("kafka: starting a broker ...", flush=True)
    kafka.start(broker, nodes=1, port=free_port_run(2), timeout=120)
    proc = None
    try:
        bootstrap, prefix = kafka.bootstrap_servers(broker), f"bench{uuid.uuid4().hex[:6]}."
        print(f"kafka: publishing {frames:,} frames ...", flush=True)
        t0 = time.perf_counter()
        published = asyncio.run(publish(bootstrap, prefix, rec))
        publish_seconds = time.perf_counter() - t0
        gc.collect()  # the producer (a reference cycle) disconnects now, not at broker stop
        group = f"bench-{uuid.uuid4().hex[:8]}"
        env = sentinel_env(lake, run_dir / "data", KAFKA_BOOTSTRAP=bootstrap,
                           KAFKA_TOPIC_PREFIX=prefix, KAFKA_GROUP=group)  # fmt: skip
        bronze, silver = CommitTail(T.BRONZE.path(lake)), CommitTail(T.TRADES.path(lake))
        print("kafka: sentinel process draining the backlog ...", flush=True)
        started_ns = time.time_ns()
        proc = spawn(["-m", "crypto_sentinel.cli", "process"], logs / "process.log", env)
        rss = watch(proc)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while bronze.poll() < published or silver.poll() < expected:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"backlog not drained ({bronze.rows:,} of {published:,} "
                                   f"frames); see {logs / 'process.log'}")  # fmt: skip
            time.sleep(0.25)
        peak = finish(proc, peak=rss)
    finally:
        kill_all(proc)
        kafka.stop(broker)
    done_ns = max(bronze.last_commit_ns, silver.last_commit_ns)
    seconds = (done_ns - started_ns) / 1e9
    # From the first commit on: the frames committed after it, over the time after it.
    steady = (done_ns - bronze.first_commit_ns) / 1e9
    after_first = published - bronze.first_commit_rows
    result = {
        "name": "kafka: sentinel process draining a backlog",
        "frames": published,
        "trades": silver.rows,
        "publish_seconds": round(publish_seconds, 2),
        "seconds_from_start": round(seconds, 3),
        "frames_per_s_from_start": round(published / seconds),
        "seconds_first_to_last_commit": round(steady, 3),
        "frames_per_s_first_to_last_commit": round(after_first / steady) if steady > 0 else 0,
        "bronze_commits": bronze.commits,
        "peak_rss_mb": peak,
    }
    discard(lake, broker, run_dir / "data")
    return result


def rows(r: dict[str, Any], decode_floor: dict[str, Any]) -> list[str]:
    """Markdown rows of the Kafka phase, beside the decode floor of the same invocation."""
    if "skipped" in r:
        return [f"#### Kafka backlog: skipped — {r['skipped']}", ""]
    return [
        f"#### Kafka backlog: `sentinel process` draining {r['frames']:,} frames "
        f"({r['trades']:,} trades)",
        "",
        "| run | frames/s | peak RSS |",
        "|---|---|---|",
        f"| baseline: read + decode only (decode floor) | {decode_floor['frames_per_s']:,} "
        f"| {decode_floor['peak_rss_mb']} MB |",
        f"| `sentinel process`, from process start to everything committed "
        f"({r['seconds_from_start']} s) | {r['frames_per_s_from_start']:,} "
        f"| {r['peak_rss_mb']} MB |",
        f"| `sentinel process`, first to last commit ({r['seconds_first_to_last_commit']} s, "
        f"{r['bronze_commits']} bronze commits; frames after the first commit) "
        f"| {r['frames_per_s_first_to_last_commit']:,} | |",
        "",
        "Target: >= 100,000 frames/s.",
        "",
    ]
