//! Coinbase Exchange `match`, `last_match` and `ticker` frames straight into Arrow buffers.
//!
//! Why: in Python every field of every frame becomes a Python object before it reaches Arrow,
//! which costs more than the rest of the engine's per-frame work together. Here a frame is
//! parsed once, checked, and its values appended to column buffers that Python wraps as Arrow
//! arrays without copying them again.
//!
//! This decoder only vouches. A frame it is not certain about (another type, an escape in a
//! string, nesting, a missing, null or mistyped field, a duplicate key, an amount that is not
//! a plain decimal, a time not written `YYYY-MM-DDTHH:MM:SS.ffffffZ`) is marked `OTHER` and
//! left to the Python decoder, which says exactly what is wrong. It may be stricter than the
//! codec (`crypto_sentinel.sources.coinbase.codec`), never looser; the differential tests hold
//! it to that. Two checks stay in Python, where the codec's own rules are: the product id pattern (a
//! batch has a handful of distinct ids) and the time's skew from the frame's receipt.

use std::collections::HashMap;

mod bronze;
mod flat_json;
mod kafka;
mod recording;
mod scan;

use flat_json::Frame;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

/// Decimal places of the lake's decimal columns (`crypto_sentinel.model.SCALE`).
const SCALE: usize = 12;
/// Significant integer digits an amount may have (`sources.codec.MAX_INTEGER_DIGITS`).
const MAX_INTEGER_DIGITS: usize = 16;

/// `kinds` values, one byte per frame.
const OTHER: u8 = 0;
const MATCH: u8 = 1;
const TICKER: u8 = 2;

/// Ticker amounts that may be zero or absent, in the codec's order (`_TICKER_AMOUNTS`).
pub(crate) const TICKER_AMOUNTS: [&str; 10] = [
    "best_bid",
    "best_ask",
    "best_bid_size",
    "best_ask_size",
    "last_size",
    "open_24h",
    "high_24h",
    "low_24h",
    "volume_24h",
    "volume_30d",
];

/// An Arrow validity bitmap (bit set: the value is there), least significant bit first.
#[derive(Default)]
struct Validity {
    bits: Vec<u8>,
    len: usize,
    nulls: usize,
}

impl Validity {
    fn push(&mut self, valid: bool) {
        if self.len.is_multiple_of(8) {
            self.bits.push(0);
        }
        if valid {
            self.bits[self.len / 8] |= 1 << (self.len % 8);
        } else {
            self.nulls += 1;
        }
        self.len += 1;
    }

    /// The bitmap, or None when every value is there (Arrow needs none then).
    fn to_py<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        (self.nulls > 0).then(|| PyBytes::new(py, &self.bits))
    }
}

/// A nullable string column: int32 offsets and UTF-8 data.
pub(crate) struct Strings {
    offsets: Vec<i32>,
    data: Vec<u8>,
    validity: Validity,
}

impl Default for Strings {
    fn default() -> Self {
        Strings {
            offsets: vec![0],
            data: Vec::new(),
            validity: Validity::default(),
        }
    }
}

impl Strings {
    pub(crate) fn push(&mut self, value: Option<&str>) {
        if let Some(text) = value {
            self.data.extend_from_slice(text.as_bytes());
        }
        self.offsets.push(self.data.len() as i32);
        self.validity.push(value.is_some());
    }

    pub(crate) fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        out.set_item("offsets", bytes_of(py, &self.offsets))?;
        out.set_item("data", PyBytes::new(py, &self.data))?;
        out.set_item("validity", self.validity.to_py(py))?;
        Ok(out)
    }
}

/// A nullable decimal128 column (values scaled by 10**SCALE).
#[derive(Default)]
struct Decimals {
    values: Vec<i128>,
    validity: Validity,
}

/// A nullable int64 column.
#[derive(Default)]
struct Ints {
    values: Vec<i64>,
    validity: Validity,
}

