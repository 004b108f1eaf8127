//! Lines of a `sentinel record` file, `{"recv_ts": <seconds>, "raw": "<frame text>"}`, into
//! (receive time, frame text) pairs.
//!
//! Why: a replay at full speed spent about an eighth of its event loop decoding these wrapper
//! lines into Python dicts only to take two values out of each. This reads exactly that shape
//! (the keys in that order, a float, a string) and nothing else: any other line is None, and
//! the caller decodes the whole block with orjson as before.

/// The line's receive time and frame text, or None when it is not exactly a wrapper line.
pub fn unwrap_line(line: &[u8]) -> Option<(f64, String)> {
    let mut scan = Scanner { bytes: line, at: 0 };
    scan.literal(b"{\"recv_ts\"")?;
    scan.space();
    scan.literal(b":")?;
    scan.space();
    let recv_ts = scan.float()?;
    scan.space();
    scan.literal(b",")?;
    scan.space();
    scan.literal(b"\"raw\"")?;
    scan.space();
    scan.literal(b":")?;
    scan.space();
    let raw = scan.string()?;
    scan.space();
    scan.literal(b"}")?;
    scan.space();
    (scan.at == line.len()).then_some((recv_ts, raw))
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn literal(&mut self, text: &[u8]) -> Option<()> {
        self.bytes[self.at..]
            .starts_with(text)
            .then(|| self.at += text.len())
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    /// A JSON number with a fraction or an exponent (an integer would decode as int, not
    /// float), finite; correctly rounded, as JSON decoders are.
    fn float(&mut self) -> Option<f64> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let whole = self.digits();
        if whole == 0 || (whole > 1 && self.bytes[self.at - whole] == b'0') {
            return None;
        }
        let mut real = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
            real = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            real = true;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
        let value: f64 = text.parse().ok()?;
        (real && value.is_finite()).then_some(value)
    }

    /// A JSON string, unescaped; None for invalid UTF-8, a raw control character or a lone
    /// surrogate (which no Python text can hold).
    fn string(&mut self) -> Option<String> {
        self.literal(b"\"")?;
        let mut out: Vec<u8> = Vec::with_capacity(self.bytes.len() - self.at);
        loop {
            let rest = &self.bytes[self.at..];
            let stop = memchr::memchr2(b'"', b'\\', rest)?;
            let run = &rest[..stop];
            if run.iter().fold(false, |any, &b| any | (b < 0x20)) {
                return None;
            }
            out.extend_from_slice(run);
            self.at += stop + 1;
            if rest[stop] == b'"' {
                return String::from_utf8(out).ok();
            }
            let escaped = self.peek()?;
            self.at += 1;
            let simple = match escaped {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    let ch = self.unicode_escape()?;
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                    continue;
                }
                _ => return None,
            };
            out.push(simple);
        }
    }

    /// The character of a `\uXXXX` escape (after `\u`), a surrogate pair taken together.
    fn unicode_escape(&mut self) -> Option<char> {
        let high = self.hex4()?;
        if !(0xD800..0xE000).contains(&high) {
            return char::from_u32(high);
        }
        if high >= 0xDC00 {
            return None; // a low surrogate first
        }
        self.literal(b"\\u")?;
        let low = self.hex4()?;
        if !(0xDC00..0xE000).contains(&low) {
            return None;
        }
        char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.at += 4;
        u32::from_str_radix(text, 16).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapper_line() {
        let line = b"{\"recv_ts\": 1618677817.061845, \"raw\": \"{\\\"a\\\":\\\"\\u00e9\\ud83d\\ude00\\n\\\"}\"}\n";
        let (ts, raw) = unwrap_line(line).unwrap();
        assert_eq!(ts, 1618677817.061845);
        assert_eq!(raw, "{\"a\":\"\u{e9}\u{1f600}\n\"}");
    }

    #[test]
    fn what_is_left_to_orjson() {
        for line in [
            &b" {\"recv_ts\": 1.5, \"raw\": \"x\"}"[..],
            b"{\"recv_ts\": 15, \"raw\": \"x\"}",
            b"{\"recv_ts\": 1.5, \"raw\": \"x\", \"y\": 1}",
            b"{\"recv_ts\": 1.5, \"raw\": \"\\ud800\"}",
            b"{\"recv_ts\": 1.5, \"raw\": \"\\udc00\\ud800\"}",
            b"{\"recv_ts\": 1.5, \"raw\": \"\\x\"}",
            b"{\"recv_ts\": 1.5, \"raw\": \"\x01\"}",
            b"{\"recv_ts\": 1.5, \"raw\": \"\xff\"}",
            b"{\"recv_ts\": 1e999, \"raw\": \"x\"}",
            b"{\"recv_ts\": 01.5, \"raw\": \"x\"}",
            b"{\"recv_ts\": 1.5, \"raw\": \"x\"",
            b"",
        ] {
            assert!(
                unwrap_line(line).is_none(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
