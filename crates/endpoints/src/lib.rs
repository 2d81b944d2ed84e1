//! Database endpoints on this node.
//!
//! Every node serves every database's port on its own address (DESIGN.md, Processes), so a
//! client may use any node. This crate turns the cluster store into proxy listeners: one per
//! database, bound to `node addr : db port`, fed a [`Topology`] (which shard owns which slots
//! and where each shard's primary runs) that is republished whenever the store changes — a
//! failover or switchover moves traffic without dropping client connections. A database that is
//! deleted has its listener closed; a port that cannot be bound is retried every second.
//! The listeners and their client sessions run on a runtime of their own (see `runtime.rs`).
//!
//! For the in-place upgrade ([`Endpoints`]): the endpoints follow a [`StateFeed`] rather than
//! the store itself, so a new daemon serves them from the state its predecessor passes on
//! before it opens the store; they start on listening sockets passed from the predecessor
//! instead of binding; and each running endpoint keeps a duplicate of its listening socket
//! and the control of its sessions, so the old daemon can pass both on.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_model::timing::HOLD_TIMEOUT;
use flotilla_model::{Bdb, BdbUid, ClusterState, EngineCredentials, ADMIN_USER, PROXY_USER};
use flotilla_proxy::{
    CrdtInstance, EndpointControl, EndpointStats, EndpointTls, ProxyOptions, ShardLogin, SlotMap,
    StatsSnapshot, Topology, SLOT_COUNT,
};
use flotilla_store::{project, publish_if_changed, StateFeed, Wakes};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

mod admin;
mod runtime;

/// How often endpoints are re-checked even without a store change (to retry failed binds).
const RESYNC: Duration = Duration::from_secs(1);

// The proxy's own default is the daemon's hold timeout, not a second number: a proxy started
// without options (tests, benches) holds as long as the endpoints do.
const _: () = assert!(
    flotilla_proxy::DEFAULT_HOLD_TIMEOUT.as_millis() == HOLD_TIMEOUT.as_millis(),
    "the proxy's default hold timeout must be the cluster's (flotilla_model::timing)"
);

/// The endpoints' data-path options: the cluster's hold timeout, longer than a planned
/// switchover may take (see `flotilla_model::timing`), so a switchover that succeeds never
/// costs a client error.
fn proxy_options() -> ProxyOptions {
    ProxyOptions {
        hold_timeout: HOLD_TIMEOUT,
        ..ProxyOptions::default()
    }
}

/// Builds a database's topology from the cluster state: slot owners from its primary shards'
/// `assigned_slots`, each primary's address from its node, and the database's and primaries' uids
/// (which name them in client errors and proxy logs). `None` while some slot has no primary
/// (the database is being created or repaired).
pub fn topology_of(state: &ClusterState, bdb: &Bdb) -> Option<Topology> {
    let credentials = state.engine_credentials().ok()?;
    let login = shard_login(&credentials);
    let primaries = state.primaries_of(bdb.uid);
    let mut owners = vec![u16::MAX; SLOT_COUNT as usize];
    let mut addrs = Vec::with_capacity(primaries.len());
    for (index, shard) in primaries.iter().enumerate() {
        addrs.push(state.shard_addr(shard).ok()?);
        for slot in shard.assigned_slots.start..=shard.assigned_slots.end {
            owners[usize::from(slot)] = index as u16;
        }
    }
    if owners.contains(&u16::MAX) {
        return None;
    }
    let slots = SlotMap::from_owners(owners).ok()?;
    let uids = primaries.iter().map(|s| s.uid).collect();
    let mut topology = Topology::new(None, "", slots, addrs)
        .ok()?
        .with_password(bdb.spec.password())
        .with_limits(bdb.spec.limits)
        .with_tls_mode(bdb.spec.tls_mode)
        .with_shard_login(login)
        .with_admin_login(admin_login(&credentials))
        .with_uids(bdb.uid, uids)
        .ok()?
        .with_crdt(bdb.spec.crdt.as_ref().map(|c| CrdtInstance {
            replica_id: c.crdt_replica_id,
            protocol_version: c.crdt_protocol_version,
        }));
    for (index, shard) in primaries.iter().enumerate() {
        if shard.held {
            topology = topology
                .with_hold(flotilla_proxy::ShardIndex(index as u16), true)
                .ok()?;
        }
    }
    Some(topology)
}

