//! The JSON objects of the REST API, in Redis Software's shape and field names.
//!
//! Shared by the API (which serves them) and the client (which reads them), so both sides agree
//! on one definition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::NodeUid;

mod crdbs;

pub use crdbs::{
    CrdbClusterInfo, CrdbCreateRequest, CrdbCredentialsInfo, CrdbDbConfig, CrdbHealthReport,
    CrdbInfo, CrdbInstanceHealth, CrdbInstanceInfo, CrdbInstanceRequest, CrdbLocalCreate,
    CrdbLocalDatabase, CrdbLocalUpdate, CrdbTask, CrdbTaskError, CrdbTaskStatus, CrdbUpdateRequest,
    CrdbUpdates,
};

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Cluster name.
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub created_time: u64,
    /// The current primary node's uid, if one is elected (Redis Software's field name).
    #[serde(rename = "master_node")]
    pub primary_node: Option<NodeUid>,
    /// Number of member nodes.
    pub nodes_count: usize,
    /// The engine new and upgraded databases get by default (the newest bundled one); a
    /// database on an older engine shows `OLD REDIS VERSION` in `flotilla status`.
    #[serde(default)]
    pub default_redis_version: String,
    /// The version whose features every node has agreed to use (finalized).
    #[serde(default)]
    pub cluster_version: String,
    /// The version `flotilla upgrade finalize` would move the cluster to: every node runs it
    /// and it is newer than the cluster version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalization_pending: Option<String>,
    /// The SHA-256 fingerprint of the cluster CA's certificate (absent before the cluster has
    /// a CA): what `cluster join --cluster-ca-fingerprint` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// The CRDB protocol versions this node's software speaks (Redis Software's field); an
    /// instance on an older one shows `OLD CRDB PROTOCOL VERSION` in `flotilla status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crdt_supported_protocol_versions: Vec<u16>,
    /// The newest CRDB feature set version this node's software knows; an instance of a CRDB
    /// on an older one shows `OLD CRDB FEATURESET VERSION`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crdt_supported_featureset_version: u16,
}

fn is_zero(value: &u16) -> bool {
    *value == 0
}

/// `PUT /v1/cluster`: the settings an operator may change; omitted fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterUpdate {
    /// New cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Whether a node answers: seen by the primary node recently, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// The node reported to the primary node within the liveness window.
    Up,
    /// The node has not reported within the liveness window.
    Down,
    /// The primary node took over too recently to tell.
    Unknown,
}

/// A node's role in the cluster, as `flotilla status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// The Raft leader: runs the orchestrator (what Redis Software calls the `master` node).
    Primary,
    /// Any other member.
    Secondary,
}

/// `GET /v1/nodes`, `GET /v1/nodes/{uid}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node uid.
    pub uid: NodeUid,
    /// The node's address.
    pub addr: String,
    /// Primary or secondary.
    pub role: NodeRole,
    /// Installed Flotilla version.
    pub software_version: String,
    /// Operating system.
    pub os: String,
    /// Up, down or unknown.
    pub status: NodeStatus,
    /// Its OS id, package's OS list, install and data directories (`os_id`, `supported_os`,
    /// `install_dir`, `data_dir`; absent for 0.1.0 nodes).
    #[serde(flatten)]
    pub host: crate::NodeHost,
    /// In maintenance mode (`flotilla node maintenance UID on`): no shard is placed on it.
    /// Absent when not (as 0.1.0 answered).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maintenance: bool,
    /// What the node last reported wrong on itself (see [`NodeReport::problems`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One entry of `GET /v1/nodes/status`, keyed by uid; `role` is `master`/`slave` as in Redis
/// Software's `/nodes/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatusEntry {
    /// `master` for the primary node, `slave` otherwise.
    pub role: String,
    /// Up, down or unknown.
    pub status: NodeStatus,
    /// Installed Flotilla version.
    pub software_version: String,
    /// The node's address.
    pub addr: String,
}

/// `GET /v1/nodes/status`.
pub type NodesStatus = BTreeMap<String, NodeStatusEntry>;

