//! `flotilla node start`: wires the store, orchestrator, agent, endpoints and API into one
//! node daemon, and hands the node over to a successor daemon during an in-place upgrade.
//!
//! The daemon starts in two parts. The front (database endpoints, discovery) follows a feed of
//! the cluster state and needs no store: a successor daemon serves it from the state its
//! predecessor passes on, before the store is free. The back (the store, internal RPC, REST,
//! orchestrator, agent, reporter, metrics) starts once the store opens.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_agent::host::OsRelease;
use flotilla_api::{ApiContext, BootstrapToken, LocalNode, NodePorts, UpgradeOrder};
use flotilla_endpoints::{Endpoints, StatsRegistry};
use flotilla_model::{ClusterState, NodeHost, NodeSpec};
use flotilla_orchestrator::Observer;
use flotilla_package::{Package, DEFAULT_SUPPORTED_OS};
use flotilla_store::store_file::StoreFileError;
use flotilla_store::{project, StateFeed, Store, StoreConfig, StoreError};
use flotilla_upgrade::{Finish, Inheritance, OldDaemon, PassedServices, ServiceListeners};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, Span};

/// The REST API's HTTPS port.
pub const REST_TLS_PORT: u16 = 9443;
/// The daemon's pidfile name inside its data dir.
pub const PIDFILE: &str = "flotilla.pid";
/// How long a stopping daemon waits for its tasks before it exits anyway.
const STOP_BOUND: Duration = Duration::from_secs(5);
/// How long a new daemon retries opening a store its predecessor's process still holds.
const STORE_OPEN_RETRY_FOR: Duration = Duration::from_secs(10);

/// Arguments of `flotilla node start`.
#[derive(Args, Clone)]
pub struct StartArgs {
    /// The node's own address; every service binds only this address.
    #[arg(long)]
    pub addr: IpAddr,
    /// Where the node keeps its store, identity, logs and shards.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The installed Flotilla package this daemon runs from (bin/, engines/, manifest.toml):
    /// its manifest gives the node's software version and its engines are the ones the node
    /// runs. Without it the daemon reports the binary's own version and uses the development
    /// engines (`FLOTILLA_ENGINES_DIR` or the repository's `.cache/engines`).
    #[arg(long)]
    pub package_dir: Option<PathBuf>,
    /// Read the machine's OS from FILE instead of /etc/os-release: for tests and dev clusters on
    /// one machine, FILE stands for a machine with that OS (nothing else about the OS changes).
    /// Kept in the data dir, so the node reports the same OS after a restart without it.
    #[arg(long)]
    pub os_release: Option<PathBuf>,
    /// Also serve the REST API over plain HTTP on this port (e.g. 8080): off unless given, as
    /// HTTPS on `--rest-tls-port` is always served. Release 0.1.0 served only plain HTTP on
    /// 8080 (its `--rest-port`, accepted here too); a node upgraded from it keeps doing so (the
    /// upgrade passes this flag) so operators' scripts keep working.
    #[arg(long = "http-port", alias = "rest-port")]
    pub http_port: Option<u16>,
    /// REST API port over HTTPS: the node's certificate from the cluster CA (clients trust the
    /// CA with `--cacert`), a self-signed one before the node is in a cluster.
    #[arg(long, default_value_t = REST_TLS_PORT)]
    pub rest_tls_port: u16,
    /// Internal RPC and Raft port.
    #[arg(long, default_value_t = 3333)]
    pub rpc_port: u16,
    /// Require `Authorization: Bearer TOKEN` on metrics scrapes, TOKEN being this file's
    /// content (keep it mode 0600; Prometheus reads the same file with
    /// `authorization: {credentials_file: FILE}`). Without it, metrics are open to anyone who
    /// reaches port 8070.
    #[arg(long, env = "FLOTILLA_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Set by a running daemon that hands the node over to this one (in-place upgrade): the
    /// descriptor of the handover channel.
    #[arg(long, hide = true)]
    pub handover_fd: Option<i32>,
}

