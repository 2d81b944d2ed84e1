//! Unplanned failover: when a primary shard stops answering, promote its best replica.
//!
//! Runs on every node but acts only on the primary node. A primary shard is healthy when its
//! node's agent reports it up in the primary role (a report younger than [`REPORT_TRUSTED`]),
//! or, when no such report exists (its node may have died, or its daemon is down while the
//! engine still serves), when the primary node itself reaches it with PING. After
//! [`FAILOVER_AFTER`] of continuous failure, or [`FAILOVER_REFUSED_AFTER`] of its engine
//! refusing connections (nothing listens on its port: the process is gone, which a slow engine
//! on a loaded machine never looks like), the replica with the highest replication offset among
//! those that answer is promoted (`PromoteShard`); the agents and endpoints follow the store,
//! and the endpoints hold the shard's requests meanwhile (`HOLD_TIMEOUT`). A primary that
//! times out while its node reported lately may sit on a node cut off from the primary node,
//! still taking writes until its master lease fences it: its failure counts only once its
//! node counts as down ([`may_be_cut_off`]). A promotion the store refuses leaves the primary
//! failing: the next check tries another replica. Writes the lost primary acknowledged but had not replicated can be lost, as
//! with any asynchronously replicated Redis.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use flotilla_engine::{ClientOptions, EngineClient, EngineLogin};
use flotilla_model::rest::{ReplicaLink, ShardReport};
use flotilla_model::timing::{
    FAILOVER_AFTER, FAILOVER_CHECK_EVERY, FAILOVER_REFUSED_AFTER, LINK_MEMORY, LIVENESS_WINDOW,
    ORPHANED_HOLD_GRACE, REPORT_TRUSTED,
};
use flotilla_model::{
    ClusterState, Command, CommandResult, Shard, ShardPromotion, ShardRole, ShardUid,
};
use flotilla_store::{Store, StoreError, Wakes};
use tokio::sync::watch;
use tracing::Instrument;

use crate::Observer;

/// Watches primary shards and fails them over until `shutdown` fires.
pub async fn run_failover(store: Store, observer: Observer, shutdown: watch::Receiver<bool>) {
    let mut memory = Memory::default();
    let mut held_since: HashMap<ShardUid, Instant> = HashMap::new();
    let mut wakes = Wakes::every(FAILOVER_CHECK_EVERY, shutdown);
    while wakes.next().await.is_some() {
        if !store.is_primary_node() {
            memory = Memory::default();
            held_since.clear();
            continue;
        }
        repair_orphaned_holds(&observer, &mut held_since).await;
        check_once(&store, &observer, &mut memory).await;
    }
}

/// What the failover loop remembers from one check to the next (on the primary node only).
#[derive(Debug, Default)]
struct Memory {
    /// Since when each failing primary shard has been failing.
    failing_since: HashMap<ShardUid, Instant>,
    /// Since when each failing primary shard's engine has refused connections, check after
    /// check.
    refused_since: HashMap<ShardUid, Instant>,
    /// When each replica was last seen linked to its primary.
    linked: HashMap<ShardUid, Instant>,
    /// Replicas whose promotion the store refused, by failing primary: passed over until that
    /// primary is healthy again or gone.
    refused: HashMap<ShardUid, HashSet<ShardUid>>,
    /// When this node's first check as the primary node ran: a node that took office lately
    /// has not heard every node report yet.
    in_office_since: Option<Instant>,
}

/// What a promotion's outcome means for the failing primary.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Promotion {
    /// The replica is the primary now: the failure is handled.
    Done,
    /// The store refused to promote this replica: the primary still fails, and the next check
    /// tries another replica.
    Refused,
    /// The proposal did not go through, or its outcome is unknown: the primary still fails, and
    /// the next check looks again (a promotion that did apply shows as a new primary).
    Retry,
}

impl Memory {
    /// The age to count for a primary shard's last report: the report's, or, for a shard no
    /// report names yet while this node took office less than a liveness window ago, one
    /// that is not trusted (its node may be alive and cut off from this node).
    fn report_age(&mut self, report_age: Option<Duration>) -> Option<Duration> {
        let in_office = self
            .in_office_since
            .get_or_insert_with(Instant::now)
            .elapsed();
        report_age.or((in_office < LIVENESS_WINDOW).then_some(REPORT_TRUSTED))
    }

    /// Records the outcome of promoting `replica` in place of failing `primary`.
    fn settle(
        &mut self,
        primary: ShardUid,
        replica: ShardUid,
        outcome: &Result<CommandResult, StoreError>,
    ) -> Promotion {
        match outcome {
            Ok(_) => {
                self.healthy(primary);
                Promotion::Done
            }
            Err(StoreError::Refused(_)) => {
                self.refused.entry(primary).or_default().insert(replica);
                Promotion::Refused
            }
            Err(_) => Promotion::Retry,
        }
    }

