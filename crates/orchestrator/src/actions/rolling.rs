//! The steps of a rolling cluster upgrade (`flotilla upgrade cluster --method add-node` or
//! `--method replace-node`; DESIGN.md "Cluster software, rolling"; Redis Software's rolling
//! upgrade: add a node with the new version, move the work over, remove an old node).
//!
//! For each old node, the primary node last: `add_node` waits for a new node on the package
//! (add-node; the operator installs it, the action pauses until it is there), `drain_node`
//! moves every shard off the old node ([`super::migrate`] for each, the targets recorded by
//! [`Command::RecordDrain`] when the drain begins so that a resumed drain keeps them),
//! `leave_cluster` takes it out ([`super::node_remove`]), and `rejoin_node` waits until its
//! reinstalled machine joined back under its uid (replace-node; the action pauses until then).
//! Whenever the old node is the primary node it hands primary-ship away first: the new primary
//! node resumes the action at the same step.

use std::collections::BTreeSet;

use flotilla_model::rest::NodeStatus;
use flotilla_model::{
    Action, ActionKind, ClusterUpgrade, Command, DrainRecord, NodeDrain, NodeUid, MIGRATION_OPS,
};

use super::db_upgrade::propose;
use super::node_remove::{hand_primary_ship_away, leave_cluster};
use super::{migrate, StepError};
use crate::Observer;

/// `add_node node:N`: a new node on the package is in the cluster for old node `old`; records
/// it with the drain of `old` (its shards go mostly to the new node, as placement chooses).
pub(super) async fn add_node(
    observer: &Observer,
    action: &Action,
    upgrade: &ClusterUpgrade,
    old: NodeUid,
) -> Result<(), StepError> {
    if observer.store.uid() == Some(old) {
        return hand_primary_ship_away(observer, old).await;
    }
    if upgrade.drain_of(old).is_some() {
        return Ok(());
    }
    let state = observer.store.state();
    let old_node = state.nodes.get(&old).ok_or_else(|| gone(old))?;
    let taken: BTreeSet<NodeUid> = upgrade.drains.iter().filter_map(|d| d.added_node).collect();
    let joined: Vec<NodeUid> = state
        .nodes
        .values()
        .filter(|n| !upgrade.nodes.contains(&n.uid) && !taken.contains(&n.uid))
        .filter(|n| upgrade.is_done_on(n))
        .map(|n| n.uid)
        .collect();
    let Some(&new) = joined.first() else {
        return Err(StepError::operator(format!(
            "waiting for a new node with {target} to take node {old}'s place ({addr}): install package {package} on a new machine{os}, join it (`flotilla cluster join --nodes {primary}` there), then `flotilla action resume {uid}`",
            target = target(upgrade),
            os = on_os(upgrade),
            addr = old_node.addr,
            package = upgrade.package,
            primary = primary_addr(observer),
            uid = action.uid,
        )));
    };
    let statuses = observer.local_statuses();
    if statuses.get(&new) != Some(&NodeStatus::Up) || !observer.store.voter_uids().contains(&new) {
        return Err(StepError::later(format!(
            "node {new} joined with {} and is not up as a voting node yet",
            target(upgrade)
        )));
    }
    record_drain(observer, action, old, Some(new)).await
}

/// `drain_node node:N`: every shard of old node `old` moves off it (planned now when nothing
/// was recorded yet, then as recorded).
pub(super) async fn drain_node(
    observer: &Observer,
    action: &Action,
    upgrade: &ClusterUpgrade,
    old: NodeUid,
) -> Result<(), StepError> {
    if observer.store.uid() == Some(old) {
        return hand_primary_ship_away(observer, old).await;
    }
    if upgrade.drain_of(old).is_none() {
        record_drain(observer, action, old, None).await?;
    }
    let drain = recorded_drain(observer, action.uid, old)?;
    for shard_move in &drain.moves {
        for op in MIGRATION_OPS {
            migrate::run_op(observer, shard_move, op)
                .await
                .map_err(|e| e.context(format!("draining node {old}")))?;
        }
    }
    Ok(())
}

