//! Line-level helpers shared by both decoders: finding a CRLF-terminated line without
//! re-scanning bytes already seen, and parsing the numbers found on header lines.

use crate::ProtocolError;

/// Finds the `\r` that ends the line starting at `buf[0]`.
///
/// `scan_from` remembers how far earlier calls already searched, so a line arriving in many small
/// reads is scanned once overall. Returns `Ok(None)` when more bytes are needed, the index of the
/// `\r` when the whole `\r\n` is present. A line whose content (after the type byte) is longer
/// than `max_len` is an error as soon as that is certain.
pub(crate) fn find_crlf(
    buf: &[u8],
    scan_from: &mut usize,
    max_len: usize,
) -> Result<Option<usize>, ProtocolError> {
    let start = (*scan_from).max(1).min(buf.len());
    let limit_end = max_len.saturating_add(1);
    match memchr::memchr(b'\r', &buf[start..]) {
        Some(offset) => {
            let cr = start + offset;
            if cr > limit_end {
                return Err(ProtocolError::LineTooLong { limit: max_len });
            }
            match buf.get(cr + 1) {
                None => {
                    *scan_from = cr;
                    Ok(None)
                }
                Some(b'\n') => Ok(Some(cr)),
                Some(_) => Err(ProtocolError::ExpectedCrlf),
            }
        }
        None => {
            if buf.len() > limit_end {
                return Err(ProtocolError::LineTooLong { limit: max_len });
            }
            *scan_from = buf.len();
            Ok(None)
        }
    }
}

/// Parses a RESP integer: an optional `-` (or `+`) and 1 to 19 decimal digits, fitting an `i64`.
pub(crate) fn parse_i64(line: &[u8]) -> Option<i64> {
    let (negative, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    // Accumulate negatively so i64::MIN parses without overflow.
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// What a length or count line said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    /// `-1`: the RESP2 null bulk string or null array.
    Null,
    /// A non-negative length.
    Of(u64),
    /// `?`: a RESP3 streamed string or aggregate.
    Streamed,
}

/// Parses the length line of a bulk string or the count line of an aggregate.
///
/// `None` for anything that is not `-1`, `?` or a non-negative decimal without sign.
pub(crate) fn parse_length(line: &[u8]) -> Option<Length> {
    match line {
        b"-1" => Some(Length::Null),
        b"?" => Some(Length::Streamed),
        [b'0'..=b'9', ..] => parse_i64(line).map(|n| Length::Of(n.unsigned_abs())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_in_range_only() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-42"), Some(-42));
        assert_eq!(parse_i64(b"+7"), Some(7));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b"1x"), None);
        assert_eq!(parse_i64(b" 1"), None);
    }

    #[test]
    fn lengths_accept_only_unsigned_null_or_streamed() {
        assert_eq!(parse_length(b"12"), Some(Length::Of(12)));
        assert_eq!(parse_length(b"-1"), Some(Length::Null));
        assert_eq!(parse_length(b"?"), Some(Length::Streamed));
        assert_eq!(parse_length(b"-2"), None);
        assert_eq!(parse_length(b"+3"), None);
        assert_eq!(parse_length(b""), None);
    }

    #[test]
    fn crlf_search_resumes_and_bounds_the_line() {
        let mut from = 0;
        assert_eq!(find_crlf(b"+OK", &mut from, 10), Ok(None));
        assert_eq!(from, 3);
        assert_eq!(find_crlf(b"+OK\r", &mut from, 10), Ok(None));
        assert_eq!(find_crlf(b"+OK\r\n", &mut from, 10), Ok(Some(3)));
        let mut from = 0;
        assert_eq!(
            find_crlf(b"+0123456789ab", &mut from, 10),
            Err(ProtocolError::LineTooLong { limit: 10 })
        );
        let mut from = 0;
        assert_eq!(
            find_crlf(b"+O\rK", &mut from, 10),
            Err(ProtocolError::ExpectedCrlf)
        );
    }
}
