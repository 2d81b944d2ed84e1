//! Observed node state: reports kept in the primary node's memory, never in the Raft log.
//!
//! Every node's agent reports to the primary node twice a second. A node is `up` when its last
//! report is younger than [`LIVENESS_WINDOW`]; the primary node itself is always up. Right after
//! a primary node takes over it has heard from nobody yet, so for one window silent nodes are
//! `unknown` rather than wrongly `down`. Any node answers liveness questions by asking the
//! primary node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use flotilla_model::rest::{NodeReport, NodeStatus, ShardReport};
use flotilla_model::timing::{ELECTION_TIMEOUT_MIN, LIVENESS_WINDOW};
use flotilla_model::{NodeUid, ShardUid};
use flotilla_store::{Store, StoreError};
use tokio::sync::watch;

/// What the primary node observes: node liveness and the latest report of every shard.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Observed {
    /// Liveness by node uid.
    pub nodes: BTreeMap<NodeUid, NodeStatus>,
    /// Latest shard reports from nodes that are up, by shard uid.
    pub shards: BTreeMap<ShardUid, ShardReport>,
    /// Each node's memory in bytes as it last reported it (nodes from 0.2.0 on): the room
    /// placement may fill when shards move.
    #[serde(default)]
    pub node_memory: BTreeMap<NodeUid, u64>,
    /// What each node last reported wrong on itself (nodes from 0.2.0 on; only nodes with a
    /// problem are listed): a full data dir, a store stopped on a failed write.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_problems: BTreeMap<NodeUid, Vec<String>>,
}

/// The primary node's table of node reports; cheap to clone.
#[derive(Clone)]
pub struct Observer {
    pub(crate) store: Store,
    inner: Arc<Mutex<Table>>,
    /// Primary shards a switchover on this node is driving right now.
    pub(crate) switching: Arc<Mutex<std::collections::HashSet<ShardUid>>>,
    /// Turns true when the primary node tells this node it was removed from the cluster.
    removed: watch::Sender<bool>,
}

struct Table {
    reports: HashMap<NodeUid, (NodeReport, Instant)>,
    leading_since: Option<Instant>,
}

/// How recently a quorum must have acknowledged this node's leadership (Raft heartbeats, every
/// `RAFT_HEARTBEAT`) for it to acknowledge reports: within the shortest election timeout, no
/// other node can have been elected yet.
const QUORUM_FRESH: Duration = ELECTION_TIMEOUT_MIN;

impl Observer {
    /// An empty table for this node.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            inner: Arc::new(Mutex::new(Table {
                reports: HashMap::new(),
                leading_since: None,
            })),
            switching: Arc::default(),
            removed: watch::channel(false).0,
        }
    }

    /// Turns true once this node was removed from the cluster (`flotilla node remove`): the
    /// daemon stops then, and the node no longer serves anything.
    pub fn removed(&self) -> watch::Receiver<bool> {
        self.removed.subscribe()
    }

    /// Records a node's report (called on the primary node).
    pub fn record(&self, report: NodeReport) {
        let mut table = self.inner.lock().expect("observer lock");
        table.reports.insert(report.uid, (report, Instant::now()));
    }

    /// The latest report of every shard whose node reported within the liveness window
    /// (meaningful on the primary node only).
    pub fn shard_reports(&self) -> BTreeMap<ShardUid, ShardReport> {
        self.fresh_shards(|shard, _| shard.clone())
    }

    /// How old each shard's latest report is (its node's last report), for shards whose node
    /// reported within the liveness window (meaningful on the primary node only). Failover
    /// trusts a report that a primary serves only while it is this young (see `failover.rs`).
    pub fn shard_report_ages(&self) -> BTreeMap<ShardUid, std::time::Duration> {
        self.fresh_shards(|_, age| age)
    }

    /// `what` of every shard report (and its age) whose node reported within the liveness
    /// window, by shard uid.
    fn fresh_shards<T>(
        &self,
        what: impl Fn(&ShardReport, std::time::Duration) -> T,
    ) -> BTreeMap<ShardUid, T> {
        let table = self.inner.lock().expect("observer lock");
        let now = Instant::now();
        let mut fresh = BTreeMap::new();
        for (report, at) in table.reports.values() {
            let age = now.duration_since(*at);
            if age < LIVENESS_WINDOW {
                for shard in &report.shards {
                    fresh.insert(shard.uid, what(shard, age));
                }
            }
        }
        fresh
    }

    /// Each node's memory as it last reported it (meaningful on the primary node only).
    pub fn node_memory(&self) -> BTreeMap<NodeUid, u64> {
        let table = self.inner.lock().expect("observer lock");
        table
            .reports
            .values()
            .filter_map(|(report, _)| Some((report.uid, report.total_memory?)))
            .collect()
    }

    /// What each node that reported within the liveness window said is wrong on it
    /// (meaningful on the primary node only).
    pub fn node_problems(&self) -> BTreeMap<NodeUid, Vec<String>> {
        let table = self.inner.lock().expect("observer lock");
        let now = Instant::now();
        table
            .reports
            .values()
            .filter(|(report, at)| {
                now.duration_since(*at) < LIVENESS_WINDOW && !report.problems.is_empty()
            })
            .map(|(report, _)| (report.uid, report.problems.clone()))
            .collect()
    }

    /// Liveness of every node in the state, computed here: only meaningful on the primary node.
    pub fn local_statuses(&self) -> BTreeMap<NodeUid, NodeStatus> {
        let me = self.store.uid();
        let leading = self.store.is_primary_node();
        let mut table = self.inner.lock().expect("observer lock");
        let now = Instant::now();
        let since = if leading {
            *table.leading_since.get_or_insert(now)
        } else {
            table.leading_since = None;
            now
        };
        let young = now.duration_since(since) < LIVENESS_WINDOW;
        self.store
            .state()
            .nodes
            .keys()
            .map(|uid| {
                let seen = table
                    .reports
                    .get(uid)
                    .map(|(_, at)| now.duration_since(*at) < LIVENESS_WINDOW);
                let status = match (Some(*uid) == me && leading, seen, young) {
                    (true, _, _) | (_, Some(true), _) => NodeStatus::Up,
                    (_, _, true) => NodeStatus::Unknown,
                    _ => NodeStatus::Down,
                };
                (*uid, status)
            })
            .collect()
    }

    /// What this node observes itself (meaningful on the primary node only).
    pub fn local_observed(&self) -> Observed {
        Observed {
            nodes: self.local_statuses(),
            shards: self.shard_reports(),
            node_memory: self.node_memory(),
            node_problems: self.node_problems(),
        }
    }

    /// Node liveness and shard reports as the primary node sees them, asking the primary node
    /// when this node is not it. Without a reachable primary node every node is `unknown` and no
    /// shard report is known.
    pub async fn observed(&self) -> Observed {
        if self.store.is_primary_node() {
            return self.local_observed();
        }
        let unknown = || Observed {
            nodes: self
                .store
                .state()
                .nodes
                .keys()
                .map(|uid| (*uid, NodeStatus::Unknown))
                .collect(),
            shards: BTreeMap::new(),
            node_memory: BTreeMap::new(),
            node_problems: BTreeMap::new(),
        };
        let answer: Result<Observed, StoreError> = self
            .store
            .call_primary_node("/internal/observed", &())
            .await;
        answer.unwrap_or_else(|_| unknown())
    }

    /// True when this node leads and a quorum acknowledged it (Raft's heartbeats) within
    /// [`QUORUM_FRESH`], or it is the only voter. Read from the Raft metrics, not asked anew:
    /// a fresh quorum round per report would renew the followers' leader leases while a
    /// handover of primary-ship lets them lapse (`Store::move_primary_node_to`).
    fn leads_a_quorum(&self) -> bool {
        let store = &self.store;
        if store.voter_uids().len() <= 1 {
            return store.is_primary_node();
        }
        let Ok(raft) = store.raft() else {
            return false;
        };
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let fresh = QUORUM_FRESH.as_millis() as u64;
        metrics.current_leader.is_some()
            && metrics.current_leader == store.uid()
            && metrics.millis_since_quorum_ack.is_some_and(|ms| ms < fresh)
    }

    /// Liveness of every node as the primary node sees it (see [`Observer::observed`]).
    pub async fn statuses(&self) -> BTreeMap<NodeUid, NodeStatus> {
        self.observed().await.nodes
    }

    /// The internal routes that receive reports and answer liveness (behind the secret check).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/internal/report", post(report))
            .route("/internal/observed", post(observed))
            .route("/internal/switchover", post(switchover))
            .route(REMOVED_PATH, post(removed))
            .route(PROMOTE_PATH, post(promote))
            .with_state(self.clone())
            .layer(axum::middleware::from_fn_with_state(
                self.store.clone(),
                flotilla_store::rpc::require_secret,
            ))
    }
}

