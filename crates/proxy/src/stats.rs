//! Endpoint statistics for metrics: commands by verdict (executed, error reply, not executed,
//! outcome unknown; see `verdict.rs`), client connections and a latency histogram of command
//! round trips, kept in shared atomics that the data path updates once per batch of pipelined
//! commands, not once per command.
//!
//! Latency is measured from the moment the proxy starts routing a batch (its requests have
//! been read) to the moment the batch's replies have been written to the client: the proxy
//! writes a batch's replies in one go, so that is when each of them reaches the client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::verdict::{Kind, Verdict, KINDS};

/// Upper bounds (inclusive, in microseconds) of the latency histogram's finite buckets; one
/// more bucket counts everything slower (`+Inf`). Chosen for Prometheus: 100 µs to 1 s.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Buckets including `+Inf`.
const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// A cheap, lock-free handle on one endpoint's counters, shared by its client connections.
///
/// Exists so the daemon's metrics endpoint can read what an endpoint did without touching its
/// data path: clone it, pass it to [`crate::serve_with_stats`], and call
/// [`EndpointStats::snapshot`] on each scrape.
#[derive(Debug, Clone, Default)]
pub struct EndpointStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    /// Commands by [`Kind`].
    verdicts: [AtomicU64; KINDS],
    connections_current: AtomicU64,
    connections_total: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    latency_sum_us: AtomicU64,
    /// The endpoint's open client connections, for CLIENT LIST (not a counter: it rides on
    /// this handle because every session of the endpoint already shares it).
    directory: crate::directory::ClientDirectory,
}

impl EndpointStats {
    /// Counters all at zero.
    pub fn new() -> Self {
        EndpointStats::default()
    }

    /// The counters as they are now. Each counter is read atomically, the set of them is not
    /// (a scrape during traffic may see a command counted in one and not yet in another).
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counts: Vec<u64> = c.buckets.iter().map(load).collect();
        let count = |kind: Kind| load(&c.verdicts[kind as usize]);
        StatsSnapshot {
            commands_total: c.verdicts.iter().map(load).sum(),
            ok_total: count(Kind::Ok),
            error_replies_total: count(Kind::ErrorReply),
            not_executed_total: count(Kind::NotExecuted),
            unknown_outcome_total: count(Kind::Unknown),
            connections_current: load(&c.connections_current),
            connections_total: load(&c.connections_total),
            latency: LatencySnapshot {
                bounds_us: LATENCY_BUCKETS_US.to_vec(),
                count: counts.iter().sum(),
                counts,
                sum_us: load(&c.latency_sum_us),
            },
        }
    }

    /// Client connections open now (INFO's `connected_clients`).
    pub(crate) fn connections_current(&self) -> u64 {
        self.0.connections_current.load(Ordering::Relaxed)
    }

    /// The endpoint's directory of its open client connections (CLIENT LIST).
    pub(crate) fn directory(&self) -> &crate::directory::ClientDirectory {
        &self.0.directory
    }

    /// Counts an accepted client connection until the returned guard is dropped.
    pub(crate) fn connection(&self) -> ConnectionGuard {
        self.0.connections_total.fetch_add(1, Ordering::Relaxed);
        self.0.connections_current.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }
}

/// Keeps one client connection counted as current; dropped when the connection's task ends.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(EndpointStats);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        (self.0)
            .0
            .connections_current
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoint's counters at one moment: plain data, serializable, for metrics and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Commands answered since the endpoint started (`ok + error replies + not executed +
    /// unknown outcome`).
    pub commands_total: u64,
    /// Commands answered with a reply that is not an error.
    pub ok_total: u64,
    /// Commands an engine answered with an error reply (the command's own answer).
    pub error_replies_total: u64,
    /// Commands answered with an error without running them (refused, held past the hold
    /// timeout, shard unreachable, refused by a demoted primary and not resent).
    pub not_executed_total: u64,
    /// Commands whose shard connection was lost after sending: they may or may not have run.
    #[serde(default)]
    pub unknown_outcome_total: u64,
    /// Client connections open now.
    pub connections_current: u64,
    /// Client connections accepted since the endpoint started.
    pub connections_total: u64,
    /// Round-trip latency of the commands counted in `commands_total`.
    pub latency: LatencySnapshot,
}

