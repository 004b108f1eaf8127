"""The compiled extension (`native/`, Rust), when it is installed: the Coinbase batch decoder
(`sources/coinbase/compiled.py`), the Kafka reader's common path (`bus/kafka.py`), the
bronze table's columns (`lake/rows.py`) and a recording's lines (`sources/replay.py`).

Each only speeds up what Python does as well, with the same results (differential tests hold
them to it), so a machine without Rust runs the same pipeline, slower, after one warning.
`SENTINEL_COMPILED_DECODER=off` turns the extension off (to measure, or to rule it out).
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

log = logging.getLogger(__name__)


def _load() -> ModuleType | None:
    if os.environ.get("SENTINEL_COMPILED_DECODER", "").lower() in ("off", "0", "false", "no"):
        log.info("frames decode in Python (SENTINEL_COMPILED_DECODER=off)")
        return None
    try:
        import crypto_sentinel_native
    except ImportError:
        log.warning(
            "the compiled decoder is not installed: Coinbase frames and Kafka records are read "
            "in Python, which is slower (install Rust from https://rustup.rs, then run "
            "`make install`)"
        )
        return None
    return crypto_sentinel_native


#: The extension module, or None.
NATIVE = _load()
