"""`sentinel`: one entry point, one verb per job. Run `sentinel VERB --help`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto_sentinel import __version__
from crypto_sentinel.config import LIVE_VENUES, ConfigError, Settings, load_settings
from crypto_sentinel.eventloop import keep_analysis_libraries_out, run_event_loop
from crypto_sentinel.lake.errors import LakeWriteFailed
from crypto_sentinel.lake.location import lake_overrides, parse_lake
from crypto_sentinel.lake.lock import LakeLocked

if TYPE_CHECKING:
    from crypto_sentinel.runtime import Pipeline

log = logging.getLogger("crypto_sentinel")


#: The command-line flag of each setting a flag can set (config errors name the flag used).
FLAGS = {
    "products": "--products",
    "host": "--host",
    "port": "--port",
    "data_dir": "--data-dir",
    "bus": "--bus",
    "kafka_bootstrap": "--kafka-bootstrap",
    "lake_dir": "--lake",
    "lake_uri": "--lake",
    "source": "--source",
    "simulator_rate": "--rate",
    "simulator_seed": "--seed",
    "replay_speed": "--speed",
    "simulator_url": "--simulator-url",
    "simulator_faults": "--faults",
    "replay_exchange": "--exchange",
    "kafka_group": "--group",
}


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {
        "products": getattr(args, "products", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "data_dir": getattr(args, "data_dir", None),
        "bus": getattr(args, "bus", None),
        "kafka_bootstrap": getattr(args, "kafka_bootstrap", None),
        **lake_overrides(getattr(args, "lake", None)),
        **extra,
    }
    settings = load_settings(flags=FLAGS, **overrides)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    return settings


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        help="coinbase (default) | binance | kraken | coinbase-advanced, several comma-separated"
        " (each falls back to its simulator if unreachable) | simulator | simulator-<venue>"
        " | replay:PATH",
    )
    p.add_argument("--rate", type=float, help="simulator trades/s (default 20)")
    p.add_argument("--seed", type=int, help="simulator seed (default 1)")
    p.add_argument("--speed", help="replay speed: a factor like 10, or max")
    p.add_argument("--simulator-url", help="with --source simulator: a running `sentinel simulate`")


def _add_kafka(p: argparse.ArgumentParser, choose: bool = True) -> None:
    if choose:
        p.add_argument("--bus", choices=["memory", "kafka"], help="in-process (default) or Kafka")
    p.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers (default 127.0.0.1:9092)")


def _add_common(p: argparse.ArgumentParser, api: bool = True) -> None:
    p.add_argument(
        "--products", help="comma-separated product ids (default BTC-USD,ETH-USD,SOL-USD)"
    )
    p.add_argument(
        "--lake",
        type=parse_lake,
        help="lake folder or s3://bucket/prefix (default <data dir>/lake)",
    )
    p.add_argument("--data-dir", type=Path, help="data folder (default .sentinel)")
    if api:
        p.add_argument("--host", help="API bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="API port (default 8000)")


def _source_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "source": args.source,
        "simulator_rate": args.rate,
        "simulator_seed": args.seed,
        "replay_speed": args.speed,
        "simulator_url": args.simulator_url,
    }


def cmd_up(args: argparse.Namespace) -> int:
    settings = _settings(args, **_source_settings(args))
    run_event_loop(_run_pipeline(settings, with_api=True))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = _settings(args, bus="kafka", **_source_settings(args))
    run_event_loop(_run_pipeline(settings, with_api=False, process=False))
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    settings = _settings(args, bus="kafka", kafka_group=args.group)
    run_event_loop(_run_pipeline(settings, with_api=False, ingest=False))
    return 0


async def _run_pipeline(
    settings: Settings,
    with_api: bool,
    ingest: bool = True,
    process: bool = True,
    watch: Callable[[Pipeline], Awaitable[Any]] | None = None,
) -> None:
    """Run a pipeline; `watch(pipeline)` runs beside it (a progress bar) and is cancelled
    when the pipeline ends."""
    from crypto_sentinel.runtime import Pipeline
    from crypto_sentinel.startup import bind_api

    # The port first: a taken one stops start-up before anything runs or logs.
    sock = bind_api(settings.host, settings.port) if with_api else None
    try:
        pipeline = Pipeline(settings, ingest=ingest, process=process, api_socket=sock)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    watcher = None if watch is None else asyncio.ensure_future(watch(pipeline))
    try:
        await pipeline.run(with_api=with_api)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def cmd_replay(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        print(f"sentinel replay: no such file: {path}", file=sys.stderr)
        return 2
    settings = _settings(
        args, source=f"replay:{path}", replay_speed=args.speed, replay_exchange=args.exchange
    )
    from crypto_sentinel.progress import bar, wanted
    from crypto_sentinel.sources.replay import ReplaySource

    if not wanted(args.quiet):
        run_event_loop(_run_pipeline(settings, with_api=args.serve))
        return 0
    logging.getLogger("crypto_sentinel").setLevel(logging.WARNING)  # lines would break the bar
    size = path.stat().st_size
    with bar(f"replay {path.name}", size) as shown:

        def show(pipeline: Pipeline) -> None:
            source = pipeline.source
            if isinstance(source, ReplaySource):
                stats = pipeline.engine.stats
                note = f"{source.status.frames:,} frames read, {stats.frames:,} committed"
                shown.update(completed=source.bytes_read, note=note)

        async def watch(pipeline: Pipeline) -> None:
            try:
                while True:
                    show(pipeline)
                    await asyncio.sleep(0.2)
            finally:  # the end of the replay: where it stopped
                show(pipeline)

        run_event_loop(_run_pipeline(settings, with_api=args.serve, watch=watch))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    run_event_loop(_serve_lake(settings, args.exchange))
    return 0


async def _serve_lake(settings: Settings, exchange: str | None) -> None:
    """`serve_lake`, imported inside the event loop (see `run_event_loop`)."""
    from crypto_sentinel.api.serving import serve_lake

    await serve_lake(settings, exchange)


def cmd_simulate(args: argparse.Namespace) -> int:
    from crypto_sentinel.pipeline.simulated import fault_plan
    from crypto_sentinel.simulator import SimulatorServer, write_recording

    settings = _settings(
        args, simulator_rate=args.rate, simulator_seed=args.seed, simulator_faults=args.faults
    )
    if args.record:
        count = write_recording(
            Path(args.record),
            settings.products,
            args.count,
            seed=settings.simulator_seed,
            rate=settings.simulator_rate,
        )
        print(f"wrote {count} trades to {args.record}")
        return 0
    resume = {}
    if not args.fresh:  # continue what the lake holds of an earlier run
        from crypto_sentinel.lake.query import LakeReader
        from crypto_sentinel.pipeline.simulated import simulator_resume
        from crypto_sentinel.sources.venues import simulated_name

        resume = simulator_resume(
            LakeReader(settings.lake_root), settings.products, None, simulated_name(args.venue)
        )
    server = SimulatorServer(
        products=settings.products,
        rate=settings.simulator_rate,
        seed=settings.simulator_seed,
        host=args.bind,
        port=args.sim_port,
        max_trades=args.max_trades,
        faults=fault_plan(settings.simulator_faults),
        venue=args.venue,
        resume=resume,
    )
    log.info("simulated %s exchange on ws://%s:%d", args.venue, args.bind, args.sim_port)
    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(server.run_forever())
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from crypto_sentinel.sources.feed import FeedSource
    from crypto_sentinel.sources.record import record
    from crypto_sentinel.sources.venues import connector_for

    settings = _settings(args)
    venue = args.exchange
    url = args.url or settings.venue_urls(venue)[0]
    products = settings.products_for(venue)
    source = FeedSource(connector_for(venue), products, url, exchange=venue, kind=venue)
    written = asyncio.run(record(source, Path(args.out), args.duration, args.max_frames))
    print(f"recorded {written} frames from {url} to {args.out}")
    if venue != "coinbase":
        print(f"replay it with: sentinel replay {args.out} --exchange {venue}")
    return 0


#: Benchmarks live in the repo's bench/ folder; each module has main(trades, workdir, port)
#: returning a JSON-able dict and markdown(result) rendering rows for docs/benchmarks.md.
BENCHMARKS = ("ingest", "api", "lake", "spark", "memory", "history", "books", "commits")

#: Optional dependencies -> the extra that installs them (pyproject's optional-dependencies).
EXTRAS = {"pyspark": "spark", "delta": "spark", "py4j": "spark"}

#: Modules that add their own verbs with add_cli(verbs).
VERB_MODULES = (
    "crypto_sentinel.ops.kafka",
    "crypto_sentinel.lake.maintenance.cli",
    "crypto_sentinel.spark.cli",
    "crypto_sentinel.health",
    "crypto_sentinel.verify",
    "crypto_sentinel.analysis_cli",
)


def cmd_bench(args: argparse.Namespace) -> int:
    import inspect
    import json

    try:
        module = importlib.import_module(f"bench.{args.what}")
    except ModuleNotFoundError:
        print(f"sentinel bench: bench/{args.what}.py not found (run from a source checkout)",
              file=sys.stderr)  # fmt: skip
        return 2
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Options of one benchmark only go, as keyword arguments, to the main() that takes them.
    names = ("phases", "live_seconds", "live_rate", "fast_trades", "kafka_trades", "minutes",
             "rate", "clients", "exchange", "poller")  # fmt: skip
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    wrong = [f"--{k.replace('_', '-')}" for k in options
             if k not in inspect.signature(module.main).parameters]  # fmt: skip
    if wrong:
        print(f"sentinel bench {args.what}: {', '.join(wrong)} does not apply", file=sys.stderr)
        return 2
    result = module.main(args.trades, workdir, args.port, **options)
    out = workdir / f"{args.what}-{result['date'][:19].replace(':', '')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(module.markdown(result))
    print(f"saved {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel",
        description="Crypto Sentinel: exchange feeds -> Delta Lake -> JSON API.",
    )
    parser.add_argument("--version", action="version", version=f"sentinel {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of a start-up failure (also SENTINEL_LOG_LEVEL=DEBUG);"
        " may be given after the verb too",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser("up", help="run the whole pipeline in one process (source, engine, API)")
    _add_source(p)
    _add_kafka(p)
    _add_common(p)
    p.set_defaults(func=cmd_up)

    p = verbs.add_parser("ingest", help="distributed: source -> Kafka (no lake, no API)")
    _add_source(p)
    _add_kafka(p, choose=False)
    _add_common(p, api=False)
    p.set_defaults(func=cmd_ingest)

    p = verbs.add_parser("process", help="distributed: Kafka consumer group -> engine -> Delta")
    p.add_argument("--group", help="consumer group (default sentinel-process)")
    _add_kafka(p, choose=False)
    _add_common(p, api=False)
    p.set_defaults(func=cmd_process)

    p = verbs.add_parser("serve", help="API over the lake (and the Kafka tail with --bus kafka)")
    p.add_argument("--exchange", help="exchange name in the lake (default from --source settings)")
    _add_kafka(p)
    _add_common(p)
    p.set_defaults(func=cmd_serve)

    p = verbs.add_parser("simulate", help="run a local Coinbase-compatible exchange (WS + REST)")
    p.add_argument(
        "--venue",
        default="coinbase",
        choices=LIVE_VENUES,
        help="protocol to speak (default coinbase: Coinbase Exchange)",
    )
    p.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.add_argument("--sim-port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--rate", type=float, help="trades/s across products, 1..50000 (default 20)")
    p.add_argument("--seed", type=int, help="random seed (default 1)")
    p.add_argument("--max-trades", type=int, help="stop emitting after this many trades")
    p.add_argument(
        "--faults",
        help="fault injection, e.g. disconnect_every=3,drop=0.01,duplicate=0.01,reorder=0.01,"
        "malformed=0.01,seed=7 (deterministic by seed)",
    )
    p.add_argument("--record", metavar="FILE", help="write COUNT trades to an NDJSON file and exit")
    p.add_argument("--count", type=int, default=1_000_000, help="trades for --record")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start the price walk from the seed instead of the lake's last simulated trades",
    )
    _add_common(p, api=False)
    p.set_defaults(func=cmd_simulate)

    p = verbs.add_parser("replay", help="play a recorded NDJSON file into the lake")
    p.add_argument("file", help="NDJSON recording (sentinel record output or bare frames)")
    p.add_argument("--speed", default="max", help="N x recorded speed, or max (default)")
    p.add_argument("--exchange", default="coinbase", help="exchange name for the lake")
    p.add_argument("--serve", action="store_true", help="keep the API running after the replay")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)
    p.set_defaults(func=cmd_replay)

    p = verbs.add_parser("record", help="record live frames to NDJSON with receive times")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument(
        "--exchange",
        choices=LIVE_VENUES,
        default="coinbase",
        help="venue protocol to speak (default coinbase); its products and URL settings apply",
    )
    p.add_argument("--url", help="WebSocket URL (default: the venue's; a simulator's works too)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    _add_common(p, api=False)
    p.set_defaults(func=cmd_record)

    p = verbs.add_parser("bench", help="measure the pipeline (see docs/benchmarks.md)")
    p.add_argument("what", choices=BENCHMARKS, nargs="?", default="ingest")
    p.add_argument("--trades", type=int, default=1_000_000, help="simulated trades to replay")
    p.add_argument("--workdir", default="bench/results", help="recordings, lakes and results")
    p.add_argument("--port", type=int, default=8090, help="API port during the run")
    p.add_argument(
        "--phases",
        help="ingest: comma-separated phases of replay,live,fast,kafka; books: lake,route"
        " (default all of them); commits: the log lengths to compare, e.g. 10,130,500",
    )
    p.add_argument(
        "--live-seconds",
        type=float,
        help="ingest live phase: seconds (default 60); books route phase (default 20)",
    )
    p.add_argument(
        "--live-rate", type=float, help="ingest live phase: frames/s, 2 per trade (default 5000)"
    )
    p.add_argument("--fast-trades", type=int, help="ingest fast phase: trades (default 200000)")
    p.add_argument("--kafka-trades", type=int, help="ingest kafka phase: trades (default 200000)")
    p.add_argument(
        "--poller",
        choices=("lean", "httpx"),
        help="ingest: HTTP client of the /latest pollers (default lean: keep-alive HTTP/1.1)",
    )
    p.add_argument("--minutes", type=float, help="memory: minutes of live feed (default 10)")
    p.add_argument("--rate", type=float, help="memory: simulator trades/s (default 2000)")
    p.add_argument("--clients", type=int, help="memory: API clients polling (default 50)")
    p.add_argument(
        "--exchange",
        choices=LIVE_VENUES,
        help="ingest: the recording's protocol and codec (default coinbase; others: replay"
        " phase and decode floor)",
    )
    p.set_defaults(func=cmd_bench)

    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_cli(verbs)
    return parser


def _debug(argv: list[str]) -> bool:
    """Tracebacks of start-up failures: `--debug` anywhere, or SENTINEL_LOG_LEVEL=DEBUG."""
    return "--debug" in argv or os.environ.get("SENTINEL_LOG_LEVEL", "").upper() == "DEBUG"


#: Verbs that run a long-lived process. pandas and NumPy are kept out of them before the verb
#: modules are imported (`eventloop.keep_analysis_libraries_out`: pyarrow would import them).
LONG_LIVED = frozenset({"up", "ingest", "process", "serve", "simulate", "replay", "record"})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if next((a for a in argv if not a.startswith("-")), None) in LONG_LIVED:
        keep_analysis_libraries_out()
    debug = _debug(argv)
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return int(args.func(args) or 0)
    except (ConfigError, LakeLocked) as exc:  # a start-up refusal: one line, no traceback
        if debug:
            traceback.print_exc()
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional extra that is not installed
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        if debug:
            traceback.print_exc()
        print(
            f"sentinel {args.verb}: needs the optional {extra!r} extra (no module {exc.name!r});"
            f" fix: pip install 'crypto-sentinel[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except LakeWriteFailed as exc:  # the engine stopped after the writer's retries
        if debug:
            traceback.print_exc()
        print(f"sentinel: {exc} (the next start derives it again from bronze)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
