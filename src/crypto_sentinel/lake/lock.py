"""One stream writer per lake and app id.

Two writers under one app id keep separate batch counters while the lake records one version per
app id, so each skips the other's batches as already written and data is lost. A writer therefore
holds a lock named after its app id, and a second one is refused at start with a line naming the
holder. In a local folder the lock is `flock` on a file (the kernel drops it when the holder dies,
however it dies); on S3 it is a lease object created and refreshed with conditional writes, which
another process may take over once its heartbeat is stale. Kafka processors take none: each
writes under the app ids of the partitions its group assigned it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from crypto_sentinel.lake.location import LakeRoot, is_remote

if TYPE_CHECKING:
    from crypto_sentinel.config import Settings

log = logging.getLogger(__name__)

#: Below the lake root; not a table, so no table reader or maintenance job ever lists it.
LOCK_DIR = "_sentinel/locks"
#: S3 lease: the holder rewrites it this often, and it is stale (takeable) after STALE_AFTER.
REFRESH_SECONDS = 5.0
STALE_AFTER = 3 * REFRESH_SECONDS


class LakeLocked(Exception):
    """Another live process writes this lake under this app id; the text is for the user."""

    def __init__(self, lake: LakeRoot, app_id: str, holder: dict[str, Any]) -> None:
        self.lake, self.app_id, self.holder = lake, app_id, holder
        who = describe(holder)
        super().__init__(
            f"the lake {lake} is already written by app id {app_id!r} ({who}); stop it first"
            " or give this process another app id (SENTINEL_APP_ID)"
        )


def describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "holder unknown"
    text = f"pid {holder['pid']} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
    if "age" in holder:  # S3: how fresh the lease is says whether it will expire soon
        text += f", last heartbeat {holder['age']:.0f} s ago"
    return text


def safe_name(app_id: str) -> str:
    """A file or object name for any app id (Kafka's contain ':'), short enough for any FS."""
    name = quote(app_id, safe="-_.")
    if len(name) > 120:
        name = f"{name[:80]}-{hashlib.sha256(app_id.encode()).hexdigest()[:16]}"
    return name


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class WriterLock:
    """Held from `acquire` (raises LakeLocked; a no-op when held) to `release`; a context
    manager too."""

    #: Called (from a background thread) if the lock is lost while held; S3 only.
    on_lost: Callable[[], object] | None = None
    #: Level of the "held" line (maintenance takes its lock every pass: debug).
    held_level = logging.INFO

    def __init__(self, lake: LakeRoot, app_id: str) -> None:
        self.lake, self.app_id = lake, app_id
        self.holder = {"app_id": app_id, "pid": os.getpid(), "host": socket.gethostname()}

    def acquire(self) -> WriterLock:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class NoLock(WriterLock):
    """For processes that write no stream (ingest only) or one app id per Kafka partition."""

    def acquire(self) -> WriterLock:
        return self

    def release(self) -> None:
        pass


class LocalLock(WriterLock):
    """`flock` on `<lake>/_sentinel/locks/<app id>.lock`, which holds the holder as JSON."""

    def __init__(self, lake: Path, app_id: str) -> None:
        super().__init__(lake, app_id)
        self.path = Path(lake) / LOCK_DIR / f"{safe_name(app_id)}.lock"
        self.fd: int | None = None

    def acquire(self) -> WriterLock:
        if self.fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise LakeLocked(self.lake, self.app_id, self._read_holder()) from None
        self.holder["since"] = _now()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self.fd = fd
        log.log(self.held_level, "lock %s held (app id %r)", self.path, self.app_id)
        return self

    def _read_holder(self) -> dict[str, Any]:
        """The holder's JSON; it may be a moment from being written, so look again briefly."""
        deadline = time.monotonic() + 1.0
        while True:
            with contextlib.suppress(OSError, ValueError):
                holder = json.loads(self.path.read_text())
                if isinstance(holder, dict):
                    return holder
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.02)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.ftruncate(fd, 0)  # no stale holder for the next reader to name
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class S3Lease(WriterLock):
    """A lease object `<prefix>/_sentinel/locks/<app id>.json`: created with `If-None-Match: *`,
    refreshed and taken over with `If-Match: <ETag>`, so exactly one process wins each step.
    Its age is the server's `Date` minus its `Last-Modified`: no clock of ours is trusted."""

    def __init__(
        self,
        lake: str,
        app_id: str,
        refresh: float = REFRESH_SECONDS,
        stale_after: float = STALE_AFTER,
    ) -> None:
        super().__init__(lake, app_id)
        bucket_and_prefix = lake.split("://", 1)[1]
        self.bucket, _, prefix = bucket_and_prefix.partition("/")
        prefix = prefix.strip("/")
        self.key = "/".join(p for p in (prefix, LOCK_DIR, f"{safe_name(app_id)}.json") if p)
        self.refresh, self.stale_after = refresh, stale_after
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # here: only S3 lakes pay for it
            from botocore.config import Config

            # Its INFO line on where credentials came from would precede a refusal's one line.
            logging.getLogger("botocore.credentials").setLevel(logging.WARNING)
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
                region_name=os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION")
                or None,
                config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3}),
            )
        return self._client

    def _put(self, **condition: str) -> str:
        self.holder["heartbeat"] = datetime.now(UTC).isoformat()
        body = json.dumps(self.holder).encode()
        reply = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)
        return str(reply["ETag"])

    def _read(self) -> tuple[str, dict[str, Any]] | None:
        """(ETag, holder with its age in seconds), or None if there is no lease."""
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        try:
            holder = json.loads(got["Body"].read())
        except ValueError:
            holder = None
        holder = holder if isinstance(holder, dict) else {}
        date = got["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        holder["age"] = max(0.0, (now - got["LastModified"]).total_seconds())
        return str(got["ETag"]), holder

    def acquire(self) -> WriterLock:
        if self._thread is not None:
            return self
        holder: dict[str, Any] = {}
        for _ in range(3):  # each step is atomic; a lost race is looked at again
            try:
                self.holder["since"] = _now()
                self.etag = self._put(IfNoneMatch="*")
                break
            except Exception as exc:
                if not _conflict(exc):
                    raise
            seen = self._read()
            if seen is None:  # released in between: create it again
                continue
            etag, holder = seen
            if holder["age"] < self.stale_after and not _dead_here(holder):
                raise LakeLocked(self.lake, self.app_id, holder)
            try:
                self.etag = self._put(IfMatch=etag)
            except Exception as exc:
                if not _conflict(exc):
                    raise
                continue
            log.warning("took over the writer lease of a silent holder (%s)", describe(holder))
            break
        else:
            raise LakeLocked(self.lake, self.app_id, holder)
        self._thread = threading.Thread(target=self._heartbeat, name="lake-lease", daemon=True)
        self._thread.start()
        log.log(
            self.held_level, "lease s3://%s/%s held (app id %r)", self.bucket, self.key, self.app_id
        )
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.refresh):
            try:
                self.etag = self._put(IfMatch=str(self.etag))
            except Exception as exc:
                if not _conflict(exc):  # storage hiccup: try again at the next beat
                    log.warning("cannot refresh the writer lease %s: %s", self.key, exc)
                    continue
                self.lost = True
                log.error(
                    "lost the writer lease of %s (app id %r) to another process; stopping",
                    self.lake,
                    self.app_id,
                )
                if self.on_lost is not None:
                    self.on_lost()
                return

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.lost:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=str(self.etag))
        except Exception as exc:  # it expires by itself
            log.warning("cannot delete the writer lease %s: %s", self.key, exc)


