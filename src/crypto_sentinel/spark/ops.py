"""Install the Spark job's jars with Maven, submit the job and run a small standalone cluster.

Why: the machines have Java and Maven but no Spark distribution and no Ivy access at run time.
pyspark from PyPI brings Spark itself (jars and launch scripts); Maven Central brings the Kafka
source (the only jar Spark needs: the driver writes the lake through delta-rs, so Spark never
touches Delta or S3), resolved once into ``<data dir>/spark/<key>/jars``
(the key names the versions and a digest of the pom, so a changed jar set is resolved anew)
and passed to ``spark-submit --jars``. Jars pyspark already ships are left out, so nothing is
on the classpath twice. The standalone master and worker run from the same pyspark installation.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from crypto_sentinel.config import Settings
from crypto_sentinel.ops import maven, procs
from crypto_sentinel.progress import bar, wanted

SCALA_VERSION = "2.13"
_MARKER = "installed.json"
_JAR_NAME = re.compile(r"^(?P<artifact>.+?)-(?P<version>\d[^-]*(?:-\d+)?)\.jar$")
_MAVEN_TIMEOUT_S = 900.0


class SparkOpsError(RuntimeError):
    """Installing or running Spark failed; the message says why and what to do."""


def spark_home() -> Path:
    """The pyspark installation doubles as SPARK_HOME (bin/spark-submit, jars/)."""
    try:
        import pyspark
    except ImportError:
        raise SparkOpsError(
            "pyspark is not installed: pip install -e '.[spark]' (or make install)"
        ) from None
    return Path(pyspark.__file__).parent


def spark_version() -> str:
    import pyspark

    return str(pyspark.__version__)


def pom_text() -> str:
    """The throw-away pom with this installation's versions filled in."""
    return (
        importlib.resources.files("crypto_sentinel.ops")
        .joinpath("spark_pom.xml")
        .read_text(encoding="utf-8")
        .replace("@SPARK_VERSION@", spark_version())
        .replace("@SCALA_VERSION@", SCALA_VERSION)
    )


def jars_dir(settings: Settings) -> Path:
    cache = settings.spark_jars_cache or settings.data_dir / "spark"
    digest = hashlib.sha256(pom_text().encode()).hexdigest()[:8]
    key = f"spark-{spark_version()}-{digest}"
    return cache.resolve() / key / "jars"


def _artifact(jar: str) -> str:
    match = _JAR_NAME.match(jar)
    return match.group("artifact") if match else jar


