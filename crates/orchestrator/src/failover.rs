//! Unplanned failover: when a master shard stops answering, promote its best replica.
//!
//! Runs on every node but acts only on the primary node. A master shard is healthy when its
//! node's agent reports it up in the master role, or, when no fresh report exists (its daemon
//! may be down while the engine still serves), when the primary itself reaches it with PING.
//! After [`FAILOVER_AFTER`] of continuous failure, the replica with the highest replication
//! offset among those that answer is promoted (`PromoteShard`); the agents and endpoints follow
//! the store. Writes the lost master acknowledged but had not replicated can be lost, as with
//! any asynchronously replicated Redis.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flotilla_engine::{ClientOptions, EngineClient};
use flotilla_model::rest::{ReplicaLink, ShardReport};
use flotilla_model::timing::{
    FAILOVER_AFTER, FAILOVER_CHECK_EVERY, LINK_MEMORY, ORPHANED_HOLD_GRACE,
};
use flotilla_model::{ClusterState, Command, Shard, ShardPromotion, ShardRole, ShardUid};
use flotilla_store::{Store, Wakes};
use tokio::sync::watch;

use crate::Observer;

/// Watches master shards and fails them over until `shutdown` fires.
pub async fn run_failover(store: Store, observer: Observer, shutdown: watch::Receiver<bool>) {
    let mut failing_since: HashMap<ShardUid, Instant> = HashMap::new();
    let mut held_since: HashMap<ShardUid, Instant> = HashMap::new();
    let mut linked: HashMap<ShardUid, Instant> = HashMap::new();
    let mut wakes = Wakes::every(FAILOVER_CHECK_EVERY, shutdown);
    while wakes.next().await.is_some() {
        if !store.is_leader() {
            failing_since.clear();
            held_since.clear();
            linked.clear();
            continue;
        }
        repair_orphaned_holds(&observer, &mut held_since).await;
        check_once(&store, &observer, &mut failing_since, &mut linked).await;
    }
}

/// Completes or undoes switchovers whose primary node died mid-way (their slots stay held,
/// and proxies would queue them until the hold timeout, then answer TRYAGAIN).
async fn repair_orphaned_holds(observer: &Observer, held_since: &mut HashMap<ShardUid, Instant>) {
    let orphans = crate::switchover::orphaned_holds(observer);
    held_since.retain(|uid, _| orphans.iter().any(|s| s.uid == *uid));
    for master in orphans {
        let since = *held_since.entry(master.uid).or_insert_with(Instant::now);
        if since.elapsed() < ORPHANED_HOLD_GRACE {
            continue;
        }
        match crate::switchover::finish_interrupted(observer, &master).await {
            Ok(()) => {
                held_since.remove(&master.uid);
            }
            Err(e) => {
                tracing::error!(shard = master.uid, error = %e, "could not repair an interrupted switchover")
            }
        }
    }
}

async fn check_once(
    store: &Store,
    observer: &Observer,
    failing_since: &mut HashMap<ShardUid, Instant>,
    linked: &mut HashMap<ShardUid, Instant>,
) {
    let state = store.state();
    let reports = observer.shard_reports();
    let masters: Vec<&Shard> = state
        .bdbs
        .values()
        .filter(|b| b.spec.replication)
        .flat_map(|b| state.masters_of(b.uid))
        .collect();
    failing_since.retain(|uid, _| masters.iter().any(|m| m.uid == *uid));
    for master in masters {
        if master_healthy(&state, master, reports.get(&master.uid)).await {
            failing_since.remove(&master.uid);
            remember_links(&state, master, &reports, linked);
            continue;
        }
        let since = *failing_since.entry(master.uid).or_insert_with(Instant::now);
        if since.elapsed() < FAILOVER_AFTER {
            continue;
        }
        if let Some(replica) = best_replica(&state, master, &reports, linked).await {
            tracing::warn!(
                bdb = master.bdb_uid,
                master = master.uid,
                replica = replica,
                "master shard unreachable for {:?}: promoting its replica",
                since.elapsed()
            );
            match store
                .propose(Command::PromoteShard(ShardPromotion {
                    uid: replica,
                    require_held: false,
                }))
                .await
            {
                Ok(_) => {
                    failing_since.remove(&master.uid);
                }
                Err(e) => tracing::error!(error = %e, "failover proposal failed; retrying"),
            }
        }
    }
}

async fn master_healthy(
    state: &ClusterState,
    master: &Shard,
    report: Option<&ShardReport>,
) -> bool {
    // One bad observation by an agent (a fork stall, a slow reply) never triggers a failover
    // alone: the primary node must fail to reach the master too.
    match report {
        Some(r) if r.serves_in(ShardRole::Master, ReplicaLink::Required) => true,
        _ => probe(state, master).await.is_some(),
    }
}

/// Records when each replica of `master` was last seen with its replication link up: only a
/// replica linked shortly before its master failed holds its data and may be promoted (one in
/// the middle of a long full sync holds a partial data set).
fn remember_links(
    state: &ClusterState,
    master: &Shard,
    reports: &std::collections::BTreeMap<ShardUid, ShardReport>,
    linked: &mut HashMap<ShardUid, Instant>,
) {
    for replica in state.slot_group_of(master).replicas() {
        if reports
            .get(&replica.uid)
            .is_some_and(|r| r.serves_in(ShardRole::Slave, ReplicaLink::Required))
        {
            linked.insert(replica.uid, Instant::now());
        }
    }
}

/// The promotable replica of `master` with the highest offset, among those that answer.
async fn best_replica(
    state: &ClusterState,
    master: &Shard,
    reports: &std::collections::BTreeMap<ShardUid, ShardReport>,
    linked: &HashMap<ShardUid, Instant>,
) -> Option<ShardUid> {
    let mut best: Option<(i64, ShardUid)> = None;
    for replica in state.slot_group_of(master).replicas() {
        // A replica not seen linked lately is not promoted; one never seen (this primary node
        // just took over) is judged by its offset below. One seen linked may be at offset 0: it
        // synced everything from the RDB of a master that had no replica before.
        let seen_linked = linked.get(&replica.uid).map(|seen| seen.elapsed());
        if seen_linked.is_some_and(|elapsed| elapsed > LINK_MEMORY) {
            continue;
        }
        let offset = match reports.get(&replica.uid) {
            Some(r) if r.up => Some(r.offset),
            _ => probe(state, replica).await,
        };
        if let Some(offset) = offset.filter(|o| *o > 0 || seen_linked.is_some()) {
            if best.is_none_or(|(o, _)| offset > o) {
                best = Some((offset, replica.uid));
            }
        }
    }
    best.map(|(_, uid)| uid)
}

/// PINGs a shard's engine from this node; its replication offset when it answers.
async fn probe(state: &ClusterState, shard: &Shard) -> Option<i64> {
    let password = state.engine_password().ok()?;
    let addr = state.shard_addr(shard).ok()?;
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Some(Duration::from_millis(300)),
    };
    let client = EngineClient::connect_with(addr.ip(), addr.port(), password, options)
        .await
        .ok()?;
    client.ping().await.ok()?;
    client.replication().await.ok().map(|r| r.offset())
}