/// Product ids as indexes into the batch's distinct ids, in order of first appearance.
#[derive(Default)]
struct Products {
    index: HashMap<String, i32>,
    names: Vec<String>,
}

impl Products {
    fn code(&mut self, product: &str) -> i32 {
        if let Some(&code) = self.index.get(product) {
            return code;
        }
        let code = self.names.len() as i32;
        self.index.insert(product.to_owned(), code);
        self.names.push(product.to_owned());
        code
    }
}

#[derive(Default)]
struct Matches {
    frame: Vec<i32>,
    trade_id: Vec<i64>,
    sequence: Ints,
    taker_sell: Vec<u8>, // 1: the taker sold (Coinbase reports the maker's side, "buy")
    product: Vec<i32>,
    price: Vec<i128>,
    size: Vec<i128>,
    time: Vec<i64>,
    maker_order_id: Strings,
    taker_order_id: Strings,
}

#[derive(Default)]
struct Tickers {
    frame: Vec<i32>,
    product: Vec<i32>,
    sequence: Vec<i64>,
    price: Vec<i128>,
    amounts: [Decimals; 10],
    side: Strings,
    trade_id: Ints,
    time: Vec<i64>,
}

/// Plain decimal text as the codec's `PLAIN_AMOUNT` accepts it (`0*[0-9]{1,16}(\.[0-9]{1,12})?`),
/// scaled to an integer of 10**-SCALE units; None for anything else.
fn plain_decimal(text: &str) -> Option<i128> {
    let bytes = text.as_bytes();
    let (whole, frac) = match bytes.iter().position(|&b| b == b'.') {
        Some(dot) => (&bytes[..dot], Some(&bytes[dot + 1..])),
        None => (bytes, None),
    };
    let whole = digits(whole, MAX_INTEGER_DIGITS)?;
    let mut value = i128::from(whole) * POWERS_OF_TEN[SCALE] as i128;
    if let Some(frac) = frac {
        let places = frac.len();
        if places > SCALE {
            return None;
        }
        value += i128::from(digits(frac, SCALE)? * POWERS_OF_TEN[SCALE - places]);
    }
    Some(value)
}

/// 10**0 ..= 10**SCALE.
const POWERS_OF_TEN: [u64; SCALE + 1] = {
    let mut powers = [1u64; SCALE + 1];
    let mut i = 1;
    while i <= SCALE {
        powers[i] = powers[i - 1] * 10;
        i += 1;
    }
    powers
};

