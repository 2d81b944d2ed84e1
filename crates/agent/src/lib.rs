//! The node agent: makes this node's part of the cluster match the store and reports what it
//! observes to the primary node.
//!
//! - [`reporter`]: the node's report loop (liveness, software version, OS, shard observations)
//!   and keeping the node's own record in the store true after an upgrade or an OS change.
//! - [`shards`]: the [`ShardAgent`], which starts, adopts, re-roles and removes this node's
//!   engines so they match the store, and observes them for the reports.

pub mod host;
pub mod lease;
pub mod reporter;
pub mod shards;

pub use lease::MasterLease;
pub use reporter::{run_reporter, run_reporter_with_shards};
pub use shards::{ObservedShards, ShardAgent, ShardError};
