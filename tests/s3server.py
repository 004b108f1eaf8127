"""moto's S3 server as a real HTTP S3 endpoint for tests: its own process, one bucket."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from tests.conftest import free_port

BUCKET = "sentinel-lake"


@dataclass
class S3:
    endpoint: str
    env: dict[str, str]  # the AWS_* variables every client (delta-rs, Arrow, boto3) reads

    def client(self) -> Any:
        """A boto3 S3 client: checks what is on the server independently of delta-rs/Arrow."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )


def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@contextmanager
def moto_s3(bucket: str = BUCKET) -> Iterator[S3]:
    """Start moto_server on a free port with `bucket` created; stop it afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(endpoint, server)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "sentinel-test",
            "AWS_SECRET_ACCESS_KEY": "sentinel-test",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
        s3 = S3(endpoint, env)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.terminate()
        server.wait(timeout=10)
