//! A batch's frames into the column buffers of the bronze table, in one pass.
//!
//! Why: bronze has a row for every frame, and building its columns in Python (one list per
//! field, then Arrow's conversion of each) was the largest Python work left in the writer's
//! thread, where it holds the interpreter the event loop needs (docs/benchmarks.md, session
//! 35). The values are the same as `crypto_sentinel.lake.rows.bronze_table` makes in Python;
//! a test holds the two equal.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::{bytes_of, Strings};

/// Microseconds in a day: the `date` column is the receipt time's UTC day.
const DAY_US: i64 = 86_400_000_000;

fn string<'a, 'py>(value: &'a Bound<'py, PyAny>) -> PyResult<&'a str> {
    value.cast::<PyString>()?.to_str()
}

/// The bronze columns of `frames` (`RawFrame`s): `source`, `conn_id` and `frame` as string
/// buffers (`offsets`, `data`), `recv_seq`, `recv_us` (int64) and `date` (int32, days) as
/// bytes; None when a string column would outgrow Arrow's 32-bit offsets (Python then
/// builds it in chunks).
#[pyfunction]
pub(crate) fn bronze_columns<'py>(
    py: Python<'py>,
    frames: &Bound<'py, PyList>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let n = frames.len();
    let mut source = Strings::default();
    let mut conn_id = Strings::default();
    let mut texts: Vec<Bound<'py, PyAny>> = Vec::with_capacity(n);
    let mut recv_seq: Vec<i64> = Vec::with_capacity(n);
    let mut recv_us: Vec<i64> = Vec::with_capacity(n);
    let mut date: Vec<i32> = Vec::with_capacity(n);
    for frame in frames.iter() {
        source.push(Some(string(&frame.getattr(intern!(py, "exchange"))?)?));
        conn_id.push(Some(string(&frame.getattr(intern!(py, "conn_id"))?)?));
        recv_seq.push(frame.getattr(intern!(py, "recv_seq"))?.extract()?);
        let ns: i64 = frame.getattr(intern!(py, "recv_ns"))?.extract()?;
        let us = ns / 1000; // as Arrow's integer division: towards zero
        recv_us.push(us);
        date.push(us.div_euclid(DAY_US) as i32);
        texts.push(frame.getattr(intern!(py, "text"))?);
    }
    let texts = texts.iter().map(string).collect::<PyResult<Vec<&str>>>()?;
    let Some(body) = exact_strings(py, &texts)? else {
        return Ok(None);
    };
    let out = PyDict::new(py);
    out.set_item("source", source.to_py(py)?)?;
    out.set_item("conn_id", conn_id.to_py(py)?)?;
    out.set_item("frame", body)?;
    out.set_item("recv_seq", bytes_of(py, &recv_seq))?;
    out.set_item("recv_us", bytes_of(py, &recv_us))?;
    out.set_item("date", bytes_of(py, &date))?;
    Ok(Some(out))
}

/// A string column without nulls written straight into the bytes Python keeps, each buffer
/// allocated once at its exact size (a growing buffer, copied at the end, left freed blocks
/// of up to twice the column in the C heap); None beyond Arrow's 32-bit offsets.
fn exact_strings<'py>(py: Python<'py>, values: &[&str]) -> PyResult<Option<Bound<'py, PyDict>>> {
    let total: usize = values.iter().map(|v| v.len()).sum();
    if total > i32::MAX as usize {
        return Ok(None);
    }
    let offsets = PyBytes::new_with(py, (values.len() + 1) * 4, |buf| {
        let mut end = 0i32;
        buf[..4].copy_from_slice(&end.to_ne_bytes());
        for (slot, value) in buf[4..].chunks_exact_mut(4).zip(values) {
            end += value.len() as i32; // within i32: the total is
            slot.copy_from_slice(&end.to_ne_bytes());
        }
        Ok(())
    })?;
    let data = PyBytes::new_with(py, total, |buf| {
        let mut at = 0;
        for value in values {
            buf[at..at + value.len()].copy_from_slice(value.as_bytes());
            at += value.len();
        }
        Ok(())
    })?;
    let out = PyDict::new(py);
    out.set_item("offsets", offsets)?;
    out.set_item("data", data)?;
    out.set_item("validity", py.None())?;
    Ok(Some(out))
}
