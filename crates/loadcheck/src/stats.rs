//! What each load client counts while it runs: completed operations, client errors by kind,
//! latency, and the longest stall; merged into the report at the end.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::histogram::Histogram;

/// The kinds of client error a load check distinguishes, because each points elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The server answered with an error reply (`-READONLY`, `-LOADING`, ...).
    ErrorReply,
    /// No reply within the per-operation timeout.
    Timeout,
    /// The connection broke while a command was outstanding.
    Connection,
    /// No connection could be made within the per-operation timeout.
    Connect,
    /// A read returned something other than the acknowledged value.
    WrongRead,
    /// Anything else the client library reported (unexpected reply type, parse error).
    Other,
}

impl ErrorKind {
    /// Classifies an error from the client library.
    pub(crate) fn of(err: &redis::RedisError) -> Self {
        if err.is_timeout() {
            Self::Timeout
        } else if err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error() {
            Self::Connection
        } else if matches!(
            err.kind(),
            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
        ) {
            Self::ErrorReply
        } else {
            Self::Other
        }
    }

    /// Whether the connection should be dropped and made again after this error.
    pub(crate) fn needs_reconnect(self) -> bool {
        !matches!(self, Self::ErrorReply | Self::WrongRead)
    }
}

/// Client errors by kind, as a client application would have seen them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClientErrors {
    /// Error replies from the server.
    pub error_reply: u64,
    /// Operations that got no reply within the per-operation timeout.
    pub timeout: u64,
    /// Operations whose connection broke while they were outstanding.
    pub connection: u64,
    /// Operations that could not get a connection within the per-operation timeout.
    pub connect: u64,
    /// Reads of an acknowledged key that returned a missing or different value.
    pub wrong_read: u64,
    /// Other client library errors.
    pub other: u64,
}

impl ClientErrors {
    /// All client errors together; zero is what an upgrade must achieve.
    pub fn total(&self) -> u64 {
        self.error_reply
            + self.timeout
            + self.connection
            + self.connect
            + self.wrong_read
            + self.other
    }

    pub(crate) fn add(&mut self, kind: ErrorKind) {
        let slot = match kind {
            ErrorKind::ErrorReply => &mut self.error_reply,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Connection => &mut self.connection,
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::WrongRead => &mut self.wrong_read,
            ErrorKind::Other => &mut self.other,
        };
        *slot += 1;
    }

    fn merge(&mut self, o: &ClientErrors) {
        self.error_reply += o.error_reply;
        self.timeout += o.timeout;
        self.connection += o.connection;
        self.connect += o.connect;
        self.wrong_read += o.wrong_read;
        self.other += o.other;
    }
}

/// Measures how long a client has had work outstanding without completing any of it.
///
/// The clock starts when an operation starts and nothing is outstanding yet, keeps running
/// through failed operations and reconnects, and stops at the next completed operation.
#[derive(Debug, Default)]
pub(crate) struct StallClock {
    since: Option<Instant>,
    longest: Duration,
}

impl StallClock {
    /// An operation is about to start.
    pub(crate) fn begin(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// An operation completed at `now`.
    pub(crate) fn complete(&mut self, now: Instant) {
        if let Some(since) = self.since.take() {
            self.longest = self.longest.max(now - since);
        }
    }

    /// The longest stall, counting one still open at `now`.
    pub(crate) fn longest(&self, now: Instant) -> Duration {
        let open = self.since.map_or(Duration::ZERO, |s| now - s);
        self.longest.max(open)
    }
}

/// Everything one client counted; merged across clients for the report.
#[derive(Debug, Default)]
pub(crate) struct ClientStats {
    /// Completed operations (acknowledged writes and successful reads).
    pub(crate) ops: u64,
    pub(crate) sets_acked: u64,
    pub(crate) incrs_acked: u64,
    pub(crate) reads_ok: u64,
    /// Writes whose reply never came or was an error: they may or may not have executed.
    pub(crate) writes_unknown: u64,
    /// Connections made again after the first one.
    pub(crate) reconnects: u64,
    pub(crate) errors: ClientErrors,
    pub(crate) error_examples: Vec<String>,
    pub(crate) latency: Histogram,
    pub(crate) longest_stall: Duration,
}

impl ClientStats {
    /// Records a client error and keeps its message as an example while there is room.
    pub(crate) fn error(&mut self, kind: ErrorKind, message: String, max_examples: usize) {
        self.errors.add(kind);
        if self.error_examples.len() < max_examples {
            self.error_examples.push(message);
        }
    }

    /// Adds another client's counts to these.
    pub(crate) fn merge(&mut self, o: &ClientStats, max_examples: usize) {
        self.ops += o.ops;
        self.sets_acked += o.sets_acked;
        self.incrs_acked += o.incrs_acked;
        self.reads_ok += o.reads_ok;
        self.writes_unknown += o.writes_unknown;
        self.reconnects += o.reconnects;
        self.errors.merge(&o.errors);
        let room = max_examples.saturating_sub(self.error_examples.len());
        self.error_examples
            .extend(o.error_examples.iter().take(room).cloned());
        self.latency.merge(&o.latency);
        self.longest_stall = self.longest_stall.max(o.longest_stall);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_spans_failed_operations_until_a_completion() {
        let t0 = Instant::now();
        let mut c = StallClock::default();
        c.begin(t0);
        c.begin(t0 + Duration::from_millis(100)); // a retry after a failure
        c.complete(t0 + Duration::from_millis(300));
        assert_eq!(
            c.longest(t0 + Duration::from_millis(300)),
            Duration::from_millis(300)
        );
        c.begin(t0 + Duration::from_secs(1));
        c.complete(t0 + Duration::from_millis(1010));
        assert_eq!(
            c.longest(t0 + Duration::from_secs(2)),
            Duration::from_millis(300)
        );
        c.begin(t0 + Duration::from_secs(2));
        assert_eq!(
            c.longest(t0 + Duration::from_secs(3)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn error_totals_add_up() {
        let mut e = ClientErrors::default();
        for k in [ErrorKind::Timeout, ErrorKind::WrongRead, ErrorKind::Connect] {
            e.add(k);
        }
        assert_eq!(e.total(), 3);
        assert_eq!(e.wrong_read, 1);
    }
}