impl StartArgs {
    fn ports(&self) -> NodePorts {
        NodePorts {
            rest: self.rest_tls_port,
            http: self.http_port,
            rpc: self.rpc_port,
            discovery: flotilla_discovery::DISCOVERY_PORT,
            metrics: flotilla_metrics::DEFAULT_PORT,
        }
    }

    /// Where packages are installed side by side: beside the package this daemon runs from,
    /// else in the data dir.
    fn packages_dir(&self) -> PathBuf {
        self.package_dir
            .as_deref()
            .and_then(Path::parent)
            .map_or_else(|| self.data_dir.join("packages"), Path::to_path_buf)
    }
}

/// The software version of this binary when it runs outside a package.
pub fn software_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Runs the daemon until SIGTERM or SIGINT, or until it hands the node over. Everything it
/// logs is inside the span `node`, which names the node's address, and its uid once it has one.
pub async fn run(args: StartArgs) -> Result<()> {
    init_logging();
    raise_open_files_limit();
    let root = tracing::info_span!("node", uid = tracing::field::Empty, addr = %args.addr);
    run_node(args).instrument(root).await
}

async fn run_node(mut args: StartArgs) -> Result<()> {
    // A mistyped failpoint spec stops the start: running without the fault meant is worse.
    flotilla_store::failpoint::check_env()?;
    crate::private::owner_only_umask();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    // Engines are configured with absolute paths (they run detached, from their own cwd).
    args.data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving data dir {}", args.data_dir.display()))?;
    let tightened = crate::private::tighten(&args.data_dir)
        .with_context(|| format!("making data dir {} owner-only", args.data_dir.display()))?;
    if tightened > 0 {
        tracing::info!(
            entries = tightened,
            "took group and others' permissions off the data dir (made by an older version)"
        );
    }
    let package = open_package(&args)?;
    let version = package
        .as_ref()
        .map_or_else(software_version, |p| p.manifest().version.to_string());
    let os = os_release(&args)?;
    let node = NodeSpec {
        addr: args.addr,
        software_version: version.clone(),
        os: os.pretty_name.clone(),
        host: host_facts(&args, package.as_ref(), &os)?,
    };
    let (successor, inheritance) = match args.handover_fd {
        Some(fd) => flotilla_upgrade::greet(fd, &version).await,
        None => (None, Inheritance::default()),
    };
    flotilla_proxy::set_next_client_id(inheritance.next_client_id);
    let initial = inheritance.state.clone().unwrap_or_default();
    let (feed_tx, feed) = watch::channel(Arc::new(initial));
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let endpoints = Endpoints::inheriting(inheritance.endpoints);
    // Until the store is open (a handover serves the endpoints first), the endpoints of TLS
    // databases present the certificate the node's files hold.
    match flotilla_store::tls::NodeTls::open(&args.data_dir, args.addr)
        .and_then(|tls| flotilla_store::tls::rest_server_config(&tls))
    {
        Ok(config) => endpoints.set_tls(config),
        Err(e) => {
            tracing::warn!(error = %e, "no TLS for database endpoints until the store is open")
        }
    }
    let stats = StatsRegistry::default();
    let passed = inheritance.services;

    let mut record = None;
    if let Some(successor) = successor {
        // Serve the front from the predecessor's state while it passes the sessions.
        start_front(
            &args,
            &mut tasks,
            &feed,
            &endpoints,
            &stats,
            passed.discovery.as_ref(),
            &stop,
        )
        .await?;
        // A predecessor that died before this one accepted (a kill -9 while it passed its
        // listeners) passes nothing more: this daemon takes the node over all the same.
        if let Err(e) = successor.accepting(&endpoints).await {
            tracing::warn!(error = %e, "the previous daemon went away before this one accepted; taking the node over");
        }
        let predecessor = successor.predecessor_pid;
        let followed = successor.follow(&feed_tx, &endpoints).await;
        tracing::info!(
            adopted = followed.adopted,
            refused = followed.refused,
            completed = followed.completed,
            "took the node over from the previous daemon"
        );
        if !flotilla_upgrade::wait_gone(predecessor).await {
            bail!("the previous daemon (pid {predecessor}) did not exit after the handover");
        }
        // The predecessor wrote the record up to here; this daemon continues it.
        let path = args.data_dir.join(flotilla_api::UPGRADE_STATUS_FILE);
        record = flotilla_upgrade::UpgradeRecord::resume(&path);
        if let Some(record) = record.as_mut() {
            if !followed.completed {
                record.update(|s| s.error = Some("the previous daemon went away before passing every client connection; those it had not passed were closed with it".into()));
            }
            record.step("store");
        }
    } else if args.handover_fd.is_some() {
        // The predecessor broke off before passing anything usable: it must be gone before
        // this daemon binds its ports and opens its store.
        flotilla_upgrade::wait_gone(inheritance.predecessor_pid).await;
    }
    // An upgrade by restart (no handover between the versions) that started this process.
    let restarted = match record {
        Some(_) => None,
        None => flotilla_upgrade::UpgradeRecord::resume_restart(
            &args.data_dir.join(flotilla_api::UPGRADE_STATUS_FILE),
            &version,
        ),
    };

    refuse_if_removed(&args.data_dir)?;
    let _pidfile = Pidfile::claim(&args.data_dir)?;
    let services = service_listeners(&args, passed).await?;
    let store = open_store(&args).await?;
    // TLS databases' endpoints present the node's certificate, as REST does (a rotation
    // shows at the next handshake).
    let endpoint_tls = flotilla_store::tls::rest_server_config(store.tls())
        .context("making the database endpoints' TLS configuration")?;
    endpoints.set_tls(endpoint_tls);
    // CONFIG SET through an endpoint commits the database's settings to the store.
    endpoints.set_store(store.clone());
    store.feed_into(feed_tx);
    spawn(
        &mut tasks,
        name_node_uid(store.clone(), Span::current(), stop.clone()),
    );
    tracing::info!(version, "node daemon starting");
    if record.is_none() {
        start_front(
            &args,
            &mut tasks,
            &feed,
            &endpoints,
            &stats,
            Some(&services.discovery),
            &stop,
        )
        .await?;
    }
    let (upgrades_tx, mut upgrades) = mpsc::channel(1);
    let removed = start_back(
        &args,
        &mut tasks,
        &store,
        &node,
        &stats,
        &services,
        upgrades_tx,
        &stop,
    )
    .await?;
    if let Some(mut record) = record.or(restarted) {
        record.finish_store_gap();
    }

    let old = OldDaemon {
        software_version: version,
        data_dir: args.data_dir.clone(),
        packages_dir: args.packages_dir(),
        store: store.clone(),
        services: services.try_clone()?,
        endpoints: endpoints.clone(),
    };
    let ending = serve_until_stopped(&old, &mut upgrades, removed).await?;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(STOP_BOUND, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    store.shutdown().await;
    let finish = match ending {
        Ending::Stop => None,
        Ending::Upgrade(finish) => Some(*finish),
        Ending::StoreRecovered => {
            tracing::warn!("the data dir has room again: restarting the daemon to reopen its store (shards keep running and are adopted)");
            drop(_pidfile);
            return restart_in_place();
        }
    };
    match finish {
        None => Ok(()),
        Some(Finish::HandedOver(_)) => {
            tracing::info!("the new daemon took the node over; exiting");
            std::mem::forget(_pidfile);
            std::process::exit(0);
        }
        Some(Finish::Restart {
            mut command,
            mut record,
        }) => {
            use std::os::unix::process::CommandExt;
            tracing::info!("restarting as the new version (no handover between these versions)");
            record.update(|s| s.store_stopped_at_ms = flotilla_model::now_millis());
            std::mem::forget(_pidfile);
            let error = command.exec();
            record.failed(&format!("starting the new binary: {error}"));
            Err(error).context("starting the new binary in this process's place")
        }
    }
}

/// Why [`serve_until_stopped`] returned.
enum Ending {
    /// A signal, or the node's removal: the daemon stops.
    Stop,
    /// An in-place upgrade handed the node over or restarts it on the new version.
    Upgrade(Box<Finish>),
    /// The store had stopped on a failed write and the data dir has room again: the daemon
    /// restarts in place to reopen it.
    StoreRecovered,
}

/// How often a daemon whose store stopped on a failed write looks at its data dir's room.
const STORE_RECOVERY_POLL: Duration = Duration::from_secs(1);
/// The free bytes the data dir needs before such a daemon restarts (the store's next writes,
/// and the snapshot openraft may build, need room).
const STORE_RECOVERY_ROOM: u64 = 16 << 20;

/// Completes once this node's store has stopped after a failed write (a full disk) and the data
/// dir has [`STORE_RECOVERY_ROOM`] again; logs the failure, naming the file and the fix, once.
async fn store_recovered(store: &Store, data_dir: &Path) {
    let mut told = false;
    loop {
        tokio::time::sleep(STORE_RECOVERY_POLL).await;
        let Some(failure) = store.failure() else {
            continue;
        };
        if !told {
            tracing::error!("{failure}");
            told = true;
        }
        let room = flotilla_engine::available_bytes(data_dir).unwrap_or(0);
        if room >= STORE_RECOVERY_ROOM {
            return;
        }
    }
}

/// Runs this daemon again in this process (same binary, same arguments but a handover's),
/// after its listeners and store were let go.
fn restart_in_place() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let binary = std::env::current_exe().context("locating the flotilla binary")?;
    let mut args = std::env::args_os().skip(1);
    let mut kept = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--handover-fd" {
            args.next();
        } else if !arg.to_string_lossy().starts_with("--handover-fd=") {
            kept.push(arg);
        }
    }
    let error = std::process::Command::new(binary).args(kept).exec();
    Err(error).context("restarting the daemon in this process's place")
}

