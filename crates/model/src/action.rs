//! Actions: long operations kept in the store as state machines with named steps.
//!
//! The primary node drives every running action; after each step it records the next step in
//! the store, and every step is safe to run again, so when the primary dies mid-action the next
//! one resumes where the record says (DESIGN.md, Actions).

use serde::{Deserialize, Serialize};

use crate::bdb::{BdbUid, ShardUid};
use crate::engine_version::EngineVersion;

/// An action's uid.
pub type ActionUid = u64;

/// What an action does, with everything needed to resume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActionKind {
    /// Moves a database to another engine version (Redis Software's `SMUpgradeBDB`).
    DbUpgrade {
        /// The database.
        bdb_uid: BdbUid,
        /// The engine it moves to.
        redis_version: EngineVersion,
        /// Switch back so that each slot range's master is where it was.
        preserve_roles: bool,
        /// Slot ranges upgraded at the same time.
        parallel_shards: u16,
        /// Restart every shard empty on the new engine instead of moving data.
        discard_data: bool,
        /// The master of each slot range when the upgrade began (for `preserve_roles`).
        original_masters: Vec<ShardUid>,
    },
}

impl ActionKind {
    /// The database the action works on.
    pub fn bdb_uid(&self) -> BdbUid {
        match self {
            ActionKind::DbUpgrade { bdb_uid, .. } => *bdb_uid,
        }
    }

    /// Redis Software's name for the state machine.
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::DbUpgrade { .. } => "SMUpgradeBDB",
        }
    }
}

/// Where an action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Being driven by the primary node.
    Running,
    /// Done.
    Completed,
    /// Stopped on an error it could not get past (the error says which and the fix).
    Failed,
    /// Stopped by an operator at a step boundary.
    Cancelled,
}

/// One action as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Action uid.
    pub uid: ActionUid,
    /// What it does.
    pub kind: ActionKind,
    /// Where it stands.
    pub status: ActionStatus,
    /// Index of the step to run next (or running) in the action's plan.
    pub step_index: u32,
    /// That step's name, e.g. `range 0-8191: upgrade_replica`.
    pub step: String,
    /// Steps in the plan.
    pub steps_total: u32,
    /// Why it failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
    /// An operator asked to cancel; honoured at the next safe step boundary.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// Last change, seconds since the epoch.
    pub updated_at: u64,
    /// Every finished step with how long it took, in order.
    #[serde(default)]
    pub history: Vec<StepRecord>,
}

/// A finished step and its duration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name.
    pub step: String,
    /// How long it took, in milliseconds (as the primary node that ran it measured).
    pub duration_ms: u64,
}

impl Action {
    /// Whether the action still runs.
    pub fn is_running(&self) -> bool {
        self.status == ActionStatus::Running
    }
}
