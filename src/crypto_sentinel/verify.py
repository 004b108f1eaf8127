"""`sentinel verify`: is the lake complete? Checked against the exchange itself.

Two checks, the ones users of a market-data store actually run:
- trade-id contiguity per product and hour (Coinbase trade ids are contiguous per product, so
  every hole is a missed trade) plus duplicate ids, and the unfilled gap records; per hour
  also how many stored minutes are `complete` by the rule the API's candles carry
  (`crypto_sentinel.completeness`), and which are not;
- our 1-minute candles against the exchange's own REST candles, exactly (Coinbase
  `GET /products/{id}/candles`, Binance klines, Kraken OHLC, Coinbase Advanced candles: each
  venue's `rest_candles` in `sources/<venue>.py`).
The first and last minute of each product are partial by nature (we joined and left
mid-minute) and are skipped unless `--all-minutes`. Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from crypto_sentinel.completeness import minute_flags
from crypto_sentinel.gapflags import NOT_CLOSED, TRADE_GAP, GapFlags, Span
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot, parse_lake
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.sources.ratelimit import TokenBucket
from crypto_sentinel.sources.venues import connector_for, rest_candles_for, venue_of

CANDLE_FIELDS = ("low", "high", "open", "close", "volume")


@dataclass
class ProductReport:
    product_id: str
    trades: int = 0
    first_trade_id: int | None = None
    last_trade_id: int | None = None
    missing_ids: int = 0
    duplicate_ids: int = 0
    holes: list[tuple[int, int]] = field(default_factory=list)  # first shown only
    hours: list[dict[str, Any]] = field(default_factory=list)
    unfilled_gaps: int = 0
    incomplete_minutes: int = 0  # stored minutes whose candle is not `complete`
    candles_compared: int = 0
    candle_mismatches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing_ids
            or self.duplicate_ids
            or self.unfilled_gaps
            or self.incomplete_minutes
            or self.candle_mismatches
        )


def contiguity(reader: LakeReader, exchange: str, product: str) -> ProductReport:
    """Trades, holes and duplicates per product, and per hour: count, ids, holes after."""
    report = ProductReport(product)
    rows = reader.query(
        T.TRADES,
        "SELECT date_trunc('hour', time) AS hour, count(*) AS trades,"
        " count(DISTINCT trade_id) AS ids, min(trade_id) AS lo, max(trade_id) AS hi"
        " FROM t WHERE exchange = ? AND product_id = ? GROUP BY 1 ORDER BY 1",
        [exchange, product],
    )
    islands = reader.trade_id_ranges().get((exchange, product), [])
    holes = [(hi + 1, lo - 1) for (_, hi), (lo, _) in itertools.pairwise(islands)]
    for r in rows:
        inside = sum(
            min(b, r["hi"]) - max(a, r["lo"]) + 1 for a, b in holes if a <= r["hi"] and b >= r["lo"]
        )
        report.hours.append(
            {
                "hour": r["hour"].isoformat(),
                "trades": r["trades"],
                "first_trade_id": r["lo"],
                "last_trade_id": r["hi"],
                "missing": inside,
                "duplicates": r["trades"] - r["ids"],
            }
        )
        report.trades += r["trades"]
        report.duplicate_ids += r["trades"] - r["ids"]
    if islands:
        report.first_trade_id, report.last_trade_id = islands[0][0], islands[-1][1]
    report.missing_ids = sum(b - a + 1 for a, b in holes)
    report.holes = holes[:20]
    gaps = reader.query(
        T.GAPS,
        "SELECT count(*) AS n FROM t AS g WHERE g.exchange = ? AND g.product_id = ?"
        f" AND g.outcome <> 'filled' AND {TRADE_GAP} AND {NOT_CLOSED}",
        [exchange, product],
    )
    report.unfilled_gaps = int(gaps[0]["n"]) if gaps else 0
    return report


def completeness(
    reader: LakeReader, exchange: str, product: str, report: ProductReport, spans: list[Span]
) -> None:
    """Per hour: stored minutes and how many are `complete`, by the rule the API serves
    (`crypto_sentinel.completeness`) over the product's whole stored history."""
    rows = reader.query(
        T.CANDLES_1M,
        "SELECT start, first_trade_id, last_trade_id, trade_count FROM t"
        " WHERE exchange = ? AND product_id = ? ORDER BY start",
        [exchange, product],
    )
    minutes = [
        (r["start"], r["first_trade_id"], r["last_trade_id"], r["trade_count"]) for r in rows
    ]
    flags = minute_flags(minutes, spans)
    hours: dict[str, dict[str, Any]] = {}
    for (start, *_), complete in zip(minutes, flags, strict=True):
        hour = start.replace(minute=0, second=0, microsecond=0).isoformat()
        entry = hours.setdefault(hour, {"minutes": 0, "complete_minutes": 0, "incomplete": []})
        entry["minutes"] += 1
        if complete:
            entry["complete_minutes"] += 1
        elif len(entry["incomplete"]) < 20:
            entry["incomplete"].append(start.isoformat())
    for h in report.hours:
        entry = hours.pop(h["hour"], {"minutes": 0, "complete_minutes": 0, "incomplete": []})
        h.update(entry, complete=entry["minutes"] == entry["complete_minutes"])
    for hour, entry in hours.items():  # minutes whose trades are gone from silver
        report.hours.append({"hour": hour, **entry, "complete": False})
    report.hours.sort(key=lambda h: h["hour"])
    report.incomplete_minutes = flags.count(False)