/// Serves until a signal or the node's removal from the cluster ([`Ending::Stop`], after
/// leaving [`REMOVED_MARKER`]), an in-place upgrade that hands the node over, or the recovery
/// of a store that stopped on a full disk.
async fn serve_until_stopped(
    old: &OldDaemon,
    upgrades: &mut mpsc::Receiver<UpgradeOrder>,
    mut removed: watch::Receiver<bool>,
) -> Result<Ending> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let recovered = store_recovered(&old.store, &old.data_dir);
    tokio::pin!(recovered);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(Ending::Stop),
            _ = int.recv() => return Ok(Ending::Stop),
            _ = &mut recovered => return Ok(Ending::StoreRecovered),
            Ok(_) = removed.wait_for(|r| *r) => {
                let uid = old.store.uid().unwrap_or_default();
                let note = format!("node {uid} was removed from the cluster; to join a cluster again, start the daemon on an empty data dir\n");
                std::fs::write(old.data_dir.join(REMOVED_MARKER), note)
                    .context("recording the node's removal")?;
                tracing::warn!("removed from the cluster: stopping");
                return Ok(Ending::Stop);
            }
            Some(order) = upgrades.recv() => {
                if let Some(finish) = flotilla_upgrade::upgrade_in_place(old, order).await {
                    return Ok(Ending::Upgrade(Box::new(finish)));
                }
            }
        }
    }
}

