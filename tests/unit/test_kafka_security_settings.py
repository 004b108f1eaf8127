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
    from crypto_sentinel.ops import kafka

    files = {"--ssl-keystore": tmp_path / "k.p12", "--ssl-ca": tmp_path / "ca.pem"}
    for path in files.values():
        path.write_bytes(b"x")
    argv = ["kafka", "start", "--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN"]
    argv += [str(x) for pair in files.items() for x in pair]
    args = build_parser().parse_args(argv)
    with pytest.raises(KafkaOpsError) as info:  # nothing in the environment yet
        kafka._cli_security(args)
    assert str(info.value) == (
        "--security-protocol SASL_SSL needs $SENTINEL_KAFKA_SASL_USERNAME,"
        " $SENTINEL_KAFKA_SASL_PASSWORD, $SENTINEL_KAFKA_SSL_KEYSTORE_PASSWORD"
    )
    monkeypatch.setenv(kafka.SASL_USERNAME_ENV, "sentinel")
    monkeypatch.setenv(kafka.SASL_PASSWORD_ENV, SECRET)
    monkeypatch.setenv(kafka.KEYSTORE_PASSWORD_ENV, "ks-" + SECRET)
    sec = kafka._cli_security(args)
    assert isinstance(sec, BrokerSecurity)
    assert (sec.mechanism, sec.users, sec.keystore_password) == (
        "PLAIN",
        {"sentinel": SECRET},
        "ks-" + SECRET,
    )
    assert kafka._cli_security(build_parser().parse_args(["kafka", "start"])) is None
