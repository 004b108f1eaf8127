"""Install and run a real Apache Kafka broker (KRaft, combined broker+controller) from Maven jars.

Why this exists: the target machines have Java and Maven but no Docker and no way to download
the Kafka tarball, while Maven Central is reachable. The broker's runtime classpath is exactly
the dependency closure of ``org.apache.kafka:kafka_2.13``, so Maven can assemble it for us and
we run ``kafka.Kafka`` directly with a generated ``server.properties``.

On-disk layout below ``data_dir`` (all absolute):

* ``kafka/<version>/libs/*.jar``            broker classpath (+ completion marker)
* ``kafka/<version>/maven/pom.xml``         the pom Maven resolved, with ``mvn.log``
* ``kafka-data/cluster.json``               node count, ports, cluster id (the source of truth)
* ``kafka-data/security.json``              SASL_SSL listener settings and users (mode 0600)
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
    "SASL_MECHANISMS",
    "BrokerProcess",
    "BrokerSecurity",
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
# `sentinel kafka start --security-protocol SASL_SSL` takes its secrets from the environment
# (never from argv, which `ps` shows): the SASL user is the one the pipeline's clients use.
SASL_USERNAME_ENV = "SENTINEL_KAFKA_SASL_USERNAME"
SASL_PASSWORD_ENV = "SENTINEL_KAFKA_SASL_PASSWORD"
KEYSTORE_PASSWORD_ENV = "SENTINEL_KAFKA_SSL_KEYSTORE_PASSWORD"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

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


@dataclasses.dataclass(frozen=True, repr=False)
class BrokerSecurity:
    """A SASL_SSL client listener instead of PLAINTEXT.

    TLS comes from ``keystore`` (the broker's key and certificate; PKCS12 or JKS) and
    ``ca_file`` (PEM, the CA that signed it: the brokers' truststore and the CA the readiness
    probe checks). ``users`` maps SASL user names to passwords; the first user is also the
    identity brokers use between themselves and for the readiness probe. PLAIN users live in
    the listener's JAAS line; SCRAM users are created when a node's storage is formatted.
    The controller listener stays PLAINTEXT on the cluster's host address.
    """

    mechanism: str
    keystore: Path
    keystore_password: str
    ca_file: Path
    users: dict[str, str]
    keystore_type: str = "PKCS12"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keystore", _abs(self.keystore))
        object.__setattr__(self, "ca_file", _abs(self.ca_file))
        if self.mechanism not in SASL_MECHANISMS:
            raise KafkaOpsError(
                f"unknown SASL mechanism {self.mechanism!r};"
                f" use one of {', '.join(SASL_MECHANISMS)}"
            )
        if not self.users:
            raise KafkaOpsError("SASL_SSL needs at least one user (name and password)")
        for name, password in self.users.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
                raise KafkaOpsError(f"SASL user name {name!r}: use 1-64 of A-Z a-z 0-9 . _ -")
            if not password or any(c in password for c in '"\\,=[]') or not password.isprintable():
                raise KafkaOpsError(
                    f'the password of SASL user {name!r} is empty or has one of " \\ , = [ ]'
                    " or a control character"
                )
        if self.keystore_type not in ("PKCS12", "JKS"):
            raise KafkaOpsError(f"keystore type must be PKCS12 or JKS, got {self.keystore_type!r}")
        for what, path in (("keystore", self.keystore), ("CA file", self.ca_file)):
            if not path.is_file():
                raise KafkaOpsError(f"no {what} at {path}")

    def __repr__(self) -> str:  # never the passwords
        return (
            f"BrokerSecurity(mechanism={self.mechanism!r}, keystore={str(self.keystore)!r}, "
            f"ca_file={str(self.ca_file)!r}, users={sorted(self.users)!r})"
        )

    @property
    def admin(self) -> tuple[str, str]:
        return next(iter(self.users.items()))

    def client_config(self) -> dict[str, str]:
        """librdkafka settings for the first user (the readiness probe's identity)."""
        name, password = self.admin
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": self.mechanism,
            "sasl.username": name,
            "sasl.password": password,
            "ssl.ca.location": str(self.ca_file),
        }

    def secrets(self) -> list[str]:
        return [self.keystore_password, *self.users.values()]


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
    protocol: str = "PLAINTEXT"  # of the client/inter-broker listener: PLAINTEXT or SASL_SSL

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


def _security_file(d: Path) -> Path:
    return _cluster_dir(d) / "security.json"


def _load_security(d: Path) -> BrokerSecurity | None:
    path = _security_file(d)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return BrokerSecurity(
            mechanism=raw["mechanism"],
            keystore=Path(raw["keystore"]),
            keystore_password=raw["keystore_password"],
            ca_file=Path(raw["ca_file"]),
            users=dict(raw["users"]),
            keystore_type=raw.get("keystore_type", "PKCS12"),
        )
    except (ValueError, TypeError, KeyError) as exc:  # no values in the message: secrets
        raise KafkaOpsError(
            f"corrupt Kafka security settings {path} ({type(exc).__name__})"
        ) from None


def _save_security(d: Path, security: BrokerSecurity | None) -> None:
    path = _security_file(d)
    if security is None:
        path.unlink(missing_ok=True)
        return
    body = {
        "mechanism": security.mechanism,
        "keystore": str(security.keystore),
        "keystore_password": security.keystore_password,
        "keystore_type": security.keystore_type,
        "ca_file": str(security.ca_file),
        "users": security.users,
    }
    _write_private(path, json.dumps(body, indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds passwords), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
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
    protocol: str = "PLAINTEXT"

    @property
    def node_id(self) -> int:
        return self.node

    @property
    def listener(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"

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


def _server_properties(
    cluster: _Cluster, d: Path, node: int, security: BrokerSecurity | None = None
) -> str:
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
    if security is not None:
        settings.update(_security_properties(cluster, node, security))
    lines = [
        "# Generated by crypto_sentinel.ops.kafka on every start; edits here are overwritten.",
        *(f"{key}={value}" for key, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def _security_properties(
    cluster: _Cluster, node: int, security: BrokerSecurity
) -> dict[str, str | int]:
    """The SASL_SSL listener replacing PLAINTEXT (clients and brokers among themselves)."""
    host, adv, mech = cluster.host, cluster.advertised_host, security.mechanism
    name, password = security.admin
    if mech == "PLAIN":
        module = "org.apache.kafka.common.security.plain.PlainLoginModule"
        users = "".join(f' user_{u}="{p}"' for u, p in security.users.items())
    else:
        module = "org.apache.kafka.common.security.scram.ScramLoginModule"
        users = ""  # SCRAM credentials live in the cluster metadata (added at format)
    jaas = f'{module} required username="{name}" password="{password}"{users};'
    return {
        "listeners": (
            f"SASL_SSL://{host}:{cluster.broker_port(node)},"
            f"CONTROLLER://{host}:{cluster.ctrl_port(node)}"
        ),
        "advertised.listeners": f"SASL_SSL://{adv}:{cluster.broker_port(node)}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": mech,
        "sasl.mechanism.inter.broker.protocol": mech,
        f"listener.name.sasl_ssl.{mech.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": security.keystore_type,
        "ssl.keystore.location": str(security.keystore),
        "ssl.keystore.password": security.keystore_password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(security.ca_file),
        "ssl.client.auth": "none",
    }


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


def _write_node_files(
    cluster: _Cluster, d: Path, node: int, security: BrokerSecurity | None = None
) -> None:
    ndir = _node_dir(d, node)
    _log_dir(d, node).mkdir(parents=True, exist_ok=True)
    _server_log(d, node).parent.mkdir(parents=True, exist_ok=True)
    # Owner-only: with SASL_SSL it holds the keystore password and the brokers' credentials.
    _write_private(_props_file(d, node), _server_properties(cluster, d, node, security))
    (ndir / "log4j2.xml").write_text(_log4j2_xml(_server_log(d, node)))


def _is_formatted(d: Path, node: int) -> bool:
    return (_log_dir(d, node) / "meta.properties").is_file()


def _format_storage(
    cluster: _Cluster,
    d: Path,
    java: str,
    libs: Path,
    main: str,
    security: BrokerSecurity | None = None,
) -> None:
    """Format unformatted log dirs once, all with the cluster's id; formatted ones keep data.

    With SCRAM the users' credentials are written into the metadata here (``--add-scram``);
    error messages show those arguments redacted.
    """
    todo = [i for i in range(cluster.nodes) if not _is_formatted(d, i)]
    scram: list[str] = []
    if security is not None and security.mechanism.startswith("SCRAM-"):
        for name, password in security.users.items():
            scram += ["--add-scram", f'{security.mechanism}=[name={name},password="{password}"]']
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
            *scram,
        ]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        procs.append((i, cmd, proc))
    secrets = security.secrets() if security is not None else []
    for i, cmd, proc in procs:
        shown = " ".join(
            cmd[: len(cmd) - len(scram)] + ["--add-scram <redacted>"] * (len(scram) // 2)
        )
        try:
            out, _ = proc.communicate(timeout=_FORMAT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise KafkaOpsError(f"formatting Kafka node {i} timed out: {shown}") from None
        text = _redact(out.decode(errors="replace"), secrets)
        if proc.returncode != 0 or not _is_formatted(d, i):
            raise KafkaOpsError(
                f"formatting storage of Kafka node {i} failed (exit {proc.returncode}): "
                f"{shown}\n{_last_lines(text)}"
            )
        log.info("formatted Kafka node %d storage in %s", i, _log_dir(d, i))


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


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
        protocol=cluster.protocol,
    )


def start(
    data_dir: Path,
    nodes: int | None = None,
    host: str | None = None,
    port: int | None = None,
    version: str | None = None,
    timeout: float = 60,
    controller_port: int | None = None,
    security: BrokerSecurity | bool | None = None,
) -> list[BrokerProcess]:
    """Start (or complete) the local KRaft cluster and wait until every node serves metadata.

    ``None`` arguments mean "as last configured in this data dir", falling back to 1 node on
    127.0.0.1:9092 (controllers on ``port + nodes`` onwards). Running nodes are left alone and
    formatted nodes keep their data, so calling this again after a crash or ``stop`` resumes.
    ``security``: a `BrokerSecurity` for a SASL_SSL listener, ``False`` for PLAINTEXT, ``None``
    for what this data dir used last.
    """
    d = _abs(data_dir)
    with _locked(_cluster_dir(d) / ".lock"):
        cluster = _plan_cluster(d, nodes, host, port, controller_port, version)
        sec = _plan_security(d, cluster, security)
        cluster = dataclasses.replace(cluster, protocol="SASL_SSL" if sec else "PLAINTEXT")
        home = install(d, cluster.version, quiet=True)
        marker = _read_marker(home)
        if marker is None:
            raise KafkaOpsError(f"Kafka {cluster.version} install in {home} is incomplete")
        libs = home / "libs"
        java = _java()
        _save_cluster(d, cluster)
        _save_security(d, sec)
        pids: dict[int, int] = {}
        for i in range(cluster.nodes):
            pid = _running_pid(d, i)
            if pid is not None:
                pids[i] = pid
                continue
            _pid_file(d, i).unlink(missing_ok=True)
            _write_node_files(cluster, d, i, sec)
            for p in (cluster.broker_port(i), cluster.ctrl_port(i)):
                if not _port_free(cluster.host, p):
                    raise KafkaOpsError(
                        f"cannot start Kafka node {i}: {cluster.host}:{p} is already in use "
                        "by another process"
                    )
        _format_storage(cluster, d, java, libs, marker["storage_main"], sec)
        for i in range(cluster.nodes):
            if i not in pids:
                pids[i] = _launch(d, i, java, libs, marker["broker_main"])
    procs = [_broker_process(cluster, d, i, pids[i]) for i in range(cluster.nodes)]
    _wait_ready(cluster, d, procs, timeout, sec)
    return procs


def _plan_security(
    d: Path, cluster: _Cluster, security: BrokerSecurity | bool | None
) -> BrokerSecurity | None:
    """The listener security to start with; refuse changes running or formatted nodes miss."""
    old = _load_security(d)
    if security is None or security is True:
        return old
    new = security if isinstance(security, BrokerSecurity) else None
    running = [i for i in range(cluster.nodes) if _running_pid(d, i) is not None]
    if running and (new is None) != (old is None):
        raise KafkaOpsError(
            f"Kafka node(s) {running} are running with {cluster.protocol}; stop them before "
            "changing the listener's security"
        )
    formatted = [i for i in range(cluster.nodes) if _is_formatted(d, i)]
    if new is not None and new.mechanism.startswith("SCRAM-") and formatted:
        same = old is not None and (old.mechanism, old.users) == (new.mechanism, new.users)
        if not same:
            raise KafkaOpsError(
                f"SCRAM users are created when storage is formatted and node(s) {formatted} "
                f"in {_cluster_dir(d)} are formatted already; keep the users, use PLAIN, or "
                "delete that directory to start over"
            )
    return new


def _wait_ready(
    cluster: _Cluster,
    d: Path,
    procs: list[BrokerProcess],
    timeout: float,
    security: BrokerSecurity | None = None,
) -> None:
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
                **(security.client_config() if security is not None else {}),
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
                "listener": f"{cluster.protocol}://{cluster.advertised_host}:{cluster.broker_port(i)}",
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
        security=_cli_security(args),
    )
    for p in procs:
        print(f"node {p.node}: pid {p.pid} {p.listener} log {p.log}")
    print(f"ready in {time.monotonic() - started:.1f}s; bootstrap servers: {bootstrap_servers(d)}")
    return 0


def _cli_security(args: argparse.Namespace) -> BrokerSecurity | bool | None:
    """`--security-protocol SASL_SSL`: files from flags, secrets from the environment."""
    if args.security_protocol is None:
        return None
    if args.security_protocol == "PLAINTEXT":
        return False
    missing = [f for f, v in (("--ssl-keystore", args.ssl_keystore), ("--ssl-ca", args.ssl_ca))
               if v is None]  # fmt: skip
    env = {k: os.environ.get(k, "") for k in
           (SASL_USERNAME_ENV, SASL_PASSWORD_ENV, KEYSTORE_PASSWORD_ENV)}  # fmt: skip
    missing += [f"${k}" for k, v in env.items() if not v]
    if missing:
        raise KafkaOpsError(f"--security-protocol SASL_SSL needs {', '.join(missing)}")
    return BrokerSecurity(
        mechanism=args.sasl_mechanism,
        keystore=args.ssl_keystore,
        keystore_password=env[KEYSTORE_PASSWORD_ENV],
        keystore_type=args.ssl_keystore_type,
        ca_file=args.ssl_ca,
        users={env[SASL_USERNAME_ENV]: env[SASL_PASSWORD_ENV]},
    )


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
    p.add_argument(
        "--security-protocol",
        choices=["PLAINTEXT", "SASL_SSL"],
        default=None,
        help="client listener (default: as last started, first start PLAINTEXT). SASL_SSL takes"
        f" the user from ${SASL_USERNAME_ENV} / ${SASL_PASSWORD_ENV} (as the pipeline's clients)"
        f" and the keystore password from ${KEYSTORE_PASSWORD_ENV}",
    )
    p.add_argument("--sasl-mechanism", choices=SASL_MECHANISMS, default="SCRAM-SHA-256")
    p.add_argument("--ssl-keystore", type=Path, help="broker key and certificate (PKCS12 or JKS)")
    p.add_argument("--ssl-keystore-type", choices=["PKCS12", "JKS"], default="PKCS12")
    p.add_argument("--ssl-ca", type=Path, help="PEM file of the CA that signed the certificate")
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
