//! The RESP value type: one variant per RESP2/RESP3 wire type.

use bytes::Bytes;

/// Which protocol a connection speaks, chosen by the client with `HELLO`.
///
/// Exists because the proxy must answer a RESP2 client with RESP2 types only (see
/// [`Value::encode_resp2`]), while a RESP3 client gets maps, doubles, pushes and so on as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, the default of every new connection.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// One RESP value, as decoded from or encoded to the wire.
///
/// Every wire form has its own variant (RESP2's null bulk string and null array are kept apart
/// from RESP3's null) so that a decoded reply re-encodes to exactly the bytes that came in.
/// Payloads are `Bytes`, usually slices of the connection's read buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+OK\r\n`: a short status line without CR or LF.
    SimpleString(Bytes),
    /// `-ERR message\r\n`: an error line, its first word being the error code.
    Error(Bytes),
    /// `:42\r\n`: a signed 64-bit integer.
    Integer(i64),
    /// `$5\r\nhello\r\n`: a binary-safe string.
    BulkString(Bytes),
    /// `$-1\r\n`: RESP2's null (a missing key).
    NullBulkString,
    /// `*2\r\n...`: an ordered list of values.
    Array(Vec<Value>),
    /// `*-1\r\n`: RESP2's null array (e.g. a timed-out `BLPOP`).
    NullArray,
    /// `_\r\n`: RESP3's single null.
    Null,
    /// `,3.14\r\n`: RESP3 floating point, including `inf`, `-inf` and `nan`.
    Double(f64),
    /// `#t\r\n` / `#f\r\n`: RESP3 boolean.
    Boolean(bool),
    /// `(3492890328409238509324850943850943825024385\r\n`: RESP3 integer of any size, kept as
    /// its decimal text (an optional sign and digits).
    BigNumber(Bytes),
    /// `!21\r\nSYNTAX invalid syntax\r\n`: RESP3 binary-safe error.
    BlobError(Bytes),
    /// `=15\r\ntxt:Some string\r\n`: RESP3 string with a three-byte format such as `txt`/`mkd`.
    VerbatimString {
        /// The format, e.g. `*b"txt"`.
        format: [u8; 3],
        /// The text after `fmt:`.
        text: Bytes,
    },
    /// `%1\r\n...`: RESP3 map, as ordered key/value pairs (keys may repeat on the wire).
    Map(Vec<(Value, Value)>),
    /// `~2\r\n...`: RESP3 set, in wire order.
    Set(Vec<Value>),
    /// `>3\r\n...`: RESP3 out-of-band data such as pub/sub messages.
    Push(Vec<Value>),
    /// `|1\r\n...`: RESP3 attribute: auxiliary key/value pairs followed by the value they
    /// describe.
    Attribute {
        /// The auxiliary pairs.
        attributes: Vec<(Value, Value)>,
        /// The value the attributes annotate.
        value: Box<Value>,
    },
}

impl Value {
    /// A bulk string from anything byte-like; shorthand for building replies.
    pub fn bulk(data: impl Into<Bytes>) -> Value {
        Value::BulkString(data.into())
    }

    /// A simple string such as `OK`; shorthand for building replies.
    pub fn simple(text: impl Into<Bytes>) -> Value {
        Value::SimpleString(text.into())
    }

    /// An error line such as `ERR no such key`; shorthand for building replies.
    pub fn error(text: impl Into<Bytes>) -> Value {
        Value::Error(text.into())
    }

    /// Whether this is any of the null forms (RESP2 null bulk/array or RESP3 null), which the
    /// proxy's merges treat alike.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::NullBulkString | Value::NullArray | Value::Null)
    }

    /// Whether this is an error reply (simple or blob), which a merge must pass on.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_) | Value::BlobError(_))
    }
}
