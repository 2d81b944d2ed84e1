//! The orchestrator: what runs on the primary node.
//!
//! Today it keeps the observed state that every node reports over internal RPC (liveness,
//! running software version) and answers which nodes are up. Placement, failover and actions
//! come on top of it.

pub mod actions;
pub mod failover;
pub mod observed;
pub mod placement;
pub mod switchover;

pub use observed::{Observed, Observer};
