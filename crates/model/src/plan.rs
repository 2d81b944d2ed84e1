//! The plan of an action: its named steps, computed by one pure function of the action's kind
//! and the cluster state ([`plan`]).
//!
//! The primary node runs the steps in this order, `GET /v1/actions/{uid}` lists them, and the
//! tests read their names from here: nobody else derives them. The plan is recomputed from the
//! action's persisted kind (never stored), so it must stay the same from one step to the next
//! while the action changes the state (temporary shards share their slot range, so they add no
//! step) and after a primary node change.
//!
//! A database upgrade (Redis Software's `SMUpgradeBDB`, DESIGN.md "Upgrades -> Databases")
//! upgrades slot ranges in batches of `parallel_shards`, each batch running the operations of
//! its [`UpgradeShape`], then `finalize` records the database's new engine.
//!
//! A shard migration runs [`MIGRATION_OPS`] on its shard; a node removal moves primary-ship
//! away (`demote_node`), runs them on each shard it drains, in the planned order, and then
//! `leave_cluster`. Their steps name the shard (`add_copy shard:4`): the plan comes from the
//! moves the action recorded when it was asked for, so it stays the same while shards move.

use crate::action::{ActionKind, ClusterUpgrade, ShardMove, UpgradeMethod};
use crate::bdb::{ShardUid, SlotRange};
use crate::state::{ClusterState, NodeUid};

/// One operation of a plan, run on every slot range of its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// The range's replicas restart on the new engine.
    UpgradeReplica,
    /// Waits until the range's new-engine replicas are up and linked (their full sync done).
    SyncReplica,
    /// Planned switchover of the range's primary role to an upgraded replica.
    Switchover,
    /// The old primary, a replica by now, restarts on the new engine.
    UpgradeOldPrimary,
    /// Waits until the old primary is up and linked on the new engine.
    SyncOldPrimary,
    /// Switchover back to the range's original primary.
    SwitchBack,
    /// Every shard of the range restarts, empty, on the new engine (`discard_data`).
    RestartOnNewEngine,
    /// Waits until the restarted shards answer on the new engine.
    WaitShardsUp,
    /// Adds a temporary replica to a range of a database without replication.
    AddTemporaryReplica,
    /// Removes the temporary replica again.
    RemoveTemporaryReplica,
    /// Adds, beside the range's primary and on its node, a replacement on the new engine.
    AddReplacement,
    /// The replacement takes the old primary's place once it follows the new primary.
    ReplaceOldPrimary,
    /// Records the database's new engine version.
    Finalize,
    /// Adds a copy of a moving shard on its target node (a temporary replica of its range).
    AddCopy,
    /// Waits until the new copy is up and linked to its primary (its full sync done).
    SyncCopy,
    /// Drops the moved shard (a replica by now) and makes its new copy permanent.
    DropOld,
    /// Moves primary-ship off a node that leaves.
    DemoteNode,
    /// The drained node leaves the Raft membership and its record goes.
    LeaveCluster,
    /// A node's daemon moves to the new package in place (handover, or restart between
    /// versions without one).
    UpgradeNode,
    /// Records the cluster version every node now runs.
    FinalizeCluster,
    /// Rolling upgrade (add-node): a new node with the package joins for an old one (the
    /// operator installs it; the step pauses until it is there).
    AddNode,
    /// Rolling upgrade: every shard of an old node moves off it ([`MIGRATION_OPS`] for each,
    /// targets recorded when the drain begins), primary-ship first when it holds it.
    DrainNode,
    /// Rolling upgrade (replace-node): the old node's reinstalled machine joins back under its
    /// uid with the package (the operator reinstalls it; the step pauses until it is there).
    RejoinNode,
    /// Maintenance mode: records the node's placement and roles and marks the node.
    Snapshot,
    /// Maintenance mode: ends an activation; with the last, clears the mark and deletes the
    /// snapshot.
    EndMaintenance,
}

/// The operations that move one shard to another node, in order: a copy there, caught up, the
/// primary role moved to it (when the shard holds it: the planned switchover, no client error),
/// the old copy dropped.
pub const MIGRATION_OPS: [Op; 4] = [Op::AddCopy, Op::SyncCopy, Op::Switchover, Op::DropOld];