/// Left in the data dir of a node removed from its cluster (`flotilla node remove`): its
/// identity no longer belongs to any cluster, so its daemon refuses to start on it.
pub const REMOVED_MARKER: &str = "REMOVED";

/// Refuses to start on the data dir of a removed node, saying what to do.
fn refuse_if_removed(data_dir: &Path) -> Result<()> {
    let Ok(note) = std::fs::read_to_string(data_dir.join(REMOVED_MARKER)) else {
        return Ok(());
    };
    bail!(
        "{}: {} (this data dir belongs to a removed node)",
        data_dir.display(),
        note.trim()
    )
}

/// The package this daemon runs from, verified file by file.
/// Where the node keeps the os-release file `--os-release` named (the machine's OS, for a
/// dev node).
pub const OS_RELEASE_COPY: &str = "os-release";

/// The machine's OS: `--os-release FILE` (kept in the data dir), the copy kept by an earlier
/// start, or `/etc/os-release`.
fn os_release(args: &StartArgs) -> Result<OsRelease> {
    let copy = args.data_dir.join(OS_RELEASE_COPY);
    if let Some(file) = &args.os_release {
        std::fs::copy(file, &copy)
            .with_context(|| format!("--os-release {}: reading it", file.display()))?;
    }
    let path = if copy.exists() {
        copy
    } else {
        PathBuf::from(flotilla_agent::host::OS_RELEASE)
    };
    Ok(OsRelease::read(&path))
}