/// A latency histogram with fixed buckets, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySnapshot {
    /// Inclusive upper bounds of the finite buckets ([`LATENCY_BUCKETS_US`]).
    pub bounds_us: Vec<u64>,
    /// Observations per bucket, not cumulative: one per bound, then one for `+Inf`.
    pub counts: Vec<u64>,
    /// Sum of all observations, in microseconds.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl LatencySnapshot {
    /// Cumulative counts in Prometheus' shape: for each bound, the observations at or below
    /// it (the `+Inf` bucket is [`LatencySnapshot::count`]).
    pub fn cumulative(&self) -> Vec<(u64, u64)> {
        let mut running = 0;
        self.bounds_us
            .iter()
            .zip(&self.counts)
            .map(|(&bound, &n)| {
                running += n;
                (bound, running)
            })
            .collect()
    }
}

/// Counts gathered over one batch by one client connection, added to the shared counters once.
#[derive(Debug, Default)]
pub(crate) struct BatchStats {
    verdicts: [u64; KINDS],
}

impl BatchStats {
    /// Counts one answered command.
    pub fn record(&mut self, verdict: Verdict) {
        self.verdicts[verdict.kind() as usize] += 1;
    }

    /// Adds the batch to `stats`, every command with round trip `elapsed`, and starts over.
    pub fn finish(&mut self, elapsed: Duration, stats: &EndpointStats) {
        let commands: u64 = self.verdicts.iter().sum();
        if commands == 0 {
            return;
        }
        let c = &stats.0;
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        for (counter, &n) in c.verdicts.iter().zip(&self.verdicts) {
            add(counter, n);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        add(&c.buckets[bucket_of(micros)], commands);
        add(&c.latency_sum_us, micros.saturating_mul(commands));
        self.verdicts = [0; KINDS];
    }
}

/// The index of the bucket counting an observation of `micros`.
fn bucket_of(micros: u64) -> usize {
    LATENCY_BUCKETS_US.partition_point(|&bound| bound < micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_land_in_their_buckets_and_outcomes() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(100), 0);
        assert_eq!(bucket_of(101), 1);
        assert_eq!(bucket_of(1_000_000), 11);
        assert_eq!(bucket_of(1_000_001), 12);

        let stats = EndpointStats::new();
        let mut batch = BatchStats::default();
        for verdict in [
            Verdict::OK,
            Verdict::OK,
            Verdict::Executed { error_reply: true },
            Verdict::REFUSED,
            Verdict::Unknown {
                side: crate::verdict::Side::Shard,
            },
        ] {
            batch.record(verdict);
        }
        batch.finish(Duration::from_micros(300), &stats);
        batch.record(Verdict::OK);
        batch.finish(Duration::from_secs(2), &stats);
        batch.finish(Duration::from_secs(9), &stats);
        let guard = stats.connection();
        let snap = stats.snapshot();
        assert_eq!(
            (snap.commands_total, snap.ok_total, snap.error_replies_total),
            (6, 3, 1)
        );
        assert_eq!(snap.not_executed_total, 1);
        assert_eq!(snap.unknown_outcome_total, 1);
        assert_eq!((snap.connections_current, snap.connections_total), (1, 1));
        assert_eq!(snap.latency.count, 6);
        assert_eq!(snap.latency.counts[2], 5);
        assert_eq!(snap.latency.counts[12], 1);
        assert_eq!(snap.latency.sum_us, 5 * 300 + 2_000_000);
        let cumulative = snap.latency.cumulative();
        assert_eq!(cumulative[1], (250, 0));
        assert_eq!(cumulative[2], (500, 5));
        assert_eq!(cumulative[11], (1_000_000, 5));
        drop(guard);
        assert_eq!(stats.snapshot().connections_current, 0);
    }
}
