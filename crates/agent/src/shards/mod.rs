//! The shard reconciler: makes this node's engines match the shards the store places on it,
//! and keeps what it observes of them for the node's report to the primary node.
//!
//! Every store change, and at least every [`RECONCILE_INTERVAL`], the [`ShardAgent`]:
//! - for each shard on this node, adopts its running engine or starts it (detached, so it
//!   outlives the daemon), makes its role match the store (`REPLICAOF NO ONE` for a primary,
//!   `REPLICAOF host port` for a replica), and observes it;
//! - holds back restarting a dead memory-only primary that has a replica for
//!   [`PRIMARY_RESTART_GRACE`](flotilla_model::timing::PRIMARY_RESTART_GRACE), so the
//!   orchestrator can promote the replica before the primary comes back empty;
//! - for each folder in the shards dir that the store no longer places here, stops the engine
//!   and removes the folder.
//!
//! Each shard's step runs in its own task; a shard whose previous step is still running is
//! skipped that round, so one slow or failing shard never stops the others.

mod desired;
mod local;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_engine::{EngineCatalog, EngineError};
use flotilla_model::rest::{ReplicaLink, ShardReport};
use flotilla_model::timing::{RECONCILE_INTERVAL, SYNC_POLL, SYNC_WATCH};
use flotilla_model::{ShardRole, ShardUid};
use flotilla_store::{Store, Wake, Wakes};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::lease::MasterLease;

pub use desired::{desired_shards, DesiredShard};
pub use local::{local_shard_dirs, recorded_spec};

/// How long a stopping agent waits for shard steps in flight before abandoning them (an
/// abandoned start leaves a detached engine that the next agent adopts).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What can keep one shard from matching the store this round; logged with the shard uid and
/// retried next round.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Starting, adopting, stopping or querying the engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A file in the shards dir could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A shard's record (`shard.json`) could not be read or written.
    #[error("shard record {path}: {source}; remove the file and the agent rewrites it")]
    BadRecord {
        /// The record file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A shard folder without a record whose pidfile names a live process: not stopped, since
    /// nothing proves the process is that shard's engine.
    #[error("shard folder {uid} has no record but its pidfile names live pid {pid}; stop that process by hand if it is the shard's engine")]
    Unrecorded {
        /// The folder's shard uid.
        uid: ShardUid,
        /// The live pid.
        pid: u32,
    },
    /// The store's view does not hold together for this shard (no primary, unknown node...).
    #[error("{0}")]
    Inconsistent(String),
    /// Something this step depends on is not ready yet (no cluster, primary not promoted yet).
    #[error("{0}")]
    NotReady(String),
    /// An armed failpoint injected an error (a test or an operator reproducing a fault).
    #[error(transparent)]
    Failpoint(#[from] flotilla_store::failpoint::FailpointError),
}

impl ShardError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        ShardError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A shared view of the latest observation of each of this node's shards, for the reporter.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ObservedShards {
    inner: Arc<Mutex<BTreeMap<ShardUid, ShardReport>>>,
    /// Signalled when a shard's liveness, role or replication link changes.
    changed: Arc<tokio::sync::Notify>,
    /// The node's master lease: renewed by the reporter that sends these observations, read by
    /// the agent that makes them (it travels between the same two tasks).
    lease: MasterLease,
}

impl ObservedShards {
    /// The latest report of every shard, in uid order.
    pub fn snapshot(&self) -> Vec<ShardReport> {
        self.lock().values().cloned().collect()
    }

    /// The node's master lease (see [`crate::lease`]).
    pub fn lease(&self) -> MasterLease {
        self.lease.clone()
    }

    /// The role each shard that is up was last observed in.
    pub(crate) fn roles(&self) -> HashMap<ShardUid, Option<ShardRole>> {
        let up = self.lock();
        up.values()
            .filter(|r| r.up)
            .map(|r| (r.uid, r.role))
            .collect()
    }

