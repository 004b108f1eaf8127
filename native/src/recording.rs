//! A recording's lines into frame texts, read while other threads hold the interpreter.
//!
//! Why: replaying at full speed, reading the recording (a line, its JSON wrapper, the escaped
//! frame inside) cost about 1.2 us a frame of the event loop's time in Python, a quarter of
//! what the engine has per trade to reach its target (docs/benchmarks.md, session 35).
//!
//! Like the other parts of the extension this only vouches for the common lines: a wrapper
//! exactly as `sentinel record` writes it (`{"recv_ts": <plain number>, "raw": "<string>"}`,
//! any JSON whitespace between the parts) or a bare frame, in valid UTF-8. Every other line
//! (another shape, a bad escape, a lone surrogate, invalid UTF-8) goes back to the caller,
//! which reads it as `crypto_sentinel.sources.replay.parse_line` does.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use crate::scan;

const WRAPPER: &[u8] = b"{\"recv_ts\"";

/// A line's frame text: a range of the line itself, a range of the unescaped buffer, or the
/// line left to Python.
enum Text {
    Line(usize, usize),
    Unescaped(usize, usize),
    Other(usize, usize),
}

/// `recording_texts`' answer: texts, the lines left to Python, bytes used.
type Texts<'py> = (Bound<'py, PyList>, Vec<(usize, Bound<'py, PyBytes>)>, usize);

/// The frame texts of `block`'s lines (blank ones left out), in order. Returns
/// `(texts, others, used)`: `texts` has None where `others` has `(index, line)` for Python
/// to read; `used` is how many bytes the lines took. Without `at_end` a last line with no
/// newline is left for the next block (not counted in `used`).
#[pyfunction]
pub(crate) fn recording_texts<'py>(
    py: Python<'py>,
    block: &Bound<'py, PyBytes>,
    at_end: bool,
) -> PyResult<Texts<'py>> {
    let data = block.as_bytes();
    let (lines, unescaped, used) = py.detach(|| read_lines(data, at_end));
    let texts = PyList::empty(py);
    let mut others = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        match *line {
            Text::Line(start, end) => texts.append(text(py, &data[start..end]))?,
            Text::Unescaped(start, end) => texts.append(text(py, &unescaped[start..end]))?,
            Text::Other(start, end) => {
                texts.append(py.None())?;
                others.push((index, PyBytes::new(py, &data[start..end])));
            }
        }
    }
    Ok((texts, others, used))
}

fn text<'py>(py: Python<'py>, utf8: &[u8]) -> Bound<'py, PyString> {
    // SAFETY: `read_lines` checked these bytes are UTF-8.
    PyString::new(py, unsafe { std::str::from_utf8_unchecked(utf8) })
}

fn read_lines(data: &[u8], at_end: bool) -> (Vec<Text>, Vec<u8>, usize) {
    let mut lines = Vec::new();
    let mut unescaped = Vec::with_capacity(data.len());
    let mut start = 0;
    while start < data.len() {
        let (end, next) = match memchr::memchr(b'\n', &data[start..]) {
            Some(at) => (start + at, start + at + 1),
            None if at_end => (data.len(), data.len()),
            None => break,
        };
        let mut stop = end; // `rstrip("\r\n")`: the newline is gone, carriage returns too
        while stop > start && data[stop - 1] == b'\r' {
            stop -= 1;
        }
        if stop > start {
            lines.push(line_text(data, start, stop, &mut unescaped));
        }
        start = next;
    }
    (lines, unescaped, start)
}

fn line_text(data: &[u8], start: usize, end: usize, unescaped: &mut Vec<u8>) -> Text {
    let line = &data[start..end];
    if !line.starts_with(WRAPPER) {
        return match std::str::from_utf8(line) {
            Ok(_) => Text::Line(start, end),
            Err(_) => Text::Other(start, end),
        };
    }
    let mark = unescaped.len();
    match wrapped(line, unescaped) {
        Some(()) if std::str::from_utf8(&unescaped[mark..]).is_ok() => {
            Text::Unescaped(mark, unescaped.len())
        }
        _ => {
            unescaped.truncate(mark);
            Text::Other(start, end)
        }
    }
}

/// Reads `{"recv_ts": <number>, "raw": "<string>"}` (then only whitespace), appending the
/// string's unescaped bytes to `out`; None for anything else.
fn wrapped(line: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut at = WRAPPER.len();
    at = expect(line, whitespace(line, at), b':')?;
    at = plain_number(line, whitespace(line, at))?;
    at = expect(line, whitespace(line, at), b',')?;
    at = whitespace(line, at);
    if !line[at..].starts_with(b"\"raw\"") {
        return None;
    }
    at = expect(line, whitespace(line, at + 5), b':')?;
    at = expect(line, whitespace(line, at), b'"')?;
    at = string(line, at, out)?;
    at = expect(line, whitespace(line, at), b'}')?;
    (whitespace(line, at) == line.len()).then_some(())
}

fn whitespace(line: &[u8], mut at: usize) -> usize {
    while at < line.len() && matches!(line[at], b' ' | b'\t' | b'\r' | b'\n') {
        at += 1;
    }
    at
}

fn expect(line: &[u8], at: usize, byte: u8) -> Option<usize> {
    (line.get(at) == Some(&byte)).then_some(at + 1)
}

