//! Typed commands: the only way the replicated cluster state changes.
//!
//! Every kind of [`Command`] carries one struct, so the code that proposes a change, the code
//! that applies it and the tests name the same fields. The JSON is that of the struct's fields
//! next to `kind` (serde's internally tagged newtype variant), exactly as the first release wrote
//! its struct variants: the tests below decode that release's samples and re-encode them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::action::{ActionKind, ActionStatus, ActionUid, StepRecord};
use crate::bdb::{BdbSpec, BdbUid, ShardPlan, ShardUid};
use crate::engine_version::EngineVersion;
use crate::error::ModelError;
use crate::state::{Credentials, NodeUid};

/// One change to the cluster state, proposed through Raft and applied on every node.
///
/// Internally tagged by `kind` so that a kind unknown to an older node decodes as
/// [`Command::Unknown`] (see the crate docs on cross-version encoding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    /// Creates the cluster with its first node (uid 1).
    CreateCluster(ClusterCreation),
    /// Adds a joining node; a node already known by address keeps its uid.
    AddNode(NodeAddition),
    /// Puts a freshly installed node in the place of a node that is down or was removed: it
    /// takes that node's uid (and its shards, which its agent creates again and syncs).
    /// Introduced in 0.2.0.
    ReplaceNode(NodeReplacement),
    /// Changes cluster settings; `None` fields stay as they are.
    UpdateCluster(ClusterChange),
    /// Records a node's new software version or OS (after an upgrade or a restart).
    UpdateNode(NodeChange),
    /// Creates a database with its shards placed as planned.
    CreateBdb(BdbCreation),
    /// Changes a database's memory limit or client password; `None` fields stay as they are.
    UpdateBdb(BdbChange),
    /// Deletes a database and its shards (agents stop the engines).
    DeleteBdb(BdbDeletion),
    /// Makes a replica shard the primary of its slot range (failover, switchover); the previous
    /// primary becomes a replica.
    PromoteShard(ShardPromotion),
    /// Adds a temporary replica to a slot range (an upgrade of a database without
    /// replication moves its data through it).
    AddTemporaryReplica(TemporaryReplicaAddition),
    /// Adds the replacement of a primary shard during a replicated database's upgrade: a
    /// temporary replica on the primary's own node, running the new engine, that syncs from the
    /// same RDB stream as the upgraded replica and takes the old primary's place
    /// ([`Command::ReplaceShard`]) once the primary role moved away.
    AddReplacement(ReplacementAddition),
    /// Puts a replacement in the place of the shard it replaces: removes the other,
    /// non-temporary shard of its slot range on its node (a replica by then) and makes the
    /// replacement permanent, in one step.
    ReplaceShard(ShardReplacement),
    /// Removes a temporary replica (its agent stops the engine and deletes its data).
    RemoveShard(ShardRemoval),
    /// Sets or clears the switchover hold on a primary shard's slots.
    HoldShard(ShardHold),
    /// Starts an action; refused while another running action touches the same database.
    CreateAction(ActionCreation),
    /// Records an action's progress: the step it reached, or how it ended.
    UpdateAction(ActionUpdate),
    /// Asks a running action to stop at its next safe step boundary.
    CancelAction(ActionCancellation),
    /// Sets the engine version a shard should run (agents restart it on that engine).
    SetShardVersion(ShardVersionChange),
    /// Records a database's engine version once all its shards run it.
    SetBdbVersion(BdbVersionChange),
    /// Moves the cluster version forward once every node runs that version (finalization of a
    /// software upgrade). Introduced in 0.2.0.
    FinalizeClusterVersion(ClusterVersionFinalization),
    /// The new copy of a migrated shard takes its place: the old copy (a replica by then) is
    /// removed and the new one becomes permanent, in one step. Introduced in 0.2.0.
    CompleteMigration(ShardMigration),
    /// Removes a drained node's record once it left the Raft membership (its uid is never
    /// handed out again). Introduced in 0.2.0.
    RemoveNode(NodeRemoval),
    /// Drops finished actions the primary node chose by age and count (running ones are never
    /// dropped). Introduced in 0.2.0.
    PruneActions(ActionPruning),
    /// Records how an old node drains in a rolling cluster upgrade (the node added for it, where
    /// its shards go); the first record stays. Introduced in 0.2.0.
    RecordDrain(DrainRecord),
    /// Sets a paused or failed action running again at its step (`flotilla action resume`).
    /// Introduced in 0.2.0.
    ResumeAction(ActionResumption),
    /// Records an activation of maintenance mode on a node (and its snapshot): no new shard
    /// is placed on it. Introduced in 0.2.0.
    EnterMaintenance(crate::maintenance::MaintenanceEntry),
    /// Ends an activation of maintenance mode; with the last one the mark and the snapshot go.
    /// Introduced in 0.2.0.
    ExitMaintenance(crate::maintenance::MaintenanceExit),
    /// Gives the cluster its certificate authority (made by the primary node once the cluster
    /// version is 0.2.0); refused when it has one. Introduced in 0.2.0.
    SetClusterCa(crate::state::ClusterCa),
    /// Records the certificate the CA issued to a node (at join, after the CA was made, or at
    /// a rotation). Introduced in 0.2.0.
    SetNodeCertificate(NodeCertificateIssue),
    /// Orders new node certificates from the same CA (`flotilla cluster certificates
    /// rotate`): every node asks for one and takes it into use without a restart. Introduced
    /// in 0.2.0.
    RotateNodeCertificates(CertificateRotation),
    /// Creates this cluster's instance of an Active-Active database in one step: the local
    /// database (its `spec.crdt` set, shards placed as for `CreateDb`) and the CRDB it belongs
    /// to. Introduced in 0.2.0.
    CreateCrdb(CrdbCreation),
    /// Changes a CRDB: its instances, removed (ghost) instance ids, feature set version, or the
    /// local instance's protocol version. Introduced in 0.2.0.
    UpdateCrdb(CrdbChange),
    /// Deletes this cluster's instance of a CRDB: the CRDB record, the local database and its
    /// shards. Introduced in 0.2.0.
    DeleteCrdb(CrdbDeletion),
    /// A command kind this software version does not know; applying it changes nothing.
    #[serde(other)]
    Unknown,
}