def install(settings: Settings, quiet: bool = False) -> list[Path]:
    """Resolve the Kafka source's jars (a no-op once done); returns the jar paths.
    Concurrent installs into one cache wait for each other (a lock beside the jars)."""
    out = jars_dir(settings)
    found = installed_jars(settings)
    if found is not None:
        return found
    out.parent.mkdir(parents=True, exist_ok=True)
    with procs.locked(out.parent / ".install.lock"):
        found = installed_jars(settings)
        if found is not None:  # another process finished it while we waited
            return found
        if not quiet:
            print(f"Resolving the Spark job's jars into {out} via Maven ...", file=sys.stderr)
        staging = out.parent / "jars.partial"
        with bar("Spark job's jars: Maven", quiet=quiet) as shown:
            counter = maven.Counter(lambda note: shown.update(note=note))
            maven.resolve(
                pom_text(), out.parent / "maven", staging, what="the Spark job's jars",
                error=SparkOpsError, on_line=counter if wanted(quiet) else None,
            )  # fmt: skip
            jars = len(list(staging.glob("*.jar")))
            shown.update(completed=jars, total=jars, note="jars in place")
        shipped = {_artifact(j.name) for j in (spark_home() / "jars").glob("*.jar")}
        for jar in staging.glob("*.jar"):
            if _artifact(jar.name) in shipped:
                jar.unlink()  # pyspark has its own (newer) copy; two on one classpath conflict
        names = sorted(j.name for j in staging.glob("*.jar"))
        if not any(n.startswith("spark-sql-kafka") for n in names):
            raise SparkOpsError(f"Maven resolved no spark-sql-kafka jar into {staging}")
        (staging / _MARKER).write_text(json.dumps({"jars": names}, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    if not quiet:
        print(f"Installed {len(names)} jars into {out}", file=sys.stderr)
    return [out / n for n in names]


def installed_jars(settings: Settings) -> list[Path] | None:
    out = jars_dir(settings)
    try:
        names = json.loads((out / _MARKER).read_text())["jars"]
    except (OSError, ValueError, KeyError):
        return None
    jars = [out / n for n in names]
    return jars if all(j.is_file() for j in jars) else None


def spark_env(settings: Settings) -> dict[str, str]:
    """Environment for spark-submit and the daemons: our venv's Python, pyspark's Spark."""
    env = dict(os.environ)
    env["SPARK_HOME"] = str(spark_home())
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["SPARK_LOG_DIR"] = str(settings.data_dir.resolve() / "spark" / "logs")
    conf = settings.data_dir.resolve() / "spark" / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "log4j2.properties").write_text(_LOG4J2)
    env["SPARK_CONF_DIR"] = str(conf)
    return env


#: Spark logs INFO by default: thousands of lines per micro-batch. Warnings are enough.
_LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.master.name = org.apache.spark.deploy
logger.master.level = info
"""


def submit_command(settings: Settings, master: str, jars: list[Path], *job_args: str) -> list[str]:
    """spark-submit of the job module with bounded memory and no web UI."""
    from crypto_sentinel.spark import job

    confs = {
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.executor.memory": settings.spark_executor_memory,
        "spark.driver.extraJavaOptions": settings.spark_java_options,
        "spark.executor.extraJavaOptions": settings.spark_java_options,
    }
    if master.startswith("spark://"):
        confs["spark.cores.max"] = str(settings.spark_worker_cores)
    cmd = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master", master,
        "--name", settings.spark_app_id,
        "--driver-memory", settings.spark_driver_memory,
        "--jars", ",".join(str(j) for j in jars),
    ]  # fmt: skip
    for key, value in confs.items():
        cmd += ["--conf", f"{key}={value}"]
    return [*cmd, str(Path(job.__file__).resolve()), *job_args]


# --------------------------------------------------------------------------- standalone cluster


@dataclass
class ClusterState:
    master_url: str
    master_pid: int
    worker_pid: int
    master_log: str
    worker_log: str
    worker_pids: list[int] = field(default_factory=list)  # every worker; worker_pid is the first

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _cluster_file(data_dir: Path) -> Path:
    return data_dir.resolve() / "spark" / "cluster.json"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


MASTER_MAIN = "org.apache.spark.deploy.master.Master"
WORKER_MAIN = "org.apache.spark.deploy.worker.Worker"


def _marks(state: ClusterState) -> tuple[tuple[str, str], tuple[str, str]]:
    """Arguments that make a recorded pid our master's or a worker's (`procs.alive`)."""
    port = state.master_url.rsplit(":", 1)[1]
    return (MASTER_MAIN, port), (WORKER_MAIN, state.master_url)


def cluster_status(data_dir: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(_cluster_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    state = ClusterState(**raw)
    master, worker = _marks(state)
    return {
        **state.as_dict(),
        "master_alive": procs.alive(state.master_pid, master),
        "worker_alive": all(
            procs.alive(p, worker) for p in state.worker_pids or [state.worker_pid]
        ),
    }


def _daemon(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log.unlink(missing_ok=True)  # `_wait_for` reads this start's lines only
    return procs.spawn(cmd, log, env)  # outlives the CLI: `sentinel spark cluster stop` ends it


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise SparkOpsError(f"Spark daemon did not report {text!r} in {timeout:.0f}s:\n{tail}")


def master_command(host: str | None, port: int, webui_port: int) -> list[str]:
    """A standalone master from the pyspark installation."""
    return [
        str(spark_home() / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master",
        "--host", host or socket.gethostname(), "--port", str(port),
        "--webui-port", str(webui_port),
    ]  # fmt: skip


def worker_command(
    settings: Settings, master_url: str, host: str | None, webui_port: int, name: str = "work"
) -> list[str]:
    """A standalone worker with the configured cores and memory."""
    work = settings.data_dir.resolve() / "spark" / name
    return [
        str(spark_home() / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker",
        master_url, *(["--host", host] if host else []), "--webui-port", str(webui_port),
        "--cores", str(settings.spark_worker_cores), "--memory", settings.spark_worker_memory,
        "--work-dir", str(work),
    ]  # fmt: skip


def run_in_foreground(settings: Settings, command: list[str]) -> NoReturn:
    """Become the Spark daemon (exec): a container's main process, signals go to the JVM."""
    env = spark_env(settings)
    env["SPARK_DAEMON_MEMORY"] = settings.spark_daemon_memory
    env["SPARK_NO_DAEMONIZE"] = "1"
    sys.stdout.flush()
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        raise SparkOpsError(f"cannot run {command[0]}: {exc}") from exc


def cluster_start(
    settings: Settings, host: str = "127.0.0.1", timeout: float = 90, workers: int = 1
) -> ClusterState:
    """Start one master and `workers` workers (bounded cores and memory) on free ports. Each
    daemon leads a process group of its own, which its executors join: stopping the group
    stops them all."""
    data_dir = settings.data_dir
    current = cluster_status(data_dir)
    if current and current["master_alive"] and current["worker_alive"]:
        fields = ClusterState.__dataclass_fields__
        return ClusterState(**{k: v for k, v in current.items() if k in fields})
    env = spark_env(settings)
    env["SPARK_DAEMON_MEMORY"] = settings.spark_daemon_memory
    base = data_dir.resolve() / "spark"
    port = _free_port(host)
    master_url = f"spark://{host}:{port}"
    master_log = base / "logs" / "master.log"
    started: list[int] = []
    try:
        master = _daemon(master_command(host, port, _free_port(host)), master_log, env)
        started.append(master.pid)
        _wait_for(master_log, "I have been elected leader", master, timeout)
        logs = []
        for n in range(workers):
            suffix = "" if n == 0 else f"-{n + 1}"
            log = base / "logs" / f"worker{suffix}.log"
            command = worker_command(
                settings, master_url, host, _free_port(host), name=f"work{suffix}"
            )
            worker = _daemon(command, log, env)
            started.append(worker.pid)
            _wait_for(log, "Successfully registered with master", worker, timeout)
            logs.append(str(log))
    except BaseException:
        for pid in reversed(started):
            procs.stop_group(pid, ())  # just started by us: no mark to check
        raise
    state = ClusterState(
        master_url, master.pid, started[1], str(master_log), logs[0], worker_pids=started[1:]
    )
    _cluster_file(data_dir).write_text(json.dumps(state.as_dict(), indent=2))
    return state


def cluster_stop(data_dir: Path, timeout: float = 20) -> bool:
    """Stop the workers (with their executors), then the master; False if no cluster was
    recorded. A recorded pid that now runs something else is left alone."""
    raw = cluster_status(data_dir)
    if raw is None:
        return False
    fields = ClusterState.__dataclass_fields__
    state = ClusterState(**{k: v for k, v in raw.items() if k in fields})
    master, worker = _marks(state)
    for pid in state.worker_pids or [state.worker_pid]:
        procs.stop_group(pid, worker, timeout)
    procs.stop_group(state.master_pid, master, timeout)
    _cluster_file(data_dir).unlink(missing_ok=True)
    return True
