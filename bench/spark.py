"""Spark engine vs embedded engine on the same Kafka topics (`sentinel bench spark`).

One run, one real broker, one simulated recording. For each engine, one after the other (the
machine has 2 cores; running both at once would measure the competition):

* throughput: the whole recording is in Kafka first; the engine starts and drains it into an
  empty lake (wall time from process start, and from its first to its last bronze commit);
* latency: the engine runs and is warmed up, then frames arrive live at a fixed rate; frame ->
  Delta latency of each frame = commit time of the bronze commit holding it (from the Delta
  log) - its receive time (the receipt line the source wrote before the frame);
* peak RSS of the engine's whole process group (Python and, for Spark, the JVM);
* Spark scaling (issue 22): the same drain with `local[1]`, `local[2]`, and a standalone
  cluster of one and of two one-core workers; frames/s between the first and the last bronze
  commit (the JVM's start-up left out), and the job's own seconds per micro-batch (its log).

Every process it starts ends with it: the engines through `_stop`, the broker and clusters in
`finally`, also when the bench itself gets SIGTERM (turned into SystemExit).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import signal
import statistics
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
from crypto_sentinel.ops.ports import free_port_run
from crypto_sentinel.simulator import write_recording
from crypto_sentinel.sources.replay import ReplaySource
from crypto_sentinel.spark import ops

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
LIVE_RATE = 200  # trades/s in the latency phase (about 2 frames per trade)
LIVE_SECONDS = 30
ENGINES = ("embedded", "spark")
#: (label, master, standalone workers): each standalone worker gets one core
SCALING = (
    ("local[1]", "local[1]", 0),
    ("local[2]", "local[2]", 0),
    ("standalone, 1 worker", "cluster", 1),
    ("standalone, 2 workers", "cluster", 2),
)
_BATCH_LOG = re.compile(
    r"batch (\d+) committed in ([\d.]+)s: (\{[^}]*\}); seconds per step (\{.*\})"
)


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
        "SENTINEL_SPARK_JARS_CACHE": str(_jars_cache()),
        "SENTINEL_MAINTENANCE_ENABLED": "false",  # compaction would rewrite the measured files
    }


def _start(
    engine: str, env: dict[str, str], log: Path, master: str = "local[2]"
) -> subprocess.Popen[bytes]:
    args = ["process"] if engine == "embedded" else ["spark", "submit", "--master", master]
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
    """RSS of a process group or session (the engine's CLI leads both) by program (java,
    python), in MB."""
    total: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if pgid not in (int(stat[2]), int(stat[3])):  # the group, or its session: the
                continue  # submit CLI runs spark-submit in a process group of its own
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


def batch_log(log: Path) -> list[dict[str, Any]]:
    """The Spark job's per-batch lines: batch id, seconds, rows by kind, seconds per step."""
    batches = []
    for line in log.read_text(errors="replace").splitlines():
        found = _BATCH_LOG.search(line)
        if found:
            batches.append(
                {
                    "batch": int(found[1]),
                    "seconds": float(found[2]),
                    "rows": eval_dict(found[3]),
                    "steps": eval_dict(found[4]),
                }
            )
    return batches


def eval_dict(text: str) -> dict[str, Any]:
    """A logged `{'a': 1.5, ...}` (str keys, numbers) without eval."""
    pairs = re.findall(r"'([^']+)': ([\d.]+)", text)
    return {k: float(v) for k, v in pairs}


