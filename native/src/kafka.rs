//! Raw-topic messages into frames: the common record, as `sentinel ingest` writes it, in one
//! pass without the interpreter's per-message bytecode.
//!
//! Why: draining a Kafka backlog, turning confluent-kafka's messages into frames was about a
//! third of the processor's event-loop time in Python (docs/benchmarks.md, session 34). The
//! record's value is a receipt line and the frame text (`crypto_sentinel.bus.kafka.envelope`).
//!
//! Like the Coinbase decoder this only vouches for the common case: a message without an
//! error, at the offset its partition expects, whose value is a well-formed receipt line (plain
//! digits within 64 bits, a connection id the caller has seen) followed by valid UTF-8, on a
//! topic whose exchange the caller knows. Every other message goes to the caller's Python
//! function, in order, which says what it is (`KafkaFrames._frame_of`).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

/// The first byte of a receipt line (`crypto_sentinel.bus.kafka.ENVELOPE`).
pub(crate) const ENVELOPE: u8 = 0x1e;

/// (connection id, position, receive ns, frame text) of a receipt line and the text after
/// it, exactly as `crypto_sentinel.bus.kafka.unwrap` reads it; None where it says None.
pub(crate) fn unwrap(value: &[u8]) -> Option<(&[u8], i64, i64, &[u8])> {
    if value.first() != Some(&ENVELOPE) {
        return None;
    }
    let end = memchr::memchr(b'\n', value)?;
    let mut parts = value[1..end].splitn(3, |&b| b == b' ');
    let ns = digits(parts.next()?)?;
    let seq = digits(parts.next()?)?;
    let conn = parts.next()?;
    Some((conn, seq, ns, &value[end + 1..]))
}

/// Plain ASCII digits (at least one) as an i64; None for anything else or beyond 64 bits.
fn digits(text: &[u8]) -> Option<i64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0i64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(i64::from(b - b'0'))
    })
}

/// The frames of `messages`, in order. `expected` maps (topic, partition) to the next offset
/// and is moved on for each message taken here; `exchanges` maps a topic to its exchange and
/// `conn_ids` a receipt's connection id (bytes) to its text; `frame` makes a frame of
/// (exchange, conn_id, recv_seq, recv_ns, text, partition, offset); `other(message)` gives the
/// frame of any other message, or None to leave it out.
#[pyfunction]
pub(crate) fn kafka_frames<'py>(
    py: Python<'py>,
    messages: &Bound<'py, PyList>,
    expected: &Bound<'py, PyDict>,
    exchanges: &Bound<'py, PyDict>,
    conn_ids: &Bound<'py, PyDict>,
    frame: &Bound<'py, PyAny>,
    other: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let reader = Reader {
        expected,
        exchanges,
        conn_ids,
        frame,
    };
    let out = PyList::empty(py);
    for message in messages.iter() {
        match reader.common(py, &message)? {
            Some(made) => out.append(made)?,
            None => {
                let made = other.call1((message,))?;
                if !made.is_none() {
                    out.append(made)?;
                }
            }
        }
    }
    Ok(out)
}

/// The caller's state `kafka_frames` reads and moves on, and how it makes a frame.
struct Reader<'a, 'py> {
    expected: &'a Bound<'py, PyDict>,
    exchanges: &'a Bound<'py, PyDict>,
    conn_ids: &'a Bound<'py, PyDict>,
    frame: &'a Bound<'py, PyAny>,
}

impl<'py> Reader<'_, 'py> {
    /// The frame of a message on the common path, or None (nothing changed) for `other`.
    fn common(
        &self,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        if !message.call_method0(pyo3::intern!(py, "error"))?.is_none() {
            return Ok(None);
        }
        let topic = message.call_method0(pyo3::intern!(py, "topic"))?;
        let partition = message.call_method0(pyo3::intern!(py, "partition"))?;
        let offset = message.call_method0(pyo3::intern!(py, "offset"))?;
        let key = PyTuple::new(py, [&topic, &partition])?;
        let Some(next) = self.expected.get_item(&key)? else {
            return Ok(None);
        };
        let (Ok(next), Ok(at)) = (next.extract::<i64>(), offset.extract::<i64>()) else {
            return Ok(None);
        };
        if next != at {
            return Ok(None);
        }
        let Some(exchange) = self.exchanges.get_item(&topic)? else {
            return Ok(None);
        };
        let value = message.call_method0(pyo3::intern!(py, "value"))?;
        let Ok(value) = value.cast::<PyBytes>() else {
            return Ok(None);
        };
        let Some((conn, recv_seq, recv_ns, text)) = unwrap(value.as_bytes()) else {
            return Ok(None);
        };
        if conn.is_empty() {
            return Ok(None);
        }
        let Some(conn_id) = self.conn_ids.get_item(PyBytes::new(py, conn))? else {
            return Ok(None);
        };
        let Ok(text) = std::str::from_utf8(text) else {
            return Ok(None);
        };
        self.expected.set_item(&key, at + 1)?;
        let text = PyString::new(py, text);
        let args = (
            exchange, conn_id, recv_seq, recv_ns, text, partition, offset,
        );
        Ok(Some(self.frame.call1(args)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_lines_are_read_as_python_reads_them() {
        let read = unwrap(b"\x1e1796000000123456789 42 ab cd\n{\"a\":1}\n").unwrap();
        assert_eq!(
            read,
            (
                &b"ab cd"[..],
                42,
                1_796_000_000_123_456_789,
                &b"{\"a\":1}\n"[..]
            )
        );
        assert_eq!(unwrap(b"\x1e5 6 \n{}"), Some((&b""[..], 6, 5, &b"{}"[..])));
        assert_eq!(
            unwrap(b"\x1e9223372036854775807 0 c\n"),
            Some((&b"c"[..], 0, i64::MAX, &b""[..]))
        );
        for bad in [
            &b"{}"[..],
            b"\x1e5 6 c1",
            b"\x1e+5 6 c1\n{}",
            b"\x1e5 -6 c1\n{}",
            b"\x1e 6 c1\n{}",
            b"\x1e5 6\n{}",
            b"\x1e9223372036854775808 6 c1\n{}",
            b"\x1e\xd9\xa3 6 c1\n{}",
            b"x\x1e5 6 c1\n{}",
        ] {
            assert_eq!(unwrap(bad), None, "{bad:?}");
        }
    }
}
