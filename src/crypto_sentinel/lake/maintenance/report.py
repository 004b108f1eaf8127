"""The storage report: per table rows, files, bytes per trade, and the size of the same rows
as CSV and as JSON lines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from deltalake import DeltaTable

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot, storage_options
from crypto_sentinel.lake.maintenance.files import add_actions, log_file_count, partitions
from crypto_sentinel.lake.maintenance.policy import utc_now

# --- storage report --------------------------------------------------------------------------


def _text_columns(batch: pa.RecordBatch) -> pa.Table:
    """Rows as a CSV or JSON file would hold them: decimals as the exchange writes them (no
    trailing zeros), times as ISO-8601 with a Z, everything else as is."""
    columns = {}
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        typ = col.type
        if pa.types.is_decimal(typ):
            text = pc.cast(col, pa.string())
            text = pc.replace_substring_regex(text, r"(\.\d*?)0+$", r"\1")
            col = pc.replace_substring_regex(text, r"\.$", "")
        elif pa.types.is_timestamp(typ):
            col = pc.binary_join_element_wise(
                pc.strftime(col, format="%Y-%m-%dT%H:%M:%S"), pa.scalar("Z"), ""
            )
        elif pa.types.is_date(typ):
            col = pc.cast(col, pa.string())
        columns[name] = col
    return pa.table(columns)


def text_sizes(batches: Iterator[pa.RecordBatch], max_rows: int) -> tuple[int, int, int]:
    """(rows, CSV bytes with header, JSON-lines bytes) of up to `max_rows` rows."""
    import duckdb  # only the storage report needs it: `sentinel up` does not load it for this

    rows = csv_bytes = json_bytes = 0
    db = duckdb.connect(":memory:")
    try:
        for batch in batches:
            if rows >= max_rows:
                break
            if batch.num_rows == 0:
                continue
            batch = batch.slice(0, max_rows - rows)
            text = _text_columns(batch)
            sink = pa.MockOutputStream()
            pacsv.write_csv(text, sink, pacsv.WriteOptions(include_header=rows == 0))
            csv_bytes += sink.size()
            db.register("b", text)
            (counted,) = db.execute("SELECT sum(strlen(to_json(b)) + 1)::BIGINT FROM b").fetchall()
            db.unregister("b")
            json_bytes += int(counted[0] or 0)
            rows += batch.num_rows
    finally:
        db.close()
    return rows, csv_bytes, json_bytes


def storage_report(lake: LakeRoot, sample_rows: int = 2_000_000) -> dict[str, Any]:
    """Per table: rows, files, bytes, average file size, bytes per trade, and the size of the
    same rows as CSV and as JSON lines (measured on up to `sample_rows` rows, then scaled)."""
    stats = []
    options = storage_options(lake)
    for spec in T.ALL_TABLES:
        uri = spec.uri(lake)
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            continue
        dt = DeltaTable(uri, storage_options=options)
        actions = add_actions(dt)
        rows = int(pc.sum(actions.column("num_records")).as_py() or 0) if actions.num_rows else 0
        size = int(pc.sum(actions.column("size_bytes")).as_py() or 0) if actions.num_rows else 0
        files = actions.num_rows
        measured, csv_bytes, json_bytes = 0, 0, 0
        if rows:
            batches = dt.to_pyarrow_dataset().to_batches(batch_size=65_536)
            measured, csv_bytes, json_bytes = text_sizes(iter(batches), sample_rows)
        scale = rows / measured if measured else 0.0
        stats.append(
            {
                "table": spec.name,
                "version": dt.version(),
                "rows": rows,
                "files": files,
                "partitions": len(partitions(dt, spec)) if files else 0,
                "bytes": size,
                "avg_file_bytes": round(size / files) if files else 0,
                "bytes_per_row": round(size / rows, 2) if rows else None,
                "csv_bytes": round(csv_bytes * scale),
                "jsonl_bytes": round(json_bytes * scale),
                "text_rows_measured": measured,
                "text_estimated": measured < rows,
                "log_files": log_file_count(uri),
            }
        )
    trades = next((s["rows"] for s in stats if s["table"] == T.TRADES.name), 0)
    for s in stats:
        s["bytes_per_trade"] = round(s["bytes"] / trades, 2) if trades else None
        s["vs_csv"] = _saving(s["bytes"], s["csv_bytes"])
        s["vs_jsonl"] = _saving(s["bytes"], s["jsonl_bytes"])
    total = {key: sum(s[key] for s in stats) for key in ("rows", "files", "bytes", "csv_bytes")} | {
        "jsonl_bytes": sum(s["jsonl_bytes"] for s in stats)
    }
    total["trades"] = trades
    total["bytes_per_trade"] = round(total["bytes"] / trades, 2) if trades else None
    total["vs_csv"] = _saving(total["bytes"], total["csv_bytes"])
    total["vs_jsonl"] = _saving(total["bytes"], total["jsonl_bytes"])
    return {
        "lake": str(lake),
        "date": utc_now().isoformat(timespec="seconds"),
        "tables": stats,
        "total": total,
    }


def _saving(stored: int, text: int) -> float | None:
    """Fraction of the text size the lake saves (0.9 = 90 % smaller)."""
    return round(1 - stored / text, 4) if text else None


def format_report(report: dict[str, Any]) -> str:
    def mb(n: int) -> str:
        return f"{n / 1e6:,.2f}"

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v * 100:.1f} %"

    head = (
        f"{'table':<20} {'rows':>12} {'files':>6} {'MB':>10} {'avg file KB':>11} "
        f"{'B/row':>7} {'B/trade':>8} {'CSV MB':>10} {'JSONL MB':>10} {'vs CSV':>8} "
        f"{'vs JSONL':>8}"
    )
    lines = [f"lake {report['lake']} ({report['date']})", head, "-" * len(head)]
    for s in [*report["tables"], {"table": "total", **report["total"]}]:
        avg = s.get("avg_file_bytes", round(s["bytes"] / s["files"]) if s["files"] else 0)
        per_row = s.get("bytes_per_row", round(s["bytes"] / s["rows"], 2) if s["rows"] else None)
        mark = "~" if s.get("text_estimated") else " "
        lines.append(
            f"{s['table']:<20} {s['rows']:>12,} {s['files']:>6} {mb(s['bytes']):>10} "
            f"{avg / 1e3:>11,.1f} {per_row if per_row is not None else '—':>7} "
            f"{s['bytes_per_trade'] if s['bytes_per_trade'] is not None else '—':>8} "
            f"{mark}{mb(s['csv_bytes']):>9} {mark}{mb(s['jsonl_bytes']):>9} "
            f"{pct(s['vs_csv']):>8} {pct(s['vs_jsonl']):>8}"
        )
    if any(s.get("text_estimated") for s in report["tables"]):
        lines.append("~ CSV/JSONL sizes measured on a sample of rows and scaled to the table")
    return "\n".join(lines)