impl Op {
    /// The operation's name, the first word of its steps' names (and what a step failpoint
    /// in `FLOTILLA_FAILPOINTS` names to match every step of the operation). Recorded in the store and shown to operators
    /// like Redis Software's state machine steps, so the names stay those of 0.1.0: an old
    /// primary is still `upgrade_old_master`, `sync_old_master`, `replace_old_master`.
    pub fn name(self) -> &'static str {
        match self {
            Op::UpgradeReplica => "upgrade_replica",
            Op::SyncReplica => "sync_replica",
            Op::Switchover => "switchover",
            Op::UpgradeOldPrimary => "upgrade_old_master",
            Op::SyncOldPrimary => "sync_old_master",
            Op::SwitchBack => "switch_back",
            Op::RestartOnNewEngine => "restart_on_new_engine",
            Op::WaitShardsUp => "wait_shards_up",
            Op::AddTemporaryReplica => "add_temporary_replica",
            Op::RemoveTemporaryReplica => "remove_temporary_replica",
            Op::AddReplacement => "add_replacement",
            Op::ReplaceOldPrimary => "replace_old_master",
            Op::Finalize => "finalize",
            Op::AddCopy => "add_copy",
            Op::SyncCopy => "sync_copy",
            Op::DropOld => "drop_old",
            Op::DemoteNode => "demote_node",
            Op::LeaveCluster => "leave_cluster",
            Op::UpgradeNode => "upgrade_node",
            Op::FinalizeCluster => "finalize_cluster",
            Op::AddNode => "add_node",
            Op::DrainNode => "drain_node",
            Op::RejoinNode => "rejoin_node",
            Op::Snapshot => "snapshot",
            Op::EndMaintenance => "end_maintenance",
        }
    }
}

/// One step of an action's plan: an operation on some slot ranges (run at the same time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step does.
    pub op: Op,
    /// The slot ranges it does it on (none for a step on the whole database).
    pub ranges: Vec<SlotRange>,
    /// The shard it moves (steps of a migration or a node removal).
    pub shard: Option<ShardUid>,
    /// The node it works on (steps of a cluster upgrade).
    pub node: Option<NodeUid>,
    /// A cancel request may stop the action before this step (a boundary where every slot
    /// range runs on one engine, or no shard is half moved).
    pub cancel_point: bool,
}

impl Step {
    /// The step's name as the action records it and the operator sees it: the operation, then
    /// its slot ranges, e.g. `upgrade_replica 0-8191,8192-16383`.
    pub fn name(&self) -> String {
        if let Some(shard) = self.shard {
            return format!("{} shard:{shard}", self.op.name());
        }
        if let Some(node) = self.node {
            return format!("{} node:{node}", self.op.name());
        }
        if self.ranges.is_empty() {
            return self.op.name().to_string();
        }
        let ranges: Vec<String> = self.ranges.iter().map(|r| r.to_string()).collect();
        format!("{} {}", self.op.name(), ranges.join(","))
    }
}

/// Which of the four database upgrade plans applies: it fixes the operations run on each batch
/// of slot ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeShape {
    /// `discard_data`: every shard restarts empty on the new engine.
    DiscardData,
    /// No replication: the data moves through a temporary replica and the primary role always
    /// goes back to the original shard (the temporary one is removed).
    WithoutReplication,
    /// Replication: a replacement beside each old primary and the upgraded replica load one RDB
    /// stream, then the replacement takes the old primary's place (one full sync, not two).
    Replicated,
    /// Replication with `preserve_roles`: the old primaries restart on the new engine in place
    /// and take the primary role back.
    PreserveRoles,
}

impl UpgradeShape {
    /// The shape of an upgrade with these options of a database with or without replication.
    pub fn new(discard_data: bool, replicated: bool, preserve_roles: bool) -> UpgradeShape {
        match (discard_data, replicated, preserve_roles) {
            (true, _, _) => UpgradeShape::DiscardData,
            (false, false, _) => UpgradeShape::WithoutReplication,
            (false, true, false) => UpgradeShape::Replicated,
            (false, true, true) => UpgradeShape::PreserveRoles,
        }
    }

