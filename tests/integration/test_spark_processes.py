"""No Spark process outlives what started it (issue 22): `sentinel spark submit` ends its JVM,
the job's Python driver and the JVM's Python workers after an error, and a SIGTERM or SIGINT
sent to the CLI alone; `sentinel spark cluster stop` ends the daemons and the executors they
started. A normal end (and a SIGKILL of the whole job) is checked by the conformance runs
(test_spark_conformance.py), which end that way anyway: one JVM start fewer here.

Every process of a run is found in the process table by a marker in its environment, which
the JVM, the driver, the daemons and the executors all inherit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable

from crypto_sentinel.bus.kafka import KafkaPublisher, ensure_topics
from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.simulator import write_recording
from crypto_sentinel.sources.replay import ReplaySource
from crypto_sentinel.spark import ops
from tests.conftest import ROOT
from tests.integration.spark_procs import MARK, marked, wait_until_none

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def topics(broker: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A small recording in Kafka: (bootstrap, topic prefix)."""
    bootstrap, prefix = broker[1], f"p{uuid.uuid4().hex[:8]}."
    recording = tmp_path_factory.mktemp("rec") / "rec.ndjson"
    write_recording(recording, ["BTC-USD", "ETH-USD"], 200, seed=2)

    async def publish() -> None:
        settings = load_settings(kafka_bootstrap=bootstrap, kafka_topic_prefix=prefix)
        await asyncio.to_thread(ensure_topics, settings, ["simulator"])
        publisher = KafkaPublisher(settings)
        await ReplaySource(recording, exchange="simulator").run(publisher.publish)
        assert await asyncio.to_thread(publisher.flush, 30) == 0

    asyncio.run(publish())
    ops.install(load_settings(spark_jars_cache=ROOT / ".sentinel" / "spark"), quiet=True)
    return bootstrap, prefix


def env(topics: tuple[str, str], lake: Path, mark: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    return {
        **base,
        MARK: mark,
        "SENTINEL_KAFKA_BOOTSTRAP": topics[0],
        "SENTINEL_KAFKA_TOPIC_PREFIX": topics[1],
        "SENTINEL_LAKE_DIR": str(lake),
        "SENTINEL_DATA_DIR": str(lake.parent / "data"),
        "SENTINEL_SPARK_JARS_CACHE": str(ROOT / ".sentinel" / "spark"),
        "SENTINEL_MAINTENANCE_ENABLED": "false",
    }


def sentinel(args: list[str], run_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The CLI in a session of its own, as a service manager or the bench starts it: signals
    sent to it below reach it alone, never its children."""
    return subprocess.Popen(
        [sys.executable, "-m", "crypto_sentinel.cli", *args],
        env=run_env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def bronze_rows(lake: Path) -> int:
    path = str(T.BRONZE.path(lake))
    if not DeltaTable.is_deltatable(path):
        return 0
    return int(DeltaTable(path).to_pyarrow_dataset().count_rows())


def wait_for_a_batch(proc: subprocess.Popen[bytes], lake: Path, log: Path) -> None:
    """The job runs: a micro-batch reached the lake (so the Python driver is up). The first
    batch of a fresh JVM takes minutes on a loaded 2-core machine: a generous deadline."""
    deadline = time.monotonic() + 900
    while bronze_rows(lake) == 0:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)


def finish(proc: subprocess.Popen[bytes], log: Path) -> int:
    try:
        return proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(log.read_text(errors="replace")[-3000:]) from None


def test_nothing_outlives_a_signal_to_the_parent_or_an_error(
    topics: tuple[str, str], tmp_path: Path
) -> None:
    """Three runs at once (their JVM start-ups and first batches overlap, which saves a few
    minutes of suite): one ended by SIGTERM, one by SIGINT, each sent to its CLI alone, and
    one that fails."""
    runs = {}
    for name in ("SIGTERM", "SIGINT", "error"):
        mark, log, lake = uuid.uuid4().hex, tmp_path / f"{name}.log", tmp_path / name / "lake"
        lake.parent.mkdir()
        args = ["spark", "submit", "--master", "local[1]"]
        if name == "error":
            lake.write_text("a file where the lake folder should be")  # no tables can be made
            args.append("--available-now")
        runs[name] = (mark, log, lake, sentinel(args, env(topics, lake, mark), log))
    try:
        mark, log, _, proc = runs["error"]
        assert finish(proc, log) != 0
        text = log.read_text(errors="replace")
        assert "streaming query failed: " in text, text[-3000:]
        assert marked(mark) == []
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            mark, log, lake, proc = runs[name]
            wait_for_a_batch(proc, lake, log)
            # the CLI, the JVM and the Python driver (the job starts no Python workers: Spark
            # only reads Kafka, the driver decodes)
            assert len(marked(mark)) >= 3, marked(mark)
            os.kill(proc.pid, sig)  # the CLI only, as `kill PID` or Ctrl-C in its terminal
            finish(proc, log)
            assert marked(mark) == [], log.read_text(errors="replace")[-3000:]
    finally:
        for _, _, _, proc in runs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def test_cluster_stop_ends_daemons_and_executors(topics: tuple[str, str], tmp_path: Path) -> None:
    mark, log, lake = uuid.uuid4().hex, tmp_path / "spark.log", tmp_path / "lake"
    run_env = env(topics, lake, mark)
    start = subprocess.run(
        [sys.executable, "-m", "crypto_sentinel.cli", "spark", "cluster", "start", "--workers",
         "2"], env=run_env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    data = lake.parent / "data"
    proc = None
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        state = ops.cluster_status(data)
        assert state is not None and len(state["worker_pids"]) == 2
        proc = sentinel(["spark", "submit", "--master", state["master_url"]], run_env, log)
        wait_for_a_batch(proc, lake, log)
        executors = [p for p in marked(mark) if "CoarseGrainedExecutorBackend" in p]
        assert executors, marked(mark)
        # the worst end for the job: its CLI killed outright, no chance to forward anything
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # the CLI ends what it started
            proc.wait(timeout=120)
        subprocess.run(
            [sys.executable, "-m", "crypto_sentinel.cli", "spark", "cluster", "stop"],
            env=run_env, capture_output=True, timeout=240,
        )  # fmt: skip
    assert wait_until_none(mark) == []
