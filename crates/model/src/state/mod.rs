//! The replicated cluster state: what every node agrees on once a command is committed.
//!
//! [`ClusterState`] is split by the object each part owns: the cluster and its nodes
//! (`nodes.rs`), databases (`bdbs.rs`), shards and their slot groups (`shards.rs`) and actions
//! (`actions.rs`). Each part holds that object's queries (what every crate asks of the state,
//! answered once here) and the commands that change it.

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::action::{Action, ActionUid};
use crate::bdb::{Bdb, Shard};
use crate::command::{Command, CommandResult};

mod actions;
mod bdbs;
mod certificates;
mod crdbs;
mod nodes;
mod shards;
mod table;

pub use certificates::{ClusterCa, NodeCertificate};
pub use nodes::{Cluster, Credentials, Node, NodeUid};
pub use shards::SlotGroup;
pub use table::Table;

/// The whole replicated configuration: the state machine the Raft log drives.
///
/// Fields added in later versions must carry `#[serde(default)]` (see the crate docs).
///
/// Each collection is a persistent ordered map ([`OrdMap`], a B-tree whose nodes are shared
/// between copies; encoded as the same JSON object a `BTreeMap` gives, keys as strings, in key
/// order), the databases and shards with the keys their queries look up ([`Table`]): the store
/// shares the state with its readers and copies it on write, and a change then copies only the
/// few tree nodes on the path to the object it touches, so neither its copy nor its checks grow
/// with the number of databases, shards or actions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Cluster-wide settings; `None` until `cluster create` has been applied.
    #[serde(default)]
    pub cluster: Option<Cluster>,
    /// Every member node by uid.
    #[serde(default)]
    pub nodes: OrdMap<NodeUid, Node>,
    /// Counters that hand out uids for nodes, databases, shards and actions.
    #[serde(default)]
    pub next_ids: IdCounters,
    /// Databases by uid.
    #[serde(default)]
    pub bdbs: Table<Bdb>,
    /// Shards by uid.
    #[serde(default)]
    pub shards: Table<Shard>,
    /// Actions by uid (finished ones are kept for `flotilla action list`).
    #[serde(default)]
    pub actions: OrdMap<ActionUid, Action>,
    /// Active-Active databases this cluster takes part in, by GUID (issue 15).
    #[serde(default, skip_serializing_if = "OrdMap::is_empty")]
    pub crdbs: OrdMap<String, crate::crdb::Crdb>,
}

/// Monotonic counters for uids; a uid is never handed out twice, even after a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdCounters {
    /// The uid the next joining node receives.
    pub next_node_uid: u64,
    /// The uid the next database receives.
    #[serde(default = "first_uid")]
    pub next_bdb_uid: u64,
    /// The uid the next shard receives.
    #[serde(default = "first_uid")]
    pub next_shard_uid: u64,
    /// The uid the next action receives.
    #[serde(default = "first_uid")]
    pub next_action_uid: u64,
}

fn first_uid() -> u64 {
    1
}

impl Default for IdCounters {
    fn default() -> Self {
        Self {
            next_node_uid: 1,
            next_bdb_uid: 1,
            next_shard_uid: 1,
            next_action_uid: 1,
        }
    }
}