    /// Waits until a shard's liveness, role or replication link changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn set(&self, report: ShardReport) {
        let previous = self.lock().insert(report.uid, report.clone());
        let same = previous.is_some_and(|p| {
            (p.up, p.role, p.primary_link_up) == (report.up, report.role, report.primary_link_up)
        });
        if !same {
            self.changed.notify_one();
        }
    }

    fn retain(&self, keep: impl Fn(ShardUid) -> bool) {
        self.lock().retain(|uid, _| keep(*uid));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ShardUid, ShardReport>> {
        // A panic elsewhere while holding the lock cannot leave the map half-updated.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The reconciler for one node's shards; see the module docs.
pub struct ShardAgent {
    store: Store,
    catalog: EngineCatalog,
    addr: IpAddr,
    shards_dir: PathBuf,
    observed: ObservedShards,
    down_since: worker::DownSince,
    streaming: worker::Streaming,
    in_flight: HashMap<ShardUid, Step>,
    /// What each shard's latest step was started for: a store change reconciles only the
    /// shards it changes, the tick all of them.
    last_wanted: HashMap<ShardUid, DesiredShard>,
}

/// One shard's step in flight: reconciling, or only watching a replica link up (a round that
/// wants something else of the shard then cuts it short, see [`ShardAgent::spawn_reconcile`]).
struct Step {
    task: JoinHandle<()>,
    watching: Arc<AtomicBool>,
    /// What the step was started for (`None`: removing the shard).
    wanted: Option<DesiredShard>,
}

impl Step {
    fn removal(task: JoinHandle<()>) -> Self {
        Step {
            task,
            watching: Arc::default(),
            wanted: None,
        }
    }
}

impl ShardAgent {
    /// An agent for the node whose store is `store`, binding shards to `addr` (the node's own
    /// address), running engines from `catalog`, one folder per shard under `shards_dir`
    /// (`DATA_DIR/shards`).
    pub fn new(store: Store, catalog: EngineCatalog, addr: IpAddr, shards_dir: PathBuf) -> Self {
        ShardAgent {
            store,
            catalog,
            addr,
            shards_dir,
            observed: ObservedShards::default(),
            down_since: worker::DownSince::default(),
            streaming: worker::Streaming::default(),
            in_flight: HashMap::new(),
            last_wanted: HashMap::new(),
        }
    }

    /// The handle the reporter reads; it stays valid after [`run`](Self::run) takes the agent.
    pub fn observed_shards(&self) -> ObservedShards {
        self.observed.clone()
    }

    /// The latest report of every shard on this node.
    pub fn observed(&self) -> Vec<ShardReport> {
        self.observed.snapshot()
    }

    /// Reconciles the shards a store change concerns on every change, and every shard every
    /// [`RECONCILE_INTERVAL`], until `shutdown` turns true (or its sender goes). Engines keep
    /// running after it returns.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        let fence = tokio::spawn(self.fence_loop(shutdown.clone()));
        let changes = self.store.subscribe();
        let mut wakes = Wakes::on_change_or_every(changes, RECONCILE_INTERVAL, shutdown);
        while let Some(wake) = wakes.next().await {
            self.reconcile_round(wake == Wake::Tick);
        }
        self.finish().await;
        fence.abort();
    }

    /// The master lease's fence (see [`crate::lease`]) over the shards the store places here.
    fn fence_loop(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (store, addr, dir) = (self.store.clone(), self.addr, self.shards_dir.clone());
        let desired = move || {
            let Some(node) = store.uid() else {
                return Vec::new();
            };
            let state = store.state();
            let Ok(desired) = desired_shards(&state, node, addr, &dir) else {
                return Vec::new();
            };
            desired.into_values().filter_map(Result::ok).collect()
        };
        let observed = self.observed.clone();
        crate::lease::run_fence(observed.lease(), observed, desired, shutdown)
    }

    /// Starts one step for every shard (`every`) or every shard the store wants something new
    /// of, unless one is in flight; does not wait for them.
    fn reconcile_round(&mut self, every: bool) {
        self.in_flight.retain(|_, step| !step.task.is_finished());
        let Some(node) = self.store.uid() else {
            return;
        };
        let state = self.store.state();
        let desired = match desired_shards(&state, node, self.addr, &self.shards_dir) {
            Ok(desired) => desired,
            Err(err) => {
                tracing::debug!(error = %err, "no shards to reconcile yet");
                return;
            }
        };
        self.observed.retain(|uid| desired.contains_key(&uid));
        self.down_since.retain(|uid| desired.contains_key(&uid));
        self.streaming.retain(|uid| desired.contains_key(&uid));
        self.last_wanted.retain(|uid, _| desired.contains_key(uid));
        for (uid, wanted) in desired.iter() {
            match wanted {
                Ok(wanted) if every || self.last_wanted.get(uid) != Some(wanted) => {
                    self.spawn_reconcile(wanted.clone())
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(shard = uid, error = %err, "cannot build the shard's spec");
                    self.observed.set(worker::down_report(*uid));
                }
            }
        }
        self.remove_unwanted(|uid| desired.contains_key(&uid));
    }

    fn spawn_reconcile(&mut self, wanted: DesiredShard) {
        let uid = wanted.spec.shard_id;
        if let Some(step) = self.in_flight.get(&uid) {
            // A watch only observes: when the store wants something else of the shard, the
            // round acts at once (and watches again if the link is still down).
            let watching = step.watching.load(Ordering::Acquire);
            if !watching || step.wanted.as_ref() == Some(&wanted) {
                tracing::debug!(
                    shard = uid,
                    "previous step still running; skipping this round"
                );
                return;
            }
            step.task.abort();
        }
        let catalog = self.catalog.clone();
        let observed = self.observed.clone();
        let down_since = self.down_since.clone();
        let streaming = self.streaming.clone();
        let watching = Arc::new(AtomicBool::new(false));
        let watch_flag = watching.clone();
        let started_for = Some(wanted.clone());
        self.last_wanted.insert(uid, wanted.clone());
        let span = tracing::info_span!("reconcile", shard = uid, bdb = wanted.bdb_uid);
        let task = tokio::spawn(
            async move {
                let report =
                    worker::reconcile_and_observe(&catalog, &down_since, &streaming, &wanted).await;
                let unlinked = unlinked_replica(&wanted, &report);
                observed.set(report);
                if unlinked {
                    watch_flag.store(true, Ordering::Release);
                    watch_sync(&wanted, &observed, &streaming).await;
                }
            }
            .instrument(span),
        );
        let step = Step {
            task,
            watching,
            wanted: started_for,
        };
        self.in_flight.insert(uid, step);
    }

    /// Stops and removes every shard folder the store no longer places on this node.
    fn remove_unwanted(&mut self, wanted: impl Fn(ShardUid) -> bool) {
        let local = match local_shard_dirs(&self.shards_dir) {
            Ok(local) => local,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list this node's shard folders");
                return;
            }
        };
        for (uid, dir) in local {
            if wanted(uid) || self.in_flight.contains_key(&uid) {
                continue;
            }
            let span = tracing::info_span!("remove", shard = uid);
            let task = tokio::spawn(
                async move {
                    if let Err(err) = local::remove_shard(uid, &dir).await {
                        tracing::warn!(error = %err, "cannot remove shard; retrying next round");
                    }
                }
                .instrument(span),
            );
            self.in_flight.insert(uid, Step::removal(task));
        }
    }

    /// Waits (bounded) for steps in flight, then abandons the rest.
    async fn finish(&mut self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for (uid, mut step) in self.in_flight.drain() {
            if tokio::time::timeout_at(deadline, &mut step.task)
                .await
                .is_err()
            {
                tracing::warn!(
                    shard = uid,
                    "shard step still running at shutdown; abandoned"
                );
                step.task.abort();
            }
        }
    }
}

