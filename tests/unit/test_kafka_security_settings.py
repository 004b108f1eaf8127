"""Kafka security settings: what every client is given, and that the password stays hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto_sentinel.bus.kafka import client_config
from crypto_sentinel.config import ConfigError, load_settings
from crypto_sentinel.ops.kafka import BrokerSecurity, KafkaOpsError

SECRET = "pw-7f3a9c1e5b2d"


def test_plaintext_by_default_gives_only_the_bootstrap() -> None:
    assert client_config(load_settings()) == {"bootstrap.servers": "127.0.0.1:9092"}


def test_sasl_ssl_settings_reach_the_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    for name, value in {
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SASL_MECHANISM": "SCRAM-SHA-512",
        "SASL_USERNAME": "sentinel",
        "SASL_PASSWORD": SECRET,
        "SSL_CA_LOCATION": str(ca),
    }.items():
        monkeypatch.setenv(f"SENTINEL_KAFKA_{name}", value)
    settings = load_settings()
    assert client_config(settings) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "sentinel",
        "sasl.password": SECRET,
        "ssl.ca.location": str(ca),
    }
    # The settings object never shows the password (it is logged and dumped in places).
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert SECRET not in settings.model_dump_json()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SECURITY_PROTOCOL": "SASL_SSL", "SASL_USERNAME": "u"}, "needs SENTINEL_KAFKA_SASL"),
        ({"SECURITY_PROTOCOL": "SASL_SSL", "SASL_PASSWORD": SECRET}, "needs SENTINEL_KAFKA_SASL"),
        ({"SECURITY_PROTOCOL": "TLS"}, "kafka_security_protocol"),
        ({"SASL_MECHANISM": "GSSAPI"}, "kafka_sasl_mechanism"),
        ({"SSL_CA_LOCATION": "/nonexistent/ca.pem"}, "no CA file at /nonexistent/ca.pem"),
    ],
)
def test_incomplete_security_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"SENTINEL_KAFKA_{name}", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert message in text and "\n" not in text
    assert SECRET not in text


def test_broker_security_hides_passwords_and_refuses_unsafe_ones(tmp_path: Path) -> None:
    files = {"keystore": tmp_path / "k.p12", "ca_file": tmp_path / "ca.pem"}
    for path in files.values():
        path.write_bytes(b"x")
    sec = BrokerSecurity("PLAIN", keystore_password="ks-" + SECRET, users={"a": SECRET}, **files)
    assert SECRET not in repr(sec) and "'a'" in repr(sec)
    for bad in ('with"quote', "", "new\nline"):
        with pytest.raises(KafkaOpsError, match="password of SASL user 'a'"):
            BrokerSecurity("PLAIN", keystore_password="k", users={"a": bad}, **files)
    with pytest.raises(KafkaOpsError, match="unknown SASL mechanism"):
        BrokerSecurity("GSSAPI", keystore_password="k", users={"a": "b"}, **files)


def test_kafka_start_cli_takes_secrets_from_the_environment_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from crypto_sentinel.cli import build_parser
    from crypto_sentinel.ops import kafka, kafka_cli

    files = {"--ssl-keystore": tmp_path / "k.p12", "--ssl-ca": tmp_path / "ca.pem"}
    for path in files.values():
        path.write_bytes(b"x")
    argv = ["kafka", "start", "--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN"]
    argv += [str(x) for pair in files.items() for x in pair]
    args = build_parser().parse_args(argv)
    with pytest.raises(KafkaOpsError) as info:  # nothing in the environment yet
        kafka_cli._cli_security(args)
    assert str(info.value) == (
        "--security-protocol SASL_SSL needs $SENTINEL_KAFKA_SASL_USERNAME,"
        " $SENTINEL_KAFKA_SASL_PASSWORD, $SENTINEL_KAFKA_SSL_KEYSTORE_PASSWORD"
    )
    monkeypatch.setenv(kafka.SASL_USERNAME_ENV, "sentinel")
    monkeypatch.setenv(kafka.SASL_PASSWORD_ENV, SECRET)
    monkeypatch.setenv(kafka.KEYSTORE_PASSWORD_ENV, "ks-" + SECRET)
    sec = kafka_cli._cli_security(args)
    assert isinstance(sec, BrokerSecurity)
    assert (sec.mechanism, sec.users, sec.keystore_password) == (
        "PLAIN",
        {"sentinel": SECRET},
        "ks-" + SECRET,
    )
    assert kafka_cli._cli_security(build_parser().parse_args(["kafka", "start"])) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_broker_properties_replace_plaintext_with_sasl_ssl(tmp_path: Path, mechanism: str) -> None:
    from crypto_sentinel.ops import kafka

    files = {"keystore": tmp_path / "k.p12", "ca_file": tmp_path / "ca.pem"}
    for path in files.values():
        path.write_bytes(b"x")
    sec = BrokerSecurity(
        mechanism, keystore_password="ks", users={"broker": "p1", "app": "p2"}, **files
    )
    cluster = kafka._Cluster("4.4.0", "id", 1, "127.0.0.1", 19092, 19093, "SASL_SSL")
    props = dict(
        line.split("=", 1)
        for line in kafka._server_properties(cluster, tmp_path, 0, sec).splitlines()
        if not line.startswith("#")
    )
    assert props["listeners"] == "SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:19092"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == mechanism
    assert not any("PLAINTEXT://" in v for v in props.values())
    jaas = props[f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"]
    assert 'username="broker" password="p1"' in jaas
    if mechanism == "PLAIN":  # PLAIN users are listed in the JAAS line; SCRAM's are formatted
        assert 'user_broker="p1" user_app="p2"' in jaas
    else:
        assert "user_" not in jaas and "ScramLoginModule" in jaas
