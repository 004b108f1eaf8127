"""Install and run a real Apache Kafka broker (KRaft, combined broker+controller) from Maven jars.

Why this exists: the target machines have Java and Maven but no Docker and no way to download
the Kafka tarball, while Maven Central is reachable. The broker's runtime classpath is exactly
the dependency closure of ``org.apache.kafka:kafka_2.13``, so Maven can assemble it for us and
we run ``kafka.Kafka`` directly with a generated ``server.properties``.

On-disk layout below ``data_dir`` (all absolute):

* ``kafka/<version>/libs/*.jar``            broker classpath (+ completion marker)
* ``kafka/<version>/maven/pom.xml``         the pom Maven resolved, with ``mvn.log``
* ``kafka-data/cluster.json``               node count, ports, cluster id (the source of truth)
* ``kafka-data/node-<i>/server.properties`` per-node config, ``log4j2.xml`` and ``kafka.pid``
* ``kafka-data/node-<i>/log/``              the node's ``log.dirs`` (topic data + KRaft metadata)
* ``kafka-logs/node-<i>.log``               JVM stdout/stderr
* ``kafka-logs/node-<i>/server.log``        broker log written by log4j2 (rolled)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import importlib.resources
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "BrokerProcess",
    "KafkaOpsError",
    "add_cli",
    "bootstrap_servers",
    "install",
    "kafka_home",
    "kill",
    "start",
    "status",
    "stop",
]

# 4.4.0 is compiled for Java 17 (class file 61) and runs on the JDK 17 we ship with.
DEFAULT_KAFKA_VERSION = "4.4.0"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9092
MAVEN_REPO_ENV = "SENTINEL_MAVEN_REPO"
DATA_DIR_ENV = "SENTINEL_DATA_DIR"

_POM_RESOURCE = "kafka_pom.xml"
_VERSION_TOKEN = "@KAFKA_VERSION@"
_MARKER = ".sentinel-install.json"
_MAVEN_TIMEOUT_S = 900.0
_FORMAT_TIMEOUT_S = 120.0
_TAIL_LINES = 40
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Maven 3.8 emits resets even with -B
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
# Kafka's own launcher defaults (kafka-run-class.sh) minus the 1G heap.
_JVM_OPTS = (
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

log = logging.getLogger(__name__)

# Brokers started by this Python process. Keeping the Popen objects lets us reap them (no
# zombies that still answer ``kill(pid, 0)``) and avoids "still running" ResourceWarnings.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class KafkaOpsError(RuntimeError):
    """Installing, starting or stopping the local Kafka cluster failed; message says why."""


# --------------------------------------------------------------------------- layout


def _abs(data_dir: Path | str) -> Path:
    return Path(data_dir).expanduser().resolve()


def kafka_home(data_dir: Path, version: str = DEFAULT_KAFKA_VERSION) -> Path:
    """Where the jars of one Kafka version live; versioned so upgrades never mix classpaths."""
    return _abs(data_dir) / "kafka" / version


def _cluster_dir(d: Path) -> Path:
    return d / "kafka-data"


def _node_dir(d: Path, node: int) -> Path:
    return _cluster_dir(d) / f"node-{node}"


def _props_file(d: Path, node: int) -> Path:
    return _node_dir(d, node) / "server.properties"


def _pid_file(d: Path, node: int) -> Path:
    return _node_dir(d, node) / "kafka.pid"


def _log_dir(d: Path, node: int) -> Path:
    return _node_dir(d, node) / "log"


def _stdout_log(d: Path, node: int) -> Path:
    return d / "kafka-logs" / f"node-{node}.log"


def _server_log(d: Path, node: int) -> Path:
    return d / "kafka-logs" / f"node-{node}" / "server.log"


@dataclasses.dataclass(frozen=True)
class _Cluster:
    """Persisted shape of the cluster, so restarts and other commands need no arguments."""

    version: str
    cluster_id: str
    nodes: int
    host: str
    port: int
    controller_port: int

    def broker_port(self, node: int) -> int:
        return self.port + node

    def ctrl_port(self, node: int) -> int:
        return self.controller_port + node

    @property
    def advertised_host(self) -> str:
        # A wildcard bind address is not something clients or peers can connect to.
        if self.host in ("0.0.0.0", "::", ""):
            return socket.getfqdn()
        return self.host

    def bootstrap(self) -> str:
        return ",".join(f"{self.advertised_host}:{self.broker_port(i)}" for i in range(self.nodes))


def _cluster_file(d: Path) -> Path:
    return _cluster_dir(d) / "cluster.json"


def _load_cluster(d: Path) -> _Cluster | None:
    path = _cluster_file(d)
    if not path.exists():
        return None
    try:
        return _Cluster(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise KafkaOpsError(f"corrupt Kafka cluster description {path}: {exc}") from exc


def _save_cluster(d: Path, cluster: _Cluster) -> None:
    path = _cluster_file(d)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(cluster), indent=2) + "\n")
    tmp.replace(path)


def _require_cluster(d: Path) -> _Cluster:
    cluster = _load_cluster(d)
    if cluster is None:
        raise KafkaOpsError(
            f"no Kafka cluster configured under {d} (run `sentinel kafka start` first)"
        )
    return cluster


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise installs/starts on one data dir across processes (CLI vs. tests vs. services)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _node_tails(d: Path, nodes: Sequence[int]) -> str:
    parts = []
    for i in nodes:
        for path in (_stdout_log(d, i), _server_log(d, i)):
            parts.append(f"--- tail of {path} ---\n{_tail(path)}")
    return "\n".join(parts)


# --------------------------------------------------------------------------- install


def _pom_text(version: str) -> str:
    pom = importlib.resources.files(__package__ or "crypto_sentinel.ops").joinpath(_POM_RESOURCE)
    return pom.read_text(encoding="utf-8").replace(_VERSION_TOKEN, version)


def _mvn_command(mvn: str, pom: Path, out_dir: Path) -> list[str]:
    cmd = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom)]
    repo = os.environ.get(MAVEN_REPO_ENV)
    if repo:
        cmd.append(f"-Dmaven.repo.local={_abs(repo)}")
    cmd += [
        "dependency:copy-dependencies",
        f"-DoutputDirectory={out_dir}",
        "-DincludeScope=runtime",
    ]
    return cmd


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
    with _locked(home / ".install.lock"):
        if _read_marker(home) is not None:  # another process finished it while we waited
            return home
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaOpsError(
                "cannot install Kafka: Maven (`mvn`) is not on PATH; it is needed to fetch "
                "the broker jars from Maven Central (Debian: apt-get install maven)"
            )
        work = home / "maven"
        work.mkdir(exist_ok=True)
        pom = work / "pom.xml"
        pom.write_text(_pom_text(version), encoding="utf-8")
        staging = home / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = _mvn_command(mvn, pom, staging)
        if not quiet:
            print(f"Installing Apache Kafka {version} into {home} via Maven ...", file=sys.stderr)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=_MAVEN_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.output if isinstance(exc.output, str) else ""
            raise KafkaOpsError(
                f"mvn timed out after {_MAVEN_TIMEOUT_S:.0f}s fetching Kafka {version}: "
                f"{' '.join(cmd)}\n{_last_lines(out)}"
            ) from exc
        except OSError as exc:
            raise KafkaOpsError(f"cannot run mvn ({' '.join(cmd)}): {exc}") from exc
        (work / "mvn.log").write_text(proc.stdout)
        if proc.returncode != 0:
            raise KafkaOpsError(
                f"mvn failed (exit {proc.returncode}) fetching Kafka {version} from Maven "
                f"Central: {' '.join(cmd)}\n--- mvn output (tail) ---\n{_last_lines(proc.stdout)}"
            )
        marker = _verify_classpath(staging, version, proc.stdout)
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


def _last_lines(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(_ANSI.sub("", text).strip().splitlines()[-lines:]) or "(no output)"


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
            f"--- mvn output (tail) ---\n{_last_lines(mvn_output)}"
        )
    return {
        "version": version,
        "jars": jars,
        "broker_main": broker_main,
        "storage_main": storage_main,
    }


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass(frozen=True)
class BrokerProcess:
    """One broker+controller JVM of the local cluster (a snapshot; ``alive`` is live)."""

    node: int
    pid: int
    host: str
    port: int
    controller_port: int
    config: Path
    log: Path
    stdout_log: Path

    @property
    def node_id(self) -> int:
        return self.node

    @property
    def listener(self) -> str:
        return f"PLAINTEXT://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return _pid_alive(self.pid, self.config)


def _pid_alive(pid: int, config: Path) -> bool:
    """True only if ``pid`` is a live (non-zombie) JVM running *this* node's config.

    Checking the command line guards stop/kill against signalling an unrelated process that
    inherited a recycled pid after a reboot or crash.
    """
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists but belongs to someone else; the cmdline check below decides
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, IndexError):
        return not proc.parent.is_dir()  # no procfs (not Linux): trust kill(pid, 0)
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return str(config) in cmdline


def _running_pid(d: Path, node: int) -> int | None:
    try:
        pid = int(_pid_file(d, node).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid, _props_file(d, node)) else None


def _wait_dead(pid: int, config: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid, config):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaOpsError("cannot run Kafka: `java` (17+) is not on PATH and JAVA_HOME is unset")
    return java


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _server_properties(cluster: _Cluster, d: Path, node: int) -> str:
    host, adv = cluster.host, cluster.advertised_host
    voters = ",".join(f"{i}@{adv}:{cluster.ctrl_port(i)}" for i in range(cluster.nodes))
    # Replication defaults: a single node can only do RF 1; three or more get RF 3 with
    # min.insync.replicas 2 so one node may die without losing acked (acks=all) writes.
    rf = min(3, cluster.nodes)
    min_isr = 2 if rf >= 3 else 1
    settings = {
        "process.roles": "broker,controller",
        "node.id": node,
        "controller.quorum.voters": voters,
        "listeners": (
            f"PLAINTEXT://{host}:{cluster.broker_port(node)},"
            f"CONTROLLER://{host}:{cluster.ctrl_port(node)}"
        ),
        "advertised.listeners": f"PLAINTEXT://{adv}:{cluster.broker_port(node)}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": _log_dir(d, node),
        "auto.create.topics.enable": "false",
        "num.partitions": 1,
        "default.replication.factor": rf,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": min_isr,
        "min.insync.replicas": min_isr,
        "group.initial.rebalance.delay.ms": 0,
    }
    lines = [
        "# Generated by crypto_sentinel.ops.kafka on every start; edits here are overwritten.",
        *(f"{key}={value}" for key, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def _log4j2_xml(server_log: Path) -> str:
    """Broker logs go to a size-rolled file so a long-running node cannot fill the disk."""
    pattern = str(server_log.with_name("server.log.%i"))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by crypto_sentinel.ops.kafka on every start. -->
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <RollingFile name="server" fileName="{server_log}" filePattern="{pattern}">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="64 MB"/></Policies>
      <DefaultRolloverStrategy max="5"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.authorizer.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
  </Loggers>
</Configuration>
"""


