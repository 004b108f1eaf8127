"""The Kafka readiness probe runs in a process of its own: librdkafka 2.x can abort the process
that waits for a consumer-group lookup (confluentinc/librdkafka#4605), and that must end the
probe, not `sentinel kafka start` or the test run that called it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from crypto_sentinel.ops import kafka


def test_a_probe_that_aborts_is_a_reason_to_wait_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aborting = tmp_path / "python"
    aborting.write_text("#!/bin/sh\nkill -ABRT $$\n")  # what librdkafka's failed assertion does
    aborting.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(aborting))
    reason = kafka._not_ready_in_child({"bootstrap.servers": "127.0.0.1:9"}, {0}, 0.5, 0.5)
    assert reason == "readiness probe ended with exit code -6"


def test_the_probe_process_answers_with_the_reason() -> None:
    """Nothing listens on the port: the child's metadata request fails, and says so."""
    reason = kafka._not_ready_in_child({"bootstrap.servers": "127.0.0.1:9"}, {0}, 0.5, 0.5)
    assert reason is not None and reason.startswith("metadata request failed"), reason