/// `GET /v1/health`: answered without credentials, for readiness polling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok` when the daemon answers.
    pub status: String,
    /// This node's uid once it created or joined a cluster.
    pub node_uid: Option<NodeUid>,
    /// The primary node's uid as this node knows it (named as in [`ClusterInfo`]).
    #[serde(rename = "master_node")]
    pub primary_node: Option<NodeUid>,
    /// This node's software version.
    pub software_version: String,
    /// The daemon handover protocol this node's binary speaks (0: none, release 0.1.0).
    #[serde(default)]
    pub handover_protocol: u32,
    /// The daemon's process id (changes when an in-place upgrade hands the node over).
    #[serde(default)]
    pub pid: u32,
}
/// `POST /v1/cluster/actions/upgrade`: upgrade every node to a package (an action).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterUpgradeRequest {
    /// The package (folder or .tar.gz), at the same path on every node's machine.
    pub package: String,
    /// The package's version (from its manifest).
    pub version: String,
    /// `in-place` (the default), `add-node` (`extra-node` for an OS upgrade) or `replace-node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// An operating system upgrade (`flotilla upgrade os --os TARGET`): the OS every node ends
    /// on; `package` is then the cluster's current package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
}

/// The internal route (RPC port, cluster secret) by which the primary node orders a node's
/// in-place upgrade while it runs `upgrade cluster`: the body is a [`NodeUpgradeRequest`], the
/// answer the JSON of `Result<NodeUpgradeStatus, String>`.
pub const INTERNAL_NODE_UPGRADE_PATH: &str = "/internal/node/upgrade";

/// `POST /v1/nodes/{uid}/upgrade`: move this node to the package at `package`, a folder or
/// `.tar.gz` on the node's own disk (like Redis Software's installer, the package must be on
/// the machine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpgradeRequest {
    /// The package folder or tarball, as a path on the node.
    pub package: String,
}

/// How an in-place upgrade of one node goes (`GET /v1/nodes/{uid}/upgrade`); kept in the
/// node's data dir, so the new daemon reports how its predecessor handed over.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeUpgradeStatus {
    /// The version the node ran.
    pub from_version: String,
    /// The version it moves to.
    pub to_version: String,
    /// `handover` (the new daemon takes every socket over) or `restart` (the fallback: the old
    /// daemon stops, the new one starts and adopts the shards; client connections close).
    pub method: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// The step it is at, or ended at.
    pub step: String,
    /// Each step reached, with milliseconds since the upgrade started.
    #[serde(default)]
    pub steps: Vec<(String, u64)>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Client connections passed to the new daemon.
    #[serde(default)]
    pub sessions_moved: u64,
    /// Client connections that could not reach a command boundary within the bound and were
    /// closed at one.
    #[serde(default)]
    pub sessions_closed: u64,
    /// How long the node had no store (from the old daemon stopping Raft to the new one
    /// serving it), in milliseconds.
    #[serde(default)]
    pub store_gap_ms: u64,
    /// When the old daemon began stopping its store, milliseconds since the epoch (the new
    /// daemon measures the gap from it).
    #[serde(default)]
    pub store_stopped_at_ms: u64,
    /// The old daemon's pid.
    #[serde(default)]
    pub old_pid: u32,
    /// The new daemon's pid, once started.
    #[serde(default)]
    pub new_pid: u32,
    /// When the upgrade started, seconds since the epoch.
    #[serde(default)]
    pub started_at: u64,
}

/// The header that carries a fresh node's bootstrap token on `/v1/bootstrap/*` calls. A
/// header, not a body field: a 0.1.0 node (which takes no token and refuses unknown body
/// fields) ignores it, so one client creates and joins clusters of either release.
pub const BOOTSTRAP_TOKEN_HEADER: &str = "x-flotilla-bootstrap-token";

/// The file, in a node's data dir, that holds its bootstrap token (mode 0600) until the node
/// creates or joins a cluster.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-token";