    /// Forgets a primary that is healthy again.
    fn healthy(&mut self, primary: ShardUid) {
        self.failing_since.remove(&primary);
        self.refused_since.remove(&primary);
        self.refused.remove(&primary);
    }

    /// Records one check that found `primary` failing (`refused`: its engine refused the
    /// connection); how long it has failed, and whether that is long enough to fail it over.
    fn failing(&mut self, primary: ShardUid, refused: bool) -> (Duration, bool) {
        let now = Instant::now();
        let since = *self.failing_since.entry(primary).or_insert(now);
        let refused_for = if refused {
            let since = *self.refused_since.entry(primary).or_insert(now);
            Some(now.duration_since(since))
        } else {
            self.refused_since.remove(&primary);
            None
        };
        let failing_for = now.duration_since(since);
        let due = failing_for >= FAILOVER_AFTER
            || refused_for.is_some_and(|refused| refused >= FAILOVER_REFUSED_AFTER);
        (failing_for, due)
    }

    /// True when the store refused to promote `replica` for `primary` since it began failing.
    fn was_refused(&self, primary: ShardUid, replica: ShardUid) -> bool {
        self.refused
            .get(&primary)
            .is_some_and(|replicas| replicas.contains(&replica))
    }
}

/// Completes or undoes switchovers whose primary node died mid-way (their slots stay held,
/// and proxies would queue them until the hold timeout, then answer TRYAGAIN).
async fn repair_orphaned_holds(observer: &Observer, held_since: &mut HashMap<ShardUid, Instant>) {
    let orphans = crate::switchover::orphaned_holds(observer);
    held_since.retain(|uid, _| orphans.iter().any(|s| s.uid == *uid));
    for primary in orphans {
        let since = *held_since.entry(primary.uid).or_insert_with(Instant::now);
        if since.elapsed() < ORPHANED_HOLD_GRACE {
            continue;
        }
        match crate::switchover::finish_interrupted(observer, &primary).await {
            Ok(()) => {
                held_since.remove(&primary.uid);
            }
            Err(e) => {
                tracing::error!(shard = primary.uid, error = %e, "could not repair an interrupted switchover")
            }
        }
    }
}

async fn check_once(store: &Store, observer: &Observer, memory: &mut Memory) {
    let state = store.state();
    let reports = observer.shard_reports();
    let ages = observer.shard_report_ages();
    let primaries: Vec<&Shard> = state
        .bdbs
        .values()
        .filter(|b| b.spec.replication)
        .flat_map(|b| state.primaries_of(b.uid))
        .collect();
    let current = |uid: &ShardUid| primaries.iter().any(|m| m.uid == *uid);
    memory.failing_since.retain(|uid, _| current(uid));
    memory.refused_since.retain(|uid, _| current(uid));
    memory.refused.retain(|uid, _| current(uid));
    for primary in primaries {
        let trusted = reports.get(&primary.uid).filter(|_| {
            ages.get(&primary.uid)
                .is_some_and(|age| *age < REPORT_TRUSTED)
        });
        let age = memory.report_age(ages.get(&primary.uid).copied());
        let refused = match primary_health(&state, primary, trusted).await {
            Health::Serving => {
                memory.healthy(primary.uid);
                remember_links(&state, primary, &reports, &mut memory.linked);
                continue;
            }
            Health::Refused => true,
            Health::Failing if may_be_cut_off(age) => continue,
            Health::Failing => false,
        };
        let (failing_for, due) = memory.failing(primary.uid, refused);
        if !due {
            continue;
        }
        let span = tracing::info_span!("failover", shard = primary.uid, bdb = primary.bdb_uid);
        fail_over(store, &state, primary, &reports, memory, failing_for)
            .instrument(span)
            .await;
    }
}

/// Promotes the best replica of `primary`, failing for `failing_for`, and remembers what the
/// store answered.
async fn fail_over(
    store: &Store,
    state: &ClusterState,
    primary: &Shard,
    reports: &std::collections::BTreeMap<ShardUid, ShardReport>,
    memory: &mut Memory,
    failing_for: Duration,
) {
    let Some(replica) = best_replica(state, primary, reports, memory).await else {
        tracing::warn!("primary shard unreachable for {failing_for:?} and no replica may be promoted (none answers, or none was seen linked lately)");
        return;
    };
    tracing::warn!(
        replica,
        "primary shard unreachable for {failing_for:?}: promoting its replica"
    );
    let promote = Command::PromoteShard(ShardPromotion {
        uid: replica,
        require_held: false,
    });
    let outcome = store.propose(promote).await;
    let promotion = memory.settle(primary.uid, replica, &outcome);
    let Err(e) = outcome else { return };
    match promotion {
        Promotion::Refused => tracing::warn!(
            replica,
            error = %e,
            "the store refused to promote the replica; the next check tries another one"
        ),
        Promotion::Done | Promotion::Retry => tracing::error!(
            replica,
            error = %e,
            "failover proposal failed; the next check tries again"
        ),
    }
}

