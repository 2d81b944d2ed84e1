//! Moving one shard to another node: the steps of `flotilla shard migrate`, and of each shard
//! a node removal drains ([`flotilla_model::MIGRATION_OPS`]).
//!
//! `add_copy` adds a copy of the shard on the target node (a temporary replica of its slot
//! range, on its primary's engine version), `sync_copy` waits until the copy is up and linked
//! to the range's primary (its full sync done), `switchover` moves the primary role to the copy
//! when the moving shard holds it (the planned switchover: hold, fence, catch up, promote; no
//! client error, no lost write), `drop_old` removes the old shard and makes the copy permanent
//! ([`Command::CompleteMigration`]). Each step reads the state first and does only what is
//! missing: once the old shard is gone, every step is done.

use std::time::Instant;

use flotilla_model::rest::{NodeStatus, ReplicaLink};
use flotilla_model::{
    ClusterState, Command, Op, Shard, ShardMigration, ShardMove, ShardPlan, ShardRole,
    TemporaryReplicaAddition,
};

use super::db_upgrade::{propose, wait_linked_to, RANGE_POLL, SYNC_TIMEOUT};
use super::StepError;
use crate::switchover::{self, SwitchoverError};
use crate::Observer;

/// Runs operation `op` of the move `shard_move` (idempotent).
pub async fn run_op(observer: &Observer, shard_move: &ShardMove, op: Op) -> Result<(), StepError> {
    match op {
        Op::AddCopy => add_copy(observer, shard_move).await,
        Op::SyncCopy => sync_copy(observer, shard_move).await,
        Op::Switchover => switch_to_copy(observer, shard_move).await,
        Op::DropOld => drop_old(observer, shard_move).await,
        other => Err(StepError::never(format!(
            "{} is not a step of a shard move",
            other.name()
        ))),
    }
}

/// The moving shard and its new copy as the state has them now.
struct Progress {
    /// The shard that moves; `None` once the move is done.
    old: Option<Shard>,
    /// Its copy on the target node, once added.
    copy: Option<Shard>,
}

fn progress(state: &ClusterState, shard_move: &ShardMove) -> Progress {
    let group = state.slot_group(shard_move.bdb_uid, shard_move.assigned_slots);
    let old = group
        .shards
        .iter()
        .find(|s| s.uid == shard_move.shard_uid)
        .map(|s| (*s).clone());
    let copy = group
        .shards
        .iter()
        .find(|s| s.uid != shard_move.shard_uid && s.node_uid == shard_move.to_node)
        .map(|s| (*s).clone());
    Progress { old, copy }
}

fn copy_gone(shard_move: &ShardMove) -> StepError {
    StepError::never(format!(
        "the new copy of shard {} on node {} is gone (removed meanwhile); start the move again",
        shard_move.shard_uid, shard_move.to_node
    ))
}

async fn add_copy(observer: &Observer, shard_move: &ShardMove) -> Result<(), StepError> {
    let state = observer.store.state();
    let Progress { old, copy } = progress(&state, shard_move);
    if old.is_none() || copy.is_some() {
        return Ok(());
    }
    let (bdb, range, to_node) = (
        shard_move.bdb_uid,
        shard_move.assigned_slots,
        shard_move.to_node,
    );
    let group = state.slot_group(bdb, range);
    if let Some(other) = group.temporary().next() {
        return Err(StepError::never(format!(
            "slot range {range} of database {bdb} has a temporary shard {} on node {} left by another action; finish that database's upgrade (`flotilla db upgrade {bdb}`), then move the shard again",
            other.uid, other.node_uid
        )));
    }
    let status = observer.local_statuses().get(&to_node).copied();
    if status != Some(NodeStatus::Up) {
        return Err(StepError::later(format!(
            "node {to_node} is not up ({status:?}); the move waits for it"
        )));
    }
    let primary = group.primary().ok_or_else(|| {
        StepError::later(format!(
            "slot range {range} of database {bdb} has no primary shard right now (a failover may be under way)"
        ))
    })?;
    let port = crate::placement::free_port(&state, to_node).map_err(|e| {
        StepError::from(e).context(format!("copy of shard {}", shard_move.shard_uid))
    })?;
    let addition = TemporaryReplicaAddition {
        bdb_uid: bdb,
        plan: ShardPlan {
            node_uid: to_node,
            role: ShardRole::Replica,
            assigned_slots: range,
            port,
        },
        redis_version: primary.redis_version,
    };
    propose(observer, Command::AddTemporaryReplica(addition)).await
}

