//! The Active-Active syncer (issue 15): ships each instance's op log to every peer instance.
//!
//! Full mesh, pull only: every instance pulls every peer's own log (nothing is relayed). On the
//! node that holds the local master of shard i of a CRDB's instance, one puller per peer
//! ([`puller`]) long-polls `GET /v1/crdbs/{guid}/ops?shard=i&after=n...` from the peer
//! cluster's REST API (HTTPS checked against that cluster's CA only, basic auth with the
//! credentials the CRDB holds), and applies each op to the local master with
//! `flotilla_crdb::apply_remote`, which stores the puller's position (`__crdt__positions`) in
//! the same script: a position is never ahead of the data, and replicas and failover keep both
//! together. Past the peer's backlog, or when the peer's entry at the position holds another op
//! (its master failed over and lost ops), the puller does a full state transfer
//! (`GET /v1/crdbs/{guid}/state`, merged key by key) and resumes from the position the peer
//! took before its scan. "Another op" is told by the entry's dot and, because a dot counts one
//! key's writes (another key's op can carry the same dot at the same `n`), by a fingerprint of
//! the op (`flotilla_crdb::entry_check`), part of the position and written by the same script.
//!
//! Sync state per link (in sync / syncing / out of sync, ops lag, lag in ms, full and partial
//! syncs) is answered by `GET /v1/crdt_sources` on each node and exported as metrics
//! (`flotilla_database_syncer_lag_ms`, `flotilla_bdb_crdt_syncer_status`, ...).
//!
//! This crate owns both sides' logic: [`server`] answers those two requests on any node (the
//! api crate routes them), [`supervisor`] starts and stops pullers as masters move, and
//! [`sources`] keeps each link's sync state and lag for metrics, REST and `flotilla status`.
//! The wire types are in [`wire`]. The engine side (op log, scripts, positions) is
//! `flotilla-crdb`'s.

#![warn(missing_docs)]

pub mod error;
pub mod puller;
pub mod server;
pub mod sources;
pub mod supervisor;
pub mod wire;

pub use error::SyncerError;
pub use sources::{SourceKey, SourceReport, SyncSources, SyncStatus};
pub use supervisor::run;
