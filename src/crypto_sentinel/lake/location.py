"""Where the lake lives: a local folder, or a prefix on S3-compatible object storage.

A lake root is a `Path` (local) or an `s3://bucket/prefix` URI. delta-rs reaches object storage
by itself (it reads the standard `AWS_*` variables: credentials, `AWS_REGION`,
`AWS_ENDPOINT_URL` for MinIO, Ceph or moto, `AWS_ALLOW_HTTP`); readers that open data files
directly get an Arrow filesystem configured from the same variables, so one set of settings
serves the engine, the API and `sentinel serve` alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    import pyarrow.fs as pafs

LakeRoot = Path | str


def is_remote(lake: LakeRoot) -> bool:
    return isinstance(lake, str) and "://" in lake


def parse_lake(text: str) -> LakeRoot:
    """A `--lake` argument: an object-storage URI as given, or a local folder made absolute."""
    return text if "://" in text else Path(text).resolve()


def lake_overrides(lake: LakeRoot | None) -> dict[str, Any]:
    """Settings overrides for a `--lake` flag: it wins over the environment, either way."""
    if lake is None:
        return {}
    if is_remote(lake):
        return {"lake_uri": str(lake)}
    return {"lake_uri": "", "lake_dir": lake}


def join(lake: LakeRoot, *parts: str) -> str:
    """The URI (remote) or absolute path (local) of `parts` below the lake root."""
    if is_remote(lake):
        return "/".join([str(lake).rstrip("/"), *parts])
    return str(Path(lake).joinpath(*parts))


def storage_options(lake: LakeRoot) -> dict[str, str] | None:
    """delta-rs options for the lake; None for a local folder.

    S3 has no atomic rename: delta-rs needs either a locking provider or conditional writes
    for concurrent writers. Each table here has one writer process at a time (the engine, or
    one Spark job), which is the case delta-rs's unsafe-rename mode is safe for; deployments
    with several writers per table set `AWS_S3_LOCKING_PROVIDER` (DynamoDB) or
    `AWS_CONDITIONAL_PUT` in the environment, which take precedence.
    """
    if not is_remote(lake):
        return None
    options = {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    for name in ("AWS_S3_LOCKING_PROVIDER", "AWS_CONDITIONAL_PUT"):
        if os.environ.get(name):
            options = {name: os.environ[name]}
    return options


def filesystem(lake: LakeRoot) -> tuple[pafs.FileSystem, str]:
    """An Arrow filesystem for the lake's data files and the prefix to strip from their URIs."""
    import pyarrow.fs as pafs  # here, not at the top: the CLI parses `--lake` without Arrow

    if not is_remote(lake):
        return pafs.LocalFileSystem(), ""
    scheme = urlparse(str(lake)).scheme
    if scheme not in ("s3", "s3a"):
        raise ValueError(f"unsupported lake URI scheme {scheme!r}: use a folder or s3://...")
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    http = endpoint is not None and endpoint.startswith("http://")
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint.split("://", 1)[1] if endpoint else None,
        scheme="http" if http else "https",
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
    )
    return fs, f"{scheme}://"