/// How the proxy logs in to the engines for the data path: as the proxy user (see
/// [`engine_login`]).
fn shard_login(credentials: &EngineCredentials) -> ShardLogin {
    engine_login(credentials, PROXY_USER, &credentials.users.proxy)
}

/// How the endpoint logs in as the engines' admin user for SLOWLOG and LATENCY, never for the
/// data path (see [`engine_login`]).
fn admin_login(credentials: &EngineCredentials) -> ShardLogin {
    engine_login(credentials, ADMIN_USER, &credentials.users.admin)
}

/// Logging in to the engines as `user`: once no 0.1.0 node is left (with the secret as
/// fallback, for engines their agent has not moved to the users yet), else as the default user
/// with the secret, as 0.1.0 proxies do.
fn engine_login(credentials: &EngineCredentials, user: &str, password: &str) -> ShardLogin {
    if credentials.legacy {
        return ShardLogin::default_user(credentials.secret.clone());
    }
    ShardLogin {
        user: Some(user.to_string()),
        password: password.to_string(),
        fallback: Some(credentials.secret.clone()),
    }
}

struct Running {
    port: u16,
    stats: EndpointStats,
    topology: watch::Sender<Topology>,
    stop: Option<oneshot::Sender<()>>,
}

/// One served endpoint as the in-place upgrade sees it.
pub struct EndpointHandle {
    /// The database.
    pub bdb_uid: BdbUid,
    /// Its port.
    pub port: u16,
    /// A duplicate of its listening socket (the one to pass to a new daemon).
    pub listener: std::net::TcpListener,
    /// The control of its accept loop and sessions.
    pub control: EndpointControl,
}

/// The endpoints this node serves, for the in-place upgrade: their listening sockets and the
/// control of their sessions. Cheap to clone; filled by [`run`].
#[derive(Clone, Default)]
pub struct Endpoints {
    served: Arc<Mutex<HashMap<BdbUid, Arc<EndpointHandle>>>>,
    /// The TLS configuration every endpoint of a database in TLS mode presents.
    tls: EndpointTls,
    inherited: Arc<Mutex<HashMap<u16, std::net::TcpListener>>>,
    /// How the endpoints answer CONFIG (the database's settings), once the store is open.
    admin: admin::NodeAdmin,
    /// The same admin as every topology carries it.
    admin_handle: AdminHandleSlot,
}

/// The one [`flotilla_proxy::AdminHandle`] of these endpoints (made on first use, so every
/// topology carries the same handle and republishing one is no change).
#[derive(Clone, Default)]
struct AdminHandleSlot(Arc<std::sync::OnceLock<flotilla_proxy::AdminHandle>>);

impl Endpoints {
    /// The TLS configuration the endpoints of databases in TLS mode present to clients
    /// accepted from now on (see [`EndpointTls`]).
    pub fn set_tls(&self, config: Arc<flotilla_proxy::rustls::ServerConfig>) {
        self.tls.set(config);
    }

    /// Gives the endpoints the node's cluster store, through which CONFIG SET commits a
    /// database's settings (until then, CONFIG answers that the store is not open yet).
    pub fn set_store(&self, store: flotilla_store::Store) {
        self.admin.set_store(store);
    }

    fn admin_handle(&self) -> flotilla_proxy::AdminHandle {
        self.admin_handle
            .0
            .get_or_init(|| flotilla_proxy::AdminHandle(Arc::new(self.admin.clone())))
            .clone()
    }

