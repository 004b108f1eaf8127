"""The Delta app transaction versions a table's loaded snapshot records, known without asking.

Why: delta-rs replays the log's transaction actions on every `transaction_version` call
(0.8 ms each on a table of 21 versions, measured), and the writer asks before every table of
every batch, once per app id: a Kafka batch of six partitions over five tables asked 30
times, a sixth of the writer thread's time. A snapshot's versions are a function of the log up
to it, so they are kept per (table, snapshot version), and after a commit of ours that lands
right on top of the known snapshot, the new snapshot's versions are the old ones with that
commit's transactions: nothing needs reading again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from deltalake import DeltaTable


class TxnVersions:
    """Per table name: the snapshot version known, and its app ids' versions read so far
    (-1 for an app id the table has never recorded)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, dict[str, int]]] = {}

    def recorded(self, name: str, dt: DeltaTable, apps: Iterable[str]) -> dict[str, int]:
        """Each app id's version in `dt`'s loaded snapshot, -1 if none."""
        snapshot = dt.version()
        known = self._known.get(name)
        if known is None or known[0] != snapshot:
            known = self._known[name] = (snapshot, {})
        versions = known[1]
        out = {}
        for app in apps:
            version = versions.get(app)
            if version is None:
                found = dt.transaction_version(app)
                version = versions[app] = -1 if found is None else found
            out[app] = version
        return out

    def committed(self, name: str, dt: DeltaTable, before: int, txns: Mapping[str, int]) -> None:
        """A commit carrying `txns` succeeded on a snapshot at version `before`. If `dt` is
        now at the next version, that version is the commit, and the known versions follow;
        otherwise other commits came in between, and the next call reads afresh."""
        known = self._known.get(name)
        if known is None or known[0] != before or dt.version() != before + 1:
            self._known.pop(name, None)
            return
        self._known[name] = (before + 1, {**known[1], **txns})