def batch_summary(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and max seconds per batch after the first (JIT warm-up), and the median of
    each step."""
    steady = batches[1:] or batches
    if not steady:
        return {}
    steps: dict[str, list[float]] = {}
    for b in steady:
        for name, seconds in b["steps"].items():
            steps.setdefault(name, []).append(seconds)
    return {
        "batches": len(batches),
        "first_batch_s": batches[0]["seconds"],
        "steady_batch_median_s": round(statistics.median(b["seconds"] for b in steady), 2),
        "steady_batch_max_s": max(b["seconds"] for b in steady),
        "steady_step_median_s": {k: round(statistics.median(v), 2) for k, v in steps.items()},
    }


def bronze_commits(lake: Path) -> list[tuple[int, int]]:
    """(commit time in ms, rows added) of every bronze commit that added rows."""
    out = []
    for entry in sorted((T.BRONZE.path(lake) / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in entry.read_text().splitlines() if line]
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), None)
        rows = sum(
            json.loads(a["add"].get("stats") or "{}").get("numRecords", 0)
            for a in actions
            if "add" in a
        )
        if info is not None and rows:
            out.append((int(info["timestamp"]), int(rows)))
    return out


def run_throughput(
    engine: str,
    work: Path,
    bootstrap: str,
    prefix: str,
    frames: int,
    master: str = "local[2]",
    extra_env: dict[str, str] | None = None,
) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "engine.log"
    proc = _start(engine, {**_env(work, bootstrap, prefix), **(extra_env or {})}, log, master)
    sampler = RssSampler(proc.pid)
    sampler.start()
    started = time.time()
    try:
        _wait_rows(work / "lake", frames, proc, None)
        seconds = time.time() - started
    finally:
        _stop(proc)
        sampler.done.set()
    commits = bronze_commits(work / "lake")
    trades = DeltaTable(str(T.TRADES.path(work / "lake"))).to_pyarrow_dataset().count_rows()
    steady = (commits[-1][0] - commits[0][0]) / 1000 if len(commits) > 1 else float("nan")
    after_first = sum(rows for _, rows in commits[1:])
    return {
        "frames": frames,
        "trades": trades,
        "seconds_from_start": round(seconds, 2),
        "frames_per_s_from_start": round(frames / seconds, 1),
        "seconds_first_to_last_commit": round(steady, 2),
        "frames_per_s_first_to_last_commit": round(after_first / steady, 1) if steady else None,
        "bronze_commits": len(commits),
        **sampler.report(),
        **(batch_summary(batch_log(log)) if engine == "spark" else {}),
    }


def run_scaling(run: Path, bootstrap: str, prefix: str, frames: int) -> dict[str, Any]:
    """The Spark drain at each parallelism of SCALING, one after the other."""
    out: dict[str, Any] = {}
    for label, master, workers in SCALING:
        work = run / f"scale-{re.sub(r'[^a-z0-9]+', '-', label.lower())}"
        if workers == 0:
            out[label] = run_throughput("spark", work, bootstrap, prefix, frames, master)
            continue
        cluster = load_settings(
            data_dir=work / "cluster", spark_worker_cores=1, spark_jars_cache=_jars_cache()
        )
        state = ops.cluster_start(cluster, workers=workers, timeout=180)
        try:
            cores = {"SENTINEL_SPARK_WORKER_CORES": str(workers)}  # spark.cores.max
            out[label] = run_throughput(
                "spark", work, bootstrap, prefix, frames, state.master_url, cores
            )
            out[label]["note"] = "peak RSS: driver only (executors run under the worker)"
        finally:
            ops.cluster_stop(cluster.data_dir)
    return out


def _jars_cache() -> Path:
    return Path(".sentinel").resolve() / "spark"


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
        **(batch_summary(batch_log(work / "engine.log")) if engine == "spark" else {}),
    }


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: nothing left running


def main(trades: int, workdir: Path, port: int, phases: str | None = None) -> dict[str, Any]:
    """`port` is unused (no API here); the CLI passes it to every benchmark. `phases`: any of
    throughput, latency, scaling (default all)."""
    wanted = set((phases or "throughput,latency,scaling").split(","))
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _main(trades, workdir, wanted)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(trades: int, workdir: Path, wanted: set[str]) -> dict[str, Any]:
    ops.install(load_settings(spark_jars_cache=_jars_cache()), quiet=True)
    run = workdir / f"spark-{uuid.uuid4().hex[:6]}"
    backlog = run / "backlog.ndjson"
    write_recording(backlog, PRODUCTS, trades, seed=3)
    live = run / "live.ndjson"
    write_recording(live, PRODUCTS, LIVE_RATE * LIVE_SECONDS, seed=4, rate=LIVE_RATE)
    warmup = run / "warmup.ndjson"
    write_recording(warmup, PRODUCTS, 200, seed=5)
    data = run / "kafka"
    load_before = os.getloadavg()[0]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "command": f"sentinel bench spark --trades {trades} --workdir {workdir}"
        + (
            ""
            if wanted >= {"throughput", "latency", "scaling"}
            else f" --phases {','.join(sorted(wanted))}"
        ),
        "load_average_start": round(load_before, 1),
    }
    kafka.start(data, nodes=1, port=free_port_run(2), timeout=120)
    try:
        bootstrap = kafka.bootstrap_servers(data)
        prefix = f"b{uuid.uuid4().hex[:6]}."
        frames = asyncio.run(_publish(bootstrap, prefix, backlog, "simulator", None))
        if "throughput" in wanted:
            for engine in ENGINES:
                result[f"{engine}_throughput"] = run_throughput(
                    engine, run / f"{engine}-backlog", bootstrap, prefix, frames
                )
                result[f"{engine}_throughput"]["load_average"] = round(os.getloadavg()[0], 1)
        if "latency" in wanted:
            for engine in ENGINES:
                result[f"{engine}_latency"] = run_latency(
                    engine, run / f"{engine}-live", bootstrap, f"l{uuid.uuid4().hex[:6]}.", live,
                    warmup,
                )  # fmt: skip
                result[f"{engine}_latency"]["load_average"] = round(os.getloadavg()[0], 1)
        if "scaling" in wanted:
            result["spark_scaling"] = run_scaling(run, bootstrap, prefix, frames)
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
    ]
    if "spark_throughput" in result or "spark_latency" in result:
        rows += [
            "| measure | embedded (`sentinel process`) | Spark job (`local[2]`) |",
            "|---|---|---|",
        ]
    if "spark_throughput" in result:
        e, s = result["embedded_throughput"], result["spark_throughput"]
        rows += [
            f"| backlog drained: frames ({e['trades']:,} trades) | {e['frames']:,} | "
            f"{s['frames']:,} |",
            f"| throughput from process start, frames/s | {e['frames_per_s_from_start']:,} "
            f"({e['seconds_from_start']} s) | {s['frames_per_s_from_start']:,} "
            f"({s['seconds_from_start']} s) |",
            f"| drain, first to last bronze commit, frames/s | "
            f"{e['frames_per_s_first_to_last_commit']} ({e['bronze_commits']} commits) | "
            f"{s['frames_per_s_first_to_last_commit']} ({s['bronze_commits']} commits) |",
            f"| micro-batch after the first: median / max | - | "
            f"{s.get('steady_batch_median_s')} / {s.get('steady_batch_max_s')} s "
            f"(first {s.get('first_batch_s')} s) |",
            f"| peak RSS draining, all processes | {e['peak_rss_mb']} MB | {s['peak_rss_mb']} MB "
            f"(JVM {s.get('peak_rss_java_mb')}, Python {s.get('peak_rss_python_mb')}) |",
            f"| load average after the run | {e['load_average']} | {s['load_average']} |",
        ]
    if "spark_latency" in result:
        e, s = result["embedded_latency"], result["spark_latency"]
        rows += [
            f"| live at {e['frames_per_s']} frames/s: frame -> Delta p50 / p99 | "
            f"{e['p50_ms']} / {e['p99_ms']} ms | {s['p50_ms']} / {s['p99_ms']} ms |",
            f"| live micro-batch after the first: median / max | - | "
            f"{s.get('steady_batch_median_s')} / {s.get('steady_batch_max_s')} s |",
            f"| peak RSS live, all processes | {e['peak_rss_mb']} MB | {s['peak_rss_mb']} MB "
            f"(JVM {s.get('peak_rss_java_mb')}, Python {s.get('peak_rss_python_mb')}) |",
            f"| load average after the run | {e['load_average']} | {s['load_average']} |",
        ]
    if "spark_throughput" in result:
        steps = result["spark_throughput"].get("steady_step_median_s", {})
        rows += ["", f"Spark drain, median seconds per step after the first batch: {steps}"]
    if "spark_scaling" in result:
        rows += [
            "",
            "| Spark drain | frames/s, first to last commit | from start | median batch |"
            " peak RSS |",
            "|---|---|---|---|---|",
        ]
        for label, r in result["spark_scaling"].items():
            rows.append(
                f"| {label} | {r['frames_per_s_first_to_last_commit']} | "
                f"{r['frames_per_s_from_start']} | {r.get('steady_batch_median_s')} s | "
                f"{r['peak_rss_mb']} MB{' (driver only)' if 'note' in r else ''} |"
            )
    return "\n".join(rows)
