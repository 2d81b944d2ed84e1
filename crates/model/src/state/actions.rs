//! Actions: their creation (one running action per database), progress, cancellation.

use super::{ClusterState, NodeUid};
use crate::action::{
    Action, ActionKind, ActionStatus, ActionUid, FINISHED_ACTIONS_KEPT, FINISHED_ACTIONS_KEPT_FOR,
    FINISHED_ACTIONS_MAX,
};
use crate::bdb::BdbUid;
use crate::command::{ActionCreation, ActionUpdate, CommandResult};
use crate::error::ModelError;

impl ClusterState {
    /// The action (running or paused) that touches database `bdb`, if any.
    pub fn running_action_on(&self, bdb: BdbUid) -> Option<&Action> {
        self.actions
            .values()
            .find(|a| a.is_active() && a.kind.bdb_uids().contains(&bdb))
    }

    /// The action (running or paused) that moves shards off or onto node `node` (or removes
    /// it), if any.
    pub fn running_action_on_node(&self, node: NodeUid) -> Option<&Action> {
        self.actions
            .values()
            .find(|a| a.is_active() && a.kind.node_uids().contains(&node))
    }

    /// Whether node `node` is being removed: no new shard is placed on it.
    pub fn is_leaving(&self, node: NodeUid) -> bool {
        self.actions.values().any(|a| {
            a.is_active()
                && match &a.kind {
                    ActionKind::NodeRemove { node_uid, .. } => *node_uid == node,
                    // A drained node that joined back (replace-node) is upgraded.
                    ActionKind::ClusterUpgrade(upgrade) => {
                        upgrade.drain_of(node).is_some()
                            && self
                                .nodes
                                .get(&node)
                                .is_some_and(|n| !upgrade.is_done_on(n))
                    }
                    _ => false,
                }
        })
    }

    /// Refuses an action on objects that do not exist or that a running action touches.
    fn check_new_action(&self, kind: &ActionKind) -> Result<(), ModelError> {
        let databases = kind.bdb_uids();
        if let Some(missing) = databases.iter().find(|b| !self.bdbs.contains_key(*b)) {
            return Err(ModelError::NotFound(format!(
                "database {missing} does not exist"
            )));
        }
        if let Some(missing) = kind
            .node_uids()
            .iter()
            .find(|n| !self.nodes.contains_key(*n))
        {
            return Err(ModelError::NotFound(format!(
                "node {missing} is not in the cluster; `flotilla status` lists the nodes"
            )));
        }
        let busy_bdb = databases
            .iter()
            .find_map(|bdb| Some((format!("database {bdb}"), self.running_action_on(*bdb)?)));
        let busy_node = || {
            kind.node_uids().iter().find_map(|node| {
                Some((format!("node {node}"), self.running_action_on_node(*node)?))
            })
        };
        if let Some((object, running)) = busy_bdb.or_else(busy_node) {
            return Err(ModelError::AlreadyExists(format!(
                "action {} ({}) is running on {object} (step '{}'); wait for it (`flotilla action wait {}`) or cancel it (`flotilla action cancel {}`)",
                running.uid,
                running.kind.name(),
                running.step,
                running.uid,
                running.uid
            )));
        }
        Ok(())
    }

    /// The finished actions to drop at `now` (seconds since the epoch): all but the
    /// [`FINISHED_ACTIONS_KEPT`] that ended last, and the younger than
    /// [`FINISHED_ACTIONS_KEPT_FOR`] up to [`FINISHED_ACTIONS_MAX`]. Running actions are
    /// never listed.
    pub fn prunable_actions(&self, now: u64) -> Vec<ActionUid> {
        let mut finished: Vec<&Action> = self.actions.values().filter(|a| !a.is_active()).collect();
        finished.sort_by_key(|a| std::cmp::Reverse((a.updated_at, a.uid)));
        let young_after = now.saturating_sub(FINISHED_ACTIONS_KEPT_FOR.as_secs());
        let mut doomed: Vec<ActionUid> = finished
            .iter()
            .enumerate()
            .filter(|(rank, action)| {
                let young = action.updated_at >= young_after;
                *rank >= FINISHED_ACTIONS_MAX || (*rank >= FINISHED_ACTIONS_KEPT && !young)
            })
            .map(|(_, action)| action.uid)
            .collect();
        doomed.sort_unstable();
        doomed
    }