/// [`Command::CreateCluster`]: the new cluster and its first node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCreation {
    /// Cluster name.
    pub name: String,
    /// Operator credentials (hashed).
    pub credentials: Credentials,
    /// Internal RPC secret.
    pub secret: String,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// The creating node.
    pub node: NodeSpec,
    /// The cluster version: the creating node's software version (absent from clusters created
    /// by the first release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_version: Option<String>,
}

/// [`Command::SetNodeCertificate`]: the node and its new certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificateIssue {
    /// The node.
    pub uid: NodeUid,
    /// Its certificate.
    #[serde(flatten)]
    pub certificate: crate::state::NodeCertificate,
}

/// [`Command::CreateCrdb`]: the CRDB as this cluster keeps it, its local database and where
/// that database's shards go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbCreation {
    /// The CRDB (its `local_bdb_uid` is set by the store to the database it creates).
    pub crdb: crate::crdb::Crdb,
    /// The local database; its `crdt` names the CRDB and the local instance.
    pub bdb: BdbSpec,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// Where each of the database's shards goes.
    pub shards: Vec<ShardPlan>,
}

/// [`Command::UpdateCrdb`]: what changes on a CRDB; `None` fields stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbChange {
    /// The CRDB's GUID.
    pub guid: String,
    /// Its instances from now on (instances added or removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<crate::crdb::CrdbInstance>>,
    /// Removed instance ids to add to `ghost_instance_ids` (their ops are refused from then on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ghost_instance_ids: Vec<crate::crdb::CrdtReplicaId>,
    /// The CRDB's new feature set version (also the local database's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub featureset_version: Option<u16>,
    /// The local instance's new protocol version (its database's `crdt_protocol_version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crdt_protocol_version: Option<u16>,
}

/// [`Command::DeleteCrdb`]: the CRDB whose local instance goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbDeletion {
    /// The CRDB's GUID.
    pub guid: String,
}

/// [`Command::RotateNodeCertificates`]: nothing but the order itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRotation {}

/// [`Command::AddNode`]: the joining node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddition {
    /// The joining node.
    pub node: NodeSpec,
}

/// [`Command::ReplaceNode`]: the node replaced and the node that takes its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReplacement {
    /// The uid the new node takes: a member that is down, or a node removed earlier.
    pub uid: NodeUid,
    /// The new node (its address may differ from the replaced one's).
    pub node: NodeSpec,
}

/// [`Command::UpdateCluster`]: the settings that change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterChange {
    /// New cluster name.
    #[serde(default)]
    pub name: Option<String>,
}

/// [`Command::UpdateNode`]: what a node runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChange {
    /// The node.
    pub uid: NodeUid,
    /// Its software version now.
    pub software_version: String,
    /// Its OS now.
    pub os: String,
    /// Its OS id, package's OS list and directories now (nodes from 0.2.0 on; the first
    /// release ignores the field).
    #[serde(default, skip_serializing_if = "NodeHost::is_empty")]
    pub host: NodeHost,
}

