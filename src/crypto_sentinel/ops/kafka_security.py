"""The SASL_SSL listener of the local Kafka cluster: its settings (kept owner-only in
`security.json`, never in logs or argv) and the broker properties they become."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from crypto_sentinel.ops.kafka_layout import (
    KafkaOpsError,
    _abs,
    _Cluster,
    _cluster_dir,
    _is_formatted,
    _running_pid,
    _write_private,
)

# `sentinel kafka start --security-protocol SASL_SSL` takes its secrets from the environment
# (never from argv, which `ps` shows): the SASL user is the one the pipeline's clients use.
SASL_USERNAME_ENV = "SENTINEL_KAFKA_SASL_USERNAME"


SASL_PASSWORD_ENV = "SENTINEL_KAFKA_SASL_PASSWORD"


KEYSTORE_PASSWORD_ENV = "SENTINEL_KAFKA_SSL_KEYSTORE_PASSWORD"


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclasses.dataclass(frozen=True, repr=False)
class BrokerSecurity:
    """A SASL_SSL client listener instead of PLAINTEXT.

    TLS comes from ``keystore`` (the broker's key and certificate; PKCS12 or JKS) and
    ``ca_file`` (PEM, the CA that signed it: the brokers' truststore and the CA the readiness
    probe checks). ``users`` maps SASL user names to passwords; the first user is also the
    identity brokers use between themselves and for the readiness probe. PLAIN users live in
    the listener's JAAS line; SCRAM users are created when a node's storage is formatted.
    The controller listener stays PLAINTEXT on the cluster's host address.
    """

    mechanism: str
    keystore: Path
    keystore_password: str
    ca_file: Path
    users: dict[str, str]
    keystore_type: str = "PKCS12"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keystore", _abs(self.keystore))
        object.__setattr__(self, "ca_file", _abs(self.ca_file))
        if self.mechanism not in SASL_MECHANISMS:
            raise KafkaOpsError(
                f"unknown SASL mechanism {self.mechanism!r};"
                f" use one of {', '.join(SASL_MECHANISMS)}"
            )
        if not self.users:
            raise KafkaOpsError("SASL_SSL needs at least one user (name and password)")
        for name, password in self.users.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
                raise KafkaOpsError(f"SASL user name {name!r}: use 1-64 of A-Z a-z 0-9 . _ -")
            if not password or any(c in password for c in '"\\,=[]') or not password.isprintable():
                raise KafkaOpsError(
                    f'the password of SASL user {name!r} is empty or has one of " \\ , = [ ]'
                    " or a control character"
                )
        if self.keystore_type not in ("PKCS12", "JKS"):
            raise KafkaOpsError(f"keystore type must be PKCS12 or JKS, got {self.keystore_type!r}")
        for what, path in (("keystore", self.keystore), ("CA file", self.ca_file)):
            if not path.is_file():
                raise KafkaOpsError(f"no {what} at {path}")

    def __repr__(self) -> str:  # never the passwords
        return (
            f"BrokerSecurity(mechanism={self.mechanism!r}, keystore={str(self.keystore)!r}, "
            f"ca_file={str(self.ca_file)!r}, users={sorted(self.users)!r})"
        )

    @property
    def admin(self) -> tuple[str, str]:
        return next(iter(self.users.items()))

    def client_config(self) -> dict[str, str]:
        """librdkafka settings for the first user (the readiness probe's identity)."""
        name, password = self.admin
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": self.mechanism,
            "sasl.username": name,
            "sasl.password": password,
            "ssl.ca.location": str(self.ca_file),
        }

    def secrets(self) -> list[str]:
        return [self.keystore_password, *self.users.values()]


def _security_file(d: Path) -> Path:
    return _cluster_dir(d) / "security.json"


def _load_security(d: Path) -> BrokerSecurity | None:
    path = _security_file(d)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return BrokerSecurity(
            mechanism=raw["mechanism"],
            keystore=Path(raw["keystore"]),
            keystore_password=raw["keystore_password"],
            ca_file=Path(raw["ca_file"]),
            users=dict(raw["users"]),
            keystore_type=raw.get("keystore_type", "PKCS12"),
        )
    except (ValueError, TypeError, KeyError) as exc:  # no values in the message: secrets
        raise KafkaOpsError(
            f"corrupt Kafka security settings {path} ({type(exc).__name__})"
        ) from None


def _save_security(d: Path, security: BrokerSecurity | None) -> None:
    path = _security_file(d)
    if security is None:
        path.unlink(missing_ok=True)
        return
    body = {
        "mechanism": security.mechanism,
        "keystore": str(security.keystore),
        "keystore_password": security.keystore_password,
        "keystore_type": security.keystore_type,
        "ca_file": str(security.ca_file),
        "users": security.users,
    }
    _write_private(path, json.dumps(body, indent=2) + "\n")


def _plan_security(
    d: Path, cluster: _Cluster, security: BrokerSecurity | bool | None
) -> BrokerSecurity | None:
    """The listener security to start with; refuse changes running or formatted nodes miss."""
    old = _load_security(d)
    if security is None or security is True:
        return old
    new = security if isinstance(security, BrokerSecurity) else None
    running = [i for i in range(cluster.nodes) if _running_pid(d, i) is not None]
    if running and (new is None) != (old is None):
        raise KafkaOpsError(
            f"Kafka node(s) {running} are running with {cluster.protocol}; stop them before "
            "changing the listener's security"
        )
    formatted = [i for i in range(cluster.nodes) if _is_formatted(d, i)]
    if new is not None and new.mechanism.startswith("SCRAM-") and formatted:
        same = old is not None and (old.mechanism, old.users) == (new.mechanism, new.users)
        if not same:
            raise KafkaOpsError(
                f"SCRAM users are created when storage is formatted and node(s) {formatted} "
                f"in {_cluster_dir(d)} are formatted already; keep the users, use PLAIN, or "
                "delete that directory to start over"
            )
    return new


def _security_properties(
    cluster: _Cluster, node: int, security: BrokerSecurity
) -> dict[str, str | int]:
    """The SASL_SSL listener replacing PLAINTEXT (clients and brokers among themselves)."""
    host, adv, mech = cluster.host, cluster.advertised_host, security.mechanism
    name, password = security.admin
    if mech == "PLAIN":
        module = "org.apache.kafka.common.security.plain.PlainLoginModule"
        users = "".join(f' user_{u}="{p}"' for u, p in security.users.items())
    else:
        module = "org.apache.kafka.common.security.scram.ScramLoginModule"
        users = ""  # SCRAM credentials live in the cluster metadata (added at format)
    jaas = f'{module} required username="{name}" password="{password}"{users};'
    return {
        "listeners": (
            f"SASL_SSL://{host}:{cluster.broker_port(node)},"
            f"CONTROLLER://{host}:{cluster.ctrl_port(node)}"
        ),
        "advertised.listeners": f"SASL_SSL://{adv}:{cluster.broker_port(node)}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": mech,
        "sasl.mechanism.inter.broker.protocol": mech,
        f"listener.name.sasl_ssl.{mech.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": security.keystore_type,
        "ssl.keystore.location": str(security.keystore),
        "ssl.keystore.password": security.keystore_password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(security.ca_file),
        "ssl.client.auth": "none",
    }
