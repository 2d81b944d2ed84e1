//! Prerequisite and port checks on one node, like Redis Software's `rlcheck` and its port table
//! (DESIGN.md "Prerequisites and ports").
//!
//! This crate reads the machine (`/proc`, `/sys`, the data dir, pidfiles) and judges what it
//! finds; it knows nothing of the cluster store. The daemon gathers what only the cluster knows
//! (which shards and ports this node must have, the primary node's clock, the other nodes'
//! reachability) and passes it in, so every judgement here is a plain function with unit tests.

mod host;
mod os;
mod ports;
mod report;
mod upgrade;

pub use host::{data_dir, host_settings, port_range, shard_pidfiles, HostFacts};
pub use os::os_upgrade_check;
pub use ports::{
    classify_ports, listening_sockets, socket_owners, Listener, PortNeed, PortState, PortStatus,
};
pub use report::{Check, CheckReport, CheckStatus};
pub use upgrade::{
    upgrade_check, ActionFacts, BdbFacts, Blocker, NodeFacts, PackageFacts, Refusal, ShardFacts,
    UpgradeCheckReport, UpgradeCheckRequest, UpgradeFacts,
};
