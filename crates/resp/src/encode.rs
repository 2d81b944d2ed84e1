//! Encoding of values and of the replies the proxy writes itself.
//!
//! Everything is appended to a caller-owned `BytesMut` (the connection's write buffer). Simple
//! strings and errors get any CR or LF replaced by a space, as Redis does, so a message built
//! from client input can never split the stream.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

use crate::{Protocol, Value};

impl Value {
    /// Appends this value's RESP3 encoding, byte-exact with what [`crate::Decoder`] decoded
    /// (RESP2 values encode as RESP2).
    pub fn encode(&self, buf: &mut BytesMut) {
        self.encode_as(buf, Protocol::Resp3);
    }

    /// Appends this value in a form a RESP2 client understands, mapping RESP3-only types the way
    /// Redis does: map -> flat array, set and push -> array, double and big number -> bulk
    /// string, boolean -> integer 1/0, null -> null bulk string, verbatim -> bulk text, blob error
    /// -> error line, attributes dropped.
    pub fn encode_resp2(&self, buf: &mut BytesMut) {
        self.encode_as(buf, Protocol::Resp2);
    }

    /// Appends this value for a connection speaking `protocol`.
    pub fn encode_as(&self, buf: &mut BytesMut, protocol: Protocol) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Value::SimpleString(s) => write_line(buf, b'+', s),
            Value::Error(s) => write_line(buf, b'-', s),
            Value::Integer(n) => write_integer(buf, *n),
            Value::BulkString(s) => write_bulk(buf, s),
            Value::NullBulkString => buf.put_slice(b"$-1\r\n"),
            Value::NullArray => buf.put_slice(b"*-1\r\n"),
            Value::Array(items) => encode_items(buf, b'*', items, protocol),
            Value::Null => write_null(buf, protocol),
            Value::Double(d) if resp3 => write_double(buf, *d),
            Value::Double(d) => write_bulk(buf, format_double(*d).as_bytes()),
            Value::Boolean(b) if resp3 => buf.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Value::Boolean(b) => write_integer(buf, i64::from(*b)),
            Value::BigNumber(n) if resp3 => write_line(buf, b'(', n),
            Value::BigNumber(n) => write_bulk(buf, n),
            Value::BlobError(e) if resp3 => write_blob(buf, b'!', &[e]),
            Value::BlobError(e) => write_line(buf, b'-', e),
            Value::VerbatimString { format, text } if resp3 => {
                write_blob(buf, b'=', &[format, b":", text])
            }
            Value::VerbatimString { text, .. } => write_bulk(buf, text),
            Value::Map(pairs) => encode_pairs(buf, b'%', pairs, protocol),
            Value::Set(items) => {
                encode_items(buf, if resp3 { b'~' } else { b'*' }, items, protocol)
            }
            Value::Push(items) => {
                encode_items(buf, if resp3 { b'>' } else { b'*' }, items, protocol)
            }
            Value::Attribute { attributes, value } => {
                if resp3 {
                    write_header(buf, b'|', attributes.len());
                    encode_flat_pairs(buf, attributes, protocol);
                }
                value.encode_as(buf, protocol);
            }
        }
    }

    /// The encoding as a fresh buffer; handy for tests and one-off replies.
    pub fn to_bytes(&self) -> BytesMut {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf
    }
}

fn encode_items(buf: &mut BytesMut, marker: u8, items: &[Value], protocol: Protocol) {
    write_header(buf, marker, items.len());
    for item in items {
        item.encode_as(buf, protocol);
    }
}

fn encode_pairs(buf: &mut BytesMut, marker: u8, pairs: &[(Value, Value)], protocol: Protocol) {
    match protocol {
        Protocol::Resp3 => write_header(buf, marker, pairs.len()),
        Protocol::Resp2 => write_header(buf, b'*', pairs.len() * 2),
    }
    encode_flat_pairs(buf, pairs, protocol);
}

fn encode_flat_pairs(buf: &mut BytesMut, pairs: &[(Value, Value)], protocol: Protocol) {
    for (k, v) in pairs {
        k.encode_as(buf, protocol);
        v.encode_as(buf, protocol);
    }
}

/// Appends `+OK\r\n`, the most common reply the proxy writes itself.
pub fn write_ok(buf: &mut BytesMut) {
    buf.put_slice(b"+OK\r\n");
}

