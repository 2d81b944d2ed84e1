//! Client requests: the command view the proxy routes on, and the decoder that produces it from
//! RESP arrays of bulk strings or inline commands (`PING\r\n`).

use bytes::{Buf, Bytes, BytesMut};

use crate::decode::take_payload;
use crate::encode::{write_bulk, write_header};
use crate::line::{find_crlf, parse_length, Length};
use crate::{Limits, ProtocolError};

/// Longest command or subcommand name kept by [`CommandName`]; every Redis command is shorter.
const MAX_NAME: usize = 32;

/// How many arguments a request's vector reserves up front at most (see the decoder's
/// allocation rule in the crate docs).
const MAX_PREALLOC: usize = 1024;

/// Most arguments (the command name included) of a request from a client that has not
/// authenticated yet: Redis's rule, enough for `AUTH user pass` and `HELLO 3 AUTH user pass
/// SETNAME name`.
pub const UNAUTHENTICATED_MAX_ARGS: usize = 10;

/// Longest bulk argument of a request from a client that has not authenticated yet (Redis's
/// 16 KB rule).
pub const UNAUTHENTICATED_MAX_BULK: usize = 16 * 1024;

/// A command or subcommand name, upper-cased once, stored inline (no allocation).
///
/// Exists so routing can match names with plain `&str` comparisons whatever case the client
/// used. Names that are not ASCII or longer than 32 bytes cannot be Redis commands; they are kept
/// as the empty string, which matches nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommandName {
    bytes: [u8; MAX_NAME],
    len: u8,
}

impl CommandName {
    /// Upper-cases `raw` if it can be a command name; otherwise the empty name.
    pub fn new(raw: &[u8]) -> Self {
        let mut bytes = [0u8; MAX_NAME];
        if raw.len() > MAX_NAME || !raw.is_ascii() {
            return CommandName { bytes, len: 0 };
        }
        for (dst, src) in bytes.iter_mut().zip(raw) {
            *dst = src.to_ascii_uppercase();
        }
        CommandName {
            bytes,
            len: raw.len() as u8,
        }
    }

    /// The upper-cased name, or `""` for a name that cannot be a command.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for CommandName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// One client command: its arguments as received and its upper-cased name.
///
/// Exists as the unit the proxy routes, splits and forwards: `argv()[0]` is the command name as
/// the client sent it, so argument positions match Redis's key specs (first key at 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    argv: Vec<Bytes>,
    name: CommandName,
}

impl Request {
    /// A request from a command name and its arguments.
    pub fn new(name: impl Into<Bytes>, args: impl IntoIterator<Item = Bytes>) -> Self {
        let mut argv = vec![name.into()];
        argv.extend(args);
        Request::from_non_empty(argv)
    }

    /// A request from a full argument vector; `None` when it is empty (no command).
    pub fn from_argv(argv: Vec<Bytes>) -> Option<Self> {
        if argv.is_empty() {
            return None;
        }
        Some(Request::from_non_empty(argv))
    }

    fn from_non_empty(argv: Vec<Bytes>) -> Self {
        let name = CommandName::new(&argv[0]);
        Request { argv, name }
    }

    /// The upper-cased command name (`""` if it cannot be a command, see [`CommandName`]).
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The command name as the client sent it.
    pub fn raw_name(&self) -> &Bytes {
        &self.argv[0]
    }

    /// All arguments, the command name first.
    pub fn argv(&self) -> &[Bytes] {
        &self.argv
    }

    /// The arguments after the command name.
    pub fn args(&self) -> &[Bytes] {
        &self.argv[1..]
    }

    /// The argument at `index` of [`Request::argv`] (0 is the name).
    pub fn arg(&self, index: usize) -> Option<&Bytes> {
        self.argv.get(index)
    }

    /// The number of arguments including the command name (Redis's `argc`).
    pub fn argc(&self) -> usize {
        self.argv.len()
    }

    /// Gives the argument vector back, e.g. to rewrite it.
    pub fn into_argv(self) -> Vec<Bytes> {
        self.argv
    }

