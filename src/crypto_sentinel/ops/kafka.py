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
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crypto_sentinel.ops import procs
from crypto_sentinel.ops.kafka_config import (
    _format_storage,
    _write_node_files,
)
from crypto_sentinel.ops.kafka_config import (
    _server_properties as _server_properties,  # for tests of the generated config
)
from crypto_sentinel.ops.kafka_install import _read_marker, install
from crypto_sentinel.ops.kafka_layout import (
    DEFAULT_KAFKA_VERSION,
    KafkaOpsError,
    _abs,
    _Cluster,
    _cluster_dir,
    _load_cluster,
    _log_dir,
    _node_dir,
    _node_tails,
    _pid_file,
    _plan_cluster,
    _props_file,
    _require_cluster,
    _running_pid,
    _save_cluster,
    _server_log,
    _stdout_log,
    kafka_home,
)
from crypto_sentinel.ops.kafka_security import (
    KEYSTORE_PASSWORD_ENV,
    SASL_MECHANISMS,
    SASL_PASSWORD_ENV,
    SASL_USERNAME_ENV,
    BrokerSecurity,
    _plan_security,
    _save_security,
)

__all__ = [  # the parts ops/kafka_*.py hold are re-exported: callers import this module
    "DEFAULT_KAFKA_VERSION",
    "KEYSTORE_PASSWORD_ENV",
    "SASL_MECHANISMS",
    "SASL_PASSWORD_ENV",
    "SASL_USERNAME_ENV",
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
        return procs.alive(self.pid, [str(self.config)])


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
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with out_path.open("ab") as out:
        out.write(f"=== {stamp} starting Kafka node {node}: {' '.join(cmd)}\n".encode())
    proc = procs.spawn(cmd, out_path, cwd=ndir)  # outlives the CLI and its terminal's SIGINT
    _pid_file(d, node).write_text(f"{proc.pid}\n")
    log.info("started Kafka node %d (pid %d)", node, proc.pid)
    return proc.pid


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
    with procs.locked(_cluster_dir(d) / ".lock"):
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
    brokers = [_broker_process(cluster, d, i, pids[i]) for i in range(cluster.nodes)]
    _wait_ready(cluster, d, brokers, timeout, sec)
    return brokers


def _wait_ready(
    cluster: _Cluster,
    d: Path,
    brokers: list[BrokerProcess],
    timeout: float,
    security: BrokerSecurity | None = None,
) -> None:
    """Block until clients can use the cluster right away, or raise with the logs' tails.

    Ready means every node is registered and unfenced in the metadata, internal topics have
    leaders, and (on restarts) every consumer-offsets partition's group coordinator has loaded:
    otherwise the first commit or offset fetch fails with NOT_COORDINATOR.
    """
    deadline = time.monotonic() + timeout
    conf: dict[str, Any] | None = None
    reason = "listeners not accepting connections"
    while True:
        dead = [p for p in brokers if not p.alive]
        if dead:
            codes = {p.node: procs.exit_code(p.pid) for p in dead}
            raise KafkaOpsError(
                f"Kafka node(s) {sorted(codes)} exited during startup (exit codes {codes})\n"
                + _node_tails(d, sorted(codes))
            )
        if conf is None and all(_port_open(p.host, p.port) for p in brokers):
            conf = {
                "bootstrap.servers": cluster.bootstrap(),
                "log_level": 3,
                **(security.client_config() if security is not None else {}),
            }
        if conf is not None:
            left = deadline - time.monotonic()
            wait = max(0.5, min(3.0, left))
            patience = max(wait, min(COORDINATOR_PATIENCE_S, left))
            not_ready = _not_ready_in_child(conf, {p.node for p in brokers}, wait, patience)
            if not_ready is None:
                return
            reason = not_ready
        if time.monotonic() >= deadline:
            raise KafkaOpsError(
                f"Kafka cluster on {cluster.bootstrap()} not ready after {timeout:.0f}s: {reason}\n"
                + _node_tails(d, [p.node for p in brokers])
            )
        time.sleep(0.2)


#: How long a readiness probe's group lookups may wait for a coordinator (seconds, within
#: the start's own timeout). librdkafka 2.x can abort the whole process when a
#: DescribeConsumerGroups request times out while it is still looking for the coordinator
#: (confluentinc/librdkafka#4605, "rd_kafka_enq_once_del_source_return: Assertion
#: `eonce->refcnt > 0' failed"; seen here in a test's three-node start, with 3 s). Waiting
#: longer did not prevent every abort (session 26), so the probe runs in a process of its own.
COORDINATOR_PATIENCE_S = 30.0


def _not_ready_in_child(
    conf: dict[str, Any], expected: set[int], timeout: float, patience: float
) -> str | None:
    """`_not_ready_reason` in a process of its own (`python -m crypto_sentinel.ops.kafka`):
    librdkafka 2.x still aborted a caller once with the lookups' patience above (a test run's
    three-node start, session 26), and an abort must end the probe, not the process that
    starts Kafka (a user's shell command, or the whole test run)."""
    request = {"conf": conf, "expected": sorted(expected), "timeout": timeout, "patience": patience}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "crypto_sentinel.ops.kafka"],
            input=json.dumps(request),  # not in argv: the conf may hold credentials
            capture_output=True,
            text=True,
            timeout=timeout + patience + PROBE_START_S,
        )
    except subprocess.TimeoutExpired:
        return "readiness probe did not answer"
    if done.returncode != 0:
        return f"readiness probe ended with exit code {done.returncode}"
    answer: str | None = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


#: Seconds a readiness probe's process may take to start, beyond its requests' timeouts.
PROBE_START_S = 30.0


def _probe_main() -> None:
    """The probe's process: the request on stdin, the reason (or null) as JSON on stdout;
    librdkafka's own log lines go to stderr, which the caller drops."""
    from confluent_kafka.admin import AdminClient

    request = json.loads(sys.stdin.read())
    admin = AdminClient(request["conf"])
    reason = _not_ready_reason(
        admin, set(request["expected"]), request["timeout"], request["patience"]
    )
    print(json.dumps(reason), flush=True)


def _not_ready_reason(
    admin: Any, expected: set[int], timeout: float, patience: float
) -> str | None:
    """Why the cluster is not ready yet (None: ready). `timeout` bounds the metadata
    request, `patience` the group lookups (see COORDINATOR_PATIENCE_S)."""
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
        # A fresh cluster creates it on the first coordinator lookup: done here, or the first
        # consumer group's member would wait ~3 s for it (measured) to join.
        for future in admin.describe_consumer_groups(
            ["sentinel-ready-probe-0"], request_timeout=patience
        ).values():
            with contextlib.suppress(KafkaException):
                future.result()
        return "consumer offsets topic being created"
    retry = {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
    futures = admin.describe_consumer_groups(
        _probe_groups(len(offsets.partitions)), request_timeout=patience
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
        if procs.wait_dead(pid, [str(config)], max(0.0, deadline - time.monotonic())):
            continue
        log.warning("Kafka node %d (pid %d) ignored SIGTERM for %.0fs; killing", i, pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not procs.wait_dead(pid, [str(config)], 10):
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
    if not procs.wait_dead(pid, [str(_props_file(d, node))], 10):
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
        alive = recorded is not None and procs.alive(recorded, [str(_props_file(d, i))])
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


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `sentinel kafka` verbs (ops/kafka_cli.py)."""
    from crypto_sentinel.ops import kafka_cli

    kafka_cli.add_cli(subparsers)


if __name__ == "__main__":
    _probe_main()
