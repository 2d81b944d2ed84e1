//! The cluster's objects and the typed commands that change them.
//!
//! This crate owns the shape of the replicated cluster configuration (see DESIGN.md, "The cluster
//! store"): cluster settings, nodes, databases, shards, actions and id counters.
//! It has no I/O: the store crate replicates [`Command`]s through Raft and
//! applies them here with [`ClusterState::apply`], deterministically, on every node.
//!
//! It also answers what the other crates ask of the state, once: the slot group of a range
//! ([`ClusterState::slot_group`]), a shard's engine address ([`ClusterState::shard_addr`]), the
//! engines' users and passwords ([`ClusterState::engine_credentials`]), a database's primaries in slot order
//! ([`ClusterState::primaries_of`]), whether a reported replica is linked
//! ([`rest::ShardReport::serves_in`]) and the steps of an action ([`plan()`]).
//!
//! # Encoding across adjacent software versions
//!
//! Commands and state are serialized as JSON (serde) and follow three rules so that a node one
//! software version older can decode everything a newer node may propose before finalization:
//! - every struct tolerates unknown fields (no `deny_unknown_fields`), and every field added after
//!   the first release carries `#[serde(default)]`, so old readers skip new fields and new readers
//!   fill in missing ones;
//! - [`Command`] is internally tagged by `kind`; a kind this version does not know decodes as
//!   [`Command::Unknown`] instead of failing the whole log entry;
//! - a new kind of command is proposed only once the cluster version allows it (finalization), so
//!   `Unknown` is a safety net, never a normal path: applying it changes nothing and is logged.

mod action;
mod bdb;
mod clock;
mod command;
pub mod crdb;
pub mod crdb_sync;
mod engine_users;
mod engine_version;
mod error;
mod maintenance;
mod plan;
pub mod rest;
mod settings;
mod state;
pub mod timing;
mod version;

pub use action::{
    Action, ActionKind, ActionStatus, ActionUid, ClusterUpgrade, NodeDrain, ShardMove, StepRecord,
    StepState, UpgradeMethod,
};
pub use bdb::{
    sha256_hex, Bdb, BdbSpec, BdbUid, ClientLimits, ClientLimitsChange, DataPersistence,
    DatabasePassword, Shard, ShardPlan, ShardRole, ShardUid, SlotRange, TlsMode,
    DEFAULT_CLIENT_OUTPUT_TIMEOUT, DEFAULT_CLIENT_QUERY_BUFFER_LIMIT, ENDPOINT_PORTS, MAX_SHARDS,
    MIN_CLIENT_QUERY_BUFFER_LIMIT, SHARD_PORTS, SLOT_COUNT,
};
pub use clock::{now_millis, now_secs};
pub use command::{
    ActionCancellation, ActionCreation, ActionPruning, ActionResumption, ActionUpdate, BdbChange,
    BdbCreation, BdbDeletion, BdbVersionChange, CertificateRotation, ClusterChange,
    ClusterCreation, ClusterVersionFinalization, Command, CommandResult, CrdbChange, CrdbCreation,
    CrdbDeletion, DrainRecord, NodeAddition, NodeCertificateIssue, NodeChange, NodeHost,
    NodeRemoval, NodeReplacement, NodeSpec, ReplacementAddition, ShardHold, ShardMigration,
    ShardPromotion, ShardRemoval, ShardReplacement, ShardVersionChange, TemporaryReplicaAddition,
};
pub use crdb::{check_guid, BdbCrdt, Crdb, CrdbCluster, CrdbInstance, CrdtReplicaId};
pub use engine_users::{EngineCredentials, EngineUsers, ADMIN_USER, PROXY_USER, REPLICATION_USER};
pub use engine_version::{EngineVersion, UnknownEngineVersion};
pub use error::ModelError;
pub use maintenance::{
    MaintenanceEntry, MaintenanceExit, MaintenanceOff, MaintenanceOffRequest, MaintenanceOn,
    MaintenanceOnRequest, NodeMaintenance, ShardDemotion, SnapshotShard,
};
pub use plan::{plan, Op, Step, UpgradeShape, MIGRATION_OPS};
pub use settings::{
    check_setting, engine_setting_name, engine_setting_names, glob_matches, is_configurable,
    is_persistence_setting, same_setting_value, DatabaseConfig, SettingError, PERSISTENCE_SETTINGS,
};
pub use state::{
    Cluster, ClusterCa, ClusterState, Credentials, IdCounters, Node, NodeCertificate, NodeUid,
    SlotGroup,
};
pub use version::{at_least, compare_versions, FIRST_RELEASE, VERSIONED_RELEASE};
