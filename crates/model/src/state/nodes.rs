//! The cluster and its nodes: settings, secrets, members and their addresses.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ClusterState;
use crate::command::{ClusterChange, ClusterCreation, CommandResult, NodeChange, NodeSpec};
use crate::error::ModelError;

/// A node's numeric id, given by the cluster when the node joins (Redis Software's `uid`).
pub type NodeUid = u64;

/// Cluster-wide settings and the secrets that guard the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// The cluster's name, as given to `cluster create` (Redis Software's FQDN-like name).
    pub name: String,
    /// The operator's login for the REST API and CLI.
    pub credentials: Credentials,
    /// Shared secret that authenticates internal RPC (Raft, node reports) between nodes, and
    /// the password of every shard's engine ([`ClusterState::engine_password`]).
    pub secret: String,
    /// When the cluster was created, in seconds since the Unix epoch (set by the proposer, so
    /// applying the command stays deterministic).
    pub created_at: u64,
    /// The version whose features every node has agreed to use ([`ClusterState::cluster_version`]);
    /// absent in clusters created by the first release, which did not record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_version: Option<String>,
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
    /// The address the node binds for every service (its own IP, e.g. 127.0.0.11), written as
    /// text in JSON.
    pub addr: IpAddr,
    /// Version of the Flotilla package installed on the node.
    pub software_version: String,
    /// The node's operating system as `/etc/os-release` names it (PRETTY_NAME).
    pub os: String,
}

impl ClusterState {
    /// The cluster settings, or the error that says the cluster is not created yet.
    pub fn cluster(&self) -> Result<&Cluster, ModelError> {
        self.cluster.as_ref().ok_or(ModelError::NotBootstrapped)
    }

    /// The password every shard's engine requires: the cluster secret. Replicas, proxies and
    /// the primary node authenticate to engines with it.
    pub fn engine_password(&self) -> Result<&str, ModelError> {
        Ok(&self.cluster()?.secret)
    }

    /// The node bound to `addr`, if any.
    pub fn node_by_addr(&self, addr: IpAddr) -> Option<&Node> {
        self.nodes.values().find(|n| n.addr == addr)
    }

    pub(super) fn create_cluster(
        &mut self,
        creation: ClusterCreation,
    ) -> Result<CommandResult, ModelError> {
        if let Some(existing) = &self.cluster {
            return Err(ModelError::AlreadyExists(format!(
                "cluster '{}' already exists on this node",
                existing.name
            )));
        }
        let ClusterCreation {
            name,
            credentials,
            secret,
            created_at,
            node,
            cluster_version,
        } = creation;
        self.cluster = Some(Cluster {
            name,
            credentials,
            secret,
            created_at,
            cluster_version,
        });
        let uid = self.insert_node(node);
        Ok(CommandResult::NodeAdded { uid })
    }

    pub(super) fn add_node(&mut self, node: NodeSpec) -> Result<CommandResult, ModelError> {
        self.cluster()?;
        if let Some(existing) = self.node_by_addr(node.addr) {
            return Ok(CommandResult::NodeExists { uid: existing.uid });
        }
        if !crate::version::at_least(&node.software_version, self.cluster_version()) {
            return Err(ModelError::InvalidValue(format!(
                "software_version: the node at {} runs {}, older than the cluster version {}; install {} or newer on it, then join",
                node.addr,
                node.software_version,
                self.cluster_version(),
                self.cluster_version()
            )));
        }
        let uid = self.insert_node(node);
        Ok(CommandResult::NodeAdded { uid })
    }

    fn insert_node(&mut self, node: NodeSpec) -> NodeUid {
        let uid = self.next_ids.next_node_uid;
        self.next_ids.next_node_uid += 1;
        self.nodes_mut().insert(
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

    pub(super) fn update_cluster(
        &mut self,
        change: ClusterChange,
    ) -> Result<CommandResult, ModelError> {
        let cluster = self.cluster.as_mut().ok_or(ModelError::NotBootstrapped)?;
        if let Some(name) = change.name {
            cluster.name = name;
        }
        Ok(CommandResult::Ok)
    }

    pub(super) fn update_node(&mut self, change: NodeChange) -> Result<CommandResult, ModelError> {
        let node = self.nodes_mut().get_mut(&change.uid).ok_or_else(|| {
            ModelError::NotFound(format!("node {} is not in the cluster", change.uid))
        })?;
        node.software_version = change.software_version;
        node.os = change.os;
        Ok(CommandResult::Ok)
    }

    pub(super) fn finalize_cluster_version(
        &mut self,
        version: String,
    ) -> Result<CommandResult, ModelError> {
        self.check_finalization(&version)?;
        if crate::version::at_least(self.cluster_version(), &version) {
            return Ok(CommandResult::Ok);
        }
        let cluster = self.cluster.as_mut().ok_or(ModelError::NotBootstrapped)?;
        cluster.cluster_version = Some(version);
        Ok(CommandResult::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{add, create};
    use super::*;
    use crate::command::Command;

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
        let result = state.apply(add("127.0.0.12"));
        assert_eq!(result, CommandResult::Refused(ModelError::NotBootstrapped));
        assert!(state.nodes.is_empty());
    }

    #[test]
    fn the_engine_password_is_the_cluster_secret_once_the_cluster_exists() {
        let mut state = ClusterState::default();
        assert_eq!(state.engine_password(), Err(ModelError::NotBootstrapped));
        state.apply(create());
        assert_eq!(state.engine_password(), Ok("s"));
    }

    #[test]
    fn a_node_address_is_written_as_the_text_0_1_0_wrote() {
        let json = r#"{"uid":3,"addr":"127.0.0.13","software_version":"0.1.0","os":"x"}"#;
        let node: Node = serde_json::from_str(json).unwrap();
        assert_eq!(node.addr, IpAddr::from([127, 0, 0, 13]));
        assert_eq!(serde_json::to_string(&node).unwrap(), json);
        let v6 = r#"{"uid":4,"addr":"fd00::4","software_version":"0.1.0","os":"x"}"#;
        let node: Node = serde_json::from_str(v6).unwrap();
        assert_eq!(serde_json::to_string(&node).unwrap(), v6);
        let join = Command::AddNode(crate::command::NodeAddition {
            node: super::super::testing::spec("127.0.0.12"),
        });
        assert!(serde_json::to_string(&join)
            .unwrap()
            .contains(r#""addr":"127.0.0.12""#));
    }
}
