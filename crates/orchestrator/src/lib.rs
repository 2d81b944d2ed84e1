//! The orchestrator: what runs on the primary node.
//!
//! It keeps the observed state that every node reports over internal RPC (liveness, running
//! software version, memory) and answers which nodes are up; on top of it: placement,
//! failover, switchovers, the node lifecycle (drain plans, quorum, primary-ship), maintenance
//! mode's plans and the action runner.

pub mod actions;
pub mod failover;
pub mod lifecycle;
pub mod maintenance;
pub mod observed;
pub mod placement;
pub mod switchover;

pub use observed::{Observed, Observer};
