"""Arrow arrays over the column buffers the compiled extension returns (`extension.py`): the
bytes it fills become the arrays' buffers as they are, without another copy."""

from __future__ import annotations

import pyarrow as pa


def values(typ: pa.DataType, n: int, column: dict[str, bytes | None]) -> pa.Array:
    """A fixed-width column: `{"data": bytes, "validity": bytes or None}`."""
    validity, data = column["validity"], column["data"]
    assert data is not None
    return pa.Array.from_buffers(
        typ, n, [None if validity is None else pa.py_buffer(validity), pa.py_buffer(data)]
    )


def plain(typ: pa.DataType, data: bytes) -> pa.Array:
    """A fixed-width column without nulls, from its values' bytes alone."""
    return pa.Array.from_buffers(typ, len(data) // typ.byte_width, [None, pa.py_buffer(data)])


def strings(n: int, column: dict[str, bytes | None]) -> pa.Array:
    """A string column: `{"offsets": bytes, "data": bytes, "validity": bytes or None}`."""
    validity, offsets, data = column["validity"], column["offsets"], column["data"]
    assert offsets is not None and data is not None
    buffers = [None if validity is None else pa.py_buffer(validity)]
    return pa.Array.from_buffers(
        pa.string(), n, [*buffers, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
