//! Finding where one RESP reply ends without decoding it, so a reply that needs no merging is
//! copied to the client as the engine encoded it (no decode into a `Value`, no re-encode).

/// A reply the scanner does not take apart (RESP3 streamed aggregates, malformed input): the
/// caller decodes it instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsupported;

/// The length of the complete reply at the start of `buf`, or `None` if more bytes are needed.
pub(crate) fn frame_len(buf: &[u8]) -> Result<Option<usize>, Unsupported> {
    let mut pos = 0usize;
    let mut remaining = 1u64;
    while remaining > 0 {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        let Some(line_len) = buf[pos + 1..].iter().position(|&b| b == b'\r') else {
            return Ok(None);
        };
        let line = &buf[pos + 1..pos + 1 + line_len];
        pos += 1 + line_len + 2;
        if pos > buf.len() {
            return Ok(None);
        }
        if buf[pos - 1] != b'\n' {
            return Err(Unsupported);
        }
        remaining -= 1;
        match kind {
            b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => {}
            b'$' | b'!' | b'=' => {
                if let Some(n) = length(line)? {
                    pos = pos.checked_add(n + 2).ok_or(Unsupported)?;
                    if pos > buf.len() {
                        return Ok(None);
                    }
                }
            }
            b'*' | b'~' | b'>' => remaining += length(line)?.unwrap_or(0) as u64,
            b'%' => remaining += 2 * length(line)?.unwrap_or(0) as u64,
            b'|' => remaining += 2 * length(line)?.unwrap_or(0) as u64 + 1,
            _ => return Err(Unsupported),
        }
    }
    Ok(Some(pos))
}

/// A length line: `Some(n)`, `None` for `-1` (a RESP2 null).
fn length(line: &[u8]) -> Result<Option<usize>, Unsupported> {
    if line == b"-1" {
        return Ok(None);
    }
    let text = std::str::from_utf8(line).map_err(|_| Unsupported)?;
    text.parse::<usize>().map(Some).map_err(|_| Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_resp::Value;

    #[test]
    fn every_prefix_of_a_reply_is_incomplete_and_the_whole_is_found() {
        let replies = [
            Value::simple("OK"),
            Value::error("ERR x"),
            Value::Integer(-42),
            Value::bulk("hello\r\nworld"),
            Value::NullBulkString,
            Value::NullArray,
            Value::Null,
            Value::Array(vec![
                Value::bulk("a"),
                Value::Array(vec![]),
                Value::Integer(1),
            ]),
            Value::Map(vec![(
                Value::bulk("k"),
                Value::Set(vec![Value::Double(1.5)]),
            )]),
            Value::Push(vec![Value::bulk("message"), Value::Boolean(true)]),
            Value::Attribute {
                attributes: vec![(Value::bulk("ttl"), Value::Integer(3))],
                value: Box::new(Value::bulk("v")),
            },
        ];
        for reply in replies {
            let bytes = reply.to_bytes();
            for cut in 0..bytes.len() {
                assert_eq!(frame_len(&bytes[..cut]), Ok(None), "{reply:?} cut at {cut}");
            }
            let mut two = bytes.to_vec();
            two.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(frame_len(&two), Ok(Some(bytes.len())), "{reply:?}");
        }
        assert_eq!(frame_len(b"*?\r\n"), Err(Unsupported));
        assert_eq!(frame_len(b"$abc\r\n"), Err(Unsupported));
    }
}