/// What the node reports of its machine and installation (see [`NodeHost`]).
fn host_facts(args: &StartArgs, package: Option<&Package>, os: &OsRelease) -> Result<NodeHost> {
    let (install_dir, supported_os) = match package {
        Some(package) => (
            package.dir().parent().map(Path::to_path_buf),
            package.manifest().supported_os.clone(),
        ),
        None => {
            let binary = std::env::current_exe().context("locating the flotilla binary")?;
            let supported = DEFAULT_SUPPORTED_OS.iter().map(|s| s.to_string()).collect();
            (binary.parent().map(Path::to_path_buf), supported)
        }
    };
    Ok(NodeHost {
        os_id: os.os_id(),
        supported_os,
        install_dir: install_dir.map_or_else(String::new, |d| d.display().to_string()),
        data_dir: args.data_dir.display().to_string(),
    })
}

fn open_package(args: &StartArgs) -> Result<Option<Package>> {
    let Some(dir) = &args.package_dir else {
        return Ok(None);
    };
    let package = Package::open(dir).with_context(|| {
        format!(
            "--package-dir {}: not a usable Flotilla package",
            dir.display()
        )
    })?;
    Ok(Some(package))
}

/// The service listeners: those passed by a predecessor, the others bound now.
async fn service_listeners(args: &StartArgs, passed: PassedServices) -> Result<ServiceListeners> {
    let ports = args.ports();
    Ok(ServiceListeners {
        rest: match (passed.rest, ports.http) {
            // A predecessor that served plain HTTP passes it on: its clients keep working.
            (Some(listener), _) => Some(listener),
            (None, Some(port)) => Some(bind(args.addr, port, "REST API (HTTP)").await?.into_std()?),
            (None, None) => None,
        },
        rest_tls: match (passed.rest_tls, args.handover_fd) {
            (Some(listener), _) => Some(listener),
            (None, None) => Some(
                bind(args.addr, args.rest_tls_port, "REST API (HTTPS)")
                    .await?
                    .into_std()?,
            ),
            // A predecessor that did not pass it may hold it a while yet: bound when it lets go.
            (None, Some(_)) => None,
        },
        rpc: take_or_bind(passed.rpc, args.addr, ports.rpc, "internal RPC").await?,
        discovery: take_or_bind(
            passed.discovery,
            args.addr,
            ports.discovery,
            "discovery service",
        )
        .await?,
        metrics: take_or_bind(passed.metrics, args.addr, ports.metrics, "metrics").await?,
    })
}

async fn take_or_bind(
    passed: Option<std::net::TcpListener>,
    addr: IpAddr,
    port: u16,
    what: &str,
) -> Result<std::net::TcpListener> {
    match passed {
        Some(listener) => Ok(listener),
        None => Ok(bind(addr, port, what).await?.into_std()?),
    }
}

/// Opens the store, retrying while the predecessor's process still holds it.
async fn open_store(args: &StartArgs) -> Result<Store> {
    let config = StoreConfig {
        data_dir: args.data_dir.clone(),
        addr: args.addr,
        rpc_port: args.rpc_port,
    };
    let deadline = tokio::time::Instant::now() + STORE_OPEN_RETRY_FOR;
    loop {
        match Store::open(config.clone()).await {
            Ok(store) => return Ok(store),
            Err(e @ StoreError::StoreFile(StoreFileError::Held { .. }))
                if tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %e, "the store is still held; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                // Logged too: `dev up` and supervisors show the log, not only stderr.
                tracing::error!(error = %e, "cannot open the cluster store; not starting");
                return Err(e).context("opening the cluster store");
            }
        }
    }
}

