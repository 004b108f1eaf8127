"""Where the local Kafka cluster lives on disk and what shape it has (`cluster.json`):
the paths every other part of `sentinel kafka` reads and writes, and the checks that refuse a
restart that would break stored data."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path

from crypto_sentinel.ops import procs

# 4.4.0 is compiled for Java 17 (class file 61) and runs on the JDK 17 we ship with.
DEFAULT_KAFKA_VERSION = "4.4.0"


DEFAULT_HOST = "127.0.0.1"


DEFAULT_PORT = 9092


DATA_DIR_ENV = "SENTINEL_DATA_DIR"


class KafkaOpsError(RuntimeError):
    """Installing, starting or stopping the local Kafka cluster failed; message says why."""


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


def _node_tails(d: Path, nodes: Sequence[int]) -> str:
    parts = []
    for i in nodes:
        for path in (_stdout_log(d, i), _server_log(d, i)):
            parts.append(f"--- tail of {path} ---\n{procs.tail(path)}")
    return "\n".join(parts)


def _is_formatted(d: Path, node: int) -> bool:
    return (_log_dir(d, node) / "meta.properties").is_file()


def _running_pid(d: Path, node: int) -> int | None:
    try:
        pid = int(_pid_file(d, node).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if procs.alive(pid, [str(_props_file(d, node))]) else None


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
