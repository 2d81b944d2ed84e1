//! The plain input types the daemon fills in for each scrape.

/// Everything one node reports on one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// The node serving this endpoint.
    pub node: NodeSample,
    /// Databases with an endpoint (proxy listener) on this node.
    pub dbs: Vec<DbSample>,
    /// Shards (engine processes) running on this node.
    pub shards: Vec<ShardSample>,
    /// Active-Active syncer links whose puller runs on this node.
    pub syncers: Vec<SyncerSample>,
}

/// The node serving the metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSample {
    /// The node's uid in the cluster.
    pub node_uid: u64,
}

/// One database as seen by this node's proxy endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DbSample {
    /// The database's uid (`bdb` label).
    pub bdb_uid: u64,
    /// The database's name (`name` label).
    pub name: String,
    /// The engine version the database runs, e.g. `redis-7.0`.
    pub redis_version: String,
    /// The number of shards of the database (primaries and replicas).
    pub shards: u64,
    /// Commands the endpoint has answered since it started.
    pub commands_total: u64,
    /// Commands answered with an error reply from the engine.
    pub error_replies_total: u64,
    /// Commands the endpoint refused or failed without executing them.
    pub not_executed_total: u64,
    /// Commands whose outcome is unknown: the shard connection was lost after sending them,
    /// so they may or may not have run.
    pub unknown_outcome_total: u64,
    /// Client connections open now.
    pub connections_current: u64,
    /// Client connections accepted since the endpoint started.
    pub connections_total: u64,
    /// Command latency as seen by the endpoint.
    pub latency: Histogram,
}

/// A latency histogram in Prometheus' shape: cumulative bucket counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Finite upper bounds in ascending order, each with the number of observations at or below
    /// it. The `+Inf` bucket is implied by [`Histogram::count`]; an infinite bound here is ignored.
    pub buckets: Vec<Bucket>,
    /// The sum of all observations, in seconds.
    pub sum_seconds: f64,
    /// The number of observations.
    pub count: u64,
}

/// One cumulative histogram bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    /// The bucket's upper bound (`le`), in seconds.
    pub upper_bound_seconds: f64,
    /// Observations less than or equal to the upper bound.
    pub cumulative_count: u64,
}

/// One shard (engine process) on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSample {
    /// The shard's uid (`shard` label).
    pub shard_uid: u64,
    /// The database the shard belongs to (`bdb` label).
    pub bdb_uid: u64,
    /// The node the shard runs on (`node` label).
    pub node_uid: u64,
    /// The shard's replication role (`role` label).
    pub role: ShardRole,
    /// Whether the engine answered when last observed.
    pub up: bool,
    /// The engine's `used_memory`, in bytes.
    pub used_memory_bytes: u64,
    /// The engine's replication offset (`master_repl_offset` or `slave_repl_offset`).
    pub repl_offset: u64,
}

/// One Active-Active syncer link: the local instance's shard `shard` pulling peer `source`
/// (Redis Software's `database_syncer_lag_ms{syncer_type="crdt"}` and `bdb_crdt_syncer_status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncerSample {
    /// The local database (`bdb` label).
    pub bdb_uid: u64,
    /// The peer instance pulled from (`source` label: its cluster name and instance id).
    pub source: String,
    /// The shard index (`shard` label).
    pub shard: u16,
    /// 0 in sync, 1 syncing, 2 out of sync.
    pub status: u8,
    /// Lag in ms (0 when caught up).
    pub lag_ms: u64,
    /// Ops the peer logged that are not applied yet.
    pub ops_lag: u64,
    /// Full state transfers (`crdt_sync_full`).
    pub full_syncs: u64,
    /// Resumptions without a full transfer (`crdt_sync_partial_ok`).
    pub partial_syncs: u64,
}

/// A shard's replication role. Its label value keeps Redis Software's words (`master`,
/// `slave`), as the REST API does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardRole {
    /// Serves reads and writes for its slot range.
    Primary,
    /// Replicates the primary of its slot range.
    Replica,
}

impl ShardRole {
    /// The `role` label value: `master` or `slave`.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardRole::Primary => "master",
            ShardRole::Replica => "slave",
        }
    }
}

impl Histogram {
    /// Per-bucket (non-cumulative) counts ending with the `+Inf` bucket, as the encoder wants
    /// them. `+Inf` is `f64::MAX`, the encoder's marker for it.
    pub(crate) fn per_bucket_counts(&self) -> Vec<(f64, u64)> {
        let mut out = Vec::with_capacity(self.buckets.len() + 1);
        let mut previous = 0u64;
        for bucket in self
            .buckets
            .iter()
            .filter(|b| b.upper_bound_seconds.is_finite())
        {
            out.push((
                bucket.upper_bound_seconds,
                bucket.cumulative_count.saturating_sub(previous),
            ));
            previous = previous.max(bucket.cumulative_count);
        }
        out.push((f64::MAX, self.count.saturating_sub(previous)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_bucket_counts_undo_the_cumulation_and_add_inf_from_count() {
        let histogram = Histogram {
            buckets: vec![
                Bucket {
                    upper_bound_seconds: 0.5,
                    cumulative_count: 3,
                },
                Bucket {
                    upper_bound_seconds: 1.0,
                    cumulative_count: 5,
                },
                Bucket {
                    upper_bound_seconds: f64::INFINITY,
                    cumulative_count: 9,
                },
            ],
            sum_seconds: 4.0,
            count: 9,
        };
        assert_eq!(
            histogram.per_bucket_counts(),
            vec![(0.5, 3), (1.0, 2), (f64::MAX, 4)]
        );
    }
}