/// A tokio listener serving a duplicate of `listener`.
fn serving(listener: &std::net::TcpListener) -> Result<TcpListener> {
    let listener = listener.try_clone()?;
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// Endpoints and discovery: they follow the state feed.
async fn start_front(
    args: &StartArgs,
    tasks: &mut JoinSet<()>,
    feed: &StateFeed,
    endpoints: &Endpoints,
    stats: &StatsRegistry,
    discovery: Option<&std::net::TcpListener>,
    stop: &watch::Receiver<bool>,
) -> Result<()> {
    spawn(
        tasks,
        flotilla_endpoints::run(
            feed.clone(),
            args.addr,
            stats.clone(),
            endpoints.clone(),
            stop.clone(),
        ),
    );
    let discovery = match discovery {
        Some(listener) => serving(listener)?,
        None => {
            bind(
                args.addr,
                flotilla_discovery::DISCOVERY_PORT,
                "discovery service",
            )
            .await?
        }
    };
    let addr = args.addr;
    let databases = project(feed.clone(), move |state: &ClusterState| {
        flotilla_discovery::Databases::of_node(state, addr)
    });
    spawn(
        tasks,
        flotilla_discovery::serve(discovery, databases, stopped(stop.clone())),
    );
    Ok(())
}

/// The store and everything that needs it; answers the signal of this node's removal.
#[allow(clippy::too_many_arguments)]
async fn start_back(
    args: &StartArgs,
    tasks: &mut JoinSet<()>,
    store: &Store,
    node: &NodeSpec,
    stats: &StatsRegistry,
    services: &ServiceListeners,
    upgrades: mpsc::Sender<UpgradeOrder>,
    stop: &watch::Receiver<bool>,
) -> Result<watch::Receiver<bool>> {
    let observer = Observer::new(store.clone());
    let removed = observer.removed();
    let local = LocalNode {
        addr: args.addr,
        data_dir: args.data_dir.clone(),
        ports: args.ports(),
        handover_protocol: flotilla_handover::HANDOVER_PROTOCOL,
        upgrades: Some(upgrades),
        bootstrap: bootstrap_token(store, &args.data_dir)?,
    };
    let rpc_router = flotilla_store::rpc::router(store.clone())
        .merge(observer.router())
        .merge(flotilla_api::internal_router(store.clone(), local.clone()));
    let sync_sources = flotilla_syncer::SyncSources::default();
    let api = ApiContext::new(store.clone(), observer.clone(), node.clone(), local)
        .with_sync_sources(sync_sources.clone());
    spawn(
        tasks,
        serve_rpc(
            serving(&services.rpc)?,
            rpc_router,
            store.rpc_policy(),
            stop.clone(),
        ),
    );
    spawn(
        tasks,
        flotilla_store::run_certificates(store.clone(), stop.clone()),
    );
    let rest = flotilla_api::router(api);
    let https = flotilla_store::tls::rest_server_config(store.tls())
        .context("making the REST API's TLS configuration")?;
    spawn(
        tasks,
        serve_https(
            services.rest_tls.as_ref().map(serving).transpose()?,
            (args.addr, args.rest_tls_port),
            rest.clone(),
            https,
            stop.clone(),
        ),
    );
    if let Some(http) = &services.rest {
        spawn(tasks, serve(serving(http)?, rest, stop.clone()));
    }
    spawn(
        tasks,
        flotilla_orchestrator::failover::run_failover(
            store.clone(),
            observer.clone(),
            stop.clone(),
        ),
    );
    spawn(
        tasks,
        flotilla_orchestrator::actions::run_actions(observer, stop.clone()),
    );
    spawn(
        tasks,
        flotilla_store::run_pruning(store.clone(), stop.clone()),
    );
    let agent = flotilla_agent::ShardAgent::new(
        store.clone(),
        engine_catalog(args),
        args.addr,
        args.data_dir.join("shards"),
    );
    let observed_shards = agent.observed_shards();
    spawn(tasks, agent.run(stop.clone()));
    // Active-Active: pull every peer instance's ops into the local masters on this node.
    spawn(
        tasks,
        flotilla_syncer::run(
            store.state_feed(),
            args.addr,
            sync_sources.clone(),
            stop.clone(),
        ),
    );
    let metrics_source = {
        let (store, stats, shards) = (store.clone(), stats.clone(), observed_shards.clone());
        move || {
            let endpoints = flotilla_endpoints::stats_snapshots(&stats);
            let node_uid = store.uid().unwrap_or(0);
            let mut sample = flotilla_metrics::sample_of(
                &store.state(),
                node_uid,
                &endpoints,
                &shards.snapshot(),
            );
            sample.syncers = syncer_samples(&sync_sources);
            sample
        }
    };
    let metrics = serving(&services.metrics)?;
    let metrics_stop = stopped(stop.clone());
    let metrics_token = metrics_token(args)?;
    spawn(tasks, async move {
        let serving = flotilla_metrics::serve(metrics, metrics_source, metrics_token, metrics_stop);
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    spawn(
        tasks,
        flotilla_agent::run_reporter_with_shards(
            store.clone(),
            node.clone(),
            observed_shards,
            stop.clone(),
        ),
    );
    Ok(removed)
}

/// The Active-Active links whose pullers run on this node, as metrics show them.
fn syncer_samples(sources: &flotilla_syncer::SyncSources) -> Vec<flotilla_metrics::SyncerSample> {
    sources
        .reports(flotilla_model::now_millis())
        .into_iter()
        .map(|r| flotilla_metrics::SyncerSample {
            bdb_uid: r.bdb_uid,
            source: format!("{}/{}", r.peer_cluster, r.peer_instance_id),
            shard: r.shard,
            status: r.status_code,
            lag_ms: r.lag,
            ops_lag: r.ops_lag,
            full_syncs: r.crdt_sync_full,
            partial_syncs: r.crdt_sync_partial_ok,
        })
        .collect()
}

/// The token metrics scrapes must carry, from `--metrics-token-file` (none: metrics are open).
fn metrics_token(args: &StartArgs) -> Result<Option<String>> {
    let Some(file) = &args.metrics_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--metrics-token-file {}: reading it", file.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("--metrics-token-file {}: the file is empty; write the token metrics scrapes must carry into it", file.display());
    }
    Ok(Some(token.to_owned()))
}

/// The node's bootstrap token (none once it is part of a cluster), printed for the operator
/// while the node has one.
fn bootstrap_token(store: &Store, data_dir: &Path) -> Result<BootstrapToken> {
    let member = store
        .uid()
        .is_some_and(|uid| store.voter_uids().contains(&uid))
        && store.state().cluster.is_some();
    let token = BootstrapToken::prepare(data_dir, member, store.identity().is_some())
        .with_context(|| format!("preparing the bootstrap token in {}", data_dir.display()))?;
    if let Some(token) = token.token() {
        let file = data_dir.join(flotilla_model::rest::BOOTSTRAP_TOKEN_FILE);
        println!("bootstrap token: {token}");
        tracing::info!(
            file = %file.display(),
            "this node is not part of a cluster: `flotilla cluster create` or `cluster join` on it needs its bootstrap token (printed on stdout, kept in the file): --bootstrap-token or FLOTILLA_BOOTSTRAP_TOKEN"
        );
    }
    Ok(token)
}

/// Where this node's engine binaries are: the installed package's `engines/`, else
/// `FLOTILLA_ENGINES_DIR`, else the repository's cache (dev and tests).
fn engine_catalog(args: &StartArgs) -> flotilla_engine::EngineCatalog {
    match &args.package_dir {
        Some(dir) => flotilla_engine::EngineCatalog::new(dir.join("engines")),
        None => flotilla_engine::EngineCatalog::dev(),
    }
}

/// How long a daemon keeps retrying a port still held by its own previous process (a restart
/// right after a crash: the old process's sockets close only when its last thread is gone).
const BIND_RETRY_FOR: Duration = Duration::from_secs(3);

async fn bind(addr: IpAddr, port: u16, what: &str) -> Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_RETRY_FOR;
    loop {
        match TcpListener::bind((addr, port)).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bound => {
                return bound.with_context(|| {
                    format!("binding the {what} on {addr}:{port}: is another daemon using this address? (`flotilla check ports` or `ss -ltnp` shows who listens there)")
                })
            }
        }
    }
}

