//! The steps of maintenance mode (`flotilla node maintenance UID on|off`, Redis Software's
//! `maintenance_mode`; the plans are made by [`crate::maintenance`] and recorded in the action).
//!
//! `on`: `demote_node` hands primary-ship away (with `demote_node`; the new primary node then
//! resumes the action, and whenever the node is found to be the primary node again it hands it
//! away again), `snapshot` records the node's placement and roles and marks it
//! ([`Command::EnterMaintenance`]), `switchover shard:S` hands a kept primary's role to a
//! replica on another node (`keep_slave_shards`), and each recorded move runs the migration
//! steps ([`super::migrate`], as a drain does). `off`: each recorded move back runs the
//! migration steps, `switch_back` gives each slot range's primary role back to the node the
//! snapshot had it on, and `end_maintenance` ends the activation ([`Command::ExitMaintenance`]:
//! with the last one the mark and the snapshot go). Every step reads the state first and does
//! only what is missing.

use flotilla_model::rest::NodeStatus;
use flotilla_model::{
    Action, ActionKind, ActionUid, Command, MaintenanceEntry, MaintenanceExit, MaintenanceOff,
    MaintenanceOn, NodeUid, Op, ShardDemotion, ShardMove, ShardRole, SnapshotShard, Step,
};

use super::db_upgrade::propose;
use super::node_remove::hand_primary_ship_away;
use super::{migrate, StepError};
use crate::switchover;
use crate::Observer;

/// Runs step `index` of a maintenance action (idempotent).
pub async fn run_step(observer: &Observer, action: &Action, index: usize) -> Result<(), StepError> {
    let step = super::planned_step(observer, action, index)?;
    match &action.kind {
        ActionKind::MaintenanceOn(on) => on_step(observer, action.uid, on, &step).await,
        ActionKind::MaintenanceOff(off) => off_step(observer, off, &step).await,
        _ => Err(StepError::never(format!(
            "action {} is not a maintenance action",
            action.uid
        ))),
    }
}

async fn on_step(
    observer: &Observer,
    uid: ActionUid,
    on: &MaintenanceOn,
    step: &Step,
) -> Result<(), StepError> {
    let node = on.node_uid;
    if on.demote_node && observer.store.uid() == Some(node) {
        return hand_primary_ship_away(observer, node).await;
    }
    let context = || format!("maintenance of node {node}");
    match step.op {
        // Done above: this node is not the one in maintenance.
        Op::DemoteNode => Ok(()),
        Op::Snapshot => snapshot(observer, uid, on).await,
        Op::Switchover if on.demotions.iter().any(|d| Some(d.shard_uid) == step.shard) => {
            let demotion = on
                .demotions
                .iter()
                .find(|d| Some(d.shard_uid) == step.shard)
                .expect("found above");
            demote(observer, node, demotion)
                .await
                .map_err(|e| e.context(context()))
        }
        op => run_move(observer, &on.moves, step, op)
            .await
            .map_err(|e| e.context(context())),
    }
}

async fn off_step(observer: &Observer, off: &MaintenanceOff, step: &Step) -> Result<(), StepError> {
    let node = off.node_uid;
    match step.op {
        Op::SwitchBack => switch_back(observer, &off.primaries).await,
        Op::EndMaintenance => {
            let exit = MaintenanceExit {
                node_uid: node,
                activation: off.activation,
            };
            propose(observer, Command::ExitMaintenance(exit)).await
        }
        op => run_move(observer, &off.moves, step, op)
            .await
            .map_err(|e| e.context(format!("restoring node {node}'s shards"))),
    }
}

/// Runs migration operation `op` of the recorded move the step names.
async fn run_move(
    observer: &Observer,
    moves: &[ShardMove],
    step: &Step,
    op: Op,
) -> Result<(), StepError> {
    let shard_move = moves
        .iter()
        .find(|m| Some(m.shard_uid) == step.shard)
        .ok_or_else(|| StepError::never(format!("step '{}' names no planned move", step.name())))?;
    migrate::run_op(observer, shard_move, op).await
}