/// The value of plain ASCII digits (at least one, at most `significant` after leading
/// zeros): it fits 64 bits, so no step needs 128-bit arithmetic.
fn digits(text: &[u8], significant: usize) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut value = 0u64;
    let mut counted = 0;
    for &b in text {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        if value != 0 || digit != 0 {
            counted += 1;
            if counted > significant {
                return None;
            }
        }
        value = value * 10 + u64::from(digit);
    }
    Some(value)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` as microseconds since the Unix epoch; None for any other form
/// or an impossible date or time (those go to Python, whose parser decides).
fn utc_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 27 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' || b[26] != b'Z' {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let micros = number(20, 26)?;
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

struct Batch {
    kinds: Vec<u8>,
    products: Products,
    matches: Matches,
    tickers: Tickers,
}

impl Batch {
    /// Append the frame's row if it is vouched for; its kind otherwise OTHER.
    fn add(&mut self, index: i32, text: &str) -> u8 {
        let Some(frame) = flat_json::parse(text) else {
            return OTHER;
        };
        match frame.kind {
            Some("match" | "last_match") => self.add_match(index, &frame),
            Some("ticker") => self.add_ticker(index, &frame),
            _ => None,
        }
        .unwrap_or(OTHER)
    }

    fn add_match(&mut self, index: i32, f: &Frame) -> Option<u8> {
        let trade_id = f.trade_id.filter(|&id| id > 0)?;
        let taker_sell = match f.side? {
            "buy" => 1,
            "sell" => 0,
            _ => return None,
        };
        let price = plain_decimal(f.price?).filter(|&v| v > 0)?;
        let size = plain_decimal(f.size?).filter(|&v| v > 0)?;
        let time = utc_micros(f.time?)?;
        let product = self.products.code(f.product_id?);
        let m = &mut self.matches;
        m.frame.push(index);
        m.trade_id.push(trade_id);
        m.sequence.values.push(f.sequence.unwrap_or(0));
        m.sequence.validity.push(f.sequence.is_some());
        m.taker_sell.push(taker_sell);
        m.product.push(product);
        m.price.push(price);
        m.size.push(size);
        m.time.push(time);
        m.maker_order_id.push(f.maker_order_id);
        m.taker_order_id.push(f.taker_order_id);
        Some(MATCH)
    }

    fn add_ticker(&mut self, index: i32, f: &Frame) -> Option<u8> {
        let sequence = f.sequence?;
        let price = plain_decimal(f.price?).filter(|&v| v > 0)?;
        let time = utc_micros(f.time?)?;
        let texts = f.amounts;
        let mut amounts = [None; 10];
        for (slot, text) in amounts.iter_mut().zip(texts) {
            if let Some(text) = text {
                *slot = Some(plain_decimal(text)?);
            }
        }
        let product = self.products.code(f.product_id?);
        let t = &mut self.tickers;
        t.frame.push(index);
        t.product.push(product);
        t.sequence.push(sequence);
        t.price.push(price);
        for (column, value) in t.amounts.iter_mut().zip(amounts) {
            column.values.push(value.unwrap_or(0));
            column.validity.push(value.is_some());
        }
        t.side.push(f.side);
        t.trade_id.values.push(f.trade_id.unwrap_or(0));
        t.trade_id.validity.push(f.trade_id.is_some());
        t.time.push(time);
        Some(TICKER)
    }
}

/// A slice of plain numbers as the bytes Arrow reads them (little-endian, as this machine).
pub(crate) fn bytes_of<'py, T: Copy>(py: Python<'py>, values: &[T]) -> Bound<'py, PyBytes> {
    let size = std::mem::size_of_val(values);
    // SAFETY: T is a plain integer type here (i32, i64, i128); its bytes are initialised.
    let raw = unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, size) };
    PyBytes::new(py, raw)
}

fn column<'py, T: Copy>(
    py: Python<'py>,
    values: &[T],
    validity: Option<&Validity>,
) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("data", bytes_of(py, values))?;
    out.set_item("validity", validity.and_then(|v| v.to_py(py)))?;
    Ok(out)
}

/// Decode Coinbase frame texts. Returns a dict of column buffers:
///
/// - `kinds`: one byte per frame, 0 (left to Python), 1 (a match row) or 2 (a ticker row);
/// - `products`: the distinct product ids; `*_product` columns are int32 indexes into it;
/// - `matches` and `tickers`: dicts of columns, each `{"data": bytes, "validity": bytes or
///   None}` (strings: `offsets`, `data`, `validity`); `frame` is the row's frame index.
#[pyfunction]
fn decode_coinbase<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut batch = Batch {
        kinds: Vec::with_capacity(texts.len()),
        products: Products::default(),
        matches: Matches::default(),
        tickers: Tickers::default(),
    };
    for (index, item) in texts.iter().enumerate() {
        let kind = match item.cast::<PyString>().ok().map(|s| s.to_str()) {
            Some(Ok(text)) => batch.add(index as i32, text),
            Some(Err(_)) | None => OTHER, // not text, or not encodable (a lone surrogate)
        };
        batch.kinds.push(kind);
    }
    let out = PyDict::new(py);
    out.set_item("kinds", PyBytes::new(py, &batch.kinds))?;
    out.set_item("products", PyList::new(py, &batch.products.names)?)?;

    let m = &batch.matches;
    let matches = PyDict::new(py);
    matches.set_item("frame", column(py, &m.frame, None)?)?;
    matches.set_item("trade_id", column(py, &m.trade_id, None)?)?;
    matches.set_item(
        "sequence",
        column(py, &m.sequence.values, Some(&m.sequence.validity))?,
    )?;
    matches.set_item("taker_sell", PyBytes::new(py, &m.taker_sell))?;
    matches.set_item("product", column(py, &m.product, None)?)?;
    matches.set_item("price", column(py, &m.price, None)?)?;
    matches.set_item("size", column(py, &m.size, None)?)?;
    matches.set_item("time", column(py, &m.time, None)?)?;
    matches.set_item("maker_order_id", m.maker_order_id.to_py(py)?)?;
    matches.set_item("taker_order_id", m.taker_order_id.to_py(py)?)?;
    out.set_item("matches", matches)?;

    let t = &batch.tickers;
    let tickers = PyDict::new(py);
    tickers.set_item("frame", column(py, &t.frame, None)?)?;
    tickers.set_item("product", column(py, &t.product, None)?)?;
    tickers.set_item("sequence", column(py, &t.sequence, None)?)?;
    tickers.set_item("price", column(py, &t.price, None)?)?;
    for (name, amount) in TICKER_AMOUNTS.iter().zip(&t.amounts) {
        tickers.set_item(*name, column(py, &amount.values, Some(&amount.validity))?)?;
    }
    tickers.set_item("side", t.side.to_py(py)?)?;
    tickers.set_item(
        "trade_id",
        column(py, &t.trade_id.values, Some(&t.trade_id.validity))?,
    )?;
    tickers.set_item("time", column(py, &t.time, None)?)?;
    out.set_item("tickers", tickers)?;
    Ok(out)
}

