//! Flotilla's metrics endpoint: `GET ADDR:8070/metrics` in the OpenMetrics text format, which
//! Prometheus scrapes natively.
//!
//! This crate owns the exposition and the projection onto it. Rendering and serving know only a
//! [`Sample`] (plain numbers for this node, its databases and its shards); [`sample_of`] builds
//! one from the cluster state, the endpoints' counters and the agent's shard reports (values,
//! never the store or the engines). The daemon supplies a closure that gathers those and calls
//! it once per scrape. Nothing is cached, so a scrape always shows what the closure sees at
//! that moment.
//!
//! Counters are cumulative since the process that counts them started (`*_total`). Rates such as
//! a database's ops/s are not computed here; Prometheus derives them, for example
//! `rate(flotilla_bdb_requests_total[1m])`, and latency quantiles with
//! `histogram_quantile(0.99, rate(flotilla_bdb_latency_seconds_bucket[1m]))`.
//!
//! Metric families (every name carries the `flotilla_` prefix):
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `flotilla_node_info` | info | `node` |
//! | `flotilla_bdb_info` | info | `bdb`, `name`, `redis_version` |
//! | `flotilla_bdb_shards` | gauge | `bdb`, `name` |
//! | `flotilla_bdb_requests_total` | counter | `bdb`, `name` |
//! | `flotilla_bdb_errors_total` | counter | `bdb`, `name`, `kind` (`error_reply`, `not_executed`, `unknown_outcome`) |
//! | `flotilla_bdb_connections` | gauge | `bdb`, `name` |
//! | `flotilla_bdb_connections_accepted_total` | counter | `bdb`, `name` |
//! | `flotilla_bdb_latency_seconds` | histogram | `bdb`, `name` |
//! | `flotilla_shard_up` | gauge (1/0) | `shard`, `bdb`, `node`, `role` |
//! | `flotilla_shard_role_master` | gauge (1/0) | `shard`, `bdb`, `node`, `role` |
//! | `flotilla_shard_used_memory_bytes` | gauge | `shard`, `bdb`, `node`, `role` |
//! | `flotilla_shard_repl_offset` | gauge | `shard`, `bdb`, `node`, `role` |
//! | `flotilla_database_syncer_lag_ms` | gauge | `bdb`, `syncer_type` (`crdt`), `source`, `shard` |
//! | `flotilla_bdb_crdt_syncer_status` | gauge (0 in sync, 1 syncing, 2 out of sync) | `bdb`, `source`, `shard` |
//! | `flotilla_bdb_crdt_syncer_ops_lag` | gauge | `bdb`, `source`, `shard` |
//! | `flotilla_crdt_sync_full_total` | counter | `bdb`, `source`, `shard` |
//! | `flotilla_crdt_sync_partial_ok_total` | counter | `bdb`, `source`, `shard` |
//!
//! The syncer families keep Redis Software's names (after the prefix); a link's series come
//! from the node that runs its puller (the node of the shard's local master).
//!
//! The `role` label and the name `flotilla_shard_role_master` keep Redis Software's words
//! (`master` for a primary shard, `slave` for a replica), as the REST API's values do.

mod http;
mod project;
mod render;
mod sample;

pub use http::{router, router_with_token, serve, METRICS_PATH};
pub use project::sample_of;
pub use render::{render, CONTENT_TYPE};
pub use sample::{
    Bucket, DbSample, Histogram, NodeSample, Sample, ShardRole, ShardSample, SyncerSample,
};

/// The port Redis Software (and so Flotilla) serves metrics on, on every node.
pub const DEFAULT_PORT: u16 = 8070;

/// What can go wrong while rendering or serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The OpenMetrics encoder refused the sample (a formatting error; not expected in practice).
    #[error("could not render metrics: {0}")]
    Render(#[from] std::fmt::Error),
    /// The HTTP server failed while accepting or serving connections.
    #[error("metrics server failed: {0}")]
    Serve(#[from] std::io::Error),
}
