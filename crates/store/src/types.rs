//! The Raft type configuration: what the log carries and how nodes are named.

use std::io::Cursor;

use flotilla_model::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Flotilla's Raft types: log entries carry [`Command`]s, applying one yields a
    /// [`CommandResult`], nodes are named by their uid and reached at `ip:rpc_port`.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
);

/// A running Raft member of the cluster store.
pub type Raft = openraft::Raft<TypeConfig>;
/// Raft's node id: the node's uid.
pub type NodeId = u64;
/// How Raft reaches a node: its RPC address `ip:port`.
pub type RaftNode = openraft::BasicNode;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;
/// A log id (term, leader, index).
pub type LogId = openraft::LogId<NodeId>;
