//! Database endpoints on this node.
//!
//! Every node serves every database's port on its own address (DESIGN.md, Processes), so a
//! client may use any node. This crate turns the cluster store into proxy listeners: one per
//! database, bound to `node addr : db port`, fed a [`Topology`] (which shard owns which slots
//! and where each shard's master runs) that is republished whenever the store changes — a
//! failover or switchover moves traffic without dropping client connections. A database that is
//! deleted has its listener closed; a port that cannot be bound is retried every second.
//! The listeners and their client sessions run on a runtime of their own (see `runtime.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_model::{Bdb, BdbUid, ClusterState};
use flotilla_proxy::{EndpointStats, ProxyOptions, SlotMap, Topology, SLOT_COUNT};
use flotilla_store::Store;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

mod runtime;

/// How often endpoints are re-checked even without a store change (to retry failed binds).
const RESYNC: Duration = Duration::from_secs(1);

/// How long proxies queue a held shard's commands: longer than a planned switchover may take
/// (hold spread 1 s + catch-up 2 s), so a switchover that succeeds never costs a client error.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(5);

fn proxy_options() -> ProxyOptions {
    ProxyOptions {
        hold_timeout: HOLD_TIMEOUT,
        ..ProxyOptions::default()
    }
}

/// Builds a database's topology from the cluster state: slot owners from its master shards'
/// `assigned_slots`, each master's address from its node, and the database's and masters' uids
/// (which name them in client errors and proxy logs). `None` while some slot has no master
/// (the database is being created or repaired).
pub fn topology_of(state: &ClusterState, bdb: &Bdb) -> Option<Topology> {
    let password = state.engine_password().ok()?.to_string();
    let masters = state.masters_of(bdb.uid);
    let mut owners = vec![u16::MAX; SLOT_COUNT as usize];
    let mut primaries = Vec::with_capacity(masters.len());
    for (index, shard) in masters.iter().enumerate() {
        primaries.push(state.shard_addr(shard).ok()?);
        for slot in shard.assigned_slots.start..=shard.assigned_slots.end {
            owners[usize::from(slot)] = index as u16;
        }
    }
    if owners.contains(&u16::MAX) {
        return None;
    }
    let slots = SlotMap::from_owners(owners).ok()?;
    let uids = masters.iter().map(|s| s.uid).collect();
    let mut topology = Topology::new(
        bdb.spec.authentication_redis_pass.clone(),
        password,
        slots,
        primaries,
    )
    .ok()?
    .with_uids(bdb.uid, uids)
    .ok()?;
    for (index, shard) in masters.iter().enumerate() {
        if shard.held {
            topology = topology
                .with_hold(flotilla_proxy::ShardIndex(index as u16), true)
                .ok()?;
        }
    }
    Some(topology)
}

struct Running {
    port: u16,
    stats: EndpointStats,
    topology: watch::Sender<Topology>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Each served database's request counters on this node, for the metrics endpoint.
pub type StatsRegistry = Arc<Mutex<HashMap<BdbUid, EndpointStats>>>;

/// Keeps this node's endpoint listeners in step with the store until `shutdown` fires; each
/// endpoint's counters are kept in `stats` while it is served.
pub async fn run(
    store: Store,
    addr: IpAddr,
    stats: StatsRegistry,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = store.subscribe();
    let mut running: HashMap<BdbUid, Running> = HashMap::new();
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        sync(&store.state(), addr, &mut running).await;
        publish_stats(&stats, &running);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
    }
    running.clear();
}

/// Makes the registry list exactly the endpoints served now.
fn publish_stats(stats: &StatsRegistry, running: &HashMap<BdbUid, Running>) {
    let mut registry = stats.lock().expect("stats registry lock");
    registry.retain(|uid, _| running.contains_key(uid));
    for (uid, endpoint) in running {
        registry
            .entry(*uid)
            .or_insert_with(|| endpoint.stats.clone());
    }
}

async fn sync(state: &ClusterState, addr: IpAddr, running: &mut HashMap<BdbUid, Running>) {
    running.retain(|uid, endpoint| {
        state
            .bdbs
            .get(uid)
            .is_some_and(|bdb| bdb.spec.port == endpoint.port)
    });
    for bdb in state.bdbs.values() {
        let Some(topology) = topology_of(state, bdb) else {
            continue;
        };
        match running.get(&bdb.uid) {
            Some(endpoint) => {
                endpoint.topology.send_if_modified(|current| {
                    let changed = *current != topology;
                    if changed {
                        *current = topology.clone();
                    }
                    changed
                });
            }
            None => {
                if let Some(endpoint) = open(addr, bdb, topology).await {
                    running.insert(bdb.uid, endpoint);
                }
            }
        }
    }
}

async fn open(addr: IpAddr, bdb: &Bdb, topology: Topology) -> Option<Running> {
    let port = bdb.spec.port;
    let listener = match TcpListener::bind((addr, port)).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(bdb = bdb.uid, %addr, port, error = %e, "cannot bind the database endpoint; retrying");
            return None;
        }
    };
    // Handed to the data-path runtime, whose I/O driver then owns it.
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(bdb = bdb.uid, %addr, port, error = %e, "cannot hand the database endpoint to the proxy runtime; retrying");
            return None;
        }
    };
    tracing::info!(bdb = bdb.uid, name = %bdb.spec.name, %addr, port, "serving database endpoint");
    let (topology_tx, topology_rx) = watch::channel(topology);
    let (stop_tx, stop_rx) = oneshot::channel();
    let stats = EndpointStats::new();
    let stop = async move {
        let _ = stop_rx.await;
    };
    let serve_stats = stats.clone();
    runtime::data_path().spawn(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                flotilla_proxy::serve_with_stats(
                    listener,
                    topology_rx,
                    stop,
                    proxy_options(),
                    serve_stats,
                )
                .await
            }
            Err(e) => tracing::error!(port, error = %e, "cannot serve the database endpoint"),
        }
    });
    Some(Running {
        port,
        stats,
        topology: topology_tx,
        stop: Some(stop_tx),
    })
}
