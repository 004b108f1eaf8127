"""`sentinel spark install` asks Maven for the Kafka source only (Spark never touches Delta or
S3: the driver writes the lake through delta-rs) and refuses a resolution without it. Maven
is faked here; the integration tests resolve the real jars."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from crypto_sentinel.config import load_settings
from crypto_sentinel.ops import maven
from crypto_sentinel.spark import ops

POM = "{http://maven.apache.org/POM/4.0.0}"


def test_pom_asks_for_the_kafka_source_only() -> None:
    pom = ET.fromstring(ops.pom_text())
    deps = [
        tuple(d.findtext(POM + k) for k in ("groupId", "artifactId", "version"))
        for d in pom.iter(POM + "dependency")
    ]
    version = ops.spark_version()
    assert deps == [("org.apache.spark", "spark-sql-kafka-0-10_2.13", version)]
    assert pom.find(POM + "dependencyManagement") is None  # no AWS SDK BOM any more
    assert "@" not in ops.pom_text().split("-->", 1)[1]  # every token filled in


def test_jars_dir_names_spark_and_the_pom(tmp_path: Path) -> None:
    out = ops.jars_dir(load_settings(spark_jars_cache=tmp_path))
    assert out.parent.parent == tmp_path.resolve() and out.name == "jars"
    assert out.parent.name.startswith(f"spark-{ops.spark_version()}-")
    assert "delta" not in out.parent.name


def fake_maven(monkeypatch: pytest.MonkeyPatch, jars: list[str]) -> None:
    """Maven that 'resolves' empty jar files with these names."""

    def resolve(pom: str, work: Path, staging: Path, **_: Any) -> str:
        staging.mkdir(parents=True)
        for name in jars:
            (staging / name).write_bytes(b"")
        return ""

    monkeypatch.setattr(maven, "resolve", resolve)


def test_install_keeps_what_pyspark_lacks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shipped = next((ops.spark_home() / "jars").glob("commons-lang3-*.jar")).name
    kafka = ["spark-sql-kafka-0-10_2.13-4.2.0.jar", "kafka-clients-3.9.2.jar"]
    fake_maven(monkeypatch, [*kafka, shipped])
    settings = load_settings(spark_jars_cache=tmp_path)
    jars = ops.install(settings, quiet=True)
    out = ops.jars_dir(settings)
    names = sorted(kafka)
    assert jars == [out / n for n in names]  # pyspark's own copy is not on the path twice
    assert json.loads((out / "installed.json").read_text()) == {"jars": names}
    assert ops.installed_jars(settings) == jars


def test_install_refuses_a_resolution_without_the_kafka_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_maven(monkeypatch, ["kafka-clients-3.9.2.jar"])
    settings = load_settings(spark_jars_cache=tmp_path)
    with pytest.raises(ops.SparkOpsError, match="no spark-sql-kafka jar"):
        ops.install(settings, quiet=True)
    assert ops.installed_jars(settings) is None