/// `POST /v1/bootstrap/create_cluster` and `join_cluster` (Redis Software's bootstrap shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapRequest {
    /// `create_cluster` or `join_cluster`; optional, the URL already says which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The cluster to create (`name`) or join (`nodes`).
    pub cluster: BootstrapCluster,
    /// The operator's credentials.
    pub credentials: BootstrapCredentials,
    /// `join_cluster` only: the uid of a node that is down (or was removed) whose place and
    /// uid the joining node takes (Redis Software's `replace_node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_node: Option<NodeUid>,
}

/// The `cluster` part of a bootstrap request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapCluster {
    /// Name of the cluster to create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Addresses of existing members, for a join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// For a join: the SHA-256 fingerprint the cluster CA must have (`flotilla status` prints
    /// it); without it the node trusts the CA it finds on first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ca_fingerprint: Option<String>,
}

/// The `credentials` part of a bootstrap request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapCredentials {
    /// Operator user name.
    pub username: String,
    /// Operator password.
    pub password: String,
}

/// What a successful bootstrap answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootstrapResult {
    /// The node's uid in the cluster.
    pub node_uid: NodeUid,
}

/// An API error body: `{"error_code": "...", "description": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub error_code: String,
    /// What went wrong, naming the object or field and the fix.
    pub description: String,
}

/// What a node reports about itself to the primary node, over internal RPC, every half second.
/// Kept in the primary node's memory (observed state), not in the Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The reporting node.
    pub uid: NodeUid,
    /// Its running software version.
    pub software_version: String,
    /// Its OS.
    pub os: String,
    /// What it observes of each of its shards.
    #[serde(default)]
    pub shards: Vec<ShardReport>,
    /// The machine's memory in bytes (`MemTotal`): what placement may fill when shards move
    /// onto the node. Absent from nodes older than 0.2.0 (their room is then not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// What is wrong on the node itself (a full data dir, its store stopped after a failed
    /// write), each naming the file or dir and the fix; absent when nothing is (and from nodes
    /// older than 0.2.0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// What a node's agent observes of one of its shards (kept in the primary node's memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// The shard.
    pub uid: crate::ShardUid,
    /// The engine process is running and answers PING.
    pub up: bool,
    /// The role the engine reports (`INFO replication`), when it answers.
    #[serde(default)]
    pub role: Option<crate::ShardRole>,
    /// `master_repl_offset` (for a replica: how far it has replicated).
    #[serde(default)]
    pub offset: i64,
    /// For a replica: whether its link to the primary is up (`master_link_status:up`; the
    /// JSON keeps 0.1.0's name).
    #[serde(default, rename = "master_link_up")]
    pub primary_link_up: bool,
    /// For a replica: whether a full sync from its primary is under way
    /// (`master_sync_in_progress`).
    #[serde(default)]
    pub sync_in_progress: bool,
    /// `used_memory` in bytes.
    #[serde(default)]
    pub used_memory: u64,
    /// The engine version the process reports (e.g. `7.0.15`).
    #[serde(default)]
    pub engine_version: Option<String>,
    /// The engine's pid.
    #[serde(default)]
    pub pid: Option<u32>,
    /// What keeps the shard from running as the store wants (its data files do not load, its
    /// disk is full, ...) or a fault the agent just handled (damaged data files moved aside),
    /// naming the file and the fix; absent when nothing is wrong (and from 0.1.0 nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Whether a replica must be linked to its primary to count as serving in its role: the one
/// reason the callers of [`ShardReport::serves_in`] differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaLink {
    /// A replica serves once it holds its primary's data: its link is up and no full sync is
    /// under way (what a failover, an upgrade's sync steps and a shard's `active` status need).
    Required,
    /// A replica serves once its engine answers as a replica, synced or not (shards that an
    /// upgrade with `discard_data` restarted empty: nothing to wait for).
    NotRequired,
}

impl ShardReport {
    /// Whether the shard's engine answers in `role` and, for a replica when `link` requires it,
    /// holds its primary's data: its link to the primary is up and no full sync is under way.
    /// The one rule for "is this reported replica linked", used by the API (`active` vs
    /// `syncing`), failover (which replicas may be promoted), the upgrade steps (when a sync is
    /// done) and the agent (when to stop watching a sync).
    pub fn serves_in(&self, role: crate::ShardRole, link: ReplicaLink) -> bool {
        let linked = self.primary_link_up && !self.sync_in_progress;
        let link_ok =
            role == crate::ShardRole::Primary || link == ReplicaLink::NotRequired || linked;
        self.up && self.role == Some(role) && link_ok
    }
}

