//! Removing a node: the steps of `flotilla node remove` (DESIGN.md "Cluster software,
//! rolling"; Redis Software's node removal: replacement shards elsewhere first, failovers as
//! needed, then the node goes).
//!
//! `demote_node` moves primary-ship off the node (the primary node is demoted first); each
//! planned move runs the steps of a shard migration ([`super::migrate`]); `leave_cluster` takes
//! the drained node out of the Raft membership, tells its daemon (which stops) and removes its
//! record. Whenever the node that leaves is found to be the primary node again (an election
//! while it drains), it hands primary-ship away before running any step: the new primary node
//! resumes the action at the recorded step.

use flotilla_model::{Action, ActionKind, Command, NodeRemoval, NodeUid, Op, ShardMove, Step};

use super::db_upgrade::propose;
use super::{migrate, StepError};
use crate::Observer;

/// Runs step `index` of a node removal (idempotent).
pub async fn run_step(observer: &Observer, action: &Action, index: usize) -> Result<(), StepError> {
    let ActionKind::NodeRemove { node_uid, moves } = &action.kind else {
        return Err(StepError::never(format!(
            "action {} is not a node removal",
            action.uid
        )));
    };
    let step = super::planned_step(observer, action, index)?;
    run_removal_step(observer, *node_uid, moves, &step).await
}

/// Runs one step of the removal of node `node` whose shards go as `moves`: `demote_node`,
/// `leave_cluster` or a step of one of the moves (idempotent). Reusable by any action whose plan
/// embeds a node removal (a rolling upgrade removes its old nodes so).
pub async fn run_removal_step(
    observer: &Observer,
    node: NodeUid,
    moves: &[ShardMove],
    step: &Step,
) -> Result<(), StepError> {
    if observer.store.uid() == Some(node) {
        return hand_primary_ship_away(observer, node).await;
    }
    match step.op {
        // Done above: this node is not the one that leaves.
        Op::DemoteNode => Ok(()),
        Op::LeaveCluster => leave_cluster(observer, node).await,
        op => {
            let shard_move = moves
                .iter()
                .find(|m| Some(m.shard_uid) == step.shard)
                .ok_or_else(|| {
                    StepError::never(format!("step '{}' names no planned move", step.name()))
                })?;
            migrate::run_op(observer, shard_move, op).await
        }
    }
}

/// Hands primary-ship to another node; the step is then run by the new primary node.
pub(super) async fn hand_primary_ship_away(
    observer: &Observer,
    node: NodeUid,
) -> Result<(), StepError> {
    let new = observer.store.move_primary_node_away().await.map_err(|e| {
        StepError::later(format!(
            "node {node} leaves and is the primary node, but could not hand primary-ship to another node: {e}"
        ))
    })?;
    tracing::info!(
        node,
        new,
        "the leaving node handed primary-ship away; the new primary node resumes the action"
    );
    Err(StepError::now(format!(
        "node {node} handed primary-ship to node {new}, which resumes the action"
    )))
}

/// Takes the drained node out of the Raft membership, tells its daemon and removes its record.
pub(super) async fn leave_cluster(observer: &Observer, node: NodeUid) -> Result<(), StepError> {
    let store = &observer.store;
    let state = store.state();
    let held: Vec<String> = state.shards_on(node).map(|s| s.uid.to_string()).collect();
    if !held.is_empty() {
        return Err(StepError::never(format!(
            "node {node} holds shards {} placed there after its drain was planned; run `flotilla node remove {node}` again to move them too",
            held.join(", ")
        )));
    }
    // Out of the membership first: the node still votes on its own removal, so a cluster of two
    // keeps its quorum through the change. Then its daemon is told (before its record, which
    // holds its address, goes: a resumed step tells it again), so that it stops instead of
    // standing for election with a membership it no longer belongs to.
    store.remove_member(node).await?;
    if let Some(addr) = state.nodes.get(&node).map(|n| n.addr) {
        let rpc = store.config().rpc_addr_of(addr);
        let told: Result<(), flotilla_store::StoreError> = store
            .call_internal(&rpc, crate::observed::REMOVED_PATH, &node)
            .await;
        if let Err(e) = told {
            tracing::warn!(node, error = %e, "could not tell the removed node's daemon; stop it by hand (`flotilla dev remove-node` does)");
        }
    }
    propose(observer, Command::RemoveNode(NodeRemoval { uid: node })).await?;
    Ok(())
}
