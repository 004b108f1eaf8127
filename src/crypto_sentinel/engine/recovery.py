"""Raw first: derive again what bronze holds and a derived table may lack.

The writer commits one batch at a time, bronze before anything derived from it. A process
killed between those commits leaves, per app id, at most the newest bronze commit half
derived. At start (and when Kafka partitions are assigned) the frames of that commit are fed
through the engine again under the same Delta transactions: a derived table that records
them already skips its part, one that lacks them gets it. Trades silver holds are known
duplicates, so nothing is written twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot, filesystem, join
from crypto_sentinel.model import RawFrame

log = logging.getLogger(__name__)

#: Bronze's newest commits are searched for each owned app id's newest one, newest first, until
#: every app id that bronze records is found: at least SEARCH_DEPTH commits, beyond that only
#: those made in the last RECENT_SECONDS, and never more than SEARCH_LIMIT. Over Kafka the
#: in-doubt commit of a processor that died is found by the one that takes its partitions
#: after the group's session timeout, when the other processors may have committed hundreds
#: of times (a fixed depth of 64 could miss it, and the batch's trades were lost).
SEARCH_DEPTH = 64
RECENT_SECONDS = 300
SEARCH_LIMIT = 50_000


@dataclass
class BronzeCommit:
    """One commit of bronze: the transactions it recorded and the files it added."""

    version: int
    txns: dict[str, int] = field(default_factory=dict)
    files: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    timestamp_ms: int = 0


def _read_commit(lake: LakeRoot, version: int) -> BronzeCommit | None:
    fs, prefix = filesystem(lake)
    path = join(lake, *T.BRONZE.name.split("."), "_delta_log", f"{version:020d}.json")
    try:
        with fs.open_input_stream(path.removeprefix(prefix)) as stream:
            text = stream.read().decode()
    except (OSError, FileNotFoundError):
        return None  # trimmed by a checkpoint's log cleanup: older than anything in doubt
    commit = BronzeCommit(version)
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "txn" in action:
            commit.txns[action["txn"]["appId"]] = int(action["txn"]["version"])
        elif "commitInfo" in action:
            commit.timestamp_ms = int(action["commitInfo"].get("timestamp") or 0)
        elif "add" in action:
            add = action["add"]
            commit.files.append((add["path"], add.get("partitionValues") or {}))
    return commit


def in_doubt(lake: LakeRoot, bronze: DeltaTable, owns: Collection[str]) -> list[BronzeCommit]:
    """The newest bronze commit of every owned app id, oldest first."""
    bronze.update_incremental()
    wanted = {app for app in owns if bronze.transaction_version(app) is not None}
    newest: dict[str, BronzeCommit] = {}
    version = bronze.version()
    since_ms = int((time.time() - RECENT_SECONDS) * 1000)
    for v in range(version, max(-1, version - SEARCH_LIMIT), -1):
        if len(newest) == len(wanted):
            break
        commit = _read_commit(lake, v)
        if commit is None:
            break  # the log is trimmed here
        if version - v >= SEARCH_DEPTH and 0 < commit.timestamp_ms < since_ms:
            break  # older than any commit still in doubt
        for app in commit.txns:
            if app in wanted and app not in newest:
                newest[app] = commit
    unique = {c.version: c for c in newest.values()}
    return [unique[v] for v in sorted(unique)]


def frames_of(lake: LakeRoot, commit: BronzeCommit) -> Iterator[RawFrame]:
    """The frames a bronze commit added, in arrival order."""
    fs, prefix = filesystem(lake)
    table_root = join(lake, *T.BRONZE.name.split("."))
    parts = []
    for path, values in commit.files:
        located = path if "://" in path else join(table_root, unquote(path))
        try:
            data = pq.read_table(located.removeprefix(prefix), filesystem=fs)
        except FileNotFoundError:  # compacted and vacuumed since: long complete
            log.warning(
                "bronze commit %d: file %s is gone; not derived again", commit.version, path
            )
            continue
        source = values.get("source") or ""
        parts.append(data.append_column("source", pa.array([source] * data.num_rows)))
    if not parts:
        return
    rows = pa.concat_tables(parts, promote_options="default")
    order = pc.sort_indices(
        rows, [("recv_time", "ascending"), ("conn_id", "ascending"), ("recv_seq", "ascending")]
    )
    rows = rows.take(order)
    recv_us = pc.cast(rows["recv_time"], pa.int64())
    for source, conn, seq, us, text in zip(
        rows["source"].to_pylist(),
        rows["conn_id"].to_pylist(),
        rows["recv_seq"].to_pylist(),
        recv_us.to_pylist(),
        rows["frame"].to_pylist(),
        strict=True,
    ):
        yield RawFrame(source, conn, seq, us * 1000, text)
