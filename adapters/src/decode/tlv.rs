//! The EMVCo TLV walk: a two-digit id, a two-digit length, then that many **characters** (EMVCo
//! counts characters, not UTF-8 bytes: the EMVCo, KHQR and Korean samples agree). And the
//! CRC-16/CCITT-FALSE that tag 63 carries.

use crc::{Crc, Table, CRC_16_IBM_3740};

use super::code::Field;
use super::error::DecodeError;

/// CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor), slice-by-16.
static CRC16: Crc<u16, Table<16>> = Crc::<u16, Table<16>>::new(&CRC_16_IBM_3740);

/// The CRC EMVCo tag 63 carries, over `bytes` (the payload up to and including `6304`).
pub fn crc16(bytes: &[u8]) -> u16 {
    CRC16.checksum(bytes)
}

/// Encodes one data object: two-digit tag, two-digit length in characters, value. For building
/// codes (the sandbox's demo codes, tests, benchmarks); panics on a value past 99 characters,
/// which is a bug in the caller.
pub fn field(tag: u8, value: &str) -> String {
    let len = value.chars().count();
    assert!(tag < 100 && len < 100, "tag {tag} or length {len} past two digits");
    format!("{tag:02}{len:02}{value}")
}

/// Appends `6304` and the CRC over everything before it, making `body` a complete code.
pub fn with_crc(body: &str) -> String {
    let mut s = format!("{body}6304");
    let crc = crc16(s.as_bytes());
    s.push_str(&format!("{crc:04X}"));
    s
}

/// Up to `n` characters from byte `at`, for error messages.
fn peek(s: &str, at: usize, n: usize) -> String {
    s.get(at..).map(|r| r.chars().take(n).collect()).unwrap_or_default()
}

fn two_digits(b: &[u8]) -> Option<u8> {
    match b {
        [a @ b'0'..=b'9', c @ b'0'..=b'9', ..] => Some((a - b'0') * 10 + (c - b'0')),
        _ => None,
    }
}

/// Parses `s` as a sequence of TLV data objects. `offset` is the character offset of `s` in the
/// scanned text (for error messages); `ascii` says whether `s` is all ASCII (bytes are then
/// characters, and the walk takes no detours).
pub fn parse(s: &str, offset: usize, ascii: bool) -> Result<Vec<Field<'_>>, DecodeError> {
    let bytes = s.as_bytes();
    let mut fields = Vec::with_capacity(16);
    let (mut at, mut at_char) = (0usize, offset);
    while at < bytes.len() {
        let tag = two_digits(&bytes[at..])
            .ok_or_else(|| DecodeError::NonDigitId { offset: at_char, found: peek(s, at, 2) })?;
        let tag_text = || format!("{tag:02}");
        let len = two_digits(bytes.get(at + 2..).unwrap_or_default()).ok_or_else(|| {
            DecodeError::NonDigitLength {
                offset: at_char,
                tag: tag_text(),
                found: peek(s, at + 2, 2),
            }
        })? as usize;
        let start = at + 4;
        let end = if ascii {
            Some(start + len).filter(|e| *e <= bytes.len())
        } else {
            let mut it = s[start..].char_indices();
            match it.nth(len) {
                Some((i, _)) => Some(start + i),
                None if s[start..].chars().count() == len => Some(bytes.len()),
                None => None,
            }
        };
        let Some(end) = end else {
            let available = if ascii { bytes.len() - start } else { s[start..].chars().count() };
            return Err(DecodeError::Truncated {
                offset: at_char,
                tag: tag_text(),
                declared: len,
                available,
            });
        };
        fields.push(Field { tag, value: &s[start..end], offset: at_char });
        at = end;
        at_char += 4 + len;
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn walks_characters_not_bytes() {
        let s = "0002ZH0104最佳运输0202北京";
        let f = parse(s, 0, false).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].value, "最佳运输");
        assert_eq!(f[2].value, "北京");
        assert_eq!(f[2].offset, 14);
    }

    #[test]
    fn precise_errors() {
        assert_eq!(
            parse("000201AA0212", 0, true),
            Err(DecodeError::NonDigitId { offset: 6, found: "AA".into() })
        );
        assert_eq!(
            parse("00020101X1", 10, true),
            Err(DecodeError::NonDigitLength { offset: 16, tag: "01".into(), found: "X1".into() })
        );
        assert_eq!(
            parse("0002015905AB", 0, true),
            Err(DecodeError::Truncated { offset: 6, tag: "59".into(), declared: 5, available: 2 })
        );
        assert_eq!(
            parse("5905北京", 0, false),
            Err(DecodeError::Truncated { offset: 0, tag: "59".into(), declared: 5, available: 2 })
        );
        assert!(matches!(parse("5", 0, true), Err(DecodeError::NonDigitId { .. })));
        assert!(matches!(parse("59", 0, true), Err(DecodeError::NonDigitLength { .. })));
        assert_eq!(parse("5900", 0, true).unwrap()[0].value, "");
    }
}
