"""Fetch a Java classpath from Maven Central: the one resolver behind `sentinel kafka install`
and `sentinel spark install`.

The machines this runs on have Java and Maven but no way to download distribution tarballs,
so a pom's runtime dependency closure, copied by `mvn dependency:copy-dependencies`, is the
classpath. Maven's local repository is `~/.m2` unless SENTINEL_MAVEN_REPO names another.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["MAVEN_REPO_ENV", "Counter", "last_lines", "resolve"]

MAVEN_REPO_ENV = "SENTINEL_MAVEN_REPO"
MAVEN_TIMEOUT_S = 900.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Maven 3.8 emits resets even with -B


def last_lines(text: str, lines: int = 40) -> str:
    return "\n".join(_ANSI.sub("", text).strip().splitlines()[-lines:]) or "(no output)"


def command(mvn: str, pom: Path, out_dir: Path, quiet: bool = True) -> list[str]:
    """`quiet` False keeps Maven's per-artifact lines (what a progress bar counts)."""
    cmd = [mvn, *(["-q"] if quiet else []), "-B", "-Dstyle.color=never", "-f", str(pom)]
    repo = os.environ.get(MAVEN_REPO_ENV)
    if repo:
        cmd.append(f"-Dmaven.repo.local={Path(repo).expanduser().resolve()}")
    return [
        *cmd,
        "dependency:copy-dependencies",
        f"-DoutputDirectory={out_dir}",
        "-DincludeScope=runtime",
    ]


def resolve(
    pom: str,
    work: Path,
    staging: Path,
    *,
    what: str,
    error: type[Exception],
    timeout: float = MAVEN_TIMEOUT_S,
    on_line: Callable[[str], object] | None = None,
) -> str:
    """Copy the runtime dependencies of the pom text `pom` into `staging` (emptied first),
    keeping the pom and Maven's log in `work`; returns Maven's output. Every failure raises
    `error` naming `what` was fetched, the command and the end of Maven's output.
    `on_line` hears each line of Maven's output as it comes (progress)."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise error(
            f"cannot fetch {what}: Maven (`mvn`) is not on PATH; it is needed to fetch the jars"
            " from Maven Central (Debian: apt-get install maven)"
        )
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(pom, encoding="utf-8")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = command(mvn, work / "pom.xml", staging, quiet=on_line is None)
    shown = " ".join(cmd)
    try:
        proc = _run(cmd, work, timeout, on_line or (lambda _line: None))
    except subprocess.TimeoutExpired as exc:
        out = exc.output if isinstance(exc.output, str) else ""
        raise error(
            f"mvn timed out after {timeout:.0f}s fetching {what}: {shown}\n{last_lines(out)}"
        ) from exc
    except OSError as exc:
        raise error(f"cannot run mvn ({shown}): {exc}") from exc
    (work / "mvn.log").write_text(proc.stdout)
    if proc.returncode != 0:
        raise error(
            f"mvn failed (exit {proc.returncode}) fetching {what} from Maven Central: {shown}\n"
            f"--- mvn output (tail) ---\n{last_lines(proc.stdout)}"
        )
    return proc.stdout


def _run(
    cmd: list[str], work: Path, timeout: float, on_line: Callable[[str], object]
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run` with Maven's output passed on line by line while it runs."""
    proc = subprocess.Popen(
        cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            on_line(line)

    reader = threading.Thread(target=pump, name="mvn-output", daemon=True)
    reader.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        reader.join(5)
        raise subprocess.TimeoutExpired(cmd, timeout, output="".join(lines)) from None
    reader.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines))


class Counter:
    """Counts the artifacts Maven downloads from its output lines (a progress note; a warm
    local repository downloads nothing and says so by silence)."""

    def __init__(self, show: Callable[[str], object]) -> None:
        self.downloaded = 0
        self._show = show

    def __call__(self, line: str) -> None:
        if line.startswith("Downloaded from"):
            self.downloaded += 1
            self._show(f"{self.downloaded} artifacts downloaded")
