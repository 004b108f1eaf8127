"""The compiled extension built from `native/` (Rust), or None when it is not there.

It decodes Coinbase frames (`coinbase/compiled.py`) and the wrapper lines of recordings
(`replay.py`) without a Python object per value; where it is missing, or turned off with
`SENTINEL_COMPILED_DECODER=off`, the Python code it stands in for gives the same results.
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
            "the compiled decoder is not installed: frames decode in Python, which is slower "
            "(install Rust from https://rustup.rs, then run `make install`)"
        )
        return None
    return crypto_sentinel_native


NATIVE = _load()