/// [`Command::CreateBdb`]: the database and where its shards go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BdbCreation {
    /// The database.
    pub bdb: BdbSpec,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// Where each shard goes.
    pub shards: Vec<ShardPlan>,
}

/// [`Command::UpdateBdb`]: the database settings that change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BdbChange {
    /// The database.
    pub uid: BdbUid,
    /// New memory limit in bytes.
    #[serde(default)]
    pub memory_size: Option<u64>,
    /// New client password. (The first release meant `Some(None)` to remove it, but that
    /// encodes as `null`, which decodes as `None`: use `remove_authentication_redis_pass`.)
    #[serde(default)]
    pub authentication_redis_pass: Option<Option<String>>,
    /// Removes the client password. Introduced in 0.2.0: proposed only once the cluster
    /// version allows it ([`Command::introduced_in`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_authentication_redis_pass: bool,
    /// New client password as its SHA-256 hex (replaces a plaintext one). Introduced in
    /// 0.2.0: how a password is set once the cluster version is 0.2.0, so the plaintext
    /// never reaches the Raft log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_redis_pass_sha256: Option<String>,
    /// New client-connection limits. Introduced in 0.2.0.
    #[serde(flatten)]
    pub limits: crate::bdb::ClientLimitsChange,
    /// New TLS mode of the endpoint. Introduced in 0.2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<crate::bdb::TlsMode>,
    /// Engine settings to set (canonical names, checked values), merged into the database's.
    /// Introduced in 0.2.0.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config: crate::DatabaseConfig,
}

/// [`Command::FinalizeClusterVersion`]: the version the cluster moves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterVersionFinalization {
    /// The new cluster version; every node must run it or newer.
    pub version: String,
}

/// [`Command::CompleteMigration`]: the old copy of a migrated shard and its new copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMigration {
    /// The shard that moved away (removed).
    pub old: ShardUid,
    /// Its new copy on the target node (made permanent).
    pub new: ShardUid,
}

/// [`Command::RemoveNode`]: the node whose record goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRemoval {
    /// The node; it must hold no shard any more.
    pub uid: NodeUid,
}

/// [`Command::DeleteBdb`]: the database to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BdbDeletion {
    /// The database.
    pub uid: BdbUid,
}

/// [`Command::PromoteShard`]: the shard that becomes its slot range's primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPromotion {
    /// The shard to promote.
    pub uid: ShardUid,
    /// Only if its primary's slots are still held (a planned switchover): a switchover whose
    /// hold was released meanwhile (by a new primary node repairing it) must not complete.
    #[serde(default)]
    pub require_held: bool,
}

/// [`Command::AddTemporaryReplica`]: where the temporary replica goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemporaryReplicaAddition {
    /// The database.
    pub bdb_uid: BdbUid,
    /// Where it goes (its role is always replica).
    pub plan: ShardPlan,
    /// The engine it runs.
    pub redis_version: EngineVersion,
}

/// [`Command::AddReplacement`]: the primary shard to replace and its replacement's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacementAddition {
    /// The database.
    pub bdb_uid: BdbUid,
    /// The shard it replaces (its node and slot range are the replacement's).
    pub replaces: ShardUid,
    /// Its port on that node.
    pub port: u16,
    /// The engine it runs.
    pub redis_version: EngineVersion,
}

/// [`Command::ReplaceShard`]: the replacement that takes its old shard's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReplacement {
    /// The replacement (added by [`Command::AddReplacement`]).
    pub replacement: ShardUid,
}

/// [`Command::RemoveShard`]: the temporary replica to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRemoval {
    /// The shard.
    pub uid: ShardUid,
}

/// [`Command::HoldShard`]: the primary shard whose slots are held or released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardHold {
    /// The primary shard.
    pub uid: ShardUid,
    /// Hold (true) or release (false).
    pub held: bool,
}

/// [`Command::CreateAction`]: the action and its plan's first step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionCreation {
    /// What it does.
    pub action: ActionKind,
    /// Its plan's length.
    pub steps_total: u32,
    /// Its first step's name.
    pub first_step: String,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
}

/// [`Command::UpdateAction`]: the step an action reached, or how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionUpdate {
    /// The action.
    pub uid: ActionUid,
    /// Its status now.
    pub status: ActionStatus,
    /// The step to run next.
    pub step_index: u32,
    /// That step's name.
    pub step: String,
    /// The error, when it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Time of the change, seconds since the epoch.
    pub updated_at: u64,
    /// The step that just finished and how long it took.
    #[serde(default)]
    pub finished: Option<StepRecord>,
    /// Applied only while the action is still at this step (a deposed primary node must
    /// not rewind or fail an action the new primary node drives).
    #[serde(default)]
    pub expected_step: Option<u32>,
}