/// `POST /v1/bdbs`: a new database, in Redis Software's field names. Omitted fields take their
/// defaults (1 shard, no replication, no persistence, the cluster's default engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdbCreate {
    /// Unique name: letters, digits and hyphens, 1-63 characters.
    pub name: String,
    /// Endpoint port, 10000-19999, free on every node.
    pub port: u16,
    /// Memory limit in bytes.
    pub memory_size: u64,
    /// Primary shards, 1-64.
    #[serde(default = "one")]
    pub shards_count: u16,
    /// A replica for every primary shard, on another node.
    #[serde(default)]
    pub replication: bool,
    /// `disabled`, `aof` or `snapshot`.
    #[serde(default)]
    pub data_persistence: crate::DataPersistence,
    /// Engine version, e.g. `redis-7.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_version: Option<String>,
    /// Password clients AUTH with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_redis_pass: Option<String>,
    /// Most client connections per node's endpoint (0: no limit). See [`crate::ClientLimits`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Redis's `client-query-buffer-limit`, bytes (at least 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_query_buffer_limit: Option<u64>,
    /// Most bytes of replies pending for one client (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_output_buffer_limit: Option<u64>,
    /// Seconds a client may leave its replies unread (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_output_timeout: Option<u32>,
    /// Seconds before an idle client is closed (Redis's `timeout`; 0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_timeout: Option<u32>,
    /// `enabled`: the endpoint serves TLS only, with the node's certificate from the cluster
    /// CA; `disabled` (the default): plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<crate::TlsMode>,
}

impl BdbCreate {
    /// The client limits asked for (unset ones: their defaults).
    pub fn limits(&self) -> crate::ClientLimitsChange {
        crate::ClientLimitsChange {
            max_connections: self.max_connections,
            client_query_buffer_limit: self.client_query_buffer_limit,
            client_output_buffer_limit: self.client_output_buffer_limit,
            client_output_timeout: self.client_output_timeout,
            client_timeout: self.client_timeout,
        }
    }
}

fn one() -> u16 {
    1
}

/// `PUT /v1/bdbs/{uid}`: what may change on a running database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdbUpdate {
    /// New memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_size: Option<u64>,
    /// New client password; an empty string removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_redis_pass: Option<String>,
    /// New: most client connections per node's endpoint (0: no limit). See [`crate::ClientLimits`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// New: Redis's `client-query-buffer-limit`, bytes (at least 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_query_buffer_limit: Option<u64>,
    /// New: most bytes of replies pending for one client (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_output_buffer_limit: Option<u64>,
    /// New: seconds a client may leave its replies unread (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_output_timeout: Option<u32>,
    /// New: seconds before an idle client is closed (Redis's `timeout`; 0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_timeout: Option<u32>,
    /// New TLS mode of the endpoint (`enabled` / `disabled`); clients already connected keep
    /// their connection as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<crate::TlsMode>,
    /// Engine settings to set (`CONFIG SET` names and values, e.g. `{"slowlog-max-len": "256"}`):
    /// only those Redis Software allows (see [`crate::check_setting`]); merged into the
    /// database's and applied to every shard.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config: std::collections::BTreeMap<String, String>,
}

impl BdbUpdate {
    /// The client limits that change.
    pub fn limits(&self) -> crate::ClientLimitsChange {
        crate::ClientLimitsChange {
            max_connections: self.max_connections,
            client_query_buffer_limit: self.client_query_buffer_limit,
            client_output_buffer_limit: self.client_output_buffer_limit,
            client_output_timeout: self.client_output_timeout,
            client_timeout: self.client_timeout,
        }
    }
}

/// One way to reach a database: its port on each of these node addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// Node addresses serving the endpoint (every node).
    pub addr: Vec<String>,
    /// The database port.
    pub port: u16,
}