impl ClusterState {
    /// Applies one committed command. Deterministic: the same state and command give the same
    /// result on every node, and a refused command leaves the state untouched.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        let outcome = match command {
            Command::CreateCluster(creation) => self.create_cluster(creation),
            Command::AddNode(addition) => self.add_node(addition.node),
            Command::ReplaceNode(replacement) => self.replace_node(replacement),
            Command::UpdateCluster(change) => self.update_cluster(change),
            Command::UpdateNode(change) => self.update_node(change),
            Command::CreateBdb(creation) => self.create_bdb(creation),
            Command::DeleteBdb(deletion) => self.delete_bdb(deletion.uid),
            Command::UpdateBdb(change) => self.update_bdb(change),
            Command::PromoteShard(promotion) => self.promote_shard(promotion),
            Command::HoldShard(hold) => self.hold_shard(hold),
            Command::AddTemporaryReplica(addition) => self.add_temporary_replica(addition),
            Command::AddReplacement(addition) => self.add_replacement(addition),
            Command::ReplaceShard(replacement) => self.replace_shard(replacement.replacement),
            Command::RemoveShard(removal) => self.remove_shard(removal.uid),
            Command::CreateAction(creation) => self.create_action(creation),
            Command::UpdateAction(update) => self.update_action(update),
            Command::CancelAction(cancellation) => self.cancel_action(cancellation.uid),
            Command::SetShardVersion(change) => self.set_shard_version(change),
            Command::SetBdbVersion(change) => self.set_bdb_version(change),
            Command::FinalizeClusterVersion(finalization) => {
                self.finalize_cluster_version(finalization.version)
            }
            Command::CompleteMigration(migration) => self.complete_migration(migration),
            Command::RemoveNode(removal) => self.remove_node(removal.uid),
            Command::PruneActions(pruning) => Ok(self.prune_actions(&pruning.uids)),
            Command::RecordDrain(record) => self.record_drain(record),
            Command::ResumeAction(resumption) => self.resume_action(resumption.uid),
            Command::EnterMaintenance(entry) => self.enter_maintenance(entry),
            Command::ExitMaintenance(exit) => self.exit_maintenance(exit),
            Command::SetClusterCa(ca) => self.set_cluster_ca(ca),
            Command::SetNodeCertificate(issue) => self.set_node_certificate(issue),
            Command::RotateNodeCertificates(_) => self.rotate_node_certificates(),
            Command::CreateCrdb(creation) => self.create_crdb(creation),
            Command::UpdateCrdb(change) => self.update_crdb(change),
            Command::DeleteCrdb(deletion) => self.delete_crdb(&deletion.guid),
            Command::Unknown => Ok(CommandResult::Ignored),
        };
        outcome.unwrap_or_else(CommandResult::Refused)
    }
}