/// Records a node's report; acknowledges it only while a quorum confirms this node leads. The
/// acknowledgement renews the reporting node's master lease (`flotilla_agent::lease`): a
/// primary node cut off from the majority must not keep the masters on its side of the cut
/// taking writes, which the majority fails over. (A 0.1.0 primary node acknowledges every
/// report: in a mixed cluster the lease is only as good as that.)
async fn report(
    State(observer): State<Observer>,
    Json(report): Json<NodeReport>,
) -> Result<Json<()>, (axum::http::StatusCode, String)> {
    observer.record(report);
    if !observer.leads_a_quorum() {
        let why = "this node cannot confirm with a quorum that it is still the primary node";
        return Err((axum::http::StatusCode::SERVICE_UNAVAILABLE, why.into()));
    }
    Ok(Json(()))
}

async fn switchover(
    State(observer): State<Observer>,
    Json(uid): Json<flotilla_model::ShardUid>,
) -> Json<Result<crate::switchover::SwitchoverReport, crate::switchover::SwitchoverError>> {
    Json(crate::switchover::switchover(&observer, uid).await)
}

/// The route the primary node calls on a node it removed from the cluster.
pub(crate) const REMOVED_PATH: &str = "/internal/removed";
/// The route that moves primary-ship to a node, run on the primary node.
pub(crate) const PROMOTE_PATH: &str = "/internal/promote";

async fn removed(State(observer): State<Observer>, Json(uid): Json<NodeUid>) -> Json<()> {
    if observer.store.uid() == Some(uid) {
        tracing::warn!("this node was removed from the cluster; the daemon stops");
        observer.removed.send_replace(true);
    }
    Json(())
}

async fn promote(
    State(observer): State<Observer>,
    Json(uid): Json<NodeUid>,
) -> Json<Result<(), StoreError>> {
    Json(crate::lifecycle::promote(&observer, uid).await)
}

async fn observed(State(observer): State<Observer>) -> Json<Observed> {
    Json(observer.local_observed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_state_from_a_0_1_0_primary_node_decodes_without_node_memory() {
        let old = r#"{"nodes":{"1":"up","2":"down"},"shards":{}}"#;
        let observed: Observed = serde_json::from_str(old).unwrap();
        assert_eq!(observed.nodes[&2], NodeStatus::Down);
        assert!(observed.node_memory.is_empty(), "not checked, not guessed");
        assert!(observed.node_problems.is_empty());
        // Without problems a newer primary node answers what 0.1.0 reads, plus node_memory.
        let json = serde_json::to_string(&observed).unwrap();
        assert!(!json.contains("node_problems"), "{json}");
    }
}
