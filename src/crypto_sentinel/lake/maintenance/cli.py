"""`sentinel maintain compact|retain|vacuum|checkpoint|report` and `sentinel rebuild`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

from deltalake import DeltaTable

from crypto_sentinel.books.processor import BookSettings
from crypto_sentinel.clierrors import one_line_errors
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import is_remote, parse_lake
from crypto_sentinel.lake.maintenance.files import lake_exists
from crypto_sentinel.lake.maintenance.maintainer import (
    CLI_LOCK_WAIT_S,
    Maintainer,
    MaintenanceBusy,
)
from crypto_sentinel.lake.maintenance.policy import MiB, Policy
from crypto_sentinel.lake.maintenance.report import format_report, storage_report
from crypto_sentinel.lake.rebuild import RebuildError, rebuild
from crypto_sentinel.progress import bar, wanted

# --- CLI -------------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> tuple[Maintainer, list[T.TableSpec]] | None:
    from crypto_sentinel.config import load_settings

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    lake = args.lake or settings.lake_root
    if not lake_exists(lake):
        print(f"sentinel maintain: no lake at {lake}", file=sys.stderr)
        return None
    policy = Policy.from_settings(settings)
    specs = list(T.ALL_TABLES)
    if getattr(args, "table", None):
        known = {s.name: s for s in T.ALL_TABLES}
        unknown = [t for t in args.table if t not in known]
        if unknown:
            names = ", ".join(known)
            print(f"sentinel maintain: unknown table {unknown}; one of {names}", file=sys.stderr)
            return None
        specs = [known[t] for t in args.table]
    # a running pipeline's pass ends within seconds: wait for it
    return Maintainer(lake, policy, lock_wait=CLI_LOCK_WAIT_S), specs


def _print(results: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(results, indent=2, default=str))
        return
    for r in results:
        rest = {k: v for k, v in r.items() if k not in ("table", "action")}
        print(f"{r['action']:<10} {r['table']:<20} {json.dumps(rest, default=str)}")


def _each(
    args: argparse.Namespace, specs: list[T.TableSpec], verb: str, run: Any
) -> list[dict[str, Any]]:
    """`run(spec)` for every table, with a bar naming the table at work (a terminal only)."""
    results = []
    with bar(f"maintain {verb}", len(specs), quiet=args.quiet or args.json) as shown:
        for spec in specs:
            shown.update(note=spec.name)
            results.append(run(spec))
            shown.advance()
        shown.update(note="")
    return results


#: A maintain verb says in one line which process keeps the lake's maintenance.
_refusing_busy = one_line_errors(
    "sentinel maintain", MaintenanceBusy, hint="; try again when its pass ends"
)


@_refusing_busy
def _cmd_compact(args: argparse.Namespace) -> int:
    opened = _open(args)
    if opened is None:
        return 2
    m, specs = opened
    if args.target_mb:
        m.policy = dataclasses.replace(m.policy, target_file_bytes=args.target_mb * MiB)
    max_files = 1 if args.all else args.max_files
    zorder = args.zorder or None
    compact = partial(m.compact, max_files=max_files, zorder=zorder)
    _print(_each(args, specs, "compact", compact), args.json)
    return 0


@_refusing_busy
def _cmd_retain(args: argparse.Namespace) -> int:
    opened = _open(args)
    if opened is None:
        return 2
    m, specs = opened
    retain = partial(m.retain, days=args.days, dry_run=args.dry_run)
    _print(_each(args, specs, "retain", retain), args.json)
    return 0


@_refusing_busy
def _cmd_vacuum(args: argparse.Namespace) -> int:
    opened = _open(args)
    if opened is None:
        return 2
    m, specs = opened
    hours = args.safety_hours
    vacuum = partial(m.vacuum, safety_hours=hours, full=args.full, dry_run=args.dry_run)
    _print(_each(args, specs, "vacuum", vacuum), args.json)
    return 0


@_refusing_busy
def _cmd_checkpoint(args: argparse.Namespace) -> int:
    opened = _open(args)
    if opened is None:
        return 2
    m, specs = opened
    checkpoint = partial(m.checkpoint, force=not args.if_due)
    _print(_each(args, specs, "checkpoint", checkpoint), args.json)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    opened = _open(args)
    if opened is None:
        return 2
    m, _ = opened
    report = storage_report(m.lake, sample_rows=args.sample_rows)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from crypto_sentinel.config import load_settings

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    lake = args.lake or settings.lake_root
    if is_remote(lake):
        print(
            f"sentinel rebuild: {lake} is on object storage; rebuild stages its work inside"
            " the lake folder, so it runs on a local lake only",
            file=sys.stderr,
        )
        return 2
    lake = Path(lake)
    if not lake.is_dir():
        print(f"sentinel rebuild: no lake at {lake}", file=sys.stderr)
        return 2
    books = None
    if settings.books or _has_books(lake):  # books kept now, or once: derive them again
        books = BookSettings.from_settings(settings)
    try:
        with bar("rebuild from bronze", quiet=args.quiet) as shown:
            steps = (lambda line: shown.update(note=line)) if wanted(args.quiet) else print
            result = rebuild(
                lake,
                batch_frames=args.batch_frames,
                progress=steps,
                on_frames=lambda done, total: shown.update(completed=done, total=total),
                books=books,
            )
    except RebuildError as exc:
        print(f"sentinel rebuild: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


def _has_books(lake: Path) -> bool:
    """Whether the lake holds book rows (written while `books` was on)."""
    path = T.BOOK_UPDATES.path(lake)
    return DeltaTable.is_deltatable(str(path)) and bool(DeltaTable(str(path)).file_uris())


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `maintain compact|retain|vacuum|checkpoint|report` and `rebuild`."""
    maintain = subparsers.add_parser(
        "maintain",
        help="compact, expire, vacuum and checkpoint the lake; storage report",
        description="Lake upkeep on demand (`sentinel up` also runs it in-process). Safe while"
        " the stream writes: compaction never changes data and conflicts are retried.",
    )

    def usage(_args: argparse.Namespace) -> int:
        maintain.print_help(sys.stderr)
        return 2

    maintain.set_defaults(func=usage)
    verbs = maintain.add_subparsers(
        dest="maintain_command", metavar="{compact,retain,vacuum,checkpoint,report}"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--lake", type=parse_lake, help="lake folder or s3://bucket/prefix (default: settings)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    tables = argparse.ArgumentParser(add_help=False)
    tables.add_argument(
        "--table",
        action="append",
        help="only this table, e.g. silver.trades (repeatable; default all)",
    )

    p = verbs.add_parser(
        "compact",
        parents=[common, tables],
        help="bin-pack small files of partitions over the file bound",
        description="Bin-pack the small files of every partition holding more files than the"
        " bound into files of the target size. Commits are data-unchanged.",
    )
    p.add_argument("--max-files", type=int, help="files per partition before compacting")
    p.add_argument("--target-mb", type=int, help="target file size in MB")
    p.add_argument("--all", action="store_true", help="compact every partition with small files")
    p.add_argument("--zorder", action="store_true", help="z-order closed partitions too")
    p.set_defaults(func=_cmd_compact)

    p = verbs.add_parser(
        "retain",
        parents=[common, tables],
        help="delete date partitions older than the retention",
        description="Delete whole date partitions older than each table's retention (settings"
        " retention_*_days; bronze 7 days by default, others kept). Files go at vacuum.",
    )
    p.add_argument("--days", type=int, help="retention in days for the selected tables")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.set_defaults(func=_cmd_retain)

    p = verbs.add_parser(
        "vacuum",
        parents=[common, tables],
        help="delete unreferenced files older than the safety window",
        description="Delete data files no snapshot newer than the safety window references.",
    )
    p.add_argument("--safety-hours", type=int, help="keep replaced files this many hours")
    p.add_argument("--full", action="store_true", help="also find orphans by listing the table")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.set_defaults(func=_cmd_vacuum)

    p = verbs.add_parser(
        "checkpoint",
        parents=[common, tables],
        help="write a Delta checkpoint and trim the log",
        description="Write a checkpoint at the current version and delete expired log files.",
    )
    p.add_argument("--if-due", action="store_true", help="only when the interval has passed")
    p.set_defaults(func=_cmd_checkpoint)

    p = verbs.add_parser(
        "report",
        parents=[common],
        help="rows, files, bytes per trade and size vs CSV / JSON lines",
        description="Per table: rows, files, bytes, average file size, bytes per trade, and"
        " the size of the same rows as CSV and as JSON lines.",
    )
    p.add_argument(
        "--sample-rows",
        type=int,
        default=2_000_000,
        help="rows per table rendered as CSV/JSON to measure text size (default 2,000,000)",
    )
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser(
        "rebuild",
        help="recompute silver and gold from bronze",
        description="Recompute silver (trades, tickers), gold (candles) and quarantine from the"
        " bronze raw frames, then replace them table by table in one commit each. Idempotent."
        " Stop ingestion first: a lake that changes meanwhile is left as it was.",
    )
    p.add_argument(
        "--lake", type=parse_lake, help="lake folder (default: from settings; local lakes only)"
    )
    p.add_argument("--batch-frames", type=int, default=100_000, help="frames per staging commit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_rebuild)
