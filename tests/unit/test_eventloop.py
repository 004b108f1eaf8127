"""The long-lived processes' event loop: the collector tuned and pandas kept out before it
starts."""

from __future__ import annotations

import gc
import subprocess
import sys

from crypto_sentinel import eventloop
from crypto_sentinel.eventloop import FULL_COLLECTION_EVERY, run_event_loop


async def _seen() -> tuple[tuple[int, int, int], int]:
    return gc.get_threshold(), gc.get_freeze_count()


def test_the_loop_runs_with_start_up_objects_frozen_and_full_collections_spaced() -> None:
    before = gc.get_threshold()
    try:
        threshold, frozen = run_event_loop(_seen())
        assert threshold == (before[0], before[1], FULL_COLLECTION_EVERY)
        assert before[2] < FULL_COLLECTION_EVERY
        assert frozen > 1000  # this process's modules and classes, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        if eventloop._AnalysisLibrariesAbsent in sys.meta_path:
            sys.meta_path.remove(eventloop._AnalysisLibrariesAbsent)


PROBE = """
import sys
from decimal import Decimal
from crypto_sentinel.eventloop import keep_analysis_libraries_out
keep_analysis_libraries_out()
import duckdb
import pyarrow as pa
pa.scalar(Decimal("1.5"), pa.decimal128(28, 12))  # pyarrow's first conversion
pa.array([1, None])
assert duckdb.sql("SELECT 41 + 1").fetchall() == [(42,)]
import crypto_sentinel.api.serving  # what `sentinel serve` and `up` load
from crypto_sentinel import cli
cli.build_parser()  # every verb's module
import tempfile
from deltalake import DeltaTable, write_deltalake
with tempfile.TemporaryDirectory() as lake:  # the writer's and the readers' conversions
    write_deltalake(lake, pa.table({"price": pa.array([Decimal("1.5")], pa.decimal128(28, 12))}))
    read = DeltaTable(lake).to_pyarrow_table()
    assert read.column("price").to_pylist() == [Decimal("1.5")]
    assert duckdb.sql("SELECT sum(price) FROM read").fetchall() == [(Decimal("1.5"),)]
import httpx  # what the venues' REST clients use: its command-line client stays out
assert httpx.Client and "httpx._main" not in sys.modules and "rich" not in sys.modules
for name in ("pandas", "numpy"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        print(name, "absent", name in sys.modules)
"""


def test_pandas_and_numpy_stay_out_of_a_long_lived_process() -> None:
    """pandas and NumPy are installed here (the dev extra), yet pyarrow's conversions, Delta
    writes and reads, DuckDB and the API's modules work without them once they are kept out,
    and nothing imported them."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-3:] == ["pandas absent False", "numpy absent False", ""]
    for name in ("pandas", "numpy"):  # the probe's absence is ours, not the venv's
        installed = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True)
        assert installed.returncode == 0


def test_a_long_lived_verb_keeps_pandas_and_numpy_out_before_its_modules_load() -> None:
    probe = (
        "import sys\n"
        "from crypto_sentinel import cli\n"
        "code = cli.main(['serve', '--port', '-1'])  # refused by its settings, after parsing\n"
        "import pyarrow\n"  # what `serve` loads next; with NumPy installed it imports it
        "print(code, 'pandas' in sys.modules, 'numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "2 False False", out.stderr


def test_processes_without_the_api_never_load_its_stack() -> None:
    """`sentinel process` and `sentinel ingest` serve no API: every verb's module and the
    pipeline load without FastAPI and uvicorn (about 10 MB and 0.1 s of start-up); the API
    role brings them when a process serves it."""
    probe = (
        "import sys\n"
        "from crypto_sentinel import cli, runtime\n"
        "cli.build_parser()\n"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))\n"
        "import crypto_sentinel.pipeline.api\n"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "['fastapi', 'starlette', 'uvicorn']"]
