//! The incremental decoder of RESP2/RESP3 values (what shards reply).
//!
//! It consumes each complete piece (a line, a bulk payload) from the caller's buffer as soon as
//! it is there and keeps the open aggregates on a stack bounded by [`Limits::max_depth`], so a
//! frame delivered in many small reads is looked at once in total.

use bytes::{Buf, Bytes, BytesMut};

use crate::line::{find_crlf, parse_i64, parse_length, Length};
use crate::{Limits, ProtocolError, Value};

/// How many elements an aggregate's vector reserves up front at most; beyond that it grows with
/// the elements that actually arrive, never with the count the peer claims.
const MAX_PREALLOC: usize = 1024;

/// Decodes RESP2/RESP3 values from a byte stream, one at a time, across reads.
///
/// Exists so the proxy can parse shard replies (and anything else in RESP) without buffering a
/// whole frame first: call [`Decoder::decode`] after every read with the same buffer, which must
/// only be appended to between calls. After an error the stream is unusable; drop the decoder
/// with the connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    stack: Vec<Partial>,
    pending_blob: Option<(BlobKind, usize)>,
    scan_from: usize,
}

/// An aggregate whose elements are still arriving.
#[derive(Debug)]
struct Partial {
    kind: AggregateKind,
    items: Vec<Value>,
    remaining: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggregateKind {
    Array,
    Set,
    Push,
    Map,
    Attribute,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobKind {
    Bulk,
    Error,
    Verbatim,
}

/// What one step of decoding produced.
enum Step {
    /// A complete value, to attach to the innermost open aggregate.
    Value(Value),
    /// A non-empty aggregate was opened; its elements follow.
    Opened,
}

impl Default for Decoder {
    /// A decoder with [`Limits::for_replies`], the usual use of a value decoder.
    fn default() -> Self {
        Decoder::new(Limits::for_replies())
    }
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            stack: Vec::new(),
            pending_blob: None,
            scan_from: 0,
        }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes the next value from the front of `buf`.
    ///
    /// `Ok(None)` means more bytes are needed; what was already complete has been consumed and
    /// is kept inside the decoder. `Err` means the stream is not valid RESP or exceeds a limit.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Value>, ProtocolError> {
        loop {
            let value = match self.step(buf)? {
                None => return Ok(None),
                Some(Step::Opened) => continue,
                Some(Step::Value(value)) => value,
            };
            if let Some(done) = self.attach(value) {
                return Ok(Some(done));
            }
        }
    }

    /// Whether a frame is partly decoded (bytes were consumed but no value returned yet).
    pub fn is_mid_frame(&self) -> bool {
        !self.stack.is_empty() || self.pending_blob.is_some()
    }

    /// Heap bytes held by the partly decoded frame's open aggregates (not counting the values
    /// already inside them, which are bounded by the bytes consumed).
    ///
    /// Exists so callers (and the fuzz tests) can check the decoder never reserves memory in
    /// proportion to a claimed count: this stays below
    /// `max_depth * MAX_PREALLOC * size_of::<Value>()` plus what real elements need.
    pub fn reserved_bytes(&self) -> usize {
        let items: usize = self
            .stack
            .iter()
            .map(|p| p.items.capacity() * std::mem::size_of::<Value>())
            .sum();
        items + self.stack.capacity() * std::mem::size_of::<Partial>()
    }

    /// Adds a finished value to the innermost open aggregate, closing every aggregate it
    /// completes. Returns the top-level value once the frame is complete.
    fn attach(&mut self, mut value: Value) -> Option<Value> {
        while let Some(top) = self.stack.last_mut() {
            top.items.push(value);
            top.remaining -= 1;
            if top.remaining > 0 {
                return None;
            }
            let finished = self.stack.pop()?;
            value = finished.finish();
        }
        Some(value)
    }

    /// Decodes one line-level element, or the payload of a pending blob.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Step>, ProtocolError> {
        if let Some((kind, len)) = self.pending_blob {
            let Some(data) = take_payload(buf, len)? else {
                return Ok(None);
            };
            self.pending_blob = None;
            return blob_value(kind, data).map(|v| Some(Step::Value(v)));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let Some(cr) = find_crlf(buf, &mut self.scan_from, self.limits.max_line_len)? else {
            return Ok(None);
        };
        self.scan_from = 0;
        let mut line = buf.split_to(cr + 2);
        let marker = line[0];
        line.advance(1);
        line.truncate(cr - 1);
        self.element(marker, line.freeze())
    }

    /// Interprets one complete line whose type byte is `marker`.
    fn element(&mut self, marker: u8, line: Bytes) -> Result<Option<Step>, ProtocolError> {
        let value = match marker {
            b'+' => Value::SimpleString(line),
            b'-' => Value::Error(line),
            b':' => Value::Integer(parse_i64(&line).ok_or(ProtocolError::InvalidInteger)?),
            b'_' if line.is_empty() => Value::Null,
            b'_' => return Err(ProtocolError::InvalidNull),
            b'#' => Value::Boolean(parse_bool(&line)?),
            b',' => Value::Double(parse_double(&line)?),
            b'(' => Value::BigNumber(check_big_number(line)?),
            b'$' => return self.open_blob(BlobKind::Bulk, &line),
            b'!' => return self.open_blob(BlobKind::Error, &line),
            b'=' => return self.open_blob(BlobKind::Verbatim, &line),
            b'*' => return self.open_aggregate(AggregateKind::Array, &line),
            b'~' => return self.open_aggregate(AggregateKind::Set, &line),
            b'>' => return self.open_aggregate(AggregateKind::Push, &line),
            b'%' => return self.open_aggregate(AggregateKind::Map, &line),
            b'|' => return self.open_aggregate(AggregateKind::Attribute, &line),
            other => return Err(ProtocolError::InvalidType(other)),
        };
        Ok(Some(Step::Value(value)))
    }