/// [`Command::CancelAction`]: the action to stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionCancellation {
    /// The action.
    pub uid: ActionUid,
}

/// [`Command::RecordDrain`]: the cluster upgrade, and how one of its old nodes drains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    /// The cluster upgrade action.
    pub action_uid: ActionUid,
    /// How the old node drains.
    pub drain: crate::action::NodeDrain,
}

/// [`Command::ResumeAction`]: the action to continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResumption {
    /// The action.
    pub uid: ActionUid,
}

/// [`Command::PruneActions`]: the finished actions to drop, listed by the primary node (see
/// [`ClusterState::prunable_actions`](crate::ClusterState::prunable_actions)) so that every
/// member drops exactly the same ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionPruning {
    /// The actions.
    pub uids: Vec<ActionUid>,
}

/// [`Command::SetShardVersion`]: the engine a shard should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardVersionChange {
    /// The shard.
    pub uid: ShardUid,
    /// The engine.
    pub redis_version: EngineVersion,
}

/// [`Command::SetBdbVersion`]: the engine a database runs once all its shards run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BdbVersionChange {
    /// The database.
    pub uid: BdbUid,
    /// The engine.
    pub redis_version: EngineVersion,
}

/// What a node says about itself when it creates or joins the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The address the node binds (written as text, e.g. `"127.0.0.11"`).
    pub addr: IpAddr,
    /// Its Flotilla software version.
    pub software_version: String,
    /// Its operating system.
    pub os: String,
    /// Its OS id, package's OS list and directories (nodes from 0.2.0 on; the first release
    /// ignores the field).
    #[serde(default, skip_serializing_if = "NodeHost::is_empty")]
    pub host: NodeHost,
}

impl NodeSpec {
    /// Refuses a node whose package does not support its operating system, naming both: the
    /// node checks itself before it joins (not in `apply`, where a 0.1.0 member would not).
    pub fn check_os(&self) -> Result<(), ModelError> {
        let host = &self.host;
        if host.os_id.is_empty() || host.supports(&host.os_id) {
            return Ok(());
        }
        Err(ModelError::InvalidValue(format!(
            "os: this node ({}) runs {} ({}), which its package {} does not support (it supports {}); install a package that supports {}, or join from a machine with a supported OS",
            self.addr,
            host.os_id,
            self.os,
            self.software_version,
            host.supported_os.join(", "),
            host.os_id
        )))
    }
}

/// What a node's machine and installation are, as the node reports them: what an OS upgrade
/// checks (Redis Software's OS and install-directory prerequisites). Empty for 0.1.0 nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHost {
    /// `ID-VERSION_ID` of the machine's `/etc/os-release` (or of the file `node start
    /// --os-release` names), e.g. `debian-12`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_id: String,
    /// The operating systems the node's package supports (its manifest's `supported_os`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_os: Vec<String>,
    /// The directory its packages are installed in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub install_dir: String,
    /// Its data dir.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_dir: String,
}

impl NodeHost {
    /// Whether nothing was reported (a 0.1.0 node).
    pub fn is_empty(&self) -> bool {
        self == &NodeHost::default()
    }

    /// Whether the node's package supports operating system `os_id` (unknown: yes).
    pub fn supports(&self, os_id: &str) -> bool {
        self.supported_os.is_empty() || self.supported_os.iter().any(|os| os == os_id)
    }
}

