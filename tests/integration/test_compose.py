"""The Compose deployment: the file is valid for real Compose tooling (Debian's docker-compose;
`config` needs no Docker engine), and every command it runs is a real CLI verb."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
SENTINEL = Path(sys.executable).with_name("sentinel")
CORE = {"kafka", "ingest", "process", "api"}
SPARK = {"spark-master", "spark-worker", "spark-job"}


def compose_config(*profile: str, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    tool = shutil.which("docker-compose")
    assert tool is not None, "docker-compose missing: .ci/run installs Debian's docker-compose"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "AWS_"))}
    env.update(env_vars or {})
    done = subprocess.run(
        [tool, "-f", str(COMPOSE_FILE), *profile, "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def run_help(command: list[str]) -> None:
    """`command --help` must exit 0: the verb and every option before it exist."""
    assert command[0] == "sentinel", command
    done = subprocess.run(
        [str(SENTINEL), *command[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (command, done.stderr)
    assert "usage: sentinel" in done.stdout


def test_compose_file_is_valid_and_complete() -> None:
    services = compose_config()["services"]
    assert set(services) == CORE | SPARK
    for name in SPARK:  # opt-in: `docker compose --profile spark up`
        assert services[name]["profiles"] == ["spark"], name
    assert not any("profiles" in services[name] for name in CORE)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "broker,controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert not any("ZOOKEEPER" in key for key in kafka["environment"])
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        if name in CORE:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        if name != "kafka":
            assert service["environment"]["SENTINEL_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        if name in {"ingest", "process", "api", "spark-job"}:
            assert service["depends_on"]["kafka"]["condition"] == "service_healthy", name
    for name in ("process", "api", "spark-worker", "spark-job"):  # all see the same lake
        assert any(":/data" in str(v) for v in services[name]["volumes"]), name
    assert any("8000" in str(port) for port in services["api"]["ports"])


def test_every_service_command_and_healthcheck_is_a_real_cli_verb() -> None:
    services = compose_config("--profile", "spark")["services"]
    commands = []
    for name, service in services.items():
        if name == "kafka":
            continue
        commands.append(service["command"])
        test = service.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "sentinel"]:
            commands.append(test[1:])
    assert len(commands) >= len(services) - 1
    for command in commands:
        run_help(command)


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line.split() for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 3 and all("slim" in s[1] or s[1] in {"build", "app"} for s in stages)
    assert "USER sentinel" in text and "HEALTHCHECK" in text
    assert 'CMD ["sentinel", "up"]' in text
    # the compiled decoder is built in a stage of its own and installed as a wheel
    assert "COPY native ./" in text and "maturin build" in text and "/wheels/*.whl" in text


#: Optional settings the sentinel services pass through (issue 20: API token, Kafka security).
PASS_THROUGH = {
    "SENTINEL_API_TOKEN": "token-123",
    "SENTINEL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SENTINEL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "SENTINEL_KAFKA_SASL_USERNAME": "sentinel",
    "SENTINEL_KAFKA_SASL_PASSWORD": "pw-456",
    "SENTINEL_KAFKA_SSL_CA_LOCATION": "/data/ca.pem",
    "SENTINEL_KAFKA_BOOTSTRAP": "broker.example:9093",
}


def test_token_and_kafka_security_pass_through_only_when_set() -> None:
    unset = compose_config("--profile", "spark")["services"]
    given = compose_config("--profile", "spark", env_vars=PASS_THROUGH)["services"]
    for name, service in given.items():
        if name == "kafka":
            continue
        env = service["environment"]
        assert {k: env.get(k) for k in PASS_THROUGH} == PASS_THROUGH, name
        default = unset[name]["environment"]
        for key in PASS_THROUGH:  # not set at all (None), never an empty string
            if key != "SENTINEL_KAFKA_BOOTSTRAP":
                assert key in default and default[key] is None, (name, key, default.get(key))
