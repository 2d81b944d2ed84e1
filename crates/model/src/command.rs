//! Typed commands: the only way the replicated cluster state changes.

use serde::{Deserialize, Serialize};

use crate::action::{ActionKind, ActionStatus, ActionUid};
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
    CreateCluster {
        /// Cluster name.
        name: String,
        /// Operator credentials (hashed).
        credentials: Credentials,
        /// Internal RPC secret.
        secret: String,
        /// Creation time, seconds since the epoch.
        created_at: u64,
        /// The creating node.
        node: NodeSpec,
    },
    /// Adds a joining node; a node already known by address keeps its uid.
    AddNode {
        /// The joining node.
        node: NodeSpec,
    },
    /// Changes cluster settings; `None` fields stay as they are.
    UpdateCluster {
        /// New cluster name.
        #[serde(default)]
        name: Option<String>,
    },
    /// Records a node's new software version or OS (after an upgrade or a restart).
    UpdateNode {
        /// The node.
        uid: NodeUid,
        /// Its software version now.
        software_version: String,
        /// Its OS now.
        os: String,
    },
    /// Creates a database with its shards placed as planned.
    CreateBdb {
        /// The database.
        bdb: BdbSpec,
        /// Creation time, seconds since the epoch.
        created_at: u64,
        /// Where each shard goes.
        shards: Vec<ShardPlan>,
    },
    /// Changes a database's memory limit or client password; `None` fields stay as they are.
    UpdateBdb {
        /// The database.
        uid: BdbUid,
        /// New memory limit in bytes.
        #[serde(default)]
        memory_size: Option<u64>,
        /// New client password (`Some(None)` removes it).
        #[serde(default)]
        authentication_redis_pass: Option<Option<String>>,
    },
    /// Deletes a database and its shards (agents stop the engines).
    DeleteBdb {
        /// The database.
        uid: BdbUid,
    },
    /// Makes a slave shard the master of its slot range (failover, switchover); the previous
    /// master becomes a slave.
    PromoteShard {
        /// The shard to promote.
        uid: ShardUid,
        /// Only if its master's slots are still held (a planned switchover): a switchover whose
        /// hold was released meanwhile (by a new primary node repairing it) must not complete.
        #[serde(default)]
        require_held: bool,
    },
    /// Adds a temporary replica to a slot range (an upgrade of a database without
    /// replication moves its data through it).
    AddTemporaryReplica {
        /// The database.
        bdb_uid: BdbUid,
        /// Where it goes (its role is always slave).
        plan: ShardPlan,
        /// The engine it runs.
        redis_version: EngineVersion,
    },
    /// Adds the replacement of a master shard during a replicated database's upgrade: a
    /// temporary replica on the master's own node, running the new engine, that syncs from the
    /// same RDB stream as the upgraded replica and takes the old master's place
    /// ([`Command::ReplaceShard`]) once the master role moved away.
    AddReplacement {
        /// The database.
        bdb_uid: BdbUid,
        /// The shard it replaces (its node and slot range are the replacement's).
        replaces: ShardUid,
        /// Its port on that node.
        port: u16,
        /// The engine it runs.
        redis_version: EngineVersion,
    },
    /// Puts a replacement in the place of the shard it replaces: removes the other,
    /// non-temporary shard of its slot range on its node (a slave by then) and makes the
    /// replacement permanent, in one step.
    ReplaceShard {
        /// The replacement (added by [`Command::AddReplacement`]).
        replacement: ShardUid,
    },
    /// Removes a temporary replica (its agent stops the engine and deletes its data).
    RemoveShard {
        /// The shard.
        uid: ShardUid,
    },
    /// Sets or clears the switchover hold on a master shard's slots.
    HoldShard {
        /// The master shard.
        uid: ShardUid,
        /// Hold (true) or release (false).
        held: bool,
    },
    /// Starts an action; refused while another running action touches the same database.
    CreateAction {
        /// What it does.
        action: ActionKind,
        /// Its plan's length.
        steps_total: u32,
        /// Its first step's name.
        first_step: String,
        /// Creation time, seconds since the epoch.
        created_at: u64,
    },
    /// Records an action's progress: the step it reached, or how it ended.
    UpdateAction {
        /// The action.
        uid: ActionUid,
        /// Its status now.
        status: ActionStatus,
        /// The step to run next.
        step_index: u32,
        /// That step's name.
        step: String,
        /// The error, when it failed.
        #[serde(default)]
        error: Option<String>,
        /// Time of the change, seconds since the epoch.
        updated_at: u64,
        /// The step that just finished and how long it took.
        #[serde(default)]
        finished: Option<crate::action::StepRecord>,
        /// Applied only while the action is still at this step (a deposed primary node must
        /// not rewind or fail an action the new primary node drives).
        #[serde(default)]
        expected_step: Option<u32>,
    },
    /// Asks a running action to stop at its next safe step boundary.
    CancelAction {
        /// The action.
        uid: ActionUid,
    },
    /// Sets the engine version a shard should run (agents restart it on that engine).
    SetShardVersion {
        /// The shard.
        uid: ShardUid,
        /// The engine.
        redis_version: EngineVersion,
    },
    /// Records a database's engine version once all its shards run it.
    SetBdbVersion {
        /// The database.
        uid: BdbUid,
        /// The engine.
        redis_version: EngineVersion,
    },
    /// A command kind this software version does not know; applying it changes nothing.
    #[serde(other)]
    Unknown,
}

/// What a node says about itself when it creates or joins the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The address the node binds.
    pub addr: String,
    /// Its Flotilla software version.
    pub software_version: String,
    /// Its operating system.
    pub os: String,
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
        let cmd = Command::UpdateCluster {
            name: Some("n".into()),
        };
        let mut json: serde_json::Value = serde_json::to_value(&cmd).unwrap();
        json["added_in_a_newer_version"] = serde_json::json!(true);
        let back: Command = serde_json::from_value(json).unwrap();
        assert_eq!(back, cmd);
    }
}
