"""`sentinel kafka install|start|stop|status`: the command line of ops/kafka.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from crypto_sentinel.clierrors import one_line_errors
from crypto_sentinel.ops.kafka import (
    bootstrap_servers,
    start,
    status,
    stop,
)
from crypto_sentinel.ops.kafka_install import install
from crypto_sentinel.ops.kafka_layout import (
    DATA_DIR_ENV,
    DEFAULT_HOST,
    DEFAULT_KAFKA_VERSION,
    DEFAULT_PORT,
    KafkaOpsError,
    _abs,
    _load_cluster,
)
from crypto_sentinel.ops.kafka_security import (
    KEYSTORE_PASSWORD_ENV,
    SASL_MECHANISMS,
    SASL_PASSWORD_ENV,
    SASL_USERNAME_ENV,
    BrokerSecurity,
)
from crypto_sentinel.ops.maven import MAVEN_REPO_ENV


def _cli_data_dir(args: argparse.Namespace) -> Path:
    raw = args.data_dir or os.environ.get(DATA_DIR_ENV) or ".sentinel"
    return _abs(raw)


#: KafkaOpsError -> one line on stderr and exit 1, not a traceback.
_cli_guard = one_line_errors("error", KafkaOpsError)


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
            f"<data-dir>/kafka/<version>/libs. Honours ${MAVEN_REPO_ENV} as the local"
            " repository."
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