    /// Appends this request as a RESP array of bulk strings, ready to send to a shard.
    pub fn encode(&self, buf: &mut BytesMut) {
        let payload: usize = self.argv.iter().map(|a| a.len() + 16).sum();
        buf.reserve(payload + 16);
        write_header(buf, b'*', self.argv.len());
        for arg in &self.argv {
            write_bulk(buf, arg);
        }
    }
}

/// Decodes client requests from a byte stream, across reads.
///
/// Exists for the proxy's client side: it accepts what `redis-server` accepts (arrays of bulk
/// strings, inline commands with Redis's quoting rules, empty arrays and empty lines skipped) and
/// nothing nested. Call [`RequestDecoder::decode`] after every read with the same buffer, which
/// must only be appended to between calls. After an error, answer it and close the connection.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: Limits,
    /// Arguments of a multibulk request received so far.
    args: Vec<Bytes>,
    /// Arguments still expected by the multibulk request in progress (0: between requests).
    remaining: usize,
    /// Length of a bulk argument whose header was consumed but whose payload is not all here.
    pending_bulk: Option<usize>,
    scan_from: usize,
    /// Payload bytes of the arguments already taken into `args`.
    args_bytes: usize,
    /// Whether the client has not authenticated yet: requests are then bounded by
    /// [`UNAUTHENTICATED_MAX_ARGS`] and [`UNAUTHENTICATED_MAX_BULK`].
    unauthenticated: bool,
    /// Most bytes of one request not decoded yet (the query buffer limit); `None`: no bound
    /// beyond the [`Limits`].
    max_buffered: Option<usize>,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        RequestDecoder::new(Limits::for_requests())
    }
}