def our_candles(reader: LakeReader, exchange: str, product: str) -> dict[int, list[Decimal]]:
    rows = reader.query(
        T.CANDLES_1M,
        "SELECT start, low, high, open, close, volume FROM t"
        " WHERE exchange = ? AND product_id = ? ORDER BY start",
        [exchange, product],
    )
    return {int(r["start"].timestamp()): [r[f] for f in CANDLE_FIELDS] for r in rows}


def compare_candles(
    report: ProductReport,
    ours: dict[int, list[Decimal]],
    theirs: dict[int, list[Decimal]],
    all_minutes: bool,
) -> None:
    minutes = sorted(ours.keys() | theirs.keys())
    if not all_minutes and ours:  # our first and last minute are partial by nature
        minutes = [m for m in minutes if min(ours) < m < max(ours)]
    for minute in minutes:
        report.candles_compared += 1
        mine, exch = ours.get(minute), theirs.get(minute)
        if mine == exch:
            continue
        report.candle_mismatches.append(
            {
                "start": datetime.fromtimestamp(minute, UTC).isoformat(),
                "lake": dict(zip(CANDLE_FIELDS, map(str, mine), strict=True)) if mine else None,
                "exchange": dict(zip(CANDLE_FIELDS, map(str, exch), strict=True)) if exch else None,
            }
        )


async def verify(
    lake: LakeRoot, exchange: str, rest_url: str, products: list[str] | None, all_minutes: bool
) -> list[ProductReport]:
    reader = LakeReader(lake)
    if products is None:
        found = reader.query(
            T.TRADES, "SELECT DISTINCT product_id FROM t WHERE exchange = ? ORDER BY 1", [exchange]
        )
        products = [r["product_id"] for r in found]
    venue = venue_of(exchange)
    if venue is None:
        raise ValueError(f"no exchange codec speaks {exchange!r}")
    rest = connector_for(venue).rest
    bucket = TokenBucket(rest.rate, rest.burst) if rest is not None else TokenBucket(1.0, 2)
    fetch = rest_candles_for(venue)
    reports = []
    flags = GapFlags(reader, ttl=0.0)
    flags.load()
    import httpx  # here, not at the top: every verb's module loads when the CLI starts

    async with httpx.AsyncClient(base_url=rest_url.rstrip("/"), timeout=30) as client:
        for product in products:
            report = contiguity(reader, exchange, product)
            completeness(reader, exchange, product, report, flags.spans(exchange, product))
            ours = our_candles(reader, exchange, product)
            theirs: dict[int, list[Decimal]] = {}
            if ours:
                last = max(ours) + (60 if all_minutes else 0)
                first = min(ours) - (60 if all_minutes else 0)
                theirs = await fetch(client, bucket.take, product, first, last)
            compare_candles(report, ours, theirs, all_minutes)
            reports.append(report)
    return reports