/// What one check finds of a primary shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Its node reports it serving, or the primary node reaches it.
    Serving,
    /// Neither, and its engine refuses connections: its process is gone.
    Refused,
    /// Neither (a timeout, an error reply, an unreachable address).
    Failing,
}

async fn primary_health(
    state: &ClusterState,
    primary: &Shard,
    report: Option<&ShardReport>,
) -> Health {
    // One bad observation by an agent (a fork stall, a slow reply) never triggers a failover
    // alone: the primary node must fail to reach the primary too.
    if report.is_some_and(|r| r.serves_in(ShardRole::Primary, ReplicaLink::Required)) {
        return Health::Serving;
    }
    if probe(state, primary).await.is_some() {
        return Health::Serving;
    }
    match state.shard_addr(primary) {
        Ok(addr) if refuses_connections(addr).await => Health::Refused,
        _ => Health::Failing,
    }
}

/// Whether a primary that the primary node cannot reach (a timeout, not a refusal) may still
/// be taking writes on a node cut off from it: its node reported lately, but not lately
/// enough to be trusted. Such a primary's failure is counted only once its node counts as
/// down (`LIVENESS_WINDOW` after its last report), so that its master lease fences it before
/// its replica is promoted (README "Partitions"; the lease's bound is asserted in
/// `flotilla_model::timing`). A fresh report that says it fails is counted at once: its node
/// is in touch and follows the promotion.
fn may_be_cut_off(report_age: Option<Duration>) -> bool {
    report_age.is_some_and(|age| age >= REPORT_TRUSTED && age < LIVENESS_WINDOW)
}

