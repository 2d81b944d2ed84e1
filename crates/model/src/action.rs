//! Actions: long operations kept in the store as state machines with named steps.
//!
//! The primary node drives every running action; after each step it records the next step in
//! the store, and every step is safe to run again, so when the primary node dies mid-action
//! the next one resumes where the record says (DESIGN.md, Actions).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bdb::{BdbUid, ShardUid};
use crate::engine_version::EngineVersion;

/// An action's uid.
pub type ActionUid = u64;

/// Finished actions always kept, the most recently ended first, whatever their age: what
/// `flotilla action list` shows of the past.
pub const FINISHED_ACTIONS_KEPT: usize = 100;
/// Finished actions that ended less than this long ago are kept too (up to
/// [`FINISHED_ACTIONS_MAX`]), so a busy week's history survives.
pub const FINISHED_ACTIONS_KEPT_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most finished actions kept, however young: the state (and every snapshot) stays bounded
/// however many actions run.
pub const FINISHED_ACTIONS_MAX: usize = 1000;

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
        /// Switch back so that each slot range's primary is where it was.
        preserve_roles: bool,
        /// Slot ranges upgraded at the same time.
        parallel_shards: u16,
        /// Restart every shard empty on the new engine instead of moving data.
        discard_data: bool,
        /// The primary of each slot range when the upgrade began (for `preserve_roles`).
        #[serde(rename = "original_masters")]
        original_primaries: Vec<ShardUid>,
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
    /// That step's name, e.g. `upgrade_replica 0-8191` (see [`crate::plan()`]).
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

/// Where an action stands on one step of its plan, as `GET /v1/actions/{uid}` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Finished.
    Done,
    /// Running now, or where a failed action stopped.
    Current,
    /// Not run (yet, or ever: the action was cancelled before it).
    Pending,
}

impl StepState {
    /// The state of step `index` of a plan whose action is at step `step_index` with
    /// `status`: the steps before it are done; it is current while the action runs or once the
    /// action failed there.
    pub fn at(index: usize, step_index: u32, status: ActionStatus) -> StepState {
        let stopped_here = matches!(status, ActionStatus::Running | ActionStatus::Failed);
        match index.cmp(&(step_index as usize)) {
            std::cmp::Ordering::Less => StepState::Done,
            std::cmp::Ordering::Equal if stopped_here => StepState::Current,
            _ => StepState::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_before_the_recorded_one_are_done_and_it_is_current_unless_the_action_ended_well() {
        let states =
            |status| -> Vec<StepState> { (0..3).map(|i| StepState::at(i, 1, status)).collect() };
        use StepState::{Current, Done, Pending};
        assert_eq!(states(ActionStatus::Running), [Done, Current, Pending]);
        assert_eq!(states(ActionStatus::Failed), [Done, Current, Pending]);
        assert_eq!(states(ActionStatus::Cancelled), [Done, Pending, Pending]);
        let completed: Vec<StepState> = (0..3)
            .map(|i| StepState::at(i, 3, ActionStatus::Completed))
            .collect();
        assert_eq!(completed, [Done, Done, Done]);
    }
}
