//! The cluster and its nodes: settings, secrets, members and their addresses.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ClusterState;
use crate::command::{
    ClusterChange, ClusterCreation, CommandResult, NodeChange, NodeHost, NodeReplacement, NodeSpec,
};
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
    /// Shared secret that authenticates internal RPC (Raft, node reports) between nodes; the
    /// engines' user passwords are derived from it ([`ClusterState::engine_credentials`]).
    pub secret: String,
    /// When the cluster was created, in seconds since the Unix epoch (set by the proposer, so
    /// applying the command stays deterministic).
    pub created_at: u64,
    /// The version whose features every node has agreed to use ([`ClusterState::cluster_version`]);
    /// absent in clusters created by the first release, which did not record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_version: Option<String>,
    /// The certificate authority of node-to-node TLS (absent until the cluster version is
    /// 0.2.0 and the primary node made it). Introduced in 0.2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<super::ClusterCa>,
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
    /// Its OS id, package's OS list and directories (empty for 0.1.0 nodes).
    #[serde(default, skip_serializing_if = "NodeHost::is_empty")]
    pub host: NodeHost,
    /// Maintenance mode: its activations and snapshot while the node is in it (absent
    /// otherwise, so the record reads as 0.1.0 wrote it). Introduced in 0.2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<crate::maintenance::NodeMaintenance>,
    /// The node's certificate from the cluster CA (absent until it has one: peers then talk
    /// to it without TLS). Introduced in 0.2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<super::NodeCertificate>,
}