/// `snapshot node:N`: records this activation, with a snapshot of the node's placement and
/// roles when it has none yet or `overwrite_snapshot` asks for a new one (done once the
/// activation is recorded).
async fn snapshot(
    observer: &Observer,
    uid: ActionUid,
    on: &MaintenanceOn,
) -> Result<(), StepError> {
    let state = observer.store.state();
    let node = state.nodes.get(&on.node_uid).ok_or_else(|| {
        StepError::never(format!(
            "node {} is no longer in the cluster; nothing to put in maintenance",
            on.node_uid
        ))
    })?;
    let snapshot = match &node.maintenance {
        Some(m) if m.activations.contains(&uid) => return Ok(()),
        Some(_) if !on.overwrite_snapshot => None,
        _ => Some(state.placement_snapshot(on.node_uid)),
    };
    let entry = MaintenanceEntry {
        node_uid: on.node_uid,
        activation: uid,
        snapshot,
    };
    propose(observer, Command::EnterMaintenance(entry)).await
}

/// `switchover shard:S` of `on --keep-replicas`: the kept primary hands its role to a replica
/// on another node that is up and out of maintenance, and stays as a replica.
async fn demote(
    observer: &Observer,
    node: NodeUid,
    demotion: &ShardDemotion,
) -> Result<(), StepError> {
    let state = observer.store.state();
    let Some(shard) = state.shards.get(&demotion.shard_uid).cloned() else {
        return Ok(());
    };
    if shard.role != ShardRole::Primary || shard.node_uid != node {
        return Ok(());
    }
    switchover::finish_interrupted(observer, &shard).await?;
    let state = observer.store.state();
    let Some(shard) = state.shards.get(&demotion.shard_uid) else {
        return Ok(());
    };
    if shard.role != ShardRole::Primary {
        return Ok(());
    }
    let statuses = observer.local_statuses();
    let replica = crate::maintenance::takeover_replica(&state, shard, &statuses).ok_or_else(|| {
        StepError::later(format!(
            "slot range {} of database {} has no replica on another node that is up and out of maintenance to take the primary role of shard {}; bring one up, or turn maintenance on without --keep-replicas",
            shard.assigned_slots, shard.bdb_uid, shard.uid
        ))
    })?;
    switch_to(observer, replica.uid).await
}

/// `switch_back node:N`: each slot range's primary role goes back to the node the snapshot
/// had it on (a range whose database is gone, or already there, is skipped).
async fn switch_back(observer: &Observer, primaries: &[SnapshotShard]) -> Result<(), StepError> {
    for place in primaries {
        let state = observer.store.state();
        let group = state.slot_group(place.bdb_uid, place.assigned_slots);
        let Some(current) = group.primary().cloned() else {
            if group.shards.is_empty() {
                continue;
            }
            return Err(StepError::later(format!(
                "slot range {} of database {} has no primary shard right now (a failover may be under way)",
                place.assigned_slots, place.bdb_uid
            )));
        };
        if current.node_uid == place.node_uid {
            continue;
        }
        switchover::finish_interrupted(observer, &current).await?;
        let state = observer.store.state();
        let group = state.slot_group(place.bdb_uid, place.assigned_slots);
        let target = group
            .shards
            .iter()
            .find(|s| s.node_uid == place.node_uid && !s.temporary)
            .ok_or_else(|| {
                StepError::never(format!(
                    "slot range {} of database {} has no shard on node {} to give the primary role back to; move one there (`flotilla shard migrate`) or leave the role where it is",
                    place.assigned_slots, place.bdb_uid, place.node_uid
                ))
            })?;
        if target.role == ShardRole::Primary {
            continue;
        }
        let up = observer.local_statuses().get(&target.node_uid) == Some(&NodeStatus::Up);
        if !up {
            return Err(StepError::later(format!(
                "node {} is not up; the primary role of slot range {} of database {} goes back once it is",
                target.node_uid, place.assigned_slots, place.bdb_uid
            )));
        }
        switch_to(observer, target.uid).await?;
    }
    Ok(())
}

/// The planned switchover that makes replica `uid` its slot range's primary.
async fn switch_to(observer: &Observer, uid: flotilla_model::ShardUid) -> Result<(), StepError> {
    let report = switchover::switchover(observer, uid).await?;
    tracing::info!(
        old = report.old_primary,
        new = report.new_primary,
        hold_ms = report.hold_ms,
        "maintenance switchover done"
    );
    Ok(())
}