/// A replica whose link to its primary is not up yet: it is about to sync (just started,
/// restarted on a new engine, pointed at a new primary), syncing, or loading the RDB (its
/// engine then refuses connections `-LOADING` and is reported down).
fn unlinked_replica(wanted: &DesiredShard, report: &ShardReport) -> bool {
    wanted.role == ShardRole::Replica
        && !report.serves_in(ShardRole::Replica, ReplicaLink::Required)
}

/// Observes a replica that is not linked to its primary yet every [`SYNC_POLL`] until its link
/// is up or [`SYNC_WATCH`] passes (a round that wants something else of the shard cuts it
/// short; the first round after it watches again). A replica whose primary is gone is so polled
/// for most of each round: one `INFO` every 50 ms, cheap next to what an upgrade step waiting
/// for it saves.
async fn watch_sync(
    wanted: &DesiredShard,
    observed: &ObservedShards,
    streaming: &worker::Streaming,
) {
    let until = tokio::time::Instant::now() + SYNC_WATCH;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(SYNC_POLL).await;
        let Ok(report) = worker::observe(&wanted.spec, streaming).await else {
            continue; // loading, or not up yet
        };
        let unlinked = unlinked_replica(wanted, &report);
        observed.set(report);
        if !unlinked {
            return;
        }
    }
}
