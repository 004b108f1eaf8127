"""`sentinel kafka install`: the broker classpath is the dependency closure of
`org.apache.kafka:kafka_2.13`, fetched with Maven (ops/maven.py) and checked for the classes
a broker needs before anything starts."""

from __future__ import annotations

import importlib.resources
import json
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crypto_sentinel.ops import maven, procs
from crypto_sentinel.ops.kafka_layout import (
    DEFAULT_KAFKA_VERSION,
    KafkaOpsError,
    kafka_home,
)
from crypto_sentinel.progress import Bar, bar, wanted

_POM_RESOURCE = "kafka_pom.xml"


_VERSION_TOKEN = "@KAFKA_VERSION@"


_MARKER = ".sentinel-install.json"


# Candidate main classes, newest location first, so an older/newer 4.x still works.
_BROKER_MAINS = ("kafka.Kafka",)


_STORAGE_MAINS = ("org.apache.kafka.tools.StorageTool", "kafka.tools.StorageTool")


# Classes whose absence means the classpath cannot run a broker that logs to files.
_REQUIRED_CLASSES = (
    "org.apache.kafka.clients.admin.Admin",
    "org.apache.logging.log4j.core.LoggerContext",
    "org.slf4j.LoggerFactory",
)


_SLF4J_BINDINGS = (
    "org.slf4j.impl.StaticLoggerBinder",  # slf4j 1.7 binding (log4j-slf4j-impl)
    "org.apache.logging.slf4j.SLF4JServiceProvider",  # slf4j 2.x provider (log4j-slf4j2-impl)
)


def _pom_text(version: str) -> str:
    pom = importlib.resources.files(__package__ or "crypto_sentinel.ops").joinpath(_POM_RESOURCE)
    return pom.read_text(encoding="utf-8").replace(_VERSION_TOKEN, version)


def _find_classes(libs: Path, classes: Sequence[str]) -> set[str]:
    """Which of ``classes`` exist in the jars; cheap (zip central directories only)."""
    wanted = {c.replace(".", "/") + ".class": c for c in classes}
    found: set[str] = set()
    for jar in sorted(libs.glob("*.jar")):
        try:
            with zipfile.ZipFile(jar) as zf:
                names = set(zf.namelist())
        except (OSError, zipfile.BadZipFile) as exc:
            raise KafkaOpsError(f"unreadable jar {jar}: {exc}") from exc
        found.update(cls for entry, cls in wanted.items() if entry in names)
    return found


def _read_marker(home: Path) -> dict[str, Any] | None:
    libs = home / "libs"
    try:
        marker = json.loads((libs / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not marker.get("jars"):
        return None
    if not all((libs / name).is_file() for name in marker["jars"]):
        return None
    return marker


def install(data_dir: Path, version: str = DEFAULT_KAFKA_VERSION, quiet: bool = False) -> Path:
    """Fetch the broker classpath with Maven into ``kafka_home``; a no-op once complete."""
    home = kafka_home(data_dir, version)
    if _read_marker(home) is not None:
        return home
    home.mkdir(parents=True, exist_ok=True)
    with procs.locked(home / ".install.lock"):
        if _read_marker(home) is not None:  # another process finished it while we waited
            return home
        if not quiet:
            print(f"Installing Apache Kafka {version} into {home} via Maven ...", file=sys.stderr)
        started = time.monotonic()
        staging = home / "libs.partial"
        with bar(f"Kafka {version}: Maven", quiet=quiet) as shown:
            output = maven.resolve(
                _pom_text(version), home / "maven", staging, what=f"Kafka {version}",
                error=KafkaOpsError, on_line=_counter(shown, quiet),
            )  # fmt: skip
            jars = len(list(staging.glob("*.jar")))
            shown.update(completed=jars, total=jars, note="jars in place")
        marker = _verify_classpath(staging, version, output)
        marker["seconds"] = round(time.monotonic() - started, 1)
        (staging / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        libs = home / "libs"
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        if not quiet:
            print(
                f"Installed Kafka {version}: {len(marker['jars'])} jars in {marker['seconds']}s",
                file=sys.stderr,
            )
    return home


def _counter(shown: Bar, quiet: bool) -> Callable[[str], object] | None:
    """Maven's lines counted into the bar's note (None off a terminal: Maven stays quiet)."""
    return maven.Counter(lambda note: shown.update(note=note)) if wanted(quiet) else None


def _verify_classpath(libs: Path, version: str, mvn_output: str) -> dict[str, Any]:
    """Fail at install time, not at broker start, if Maven produced an unusable classpath."""
    jars = sorted(p.name for p in libs.glob("*.jar"))
    probe = (*_BROKER_MAINS, *_STORAGE_MAINS, *_REQUIRED_CLASSES, *_SLF4J_BINDINGS)
    found = _find_classes(libs, probe) if jars else set()
    broker_main = next((c for c in _BROKER_MAINS if c in found), None)
    storage_main = next((c for c in _STORAGE_MAINS if c in found), None)
    missing = [c for c in _REQUIRED_CLASSES if c not in found]
    if broker_main is None:
        missing.append(" or ".join(_BROKER_MAINS))
    if storage_main is None:
        missing.append(" or ".join(_STORAGE_MAINS))
    if not any(c in found for c in _SLF4J_BINDINGS):
        missing.append("an slf4j binding for log4j2")
    if missing:
        raise KafkaOpsError(
            f"Maven resolved an incomplete Kafka {version} classpath in {libs} "
            f"({len(jars)} jars); missing: {', '.join(missing)}\n"
            f"--- mvn output (tail) ---\n{maven.last_lines(mvn_output)}"
        )
    return {
        "version": version,
        "jars": jars,
        "broker_main": broker_main,
        "storage_main": storage_main,
    }