    /// Handles a blob header: checks the length and waits for its payload.
    fn open_blob(&mut self, kind: BlobKind, line: &[u8]) -> Result<Option<Step>, ProtocolError> {
        let len = match parse_length(line) {
            Some(Length::Of(len)) => len,
            Some(Length::Null) if kind == BlobKind::Bulk => {
                return Ok(Some(Step::Value(Value::NullBulkString)))
            }
            Some(Length::Streamed) => return Err(ProtocolError::Streamed),
            _ => return Err(ProtocolError::InvalidBulkLength),
        };
        let limit = self.limits.max_bulk_len;
        if len > limit as u64 {
            return Err(ProtocolError::BulkTooLong { len, limit });
        }
        self.pending_blob = Some((kind, len as usize));
        Ok(Some(Step::Opened))
    }

    /// Handles an aggregate header: checks count and depth and opens it (or returns it empty).
    fn open_aggregate(
        &mut self,
        kind: AggregateKind,
        line: &[u8],
    ) -> Result<Option<Step>, ProtocolError> {
        let count = match parse_length(line) {
            Some(Length::Of(count)) => count,
            Some(Length::Null) if kind == AggregateKind::Array => {
                return Ok(Some(Step::Value(Value::NullArray)))
            }
            Some(Length::Streamed) => return Err(ProtocolError::Streamed),
            _ => return Err(ProtocolError::InvalidMultibulkLength),
        };
        let limit = self.limits.max_elements;
        if count > limit as u64 {
            return Err(ProtocolError::TooManyElements { count, limit });
        }
        let count = count as usize;
        let children = match kind {
            AggregateKind::Map => count.saturating_mul(2),
            AggregateKind::Attribute => count.saturating_mul(2).saturating_add(1),
            _ => count,
        };
        if children == 0 {
            return Ok(Some(Step::Value(Partial::empty(kind))));
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(ProtocolError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        self.stack.push(Partial {
            kind,
            items: Vec::with_capacity(children.min(MAX_PREALLOC)),
            remaining: children,
        });
        Ok(Some(Step::Opened))
    }
}

impl Partial {
    /// The value of an aggregate announced with zero elements.
    fn empty(kind: AggregateKind) -> Value {
        Partial {
            kind,
            items: Vec::new(),
            remaining: 0,
        }
        .finish()
    }

    /// Turns the collected elements into the aggregate's value.
    fn finish(self) -> Value {
        match self.kind {
            AggregateKind::Array => Value::Array(self.items),
            AggregateKind::Set => Value::Set(self.items),
            AggregateKind::Push => Value::Push(self.items),
            AggregateKind::Map => Value::Map(pairs(self.items)),
            AggregateKind::Attribute => {
                let mut items = self.items;
                let value = items.pop().unwrap_or(Value::Null);
                Value::Attribute {
                    attributes: pairs(items),
                    value: Box::new(value),
                }
            }
        }
    }
}

/// Groups a flat key, value, key, value... list into pairs (an odd tail cannot occur: maps are
/// only finished once all `2 * count` elements arrived).
fn pairs(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut iter = items.into_iter();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        out.push((k, v));
    }
    out
}

/// Takes a `len`-byte payload and its CRLF from the front of `buf` once all of it is there.
pub(crate) fn take_payload(buf: &mut BytesMut, len: usize) -> Result<Option<Bytes>, ProtocolError> {
    if buf.len() < len.saturating_add(2) {
        return Ok(None);
    }
    if &buf[len..len + 2] != b"\r\n" {
        return Err(ProtocolError::ExpectedCrlf);
    }
    let data = buf.split_to(len).freeze();
    buf.advance(2);
    Ok(Some(data))
}

/// Builds the value of a complete blob payload.
fn blob_value(kind: BlobKind, data: Bytes) -> Result<Value, ProtocolError> {
    Ok(match kind {
        BlobKind::Bulk => Value::BulkString(data),
        BlobKind::Error => Value::BlobError(data),
        BlobKind::Verbatim => {
            if data.len() < 4 || data[3] != b':' {
                return Err(ProtocolError::InvalidVerbatim);
            }
            let format = [data[0], data[1], data[2]];
            Value::VerbatimString {
                format,
                text: data.slice(4..),
            }
        }
    })
}

fn parse_bool(line: &[u8]) -> Result<bool, ProtocolError> {
    match line {
        b"t" => Ok(true),
        b"f" => Ok(false),
        _ => Err(ProtocolError::InvalidBoolean),
    }
}

/// Parses a RESP3 double: what Rust's float parser accepts (decimal, exponent, `inf`, `nan`).
fn parse_double(line: &[u8]) -> Result<f64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or(ProtocolError::InvalidDouble)
}

/// Checks a big number is an optionally signed, non-empty run of digits.
fn check_big_number(line: Bytes) -> Result<Bytes, ProtocolError> {
    let digits = match line.first() {
        Some(b'-' | b'+') => &line[1..],
        _ => &line[..],
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::InvalidBigNumber);
    }
    Ok(line)
}
