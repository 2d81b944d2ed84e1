//! The outcome of a load check: what clients saw (operations, errors, latency, stall) and what
//! verification found (lost acknowledged writes), as JSON for tools and as text for people.

use std::fmt;

use serde::Serialize;

use crate::ClientErrors;

/// Latency percentiles in milliseconds over every completed operation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median latency.
    pub p50: f64,
    /// 99th percentile latency.
    pub p99: f64,
    /// Largest latency of a completed operation.
    pub max: f64,
}

/// The result of a load check: the numbers an upgrade test asserts on and a benchmark prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The endpoint the clients used.
    pub endpoint: String,
    /// The unique key prefix of the run.
    pub key_prefix: String,
    /// How long the load ran.
    pub elapsed_ms: u64,
    /// Completed operations (acknowledged writes and reads that got a reply).
    pub ops: u64,
    /// Completed operations per second over the run.
    pub ops_per_sec: f64,
    /// SETs answered OK plus INCRs answered with an integer.
    pub writes_acknowledged: u64,
    /// Reads that returned the acknowledged value.
    pub reads_ok: u64,
    /// Writes sent whose reply was an error, a timeout or a dropped connection: may have executed.
    pub writes_outcome_unknown: u64,
    /// Connections the clients had to make again.
    pub reconnects: u64,
    /// Client errors by kind.
    pub client_errors: ClientErrors,
    /// All client errors together.
    pub client_errors_total: u64,
    /// The first few client error messages.
    pub error_examples: Vec<String>,
    /// Acknowledged keys read back at the end.
    pub keys_verified: u64,
    /// Counters read back at the end.
    pub counters_verified: u64,
    /// Acknowledged writes missing, wrong or undone (counter increments count one each).
    pub lost_writes: u64,
    /// The first few lost writes, as text naming the key.
    pub lost_write_examples: Vec<String>,
    /// Longest time any client had an operation outstanding without completing one.
    pub longest_stall_ms: f64,
    /// Latency percentiles.
    pub latency_ms: Latency,
}

impl Report {
    /// True when clients saw no error and no acknowledged write was lost: the upgrade promise.
    pub fn is_clean(&self) -> bool {
        self.client_errors.total() == 0 && self.lost_writes == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.client_errors;
        let verdict = if self.is_clean() {
            "CLEAN"
        } else {
            "NOT CLEAN"
        };
        writeln!(
            f,
            "loadcheck {} ({}): {verdict}",
            self.endpoint, self.key_prefix
        )?;
        writeln!(
            f,
            "  ops: {} in {:.1} s ({:.0} ops/s); writes acknowledged {}, outcome unknown {}",
            self.ops,
            self.elapsed_ms as f64 / 1000.0,
            self.ops_per_sec,
            self.writes_acknowledged,
            self.writes_outcome_unknown
        )?;
        writeln!(
            f,
            "  client errors: {} (error reply {}, timeout {}, connection {}, connect {}, wrong read {}, other {}); reconnects {}",
            e.total(), e.error_reply, e.timeout, e.connection, e.connect, e.wrong_read, e.other, self.reconnects
        )?;
        writeln!(
            f,
            "  lost acknowledged writes: {} (verified {} keys, {} counters)",
            self.lost_writes, self.keys_verified, self.counters_verified
        )?;
        write!(
            f,
            "  longest stall: {:.0} ms; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.longest_stall_ms, self.latency_ms.p50, self.latency_ms.p99, self.latency_ms.max
        )?;
        for example in self.error_examples.iter().chain(&self.lost_write_examples) {
            write!(f, "\n  - {example}")?;
        }
        Ok(())
    }
}
