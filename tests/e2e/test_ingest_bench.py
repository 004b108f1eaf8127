"""`sentinel bench ingest` (live and fast phases) and `sentinel bench memory` at a tiny scale,
end to end: every child starts and stops by itself and the reports hold sane numbers. No
timing is asserted."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import pytest
from bench import common, compaction, ingest, memory
from bench.memory import slope_per_minute, sparkline

from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def _lakes_discarded(workdir: Path, logs: str) -> None:
    """A finished run leaves its logs and results, not its lakes (gigabytes over a few runs)."""
    assert not list(workdir.rglob("_delta_log"))
    assert list(workdir.glob(logs))


def _sane(p: dict[str, float]) -> None:
    assert p["n"] > 0
    assert 0 <= p["p50_ms"] <= p["p99_ms"] <= p["max_ms"] < 60_000


def test_live_and_fast_phases(tmp_path: Path) -> None:
    result = ingest.main(2000, tmp_path, free_port(), phases="live,fast", live_seconds=3,
                         live_rate=1000, fast_trades=2000)  # fmt: skip
    assert result["baseline"]["trades"] == 2003 and "pipeline" not in result
    live = result["live"]
    assert live["trades_sent"] == 1500 and live["trades_stored"] == live["trades_sent"]
    for name in ("frame_to_http_client", "frame_to_ws_client", "frame_to_delta_commit",
                 "frame_to_bronze_commit"):  # fmt: skip
        _sane(live[name])
    assert live["frame_to_delta_commit"]["n"] == live["trades_stored"]
    assert 0 < live["peak_rss_mb"] < 2000
    lag = live["event_loop_lag"]  # 3 s of probes every 50 ms, read from /metrics
    assert lag["probes"] >= 20 and 0 <= lag["over_10ms"] <= lag["over_5ms"] <= lag["probes"]
    assert lag["p99_at_most_ms"] > 0
    assert live["up_cpu_seconds"] > 0 and 0 < live["up_cores"] <= os.cpu_count()
    by_thread = live["up_cpu_by_thread"]
    assert list(by_thread) == ["event loop", "deltalake runtime", "other threads"]
    assert by_thread["event loop"] > 0 and by_thread["deltalake runtime"] > 0  # it commits
    assert sum(by_thread.values()) <= live["up_cpu_seconds"] + 0.1  # within the total
    fast = result["fast"]
    assert fast["trades_sent"] == 2003 and fast["trades_stored"] == 2003 and fast["no_loss"]
    assert fast["frames_stored"] == fast["frames_sent"]
    assert fast["trades_per_s"] > 0 and fast["socket_floor"]["frames"] == fast["frames_sent"]
    text = ingest.markdown(result)
    assert "#### Live" in text and "#### Fast" in text and "2,003 / 2,003 (no loss)" in text
    _lakes_discarded(tmp_path, "live-*/logs/up.log")
    _lakes_discarded(tmp_path, "fast-*/logs/up.log")


def test_lean_http_client_keeps_one_connection_and_rejects_errors() -> None:
    """The pollers' lean client: bodies of 200 answers over one kept-alive connection; any
    other status, or a closed connection, is an OSError (and it connects afresh)."""

    async def scenario() -> tuple[list[bytes], list[str], int]:
        per_connection = [[b"200 OK", b"404 Not Found", b"200 OK"], [b"200 OK"]]
        connections = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            for status in per_connection.pop(0):
                await reader.readuntil(b"\r\n\r\n")
                body = b'{"call": %d}' % connections
                head = b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n" % (status, len(body))
                writer.write(head + body)
                await writer.drain()
            writer.close()  # then the client finds the connection closed

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        client = common.LeanHttp(server.sockets[0].getsockname()[1])
        bodies, errors = [], []
        for _ in range(5):
            try:
                bodies.append(await client.get("/latest"))
            except OSError as exc:
                errors.append(str(exc))
        client.close()
        server.close()
        await server.wait_closed()
        return bodies, errors, connections

    bodies, errors, connections = asyncio.run(scenario())
    assert bodies == [b'{"call": 1}', b'{"call": 1}', b'{"call": 2}']
    assert len(errors) == 2 and "404 Not Found" in errors[0]
    assert connections == 2  # one kept alive for three answers, one after it was closed


@pytest.mark.parametrize("exchange", ["binance", "kraken", "coinbase-advanced"])
def test_replay_phase_per_exchange(tmp_path: Path, exchange: str) -> None:
    """Each codec's recording replays into the lake whole: the decode floor and the pipeline
    count every one of its trades, under the venue's own exchange name."""
    result = ingest.main(1500, tmp_path, free_port(), phases="replay", exchange=exchange)
    assert result["exchange"] == exchange and "--exchange" in result["command"]
    assert result["baseline"]["trades"] == 1500
    assert result["pipeline"]["trades"] == 1500
    assert result["pipeline"]["trades_per_s"] > 0
    assert f"### Ingest ({exchange})" in ingest.markdown(result)
    _lakes_discarded(tmp_path, "lake-*-poller.log")


def test_memory_bench(tmp_path: Path) -> None:
    result = memory.main(0, tmp_path, free_port(), minutes=0.2, rate=200, clients=3)
    assert len(result["curve"]) >= 10 and Path(result["curve_file"]).is_file()
    rss = result["rss_mb"]
    assert 0 < result["baseline"]["peak_rss_mb"] <= rss["min"] <= rss["median"] <= rss["max"]
    assert rss["max"] <= result["peak_rss_mb"] and not math.isnan(result["steady_slope_mb_per_min"])
    assert result["trades_stored"] == result["trades_sent"] == 2400
    assert result["request_errors"] == 0 and set(result["statuses"]) == {"200"}
    for route in memory.ROUTES:
        _sane(result["requests"][route])
    for part in ("anon_mb", "file_mb"):  # what RSS is made of: both present, each below it
        spread = result[part]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"] < result["peak_rss_mb"]
    csv_header = Path(result["curve_file"]).read_text().splitlines()[0]
    assert csv_header == "seconds,rss_mb,anon_mb,file_mb"
    text = memory.markdown(result)
    assert "| RSS MB (median) |" in text and sparkline([1.0, 2.0]) == "▁█"
    assert "| of it anonymous (own memory)" in text
    _lakes_discarded(tmp_path, "memory-*/logs/up.log")


def test_compaction_bench_small() -> None:
    """Each way of writing the appended files is compacted into one file, the rise of
    memory measured per run (not judged: that is the benchmark's report)."""
    result = compaction.main(files=3, rows=1000, repeat=1, sweep=[2, 4])
    assert set(result["runs"]) == set(compaction.GROUPS)
    for run in result["runs"].values():
        assert len(run["rise_mb"]) == 1 and run["rise_mb"][0] >= 0 and run["seconds"][0] > 0
    two, four = result["sweep"]["2"], result["sweep"]["4"]
    assert 0 < two["merged_mb"] < four["merged_mb"]  # the bins really grew
    text = compaction.markdown(result)
    assert "| 1,024-row groups |" in text and "| 4 |" in text


def test_slope() -> None:
    flat = [(float(t), 100.0) for t in range(60)]
    assert slope_per_minute(flat) == 0
    growing = [(float(t), 100.0 + t / 30) for t in range(60)]  # 2 MB a minute
    assert slope_per_minute(growing) == pytest.approx(2.0)