/// Whether nothing listens at `addr`: the connection is refused (not timed out).
async fn refuses_connections(addr: std::net::SocketAddr) -> bool {
    let connect = tokio::net::TcpStream::connect(addr);
    matches!(
        tokio::time::timeout(Duration::from_millis(300), connect).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Records when each replica of `primary` was last seen with its replication link up: only a
/// replica linked shortly before its primary failed holds its data and may be promoted (one in
/// the middle of a long full sync holds a partial data set).
fn remember_links(
    state: &ClusterState,
    primary: &Shard,
    reports: &std::collections::BTreeMap<ShardUid, ShardReport>,
    linked: &mut HashMap<ShardUid, Instant>,
) {
    for replica in state.slot_group_of(primary).replicas() {
        if reports
            .get(&replica.uid)
            .is_some_and(|r| r.serves_in(ShardRole::Replica, ReplicaLink::Required))
        {
            linked.insert(replica.uid, Instant::now());
        }
    }
}

/// The promotable replica of `primary` with the highest offset, among those that answer and
/// that the store did not refuse to promote.
async fn best_replica(
    state: &ClusterState,
    primary: &Shard,
    reports: &std::collections::BTreeMap<ShardUid, ShardReport>,
    memory: &Memory,
) -> Option<ShardUid> {
    let linked = &memory.linked;
    let mut best: Option<(i64, ShardUid)> = None;
    for replica in state.slot_group_of(primary).replicas() {
        // A replica not seen linked lately is not promoted; one never seen (this primary node
        // just took over) is judged by its offset below. One seen linked may be at offset 0: it
        // synced everything from the RDB of a primary that had no replica before.
        let seen_linked = linked.get(&replica.uid).map(|seen| seen.elapsed());
        if seen_linked.is_some_and(|elapsed| elapsed > LINK_MEMORY) {
            continue;
        }
        if memory.was_refused(primary.uid, replica.uid) {
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
    let login = EngineLogin::cluster_admin(&state.engine_credentials().ok()?);
    let addr = state.shard_addr(shard).ok()?;
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Some(Duration::from_millis(300)),
    };
    let client = EngineClient::connect_with(addr.ip(), addr.port(), &login, options)
        .await
        .ok()?;
    client.ping().await.ok()?;
    client.replication().await.ok().map(|r| r.offset())
}

#[cfg(test)]
mod tests {
    use flotilla_model::{ModelError, NodeSpec};
    use flotilla_store::StoreConfig;

    use super::*;

    fn failing(primary: ShardUid) -> Memory {
        let mut memory = Memory::default();
        memory.failing_since.insert(primary, Instant::now());
        memory
    }

    #[test]
    fn a_promotion_that_applied_ends_the_failure() {
        let mut memory = failing(1);
        let promotion = memory.settle(1, 2, &Ok(CommandResult::Ok));
        assert_eq!(promotion, Promotion::Done);
        assert!(!memory.failing_since.contains_key(&1));
    }

    #[test]
    fn a_refused_promotion_keeps_the_primary_failing_and_passes_the_replica_over() {
        let mut memory = failing(1);
        let refused = Err(StoreError::Refused(ModelError::NotFound(
            "shard 2 does not exist".into(),
        )));
        assert_eq!(memory.settle(1, 2, &refused), Promotion::Refused);
        assert!(
            memory.failing_since.contains_key(&1),
            "the failing timer is kept"
        );
        assert!(memory.was_refused(1, 2), "replica 2 is passed over");
        assert!(!memory.was_refused(1, 3), "replica 3 may still be promoted");
        memory.healthy(1);
        assert!(
            !memory.was_refused(1, 2),
            "forgotten once the primary is back"
        );
    }

    #[test]
    fn a_refused_primary_fails_over_sooner_than_one_that_merely_fails() {
        let mut memory = Memory::default();
        let (_, due) = memory.failing(1, true);
        assert!(!due, "one refused check is not enough");
        // Refused since long enough, failing for less than FAILOVER_AFTER: due.
        let refused_at = Instant::now() - FAILOVER_REFUSED_AFTER;
        memory.refused_since.insert(1, refused_at);
        memory.failing_since.insert(1, refused_at);
        assert!(memory.failing(1, true).1);
        // A check that times out instead ends the run of refusals: only FAILOVER_AFTER counts.
        assert!(!memory.failing(1, false).1);
        assert!(!memory.refused_since.contains_key(&1));
        memory
            .failing_since
            .insert(1, Instant::now() - FAILOVER_AFTER);
        assert!(memory.failing(1, false).1);
        memory.healthy(1);
        assert!(memory.failing_since.is_empty() && memory.refused_since.is_empty());
    }

    #[test]
    fn a_timed_out_primary_of_a_node_that_may_be_cut_off_waits_for_its_lease() {
        assert!(!may_be_cut_off(None), "never reported: counted");
        assert!(!may_be_cut_off(Some(Duration::ZERO)), "fresh: counted");
        assert!(
            may_be_cut_off(Some(REPORT_TRUSTED)),
            "stale: may be cut off"
        );
        assert!(!may_be_cut_off(Some(LIVENESS_WINDOW)), "node down: counted");
        let mut memory = Memory::default();
        let unheard = memory.report_age(None);
        assert!(
            may_be_cut_off(unheard),
            "unheard by a new primary node: may be cut off"
        );
        memory.in_office_since = Some(Instant::now() - LIVENESS_WINDOW);
        assert!(
            !may_be_cut_off(memory.report_age(None)),
            "unheard for long: down"
        );
    }

    #[tokio::test]
    async fn only_a_port_nobody_listens_on_refuses_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(!refuses_connections(addr).await);
        drop(listener);
        assert!(refuses_connections(addr).await);
    }

    #[test]
    fn a_promotion_that_did_not_go_through_is_tried_again() {
        let mut memory = failing(1);
        let lost = Err(StoreError::OutcomeUnknown {
            addr: "local".into(),
            reason: "not committed within 10 s".into(),
        });
        assert_eq!(memory.settle(1, 2, &lost), Promotion::Retry);
        assert!(memory.failing_since.contains_key(&1));
        assert!(
            !memory.was_refused(1, 2),
            "the same replica may be tried again"
        );
    }

    /// A real one-node store refuses to promote a shard that does not exist; the loop must see
    /// that as a refusal, not as a failover done.
    #[tokio::test]
    async fn a_promotion_the_real_store_refuses_is_seen_as_refused() {
        let dir = tempfile::tempdir().unwrap();
        let addr: std::net::IpAddr = "127.0.67.11".parse().unwrap();
        let store = Store::open(StoreConfig {
            data_dir: dir.path().join("data"),
            addr,
            rpc_port: 3333,
        })
        .await
        .unwrap();
        let node = NodeSpec {
            addr,
            software_version: "test".into(),
            os: "test".into(),
            host: Default::default(),
        };
        store
            .create_cluster("c".into(), "admin".into(), "pw".into(), node)
            .await
            .unwrap();
        let mut memory = failing(1);
        let promote = Command::PromoteShard(ShardPromotion {
            uid: 42,
            require_held: false,
        });
        let outcome = store.propose(promote).await;
        assert!(
            matches!(outcome, Err(StoreError::Refused(ModelError::NotFound(_)))),
            "{outcome:?}"
        );
        assert_eq!(memory.settle(1, 42, &outcome), Promotion::Refused);
        assert!(memory.failing_since.contains_key(&1));
        store.shutdown().await;
    }
}