impl RequestDecoder {
    /// A decoder enforcing `limits` (only the bulk, element and line limits apply).
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            args: Vec::new(),
            remaining: 0,
            pending_bulk: None,
            scan_from: 0,
            args_bytes: 0,
            unauthenticated: false,
            max_buffered: None,
        }
    }

    /// Bounds the requests of a client that has not authenticated (`true`) or lifts those
    /// bounds (`false`, the default).
    ///
    /// Exists so a client that does not know the password cannot make the proxy buffer more than
    /// a few KB: the bounds are checked on each header, before its payload is read, so a huge
    /// bulk is refused after its first bytes (`-ERR Protocol error: unauthenticated bulk
    /// length`, as Redis answers). Call it before each [`RequestDecoder::decode`] with the
    /// client's state; it applies from the next header on.
    pub fn set_unauthenticated(&mut self, unauthenticated: bool) {
        self.unauthenticated = unauthenticated;
    }

    /// Bounds the bytes of one request not yet decoded (arguments taken plus the bytes of the
    /// buffer): past `limit`, [`RequestDecoder::decode`] fails with
    /// [`ProtocolError::QueryBufferLimit`]. Redis's `client-query-buffer-limit`; `None` lifts
    /// it.
    pub fn set_query_buffer_limit(&mut self, limit: Option<usize>) {
        self.max_buffered = limit;
    }

    /// Bytes of the request in progress held by the decoder (its arguments' payloads so far).
    pub fn buffered_bytes(&self) -> usize {
        self.args_bytes
    }

    /// Whether a request is partly decoded.
    pub fn is_mid_request(&self) -> bool {
        self.remaining > 0
    }

    /// Heap bytes reserved for the arguments of the request in progress; stays within
    /// `1024 * size_of::<Bytes>()` plus what arguments that really arrived need, whatever count
    /// the client claims.
    pub fn reserved_bytes(&self) -> usize {
        self.args.capacity() * std::mem::size_of::<Bytes>()
    }

    /// Decodes the next request from the front of `buf`; `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let decoded = self.decode_next(buf)?;
        if decoded.is_none() {
            self.check_buffered(buf.len())?;
        }
        Ok(decoded)
    }

    /// Refuses a request whose undecoded bytes (`in_buffer` plus the arguments taken) exceed the
    /// query buffer limit.
    fn check_buffered(&self, in_buffer: usize) -> Result<(), ProtocolError> {
        let Some(limit) = self.max_buffered else {
            return Ok(());
        };
        if in_buffer.saturating_add(self.args_bytes) > limit {
            return Err(ProtocolError::QueryBufferLimit { limit });
        }
        Ok(())
    }

    fn decode_next(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            if self.remaining > 0 {
                return self.continue_multibulk(buf);
            }
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            let decoded = if first == b'*' {
                self.start_multibulk(buf)?
            } else {
                self.inline(buf)?
            };
            match decoded {
                Decoded::NeedMore => return Ok(None),
                Decoded::Continue => continue,
                Decoded::Request(request) => return Ok(Some(request)),
            }
        }
    }

    /// Reads a `*count` header; empty and null arrays are skipped, as Redis does.
    fn start_multibulk(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        let Some(cr) = find_crlf(buf, &mut self.scan_from, self.limits.max_line_len)? else {
            return Ok(Decoded::NeedMore);
        };
        let count = match parse_length(&buf[1..cr]) {
            Some(Length::Of(n)) => n,
            Some(Length::Null) => 0,
            // Any negative count is an empty request to Redis (`*-10` is skipped).
            _ if is_negative(&buf[1..cr]) => 0,
            _ => return Err(ProtocolError::InvalidMultibulkLength),
        };
        let limit = self.limits.max_elements;
        if count > limit as u64 {
            return Err(ProtocolError::TooManyElements { count, limit });
        }
        if self.unauthenticated && count > UNAUTHENTICATED_MAX_ARGS as u64 {
            return Err(ProtocolError::UnauthenticatedMultibulkLength);
        }
        buf.advance(cr + 2);
        self.scan_from = 0;
        if count == 0 {
            return Ok(Decoded::Continue);
        }
        self.remaining = count as usize;
        self.args = Vec::with_capacity(self.remaining.min(MAX_PREALLOC));
        Ok(Decoded::Continue)
    }

    /// Collects bulk arguments until the request is complete or the bytes run out.
    fn continue_multibulk(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        while self.remaining > 0 {
            let len = match self.pending_bulk {
                Some(len) => len,
                None => match self.bulk_header(buf)? {
                    Some(len) => len,
                    None => return Ok(None),
                },
            };
            let Some(arg) = take_payload(buf, len)? else {
                self.pending_bulk = Some(len);
                return Ok(None);
            };
            self.pending_bulk = None;
            self.args_bytes += arg.len();
            self.args.push(arg);
            self.remaining -= 1;
        }
        self.args_bytes = 0;
        Ok(Request::from_argv(std::mem::take(&mut self.args)))
    }

    /// Reads a `$len` header of a request argument.
    fn bulk_header(&mut self, buf: &mut BytesMut) -> Result<Option<usize>, ProtocolError> {
        let Some(&marker) = buf.first() else {
            return Ok(None);
        };
        if marker != b'$' {
            return Err(ProtocolError::ExpectedBulk(marker));
        }
        let Some(cr) = find_crlf(buf, &mut self.scan_from, self.limits.max_line_len)? else {
            return Ok(None);
        };
        let len = match parse_length(&buf[1..cr]) {
            Some(Length::Of(len)) => len,
            _ => return Err(ProtocolError::InvalidBulkLength),
        };
        let limit = self.limits.max_bulk_len;
        if len > limit as u64 {
            return Err(ProtocolError::BulkTooLong { len, limit });
        }
        if self.unauthenticated && len > UNAUTHENTICATED_MAX_BULK as u64 {
            return Err(ProtocolError::UnauthenticatedBulkLength);
        }
        buf.advance(cr + 2);
        self.scan_from = 0;
        Ok(Some(len as usize))
    }

    /// Reads an inline command: one line, split into words like `redis-server` does.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        let start = self.scan_from.min(buf.len());
        let limit = if self.unauthenticated {
            self.limits.max_line_len.min(UNAUTHENTICATED_MAX_BULK)
        } else {
            self.limits.max_line_len
        };
        let Some(offset) = memchr::memchr(b'\n', &buf[start..]) else {
            if buf.len() > limit {
                return Err(ProtocolError::LineTooLong { limit });
            }
            self.scan_from = buf.len();
            return Ok(Decoded::NeedMore);
        };
        let newline = start + offset;
        if newline > limit {
            return Err(ProtocolError::LineTooLong { limit });
        }
        self.scan_from = 0;
        let line = buf.split_to(newline + 1).freeze();
        let argv = split_inline(&line.slice(..newline))?;
        Ok(match Request::from_argv(argv) {
            Some(request) => Decoded::Request(request),
            None => Decoded::Continue,
        })
    }
}

