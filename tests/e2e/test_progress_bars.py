"""Long jobs show a progress bar on a terminal, and nothing of it in pipes or with --quiet.

The verbs run as a user runs them: the `sentinel` CLI in a subprocess, once with a
pseudo-terminal as stdout/stderr (what a person sees) and once with pipes (CI, logs).
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crypto_sentinel.lake import tables as T
from crypto_sentinel.ops import maven
from tests.conftest import COINBASE_DATA, read_table

SENTINEL = [sys.executable, "-m", "crypto_sentinel.cli"]
RECORDING = COINBASE_DATA / "session.recv_ts.ndjson"


def on_terminal(args: list[str], cwd: Path, timeout: float = 120.0) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdout and stderr; (exit code, all output)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen(
        SENTINEL + args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
        env=env,
    )  # fmt: skip
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def in_pipes(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        SENTINEL + args, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake that a replay on a terminal filled (its bar is checked in the first test)."""
    work = tmp_path_factory.mktemp("progress")
    code, out = on_terminal(["replay", str(RECORDING), "--lake", str(work / "lake")], work)
    (work / "replay.out").write_text(out)
    assert code == 0, out[-2000:]
    return work


def test_replay_shows_a_bar_on_a_terminal(replayed: Path) -> None:
    out = (replayed / "replay.out").read_text()
    assert f"replay {RECORDING.name}" in out
    size = RECORDING.stat().st_size
    assert f"{size}/{size}" in out, out[-1500:]  # bytes read of the recording, complete
    assert "committed" in out
    assert read_table(replayed / "lake", T.TRADES).num_rows > 0


def test_replay_in_pipes_prints_no_bar(tmp_path: Path) -> None:
    proc = in_pipes(["replay", str(RECORDING), "--lake", str(tmp_path / "lake")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"replay {RECORDING.name}" not in proc.stderr + proc.stdout
    assert read_table(tmp_path / "lake", T.TRADES).num_rows > 0


def test_rebuild_counts_bronze_frames(replayed: Path) -> None:
    lake = replayed / "lake"
    frames = read_table(lake, T.BRONZE).num_rows
    code, out = on_terminal(["rebuild", "--lake", str(lake)], replayed)
    assert code == 0, out[-2000:]
    assert "rebuild from bronze" in out
    assert f"{frames}/{frames}" in out, out[-1500:]
    quiet, quiet_out = on_terminal(["rebuild", "--lake", str(lake), "--quiet"], replayed)
    assert quiet == 0, quiet_out[-2000:]
    assert "rebuild from bronze" not in quiet_out
    assert '"rebuilt": true' in quiet_out


def test_maintain_names_each_table(replayed: Path) -> None:
    lake = replayed / "lake"
    code, out = on_terminal(["maintain", "compact", "--all", "--lake", str(lake)], replayed)
    assert code == 0, out[-2000:]
    assert "maintain compact" in out
    assert f"{len(T.ALL_TABLES)}/{len(T.ALL_TABLES)}" in out
    piped = in_pipes(["maintain", "vacuum", "--lake", str(lake)], replayed)
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert "maintain vacuum" not in piped.stdout + piped.stderr
    assert "silver.trades" in piped.stdout  # the per-table result lines stay


def test_maven_counter_reads_download_lines() -> None:
    notes: list[str] = []
    count = maven.Counter(notes.append)
    for line in (
        "Downloading from central: https://repo.maven.apache.org/a.pom\n",
        "Downloaded from central: https://repo.maven.apache.org/a.pom (2 kB at 9 kB/s)\n",
        "Downloaded from central: https://repo.maven.apache.org/a.jar (20 kB at 9 kB/s)\n",
        "[INFO] BUILD SUCCESS\n",
    ):
        count(line)
    assert count.downloaded == 2
    assert notes == ["1 artifacts downloaded", "2 artifacts downloaded"]


def test_kafka_install_counts_what_maven_copies(tmp_path: Path) -> None:
    """Maven's local repository is warm here (CI installs Kafka before the tests), so this
    resolves from it without downloads; the bar ends at the jars of the new install."""
    code, out = on_terminal(["kafka", "install", "--data-dir", str(tmp_path)], tmp_path, 300)
    assert code == 0, out[-2000:]
    assert "Maven" in out
    libs = next((tmp_path / "kafka").glob("*/libs"))
    jars = len(list(libs.glob("*.jar")))
    assert f"{jars}/{jars}" in out, out[-1500:]
    assert "jars in place" in out