def render(reports: list[ProductReport], exchange: str) -> str:
    lines = [f"completeness report for exchange {exchange!r}"]
    for r in reports:
        state = "OK" if r.ok else "MISMATCH"
        lines.append(
            f"{r.product_id}: {state}  trades {r.trades}  ids {r.first_trade_id}..{r.last_trade_id}"
            f"  missing {r.missing_ids}  duplicates {r.duplicate_ids}"
            f"  unfilled gaps {r.unfilled_gaps}  incomplete minutes {r.incomplete_minutes}"
            f"  candles {r.candles_compared - len(r.candle_mismatches)}/{r.candles_compared} equal"
        )
        for h in r.hours:
            bad = h.get("missing") or h.get("duplicates") or not h["complete"]
            flag = "  <-- incomplete" if bad else ""
            lines.append(
                f"  {h['hour']}  trades {h.get('trades', 0)}  ids {h.get('first_trade_id')}.."
                f"{h.get('last_trade_id')}  missing {h.get('missing', 0)}"
                f"  duplicates {h.get('duplicates', 0)}"
                f"  complete minutes {h['complete_minutes']}/{h['minutes']}{flag}"
            )
            if h["incomplete"]:
                lines.append(f"    incomplete minutes: {', '.join(h['incomplete'])}")
        for a, b in r.holes:
            lines.append(f"  missing trade ids {a}..{b}")
        for m in r.candle_mismatches[:10]:
            lines.append(f"  candle {m['start']}: lake {m['lake']} exchange {m['exchange']}")
    if not reports:
        lines.append("no trades in the lake for this exchange")
    ok = bool(reports) and all(r.ok for r in reports)
    lines.append("COMPLETE" if ok else "INCOMPLETE")
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace) -> int:
    from crypto_sentinel.cli import _settings

    settings = _settings(args)
    exchange = args.exchange or settings.exchange
    venue = venue_of(exchange)
    if venue is None:
        print(f"sentinel verify: no exchange codec speaks {exchange!r}", file=sys.stderr)
        return 2
    rest_url = args.rest_url or settings.venue_urls(venue)[1]
    products = [p for p in args.products.split(",") if p] if args.products else None
    reports = asyncio.run(
        verify(settings.lake_root, exchange, rest_url, products, args.all_minutes)
    )
    if args.json:
        print(json.dumps([asdict(r) | {"ok": r.ok} for r in reports], indent=2, default=str))
    else:
        print(render(reports, exchange))
    return 0 if reports and all(r.ok for r in reports) else 1


def add_cli(verbs: Any) -> None:
    p = verbs.add_parser(
        "verify",
        help="compare the lake with the exchange: trade-id contiguity and 1-minute candles",
        description="Completeness report: trade-id holes and duplicates per product and hour,"
        " unfilled gap records, and our 1-minute candles against the exchange's REST candles."
        " Exits 1 on any mismatch.",
    )
    p.add_argument("--exchange", help="exchange name in the lake (default from settings)")
    p.add_argument(
        "--rest-url",
        help="exchange REST base URL (default: the venue's; a `sentinel simulate` URL works too)",
    )
    p.add_argument("--products", help="comma-separated product ids (default: all in the lake)")
    p.add_argument(
        "--lake",
        type=parse_lake,
        help="lake folder or s3://bucket/prefix (default <data dir>/lake)",
    )
    p.add_argument("--data-dir", type=Path, help="data folder (default .sentinel)")
    p.add_argument(
        "--all-minutes", action="store_true", help="also compare each product's first/last minute"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_verify)