    /// Endpoints that start on listening sockets passed from the predecessor daemon (by port)
    /// before binding any themselves.
    pub fn inheriting(listeners: impl IntoIterator<Item = std::net::TcpListener>) -> Self {
        let endpoints = Endpoints::default();
        {
            let mut inherited = endpoints.inherited.lock().expect("endpoints lock");
            for listener in listeners {
                if let Ok(addr) = listener.local_addr() {
                    inherited.insert(addr.port(), listener);
                }
            }
        }
        endpoints
    }

    /// Every endpoint served now.
    pub fn handles(&self) -> Vec<Arc<EndpointHandle>> {
        let served = self.served.lock().expect("endpoints lock");
        served.values().cloned().collect()
    }

    /// The endpoint listening on `port`, if served now.
    pub fn on_port(&self, port: u16) -> Option<Arc<EndpointHandle>> {
        let served = self.served.lock().expect("endpoints lock");
        served.values().find(|h| h.port == port).cloned()
    }

    /// How many passed listening sockets are not served yet (their database has no topology
    /// yet, or was deleted).
    pub fn inherited_waiting(&self) -> usize {
        self.inherited.lock().expect("endpoints lock").len()
    }

    fn take_inherited(&self, port: u16) -> Option<std::net::TcpListener> {
        self.inherited.lock().expect("endpoints lock").remove(&port)
    }

    fn publish(
        &self,
        running: &HashMap<BdbUid, Running>,
        handles: &HashMap<BdbUid, Arc<EndpointHandle>>,
    ) {
        let mut served = self.served.lock().expect("endpoints lock");
        served.clear();
        for uid in running.keys() {
            if let Some(handle) = handles.get(uid) {
                served.insert(*uid, handle.clone());
            }
        }
    }
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

/// What this node serves for one database, as of one moment of the cluster state.
#[derive(Debug, Clone, PartialEq)]
struct Served {
    name: String,
    port: u16,
    /// `None` while some slot has no primary ([`topology_of`]): a running endpoint keeps its
    /// last topology, a new one waits.
    topology: Option<Topology>,
}

/// The endpoints the cluster state asks of every node: one per database, answering CONFIG
/// through `admin`.
fn served(state: &ClusterState, admin: &flotilla_proxy::AdminHandle) -> BTreeMap<BdbUid, Served> {
    state
        .bdbs
        .values()
        .map(|bdb| {
            let served = Served {
                name: bdb.spec.name.clone(),
                port: bdb.spec.port,
                topology: topology_of(state, bdb).map(|t| t.with_admin(admin.clone())),
            };
            (bdb.uid, served)
        })
        .collect()
}

/// Keeps this node's endpoint listeners in step with the cluster state `feed` until `shutdown`
/// fires; each endpoint's counters are kept in `stats` while it is served, and its listener and
/// control in `endpoints`.
pub async fn run(
    feed: StateFeed,
    addr: IpAddr,
    stats: StatsRegistry,
    endpoints: Endpoints,
    shutdown: watch::Receiver<bool>,
) {
    let admin = endpoints.admin_handle();
    let wanted = project(feed, move |state: &ClusterState| served(state, &admin));
    let mut wakes = Wakes::on_change_or_every(wanted.clone(), RESYNC, shutdown);
    let mut running: HashMap<BdbUid, Running> = HashMap::new();
    let mut handles: HashMap<BdbUid, Arc<EndpointHandle>> = HashMap::new();
    while wakes.next().await.is_some() {
        let wanted = wanted.borrow().clone();
        sync(&wanted, addr, &endpoints, &mut running, &mut handles).await;
        publish_stats(&stats, &running);
        endpoints.publish(&running, &handles);
    }
    endpoints.publish(&HashMap::new(), &handles);
    running.clear();
}

/// Each served database's counters at this moment, for the metrics endpoint.
pub fn stats_snapshots(stats: &StatsRegistry) -> Vec<(BdbUid, StatsSnapshot)> {
    let registry = stats.lock().expect("stats registry lock");
    registry
        .iter()
        .map(|(uid, endpoint)| (*uid, endpoint.snapshot()))
        .collect()
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

async fn sync(
    wanted: &BTreeMap<BdbUid, Served>,
    addr: IpAddr,
    endpoints: &Endpoints,
    running: &mut HashMap<BdbUid, Running>,
    handles: &mut HashMap<BdbUid, Arc<EndpointHandle>>,
) {
    running.retain(|uid, endpoint| wanted.get(uid).is_some_and(|w| w.port == endpoint.port));
    handles.retain(|uid, _| running.contains_key(uid));
    for (uid, served) in wanted {
        let Some(topology) = &served.topology else {
            continue;
        };
        match running.get(uid) {
            Some(endpoint) => publish_if_changed(&endpoint.topology, topology.clone()),
            None => {
                let listener = endpoints.take_inherited(served.port);
                let tls = endpoints.tls.clone();
                if let Some((endpoint, handle)) =
                    open(addr, *uid, served, topology.clone(), listener, tls).await
                {
                    running.insert(*uid, endpoint);
                    handles.insert(*uid, Arc::new(handle));
                }
            }
        }
    }
}

/// The database's listening socket: the one passed from the predecessor daemon, or a new one.
async fn listener_for(
    addr: IpAddr,
    uid: BdbUid,
    port: u16,
    inherited: Option<std::net::TcpListener>,
) -> Option<std::net::TcpListener> {
    if let Some(listener) = inherited {
        tracing::info!(bdb = uid, %addr, port, "serving the database endpoint on the listening socket passed from the previous daemon");
        return Some(listener);
    }
    let listener = match TcpListener::bind((addr, port)).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(bdb = uid, %addr, port, error = %e, "cannot bind the database endpoint; retrying");
            return None;
        }
    };
    // Handed to the data-path runtime, whose I/O driver then owns it.
    match listener.into_std() {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::error!(bdb = uid, %addr, port, error = %e, "cannot hand the database endpoint to the proxy runtime; retrying");
            None
        }
    }
}

