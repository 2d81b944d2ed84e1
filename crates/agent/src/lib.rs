//! The node agent: makes this node's part of the cluster match the store and reports what it
//! observes to the primary node.
//!
//! Today: the node's report loop (liveness, software version, OS) and keeping the node's own
//! record in the store true after an upgrade or an OS change.

pub mod host;
pub mod reporter;

pub use reporter::run_reporter;