/// Whether a count line is a negative integer.
fn is_negative(line: &[u8]) -> bool {
    crate::line::parse_i64(line).is_some_and(|n| n < 0)
}

/// Outcome of one attempt to start a request.
enum Decoded {
    /// More bytes are needed.
    NeedMore,
    /// Progress without a request (an empty one skipped, or an array header read): go on.
    Continue,
    /// A complete request.
    Request(Request),
}

/// Splits an inline command line into arguments with Redis's rules (`sdssplitargs`): words
/// separated by whitespace; `"..."` with `\n \r \t \b \a \\ \" \xHH` escapes; `'...'` with `\'`;
/// a closing quote must be followed by whitespace or the end of the line.
///
/// Unquoted words are zero-copy slices of `line`.
fn split_inline(line: &Bytes) -> Result<Vec<Bytes>, ProtocolError> {
    let mut argv = Vec::new();
    let mut at = 0;
    while at < line.len() {
        if is_space(line[at]) {
            at += 1;
            continue;
        }
        let (arg, next) = match line[at] {
            b'"' => double_quoted(line, at + 1)?,
            b'\'' => single_quoted(line, at + 1)?,
            _ => {
                let end = line[at..]
                    .iter()
                    .position(|&b| is_space(b))
                    .map_or(line.len(), |p| at + p);
                (line.slice(at..end), end)
            }
        };
        argv.push(arg);
        at = next;
    }
    Ok(argv)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Checks what follows a closing quote at `after` and returns the next scan position.
fn after_quote(line: &[u8], after: usize) -> Result<usize, ProtocolError> {
    match line.get(after) {
        None => Ok(after),
        Some(&b) if is_space(b) => Ok(after),
        Some(_) => Err(ProtocolError::UnbalancedQuotes),
    }
}

/// Parses a double-quoted word whose content starts at `at`.
fn double_quoted(line: &[u8], mut at: usize) -> Result<(Bytes, usize), ProtocolError> {
    let mut out = Vec::new();
    loop {
        match line.get(at) {
            None => return Err(ProtocolError::UnbalancedQuotes),
            Some(b'"') => return Ok((Bytes::from(out), after_quote(line, at + 1)?)),
            Some(b'\\') => {
                let (byte, used) = escape(&line[at + 1..]);
                out.push(byte);
                at += 1 + used;
            }
            Some(&b) => {
                out.push(b);
                at += 1;
            }
        }
    }
}

/// Decodes one escape after a backslash; returns the byte and how many bytes it used.
fn escape(rest: &[u8]) -> (u8, usize) {
    if let [b'x', hi, lo, ..] = rest {
        if let (Some(hi), Some(lo)) = (hex(*hi), hex(*lo)) {
            return (hi * 16 + lo, 3);
        }
    }
    match rest.first() {
        None => (b'\\', 0),
        Some(b'n') => (b'\n', 1),
        Some(b'r') => (b'\r', 1),
        Some(b't') => (b'\t', 1),
        Some(b'b') => (0x08, 1),
        Some(b'a') => (0x07, 1),
        Some(&other) => (other, 1),
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Parses a single-quoted word whose content starts at `at`.
fn single_quoted(line: &[u8], mut at: usize) -> Result<(Bytes, usize), ProtocolError> {
    let mut out = Vec::new();
    loop {
        match line.get(at) {
            None => return Err(ProtocolError::UnbalancedQuotes),
            Some(b'\'') => return Ok((Bytes::from(out), after_quote(line, at + 1)?)),
            Some(b'\\') if line.get(at + 1) == Some(&b'\'') => {
                out.push(b'\'');
                at += 2;
            }
            Some(&b) => {
                out.push(b);
                at += 1;
            }
        }
    }
}