    /// The operations run, in order, on each batch of slot ranges.
    pub fn ops(self) -> &'static [Op] {
        match self {
            UpgradeShape::DiscardData => &[Op::RestartOnNewEngine, Op::WaitShardsUp],
            UpgradeShape::WithoutReplication => &[
                Op::AddTemporaryReplica,
                Op::SyncReplica,
                Op::Switchover,
                Op::UpgradeOldPrimary,
                Op::SyncOldPrimary,
                Op::SwitchBack,
                Op::RemoveTemporaryReplica,
            ],
            UpgradeShape::Replicated => &[
                Op::AddReplacement,
                Op::UpgradeReplica,
                Op::SyncReplica,
                Op::Switchover,
                Op::ReplaceOldPrimary,
            ],
            UpgradeShape::PreserveRoles => &[
                Op::UpgradeReplica,
                Op::SyncReplica,
                Op::Switchover,
                Op::UpgradeOldPrimary,
                Op::SyncOldPrimary,
                Op::SwitchBack,
            ],
        }
    }

    /// The steps of an upgrade of this shape over `ranges`, `parallel_shards` ranges at a time
    /// (at least one): each batch's operations, a cancel point before each batch, then
    /// `finalize`.
    pub fn steps(self, ranges: &[SlotRange], parallel_shards: u16) -> Vec<Step> {
        let mut steps = Vec::new();
        for batch in ranges.chunks(usize::from(parallel_shards.max(1))) {
            for (i, op) in self.ops().iter().enumerate() {
                steps.push(Step {
                    op: *op,
                    ranges: batch.to_vec(),
                    shard: None,
                    node: None,
                    cancel_point: i == 0,
                });
            }
        }
        steps.push(Step::whole(Op::Finalize));
        steps
    }
}

impl Step {
    /// A step on the whole object of its action (no range, no shard), a cancel point.
    fn whole(op: Op) -> Step {
        Step {
            op,
            ranges: Vec::new(),
            shard: None,
            node: None,
            cancel_point: true,
        }
    }

    /// The steps of a cluster upgrade, for each node in order, then `finalize_cluster`:
    /// in place `upgrade_node`; add-node `add_node`, `drain_node`, `leave_cluster`;
    /// replace-node `drain_node`, `leave_cluster`, `rejoin_node`. A cancel point before each
    /// node's first step (a paused action is cancelled at once wherever it waits).
    pub fn cluster_upgrade(upgrade: &ClusterUpgrade) -> Vec<Step> {
        let ops: &[Op] = match upgrade.method {
            UpgradeMethod::InPlace => &[Op::UpgradeNode],
            UpgradeMethod::AddNode => &[Op::AddNode, Op::DrainNode, Op::LeaveCluster],
            UpgradeMethod::ReplaceNode => &[Op::DrainNode, Op::LeaveCluster, Op::RejoinNode],
        };
        upgrade
            .nodes
            .iter()
            .flat_map(|node| {
                ops.iter().enumerate().map(|(i, op)| Step {
                    op: *op,
                    ranges: Vec::new(),
                    shard: None,
                    node: Some(*node),
                    cancel_point: i == 0,
                })
            })
            .chain(std::iter::once(Step::whole(Op::FinalizeCluster)))
            .collect()
    }

    /// The steps that remove a node whose shards go as `moves`: `demote_node`, each move's
    /// steps, `leave_cluster` (what a node removal runs, and any plan that removes nodes).
    pub fn removal(moves: &[ShardMove]) -> Vec<Step> {
        std::iter::once(Step::whole(Op::DemoteNode))
            .chain(moves.iter().flat_map(Step::migration))
            .chain(std::iter::once(Step::whole(Op::LeaveCluster)))
            .collect()
    }

    /// The steps that move one shard ([`MIGRATION_OPS`]); a cancel request stops the action
    /// only before the first.
    pub fn migration(shard_move: &ShardMove) -> Vec<Step> {
        MIGRATION_OPS
            .iter()
            .enumerate()
            .map(|(i, op)| Step {
                op: *op,
                ranges: vec![shard_move.assigned_slots],
                shard: Some(shard_move.shard_uid),
                node: None,
                cancel_point: i == 0,
            })
            .collect()
    }
}