/// Completes once `stop` turns true (or its sender is gone): the shutdown signal of servers
/// that take a future.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Spawns one of the daemon's tasks in the current span (the node's), so what it logs names
/// the node.
fn spawn<F>(tasks: &mut JoinSet<()>, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tasks.spawn(task.in_current_span());
}

/// Records the node's uid on its span (`root`) as soon as it has one: at once for a member,
/// when it creates or joins a cluster otherwise.
async fn name_node_uid(store: Store, root: Span, mut stop: watch::Receiver<bool>) {
    let mut changes = store.subscribe();
    loop {
        if let Some(uid) = store.uid() {
            root.record("uid", uid);
            return;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// `router` with every request run in the current span (the node's): servers run each
/// connection in a task of its own.
fn in_node_span(router: axum::Router) -> axum::Router {
    let span = Span::current();
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            next.run(request).instrument(span.clone())
        },
    ))
}

/// The internal RPC listener: mutual TLS and, while the cluster takes it, plaintext.
async fn serve_rpc(
    listener: TcpListener,
    router: axum::Router,
    policy: std::sync::Arc<dyn flotilla_store::listener::ListenPolicy>,
    stop: watch::Receiver<bool>,
) {
    flotilla_store::listener::serve(listener, in_node_span(router), policy, stop).await;
}