/// The replicated outcome of applying a command, returned to whoever proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandResult {
    /// Applied.
    Ok,
    /// A new node received this uid.
    NodeAdded {
        /// The new node's uid.
        uid: NodeUid,
    },
    /// A node with that address already exists under this uid; nothing changed.
    NodeExists {
        /// The existing node's uid.
        uid: NodeUid,
    },
    /// A shard was added with this uid.
    ShardAdded {
        /// The new shard's uid.
        uid: ShardUid,
    },
    /// A database was created with this uid.
    BdbCreated {
        /// The new database's uid.
        uid: BdbUid,
    },
    /// An action was created with this uid.
    ActionCreated {
        /// The new action's uid.
        uid: ActionUid,
    },
    /// The command did not fit the state and changed nothing.
    Refused(ModelError),
    /// The command kind was unknown to this node and changed nothing.
    Ignored,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_command_kind_decodes_as_unknown() {
        let cmd: Command =
            serde_json::from_str(r#"{"kind":"create_bdb_v9","name":"x","port":12000}"#).unwrap();
        assert_eq!(cmd, Command::Unknown);
    }

    #[test]
    fn commands_round_trip_and_tolerate_extra_fields() {
        let cmd = Command::UpdateCluster(ClusterChange {
            name: Some("n".into()),
        });
        let mut json: serde_json::Value = serde_json::to_value(&cmd).unwrap();
        json["added_in_a_newer_version"] = serde_json::json!(true);
        let back: Command = serde_json::from_value(json).unwrap();
        assert_eq!(back, cmd);
    }

    /// Every command kind as release 0.1.0 (commit 07de9e1, struct variants) encoded it; each
    /// must decode and encode again to the same text, so that old and new nodes apply the same
    /// Raft log.
    const SAMPLES_0_1_0: &[&str] = &[
        r#"{"kind":"update_bdb","uid":1,"memory_size":null,"authentication_redis_pass":null,"config":{"hash-max-listpack-entries":"64","notify-keyspace-events":"KEA"}}"#,
        r#"{"kind":"create_bdb","bdb":{"name":"db1","port":12000,"memory_size":104857600,"shards_count":1,"replication":false,"data_persistence":"disabled","redis_version":"redis-7.0","authentication_redis_pass":null,"config":{"list-max-listpack-size":"-2"}},"created_at":1700000001,"shards":[{"node_uid":1,"role":"master","assigned_slots":"0-16383","port":20001}]}"#,
        r#"{"kind":"create_cluster","name":"c1","credentials":{"username":"admin","password_hash":"$argon2id$v=19$x"},"secret":"s3cret","created_at":1700000000,"node":{"addr":"127.0.0.11","software_version":"0.1.0","os":"Debian GNU/Linux 12 (bookworm)"}}"#,
        r#"{"kind":"add_node","node":{"addr":"127.0.0.12","software_version":"0.1.0","os":"Debian GNU/Linux 12 (bookworm)"}}"#,
        r#"{"kind":"update_cluster","name":"c2"}"#,
        r#"{"kind":"update_cluster","name":null}"#,
        r#"{"kind":"update_node","uid":2,"software_version":"0.2.0","os":"Ubuntu 24.04"}"#,
        r#"{"kind":"create_bdb","bdb":{"name":"db1","port":12000,"memory_size":104857600,"shards_count":2,"replication":true,"data_persistence":"aof","redis_version":"redis-7.0","authentication_redis_pass":"pw"},"created_at":1700000001,"shards":[{"node_uid":1,"role":"master","assigned_slots":"0-8191","port":20001},{"node_uid":2,"role":"slave","assigned_slots":"0-8191","port":20001}]}"#,
        r#"{"kind":"update_bdb","uid":1,"memory_size":209715200,"authentication_redis_pass":"new"}"#,
        r#"{"kind":"update_bdb","uid":1,"memory_size":null,"authentication_redis_pass":null}"#,
        r#"{"kind":"delete_bdb","uid":1}"#,
        r#"{"kind":"promote_shard","uid":2,"require_held":true}"#,
        r#"{"kind":"add_temporary_replica","bdb_uid":1,"plan":{"node_uid":2,"role":"slave","assigned_slots":"0-8191","port":20001},"redis_version":"valkey-9.1"}"#,
        r#"{"kind":"add_replacement","bdb_uid":1,"replaces":1,"port":20002,"redis_version":"valkey-8.1"}"#,
        r#"{"kind":"replace_shard","replacement":5}"#,
        r#"{"kind":"remove_shard","uid":5}"#,
        r#"{"kind":"hold_shard","uid":1,"held":true}"#,
        r#"{"kind":"create_action","action":{"type":"db_upgrade","bdb_uid":1,"redis_version":"valkey-8.1","preserve_roles":true,"parallel_shards":2,"discard_data":false,"original_masters":[1,3]},"steps_total":13,"first_step":"upgrade_replica 0-8191,8192-16383","created_at":1700000002}"#,
        r#"{"kind":"update_action","uid":1,"status":"running","step_index":3,"step":"switchover 0-8191","error":null,"updated_at":1700000003,"finished":{"step":"sync_replica 0-8191","duration_ms":1234},"expected_step":2}"#,
        r#"{"kind":"update_action","uid":1,"status":"failed","step_index":3,"step":"switchover 0-8191","error":"boom","updated_at":1700000004,"finished":null,"expected_step":null}"#,
        r#"{"kind":"cancel_action","uid":1}"#,
        r#"{"kind":"set_shard_version","uid":3,"redis_version":"valkey-9.1"}"#,
        r#"{"kind":"set_bdb_version","uid":1,"redis_version":"valkey-9.1"}"#,
    ];

    /// The `kind` of each variant, by an exhaustive match: a new kind does not compile here
    /// until it is named, and then fails the test below until it has a sample.
    fn kind_of(command: &Command) -> &'static str {
        match command {
            Command::CreateCluster(_) => "create_cluster",
            Command::AddNode(_) => "add_node",
            Command::ReplaceNode(_) => "replace_node",
            Command::UpdateCluster(_) => "update_cluster",
            Command::UpdateNode(_) => "update_node",
            Command::CreateBdb(_) => "create_bdb",
            Command::UpdateBdb(_) => "update_bdb",
            Command::DeleteBdb(_) => "delete_bdb",
            Command::PromoteShard(_) => "promote_shard",
            Command::AddTemporaryReplica(_) => "add_temporary_replica",
            Command::AddReplacement(_) => "add_replacement",
            Command::ReplaceShard(_) => "replace_shard",
            Command::RemoveShard(_) => "remove_shard",
            Command::HoldShard(_) => "hold_shard",
            Command::CreateAction(_) => "create_action",
            Command::UpdateAction(_) => "update_action",
            Command::CancelAction(_) => "cancel_action",
            Command::SetShardVersion(_) => "set_shard_version",
            Command::SetBdbVersion(_) => "set_bdb_version",
            Command::FinalizeClusterVersion(_) => "finalize_cluster_version",
            Command::CompleteMigration(_) => "complete_migration",
            Command::RemoveNode(_) => "remove_node",
            Command::PruneActions(_) => "prune_actions",
            Command::RecordDrain(_) => "record_drain",
            Command::ResumeAction(_) => "resume_action",
            Command::EnterMaintenance(_) => "enter_maintenance",
            Command::ExitMaintenance(_) => "exit_maintenance",
            Command::SetClusterCa(_) => "set_cluster_ca",
            Command::SetNodeCertificate(_) => "set_node_certificate",
            Command::RotateNodeCertificates(_) => "rotate_node_certificates",
            Command::CreateCrdb(_) => "create_crdb",
            Command::UpdateCrdb(_) => "update_crdb",
            Command::DeleteCrdb(_) => "delete_crdb",
            Command::Unknown => "unknown",
        }
    }

    #[test]
    fn pruning_is_encoded_as_its_kind_and_uids() {
        let sample = r#"{"kind":"prune_actions","uids":[3,4,9]}"#;
        let command: Command = serde_json::from_str(sample).unwrap();
        assert_eq!(
            command,
            Command::PruneActions(ActionPruning {
                uids: vec![3, 4, 9]
            })
        );
        assert_eq!(kind_of(&command), "prune_actions");
        assert_eq!(serde_json::to_string(&command).unwrap(), sample);
    }

    #[test]
    fn every_command_kind_keeps_the_encoding_of_0_1_0() {
        let mut kinds = std::collections::BTreeSet::new();
        for sample in SAMPLES_0_1_0 {
            let command: Command = serde_json::from_str(sample)
                .unwrap_or_else(|e| panic!("{sample} no longer decodes: {e}"));
            let kind = kind_of(&command);
            assert!(
                sample.starts_with(&format!(r#"{{"kind":"{kind}","#)),
                "{sample} decoded as {command:?}"
            );
            assert_eq!(
                serde_json::to_string(&command).unwrap(),
                *sample,
                "re-encoded differently"
            );
            kinds.insert(kind);
        }
        assert_eq!(kinds.len(), 18, "one sample per command kind of 0.1.0");
    }

    /// What 0.2.0 added: a new kind and a new field, each proposed only once the cluster
    /// version is 0.2.0 (the first release would skip them: the new field is ignored by its
    /// decoder, the new kind decodes as `unknown`).
    const SAMPLES_0_2_0: &[&str] = &[
        r#"{"kind":"finalize_cluster_version","version":"0.2.0"}"#,
        r#"{"kind":"replace_node","uid":3,"node":{"addr":"127.0.0.14","software_version":"0.2.0","os":"Debian GNU/Linux 12 (bookworm)"}}"#,
        r#"{"kind":"update_bdb","uid":1,"memory_size":null,"authentication_redis_pass":null,"remove_authentication_redis_pass":true}"#,
        r#"{"kind":"complete_migration","old":4,"new":9}"#,
        r#"{"kind":"remove_node","uid":3}"#,
        r#"{"kind":"record_drain","action_uid":7,"drain":{"node_uid":2,"addr":"127.0.0.12","added_node":4,"moves":[{"shard_uid":4,"bdb_uid":1,"assigned_slots":"0-8191","from_node":2,"to_node":4}]}}"#,
        r#"{"kind":"resume_action","uid":7}"#,
        r#"{"kind":"update_action","uid":7,"status":"paused","step_index":0,"step":"add_node node:2","error":"waiting","updated_at":5,"finished":null,"expected_step":0}"#,
        r#"{"kind":"create_action","action":{"type":"shard_migrate","shard_uid":4,"bdb_uid":1,"assigned_slots":"0-8191","from_node":1,"to_node":3},"steps_total":4,"first_step":"add_copy shard:4","created_at":1700000002}"#,
        r#"{"kind":"enter_maintenance","node_uid":2,"activation":7,"snapshot":[{"bdb_uid":1,"assigned_slots":"0-8191","node_uid":2,"role":"master"},{"bdb_uid":1,"assigned_slots":"0-8191","node_uid":3,"role":"slave"}]}"#,
        r#"{"kind":"enter_maintenance","node_uid":2,"activation":8}"#,
        r#"{"kind":"exit_maintenance","node_uid":2,"activation":8}"#,
        r#"{"kind":"create_action","action":{"type":"maintenance_on","node_uid":2,"keep_slave_shards":false,"demote_node":true,"overwrite_snapshot":false,"moves":[{"shard_uid":4,"bdb_uid":1,"assigned_slots":"0-8191","from_node":2,"to_node":3}]},"steps_total":6,"first_step":"demote_node node:2","created_at":1700000002}"#,
        r#"{"kind":"create_action","action":{"type":"maintenance_on","node_uid":2,"keep_slave_shards":true,"demote_node":false,"overwrite_snapshot":true,"demotions":[{"shard_uid":4,"bdb_uid":1,"assigned_slots":"0-8191"}],"moves":[]},"steps_total":2,"first_step":"snapshot node:2","created_at":1700000002}"#,
        r#"{"kind":"create_action","action":{"type":"maintenance_off","node_uid":2,"skip_shards_restore":false,"activation":7,"moves":[{"shard_uid":9,"bdb_uid":1,"assigned_slots":"0-8191","from_node":3,"to_node":2}],"primaries":[{"bdb_uid":1,"assigned_slots":"0-8191","node_uid":2,"role":"master"}]},"steps_total":6,"first_step":"add_copy shard:9","created_at":1700000002}"#,
        r#"{"kind":"create_action","action":{"type":"maintenance_off","node_uid":2,"skip_shards_restore":true,"activation":7,"moves":[]},"steps_total":1,"first_step":"end_maintenance node:2","created_at":1700000002}"#,
        r#"{"kind":"create_action","action":{"type":"node_remove","node_uid":1,"moves":[{"shard_uid":4,"bdb_uid":1,"assigned_slots":"0-8191","from_node":1,"to_node":3}]},"steps_total":6,"first_step":"demote_node","created_at":1700000002}"#,
        r#"{"kind":"set_cluster_ca","certificate":"-----BEGIN CERTIFICATE-----","key":"-----BEGIN PRIVATE KEY-----","rotation":0}"#,
        r#"{"kind":"set_node_certificate","uid":2,"certificate":"-----BEGIN CERTIFICATE-----","rotation":1}"#,
        r#"{"kind":"rotate_node_certificates"}"#,
        r#"{"kind":"update_bdb","uid":1,"memory_size":null,"authentication_redis_pass":null,"authentication_redis_pass_sha256":"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"}"#,
        r#"{"kind":"update_bdb","uid":1,"memory_size":null,"authentication_redis_pass":null,"max_connections":100,"client_query_buffer_limit":1048576,"client_output_buffer_limit":33554432,"client_output_timeout":10,"client_timeout":300}"#,
        r#"{"kind":"create_bdb","bdb":{"name":"db1","port":12000,"memory_size":104857600,"shards_count":2,"replication":true,"data_persistence":"aof","redis_version":"redis-7.0","authentication_redis_pass":null,"authentication_redis_pass_sha256":"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8","max_connections":100,"client_timeout":300},"created_at":1700000001,"shards":[{"node_uid":1,"role":"master","assigned_slots":"0-8191","port":20001}]}"#,
        r#"{"kind":"update_bdb","uid":1,"memory_size":null,"authentication_redis_pass":null,"tls_mode":"disabled"}"#,
        r#"{"kind":"create_bdb","bdb":{"name":"db1","port":12000,"memory_size":104857600,"shards_count":1,"replication":false,"data_persistence":"disabled","redis_version":"redis-7.0","authentication_redis_pass":null,"tls_mode":"enabled"},"created_at":1700000001,"shards":[{"node_uid":1,"role":"master","assigned_slots":"0-16383","port":20001}]}"#,
        r#"{"kind":"create_crdb","crdb":{"guid":"2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a","name":"cache","instances":[{"id":1,"cluster":{"name":"c1","urls":["https://127.0.1.11:9443"],"ca_cert":"-----BEGIN CERTIFICATE-----","username":"admin","password":"pw"}},{"id":2,"cluster":{"name":"c2","urls":["https://127.0.2.11:9443"],"ca_cert":"-----BEGIN CERTIFICATE-----","username":"admin","password":"pw"}}],"local_instance_id":2,"local_bdb_uid":0,"featureset_version":1,"shards_count":1,"ghost_instance_ids":[]},"bdb":{"name":"cache","port":12000,"memory_size":104857600,"shards_count":1,"replication":false,"data_persistence":"disabled","redis_version":"valkey-9.1","authentication_redis_pass":null,"crdt":{"crdt_guid":"2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a","crdt_replica_id":2,"crdt_protocol_version":1,"crdt_featureset_version":1}},"created_at":1700000001,"shards":[{"node_uid":1,"role":"master","assigned_slots":"0-16383","port":20001}]}"#,
        r#"{"kind":"update_crdb","guid":"2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a","featureset_version":2}"#,
        r#"{"kind":"update_crdb","guid":"2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a","crdt_protocol_version":2}"#,
        r#"{"kind":"update_crdb","guid":"2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a","instances":[{"id":1,"cluster":{"name":"c1","urls":["https://127.0.1.11:9443"],"ca_cert":"-----BEGIN CERTIFICATE-----","username":"admin","password":"pw"}}],"ghost_instance_ids":[2]}"#,
        r#"{"kind":"delete_crdb","guid":"2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a"}"#,
        r#"{"kind":"create_action","action":{"type":"db_upgrade","bdb_uid":1,"redis_version":"valkey-8.1","preserve_roles":false,"parallel_shards":1,"discard_data":false,"original_masters":[1],"raise_crdt_protocol":2},"steps_total":5,"first_step":"add_replacement 0-16383","created_at":1700000003}"#,
        r#"{"kind":"create_cluster","name":"c1","credentials":{"username":"admin","password_hash":"$argon2id$v=19$x"},"secret":"s3cret","created_at":1700000000,"node":{"addr":"127.0.0.11","software_version":"0.2.0","os":"Debian GNU/Linux 12 (bookworm)"},"cluster_version":"0.2.0"}"#,
    ];

    #[test]
    fn what_0_2_0_added_encodes_stably_and_is_gated_on_its_version() {
        for (index, sample) in SAMPLES_0_2_0.iter().enumerate() {
            let command: Command = serde_json::from_str(sample).unwrap();
            assert_eq!(serde_json::to_string(&command).unwrap(), *sample);
            // Every sample but the last (a field the first release never reads) is gated.
            let gated = index + 1 < SAMPLES_0_2_0.len();
            assert_eq!(
                command.introduced_in() == crate::VERSIONED_RELEASE,
                gated,
                "{sample}"
            );
        }
    }

    #[test]
    fn the_fields_added_after_the_first_commands_may_be_missing() {
        let promote: Command = serde_json::from_str(r#"{"kind":"promote_shard","uid":2}"#).unwrap();
        assert_eq!(
            promote,
            Command::PromoteShard(ShardPromotion {
                uid: 2,
                require_held: false
            })
        );
        let update: Command = serde_json::from_str(
            r#"{"kind":"update_action","uid":1,"status":"running","step_index":1,"step":"s","updated_at":5}"#,
        )
        .unwrap();
        let Command::UpdateAction(update) = update else {
            panic!("{update:?}")
        };
        assert_eq!(
            (update.error, update.finished, update.expected_step),
            (None, None, None)
        );
    }

    #[test]
    fn command_results_keep_the_encoding_of_0_1_0() {
        for sample in [
            r#"{"result":"ok"}"#,
            r#"{"result":"node_added","uid":1}"#,
            r#"{"result":"refused","error_code":"not_bootstrapped"}"#,
            r#"{"result":"refused","error_code":"invalid_value","description":"x"}"#,
        ] {
            let result: CommandResult = serde_json::from_str(sample).unwrap();
            assert_eq!(serde_json::to_string(&result).unwrap(), sample);
        }
    }
}
