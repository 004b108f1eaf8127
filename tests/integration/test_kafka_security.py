"""Kafka with a SASL_SSL listener (SCRAM-SHA-256 over TLS), started by the project's own broker
code (`sentinel kafka start --security-protocol SASL_SSL`) from a CA made in the test.

Shows: a client without credentials (or with wrong ones) is refused; the pipeline with them
stays exact (every trade stored once, exact decimals); no secret (the SASL password, the
keystore password) appears in process logs, `/health`, heartbeat files, the
broker's logs or a start-up error.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from crypto_sentinel.ops import kafka
from tests.conftest import free_port, free_port_run
from tests.integration.test_kafka_pipeline import Cluster, run_simulator
from tests.tlsfiles import TlsFiles, make_tls

SENTINEL = Path(sys.executable).with_name("sentinel")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MECHANISM = "SCRAM-SHA-256"
USER = "sentinel"


@dataclass(frozen=True)
class SecureBroker:
    data: Path
    bootstrap: str
    tls: TlsFiles
    password: str  # the SASL user's (the pipeline's and the brokers' own identity)
    start_output: str  # what `sentinel kafka start` printed

    def secrets(self) -> list[str]:
        return [self.password, self.tls.keystore_password]

    def env(self, password: str | None = None) -> dict[str, str]:
        """The pipeline's settings for this broker (SENTINEL_* variables)."""
        return {
            "SENTINEL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SENTINEL_KAFKA_SASL_MECHANISM": MECHANISM,
            "SENTINEL_KAFKA_SASL_USERNAME": USER,
            "SENTINEL_KAFKA_SASL_PASSWORD": password or self.password,
            "SENTINEL_KAFKA_SSL_CA_LOCATION": str(self.tls.ca_file),
        }


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """`sentinel kafka start --security-protocol SASL_SSL`, secrets in the environment."""
    root = tmp_path_factory.mktemp("kafka-sasl")
    # Distinct random secrets, long enough that finding one anywhere is no coincidence.
    tls = make_tls(root / "tls", "ks-" + secrets.token_hex(12))
    password = "usr-" + secrets.token_hex(12)
    data = root / "data"
    env = {
        **os.environ,
        kafka.SASL_USERNAME_ENV: USER,
        kafka.SASL_PASSWORD_ENV: password,
        kafka.KEYSTORE_PASSWORD_ENV: tls.keystore_password,
    }
    try:
        done = subprocess.run(
            [str(SENTINEL), "kafka", "start", "--data-dir", str(data),
             "--port", str(free_port_run(2)), "--timeout", "120",
             "--security-protocol", "SASL_SSL", "--sasl-mechanism", MECHANISM,
             "--ssl-keystore", str(tls.keystore), "--ssl-ca", str(tls.ca_file)],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SASL_SSL://127.0.0.1:" in done.stdout, done.stdout
        yield SecureBroker(
            data, kafka.bootstrap_servers(data), tls, password, done.stdout + done.stderr
        )
    finally:
        kafka.stop(data)


def _metadata(conf: dict[str, Any]) -> tuple[Any, list[KafkaError]]:
    """Ask for cluster metadata; (metadata or the exception, client errors reported)."""
    errors: list[KafkaError] = []
    admin = AdminClient({**conf, "error_cb": errors.append, "log_level": 0})
    try:
        return admin.list_topics(timeout=10), errors
    except KafkaException as exc:
        admin.poll(1)  # serves error_cb
        return exc, errors


def test_clients_without_credentials_are_refused(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    b = secure_broker
    sasl = {
        "bootstrap.servers": b.bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": MECHANISM,
        "sasl.username": USER,
        "ssl.ca.location": str(b.tls.ca_file),
    }
    # No security settings at all: no metadata from the SASL_SSL listener.
    plain, _ = _metadata({"bootstrap.servers": b.bootstrap})
    assert isinstance(plain, KafkaException), "a PLAINTEXT client got metadata"
    # TLS only, no SASL: refused as well.
    tls_only, _ = _metadata(
        {"bootstrap.servers": b.bootstrap, "security.protocol": "SSL",
         "ssl.ca.location": str(b.tls.ca_file)}
    )  # fmt: skip
    assert isinstance(tls_only, KafkaException), "a client without SASL got metadata"
    # Right user, wrong password: an authentication failure, not a network problem.
    wrong, errors = _metadata({**sasl, "sasl.password": "not-" + b.password})
    assert isinstance(wrong, KafkaException), "a wrong password got metadata"
    assert KafkaError._AUTHENTICATION in {e.code() for e in errors}, errors
    # The certificate is checked: a client trusting another CA does not connect.
    other_ca = make_tls(tmp_path / "other", "unused-password").ca_file
    untrusted, _ = _metadata(
        {**sasl, "sasl.password": b.password, "ssl.ca.location": str(other_ca)}
    )
    assert isinstance(untrusted, KafkaException), "a client without the CA got metadata"
    # With the credentials: metadata, from the one broker.
    good, errors = _metadata({**sasl, "sasl.password": b.password})
    assert not isinstance(good, KafkaException), (good, errors)
    assert set(good.brokers) == {0}


def _texts(*roots: Path) -> dict[Path, str]:
    """Every text-like file below the roots (logs, heartbeats, settings), by path."""
    out = {}
    for root in roots:
        for path in root.rglob("*"):
            textual = path.suffix in ("", ".log", ".json", ".txt") or path.match("*.log.*")
            if textual and path.is_file():
                out[path] = path.read_text(errors="replace")
    return out


async def test_pipeline_over_sasl_ssl_is_exact_and_keeps_secrets(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    b = secure_broker
    sim = await run_simulator(1000, 5000, seed=21)
    cluster = Cluster(tmp_path, b.bootstrap, sim, **b.env())
    port = free_port()
    try:
        up = cluster.start(
            "up", "--bus", "kafka", "--source", "simulator", "--simulator-url", sim.ws_url,
            "--port", str(port),
        )  # fmt: skip
        await asyncio.wait_for(sim.wait_done(), 90)
        await cluster.wait_rows(5000, 120)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = (await client.get("/health")).text
            ready = await client.get("/ready")
        assert up.poll() is None, cluster.logs()
    finally:
        cluster.stop_all()
        await sim.stop()
    cluster.assert_exact()  # every emitted trade once, prices and sizes as exact decimals
    assert ready.status_code == 200, ready.text
    assert '"kafka_producer"' in health and '"delivered"' in health, health
    texts = {
        Path("/health"): health,
        Path("sentinel kafka start"): b.start_output,
        **_texts(tmp_path, b.data / "kafka-logs"),
    }
    assert any(p.name == "up.json" for p in texts), sorted(texts)  # the heartbeat was read
    leaks = [(str(p), s[:3]) for p, t in texts.items() for s in b.secrets() if s in t]
    assert not leaks, leaks


def test_wrong_password_stops_start_up_with_one_line(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    b = secure_broker
    wrong = "bad-" + secrets.token_hex(12)
    env = {**os.environ, **b.env(password=wrong), "SENTINEL_KAFKA_BOOTSTRAP": b.bootstrap,
           "SENTINEL_LAKE_DIR": str(tmp_path / "lake")}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "crypto_sentinel.cli", "ingest", "--source", "simulator",
         "--simulator-url", "ws://127.0.0.1:9/"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"sentinel: Kafka at {b.bootstrap} refused this client"), out
    assert "authentication" in last.lower(), last
    assert "Traceback" not in out, out
    for secret in (wrong, *b.secrets()):
        assert secret not in out


def test_broker_files_with_secrets_are_private(secure_broker: SecureBroker) -> None:
    cluster_dir = secure_broker.data / "kafka-data"
    for path in (cluster_dir / "security.json", cluster_dir / "node-0" / "server.properties"):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    assert kafka.status(secure_broker.data)[0]["listener"].startswith("SASL_SSL://")
