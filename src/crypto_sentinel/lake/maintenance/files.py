"""A table's live files from its own Delta log (never a folder listing), and the few looks at
files below a table through the Arrow filesystem (a local folder or object storage)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot, filesystem, join

# --- the table's own file index (no listing) -------------------------------------------------


@dataclass
class Partition:
    values: tuple[tuple[str, Any], ...]  # (column, value) in partition_by order
    sizes: list[int] = field(default_factory=list)
    rows: int = 0

    @property
    def date(self) -> date | None:
        value = dict(self.values).get("date")
        return value if isinstance(value, date) else None

    def filters(self) -> list[tuple[str, str, str]]:
        return [(col, "=", partition_text(v)) for col, v in self.values]

    def label(self) -> str:
        return "/".join(f"{col}={partition_text(v)}" for col, v in self.values)


def partition_text(value: Any) -> str:
    """A partition value as the Delta log writes it (dates in ISO form)."""
    return value.isoformat() if isinstance(value, date) else str(value)


def add_actions(dt: DeltaTable) -> pa.Table:
    """The snapshot's live files with size, rows, partition values and min/max stats."""
    return pa.table(dt.get_add_actions(flatten=True))


def partitions(dt: DeltaTable, spec: T.TableSpec) -> list[Partition]:
    """Live files grouped by partition, from the Delta log (never a folder listing)."""
    actions = add_actions(dt)
    if actions.num_rows == 0:
        return []
    columns = [actions.column(f"partition.{c}").to_pylist() for c in spec.partition_by]
    sizes = actions.column("size_bytes").to_pylist()
    rows = actions.column("num_records").to_pylist()
    found: dict[tuple[Any, ...], Partition] = {}
    for i, size in enumerate(sizes):
        key = tuple(col[i] for col in columns)
        part = found.get(key)
        if part is None:
            part = found[key] = Partition(tuple(zip(spec.partition_by, key, strict=True)))
        part.sizes.append(size)
        part.rows += rows[i] or 0
    return sorted(found.values(), key=lambda p: tuple(partition_text(v) for _, v in p.values))


# --- files below a table, through the Arrow filesystem (a local folder or object storage) ----


def _located(table: LakeRoot, *parts: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and its path for `parts` below a table's folder or URI."""
    fs, prefix = filesystem(table)
    return fs, join(table, *parts).removeprefix(prefix)


def last_checkpoint_version(table: LakeRoot) -> int | None:
    fs, path = _located(table, "_delta_log", "_last_checkpoint")
    try:
        with fs.open_input_stream(path) as stream:
            return int(json.loads(stream.read())["version"])
    except (OSError, ValueError, KeyError):
        return None


def log_file_count(table: LakeRoot) -> int:
    fs, path = _located(table, "_delta_log")
    try:
        return len(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))
    except OSError:
        return 0


def file_sizes(table: LakeRoot, files: Sequence[str]) -> list[int]:
    """Sizes of files named relative to the table (or absolute), 0 for a missing one."""
    fs, prefix = filesystem(table)
    located = [f if "://" in f or f.startswith("/") else join(table, f) for f in files]
    infos = fs.get_file_info([p.removeprefix(prefix) for p in located]) if located else []
    return [info.size or 0 for info in infos]


def lake_exists(lake: LakeRoot) -> bool:
    """A lake folder, or an object prefix holding anything, is there."""
    fs, path = _located(lake)
    try:
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except OSError:
        return False
