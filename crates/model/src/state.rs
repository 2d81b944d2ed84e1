//! The replicated cluster state: what every node agrees on once a command is committed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult, NodeSpec};
use crate::error::ModelError;

/// A node's numeric id, given by the cluster when the node joins (Redis Software's `uid`).
pub type NodeUid = u64;

/// The whole replicated configuration: the state machine the Raft log drives.
///
/// Fields added in later versions must carry `#[serde(default)]` (see the crate docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Cluster-wide settings; `None` until `cluster create` has been applied.
    #[serde(default)]
    pub cluster: Option<Cluster>,
    /// Every member node by uid.
    #[serde(default)]
    pub nodes: BTreeMap<NodeUid, Node>,
    /// Counters that hand out uids for nodes, databases, shards and actions.
    #[serde(default)]
    pub next_ids: IdCounters,
}

/// Cluster-wide settings and the secrets that guard the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// The cluster's name, as given to `cluster create` (Redis Software's FQDN-like name).
    pub name: String,
    /// The operator's login for the REST API and CLI.
    pub credentials: Credentials,
    /// Shared secret that authenticates internal RPC (Raft, node reports) between nodes.
    pub secret: String,
    /// When the cluster was created, in seconds since the Unix epoch (set by the proposer, so
    /// applying the command stays deterministic).
    pub created_at: u64,
}

/// The operator's user name and a password hash (PHC string) — never the password itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// User name for basic auth.
    pub username: String,
    /// Password hash in PHC string format (argon2id), produced by the API layer.
    pub password_hash: String,
}

/// One member machine running the flotilla daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The node's uid.
    pub uid: NodeUid,
    /// The address the node binds for every service (its own IP, e.g. 127.0.0.11).
    pub addr: String,
    /// Version of the Flotilla package installed on the node.
    pub software_version: String,
    /// The node's operating system as `/etc/os-release` names it (PRETTY_NAME).
    pub os: String,
}

/// Monotonic counters for uids; a uid is never handed out twice, even after a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdCounters {
    /// The uid the next joining node receives.
    pub next_node_uid: u64,
}

impl Default for IdCounters {
    fn default() -> Self {
        Self { next_node_uid: 1 }
    }
}

impl ClusterState {
    /// Applies one committed command. Deterministic: the same state and command give the same
    /// result on every node, and a refused command leaves the state untouched.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        let outcome = match command {
            Command::CreateCluster {
                name,
                credentials,
                secret,
                created_at,
                node,
            } => self.create_cluster(name, credentials, secret, created_at, node),
            Command::AddNode { node } => self.add_node(node),
            Command::UpdateCluster { name } => self.update_cluster(name),
            Command::UpdateNode {
                uid,
                software_version,
                os,
            } => self.update_node(uid, software_version, os),
            Command::Unknown => Ok(CommandResult::Ignored),
        };
        outcome.unwrap_or_else(CommandResult::Refused)
    }

    /// The cluster settings, or the error that says the cluster is not created yet.
    pub fn cluster(&self) -> Result<&Cluster, ModelError> {
        self.cluster.as_ref().ok_or(ModelError::NotBootstrapped)
    }

    /// The node bound to `addr`, if any.
    pub fn node_by_addr(&self, addr: &str) -> Option<&Node> {
        self.nodes.values().find(|n| n.addr == addr)
    }

    fn create_cluster(
        &mut self,
        name: String,
        credentials: Credentials,
        secret: String,
        created_at: u64,
        node: NodeSpec,
    ) -> Result<CommandResult, ModelError> {
        if let Some(existing) = &self.cluster {
            return Err(ModelError::AlreadyExists(format!(
                "cluster '{}' already exists on this node",
                existing.name
            )));
        }
        self.cluster = Some(Cluster {
            name,
            credentials,
            secret,
            created_at,
        });
        let uid = self.insert_node(node);
        Ok(CommandResult::NodeAdded { uid })
    }

    fn add_node(&mut self, node: NodeSpec) -> Result<CommandResult, ModelError> {
        self.cluster()?;
        if let Some(existing) = self.node_by_addr(&node.addr) {
            return Ok(CommandResult::NodeExists { uid: existing.uid });
        }
        let uid = self.insert_node(node);
        Ok(CommandResult::NodeAdded { uid })
    }

    fn insert_node(&mut self, node: NodeSpec) -> NodeUid {
        let uid = self.next_ids.next_node_uid;
        self.next_ids.next_node_uid += 1;
        self.nodes.insert(
            uid,
            Node {
                uid,
                addr: node.addr,
                software_version: node.software_version,
                os: node.os,
            },
        );
        uid
    }

    fn update_cluster(&mut self, name: Option<String>) -> Result<CommandResult, ModelError> {
        let cluster = self.cluster.as_mut().ok_or(ModelError::NotBootstrapped)?;
        if let Some(name) = name {
            cluster.name = name;
        }
        Ok(CommandResult::Ok)
    }

    fn update_node(
        &mut self,
        uid: NodeUid,
        software_version: String,
        os: String,
    ) -> Result<CommandResult, ModelError> {
        let node = self
            .nodes
            .get_mut(&uid)
            .ok_or_else(|| ModelError::NotFound(format!("node {uid} is not in the cluster")))?;
        node.software_version = software_version;
        node.os = os;
        Ok(CommandResult::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str) -> NodeSpec {
        NodeSpec {
            addr: addr.into(),
            software_version: "0.1.0".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
        }
    }

    fn create() -> Command {
        Command::CreateCluster {
            name: "c1".into(),
            credentials: Credentials {
                username: "admin".into(),
                password_hash: "x".into(),
            },
            secret: "s".into(),
            created_at: 1,
            node: spec("127.0.0.11"),
        }
    }

    #[test]
    fn create_gives_uid_one_and_refuses_a_second_create() {
        let mut state = ClusterState::default();
        assert_eq!(state.apply(create()), CommandResult::NodeAdded { uid: 1 });
        let before = state.clone();
        assert!(matches!(
            state.apply(create()),
            CommandResult::Refused(ModelError::AlreadyExists(_))
        ));
        assert_eq!(state, before, "a refused command changes nothing");
    }

    #[test]
    fn nodes_get_increasing_uids_and_a_known_address_keeps_its_uid() {
        let mut state = ClusterState::default();
        state.apply(create());
        let add = |a: &str| Command::AddNode { node: spec(a) };
        assert_eq!(
            state.apply(add("127.0.0.12")),
            CommandResult::NodeAdded { uid: 2 }
        );
        assert_eq!(
            state.apply(add("127.0.0.12")),
            CommandResult::NodeExists { uid: 2 }
        );
        assert_eq!(
            state.apply(add("127.0.0.13")),
            CommandResult::NodeAdded { uid: 3 }
        );
    }

    #[test]
    fn add_node_before_create_is_refused() {
        let mut state = ClusterState::default();
        let result = state.apply(Command::AddNode {
            node: spec("127.0.0.12"),
        });
        assert_eq!(result, CommandResult::Refused(ModelError::NotBootstrapped));
        assert!(state.nodes.is_empty());
    }

    #[test]
    fn state_written_by_a_newer_version_with_extra_fields_still_decodes() {
        let json = r#"{"cluster":null,"nodes":{},"next_ids":{"next_node_uid":4,"next_bdb_uid":9},"bdbs":{}}"#;
        let state: ClusterState = serde_json::from_str(json).unwrap();
        assert_eq!(state.next_ids.next_node_uid, 4);
    }
}
