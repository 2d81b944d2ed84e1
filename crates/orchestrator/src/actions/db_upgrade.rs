//! Running the steps of a database upgrade (Redis Software's `SMUpgradeBDB`), DESIGN.md
//! "Upgrades -> Databases"; the steps themselves are the model's plan ([`flotilla_model::plan`]).
//!
//! Slot ranges are upgraded in batches of `parallel_shards`. For each batch of a replicated
//! database: `add_replacement` (a shard on the new engine beside each old primary, on its node),
//! `upgrade_replica` (replicas restart on the new engine; replication only flows from an older
//! or equal engine to a newer one), `sync_replica` (both new-engine copies load one RDB stream
//! of the old primary at once; below [`SHARED_SYNC_MIN_MEMORY`] one after the other),
//! `switchover` (the planned switchover to the upgraded replica: no client error, no lost
//! write) and `replace_old_master` (the replacement, now a replica of the new primary, takes the
//! old primary's place). So the data crosses once, not twice: the upgrade costs about one full
//! sync. The node of the old primary holds two copies of its shard for that time. With
//! `preserve_roles` (and for a database without replication, through a temporary replica) the
//! old primaries instead restart on the new engine in place (`upgrade_old_master`,
//! `sync_old_master`, a second full sync) and take the primary role back (`switch_back`). Then
//! `finalize` records the database's new version (and, for a CRDB instance whose upgrade
//! recorded one, its new protocol version). With `discard_data` every shard simply
//! restarts empty on the new engine. Each step checks the state first and does only what is
//! missing, so it can be run again after a primary node change; a switchover cut short by one
//! is completed or undone.

use std::time::{Duration, Instant};

use flotilla_model::rest::{ReplicaLink, ShardReport};
use flotilla_model::{
    plan, Action, ActionKind, BdbVersionChange, ClusterState, Command, CrdbChange, EngineVersion,
    Op, ReplacementAddition, Shard, ShardRemoval, ShardReplacement, ShardRole, ShardVersionChange,
    SlotRange, TemporaryReplicaAddition,
};
use tracing::Instrument;

use super::StepError;
use crate::switchover::{self, SwitchoverError};
use crate::Observer;