    /// Drops the listed actions that are finished; a running or unknown one is left alone, so
    /// the command is safe to apply again.
    pub(super) fn prune_actions(&mut self, uids: &[ActionUid]) -> CommandResult {
        for uid in uids {
            if self.actions.get(uid).is_some_and(|a| !a.is_active()) {
                self.actions.remove(uid);
            }
        }
        CommandResult::Ok
    }

    pub(super) fn create_action(
        &mut self,
        creation: ActionCreation,
    ) -> Result<CommandResult, ModelError> {
        let ActionCreation {
            action: kind,
            steps_total,
            first_step,
            created_at,
        } = creation;
        self.check_new_action(&kind)?;
        let uid = self.next_ids.next_action_uid;
        self.next_ids.next_action_uid += 1;
        self.actions.insert(
            uid,
            Action {
                uid,
                kind,
                status: ActionStatus::Running,
                step_index: 0,
                step: first_step,
                steps_total,
                error: None,
                cancel_requested: false,
                created_at,
                updated_at: created_at,
                history: Vec::new(),
            },
        );
        Ok(CommandResult::ActionCreated { uid })
    }

    fn action_mut(&mut self, uid: ActionUid) -> Result<&mut Action, ModelError> {
        self.actions
            .get_mut(&uid)
            .ok_or_else(|| ModelError::NotFound(format!("action {uid} does not exist")))
    }

    pub(super) fn update_action(
        &mut self,
        update: ActionUpdate,
    ) -> Result<CommandResult, ModelError> {
        let ActionUpdate {
            uid,
            status,
            step_index,
            step,
            error,
            updated_at,
            finished,
            expected_step,
        } = update;
        let action = self.action_mut(uid)?;
        if expected_step.is_some_and(|expected| expected != action.step_index) {
            return Err(ModelError::InvalidValue(format!(
                "action {uid} is at step {} now, not {:?}; another primary node moved it on",
                action.step_index, expected_step
            )));
        }
        if !action.is_running() {
            return Err(ModelError::InvalidValue(format!(
                "action {uid} already ended ({:?})",
                action.status
            )));
        }
        action.status = status;
        action.step_index = step_index;
        action.step = step;
        action.error = error;
        action.updated_at = updated_at;
        action.history.extend(finished);
        Ok(CommandResult::Ok)
    }

    pub(super) fn cancel_action(&mut self, uid: ActionUid) -> Result<CommandResult, ModelError> {
        let action = self.action_mut(uid)?;
        // A paused action waits at a step boundary with nothing half done: it ends at once.
        if action.status == ActionStatus::Paused {
            action.status = ActionStatus::Cancelled;
            action.cancel_requested = true;
            return Ok(CommandResult::Ok);
        }
        if !action.is_running() {
            return Err(ModelError::InvalidValue(format!(
                "action {uid} is not running ({:?}); nothing to cancel",
                action.status
            )));
        }
        action.cancel_requested = true;
        Ok(CommandResult::Ok)
    }
}

impl ClusterState {
    /// Sets a paused (or failed) action running again at the step where it stopped
    /// (`flotilla action resume`): every step is safe to run again.
    pub(super) fn resume_action(&mut self, uid: ActionUid) -> Result<CommandResult, ModelError> {
        let action = self.action_mut(uid)?;
        if !matches!(action.status, ActionStatus::Paused | ActionStatus::Failed) {
            return Err(ModelError::InvalidValue(format!(
                "action {uid} is {:?}: only a paused or failed action resumes",
                action.status
            )));
        }
        action.status = ActionStatus::Running;
        action.error = None;
        Ok(CommandResult::Ok)
    }

