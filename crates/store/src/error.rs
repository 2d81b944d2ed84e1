//! Errors of the cluster store, shaped so they can cross nodes when a request is forwarded.

use flotilla_model::ModelError;
use serde::{Deserialize, Serialize};

/// Why a store operation failed. Serializable: a follower that forwards a proposal or a join to
/// the primary node hands the primary's error back to its caller unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "description", rename_all = "snake_case")]
pub enum StoreError {
    /// This node has not created or joined a cluster.
    #[error("this node is not part of a cluster yet: run `flotilla cluster create` or `flotilla cluster join`")]
    NotBootstrapped,
    /// This node already belongs to a cluster (create/join refused).
    #[error("{0}")]
    AlreadyBootstrapped(String),
    /// Wrong user name or password.
    #[error("wrong user name or password for the cluster")]
    Unauthorized,
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Refused(ModelError),
    /// No primary node is known right now (election in progress or quorum lost).
    #[error("no primary node is reachable right now (election in progress or quorum lost): {0}")]
    NoLeader(String),
    /// Another node could not be reached.
    #[error("node {addr} did not answer: {reason}")]
    Unreachable {
        /// The node's address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// A request did not make sense (e.g. a join naming no seed node).
    #[error("{0}")]
    InvalidRequest(String),
    /// A local storage or Raft failure.
    #[error("cluster store failure: {0}")]
    Internal(String),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Internal(e.to_string())
    }
}
