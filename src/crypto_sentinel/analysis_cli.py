"""`sentinel sql`, `sentinel export` and `sentinel history`: the analysts' verbs.

Bad input (unknown table, bad SQL, bad time, unknown exchange) is one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from crypto_sentinel.lake.location import parse_lake

#: `sentinel export --table` names (the SQL views of `Lake.sql`).
TABLES = ("trades", "tickers", "candles_1m", "gaps", "quarantine")


def _lake(args: argparse.Namespace) -> Any:
    from crypto_sentinel.cli import _settings
    from crypto_sentinel.lake.catalog import Lake

    return Lake(_settings(args).lake_root)


def _fail(verb: str, message: str) -> int:
    print(f"sentinel {verb}: {message}", file=sys.stderr)
    return 2


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, and not with --quiet."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def cmd_sql(args: argparse.Namespace) -> int:
    from crypto_sentinel.lake.catalog import LakeError
    from crypto_sentinel.lake.export import write_result

    try:
        result = _lake(args).sql(args.query)
        write_result(result, args.format, args.out)
    except (LakeError, ValueError, OSError) as exc:
        return _fail("sql", str(exc))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from crypto_sentinel.lake.catalog import LakeError
    from crypto_sentinel.lake.export import BatchWriter, export_batches

    try:
        schema, total, batches = export_batches(_lake(args), args.table, args.since, args.until)
        writer = BatchWriter(args.format, schema, args.out)
    except (LakeError, ValueError, OSError) as exc:
        return _fail("export", str(exc))
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not show_progress(args),
        transient=True,
    ) as progress:
        task = progress.add_task(f"export {args.table}", total=total)
        for batch in batches:
            writer.write(batch)
            progress.advance(task, batch.num_rows)
    writer.close()
    print(f"exported {writer.rows} rows of {args.table} to {args.out}", file=sys.stderr)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import UTC, datetime

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from crypto_sentinel.cli import _settings
    from crypto_sentinel.history import History, HistoryError, ProductRun
    from crypto_sentinel.lake.catalog import utc
    from crypto_sentinel.sources.venues import venue_of

    settings = _settings(args)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request drowns the bar
    if show_progress(args):  # start-up lines (lock, engine state) would break the bar
        logging.getLogger("crypto_sentinel").setLevel(logging.WARNING)
    try:
        since = utc(args.since)
        until = None if args.until is None else utc(args.until)
        if since >= datetime.now(UTC):
            raise HistoryError("--since is in the future")
        venue = venue_of(args.exchange)
        rest_url = args.rest_url
        if rest_url is None:
            if venue is None or args.exchange != venue:
                raise HistoryError(f"--exchange {args.exchange}: give its REST URL (--rest-url)")
            rest_url = settings.venue_urls(venue)[1]
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[trades]:>10,} trades {task.fields[pages]:>6,} pages"),
            TimeRemainingColumn(),
            disable=not show_progress(args),
        )
        span = ((until or datetime.now(UTC)) - since).total_seconds()
        tasks = {p: progress.add_task(p, total=span, trades=0, pages=0) for p in args.product}

        def on_page(run: ProductRun) -> None:
            """The bar spans [since, the product's newest trade in range] once it is known."""
            end = run.end or run.newest  # a forward walk knows its end from the start
            span = None if end is None else (end - since).total_seconds()
            done = run.outcome != "running"
            completed = span if done and span is not None else run.covered(since)
            progress.update(tasks[run.product_id], total=span, completed=completed,
                            trades=run.trades, pages=run.pages)  # fmt: skip

        job = History(settings.lake_root, args.exchange, rest_url, args.product, since, until,
                      rate=args.rate, on_page=on_page)  # fmt: skip
        with progress:
            summary = asyncio.run(job.run())
    except ValueError as exc:  # HistoryError, LakeError, a bad --rate
        return _fail("history", str(exc))
    print(summary.render())
    return 1 if any(p.outcome != "done" for p in summary.products) else 0


def _add_lake(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lake",
        type=parse_lake,
        help="lake folder or s3://bucket/prefix (default <data dir>/lake)",
    )
    p.add_argument("--data-dir", type=Path, help="data folder (default .sentinel)")


def add_cli(verbs: Any) -> None:
    p = verbs.add_parser(
        "sql",
        help="run one SELECT over the lake (views: trades, tickers, candles_1m, gaps, quarantine)",
        description="DuckDB over the Delta tables' current snapshot; times are UTC and"
        " decimals exact.",
    )
    p.add_argument("query", help='e.g. "SELECT product_id, count(*) FROM trades GROUP BY 1"')
    p.add_argument(
        "--format", choices=("table", "csv", "jsonl", "parquet"), default="table",
        help="output: aligned table (default), csv, jsonl, parquet (needs --out)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help="write to this file instead of stdout")
    _add_lake(p)
    p.set_defaults(func=cmd_sql)

    p = verbs.add_parser(
        "export",
        help="bulk extract of one table, filtered by its time column, to Parquet or CSV",
    )
    p.add_argument("--table", required=True, choices=TABLES)
    p.add_argument("--since", help="ISO time (inclusive); default: the beginning")
    p.add_argument("--until", help="ISO time (exclusive); default: now")
    p.add_argument("--format", choices=("parquet", "csv", "jsonl"), default="parquet")
    p.add_argument("--out", type=Path, required=True, help="output file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_lake(p)
    p.set_defaults(func=cmd_export)

    p = verbs.add_parser(
        "history",
        help="fill the lake's past from the exchange's REST trade history (resumable)",
        description="Pages backwards through the venue's REST trades within its rate limit and"
        " writes them through the normal engine (dedupe, candles, gap records). A rerun"
        " continues where a killed run stopped. Exit 1 if REST refused a page (a gap record"
        " names it).",
    )
    p.add_argument(
        "--exchange",
        default="coinbase",
        help="lake name: coinbase, binance, or their simulated twins (simulator,"
        " simulator-binance: with --rest-url)",
    )
    p.add_argument("--product", action="append", required=True, help="product id (repeatable)")
    p.add_argument("--since", required=True, help="ISO time: the oldest trade wanted")
    p.add_argument("--until", help="ISO time (exclusive); default: now")
    p.add_argument("--rest-url", help="REST base URL (default: the venue's; or a simulator's)")
    p.add_argument(
        "--rate", type=float, help="requests/s (default: the venue's public limit, 10 or 5)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_lake(p)
    p.set_defaults(func=cmd_history)