/// A JSON number without exponent and at most 32 characters (always finite): its end.
fn plain_number(line: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    if line.get(at) == Some(&b'-') {
        at += 1;
    }
    let digits = |from: usize| {
        line[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let whole = digits(at);
    if whole == 0 || (whole > 1 && line[at] == b'0') {
        return None;
    }
    at += whole;
    if line.get(at) == Some(&b'.') {
        let fraction = digits(at + 1);
        if fraction == 0 {
            return None;
        }
        at += 1 + fraction;
    }
    (at - start <= 32).then_some(at)
}

/// A JSON string's body from `at` (after its opening quote) to its closing quote, unescaped
/// into `out` as orjson reads it (control characters, unknown escapes and lone surrogates
/// are errors); the position after the quote.
fn string(line: &[u8], mut at: usize, out: &mut Vec<u8>) -> Option<usize> {
    loop {
        at = plain_run(line, at, out);
        match *line.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => {}
            _ => return None, // a control character
        }
        let escape = *line.get(at + 1)?;
        at += 2;
        let byte = match escape {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let (c, next) = unicode_escape(line, at)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                at = next;
                continue;
            }
            _ => return None,
        };
        out.push(byte);
    }
}

/// Copies the plain string bytes from `at` to `out`, up to the next quote, backslash or
/// control character (or the line's end): its position. Eight bytes at a time, each word
/// copied whole before its end is known (a copy call per short run cost more).
fn plain_run(line: &[u8], mut at: usize, out: &mut Vec<u8>) -> usize {
    out.reserve(line.len() - at + 8); // a run is never longer than the rest of the line
    while let Some(chunk) = line.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let plain = scan::plain_bytes(scan::specials(word));
        let len = out.len();
        // SAFETY: `reserve` above left room for the rest of the line and eight bytes more,
        // and only the `plain` bytes written are counted as initialised.
        unsafe {
            out.as_mut_ptr()
                .add(len)
                .cast::<u64>()
                .write_unaligned(word);
            out.set_len(len + plain);
        }
        at += plain;
        if plain < 8 {
            return at;
        }
    }
    while let Some(&b) = line.get(at) {
        if scan::is_special(b) {
            break;
        }
        out.push(b);
        at += 1;
    }
    at
}

/// The character of `XXXX` at `at` (after `\u`), a surrogate pair taken whole; its end.
fn unicode_escape(line: &[u8], at: usize) -> Option<(char, usize)> {
    let high = hex4(line, at)?;
    match high {
        0xd800..=0xdbff => {
            if line.get(at + 4..at + 6) != Some(b"\\u") {
                return None;
            }
            let low = hex4(line, at + 6)?;
            if !(0xdc00..=0xdfff).contains(&low) {
                return None;
            }
            let code = 0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00);
            Some((char::from_u32(code)?, at + 10))
        }
        0xdc00..=0xdfff => None,
        _ => Some((char::from_u32(high)?, at + 4)),
    }
}

fn hex4(line: &[u8], at: usize) -> Option<u32> {
    let digits = line.get(at..at + 4)?;
    digits
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc * 16 + (b as char).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(block: &[u8]) -> Vec<Option<String>> {
        let (lines, unescaped, _) = read_lines(block, true);
        lines
            .iter()
            .map(|line| match *line {
                Text::Line(s, e) => Some(String::from_utf8(block[s..e].to_vec()).unwrap()),
                Text::Unescaped(s, e) => Some(String::from_utf8(unescaped[s..e].to_vec()).unwrap()),
                Text::Other(..) => None,
            })
            .collect()
    }

    #[test]
    fn wrappers_and_bare_frames_are_read() {
        let block = b"{\"recv_ts\": 1.5, \"raw\": \"{\\\"a\\\":\\\"\\u00e9\\ud83d\\ude00\\\"}\"}\n\r\n{\"type\":\"x\"}\r\n";
        assert_eq!(
            texts(block),
            vec![
                Some("{\"a\":\"\u{e9}\u{1f600}\"}".to_owned()),
                Some("{\"type\":\"x\"}".to_owned())
            ]
        );
    }

    #[test]
    fn anything_unsure_is_left_to_python() {
        for line in [
            &b"{\"recv_ts\": 1e5, \"raw\": \"x\"}"[..],
            b"{\"recv_ts\": 01, \"raw\": \"x\"}",
            b"{\"recv_ts\": 1, \"raw\": \"\\ud800\"}",
            b"{\"recv_ts\": 1, \"raw\": \"\\udc00\"}",
            b"{\"recv_ts\": 1, \"raw\": \"a\x01\"}",
            b"{\"recv_ts\": 1, \"raw\": \"\\x\"}",
            b"{\"recv_ts\": 1, \"raw\": \"x\", \"raw\": \"y\"}",
            b"{\"recv_ts\": 1, \"raw\": \"x\"} x",
            b"{\"recv_ts\": 1, \"raw\": \"\xff\"}",
            b"\xff",
        ] {
            assert_eq!(texts(line), vec![None], "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn a_last_line_without_newline_waits_for_more() {
        let (lines, _, used) = read_lines(b"a\nbc", false);
        assert_eq!((lines.len(), used), (1, 2));
    }
}