/// Appends a simple string reply (`+text\r\n`); CR and LF become spaces.
pub fn write_simple(buf: &mut BytesMut, text: &[u8]) {
    write_line(buf, b'+', text);
}

/// Appends an error reply; `message` starts with the error code, e.g.
/// `"ERR unknown command 'foo'"` or `"CROSSSLOT Keys in request don't hash to the same slot"`.
/// CR and LF become spaces.
pub fn write_error(buf: &mut BytesMut, message: &str) {
    write_line(buf, b'-', message.as_bytes());
}

/// Appends an integer reply (`:n\r\n`).
pub fn write_integer(buf: &mut BytesMut, n: i64) {
    buf.put_u8(b':');
    write_decimal(buf, n);
    buf.put_slice(b"\r\n");
}

/// Appends a bulk string reply (`$len\r\ndata\r\n`); binary-safe.
pub fn write_bulk(buf: &mut BytesMut, data: &[u8]) {
    write_blob(buf, b'$', &[data]);
}

/// Appends the null reply of `protocol`: `$-1\r\n` in RESP2, `_\r\n` in RESP3.
pub fn write_null(buf: &mut BytesMut, protocol: Protocol) {
    match protocol {
        Protocol::Resp2 => buf.put_slice(b"$-1\r\n"),
        Protocol::Resp3 => buf.put_slice(b"_\r\n"),
    }
}

/// Appends RESP2's null array (`*-1\r\n`), e.g. for a timed-out blocking pop.
pub fn write_null_array(buf: &mut BytesMut) {
    buf.put_slice(b"*-1\r\n");
}

/// Appends an array header (`*n\r\n`); the caller then appends the `n` elements. This is how a
/// merged reply is streamed without building a `Value`.
pub fn write_array_header(buf: &mut BytesMut, len: usize) {
    write_header(buf, b'*', len);
}

/// Appends a map header for `pairs` key/value pairs: `%pairs` in RESP3, `*2*pairs` in RESP2; the
/// caller then appends key, value, key, value...
pub fn write_map_header(buf: &mut BytesMut, pairs: usize, protocol: Protocol) {
    match protocol {
        Protocol::Resp3 => write_header(buf, b'%', pairs),
        Protocol::Resp2 => write_header(buf, b'*', pairs * 2),
    }
}

/// Appends `marker` + decimal `len` + CRLF.
pub(crate) fn write_header(buf: &mut BytesMut, marker: u8, len: usize) {
    buf.put_u8(marker);
    write_decimal_u64(buf, len as u64);
    buf.put_slice(b"\r\n");
}

/// Appends a blob whose payload is the concatenation of `parts`.
fn write_blob(buf: &mut BytesMut, marker: u8, parts: &[&[u8]]) {
    let len = parts.iter().map(|p| p.len()).sum();
    buf.reserve(len + 16);
    write_header(buf, marker, len);
    for part in parts {
        buf.put_slice(part);
    }
    buf.put_slice(b"\r\n");
}

/// Appends a line-typed value, replacing CR and LF so the frame stays well formed.
fn write_line(buf: &mut BytesMut, marker: u8, text: &[u8]) {
    buf.reserve(text.len() + 3);
    buf.put_u8(marker);
    if memchr::memchr2(b'\r', b'\n', text).is_none() {
        buf.put_slice(text);
    } else {
        buf.extend(
            text.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    }
    buf.put_slice(b"\r\n");
}

fn write_double(buf: &mut BytesMut, d: f64) {
    buf.put_u8(b',');
    buf.put_slice(format_double(d).as_bytes());
    buf.put_slice(b"\r\n");
}

/// Formats a double as RESP3 wants it: `inf`, `-inf`, `nan`, or the shortest decimal that parses
/// back to the same value.
fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".to_owned()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else {
        let mut s = String::new();
        let _ = write!(s, "{d:?}");
        s
    }
}

/// Appends the decimal digits of `n` without allocating.
pub(crate) fn write_decimal(buf: &mut BytesMut, n: i64) {
    if n < 0 {
        buf.put_u8(b'-');
    }
    write_decimal_u64(buf, n.unsigned_abs());
}

fn write_decimal_u64(buf: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[at..]);
}