/// Waits until the copy serves as a replica linked to the range's primary, and the primary
/// lists it online (its full sync done).
async fn sync_copy(observer: &Observer, shard_move: &ShardMove) -> Result<(), StepError> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let state = observer.store.state();
        let Progress { old, copy } = progress(&state, shard_move);
        if old.is_none() {
            return Ok(());
        }
        let copy = copy.ok_or_else(|| copy_gone(shard_move))?;
        // Promoted already (a switchover before a primary node change): nothing to wait for.
        if copy.role == ShardRole::Primary {
            return Ok(());
        }
        let reports = observer.shard_reports();
        let linked = reports
            .get(&copy.uid)
            .is_some_and(|r| r.serves_in(ShardRole::Replica, ReplicaLink::Required));
        if linked {
            let group = state.slot_group_of(&copy);
            let primary = group.primary().ok_or_else(|| {
                StepError::later(format!(
                    "slot range {} of database {} has no primary shard right now",
                    copy.assigned_slots, copy.bdb_uid
                ))
            })?;
            wait_linked_to(&state, primary, &copy).await?;
            return caught_up(&state, primary, &copy).await;
        }
        if Instant::now() > deadline {
            return Err(StepError::never(format!(
                "shard {} (the copy of shard {} on node {}) did not sync within {SYNC_TIMEOUT:?}; see its engine log (shards/{}/engine.log in node {}'s data dir)",
                copy.uid, shard_move.shard_uid, shard_move.to_node, copy.uid, shard_move.to_node
            )));
        }
        tokio::time::sleep(RANGE_POLL).await;
    }
}

/// Waits until `copy` has applied what `primary` had written when the wait began: a copy
/// fresh from its full sync still applies the writes buffered meanwhile, and the switchover's
/// fenced catch-up (what clients wait for) is then short.
async fn caught_up(state: &ClusterState, primary: &Shard, copy: &Shard) -> Result<(), StepError> {
    let engine = |uid: u64, e: &dyn std::fmt::Display| {
        StepError::now(format!("shard {uid}: INFO replication failed: {e}"))
    };
    let primary_client = switchover::connect(state, primary).await?;
    let copy_client = switchover::connect(state, copy).await?;
    let target = primary_client
        .replication()
        .await
        .map_err(|e| engine(primary.uid, &e))?
        .master_repl_offset;
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let applied = copy_client
            .replication()
            .await
            .map_err(|e| engine(copy.uid, &e))?
            .offset();
        if applied >= target {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StepError::never(format!(
                "shard {} did not catch up with primary shard {} within {SYNC_TIMEOUT:?} (at offset {applied} of {target})",
                copy.uid, primary.uid
            )));
        }
        tokio::time::sleep(RANGE_POLL).await;
    }
}

/// Moves the primary role from the moving shard to its copy, when the shard holds it.
async fn switch_to_copy(observer: &Observer, shard_move: &ShardMove) -> Result<(), StepError> {
    let state = observer.store.state();
    let Progress { old, copy } = progress(&state, shard_move);
    let Some(old) = old else { return Ok(()) };
    let copy = copy.ok_or_else(|| copy_gone(shard_move))?;
    if old.role != ShardRole::Primary {
        return Ok(());
    }
    // A switchover cut short by a primary node change is completed or undone first.
    switchover::finish_interrupted(observer, &old).await?;
    let state = observer.store.state();
    let still_primary = state
        .shards
        .get(&old.uid)
        .is_some_and(|s| s.role == ShardRole::Primary);
    if !still_primary {
        return Ok(());
    }
    match switchover::switchover(observer, copy.uid).await {
        Ok(report) => {
            tracing::info!(
                old = report.old_primary,
                new = report.new_primary,
                hold_ms = report.hold_ms,
                "shard move switchover done"
            );
            Ok(())
        }
        Err(SwitchoverError::NoReplica(uid)) => {
            Err(copy_gone(shard_move).context(format!("shard {uid}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the moved shard (a replica by now) and keeps its copy in its place.
async fn drop_old(observer: &Observer, shard_move: &ShardMove) -> Result<(), StepError> {
    let state = observer.store.state();
    let Progress { old, copy } = progress(&state, shard_move);
    let copy = match (old.as_ref(), copy) {
        (None, Some(copy)) if !copy.temporary => return Ok(()),
        (None, None) => return Ok(()),
        (_, None) => return Err(copy_gone(shard_move)),
        (_, Some(copy)) => copy,
    };
    if let Some(old) = &old {
        if old.role == ShardRole::Primary {
            return Err(StepError::later(format!(
                "shard {} is still the primary of its slot range (a failover may have given the role back); the move switches it over again",
                old.uid
            )));
        }
        // Every endpoint routes to the range's current primary before the old engine stops.
        let applied = observer.store.applied_index();
        if let Err(e) = switchover::applied_everywhere(observer, &state, applied).await {
            tracing::warn!(error = %e, "dropping the moved shard before every node saw its new place");
        }
    }
    let migration = ShardMigration {
        old: shard_move.shard_uid,
        new: copy.uid,
    };
    propose(observer, Command::CompleteMigration(migration)).await
}
