"""Start-up checks that turn the usual mistakes into one line naming the problem and the fix.

A lake path that is a file, a lake folder this user cannot write, a replay file that does not
exist and an API port already taken are found before anything starts (and before anything
says the API is up), and raised as `StartupError`; the CLI prints its message, no traceback.
"""

from __future__ import annotations

import errno
import os
import socket
import uuid
from pathlib import Path

from crypto_sentinel.config import ConfigError, Settings
from crypto_sentinel.lake.location import is_remote


class StartupError(ConfigError):
    """The process cannot start; the message names the problem and the fix."""


def lake_problem(path: Path, exc: OSError) -> str:
    """What an OSError while opening a local lake means for the user."""
    if isinstance(exc, NotADirectoryError) or exc.errno == errno.ENOTDIR:
        return (
            f"the lake path {path} (or a folder in it) is a file, not a folder;"
            " fix: pass --lake (or SENTINEL_LAKE_DIR) with a folder, or move the file away"
        )
    if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"the lake folder {path} is not writable ({exc.strerror or exc});"
            " fix: make it writable for this user, or pass --lake with a writable folder"
        )
    return (
        f"cannot use the lake folder {path} ({exc.strerror or exc});"
        " fix: pass --lake with a usable folder"
    )


def check_lake(settings: Settings, writes: bool) -> None:
    """A local lake must be a folder; a writer must be able to create files in it."""
    if is_remote(settings.lake_root):
        return
    path = settings.lake_path
    if path.exists() and not path.is_dir():
        raise StartupError(lake_problem(path, NotADirectoryError(errno.ENOTDIR, "Not a directory")))
    if not writes:
        return
    probe = path / f".sentinel-write-check-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(lake_problem(path, exc)) from exc


def check_source(settings: Settings) -> None:
    """A replay source needs its recording."""
    if not settings.source.startswith("replay:"):
        return
    path = Path(settings.source.removeprefix("replay:"))
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise StartupError(
            f"replay file {path} {what};"
            " fix: pass --source replay:PATH with a recorded NDJSON file (sentinel record)"
        )


def bind_api(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound now so a taken port stops start-up at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot resolve the API address {host!r} ({exc.strerror});"
            " fix: pass --host (or SENTINEL_HOST) with an address of this machine"
        ) from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use (another sentinel or server);"
                " fix: stop that process, or pass --port (or SENTINEL_PORT) with a free port"
            ) from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise StartupError(
                f"no permission to listen on port {port}; fix: pass --port with a port >= 1024"
            ) from exc
        raise StartupError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc});"
            " fix: pass --host/--port with an address of this machine"
        ) from exc
    return sock