async fn open(
    addr: IpAddr,
    uid: BdbUid,
    served: &Served,
    topology: Topology,
    inherited: Option<std::net::TcpListener>,
    tls: EndpointTls,
) -> Option<(Running, EndpointHandle)> {
    let port = served.port;
    let listener = listener_for(addr, uid, port, inherited).await?;
    let duplicate = match listener.try_clone() {
        Ok(duplicate) => duplicate,
        Err(e) => {
            tracing::error!(bdb = uid, %addr, port, error = %e, "cannot duplicate the endpoint's listening socket; retrying");
            return None;
        }
    };
    tracing::info!(bdb = uid, name = %served.name, %addr, port, "serving database endpoint");
    let (control, inbox) = flotilla_proxy::endpoint_control();
    let (topology_tx, topology_rx) = watch::channel(topology);
    let (stop_tx, stop_rx) = oneshot::channel();
    let stats = EndpointStats::new();
    let stop = async move {
        let _ = stop_rx.await;
    };
    let serve_stats = stats.clone();
    let span = tracing::info_span!("endpoint", bdb = uid, port);
    let serve = async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                flotilla_proxy::serve_controlled(
                    listener,
                    topology_rx,
                    stop,
                    proxy_options(),
                    serve_stats,
                    inbox,
                    tls,
                )
                .await
            }
            Err(e) => tracing::error!(error = %e, "cannot serve the database endpoint"),
        }
    };
    runtime::data_path().spawn(serve.instrument(span));
    let running = Running {
        port,
        stats,
        topology: topology_tx,
        stop: Some(stop_tx),
    };
    let handle = EndpointHandle {
        bdb_uid: uid,
        port,
        listener: duplicate,
        control,
    };
    Some((running, handle))
}