#[pymodule]
fn crypto_sentinel_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_coinbase, m)?)?;
    m.add_function(wrap_pyfunction!(kafka::kafka_frames, m)?)?;
    m.add_function(wrap_pyfunction!(bronze::bronze_columns, m)?)?;
    m.add_function(wrap_pyfunction!(recording::recording_texts, m)?)?;
    // The rules this decoder copies from Python, so a test can hold them equal.
    m.add("SCALE", SCALE)?;
    m.add("MAX_INTEGER_DIGITS", MAX_INTEGER_DIGITS)?;
    m.add("TICKER_AMOUNTS", TICKER_AMOUNTS.to_vec())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decimals_are_scaled_exactly() {
        assert_eq!(plain_decimal("0.00001305"), Some(13_050_000));
        assert_eq!(plain_decimal("00042"), Some(42 * 10i128.pow(12)));
        assert_eq!(
            plain_decimal("9999999999999999.999999999999"),
            Some(10i128.pow(28) - 1)
        );
        for bad in [
            "",
            ".5",
            "5.",
            "1.2.3",
            "-1",
            "+1",
            "1e5",
            "１",
            "1.0000000000001",
        ] {
            assert_eq!(plain_decimal(bad), None, "{bad}");
        }
        assert_eq!(plain_decimal("10000000000000000"), None); // 17 integer digits
    }

    #[test]
    fn times_are_exact_microseconds() {
        assert_eq!(utc_micros("1970-01-01T00:00:00.000001Z"), Some(1));
        assert_eq!(
            utc_micros("2024-02-29T23:59:59.999999Z"),
            Some(1_709_251_199_999_999)
        );
        for bad in [
            "2023-02-29T00:00:00.000000Z",
            "2024-01-01T24:00:00.000000Z",
            "2024-01-01T00:00:60.000000Z",
            "2024-01-01 00:00:00.000000Z",
            "2024-01-01T00:00:00.000000+00:00",
            "2024-01-01T00:00:00Z",
            "0000-01-01T00:00:00.000000Z",
        ] {
            assert_eq!(utc_micros(bad), None, "{bad}");
        }
    }
}
