"""Spark engine vs embedded engine on the same Kafka topics (`sentinel bench spark`).

One run, one real broker, one simulated recording. For each engine, one after the other (the
machine has 2 cores; running both at once would measure the competition):

* throughput: the whole recording is in Kafka first; the engine starts and drains it into an
  empty lake (wall time from process start, and from its first to its last bronze commit);
* latency: the engine runs and is warmed up, then frames arrive live at a fixed rate; frame ->
  Delta latency of each frame = commit time of the bronze commit holding it (from the Delta
  log) - its receive time (the Kafka header the source set);
* peak RSS of the engine's whole process group (Python and, for Spark, the JVM).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow.parquet as pq
from deltalake import DeltaTable

from bench.ingest import percentiles
from crypto_sentinel.bus.kafka import KafkaPublisher, ensure_topics
from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.ops import kafka
from crypto_sentinel.simulator import write_recording
from crypto_sentinel.sources.replay import ReplaySource
from crypto_sentinel.spark import ops

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
LIVE_RATE = 200  # trades/s in the latency phase (about 2 frames per trade)
LIVE_SECONDS = 30
ENGINES = ("embedded", "spark")


def _free_port_run(count: int) -> int:
    import socket

    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        try:
            for p in range(port, port + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free ports")


async def _publish(
    bootstrap: str, prefix: str, path: Path, exchange: str, speed: float | None
) -> int:
    settings = load_settings(kafka_bootstrap=bootstrap, kafka_topic_prefix=prefix)
    await asyncio.to_thread(ensure_topics, settings, [exchange])
    publisher = KafkaPublisher(settings)
    await ReplaySource(path, exchange=exchange, speed=speed).run(publisher.publish)
    if await asyncio.to_thread(publisher.flush, 60):
        raise RuntimeError("frames left undelivered")
    return publisher.delivered


def _env(work: Path, bootstrap: str, prefix: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    return {
        **base,
        "SENTINEL_KAFKA_BOOTSTRAP": bootstrap,
        "SENTINEL_KAFKA_TOPIC_PREFIX": prefix,
        "SENTINEL_KAFKA_GROUP": f"g{uuid.uuid4().hex[:8]}",
        "SENTINEL_LAKE_DIR": str(work / "lake"),
        "SENTINEL_DATA_DIR": str(work / "data"),
        "SENTINEL_SPARK_JARS_CACHE": str(Path(".sentinel").resolve() / "spark"),
        "SENTINEL_MAINTENANCE_ENABLED": "false",  # compaction would rewrite the measured files
    }


def _start(engine: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    args = ["process"] if engine == "embedded" else ["spark", "submit", "--master", "local[2]"]
    return subprocess.Popen(
        [sys.executable, "-m", "crypto_sentinel.cli", *args],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _group_rss_mb(pgid: int) -> dict[str, float]:
    """RSS of a process group by program (java, python), in MB."""
    total: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pgid:
                continue
            comm = (entry / "comm").read_text().strip()
            if comm != "java" and not comm.startswith("python"):
                continue  # jspawnhelper, chmod, bash: short-lived forks that share the JVM's pages
            name = "java" if comm == "java" else "python"
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total[name] = total.get(name, 0.0) + int(line.split()[1]) / 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


class RssSampler(threading.Thread):
    """Peak RSS of a process group, sampled every 0.25 s."""

    def __init__(self, pgid: int) -> None:
        super().__init__(daemon=True)
        self.pgid = pgid
        self.peak = 0.0
        self.peak_by_program: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            rss = _group_rss_mb(self.pgid)
            self.peak = max(self.peak, sum(rss.values()))
            for name, mb in rss.items():
                self.peak_by_program[name] = max(self.peak_by_program.get(name, 0.0), mb)

    def report(self) -> dict[str, float]:
        return {
            "peak_rss_mb": round(self.peak, 1),
            **{f"peak_rss_{k}_mb": round(v, 1) for k, v in sorted(self.peak_by_program.items())},
        }


def _bronze_rows(lake: Path, source: str | None = None) -> int:
    path = str(T.BRONZE.path(lake))
    if not DeltaTable.is_deltatable(path):
        return 0
    dataset = DeltaTable(path).to_pyarrow_dataset()
    if source is None:
        return int(dataset.count_rows())
    import pyarrow.dataset as ds

    return int(dataset.count_rows(filter=ds.field("source") == source))


def _wait_rows(lake: Path, rows: int, proc: subprocess.Popen[bytes], source: str | None) -> None:
    while _bronze_rows(lake, source) < rows:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited early (code {proc.returncode})")
        time.sleep(0.5)


def commit_latencies(lake: Path, source: str) -> tuple[list[int], list[int]]:
    """(frame -> commit latencies in ns, commit times in ms) of one source's bronze rows,
    read from the Delta log: every commit names its files and carries its timestamp."""
    table = T.BRONZE.path(lake)
    latencies: list[int] = []
    commits: list[int] = []
    for entry in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in entry.read_text().splitlines() if line]
        stamp = next((a["commitInfo"]["timestamp"] for a in actions if "commitInfo" in a), None)
        adds = [unquote(a["add"]["path"]) for a in actions if "add" in a]
        adds = [p for p in adds if f"source={source}" in p]
        if stamp is None or not adds:
            continue
        commits.append(int(stamp))
        for path in adds:
            recv = pq.read_table(table / path, columns=["recv_time"]).column("recv_time")
            for value in recv.cast("int64").to_pylist():
                latencies.append(int(stamp) * 1_000_000 - value * 1000)
    return latencies, commits


def run_throughput(engine: str, work: Path, bootstrap: str, prefix: str, frames: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    proc = _start(engine, _env(work, bootstrap, prefix), work / "engine.log")
    sampler = RssSampler(proc.pid)
    sampler.start()
    started = time.time()
    try:
        _wait_rows(work / "lake", frames, proc, None)
        seconds = time.time() - started
    finally:
        _stop(proc)
        sampler.done.set()
    _, commits = commit_latencies(work / "lake", "simulator")
    trades = DeltaTable(str(T.TRADES.path(work / "lake"))).to_pyarrow_dataset().count_rows()
    steady = (max(commits) - min(commits)) / 1000 if len(commits) > 1 else float("nan")
    return {
        "frames": frames,
        "trades": trades,
        "seconds_from_start": round(seconds, 2),
        "frames_per_s_from_start": round(frames / seconds, 1),
        "seconds_first_to_last_commit": round(steady, 2),
        "bronze_commits": len(commits),
        **sampler.report(),
    }


def run_latency(
    engine: str, work: Path, bootstrap: str, prefix: str, live: Path, warmup: Path
) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    env = _env(work, bootstrap, prefix)
    proc = _start(engine, env, work / "engine.log")
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        warm = asyncio.run(_publish(bootstrap, prefix, warmup, "warmup", None))
        _wait_rows(work / "lake", warm, proc, "warmup")  # JVM warmed up, first batches done
        frames = asyncio.run(_publish(bootstrap, prefix, live, "simulator", 1.0))
        _wait_rows(work / "lake", warm + frames, proc, None)
    finally:
        _stop(proc)
        sampler.done.set()
    latencies, commits = commit_latencies(work / "lake", "simulator")
    return {
        "frames": frames,
        "frames_per_s": round(frames / LIVE_SECONDS, 1),
        **percentiles(latencies),
        "bronze_commits": len(commits),
        **sampler.report(),
    }


def main(trades: int, workdir: Path, port: int) -> dict[str, Any]:
    """`port` is unused (no API here); the CLI passes it to every benchmark."""
    ops.install(load_settings(spark_jars_cache=Path(".sentinel").resolve() / "spark"), quiet=True)
    run = workdir / f"spark-{uuid.uuid4().hex[:6]}"
    backlog = run / "backlog.ndjson"
    write_recording(backlog, PRODUCTS, trades, seed=3)
    live = run / "live.ndjson"
    write_recording(live, PRODUCTS, LIVE_RATE * LIVE_SECONDS, seed=4, rate=LIVE_RATE)
    warmup = run / "warmup.ndjson"
    write_recording(warmup, PRODUCTS, 200, seed=5)
    data = run / "kafka"
    kafka.start(data, nodes=1, port=_free_port_run(2), timeout=120)
    load_before = os.getloadavg()[0]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "command": f"sentinel bench spark --trades {trades} --workdir {workdir}",
        "load_average_start": round(load_before, 1),
    }
    try:
        bootstrap = kafka.bootstrap_servers(data)
        prefix = f"b{uuid.uuid4().hex[:6]}."
        frames = asyncio.run(_publish(bootstrap, prefix, backlog, "simulator", None))
        for engine in ENGINES:
            result[f"{engine}_throughput"] = run_throughput(
                engine, run / f"{engine}-backlog", bootstrap, prefix, frames
            )
        for engine in ENGINES:
            result[f"{engine}_latency"] = run_latency(
                engine, run / f"{engine}-live", bootstrap, f"l{uuid.uuid4().hex[:6]}.", live, warmup
            )
    finally:
        kafka.stop(data)
    result["load_average_end"] = round(os.getloadavg()[0], 1)
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = [
        f"### Spark vs embedded engine on one Kafka topic — {result['date']}",
        f"Machine: {result['machine']}; load average {result['load_average_start']} at start, "
        f"{result['load_average_end']} at the end. Command: `{result['command']}`.",
        "",
        "| measure | embedded (`sentinel process`) | Spark job (`local[2]`) |",
        "|---|---|---|",
    ]
    e, s = result["embedded_throughput"], result["spark_throughput"]
    rows += [
        f"| backlog drained: frames ({e['trades']:,} trades) | {e['frames']:,} | {s['frames']:,} |",
        f"| throughput from process start, frames/s | {e['frames_per_s_from_start']:,} "
        f"({e['seconds_from_start']} s) | {s['frames_per_s_from_start']:,} "
        f"({s['seconds_from_start']} s) |",
        f"| first to last bronze commit | {e['seconds_first_to_last_commit']} s, "
        f"{e['bronze_commits']} commits | {s['seconds_first_to_last_commit']} s, "
        f"{s['bronze_commits']} commits |",
        f"| peak RSS draining, all processes | {e['peak_rss_mb']} MB | {s['peak_rss_mb']} MB "
        f"(JVM {s.get('peak_rss_java_mb')}, Python {s.get('peak_rss_python_mb')}) |",
    ]
    e, s = result["embedded_latency"], result["spark_latency"]
    rows += [
        f"| live at {e['frames_per_s']} frames/s: frame -> Delta p50 / p99 | "
        f"{e['p50_ms']} / {e['p99_ms']} ms | {s['p50_ms']} / {s['p99_ms']} ms |",
        f"| peak RSS live, all processes | {e['peak_rss_mb']} MB | {s['peak_rss_mb']} MB "
        f"(JVM {s.get('peak_rss_java_mb')}, Python {s.get('peak_rss_python_mb')}) |",
    ]
    return "\n".join(rows)
