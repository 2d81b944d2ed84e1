//! The one error type of the crate: why a byte stream is not valid RESP.

/// Why a peer's bytes were rejected.
///
/// Exists so the proxy can answer `-ERR {error}` and close the connection, as Redis does: the
/// `Display` text starts with `Protocol error:` and, where Redis has a wording, uses it (Redis
/// 7.0's `networking.c`: a bound the proxy sets tighter than Redis's still reads `invalid bulk
/// length` / `invalid multibulk length`, with the bound in parentheses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A reply or nested element started with a byte that is not a RESP type marker.
    #[error("Protocol error: invalid type byte '{}'", char::from(*.0).escape_default())]
    InvalidType(u8),
    /// An element of a request array was not a bulk string.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedBulk(u8),
    /// A length line of a bulk or blob string was not a valid length.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A count line of an array, map, set, push or attribute was not a valid count.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A bulk string claims more bytes than [`crate::Limits::max_bulk_len`].
    #[error("Protocol error: invalid bulk length ({len} bytes exceed the limit of {limit})")]
    BulkTooLong {
        /// The claimed length.
        len: u64,
        /// The configured limit.
        limit: usize,
    },
    /// An aggregate claims more elements than [`crate::Limits::max_elements`].
    #[error(
        "Protocol error: invalid multibulk length ({count} elements exceed the limit of {limit})"
    )]
    TooManyElements {
        /// The claimed element count.
        count: u64,
        /// The configured limit.
        limit: usize,
    },
    /// Aggregates are nested deeper than [`crate::Limits::max_depth`].
    #[error("Protocol error: nesting deeper than {limit} levels")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// A line (header, simple string, inline command) is longer than allowed.
    #[error("Protocol error: too big inline request (more than {limit} bytes)")]
    LineTooLong {
        /// The configured limit.
        limit: usize,
    },
    /// A carriage return was not followed by a line feed, or a payload was not followed by CRLF.
    #[error("Protocol error: expected CRLF")]
    ExpectedCrlf,
    /// An integer line was not a 64-bit signed decimal.
    #[error("Protocol error: invalid integer")]
    InvalidInteger,
    /// A double line was not a decimal floating point number, `inf`, `-inf` or `nan`.
    #[error("Protocol error: invalid double")]
    InvalidDouble,
    /// A boolean line was neither `t` nor `f`.
    #[error("Protocol error: invalid boolean")]
    InvalidBoolean,
    /// A big number line was not an optionally signed run of digits.
    #[error("Protocol error: invalid big number")]
    InvalidBigNumber,
    /// A RESP3 null (`_`) carried content.
    #[error("Protocol error: invalid null")]
    InvalidNull,
    /// A verbatim string did not start with a three-byte format and a colon.
    #[error("Protocol error: invalid verbatim string")]
    InvalidVerbatim,
    /// RESP3 streamed strings and aggregates (`$?`, `*?`) are not supported: no engine sends them.
    #[error("Protocol error: streamed RESP3 types are not supported")]
    Streamed,
    /// A client that has not authenticated sent a request of more than
    /// [`crate::UNAUTHENTICATED_MAX_ARGS`] arguments (Redis's wording).
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// A client that has not authenticated sent a bulk argument longer than
    /// [`crate::UNAUTHENTICATED_MAX_BULK`] (Redis's wording).
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    /// A request not decoded yet holds more bytes than the client's query buffer limit
    /// (Redis's `client-query-buffer-limit`).
    #[error("Protocol error: client query buffer limit of {limit} bytes reached")]
    QueryBufferLimit {
        /// The configured limit.
        limit: usize,
    },
    /// An inline command had an unclosed quote, or a closing quote not followed by a space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}
