//! The bounds that keep a decoder safe against hostile or broken peers.

/// Bounds applied while decoding; exceeding one is a [`crate::ProtocolError`].
///
/// Exists because a peer controls every length on the wire: without bounds one line could make
/// the proxy buffer gigabytes or recurse without end. The defaults ([`Limits::for_requests`])
/// follow Redis where Redis has a limit (512 MiB bulk strings, 64 KiB inline requests) and are
/// tighter where Redis's is too generous for a proxy (1M elements per request instead of 1G).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk, blob error or verbatim string payload, in bytes.
    pub max_bulk_len: usize,
    /// Largest element count of one aggregate (pairs for maps and attributes).
    pub max_elements: usize,
    /// Deepest nesting of aggregates (an array holding an array is depth 2).
    pub max_depth: usize,
    /// Longest line: a header, a simple string or error, or a whole inline command.
    pub max_line_len: usize,
}

impl Limits {
    /// Limits for what clients send: 512 MiB bulk, 1,048,576 arguments, depth 128, 64 KiB lines.
    pub const fn for_requests() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_elements: 1024 * 1024,
            max_depth: 128,
            max_line_len: 64 * 1024,
        }
    }

    /// Limits for what shards reply: replies such as `KEYS *` may hold many more elements than a
    /// request does (16,777,216), and simple strings may be longer (1 MiB).
    pub const fn for_replies() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_elements: 16 * 1024 * 1024,
            max_depth: 128,
            max_line_len: 1024 * 1024,
        }
    }
}

impl Default for Limits {
    /// The request limits: the conservative choice for untrusted input.
    fn default() -> Self {
        Limits::for_requests()
    }
}
