"""The s3a settings the Spark job derives from the lake URI and the AWS_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto_sentinel.spark.storage import s3a_confs, spark_lake_uri

P = "spark.hadoop.fs.s3a."


def test_lake_uri_for_spark() -> None:
    assert spark_lake_uri("s3://bucket/prod/lake") == "s3a://bucket/prod/lake"
    assert spark_lake_uri("s3a://bucket/lake") == "s3a://bucket/lake"
    assert spark_lake_uri(Path("/data/lake")) == "/data/lake"
    with pytest.raises(ValueError, match="unsupported lake URI scheme 'gs'"):
        spark_lake_uri("gs://bucket/lake")


def test_s3_compatible_endpoint_over_http_uses_path_style() -> None:
    confs = s3a_confs(
        {
            "AWS_ACCESS_KEY_ID": "id",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL": "http://minio:9000",
        }
    )
    assert confs == {
        P + "access.key": "id",
        P + "secret.key": "secret",
        P + "endpoint.region": "eu-west-1",
        P + "endpoint": "http://minio:9000",
        P + "connection.ssl.enabled": "false",
        P + "path.style.access": "true",
    }


def test_aws_with_session_token_and_virtual_hosts() -> None:
    confs = s3a_confs(
        {
            "AWS_ACCESS_KEY_ID": "id",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_SESSION_TOKEN": "token",
            "AWS_DEFAULT_REGION": "us-east-2",
            "AWS_ENDPOINT_URL_S3": "https://s3.us-east-2.amazonaws.com",
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true",
        }
    )
    assert confs[P + "session.token"] == "token"
    assert confs[P + "aws.credentials.provider"].endswith("TemporaryAWSCredentialsProvider")
    assert confs[P + "endpoint.region"] == "us-east-2"
    assert confs[P + "connection.ssl.enabled"] == "true"
    assert confs[P + "path.style.access"] == "false"


def test_no_variables_leave_s3a_to_its_provider_chain() -> None:
    assert s3a_confs({}) == {}