/// `GET /v1/bdbs`, `GET /v1/bdbs/{uid}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BdbInfo {
    /// Database uid.
    pub uid: crate::BdbUid,
    /// Name.
    pub name: String,
    /// Endpoint port.
    pub port: u16,
    /// Memory limit in bytes.
    pub memory_size: u64,
    /// Primary shards.
    pub shards_count: u16,
    /// Replication on or off.
    pub replication: bool,
    /// Persistence mode.
    pub data_persistence: crate::DataPersistence,
    /// Engine version.
    pub redis_version: String,
    /// `active` when every shard runs in its role, else `pending`.
    pub status: String,
    /// Whether clients must AUTH. (The password itself is never shown: from cluster version
    /// 0.2.0 on, the store keeps only its SHA-256.)
    pub password_protected: bool,
    /// How the store keeps the password: `sha256` (cluster version 0.2.0 on) or `plaintext`
    /// (a cluster not yet finalized to 0.2.0); absent without a password (and from 0.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_storage: Option<String>,
    /// The limits on client connections that differ from their defaults (see
    /// [`crate::ClientLimits`]; absent fields have their defaults).
    #[serde(flatten, default)]
    pub limits: crate::ClientLimits,
    /// `enabled` when the endpoint serves TLS only; absent when disabled (and from 0.1.0).
    #[serde(default, skip_serializing_if = "crate::TlsMode::is_disabled")]
    pub tls_mode: crate::TlsMode,
    /// The engine settings the database changed (canonical names); absent when none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config: crate::DatabaseConfig,
    /// Where clients connect.
    pub endpoints: Vec<EndpointInfo>,
    /// The database's shard uids.
    pub shard_list: Vec<crate::ShardUid>,
    /// When the database is one instance of a CRDB: Redis Software's `crdt_guid`,
    /// `crdt_replica_id`, `crdt_protocol_version` and `crdt_featureset_version` (absent
    /// otherwise, as 0.1.0 answered).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub crdt: Option<crate::crdb::BdbCrdt>,
}

/// `GET /v1/shards`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Shard uid.
    pub uid: crate::ShardUid,
    /// Its database.
    pub bdb_uid: crate::BdbUid,
    /// Its node.
    pub node_uid: NodeUid,
    /// `master` or `slave`.
    pub role: crate::ShardRole,
    /// Slot range, `start-end`.
    pub assigned_slots: crate::SlotRange,
    /// Port on its node.
    pub port: u16,
    /// Engine version it should run.
    pub redis_version: String,
    /// `active` when its engine answers in its role, `down` when it does not, `unknown` when its
    /// node has not reported.
    pub status: String,
    /// Replication offset last reported.
    pub offset: i64,
    /// Memory used, bytes, last reported.
    pub used_memory: u64,
    /// A switchover holds this primary's slots right now.
    #[serde(default)]
    pub held: bool,
    /// What its node's agent last reported wrong with it (see [`ShardReport::problem`]), naming
    /// the file and the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `POST /v1/bdbs/{uid}/upgrade`, in Redis Software's field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdbUpgrade {
    /// Target engine, e.g. `valkey-9.1`; the cluster's default engine when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_version: Option<String>,
    /// Put each slot range's primary back where it was.
    #[serde(default)]
    pub preserve_roles: bool,
    /// Slot ranges upgraded at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_shards_upgrade: Option<u16>,
    /// Restart shards empty on the new engine instead of moving the data.
    #[serde(default)]
    pub may_discard_data: bool,
    /// Allow `may_discard_data` on a persistent database.
    #[serde(default)]
    pub force_discard: bool,
    /// Restart shards even when the database already runs the target engine.
    #[serde(default)]
    pub force_restart: bool,
    /// For a CRDB instance: keep its CRDB protocol version (by default it moves to the newest
    /// this cluster speaks once the engine upgrade finished).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_crdt_protocol_version: bool,
}

/// `POST /v1/shards/{uid}/actions/migrate`: where the shard goes (Redis Software's field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMigrateRequest {
    /// The node the shard moves to.
    pub target_node_uid: NodeUid,
}

