"""The lake as Spark reaches it: local folders as they are, S3-compatible storage over s3a.

Why: the engine and the API (delta-rs, Arrow) take `s3://bucket/prefix` and the standard
`AWS_*` variables. Spark's Hadoop filesystem for S3 is s3a, with its own names for the same
settings, so the job translates both here: one lake URI and one set of variables configure
every component alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlparse

from crypto_sentinel.lake.location import LakeRoot, is_remote

_TRUE = ("1", "true", "yes", "on")


def spark_lake_uri(lake: LakeRoot) -> str:
    """`s3://` and `s3a://` lakes as s3a URIs; local lakes as absolute paths."""
    if not is_remote(lake):
        return str(lake)
    parsed = urlparse(str(lake))
    if parsed.scheme not in ("s3", "s3a"):
        raise ValueError(f"unsupported lake URI scheme {parsed.scheme!r}: use a folder or s3://")
    return "s3a://" + str(lake).split("://", 1)[1]


def s3a_confs(env: Mapping[str, str]) -> dict[str, str]:
    """`spark.hadoop.fs.s3a.*` settings from the `AWS_*` variables delta-rs reads.

    Credentials go into the Hadoop configuration so executors on other machines, which do not
    share the driver's environment, can read and write the lake too. Without them s3a falls
    back to its own provider chain (instance profile, web identity, ~/.aws).
    """
    confs: dict[str, str] = {}

    def put(key: str, value: str | None) -> None:
        if value:
            confs[f"spark.hadoop.fs.s3a.{key}"] = value

    put("access.key", env.get("AWS_ACCESS_KEY_ID"))
    put("secret.key", env.get("AWS_SECRET_ACCESS_KEY"))
    if env.get("AWS_SESSION_TOKEN"):
        put("session.token", env["AWS_SESSION_TOKEN"])
        put(
            "aws.credentials.provider",
            "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider",
        )
    put("endpoint.region", env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"))
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        put("endpoint", endpoint)
        put("connection.ssl.enabled", str(endpoint.startswith("https://")).lower())
        # MinIO, Ceph, moto: buckets in the path, as delta-rs addresses them by default
        virtual = env.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() in _TRUE
        put("path.style.access", str(not virtual).lower())
    return confs