/// States and specs the model's unit tests build on.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::bdb::{BdbSpec, ShardPlan, ShardRole, SlotRange};
    use crate::command::{ClusterCreation, NodeAddition, NodeSpec};

    /// A node as it introduces itself.
    pub(crate) fn spec(addr: &str) -> NodeSpec {
        NodeSpec {
            addr: addr.parse().unwrap(),
            software_version: "0.1.0".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            host: Default::default(),
        }
    }

    /// `cluster create` on 127.0.0.11.
    pub(crate) fn create() -> Command {
        Command::CreateCluster(ClusterCreation {
            name: "c1".into(),
            credentials: Credentials {
                username: "admin".into(),
                password_hash: "x".into(),
            },
            secret: "s".into(),
            created_at: 1,
            node: spec("127.0.0.11"),
            cluster_version: None,
        })
    }

    /// `cluster join` of `addr`.
    pub(crate) fn add(addr: &str) -> Command {
        Command::AddNode(NodeAddition { node: spec(addr) })
    }

    /// A one-shard replicated database.
    pub(crate) fn bdb_spec(name: &str, port: u16) -> BdbSpec {
        BdbSpec {
            name: name.into(),
            port,
            memory_size: 100 << 20,
            shards_count: 1,
            replication: true,
            data_persistence: crate::DataPersistence::Disabled,
            redis_version: crate::EngineVersion::Redis62,
            authentication_redis_pass: None,
            authentication_redis_pass_sha256: None,
            limits: Default::default(),
            tls_mode: Default::default(),
            config: Default::default(),
            crdt: None,
        }
    }

    /// A shard of `slots` on `node_uid`.
    pub(crate) fn plan_on(
        node_uid: u64,
        role: ShardRole,
        slots: SlotRange,
        port: u16,
    ) -> ShardPlan {
        ShardPlan {
            node_uid,
            role,
            assigned_slots: slots,
            port,
        }
    }

    /// A shard holding every slot on `node_uid`.
    pub(crate) fn plan(node_uid: u64, role: ShardRole, port: u16) -> ShardPlan {
        plan_on(node_uid, role, SlotRange::even(0, 1), port)
    }

    /// Nodes 1 (127.0.0.11) and 2 (127.0.0.12).
    pub(crate) fn cluster_with_two_nodes() -> ClusterState {
        let mut state = ClusterState::default();
        state.apply(create());
        state.apply(add("127.0.0.12"));
        state
    }

    /// Nodes 1 and 2 and database 1 of `spec` with `shards`.
    pub(crate) fn with_db(spec: BdbSpec, shards: Vec<ShardPlan>) -> ClusterState {
        let mut state = cluster_with_two_nodes();
        let created = state.apply(Command::CreateBdb(crate::command::BdbCreation {
            bdb: spec,
            created_at: 5,
            shards,
        }));
        assert_eq!(created, CommandResult::BdbCreated { uid: 1 });
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_written_by_a_newer_version_with_extra_fields_still_decodes() {
        let json = r#"{"cluster":null,"nodes":{},"next_ids":{"next_node_uid":4,"next_bdb_uid":9},"bdbs":{}}"#;
        let state: ClusterState = serde_json::from_str(json).unwrap();
        assert_eq!(state.next_ids.next_node_uid, 4);
    }

    /// A state as release 0.1.0 (commit 07de9e1) wrote it into its snapshots: two nodes, a
    /// replicated database mid-upgrade (a held primary, a replacement) and its action.
    const STATE_0_1_0: &str = r#"{"cluster":{"name":"c1","credentials":{"username":"admin","password_hash":"$argon2id$v=19$x"},"secret":"s3cret","created_at":1700000000},"nodes":{"1":{"uid":1,"addr":"127.0.0.11","software_version":"0.1.0","os":"Debian GNU/Linux 12 (bookworm)"},"2":{"uid":2,"addr":"127.0.0.12","software_version":"0.1.0","os":"Debian GNU/Linux 12 (bookworm)"}},"next_ids":{"next_node_uid":3,"next_bdb_uid":2,"next_shard_uid":4,"next_action_uid":2},"bdbs":{"1":{"uid":1,"name":"db1","port":12000,"memory_size":104857600,"shards_count":2,"replication":true,"data_persistence":"aof","redis_version":"redis-7.0","authentication_redis_pass":"pw","created_at":1700000001}},"shards":{"1":{"uid":1,"bdb_uid":1,"node_uid":1,"role":"master","assigned_slots":"0-8191","port":20001,"redis_version":"redis-7.0","held":true,"temporary":false},"2":{"uid":2,"bdb_uid":1,"node_uid":2,"role":"slave","assigned_slots":"0-8191","port":20001,"redis_version":"redis-7.0","held":false,"temporary":false},"3":{"uid":3,"bdb_uid":1,"node_uid":1,"role":"slave","assigned_slots":"0-8191","port":20002,"redis_version":"valkey-8.1","held":false,"temporary":true}},"actions":{"1":{"uid":1,"kind":{"type":"db_upgrade","bdb_uid":1,"redis_version":"valkey-8.1","preserve_roles":true,"parallel_shards":2,"discard_data":false,"original_masters":[1,3]},"status":"running","step_index":1,"step":"sync_replica 0-8191","steps_total":13,"error":null,"cancel_requested":false,"created_at":1700000002,"updated_at":1700000003,"history":[{"step":"upgrade_replica 0-8191","duration_ms":1234}]}}}"#;

    #[test]
    fn the_state_keeps_the_encoding_of_0_1_0() {
        let state: ClusterState = serde_json::from_str(STATE_0_1_0).unwrap();
        assert_eq!(
            state.nodes[&2].addr,
            std::net::IpAddr::from([127, 0, 0, 12]),
            "a node's address is typed"
        );
        assert_eq!(serde_json::to_string(&state).unwrap(), STATE_0_1_0);
    }
}