def _write_node_files(cluster: _Cluster, d: Path, node: int) -> None:
    ndir = _node_dir(d, node)
    _log_dir(d, node).mkdir(parents=True, exist_ok=True)
    _server_log(d, node).parent.mkdir(parents=True, exist_ok=True)
    _props_file(d, node).write_text(_server_properties(cluster, d, node))
    (ndir / "log4j2.xml").write_text(_log4j2_xml(_server_log(d, node)))


def _is_formatted(d: Path, node: int) -> bool:
    return (_log_dir(d, node) / "meta.properties").is_file()


def _format_storage(cluster: _Cluster, d: Path, java: str, libs: Path, main: str) -> None:
    """Format unformatted log dirs once, all with the cluster's id; formatted ones keep data."""
    todo = [i for i in range(cluster.nodes) if not _is_formatted(d, i)]
    procs = []
    for i in todo:
        cmd = [
            java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={_node_dir(d, i) / 'log4j2.xml'}",
            "-cp",
            f"{libs}/*",
            main,
            "format",
            "--cluster-id",
            cluster.cluster_id,
            "--config",
            str(_props_file(d, i)),
            "--ignore-formatted",
        ]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        procs.append((i, cmd, proc))
    for i, cmd, proc in procs:
        try:
            out, _ = proc.communicate(timeout=_FORMAT_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.communicate()
            raise KafkaOpsError(f"formatting Kafka node {i} timed out: {' '.join(cmd)}") from exc
        text = out.decode(errors="replace")
        if proc.returncode != 0 or not _is_formatted(d, i):
            raise KafkaOpsError(
                f"formatting storage of Kafka node {i} failed (exit {proc.returncode}): "
                f"{' '.join(cmd)}\n{_last_lines(text)}"
            )
        log.info("formatted Kafka node %d storage in %s", i, _log_dir(d, i))


def _launch(d: Path, node: int, java: str, libs: Path, main: str) -> int:
    ndir = _node_dir(d, node)
    cmd = [
        java,
        *_JVM_OPTS,
        f"-Dlog4j2.configurationFile={ndir / 'log4j2.xml'}",
        f"-Dkafka.logs.dir={_server_log(d, node).parent}",
        "-cp",
        f"{libs}/*",
        main,
        str(_props_file(d, node)),
    ]
    out_path = _stdout_log(d, node)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("ab") as out:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        out.write(f"=== {stamp} starting Kafka node {node}: {' '.join(cmd)}\n".encode())
        out.flush()
        # Own session: the broker must outlive the CLI process and its terminal's SIGINT.
        proc = subprocess.Popen(
            cmd,
            cwd=ndir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    _pid_file(d, node).write_text(f"{proc.pid}\n")
    log.info("started Kafka node %d (pid %d)", node, proc.pid)
    return proc.pid


def _plan_cluster(
    d: Path,
    nodes: int | None,
    host: str | None,
    port: int | None,
    controller_port: int | None,
    version: str | None,
) -> _Cluster:
    """Merge explicit arguments with the stored layout; refuse changes that would break data."""
    old = _load_cluster(d)
    if old is None:
        n = nodes or 1
        p = port or DEFAULT_PORT
        cluster = _Cluster(
            version=version or DEFAULT_KAFKA_VERSION,
            cluster_id=_new_cluster_id(),
            nodes=n,
            host=host or DEFAULT_HOST,
            port=p,
            controller_port=controller_port or p + n,
        )
    else:
        n = nodes or old.nodes
        p = port or old.port
        if controller_port is None:
            ctrl = p + n if (port or nodes) else old.controller_port
        else:
            ctrl = controller_port
        cluster = dataclasses.replace(
            old,
            version=version or old.version,
            nodes=n,
            host=host or old.host,
            port=p,
            controller_port=ctrl,
        )
        formatted = [i for i in range(max(old.nodes, n)) if _is_formatted(d, i)]
        if n != old.nodes and formatted:
            raise KafkaOpsError(
                f"the Kafka cluster in {_cluster_dir(d)} was created with {old.nodes} node(s); "
                f"it cannot be restarted with {n}. Stop it and delete that directory to start over."
            )
        running = [i for i in range(old.nodes) if _running_pid(d, i) is not None]
        moved = (cluster.host, cluster.port, cluster.controller_port) != (
            old.host,
            old.port,
            old.controller_port,
        )
        if moved and running:
            raise KafkaOpsError(
                f"Kafka node(s) {running} are running on {old.bootstrap()}; stop them before "
                "changing host or ports"
            )
    if n < 1:
        raise KafkaOpsError(f"nodes must be >= 1, got {n}")
    brokers = set(range(cluster.port, cluster.port + n))
    ctrls = set(range(cluster.controller_port, cluster.controller_port + n))
    if brokers & ctrls or max(brokers | ctrls) > 65535 or min(brokers | ctrls) < 1:
        raise KafkaOpsError(
            f"invalid ports: brokers {sorted(brokers)} / controllers {sorted(ctrls)} "
            "must be distinct and within 1..65535"
        )
    return cluster


def _new_cluster_id() -> str:
    """Kafka's cluster id format: 16 random bytes, URL-safe base64, no padding, no leading '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _broker_process(cluster: _Cluster, d: Path, node: int, pid: int) -> BrokerProcess:
    return BrokerProcess(
        node=node,
        pid=pid,
        host=cluster.advertised_host,
        port=cluster.broker_port(node),
        controller_port=cluster.ctrl_port(node),
        config=_props_file(d, node),
        log=_server_log(d, node),
        stdout_log=_stdout_log(d, node),
    )


def start(
    data_dir: Path,
    nodes: int | None = None,
    host: str | None = None,
    port: int | None = None,
    version: str | None = None,
    timeout: float = 60,
    controller_port: int | None = None,
) -> list[BrokerProcess]:
    """Start (or complete) the local KRaft cluster and wait until every node serves metadata.

    ``None`` arguments mean "as last configured in this data dir", falling back to 1 node on
    127.0.0.1:9092 (controllers on ``port + nodes`` onwards). Running nodes are left alone and
    formatted nodes keep their data, so calling this again after a crash or ``stop`` resumes.
    """
    d = _abs(data_dir)
    with _locked(_cluster_dir(d) / ".lock"):
        cluster = _plan_cluster(d, nodes, host, port, controller_port, version)
        home = install(d, cluster.version, quiet=True)
        marker = _read_marker(home)
        if marker is None:
            raise KafkaOpsError(f"Kafka {cluster.version} install in {home} is incomplete")
        libs = home / "libs"
        java = _java()
        _save_cluster(d, cluster)
        pids: dict[int, int] = {}
        for i in range(cluster.nodes):
            pid = _running_pid(d, i)
            if pid is not None:
                pids[i] = pid
                continue
            _pid_file(d, i).unlink(missing_ok=True)
            _write_node_files(cluster, d, i)
            for p in (cluster.broker_port(i), cluster.ctrl_port(i)):
                if not _port_free(cluster.host, p):
                    raise KafkaOpsError(
                        f"cannot start Kafka node {i}: {cluster.host}:{p} is already in use "
                        "by another process"
                    )
        _format_storage(cluster, d, java, libs, marker["storage_main"])
        for i in range(cluster.nodes):
            if i not in pids:
                pids[i] = _launch(d, i, java, libs, marker["broker_main"])
    procs = [_broker_process(cluster, d, i, pids[i]) for i in range(cluster.nodes)]
    _wait_ready(cluster, d, procs, timeout)
    return procs


def _wait_ready(cluster: _Cluster, d: Path, procs: list[BrokerProcess], timeout: float) -> None:
    """Block until clients can use the cluster right away, or raise with the logs' tails.

    Ready means every node is registered and unfenced in the metadata, internal topics have
    leaders, and (on restarts) every consumer-offsets partition's group coordinator has loaded:
    otherwise the first commit or offset fetch fails with NOT_COORDINATOR.
    """
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    admin: AdminClient | None = None
    reason = "listeners not accepting connections"
    while True:
        dead = [p for p in procs if not p.alive]
        if dead:
            codes = {p.node: _exit_code(p.pid) for p in dead}
            raise KafkaOpsError(
                f"Kafka node(s) {sorted(codes)} exited during startup (exit codes {codes})\n"
                + _node_tails(d, sorted(codes))
            )
        if admin is None and all(_port_open(p.host, p.port) for p in procs):
            conf: dict[str, Any] = {
                "bootstrap.servers": cluster.bootstrap(),
                "logger": log,  # librdkafka chatter goes to logging, not the user's stderr
                "log_level": 3,
            }
            admin = AdminClient(conf)
        if admin is not None:
            wait = max(0.5, min(3.0, deadline - time.monotonic()))
            not_ready = _not_ready_reason(admin, {p.node for p in procs}, wait)
            if not_ready is None:
                return
            reason = not_ready
        if time.monotonic() >= deadline:
            raise KafkaOpsError(
                f"Kafka cluster on {cluster.bootstrap()} not ready after {timeout:.0f}s: {reason}\n"
                + _node_tails(d, [p.node for p in procs])
            )
        time.sleep(0.2)


def _not_ready_reason(admin: Any, expected: set[int], timeout: float) -> str | None:
    from confluent_kafka import KafkaError, KafkaException

    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        return f"metadata request failed: {exc}"
    missing = expected - set(md.brokers)
    if missing:
        return f"node(s) {sorted(missing)} not registered (registered: {sorted(md.brokers)})"
    for name, topic in md.topics.items():
        if name.startswith("__") and (
            topic.error is not None or any(p.leader < 0 for p in topic.partitions.values())
        ):
            return f"internal topic {name} has partitions without a leader"
    offsets = md.topics.get("__consumer_offsets")
    if offsets is None:
        return None  # fresh cluster: created (and loaded) on the first consumer group use
    retry = {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
    futures = admin.describe_consumer_groups(
        _probe_groups(len(offsets.partitions)), request_timeout=timeout
    )
    for future in futures.values():
        try:
            future.result()
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() in retry:
                return f"group coordinators still loading ({err.name()})"
    return None


def _probe_groups(partitions: int) -> list[str]:
    """One group id per consumer-offsets partition, using the broker's group->partition hash.

    Kafka maps a group to ``abs(java_hash(group_id)) % partitions``; describing one unknown
    group per partition asks every coordinator whether it has finished loading.
    """
    found: dict[int, str] = {}
    k = 0
    while len(found) < partitions:
        group = f"sentinel-ready-probe-{k}"
        h = 0
        for ch in group:
            h = (31 * h + ord(ch)) & 0xFFFFFFFF
        if h >= 1 << 31:
            h -= 1 << 32
        found.setdefault((0 if h == -(1 << 31) else abs(h)) % partitions, group)
        k += 1
    return [found[i] for i in range(partitions)]


def _exit_code(pid: int) -> int | None:
    child = _CHILDREN.get(pid)
    return child.returncode if child is not None else None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _nodes_of(d: Path, cluster: _Cluster, node: int | None) -> list[int]:
    if node is None:
        return list(range(cluster.nodes))
    if not 0 <= node < cluster.nodes:
        raise KafkaOpsError(f"no Kafka node {node}: the cluster has nodes 0..{cluster.nodes - 1}")
    return [node]


def stop(data_dir: Path, node: int | None = None, timeout: float = 30) -> None:
    """Graceful stop (SIGTERM → controlled shutdown), SIGKILL after ``timeout``; all or one node.

    All nodes are signalled together: stopping combined-mode nodes one by one would leave the
    last ones waiting on a controller quorum that no longer exists.
    """
    d = _abs(data_dir)
    cluster = _load_cluster(d)
    if cluster is None:
        return
    targets = _nodes_of(d, cluster, node)
    running = {i: pid for i in targets if (pid := _running_pid(d, i)) is not None}
    for i, pid in running.items():
        log.info("stopping Kafka node %d (pid %d)", i, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    stuck = []
    for i, pid in running.items():
        config = _props_file(d, i)
        if _wait_dead(pid, config, max(0.0, deadline - time.monotonic())):
            continue
        log.warning("Kafka node %d (pid %d) ignored SIGTERM for %.0fs; killing", i, pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_dead(pid, config, 10):
            stuck.append(i)
    for i in targets:
        if i not in stuck:
            _pid_file(d, i).unlink(missing_ok=True)
    if stuck:
        raise KafkaOpsError(f"Kafka node(s) {stuck} survived SIGKILL")


def kill(data_dir: Path, node: int) -> None:
    """SIGKILL one node, no controlled shutdown: simulates a crash for failure tests."""
    d = _abs(data_dir)
    cluster = _require_cluster(d)
    _nodes_of(d, cluster, node)
    pid = _running_pid(d, node)
    if pid is None:
        raise KafkaOpsError(f"Kafka node {node} is not running")
    os.kill(pid, signal.SIGKILL)
    if not _wait_dead(pid, _props_file(d, node), 10):
        raise KafkaOpsError(f"Kafka node {node} (pid {pid}) survived SIGKILL")
    _pid_file(d, node).unlink(missing_ok=True)


def status(data_dir: Path) -> list[dict[str, Any]]:
    """One dict per configured node; empty if no cluster was ever started in this data dir."""
    d = _abs(data_dir)
    cluster = _load_cluster(d)
    if cluster is None:
        return []
    rows = []
    for i in range(cluster.nodes):
        try:
            recorded: int | None = int(_pid_file(d, i).read_text().strip())
        except (OSError, ValueError):
            recorded = None
        alive = recorded is not None and _pid_alive(recorded, _props_file(d, i))
        rows.append(
            {
                "node": i,
                "node_id": i,
                "pid": recorded,
                "alive": alive,
                "listener": f"PLAINTEXT://{cluster.advertised_host}:{cluster.broker_port(i)}",
                "controller": f"CONTROLLER://{cluster.advertised_host}:{cluster.ctrl_port(i)}",
                "log": str(_server_log(d, i)),
                "stdout_log": str(_stdout_log(d, i)),
                "data": str(_log_dir(d, i)),
                "version": cluster.version,
            }
        )
    return rows


def bootstrap_servers(data_dir: Path) -> str:
    """Client bootstrap list for the configured nodes, e.g. ``127.0.0.1:9092,127.0.0.1:9093``."""
    return _require_cluster(_abs(data_dir)).bootstrap()


# --------------------------------------------------------------------------- CLI


def _cli_data_dir(args: argparse.Namespace) -> Path:
    raw = args.data_dir or os.environ.get(DATA_DIR_ENV) or ".sentinel"
    return _abs(raw)


def _cli_guard(func: Any) -> Any:
    """Turn KafkaOpsError into a one-line message + exit code 1 instead of a traceback."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except KafkaOpsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    handler.__doc__ = func.__doc__
    return handler


def _cmd_install(args: argparse.Namespace) -> int:
    home = install(_cli_data_dir(args), args.kafka_version, quiet=args.quiet)
    print(home)
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    d = _cli_data_dir(args)
    old = _load_cluster(d)
    version = args.kafka_version or (old.version if old else DEFAULT_KAFKA_VERSION)
    install(d, version)
    started = time.monotonic()
    procs = start(
        d,
        nodes=args.nodes,
        host=args.host,
        port=args.port,
        version=args.kafka_version,
        timeout=args.timeout,
        controller_port=args.controller_port,
    )
    for p in procs:
        print(f"node {p.node}: pid {p.pid} {p.listener} log {p.log}")
    print(f"ready in {time.monotonic() - started:.1f}s; bootstrap servers: {bootstrap_servers(d)}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    stop(_cli_data_dir(args), node=args.node, timeout=args.timeout)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    d = _cli_data_dir(args)
    rows = status(d)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no Kafka cluster configured under {d}")
    for row in [] if args.json else rows:
        state = f"running pid {row['pid']}" if row["alive"] else "stopped"
        print(f"node {row['node']}: {state:<18} {row['listener']:<28} log {row['log']}")
    return 0 if rows and all(r["alive"] for r in rows) else 3


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``kafka install|start|stop|status``; handlers return process exit codes."""
    kafka = subparsers.add_parser(
        "kafka",
        help="install and run a local Apache Kafka cluster (KRaft) from Maven Central",
        description=(
            "Install Apache Kafka's jars with Maven and run a local KRaft cluster "
            "(each node is a combined broker+controller JVM)."
        ),
    )

    def _usage(_args: argparse.Namespace) -> int:
        kafka.print_help(sys.stderr)
        return 2

    kafka.set_defaults(func=_usage)
    verbs = kafka.add_subparsers(dest="kafka_command", metavar="{install,start,stop,status}")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"state directory (default: ${DATA_DIR_ENV} or ./.sentinel)",
    )

    p = verbs.add_parser(
        "install",
        parents=[common],
        help="download the broker jars with Maven (cached)",
        description=(
            "Resolve the Kafka broker runtime classpath from Maven Central into "
            f"<data-dir>/kafka/<version>/libs. Honours ${MAVEN_REPO_ENV} as the local repository."
        ),
    )
    p.add_argument("--kafka-version", default=DEFAULT_KAFKA_VERSION, help="%(default)s")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=_cli_guard(_cmd_install))

    p = verbs.add_parser(
        "start",
        parents=[common],
        help="start the cluster (installing first if needed) and wait until it is ready",
        description=(
            "Start all nodes that are not running and wait until every node is registered. "
            "Options left out reuse the data dir's last configuration "
            f"(first start: 1 node on {DEFAULT_HOST}:{DEFAULT_PORT})."
        ),
    )
    p.add_argument("--nodes", type=int, default=None, help="number of nodes (1 or 3 typical)")
    p.add_argument("--port", type=int, default=None, help="broker port of node 0; node i: +i")
    p.add_argument("--host", default=None, help="listener address")
    p.add_argument(
        "--controller-port", type=int, default=None, help="controller port of node 0 (port+nodes)"
    )
    p.add_argument("--kafka-version", default=None, help=f"default {DEFAULT_KAFKA_VERSION}")
    p.add_argument("--timeout", type=float, default=60.0, help="readiness timeout, seconds")
    p.set_defaults(func=_cli_guard(_cmd_start))

    p = verbs.add_parser(
        "stop",
        parents=[common],
        help="stop all nodes or one node (SIGTERM, then SIGKILL)",
        description="Gracefully stop nodes; SIGKILL those still running after --timeout.",
    )
    p.add_argument("--node", type=int, default=None, help="only this node index")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before SIGKILL")
    p.set_defaults(func=_cli_guard(_cmd_stop))

    p = verbs.add_parser(
        "status",
        parents=[common],
        help="show nodes, pids and logs (exit 0 only if all nodes run)",
        description="Show each configured node. Exit code 0 if all run, 3 otherwise.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cli_guard(_cmd_status))
