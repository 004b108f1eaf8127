"""Start-up failures as a new user meets them: the real `sentinel` CLI in a subprocess.

Each ends as one line on stderr naming the problem and the fix, exit status 2, no traceback
(`--debug` or SENTINEL_LOG_LEVEL=DEBUG shows it), and nothing says the API is up first.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
SENTINEL = [sys.executable, "-m", "crypto_sentinel.cli"]
#: Root ignores file modes; without these capabilities it meets a read-only folder as users do.
AS_USER = (
    ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    if os.geteuid() == 0 and shutil.which("setpriv")
    else []
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    return {**env, **extra}


def sentinel(
    cwd: Path, *args: str, prefix: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), *SENTINEL, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env or clean_env(),
    )


def one_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The failure's single stderr line, checked for exit 2, no traceback and `words`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "API on" not in proc.stderr + proc.stdout
    line = lines[0]
    for word in words:
        assert word in line, (word, line)
    return line


def test_a_lake_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a lake")
    proc = sentinel(tmp_path, "up", "--lake", "afile", "--source", "simulator", "--port", "0")
    line = one_line(proc, str(tmp_path / "afile"), "is a file, not a folder", "fix:", "--lake")
    assert line.startswith("sentinel: ")


@pytest.mark.skipif(os.geteuid() == 0 and not AS_USER, reason="root without setpriv")
@pytest.mark.parametrize("existing", [True, False], ids=["lake-folder", "parent-folder"])
def test_a_read_only_lake_folder(tmp_path: Path, existing: bool) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    lake = folder if existing else folder / "lake"
    folder.chmod(0o555)
    try:
        proc = sentinel(
            tmp_path, "up", "--lake", str(lake), "--source", "simulator", "--port", "0",
            prefix=AS_USER,
        )  # fmt: skip
    finally:
        folder.chmod(0o755)
    one_line(proc, str(lake), "not writable", "fix:", "--lake")


def test_a_replay_file_that_does_not_exist(tmp_path: Path) -> None:
    proc = sentinel(
        tmp_path, "up", "--source", "replay:/nonexistent.ndjson", "--port", "0",
        "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip
    one_line(proc, "/nonexistent.ndjson", "does not exist", "fix:", "--source replay:PATH")


def test_a_port_in_use_stops_before_the_api_is_announced(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = sentinel(
            tmp_path, "up", "--source", "simulator", "--port", str(port),
            "--data-dir", str(tmp_path / "data"),
        )  # fmt: skip
    one_line(proc, f"port {port}", "already in use", "fix:", "--port")
    assert not (tmp_path / "data" / "lake").exists()  # nothing started


@pytest.mark.parametrize(
    ("args", "env", "blamed", "not_blamed"),
    [
        (["--port", "-1"], {}, "port (--port)", "SENTINEL_PORT"),
        (["--products", "x"], {}, "products (--products)", "SENTINEL_PRODUCTS"),
        ([], {"SENTINEL_PORT": "-1"}, "port (env SENTINEL_PORT)", "--port"),
        ([], {"SENTINEL_PRODUCTS": "x"}, "products (env SENTINEL_PRODUCTS)", "--products"),
    ],
    ids=["port-flag", "products-flag", "port-env", "products-env"],
)
def test_config_errors_name_the_flag_or_variable_used(
    tmp_path: Path, args: list[str], env: dict[str, str], blamed: str, not_blamed: str
) -> None:
    proc = sentinel(tmp_path, "up", *args, env=clean_env(**env))
    line = one_line(proc, "invalid configuration", blamed)
    assert not_blamed not in line


def test_spark_verbs_without_the_spark_extra(tmp_path: Path) -> None:
    """The CLI as installed without pyspark (its import made to fail as if absent)."""
    blocked = (
        "import sys; sys.modules['pyspark'] = None; sys.argv[0] = 'sentinel';"
        " from crypto_sentinel.cli import main; sys.exit(main())"
    )
    for verb in (["spark", "install"], ["spark", "submit"]):
        proc = subprocess.run(
            [sys.executable, "-c", blocked, *verb, "--data-dir", str(tmp_path)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, env=clean_env(),
        )  # fmt: skip
        one_line(proc, "'spark' extra", "pyspark", "fix: pip install 'crypto-sentinel[spark]'")


@pytest.mark.parametrize("how", ["flag-before", "flag-after", "env"])
def test_debug_shows_the_traceback(tmp_path: Path, how: str) -> None:
    (tmp_path / "afile").write_text("")
    args = ["up", "--lake", "afile", "--port", "0"]
    env = clean_env()
    if how == "flag-before":
        args = ["--debug", *args]
    elif how == "flag-after":
        args = [*args, "--debug"]
    else:
        env["SENTINEL_LOG_LEVEL"] = "DEBUG"
    proc = sentinel(tmp_path, *args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("sentinel: the lake path")
