//! What the API knows of the daemon it runs in: facts that are this node's own, not the
//! cluster's (its data dir, ports, handover protocol, and the channel to the daemon's in-place
//! upgrade driver).

use std::net::IpAddr;
use std::path::PathBuf;

use flotilla_model::rest::{NodeUpgradeRequest, NodeUpgradeStatus};
use tokio::sync::{mpsc, oneshot};

use crate::BootstrapToken;

/// The ports one node serves (DESIGN.md's ports table; the same on every node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    /// REST API over HTTPS (9443), always served.
    pub rest: u16,
    /// REST API over plain HTTP (8080), only if the operator enabled it (`--http-port`).
    pub http: Option<u16>,
    /// Internal RPC and Raft.
    pub rpc: u16,
    /// Discovery (Sentinel API).
    pub discovery: u16,
    /// Metrics.
    pub metrics: u16,
}

/// An order to upgrade this node in place, and where the daemon answers once the new daemon
/// has started (or the upgrade could not begin).
#[derive(Debug)]
pub struct UpgradeOrder {
    /// What to upgrade to.
    pub request: NodeUpgradeRequest,
    /// The upgrade's status once it is under way, or why it could not start.
    pub reply: oneshot::Sender<Result<NodeUpgradeStatus, String>>,
}

/// This daemon's own facts.
#[derive(Debug, Clone)]
pub struct LocalNode {
    /// The node's address.
    pub addr: IpAddr,
    /// Its data dir (absolute).
    pub data_dir: PathBuf,
    /// Its ports.
    pub ports: NodePorts,
    /// The handover protocol its binary speaks.
    pub handover_protocol: u32,
    /// The daemon's in-place upgrade driver (absent in tests that run the API alone).
    pub upgrades: Option<mpsc::Sender<UpgradeOrder>>,
    /// The bootstrap token guarding create/join while the node is not part of a cluster.
    pub bootstrap: BootstrapToken,
}

impl LocalNode {
    /// Where the node keeps the status of its latest in-place upgrade.
    pub fn upgrade_status_path(&self) -> PathBuf {
        self.data_dir.join(UPGRADE_STATUS_FILE)
    }
}

/// The file, in a node's data dir, that records its latest in-place upgrade.
pub const UPGRADE_STATUS_FILE: &str = "upgrade.json";