    /// Records how old node `record.drain.node_uid` of cluster upgrade `record.action_uid`
    /// drains; the first record stays (a resumed step that records again changes nothing).
    pub(super) fn record_drain(
        &mut self,
        record: crate::command::DrainRecord,
    ) -> Result<CommandResult, ModelError> {
        let action = self.action_mut(record.action_uid)?;
        if !action.is_active() {
            return Err(ModelError::InvalidValue(format!(
                "action {} already ended ({:?})",
                record.action_uid, action.status
            )));
        }
        let ActionKind::ClusterUpgrade(upgrade) = &mut action.kind else {
            return Err(ModelError::InvalidValue(format!(
                "action {} is not a cluster upgrade",
                record.action_uid
            )));
        };
        if upgrade.drain_of(record.drain.node_uid).is_none() {
            upgrade.drains.push(record.drain);
        }
        Ok(CommandResult::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bdb_spec, plan, with_db};
    use super::*;
    use crate::action::{ActionKind, StepRecord};
    use crate::bdb::ShardRole;
    use crate::command::{ActionCancellation, Command};
    use crate::EngineVersion;

    fn with_action() -> ClusterState {
        let mut state = with_db(
            bdb_spec("db1", 12000),
            vec![plan(1, ShardRole::Primary, 20000)],
        );
        assert_eq!(
            state.apply(create_action()),
            CommandResult::ActionCreated { uid: 1 }
        );
        state
    }

    fn create_action() -> Command {
        Command::CreateAction(ActionCreation {
            action: ActionKind::DbUpgrade {
                bdb_uid: 1,
                redis_version: EngineVersion::Valkey81,
                preserve_roles: false,
                parallel_shards: 1,
                discard_data: false,
                original_primaries: vec![1],
                raise_crdt_protocol: None,
            },
            steps_total: 3,
            first_step: "a".into(),
            created_at: 6,
        })
    }

    fn update(step_index: u32, status: ActionStatus, expected_step: Option<u32>) -> Command {
        Command::UpdateAction(ActionUpdate {
            uid: 1,
            status,
            step_index,
            step: format!("step {step_index}"),
            error: None,
            updated_at: 7,
            finished: Some(StepRecord {
                step: "previous".into(),
                duration_ms: 3,
            }),
            expected_step,
        })
    }

    /// A state with `count` finished actions, action `i` (from 1) ended at `ended(i)`, and one
    /// running action.
    fn with_finished(count: u64, ended: impl Fn(u64) -> u64) -> ClusterState {
        let mut state = with_db(
            bdb_spec("db1", 12000),
            vec![plan(1, ShardRole::Primary, 20000)],
        );
        for i in 1..=count {
            assert_eq!(
                state.apply(create_action()),
                CommandResult::ActionCreated { uid: i }
            );
            let mut done = update(3, ActionStatus::Completed, None);
            if let Command::UpdateAction(update) = &mut done {
                update.uid = i;
                update.updated_at = ended(i);
            }
            assert_eq!(state.apply(done), CommandResult::Ok);
        }
        state.apply(create_action());
        state
    }

    const DAY: u64 = 24 * 3600;

    #[test]
    fn pruning_keeps_the_newest_finished_actions_and_the_running_one() {
        let now = 100 * DAY;
        // 150 actions that ended long ago, one per minute.
        let mut state = with_finished(150, |i| DAY + i * 60);
        let doomed = state.prunable_actions(now);
        assert_eq!(doomed, (1..=50).collect::<Vec<_>>(), "the 50 oldest go");
        let pruning = Command::PruneActions(crate::ActionPruning { uids: doomed });
        assert_eq!(state.apply(pruning.clone()), CommandResult::Ok);
        assert_eq!(state.actions.len(), 101, "100 finished and the running one");
        assert!(state.actions.contains_key(&150) && state.actions.contains_key(&51));
        assert!(state.running_action_on(1).is_some());
        assert!(state.prunable_actions(now).is_empty());
        assert_eq!(
            state.apply(pruning),
            CommandResult::Ok,
            "safe to apply again"
        );
        assert_eq!(state.actions.len(), 101);
    }

    #[test]
    fn pruning_keeps_a_young_past_up_to_the_cap_and_never_a_running_action() {
        let now = 100 * DAY;
        // 1,100 actions that ended in the last day.
        let state = with_finished(1100, |i| now - DAY + i);
        let doomed = state.prunable_actions(now);
        assert_eq!(doomed, (1..=100).collect::<Vec<_>>(), "beyond the cap only");
        let running = state.running_action_on(1).expect("running").uid;
        let mut state = state;
        let listed = Command::PruneActions(crate::ActionPruning {
            uids: vec![running],
        });
        assert_eq!(state.apply(listed), CommandResult::Ok);
        assert!(
            state.actions.contains_key(&running),
            "a running action stays"
        );
    }

    #[test]
    fn one_running_action_per_database() {
        let mut state = with_action();
        assert!(matches!(
            state.apply(create_action()),
            CommandResult::Refused(ModelError::AlreadyExists(_))
        ));
        assert_eq!(state.running_action_on(1).map(|a| a.uid), Some(1));
    }

    fn node_remove(node_uid: u64, to_node: u64) -> Command {
        Command::CreateAction(ActionCreation {
            action: ActionKind::NodeRemove {
                node_uid,
                moves: vec![crate::action::ShardMove {
                    shard_uid: 1,
                    bdb_uid: 1,
                    assigned_slots: crate::SlotRange::even(0, 1),
                    from_node: node_uid,
                    to_node,
                }],
            },
            steps_total: 6,
            first_step: "demote_node".into(),
            created_at: 6,
        })
    }

    #[test]
    fn an_action_on_a_database_or_node_another_one_moves_is_refused_and_names_it() {
        let mut state = with_action();
        let before = state.clone();
        let CommandResult::Refused(e) = state.apply(node_remove(1, 2)) else {
            panic!("database 1 is being upgraded")
        };
        assert!(
            e.to_string()
                .contains("action 1 (SMUpgradeBDB) is running on database 1"),
            "{e}"
        );
        assert!(e.to_string().contains("flotilla action wait 1"), "{e}");
        assert_eq!(state, before);
        state.apply(update(3, ActionStatus::Completed, Some(0)));
        assert_eq!(
            state.apply(node_remove(1, 2)),
            CommandResult::ActionCreated { uid: 2 }
        );
        assert!(state.is_leaving(1) && !state.is_leaving(2));
        assert_eq!(state.running_action_on_node(2).map(|a| a.uid), Some(2));
        let CommandResult::Refused(e) = state.apply(create_action()) else {
            panic!("database 1 is being drained")
        };
        assert!(e.to_string().contains("SMRemoveNode"), "{e}");
        let CommandResult::Refused(e) = state.apply(node_remove(9, 2)) else {
            panic!("no node 9")
        };
        assert!(
            e.to_string().contains("node 9 is not in the cluster"),
            "{e}"
        );
    }

    #[test]
    fn progress_from_a_deposed_primary_node_or_after_the_end_is_refused() {
        let mut state = with_action();
        let next = update(1, ActionStatus::Running, Some(0));
        assert_eq!(state.apply(next.clone()), CommandResult::Ok);
        assert!(
            matches!(state.apply(next), CommandResult::Refused(_)),
            "the action moved on"
        );
        let action = &state.actions[&1];
        assert_eq!((action.step_index, action.history.len()), (1, 1));
        let done = update(3, ActionStatus::Completed, Some(1));
        assert_eq!(state.apply(done), CommandResult::Ok);
        assert!(state.running_action_on(1).is_none());
        let cancel = Command::CancelAction(ActionCancellation { uid: 1 });
        assert!(matches!(state.apply(cancel), CommandResult::Refused(_)));
        assert!(matches!(
            state.apply(update(2, ActionStatus::Running, None)),
            CommandResult::Refused(_)
        ));
    }
}