def _dead_here(holder: dict[str, Any]) -> bool:
    """The holder ran on this host and its process is gone: no need to wait for staleness."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _conflict(exc: Exception) -> bool:
    """A conditional write lost: 412, or 409 when S3 saw two at the same moment."""
    return _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def lock_for(lake: LakeRoot, app_id: str) -> WriterLock:
    """The (not yet acquired) writer lock of `app_id` on `lake`."""
    if is_remote(lake):
        return S3Lease(str(lake), app_id)
    return LocalLock(Path(lake), app_id)


#: The lock name of lake maintenance (an app id never starts with "_"; see `config`).
MAINTENANCE = "_maintenance"


def maintenance_lock(lake: LakeRoot) -> WriterLock:
    """The (not yet acquired) lock one maintaining process of a lake holds at a time.

    Why: two compactions of one table that overlap in time both commit (deltalake 1.6 lets a
    data-unchanged remove pass a concurrent data-unchanged remove of the same file), and the
    table then holds every compacted row twice (measured: 400 rows became 800)."""
    lock = lock_for(lake, MAINTENANCE)
    lock.held_level = logging.DEBUG
    return lock


def writer_lock(settings: Settings, writes: bool) -> WriterLock:
    """The acquired lock a pipeline process holds while it runs (raises LakeLocked)."""
    if not writes or settings.bus == "kafka":
        return NoLock(settings.lake_root, settings.app_id)
    return lock_for(settings.lake_root, settings.app_id).acquire()