/// `POST /v1/cluster/actions/change_master`: the node that becomes the primary node (Redis
/// Software's route and field; `flotilla cluster promote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimaryNodeChange {
    /// The node.
    pub node_uid: NodeUid,
}

/// `GET /v1/actions`, `GET /v1/actions/{uid}`: an action and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionInfo {
    /// Action uid.
    pub action_uid: crate::ActionUid,
    /// State machine name (`SMUpgradeBDB`).
    pub name: String,
    /// The object it works on, e.g. `bdb:1`.
    pub object: String,
    /// Running, completed, failed or cancelled.
    pub status: crate::ActionStatus,
    /// The step running now (or the last one).
    pub pending_ops: String,
    /// Index of that step.
    pub step_index: u32,
    /// Steps in the plan.
    pub steps_total: u32,
    /// Percent done.
    pub progress: f64,
    /// Every step's name, in order (the names of `plan`, kept for older clients).
    pub steps: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
    /// Finished steps with their durations.
    #[serde(default)]
    pub history: Vec<crate::StepRecord>,
    /// The action's parameters.
    pub kind: crate::ActionKind,
    /// The plan's steps with where the action stands on each (empty from a node older than
    /// this field).
    #[serde(default)]
    pub plan: Vec<PlanStepInfo>,
}

