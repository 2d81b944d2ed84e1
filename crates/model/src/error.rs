//! Errors raised when a command does not fit the current cluster state.

use serde::{Deserialize, Serialize};

/// Why a command was refused by the state machine.
///
/// Carried inside [`crate::CommandResult`] (it is part of the replicated outcome, so it must be
/// serializable and identical on every node) and mapped to an HTTP status by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error_code", content = "description", rename_all = "snake_case")]
pub enum ModelError {
    /// The cluster was already created on this node's store.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object named in the command does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A field holds a value the cluster cannot accept.
    #[error("{0}")]
    InvalidValue(String),
    /// The command needs a created cluster.
    #[error("the cluster has not been created yet: run `flotilla cluster create`")]
    NotBootstrapped,
}