/// The REST API over HTTPS on `listener` (bound or passed in a handover), else on `addr`,
/// bound here, retried until a predecessor daemon that did not pass it let go of it.
async fn serve_https(
    listener: Option<TcpListener>,
    (addr, port): (IpAddr, u16),
    router: axum::Router,
    config: std::sync::Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match listener {
        Some(listener) => listener,
        None => loop {
            match TcpListener::bind((addr, port)).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "binding the REST API's HTTPS port {addr}:{port}");
                    return;
                }
            }
        },
    };
    let policy = std::sync::Arc::new(flotilla_store::tls::HttpsOnly(config));
    flotilla_store::listener::serve(listener, in_node_span(router), policy, stop).await;
}

async fn serve(listener: TcpListener, router: axum::Router, stop: watch::Receiver<bool>) {
    // Connection info gives handlers the client's address: failed logins count against it.
    let service =
        in_node_span(router).into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, service)
        .with_graceful_shutdown(stopped(stop))
        .await
    {
        tracing::error!(error = %e, "server stopped");
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,openraft=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The daemon's pidfile: refuses to start a second daemon on one data dir, removed on exit
/// (kept when the node is handed over: the successor writes its own).
struct Pidfile(PathBuf);

impl Pidfile {
    fn claim(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(PIDFILE);
        if let Some(pid) = read_pid(&path) {
            if process_alive(pid) && pid != std::process::id() {
                bail!(
                    "a daemon (pid {pid}) already runs on data dir {}; stop it first",
                    data_dir.display()
                );
            }
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The pid in a pidfile, if it holds one.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True when a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    flotilla_engine::pid_running(pid)
}

/// Raises the soft limit on open files to the hard limit, as redis-server does at start: every
/// client of every database endpoint is a descriptor, and the usual soft limit (1,024) would
/// refuse clients long before a database's `max_connections`.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit"),
        }
    }
}
