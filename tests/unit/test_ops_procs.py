"""The process helper behind `sentinel kafka stop` and `sentinel spark cluster stop`: a
recorded pid is signalled only while its command line is still the daemon we started."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto_sentinel.ops import procs
from crypto_sentinel.spark import ops

MASTER_URL = "spark://127.0.0.1:7999"


def daemon(*args: str) -> subprocess.Popen[bytes]:
    """A sleeping process leading its own session, its command line ending with `args`
    (returned once it runs that command line, not the forked parent's)."""
    code = "import time; time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while code not in cmdline.read_bytes().decode(errors="replace"):
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.01)
    return proc


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs_: list[subprocess.Popen[bytes]] = []
    yield procs_
    for p in procs_:
        p.kill()
        p.wait()


def record_cluster(data_dir: Path, master: int, worker: int) -> None:
    state = {"master_url": MASTER_URL, "master_pid": master, "worker_pid": worker,
             "master_log": "m.log", "worker_log": "w.log", "worker_pids": [worker]}  # fmt: skip
    path = data_dir / "spark" / "cluster.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(state))


def ended(p: subprocess.Popen[bytes], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while p.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_spark_cluster_stop_leaves_a_recycled_pid_alone(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """The recorded pids now belong to unrelated programs (group leaders, the worst case):
    the stop forgets the cluster and signals neither."""
    master, worker = daemon("unrelated"), daemon("also", "unrelated")
    started += [master, worker]
    record_cluster(tmp_path, master.pid, worker.pid)
    status = ops.cluster_status(tmp_path)
    assert status is not None and not status["master_alive"] and not status["worker_alive"]

    assert ops.cluster_stop(tmp_path, timeout=1) is True

    assert master.poll() is None and worker.poll() is None
    assert not (tmp_path / "spark" / "cluster.json").exists()


def test_spark_cluster_stop_ends_the_recorded_daemons(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    master = daemon(ops.MASTER_MAIN, "--port", "7999")
    worker = daemon(ops.WORKER_MAIN, MASTER_URL)
    started += [master, worker]
    record_cluster(tmp_path, master.pid, worker.pid)
    status = ops.cluster_status(tmp_path)
    assert status is not None and status["master_alive"] and status["worker_alive"]

    assert ops.cluster_stop(tmp_path, timeout=5) is True

    assert ended(master) and ended(worker)


def test_terminate_signals_only_a_pid_that_is_still_ours(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    config = str(tmp_path / "server.properties")
    other, ours = daemon("something-else"), daemon(config)
    started += [other, ours]
    assert not procs.alive(other.pid, [config])
    assert procs.terminate(other.pid, [config], timeout=1)
    assert other.poll() is None
    assert procs.alive(ours.pid, [config])
    assert procs.terminate(ours.pid, [config], timeout=5)
    assert ended(ours)