/// Longest a shard may take to come up and sync on its new engine (or on its new node).
pub(super) const SYNC_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a step waiting for a slot range's shards reads the primary node's reports (memory
/// only: cheap, and every poll interval is added to the upgrade's time).
pub(super) const RANGE_POLL: Duration = Duration::from_millis(25);
/// Longest the old primary waits for the upgraded replica and the replacement to both ask for
/// a full sync before it serves whichever asked (they restart within milliseconds).
const SHARED_SYNC_WAIT: Duration = Duration::from_secs(5);
/// A primary using less memory than this serves its two new copies in turn: a delayed full
/// sync starts on the engine's once-a-second replication timer (up to 1 s lost), more than a
/// second full sync of this much data takes here (`bench/db-upgrade`: ~1 s per 100 MB).
const SHARED_SYNC_MIN_MEMORY: u64 = 64 << 20;

/// Runs step `index` of a database upgrade (idempotent).
pub async fn run_step(observer: &Observer, action: &Action, index: usize) -> Result<(), StepError> {
    let state = observer.store.state();
    let steps = plan(&action.kind, &state);
    let step = steps.get(index).ok_or_else(|| {
        StepError::never(format!(
            "action {}: step {index} is not in its plan any more ({} steps): the database's slot ranges changed; start a new upgrade",
            action.uid,
            steps.len()
        ))
    })?;
    let ActionKind::DbUpgrade {
        bdb_uid,
        redis_version: target,
        original_primaries,
        raise_crdt_protocol,
        ..
    } = &action.kind
    else {
        return Err(StepError::never(format!(
            "action {} is not a database upgrade",
            action.uid
        )));
    };
    // The ranges of one batch run concurrently (`parallel_shards`).
    let mut runs = tokio::task::JoinSet::new();
    for range in &step.ranges {
        let observer = observer.clone();
        let (bdb, target, range) = (*bdb_uid, *target, *range);
        let original = state
            .slot_group(bdb, range)
            .shards
            .into_iter()
            .find(|s| original_primaries.contains(&s.uid))
            .map(|s| s.uid);
        let op = step.op;
        // In the step's span, so the range's logs carry the action's ids.
        runs.spawn(
            async move { run_op(&observer, op, bdb, target, range, original).await }
                .in_current_span(),
        );
    }
    let mut first_error = None;
    while let Some(joined) = runs.join_next().await {
        let result = joined
            .map_err(|e| StepError::now(format!("a slot range's run ended early: {e}")))
            .and_then(|r| r);
        if let (Err(e), None) = (result, &first_error) {
            first_error = Some(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if step.op == Op::Finalize {
        propose(
            observer,
            Command::SetBdbVersion(BdbVersionChange {
                uid: *bdb_uid,
                redis_version: *target,
            }),
        )
        .await?;
        if let Some(protocol) = raise_crdt_protocol {
            raise_protocol(observer, &state, *bdb_uid, *protocol).await?;
        }
    }
    Ok(())
}

/// Moves the CRDB instance of database `bdb` to `protocol` (`finalize` of an upgrade that does
/// not keep the protocol): once its engine is new, it may write ops peers of that protocol
/// read. Nothing when the database is no CRDB instance (any more) or already runs it.
async fn raise_protocol(
    observer: &Observer,
    state: &ClusterState,
    bdb: u64,
    protocol: u16,
) -> Result<(), StepError> {
    let Some(crdt) = state.bdbs.get(&bdb).and_then(|b| b.spec.crdt.as_ref()) else {
        return Ok(());
    };
    if crdt.crdt_protocol_version >= protocol || !state.crdbs.contains_key(&crdt.crdt_guid) {
        return Ok(());
    }
    tracing::info!(guid = %crdt.crdt_guid, protocol, "the CRDB instance moves to the protocol its upgrade recorded");
    propose(
        observer,
        Command::UpdateCrdb(CrdbChange {
            guid: crdt.crdt_guid.clone(),
            instances: None,
            ghost_instance_ids: vec![],
            featureset_version: None,
            crdt_protocol_version: Some(protocol),
        }),
    )
    .await
}

async fn run_op(
    observer: &Observer,
    op: Op,
    bdb: u64,
    target: EngineVersion,
    range: SlotRange,
    original: Option<u64>,
) -> Result<(), StepError> {
    match op {
        Op::UpgradeReplica | Op::UpgradeOldPrimary => {
            set_versions(observer, bdb, range, target, Some(ShardRole::Replica)).await
        }
        Op::SyncReplica => {
            wait_range(observer, bdb, range, target, ReplicaLink::Required).await?;
            start_full_syncs_at_once_on(observer, bdb, range).await;
            Ok(())
        }
        Op::SyncOldPrimary => wait_range(observer, bdb, range, target, ReplicaLink::Required).await,
        Op::Switchover => {
            let state = observer.store.state();
            let primary = primary(&state, bdb, range)?;
            if primary.redis_version == target {
                return Ok(());
            }
            switch_to_replica(observer, &primary).await
        }
        Op::SwitchBack => {
            let state = observer.store.state();
            let primary = primary(&state, bdb, range)?;
            match original {
                Some(original) if original != primary.uid => {
                    switchover::finish_interrupted(observer, &primary).await?;
                    switchover::switchover(observer, original).await?;
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        Op::RestartOnNewEngine => set_versions(observer, bdb, range, target, None).await,
        Op::AddTemporaryReplica => add_temporary_replica(observer, bdb, range, target).await,
        Op::RemoveTemporaryReplica => remove_temporary_replicas(observer, bdb, range).await,
        Op::AddReplacement => add_replacement(observer, bdb, range, target).await,
        Op::ReplaceOldPrimary => replace_old_primary(observer, bdb, range, target).await,
        // Shards restarted empty (`discard_data`): nothing to sync.
        Op::WaitShardsUp => {
            wait_range(observer, bdb, range, target, ReplicaLink::NotRequired).await
        }
        Op::Finalize => Ok(()),
        Op::AddCopy
        | Op::SyncCopy
        | Op::DropOld
        | Op::DemoteNode
        | Op::LeaveCluster
        | Op::UpgradeNode
        | Op::FinalizeCluster
        | Op::AddNode
        | Op::DrainNode
        | Op::RejoinNode
        | Op::Snapshot
        | Op::EndMaintenance => Err(StepError::never(format!(
            "{} is not a step of a database upgrade",
            op.name()
        ))),
    }
}

async fn add_temporary_replica(
    observer: &Observer,
    bdb: u64,
    range: SlotRange,
    target: EngineVersion,
) -> Result<(), StepError> {
    let state = observer.store.state();
    if state.slot_group(bdb, range).temporary().next().is_some() {
        return Ok(());
    }
    let primary = primary(&state, bdb, range)?;
    let eligible: Vec<u64> = observer
        .local_statuses()
        .into_iter()
        .filter(|(uid, status)| {
            *status == flotilla_model::rest::NodeStatus::Up && !state.takes_no_shards(*uid)
        })
        .map(|(uid, _)| uid)
        .collect();
    let plan = crate::placement::place_replica(&state, range, primary.node_uid, &eligible)
        .map_err(|e| {
            StepError::from(e).context(format!("temporary replica for slot range {range}"))
        })?;
    propose(
        observer,
        Command::AddTemporaryReplica(TemporaryReplicaAddition {
            bdb_uid: bdb,
            plan,
            redis_version: target,
        }),
    )
    .await
}

/// Adds the range's primary a replacement on the new engine on its own node, after telling the
/// primary (if it holds enough data for it to pay) to serve the replacement and the replica
/// about to restart from one RDB stream.
async fn add_replacement(
    observer: &Observer,
    bdb: u64,
    range: SlotRange,
    target: EngineVersion,
) -> Result<(), StepError> {
    let state = observer.store.state();
    let primary = primary(&state, bdb, range)?;
    if primary.redis_version == target {
        return Ok(());
    }
    let used_memory = observer
        .shard_reports()
        .get(&primary.uid)
        .map_or(0, |r| r.used_memory);
    if used_memory >= SHARED_SYNC_MIN_MEMORY {
        share_next_full_sync_of(&state, &primary).await;
    }
    let port = crate::placement::free_port(&state, primary.node_uid).map_err(|e| {
        StepError::from(e).context(format!("replacement for shard {}", primary.uid))
    })?;
    propose(
        observer,
        Command::AddReplacement(ReplacementAddition {
            bdb_uid: bdb,
            replaces: primary.uid,
            port,
            redis_version: target,
        }),
    )
    .await
}

/// Best effort: without it the two copies sync one after the other, which is slower but fine.
async fn share_next_full_sync_of(state: &ClusterState, primary: &Shard) {
    let shared = match switchover::connect(state, primary).await {
        Ok(client) => client
            .share_next_full_sync(2, SHARED_SYNC_WAIT)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match shared {
        Ok(true) => {}
        Ok(false) => tracing::info!(shard = primary.uid, "the old primary shard's engine cannot serve two replicas from one full sync; they sync in turn"),
        Err(e) => tracing::warn!(shard = primary.uid, error = %e, "could not ask the old primary shard for one shared full sync; the copies sync in turn"),
    }
}

/// Gives the range's primary back its own full-sync settings once its new copies are loaded.
async fn start_full_syncs_at_once_on(observer: &Observer, bdb: u64, range: SlotRange) {
    let state = observer.store.state();
    let Ok(primary) = primary(&state, bdb, range) else {
        return;
    };
    let restored = match switchover::connect(&state, &primary).await {
        Ok(client) => client
            .start_full_syncs_at_once()
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = restored {
        tracing::warn!(shard = primary.uid, error = %e, "could not restore the primary shard's full-sync settings; its next full sync may wait up to {SHARED_SYNC_WAIT:?}");
    }
}

/// Once the replacement is linked to the new primary, removes the old primary (a replica on the
/// old engine by now) and keeps the replacement in its place.
async fn replace_old_primary(
    observer: &Observer,
    bdb: u64,
    range: SlotRange,
    target: EngineVersion,
) -> Result<(), StepError> {
    wait_range(observer, bdb, range, target, ReplicaLink::Required).await?;
    let state = observer.store.state();
    let primary = primary(&state, bdb, range)?;
    let group = state.slot_group(bdb, range);
    let replacements: Vec<&Shard> = group.temporary().collect();
    if !replacements.is_empty() {
        // Every endpoint routes to the new primary before the old one's engine stops, so no
        // client write is sent to an engine that is gone.
        // Best effort: a node that lags that long has its proxies resend such writes.
        let applied = observer.store.applied_index();
        if let Err(e) = switchover::applied_everywhere(observer, &state, applied).await {
            tracing::warn!(error = %e, "replacing the old primary shard before every node saw the new one");
        }
    }
    for replacement in replacements {
        // A failover may have promoted the replacement itself: then it has nothing to link to.
        if replacement.role == ShardRole::Replica {
            wait_linked_to(&state, &primary, replacement).await?;
        }
        let command = Command::ReplaceShard(ShardReplacement {
            replacement: replacement.uid,
        });
        propose(observer, command).await?;
    }
    Ok(())
}

/// Waits until `primary`'s engine lists `replica` as an online replica of its own (not of the
/// old primary it may still hang from right after a switchover).
pub(super) async fn wait_linked_to(
    state: &ClusterState,
    primary: &Shard,
    replica: &Shard,
) -> Result<(), StepError> {
    let ip = state
        .shard_addr(replica)
        .map_err(|e| StepError::later(e.to_string()))?
        .ip()
        .to_string();
    let client = switchover::connect(state, primary).await?;
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let replication = client.replication().await.map_err(|e| {
            StepError::now(format!(
                "shard {}: INFO replication failed: {e}",
                primary.uid
            ))
        })?;
        if replication
            .replica(&ip, replica.port)
            .is_some_and(|r| r.is_online())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StepError::never(format!(
                "shard {} did not link to its new primary shard {} within {SYNC_TIMEOUT:?}; see its engine log (shards/{}/engine.log)",
                replica.uid, primary.uid, replica.uid
            )));
        }
        tokio::time::sleep(RANGE_POLL).await;
    }
}

async fn remove_temporary_replicas(
    observer: &Observer,
    bdb: u64,
    range: SlotRange,
) -> Result<(), StepError> {
    let state = observer.store.state();
    let temporary: Vec<u64> = state
        .slot_group(bdb, range)
        .temporary()
        .filter(|s| s.role == ShardRole::Replica)
        .map(|s| s.uid)
        .collect();
    for uid in temporary {
        propose(observer, Command::RemoveShard(ShardRemoval { uid })).await?;
    }
    Ok(())
}

/// The range's primary. None right after a failover or a primary node change is a moment, not a
/// dead end: the step runs again later.
fn primary(state: &ClusterState, bdb: u64, range: SlotRange) -> Result<Shard, StepError> {
    state.primary_of(bdb, range).cloned().ok_or_else(|| {
        StepError::later(format!(
            "slot range {range} of database {bdb} has no primary shard right now (a failover may be under way); `flotilla db show {bdb}` shows its shards"
        ))
    })
}

/// Proposes `command`; its error says when to run the step again.
pub(super) async fn propose(observer: &Observer, command: Command) -> Result<(), StepError> {
    observer.store.propose(command).await?;
    Ok(())
}

/// Sets `target` on the range's shards (only replicas when `role` says so) not already on it.
async fn set_versions(
    observer: &Observer,
    bdb: u64,
    range: SlotRange,
    target: EngineVersion,
    role: Option<ShardRole>,
) -> Result<(), StepError> {
    let state = observer.store.state();
    let shards: Vec<u64> = state
        .slot_group(bdb, range)
        .shards
        .into_iter()
        .filter(|s| s.redis_version != target)
        .filter(|s| role.is_none_or(|r| s.role == r))
        .map(|s| s.uid)
        .collect();
    for uid in shards {
        propose(
            observer,
            Command::SetShardVersion(ShardVersionChange {
                uid,
                redis_version: target,
            }),
        )
        .await?;
    }
    Ok(())
}

fn ready(
    report: Option<&ShardReport>,
    shard: &Shard,
    target: EngineVersion,
    link: ReplicaLink,
) -> bool {
    let Some(report) = report else { return false };
    let on_target = report
        .engine_version
        .as_deref()
        .is_some_and(|v| v.starts_with(target.reported_version_prefix()));
    on_target && report.serves_in(shard.role, link)
}

/// Waits until every shard of the range that should run `target` reports it, in its role, and
/// (for replicas, when `link` requires it) linked to its primary, i.e. the full sync is done.
async fn wait_range(
    observer: &Observer,
    bdb: u64,
    range: SlotRange,
    target: EngineVersion,
    link: ReplicaLink,
) -> Result<(), StepError> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let state = observer.store.state();
        let reports = observer.shard_reports();
        let waiting: Vec<u64> = state
            .slot_group(bdb, range)
            .shards
            .into_iter()
            .filter(|s| s.redis_version == target)
            .filter(|s| !ready(reports.get(&s.uid), s, target, link))
            .map(|s| s.uid)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StepError::never(format!(
                "shards {waiting:?} of slot range {range} did not come up synced on {target} within {SYNC_TIMEOUT:?}; see their engine logs in the nodes' data dirs (shards/UID/engine.log)"
            )));
        }
        tokio::time::sleep(RANGE_POLL).await;
    }
}

async fn switch_to_replica(observer: &Observer, primary: &Shard) -> Result<(), StepError> {
    switchover::finish_interrupted(observer, primary).await?;
    let state = observer.store.state();
    let primary = state.shards.get(&primary.uid).cloned().ok_or_else(|| {
        StepError::later(format!(
            "primary shard {} is gone from the state (replaced or removed meanwhile)",
            primary.uid
        ))
    })?;
    if primary.role != ShardRole::Primary {
        return Ok(());
    }
    match switchover::switchover(observer, primary.uid).await {
        Ok(report) => {
            tracing::info!(old = report.old_primary, new = report.new_primary, hold_ms = report.hold_ms, "upgrade switchover done");
            Ok(())
        }
        Err(SwitchoverError::NoReplica(uid)) => Err(StepError::never(format!(
            "shard {uid} has no replica to switch to; the database needs replication for a data-preserving upgrade"
        ))),
        Err(e) => Err(e.into()),
    }
}