/// `leave_cluster node:N`: the drained node leaves the membership and its record goes (done
/// once it is gone).
pub(super) async fn leave(observer: &Observer, old: NodeUid) -> Result<(), StepError> {
    if observer.store.uid() == Some(old) {
        return hand_primary_ship_away(observer, old).await;
    }
    let state = observer.store.state();
    if !state.nodes.contains_key(&old) && !observer.store.voter_uids().contains(&old) {
        return Ok(());
    }
    leave_cluster(observer, old).await
}

/// `rejoin_node node:N`: old node `old`'s machine, reinstalled with the package, joined back
/// under its uid and is up.
pub(super) async fn rejoin_node(
    observer: &Observer,
    action: &Action,
    upgrade: &ClusterUpgrade,
    old: NodeUid,
) -> Result<(), StepError> {
    let state = observer.store.state();
    if let Some(node) = state.nodes.get(&old) {
        let up = observer.local_statuses().get(&old) == Some(&NodeStatus::Up);
        if upgrade.is_done_on(node) && up {
            return Ok(());
        }
        return Err(StepError::later(format!(
            "node {old} joined back and is not up with {} yet (runs {} on {})",
            target(upgrade),
            node.software_version,
            node.host.os_id
        )));
    }
    let addr = upgrade
        .drain_of(old)
        .map_or_else(|| "its address".to_string(), |d| d.addr.to_string());
    Err(StepError::operator(format!(
        "waiting for node {old} to join back: reinstall its machine ({addr}){os} with package {package} (a fresh data dir, the same address), run `flotilla cluster join --nodes {primary} --replace-node {old}` there, then `flotilla action resume {uid}`",
        package = upgrade.package,
        os = on_os(upgrade),
        primary = primary_addr(observer),
        uid = action.uid,
    )))
}

/// What the upgrade moves nodes to: the version, and the OS of an OS upgrade.
fn target(upgrade: &ClusterUpgrade) -> String {
    match &upgrade.target_os {
        Some(os) => format!("{} on {os}", upgrade.version),
        None => upgrade.version.clone(),
    }
}

/// ` with OS X` for an OS upgrade's machine work, empty otherwise.
fn on_os(upgrade: &ClusterUpgrade) -> String {
    upgrade
        .target_os
        .as_ref()
        .map_or_else(String::new, |os| format!(" running {os}"))
}

/// Plans where old node `old`'s shards go and records it with the node added for it; the
/// first record stays.
async fn record_drain(
    observer: &Observer,
    action: &Action,
    old: NodeUid,
    added_node: Option<NodeUid>,
) -> Result<(), StepError> {
    let state = observer.store.state();
    let addr = state.nodes.get(&old).ok_or_else(|| gone(old))?.addr;
    let observed = observer.observed().await;
    let moves = crate::lifecycle::plan_drain(&state, old, &observed)
        .map_err(|e| StepError::later(format!("planning node {old}'s drain: {e}")))?;
    let drain = NodeDrain {
        node_uid: old,
        addr,
        added_node,
        moves,
    };
    let record = DrainRecord {
        action_uid: action.uid,
        drain,
    };
    propose(observer, Command::RecordDrain(record)).await
}

/// The drain of `old` as the store recorded it.
fn recorded_drain(
    observer: &Observer,
    uid: flotilla_model::ActionUid,
    old: NodeUid,
) -> Result<NodeDrain, StepError> {
    let state = observer.store.state();
    match state.actions.get(&uid).map(|a| &a.kind) {
        Some(ActionKind::ClusterUpgrade(upgrade)) => upgrade
            .drain_of(old)
            .cloned()
            .ok_or_else(|| StepError::later(format!("node {old}'s drain is not recorded yet"))),
        _ => Err(StepError::never(format!(
            "action {uid} is no longer a cluster upgrade in the store"
        ))),
    }
}

/// The primary node's address, for the join commands an operator runs.
fn primary_addr(observer: &Observer) -> String {
    let state = observer.store.state();
    observer
        .store
        .uid()
        .and_then(|me| state.nodes.get(&me))
        .map_or_else(|| "PRIMARY_NODE_ADDR".into(), |n| n.addr.to_string())
}

fn gone(node: NodeUid) -> StepError {
    StepError::never(format!(
        "node {node} is no longer in the cluster; start `flotilla upgrade cluster` again for the nodes it has"
    ))
}