/// The plan of an action: what the primary node runs, step by step, and what the operator sees.
pub fn plan(kind: &ActionKind, state: &ClusterState) -> Vec<Step> {
    match kind {
        ActionKind::DbUpgrade {
            bdb_uid,
            preserve_roles,
            parallel_shards,
            discard_data,
            ..
        } => {
            let replicated = state.bdbs.get(bdb_uid).is_some_and(|b| b.spec.replication);
            UpgradeShape::new(*discard_data, replicated, *preserve_roles)
                .steps(&state.slot_ranges(*bdb_uid), *parallel_shards)
        }
        ActionKind::ShardMigrate(shard_move) => Step::migration(shard_move),
        ActionKind::NodeRemove { moves, .. } => Step::removal(moves),
        ActionKind::ClusterUpgrade(upgrade) => Step::cluster_upgrade(upgrade),
        ActionKind::MaintenanceOn(on) => on.steps(),
        ActionKind::MaintenanceOff(off) => off.steps(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, ReplacementAddition};
    use crate::state::testing::{bdb_spec, plan_on, with_db};
    use crate::{EngineVersion, ShardRole};

    fn names(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::name).collect()
    }

    fn cancel_points(steps: &[Step]) -> Vec<bool> {
        steps.iter().map(|s| s.cancel_point).collect()
    }

    fn upgrade(discard_data: bool, preserve_roles: bool, parallel_shards: u16) -> ActionKind {
        ActionKind::DbUpgrade {
            bdb_uid: 1,
            redis_version: EngineVersion::Valkey81,
            preserve_roles,
            parallel_shards,
            discard_data,
            original_primaries: vec![1],
            raise_crdt_protocol: None,
        }
    }

    /// Two nodes and database 1 with `ranges` slot ranges, replicated or not.
    fn state_with_db(ranges: u16, replication: bool) -> ClusterState {
        let mut shards = Vec::new();
        for i in 0..ranges {
            let slots = SlotRange::even(i, ranges);
            shards.push(plan_on(1, ShardRole::Primary, slots, 20000 + i));
            if replication {
                shards.push(plan_on(2, ShardRole::Replica, slots, 20000 + i));
            }
        }
        let mut spec = bdb_spec("db1", 12000);
        spec.shards_count = ranges;
        spec.replication = replication;
        with_db(spec, shards)
    }

    fn moving(shard_uid: u64, to_node: u64) -> ShardMove {
        ShardMove {
            shard_uid,
            bdb_uid: 1,
            assigned_slots: SlotRange::even(0, 1),
            from_node: 1,
            to_node,
        }
    }

    #[test]
    fn a_migration_adds_a_copy_syncs_it_switches_over_and_drops_the_old_shard() {
        let steps = plan(
            &ActionKind::ShardMigrate(moving(4, 3)),
            &ClusterState::default(),
        );
        assert_eq!(
            names(&steps),
            [
                "add_copy shard:4",
                "sync_copy shard:4",
                "switchover shard:4",
                "drop_old shard:4"
            ]
        );
        assert_eq!(cancel_points(&steps), [true, false, false, false]);
    }

    #[test]
    fn a_node_removal_demotes_the_node_moves_each_shard_in_order_then_leaves() {
        let kind = ActionKind::NodeRemove {
            node_uid: 1,
            moves: vec![moving(4, 3), moving(2, 2)],
        };
        let steps = plan(&kind, &ClusterState::default());
        let names = names(&steps);
        assert_eq!(names.len(), 1 + 2 * MIGRATION_OPS.len() + 1);
        assert_eq!(names[0], "demote_node");
        assert_eq!(names[1], "add_copy shard:4");
        assert_eq!(names[5], "add_copy shard:2");
        assert_eq!(names[9], "leave_cluster");
        let boundaries: Vec<usize> = (0..steps.len())
            .filter(|i| steps[*i].cancel_point)
            .collect();
        assert_eq!(boundaries, [0, 1, 5, 9], "never with a shard half moved");
        assert_eq!(
            plan(&kind, &state_with_db(1, true)),
            steps,
            "recorded moves, not the state"
        );
    }

    #[test]
    fn discard_data_restarts_every_range_then_waits_whatever_the_replication() {
        for replication in [false, true] {
            let state = state_with_db(2, replication);
            let steps = plan(&upgrade(true, true, 1), &state);
            assert_eq!(
                names(&steps),
                [
                    "restart_on_new_engine 0-8191",
                    "wait_shards_up 0-8191",
                    "restart_on_new_engine 8192-16383",
                    "wait_shards_up 8192-16383",
                    "finalize",
                ]
            );
            assert_eq!(cancel_points(&steps), [true, false, true, false, true]);
        }
    }

    #[test]
    fn without_replication_the_data_moves_through_a_temporary_replica() {
        let steps = plan(&upgrade(false, false, 1), &state_with_db(1, false));
        assert_eq!(
            names(&steps),
            [
                "add_temporary_replica 0-16383",
                "sync_replica 0-16383",
                "switchover 0-16383",
                "upgrade_old_master 0-16383",
                "sync_old_master 0-16383",
                "switch_back 0-16383",
                "remove_temporary_replica 0-16383",
                "finalize",
            ]
        );
        assert_eq!(
            cancel_points(&steps),
            [true, false, false, false, false, false, false, true]
        );
        assert_eq!(
            plan(&upgrade(false, true, 1), &state_with_db(1, false)),
            steps,
            "preserve_roles changes nothing: the primary always goes back"
        );
    }

    #[test]
    fn a_replicated_upgrade_replaces_the_old_primary() {
        let steps = plan(&upgrade(false, false, 1), &state_with_db(1, true));
        assert_eq!(
            names(&steps),
            [
                "add_replacement 0-16383",
                "upgrade_replica 0-16383",
                "sync_replica 0-16383",
                "switchover 0-16383",
                "replace_old_master 0-16383",
                "finalize",
            ]
        );
        assert_eq!(
            cancel_points(&steps),
            [true, false, false, false, false, true]
        );
    }

    #[test]
    fn preserve_roles_upgrades_the_old_primary_in_place_and_switches_back() {
        let steps = plan(&upgrade(false, true, 1), &state_with_db(1, true));
        let ops: Vec<Op> = steps.iter().map(|s| s.op).collect();
        assert_eq!(
            ops,
            [
                Op::UpgradeReplica,
                Op::SyncReplica,
                Op::Switchover,
                Op::UpgradeOldPrimary,
                Op::SyncOldPrimary,
                Op::SwitchBack,
                Op::Finalize,
            ]
        );
    }

    #[test]
    fn parallel_shards_batches_the_ranges_and_each_batch_starts_at_a_cancel_point() {
        let state = state_with_db(3, true);
        let steps = plan(&upgrade(false, false, 2), &state);
        let per_batch = UpgradeShape::Replicated.ops().len();
        assert_eq!(steps.len(), 2 * per_batch + 1);
        assert_eq!(steps[0].name(), "add_replacement 0-5461,5462-10922");
        assert_eq!(steps[per_batch].name(), "add_replacement 10923-16383");
        let boundaries: Vec<usize> = (0..steps.len())
            .filter(|i| steps[*i].cancel_point)
            .collect();
        assert_eq!(boundaries, [0, per_batch, 2 * per_batch]);
        assert_eq!(
            plan(&upgrade(false, false, 0), &state),
            plan(&upgrade(false, false, 1), &state),
            "0 counts as 1"
        );
        assert_eq!(
            plan(&upgrade(false, false, 64), &state).len(),
            per_batch + 1,
            "all ranges in one batch"
        );
    }

    #[test]
    fn the_plan_stays_the_same_while_the_upgrade_adds_shards_and_without_the_database() {
        let mut state = state_with_db(2, true);
        let before = plan(&upgrade(false, false, 1), &state);
        let added = state.apply(Command::AddReplacement(ReplacementAddition {
            bdb_uid: 1,
            replaces: 1,
            port: 20010,
            redis_version: EngineVersion::Valkey81,
        }));
        assert!(matches!(added, crate::CommandResult::ShardAdded { .. }));
        assert_eq!(plan(&upgrade(false, false, 1), &state), before);
        let gone = ClusterState::default();
        assert_eq!(names(&plan(&upgrade(false, false, 1), &gone)), ["finalize"]);
    }
}
