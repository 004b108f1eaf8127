//! A scanner for one flat JSON object: what a Coinbase match or ticker frame is, and no more.
//!
//! Why not a general JSON library: this is the one loop every frame goes through, and a
//! general parser spends most of its time on what these frames never have. The scanner
//! accepts a subset of JSON: one object whose values are strings without escapes, integers,
//! floats, `true`, `false` or `null`. Anything else (nesting, an escape, a control character,
//! a duplicate field, text after the object, a mistyped field) is None, and the caller leaves
//! the frame to the Python decoder, which parses all of JSON.

/// A frame's fields. None is absent or null alike, as the codec's optional fields treat them.
#[derive(Default)]
pub struct Frame<'a> {
    pub kind: Option<&'a str>,
    pub trade_id: Option<i64>,
    pub sequence: Option<i64>,
    pub side: Option<&'a str>,
    pub size: Option<&'a str>,
    pub price: Option<&'a str>,
    pub product_id: Option<&'a str>,
    pub time: Option<&'a str>,
    pub maker_order_id: Option<&'a str>,
    pub taker_order_id: Option<&'a str>,
    /// In `TICKER_AMOUNTS` order.
    pub amounts: [Option<&'a str>; 10],
}

enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Null,
    Other, // a float, a bool, or an integer beyond i64
}

/// The frame's fields, or None when the text is not a flat object of this subset.
pub fn parse(text: &str) -> Option<Frame<'_>> {
    let mut scan = Scanner { text, at: 0 };
    let mut frame = Frame::default();
    let mut seen = 0u32;
    scan.space();
    scan.byte(b'{')?;
    scan.space();
    if scan.peek() == Some(b'}') {
        scan.at += 1;
    } else {
        loop {
            let key = scan.string()?;
            scan.space();
            scan.byte(b':')?;
            scan.space();
            let value = scan.value()?;
            frame.set(key, value, &mut seen)?;
            scan.space();
            match scan.next()? {
                b',' => scan.space(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    scan.space();
    (scan.at == text.len()).then_some(frame)
}

impl<'a> Frame<'a> {
    /// Store a known field; None for a duplicate or a value of the wrong type.
    fn set(&mut self, key: &str, value: Value<'a>, seen: &mut u32) -> Option<()> {
        let (bit, slot) = match key {
            "type" => (0, Slot::Text(&mut self.kind)),
            "trade_id" => (1, Slot::Int(&mut self.trade_id)),
            "sequence" => (2, Slot::Int(&mut self.sequence)),
            "side" => (3, Slot::Text(&mut self.side)),
            "size" => (4, Slot::Text(&mut self.size)),
            "price" => (5, Slot::Text(&mut self.price)),
            "product_id" => (6, Slot::Text(&mut self.product_id)),
            "time" => (7, Slot::Text(&mut self.time)),
            "maker_order_id" => (8, Slot::Text(&mut self.maker_order_id)),
            "taker_order_id" => (9, Slot::Text(&mut self.taker_order_id)),
            _ => match crate::TICKER_AMOUNTS.iter().position(|&name| name == key) {
                Some(k) => (10 + k, Slot::Text(&mut self.amounts[k])),
                None => return Some(()), // a field no kind here has: the codec ignores it
            },
        };
        if *seen & (1 << bit) != 0 {
            return None;
        }
        *seen |= 1 << bit;
        match (slot, value) {
            (Slot::Text(field), Value::Str(text)) => *field = Some(text),
            (Slot::Int(field), Value::Int(number)) => *field = Some(number),
            (_, Value::Null) => {}
            _ => return None,
        }
        Some(())
    }
}

enum Slot<'f, 'a> {
    Text(&'f mut Option<&'a str>),
    Int(&'f mut Option<i64>),
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn byte(&mut self, expected: u8) -> Option<()> {
        (self.next()? == expected).then_some(())
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string with no escape and no control character (JSON forbids those raw).
    fn string(&mut self) -> Option<&'a str> {
        self.byte(b'"')?;
        let start = self.at;
        let rest = &self.text.as_bytes()[start..];
        let end = crate::scan::next_special(rest, 0)?;
        if rest[end] != b'"' {
            return None; // an escape or a control character
        }
        self.at = start + end + 1;
        self.text.get(start..start + end)
    }

    fn value(&mut self) -> Option<Value<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Value::Str),
            b'-' | b'0'..=b'9' => self.number(),
            b'n' => self.word("null", Value::Null),
            b't' => self.word("true", Value::Other),
            b'f' => self.word("false", Value::Other),
            _ => None, // an object or an array: not a flat frame
        }
    }

    fn word(&mut self, word: &str, value: Value<'a>) -> Option<Value<'a>> {
        self.text[self.at..].starts_with(word).then(|| {
            self.at += word.len();
            value
        })
    }

    /// A JSON number: an integer that fits i64 is Int, any other valid number Other.
    fn number(&mut self) -> Option<Value<'a>> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let digits = self.digits();
        if digits == 0 || (digits > 1 && self.text.as_bytes()[self.at - digits] == b'0') {
            return None; // no digit, or a leading zero
        }
        let integer_end = self.at;
        let mut fraction = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
            fraction = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            fraction = true;
        }
        if fraction {
            return Some(Value::Other);
        }
        Some(match self.text[start..integer_end].parse::<i64>() {
            Ok(number) => Value::Int(number),
            Err(_) => Value::Other, // beyond i64 (the lake cannot store it either)
        })
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_frame() {
        let f = parse(r#" {"type":"match","trade_id":7,"x":[1],"price":"1.5"} "#);
        assert!(f.is_none(), "nested values are not flat");
        let f = parse(r#"{"type":"match","trade_id":-7,"x":1.5e3,"y":true,"price":null}"#).unwrap();
        assert_eq!(
            (f.kind, f.trade_id, f.price),
            (Some("match"), Some(-7), None)
        );
    }

    #[test]
    fn what_is_refused() {
        for text in [
            r#"{"type":"match","type":"ticker"}"#,
            r#"{"type":"ma\"tch"}"#,
            r#"{"trade_id":"7"}"#,
            r#"{"trade_id":7.0}"#,
            r#"{"trade_id":07}"#,
            r#"{"trade_id":9223372036854775808}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a":1"#,
            "{\"a\":\"\x01\"}",
            r#"{"a":-}"#,
            r#"{"a":1.}"#,
            r#"{"a":nul}"#,
            r#"[]"#,
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
    }
}
