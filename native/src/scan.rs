//! Where a JSON string's plain bytes end, eight bytes at a time.
//!
//! Why: the keys and values of a frame are a few bytes each and escapes come every few bytes
//! in a recorded frame, too short for a vector search's set-up to pay (it was the decoders'
//! largest cost after parsing itself: docs/benchmarks.md, session 35).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bytes of `word` that are zero: the lowest marked one is exact (a borrow may mark bytes
/// above it).
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGHS
}

/// The bytes of `word` (little-endian) that end a run of plain string bytes: a quote, a
/// backslash or a control character. The lowest marked byte is exact.
pub(crate) fn specials(word: u64) -> u64 {
    zero_bytes(word ^ (ONES * u64::from(b'"')))
        | zero_bytes(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS)
}

/// How many plain bytes a word's `specials` leave before the first special one (8: none).
pub(crate) fn plain_bytes(marks: u64) -> usize {
    (marks.trailing_zeros() / 8) as usize
}

pub(crate) fn is_special(byte: u8) -> bool {
    byte == b'"' || byte == b'\\' || byte < 0x20
}

/// The position of the first quote, backslash or control character in `bytes` from `at`.
pub(crate) fn next_special(bytes: &[u8], mut at: usize) -> Option<usize> {
    while let Some(chunk) = bytes.get(at..at + 8) {
        let marks = specials(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
        if marks != 0 {
            return Some(at + plain_bytes(marks));
        }
        at += 8;
    }
    let offset = bytes[at..].iter().position(|&b| is_special(b))?;
    Some(at + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_special_byte_is_found_wherever_it_is() {
        for len in 0..20 {
            for (at, special) in [(0usize, b'"'), (3, b'\\'), (7, 0x1f), (8, b'"'), (19, 0)] {
                let mut bytes = vec![b'a'; len];
                bytes.extend_from_slice(&[0xc3, 0xa9, 0x7f, b' ']); // never special
                if at < bytes.len() {
                    bytes[at] = special;
                    bytes.push(b'"');
                    assert_eq!(next_special(&bytes, 0), Some(at), "{len} {at}");
                }
            }
            assert_eq!(next_special(&vec![b'a'; len], 0), None);
        }
    }
}