/// One step of an action's plan in `GET /v1/actions/{uid}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStepInfo {
    /// The step's name, e.g. `upgrade_replica 0-8191`.
    pub name: String,
    /// Its operation, the name's first word (what a failpoint in `FLOTILLA_FAILPOINTS` names to
    /// match every step of the operation).
    pub op: String,
    /// A cancel request may stop the action before this step.
    pub cancel_point: bool,
    /// Done, current or pending.
    pub state: crate::StepState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShardRole::{Primary, Replica};

    fn report(
        role: crate::ShardRole,
        primary_link_up: bool,
        sync_in_progress: bool,
    ) -> ShardReport {
        ShardReport {
            uid: 1,
            up: true,
            role: Some(role),
            offset: 0,
            primary_link_up,
            sync_in_progress,
            used_memory: 0,
            engine_version: None,
            pid: None,
            problem: None,
        }
    }

    #[test]
    fn a_replica_serves_once_linked_with_no_full_sync_under_way() {
        use ReplicaLink::{NotRequired, Required};
        assert!(report(Replica, true, false).serves_in(Replica, Required));
        assert!(!report(Replica, false, false).serves_in(Replica, Required));
        assert!(!report(Replica, true, true).serves_in(Replica, Required));
        assert!(!report(Replica, false, true).serves_in(Replica, Required));
        assert!(report(Replica, false, true).serves_in(Replica, NotRequired));
        assert!(report(Primary, false, false).serves_in(Primary, Required));
        assert!(
            !report(Primary, false, false).serves_in(Replica, NotRequired),
            "wrong role"
        );
        assert!(
            !report(Replica, true, false).serves_in(Primary, Required),
            "wrong role"
        );
        let down = ShardReport {
            up: false,
            ..report(Replica, true, false)
        };
        assert!(!down.serves_in(Replica, NotRequired));
    }

    /// A shard's and a node's problem (0.2.0) travel beside 0.1.0's fields: absent when there
    /// is none (the 0.1.0 JSON, pinned below), ignored by a 0.1.0 primary node when present.
    #[test]
    fn problems_are_extra_fields_0_1_0_ignores() {
        let shard = r#"{"uid":3,"up":false,"role":null,"offset":0,"master_link_up":false,"sync_in_progress":false,"used_memory":0,"engine_version":null,"pid":null,"problem":"shard 3 cannot load its data files"}"#;
        let decoded: ShardReport = serde_json::from_str(shard).unwrap();
        assert_eq!(
            decoded.problem.as_deref(),
            Some("shard 3 cannot load its data files")
        );
        assert_eq!(serde_json::to_string(&decoded).unwrap(), shard);
        let node = r#"{"uid":2,"software_version":"0.2.0","os":"Debian","shards":[],"problems":["data dir /d is full"]}"#;
        let decoded: NodeReport = serde_json::from_str(node).unwrap();
        assert_eq!(decoded.problems, vec!["data dir /d is full".to_string()]);
        assert_eq!(serde_json::to_string(&decoded).unwrap(), node);
        // 0.1.0's NodeReport: no `total_memory`, no `problems`, unknown fields ignored.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct NodeReport010 {
            uid: NodeUid,
            software_version: String,
            os: String,
            #[serde(default)]
            shards: Vec<ShardReport>,
        }
        let old: NodeReport010 = serde_json::from_str(node).unwrap();
        assert_eq!(old.uid, 2);
        let healthy = NodeReport {
            problems: Vec::new(),
            ..decoded
        };
        assert!(!serde_json::to_string(&healthy)
            .unwrap()
            .contains("problems"));
    }

    /// The Rust names say primary; the JSON keeps the names 0.1.0 and Redis Software use.
    #[test]
    fn renamed_fields_keep_their_json_names() {
        let cluster = r#"{"name":"c1","created_time":1700000000,"master_node":2,"nodes_count":3,"default_redis_version":"valkey-9.1","cluster_version":"0.2.0"}"#;
        let info: ClusterInfo = serde_json::from_str(cluster).unwrap();
        assert_eq!(info.primary_node, Some(2));
        assert_eq!(serde_json::to_string(&info).unwrap(), cluster);
        let health = r#"{"status":"ok","node_uid":1,"master_node":2,"software_version":"0.2.0","handover_protocol":1,"pid":42}"#;
        let decoded: Health = serde_json::from_str(health).unwrap();
        assert_eq!(decoded.primary_node, Some(2));
        assert_eq!(serde_json::to_string(&decoded).unwrap(), health);
        let report = r#"{"uid":3,"up":true,"role":"slave","offset":7,"master_link_up":true,"sync_in_progress":false,"used_memory":1024,"engine_version":"7.0.15","pid":42}"#;
        let decoded: ShardReport = serde_json::from_str(report).unwrap();
        assert!(decoded.primary_link_up && decoded.role == Some(Replica));
        assert_eq!(serde_json::to_string(&decoded).unwrap(), report);
    }

    #[test]
    fn a_node_report_keeps_the_json_of_0_1_0_and_adds_the_memory_only_when_known() {
        let old = r#"{"uid":2,"software_version":"0.1.0","os":"x","shards":[]}"#;
        let decoded: NodeReport = serde_json::from_str(old).unwrap();
        assert_eq!(decoded.total_memory, None);
        assert_eq!(serde_json::to_string(&decoded).unwrap(), old);
        let new =
            r#"{"uid":2,"software_version":"0.2.0","os":"x","shards":[],"total_memory":1024}"#;
        let decoded: NodeReport = serde_json::from_str(new).unwrap();
        assert_eq!(decoded.total_memory, Some(1024));
        assert_eq!(serde_json::to_string(&decoded).unwrap(), new);
    }

    #[test]
    fn lifecycle_requests_use_redis_softwares_field_names() {
        let migrate: ShardMigrateRequest =
            serde_json::from_str(r#"{"target_node_uid":3}"#).unwrap();
        assert_eq!(migrate.target_node_uid, 3);
        let promote: PrimaryNodeChange = serde_json::from_str(r#"{"node_uid":2}"#).unwrap();
        assert_eq!(promote.node_uid, 2);
        assert!(serde_json::from_str::<ShardMigrateRequest>(r#"{"node":3}"#).is_err());
    }

    #[test]
    fn an_action_from_a_node_without_plans_still_decodes() {
        let json = r#"{"action_uid":1,"name":"SMUpgradeBDB","object":"bdb:1","status":"running","pending_ops":"finalize","step_index":0,"steps_total":1,"progress":0.0,"steps":["finalize"],"error":null,"cancel_requested":false,"history":[],"kind":{"type":"db_upgrade","bdb_uid":1,"redis_version":"valkey-8.1","preserve_roles":false,"parallel_shards":1,"discard_data":false,"original_masters":[1]}}"#;
        let info: ActionInfo = serde_json::from_str(json).unwrap();
        assert!(info.plan.is_empty());
    }
}