impl ClusterState {
    /// The cluster settings, or the error that says the cluster is not created yet.
    pub fn cluster(&self) -> Result<&Cluster, ModelError> {
        self.cluster.as_ref().ok_or(ModelError::NotBootstrapped)
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
            ca: None,
        });
        let uid = self.insert_node(node);
        Ok(CommandResult::NodeAdded { uid })
    }

    /// Refuses a joining node older than the cluster version (it could not apply what the
    /// cluster already uses).
    fn check_joining_version(&self, node: &NodeSpec) -> Result<(), ModelError> {
        if crate::version::at_least(&node.software_version, self.cluster_version()) {
            return Ok(());
        }
        Err(ModelError::InvalidValue(format!(
            "software_version: the node at {} runs {}, older than the cluster version {}; install {} or newer on it, then join",
            node.addr,
            node.software_version,
            self.cluster_version(),
            self.cluster_version()
        )))
    }

    pub(super) fn add_node(&mut self, node: NodeSpec) -> Result<CommandResult, ModelError> {
        self.cluster()?;
        if let Some(existing) = self.node_by_addr(node.addr) {
            return Ok(CommandResult::NodeExists { uid: existing.uid });
        }
        self.check_joining_version(&node)?;
        let uid = self.insert_node(node);
        Ok(CommandResult::NodeAdded { uid })
    }

    /// [`Command::ReplaceNode`]: `replacement.node` takes the uid of a node that is down (its
    /// record is overwritten; its shards stay assigned to the uid, so the new node's agent
    /// creates them again) or of a node removed earlier (its record comes back).
    pub(super) fn replace_node(
        &mut self,
        replacement: NodeReplacement,
    ) -> Result<CommandResult, ModelError> {
        self.cluster()?;
        let NodeReplacement { uid, node } = replacement;
        if uid == 0 || uid >= self.next_ids.next_node_uid {
            return Err(ModelError::InvalidValue(format!(
                "replace_node: node {uid} never was a member of this cluster; `flotilla status` lists the nodes (join without --replace-node to add a new one)"
            )));
        }
        if let Some(other) = self.node_by_addr(node.addr).filter(|n| n.uid != uid) {
            return Err(ModelError::InvalidValue(format!(
                "replace_node: address {} is node {}; a replacement needs an address no other node uses",
                node.addr, other.uid
            )));
        }
        self.check_joining_version(&node)?;
        self.put_node(uid, node);
        Ok(CommandResult::NodeAdded { uid })
    }

    fn insert_node(&mut self, node: NodeSpec) -> NodeUid {
        let uid = self.next_ids.next_node_uid;
        self.next_ids.next_node_uid += 1;
        self.put_node(uid, node);
        uid
    }

    /// Records `node` under `uid` (a new node, or the replacement of one).
    fn put_node(&mut self, uid: NodeUid, node: NodeSpec) {
        let record = Node {
            uid,
            addr: node.addr,
            software_version: node.software_version,
            os: node.os,
            host: node.host,
            maintenance: None,
            certificate: None,
        };
        self.nodes.insert(uid, record);
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
        let node = self.nodes.get_mut(&change.uid).ok_or_else(|| {
            ModelError::NotFound(format!("node {} is not in the cluster", change.uid))
        })?;
        node.software_version = change.software_version;
        node.os = change.os;
        node.host = change.host;
        Ok(CommandResult::Ok)
    }

    /// Removes a drained node's record; a node already gone is fine (the command may be
    /// proposed again by a resumed action).
    pub(super) fn remove_node(&mut self, uid: NodeUid) -> Result<CommandResult, ModelError> {
        self.cluster()?;
        if !self.nodes.contains_key(&uid) {
            return Ok(CommandResult::Ok);
        }
        let held: Vec<String> = self.shards_on(uid).map(|s| s.uid.to_string()).collect();
        if !held.is_empty() {
            return Err(ModelError::InvalidValue(format!(
                "node {uid} still holds shards {}; drain it first (`flotilla node remove {uid}` moves them)",
                held.join(", ")
            )));
        }
        if self.nodes.len() == 1 {
            return Err(ModelError::InvalidValue(format!(
                "node {uid} is the cluster's last node; a cluster keeps at least one"
            )));
        }
        self.nodes.remove(&uid);
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
        if self.keeps_hashed_passwords() {
            self.hash_bdb_passwords();
        }
        Ok(CommandResult::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{add, create};
    use super::*;

    fn replace(uid: u64, addr: &str) -> Command {
        Command::ReplaceNode(NodeReplacement {
            uid,
            node: super::super::testing::spec(addr),
        })
    }

    #[test]
    fn a_replacement_takes_the_uid_of_a_member_or_of_a_removed_node() {
        let mut state = ClusterState::default();
        state.apply(create());
        state.apply(add("127.0.0.12"));
        state.apply(add("127.0.0.13"));
        // A member that is down, replaced by a machine at another address.
        assert_eq!(
            state.apply(replace(3, "127.0.0.14")),
            CommandResult::NodeAdded { uid: 3 }
        );
        assert_eq!(state.nodes[&3].addr, IpAddr::from([127, 0, 0, 14]));
        assert_eq!(state.nodes.len(), 3, "no node is added");
        // A node removed earlier comes back under its uid.
        state.nodes.remove(&2);
        assert_eq!(
            state.apply(replace(2, "127.0.0.12")),
            CommandResult::NodeAdded { uid: 2 }
        );
        assert_eq!(state.next_ids.next_node_uid, 4, "no uid is used up");
    }

    #[test]
    fn a_replacement_is_refused_for_an_unknown_uid_or_a_taken_address() {
        let mut state = ClusterState::default();
        state.apply(create());
        state.apply(add("127.0.0.12"));
        let before = state.clone();
        let never = state.apply(replace(7, "127.0.0.17"));
        assert!(
            matches!(&never, CommandResult::Refused(ModelError::InvalidValue(m)) if m.contains("node 7 never was a member")),
            "{never:?}"
        );
        let taken = state.apply(replace(2, "127.0.0.11"));
        assert!(
            matches!(&taken, CommandResult::Refused(ModelError::InvalidValue(m)) if m.contains("address 127.0.0.11 is node 1")),
            "{taken:?}"
        );
        assert_eq!(state, before, "a refusal changes nothing");
    }

    #[test]
    fn a_replacement_waits_for_the_cluster_version_that_introduced_it() {
        let mut state = ClusterState::default();
        state.apply(create());
        let refused = state.check_proposable(&replace(1, "127.0.0.11"));
        assert!(
            refused.is_err_and(|e| e.to_string().contains("needs cluster version 0.2.0")),
            "a 0.1.0 member could not decode it"
        );
    }
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
    fn a_drained_node_is_removed_once_and_its_uid_never_comes_back() {
        use crate::bdb::ShardRole;
        use crate::command::NodeRemoval;
        let spec = super::super::testing::bdb_spec("db1", 12000);
        let shards = vec![super::super::testing::plan(2, ShardRole::Primary, 20000)];
        let mut state = super::super::testing::with_db(spec, shards);
        let remove = |uid| Command::RemoveNode(NodeRemoval { uid });
        let before = state.clone();
        let CommandResult::Refused(e) = state.apply(remove(2)) else {
            panic!("a node holding shards is not removed")
        };
        assert!(e.to_string().contains("node 2 still holds shards 1"), "{e}");
        assert!(e.to_string().contains("flotilla node remove 2"), "{e}");
        assert_eq!(state, before, "a refused removal changes nothing");
        assert_eq!(state.apply(remove(1)), CommandResult::Ok);
        assert_eq!(state.apply(remove(1)), CommandResult::Ok, "idempotent");
        assert!(!state.nodes.contains_key(&1));
        state.shards.clear();
        assert!(
            matches!(state.apply(remove(2)), CommandResult::Refused(_)),
            "the last node stays"
        );
        assert_eq!(
            state.apply(add("127.0.0.11")),
            CommandResult::NodeAdded { uid: 3 },
            "a removed node joining again gets a new uid"
        );
    }

    #[test]
    fn engine_credentials_are_legacy_until_the_cluster_version_is_0_2_0() {
        let mut state = ClusterState::default();
        assert_eq!(state.engine_credentials(), Err(ModelError::NotBootstrapped));
        state.apply(create());
        let credentials = state.engine_credentials().unwrap();
        assert_eq!(credentials.secret, "s");
        assert!(credentials.legacy, "a 0.1.0 cluster keeps the default user");
        assert_eq!(credentials.users, crate::EngineUsers::derive("s"));
        state.cluster.as_mut().unwrap().cluster_version = Some("0.2.0".into());
        assert!(!state.engine_credentials().unwrap().legacy);
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
