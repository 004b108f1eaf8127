"""Memory settings (issue 15): deltalake's and Arrow's allocator options, and what `sentinel up`
leaves unloaded until it is needed (DuckDB, pyarrow.dataset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from crypto_sentinel import native
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.maintenance import Maintainer, Policy
from crypto_sentinel.lake.query import LakeReader


def test_delta_allocator_defaults_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.DELTA_JEMALLOC_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "deltalake")  # as if not loaded yet
    assert native.configure()
    assert os.environ[native.DELTA_JEMALLOC_ENV] == native.DELTA_JEMALLOC
    monkeypatch.setenv(native.DELTA_JEMALLOC_ENV, "")  # the user's choice wins, even empty
    assert native.configure()
    assert os.environ[native.DELTA_JEMALLOC_ENV] == ""


def test_too_late_once_deltalake_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.DELTA_JEMALLOC_ENV, raising=False)
    import deltalake  # noqa: F401  (loaded: jemalloc has read its options already)

    assert not native.configure()
    assert native.DELTA_JEMALLOC_ENV not in os.environ


def test_up_loads_neither_duckdb_nor_pyarrow_dataset_at_import() -> None:
    """A fresh process importing the pipeline and every verb of the CLI (as `sentinel up`
    does) sets the allocator options before deltalake loads, and leaves DuckDB and
    pyarrow.dataset (2.8 MB) for the first query or rebuild that needs them."""
    env = {k: v for k, v in os.environ.items() if k != native.DELTA_JEMALLOC_ENV}
    code = (
        "import json, os, sys, crypto_sentinel.runtime\n"
        "from crypto_sentinel import cli\n"
        "cli.build_parser()\n"
        "print(json.dumps([os.environ.get('_RJEM_MALLOC_CONF'), 'deltalake' in sys.modules,"
        " 'duckdb' in sys.modules, 'pyarrow.dataset' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    conf, delta, duck, dataset = json.loads(out.stdout.strip().splitlines()[-1])
    assert conf == native.DELTA_JEMALLOC and delta
    assert not duck and not dataset


def test_the_cli_and_pipeline_leave_the_feeds_clients_unloaded_until_a_source_runs() -> None:
    """`sentinel process` (Kafka -> lake) starts without the WebSocket and HTTP clients of the
    feeds (~0.1 s of imports); `Pipeline` loads them when it has sources to run."""
    code = (
        "import json, sys, crypto_sentinel.runtime\n"
        "from crypto_sentinel import cli\n"
        "cli.build_parser()\n"
        "print(json.dumps([m for m in ('httpx', 'picows', 'crypto_sentinel.pipeline.ingest')"
        " if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_deltalake_jemalloc_understands_every_option(tmp_path: Path) -> None:
    """jemalloc names an option it does not know on stderr, in every process: a typo in
    DELTA_JEMALLOC would print to every user's terminal and leave its setting out."""
    env = {k: v for k, v in os.environ.items() if k != native.DELTA_JEMALLOC_ENV}
    code = (
        "import os, crypto_sentinel, pyarrow as pa\n"
        "from deltalake import write_deltalake\n"
        f"write_deltalake({str(tmp_path / 'table')!r}, pa.table({{'a': [1]}}))\n"
        "print(os.environ['_RJEM_MALLOC_CONF'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == native.DELTA_JEMALLOC
    assert "jemalloc" not in out.stderr, out.stderr


def test_arrow_allocates_with_the_system_pool_unless_set() -> None:
    """A fresh process importing the package uses the C library's allocator for Arrow (it
    kept less memory than mimalloc); a pool named in the environment wins."""
    code = (
        "import crypto_sentinel.runtime, pyarrow as pa\n"
        "print(pa.default_memory_pool().backend_name, pa.array([1, 2]).sum().as_py())"
    )
    env = {k: v for k, v in os.environ.items() if k != native.ARROW_POOL_ENV}
    for chosen, expected in ((None, "system 3"), ("mimalloc", "mimalloc 3")):
        if chosen is not None:
            env[native.ARROW_POOL_ENV] = chosen
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip().splitlines()[-1] == expected


def test_reader_opens_duckdb_at_the_first_query_with_files(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    T.ensure_tables(lake)
    reader = LakeReader(lake)
    assert reader.trade_extents() == {}  # no files: answered without DuckDB
    assert reader._db is None
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    row = {
        "exchange": "coinbase",
        "product_id": "BTC-USD",
        "trade_id": 7,
        "price": Decimal("100.5"),
        "size": Decimal("0.25"),
        "side": "buy",
        "time": now,
        "recv_time": now,
        "sequence": 1,
        "maker_order_id": "m",
        "taker_order_id": "t",
        "conn_id": "c",
        "date": now.date(),
    }
    write_deltalake(
        str(T.TRADES.path(lake)),
        pa.Table.from_pylist([row], schema=T.TRADES.schema),
        mode="append",
        partition_by=list(T.TRADES.partition_by),
    )
    assert reader.trade_extents() == {("coinbase", "BTC-USD"): (7, 7, now, now)}
    assert reader._db is not None
    (setting,) = reader._db.execute(
        "SELECT current_setting('allocator_background_threads')"
    ).fetchone() or (None,)
    assert setting is True


def test_maintenance_lets_its_tables_go_after_a_pass(tmp_path: Path) -> None:
    """A pass reopens the tables it needs; none is kept (and refreshed) between passes."""
    lake = tmp_path / "lake"
    T.ensure_tables(lake)
    maintainer = Maintainer(lake, Policy())
    assert maintainer.run_once()
    assert maintainer._tables == {}


HOLES_IN_THE_HEAP = """
import json, sys
from crypto_sentinel import native

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

blocks = [bytearray(2048) for _ in range(60_000)]  # ~120 MB from the C heap, not pymalloc
kept = blocks[::16]  # one in 16 stays: the heap's top is used, the freed pages are holes
del blocks
before = rss_mb()
trimmed = native.trim_heap()
print(json.dumps({"trimmed": trimmed, "before": before, "after": rss_mb(), "kept": len(kept)}))
"""


def test_trim_heap_hands_freed_pages_in_the_middle_of_the_heap_back() -> None:
    """glibc keeps pages freed below the top of a heap; `trim_heap` returns them."""
    out = subprocess.run(
        [sys.executable, "-c", HOLES_IN_THE_HEAP], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    assert result["trimmed"] is True
    assert result["before"] - result["after"] > 60, result


async def test_the_heap_is_trimmed_periodically_until_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    calls = []
    monkeypatch.setattr(native, "trim_heap", lambda: calls.append(1) or True)
    stop = asyncio.Event()
    task = asyncio.create_task(native.trim_heap_forever(stop, seconds=0.01))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(calls) >= 3


ARENAS_OF_FOUR_THREADS = """
import contextlib, ctypes, io, os, sys, threading
import crypto_sentinel

def allocate():
    kept = [bytearray(4096) for _ in range(5_000)]  # from the C heap, not pymalloc
    del kept

threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.stderr.flush()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def run_with(variable: str, value: str | None, script: str) -> subprocess.CompletedProcess[str]:
    """`script` in a fresh interpreter, with `variable` set to `value` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != variable}
    if value is not None:
        env[variable] = value
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )


@pytest.mark.parametrize(("env_limit", "arenas"), [(None, 1), ("3", 3)])
def test_threads_share_one_c_heap_unless_the_environment_says(
    env_limit: str | None, arenas: int
) -> None:
    """Importing the package caps glibc at one arena before any other thread allocates (each
    thread would get its own, holding freed blocks); MALLOC_ARENA_MAX set by the user wins."""
    out = run_with(native.C_ARENAS_ENV, env_limit, ARENAS_OF_FOUR_THREADS)
    assert out.stderr.count("Arena ") == arenas, out.stderr


LARGE_BLOCK_AFTER_A_LARGER_ONE = """
import ctypes
import crypto_sentinel

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.mallinfo2.restype = ctypes.c_void_p, Info
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(3 << 20))  # glibc raises a moving threshold past this size
mapped = libc.mallinfo2().hblkhd
block = libc.malloc(3 << 19)  # 1.5 MiB
print(libc.mallinfo2().hblkhd - mapped >= 3 << 19)
"""


@pytest.mark.parametrize(("env_threshold", "mapped"), [(None, "True"), ("4194304", "False")])
def test_large_blocks_keep_mappings_of_their_own_unless_the_environment_says(
    env_threshold: str | None, mapped: str
) -> None:
    """After a 3 MiB block is freed, a 1.5 MiB one still gets its own mapping (glibc's moving
    threshold would serve it from the heap, where it leaves a hole when freed);
    MALLOC_MMAP_THRESHOLD_ set by the user wins."""
    out = run_with(native.C_MMAP_THRESHOLD_ENV, env_threshold, LARGE_BLOCK_AFTER_A_LARGER_ONE)
    assert out.stdout.strip() == mapped, out.stderr
