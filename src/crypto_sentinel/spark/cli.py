"""`sentinel spark install | submit | cluster start|stop|status|master|worker` (cli.py plugin)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crypto_sentinel.clierrors import one_line_errors
from crypto_sentinel.config import Settings, load_settings
from crypto_sentinel.lake.location import lake_overrides, parse_lake
from crypto_sentinel.spark.ops import SparkOpsError


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "data_dir": args.data_dir,
        "kafka_bootstrap": getattr(args, "kafka_bootstrap", None),
        **lake_overrides(getattr(args, "lake", None)),
    }
    return load_settings(**overrides)


#: SparkOpsError -> one line on stderr and exit 1, not a traceback.
_guard = one_line_errors("sentinel spark", SparkOpsError)


def cmd_install(args: argparse.Namespace) -> int:
    from crypto_sentinel.spark import ops

    jars = ops.install(_settings(args), quiet=args.quiet)
    print(jars[0].parent)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Run spark-submit in the foreground; SIGTERM/SIGINT stop the query cleanly."""
    from crypto_sentinel.spark import ops, procs

    settings = _settings(args)
    jars = ops.install(settings, quiet=True)
    master = args.master or settings.spark_master
    job_args = ["--available-now"] if args.available_now else []
    env = ops.spark_env(settings)
    # The job reads its settings from the environment, resolved here once.
    env["SENTINEL_LAKE_DIR"] = str(settings.lake_path)
    env["SENTINEL_LAKE_URI"] = settings.lake_uri or ""
    env["SENTINEL_DATA_DIR"] = str(settings.data_dir.resolve())
    env["SENTINEL_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    return procs.run_submit(ops.submit_command(settings, master, jars, *job_args), env)


def cmd_cluster(args: argparse.Namespace) -> int:
    from crypto_sentinel.spark import ops

    settings = _settings(args)
    if args.action == "master":  # foreground, e.g. as a container's command
        ops.run_in_foreground(settings, ops.master_command(args.host, args.port, args.webui_port))
    if args.action == "worker":
        if not args.master_url:
            print("sentinel spark cluster worker: give the master, e.g. spark://HOST:7077",
                  file=sys.stderr)  # fmt: skip
            return 2
        command = ops.worker_command(settings, args.master_url, args.host, args.webui_port)
        ops.run_in_foreground(settings, command)
    if args.action == "start":
        state = ops.cluster_start(settings, timeout=args.timeout, workers=args.workers)
        pids = ", ".join(str(p) for p in state.worker_pids)
        print(f"master {state.master_url} (pid {state.master_pid}), worker pids {pids}")
        return 0
    if args.action == "stop":
        if not ops.cluster_stop(settings.data_dir):
            print("no Spark cluster recorded under", settings.data_dir.resolve())
        return 0
    status = ops.cluster_status(settings.data_dir)
    print(json.dumps(status, indent=2) if status else "no Spark cluster recorded")
    return 0 if status and status["master_alive"] and status["worker_alive"] else 3


def add_cli(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    spark = verbs.add_parser("spark", help="the Spark Structured Streaming engine")
    sub = spark.add_subparsers(dest="spark_command", metavar="{install,submit,cluster}")

    def usage(_args: argparse.Namespace) -> int:
        spark.print_help(sys.stderr)
        return 2

    spark.set_defaults(func=usage)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="state folder (default .sentinel)")

    p = sub.add_parser("install", parents=[common], help="resolve the Kafka source jars (Maven)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_guard(cmd_install))

    p = sub.add_parser("submit", parents=[common], help="run the streaming job (spark-submit)")
    p.add_argument("--master", help="local[2] (default) or spark://HOST:PORT")
    p.add_argument("--available-now", action="store_true", help="process the backlog and stop")
    p.add_argument(
        "--lake",
        type=parse_lake,
        help="lake folder or s3://bucket/prefix (default <data dir>/lake)",
    )
    p.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers")
    p.set_defaults(func=_guard(cmd_submit))

    p = sub.add_parser(
        "cluster",
        parents=[common],
        help="a standalone master and one worker",
        description="start|stop|status: a local master and worker in the background."
        " master|worker: one daemon in the foreground (a container's command).",
    )
    p.add_argument("action", choices=["start", "stop", "status", "master", "worker"])
    p.add_argument("master_url", nargs="?", help="worker: the master, spark://HOST:PORT")
    p.add_argument("--timeout", type=float, default=90.0, help="start-up timeout, seconds")
    p.add_argument("--workers", type=int, default=1, help="start: how many workers (default 1)")
    p.add_argument("--host", help="master/worker: address to bind and advertise")
    p.add_argument("--port", type=int, default=7077, help="master: port (default 7077)")
    p.add_argument("--webui-port", type=int, default=8080, help="master/worker: web UI port")
    p.set_defaults(func=_guard(cmd_cluster))
