//! `flotilla node start`: wires the store, orchestrator, agent and API into one node daemon.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_api::ApiContext;
use flotilla_model::NodeSpec;
use flotilla_orchestrator::Observer;
use flotilla_store::{Store, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{Instrument, Span};

/// The daemon's pidfile name inside its data dir.
pub const PIDFILE: &str = "flotilla.pid";

/// Arguments of `flotilla node start`.
#[derive(Args, Clone)]
pub struct StartArgs {
    /// The node's own address; every service binds only this address.
    #[arg(long)]
    pub addr: IpAddr,
    /// Where the node keeps its store, identity, logs and shards.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The installed Flotilla package (bin/, engines/, manifest.toml); optional for now.
    #[arg(long)]
    pub package_dir: Option<PathBuf>,
    /// REST API port (HTTP).
    #[arg(long, default_value_t = 8080)]
    pub rest_port: u16,
    /// Internal RPC and Raft port.
    #[arg(long, default_value_t = 3333)]
    pub rpc_port: u16,
}

/// The software version this binary reports.
pub fn software_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Runs the daemon until SIGTERM or SIGINT. Everything it logs is inside the span `node`,
/// which names the node's address, and its uid once it has one.
pub async fn run(args: StartArgs) -> Result<()> {
    init_logging();
    let root = tracing::info_span!("node", uid = tracing::field::Empty, addr = %args.addr);
    run_node(args).instrument(root).await
}

async fn run_node(mut args: StartArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    // Engines are configured with absolute paths (they run detached, from their own cwd).
    args.data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving data dir {}", args.data_dir.display()))?;
    let _pidfile = Pidfile::claim(&args.data_dir)?;
    let rpc_listener = bind(args.addr, args.rpc_port, "internal RPC").await?;
    let rest_listener = bind(args.addr, args.rest_port, "REST API").await?;

    let store = Store::open(StoreConfig {
        data_dir: args.data_dir.clone(),
        addr: args.addr,
        rpc_port: args.rpc_port,
    })
    .await
    .context("opening the cluster store")?;
    let observer = Observer::new(store.clone());
    let failover_observer = observer.clone();
    let actions_observer = observer.clone();
    let node = NodeSpec {
        addr: args.addr,
        software_version: software_version(),
        os: flotilla_agent::host::os_name(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let naming = spawn(name_node_uid(
        store.clone(),
        Span::current(),
        stop_rx.clone(),
    ));
    tracing::info!("node daemon starting");
    let rpc_router = flotilla_store::rpc::router(store.clone()).merge(observer.router());
    let api_router = flotilla_api::router(ApiContext::new(store.clone(), observer, node.clone()));
    let rpc = spawn(serve(rpc_listener, rpc_router, stop_rx.clone()));
    let rest = spawn(serve(rest_listener, api_router, stop_rx.clone()));
    let failover = spawn(flotilla_orchestrator::failover::run_failover(
        store.clone(),
        failover_observer,
        stop_rx.clone(),
    ));
    let actions = spawn(flotilla_orchestrator::actions::run_actions(
        actions_observer,
        stop_rx.clone(),
    ));
    let endpoint_stats = flotilla_endpoints::StatsRegistry::default();
    let endpoints = spawn(flotilla_endpoints::run(
        store.clone(),
        args.addr,
        endpoint_stats.clone(),
        stop_rx.clone(),
    ));
    let agent = flotilla_agent::ShardAgent::new(
        store.clone(),
        engine_catalog(&args),
        args.addr,
        args.data_dir.join("shards"),
    );
    let observed_shards = agent.observed_shards();
    let shards = spawn(agent.run(stop_rx.clone()));
    let discovery_listener = bind(
        args.addr,
        flotilla_discovery::DISCOVERY_PORT,
        "discovery service",
    )
    .await?;
    let addr = args.addr;
    let databases =
        store.watch_projection(move |state| flotilla_discovery::Databases::of_node(state, addr));
    let discovery = spawn(flotilla_discovery::serve(
        discovery_listener,
        databases,
        stopped(stop_rx.clone()),
    ));
    let metrics_listener = bind(args.addr, flotilla_metrics::DEFAULT_PORT, "metrics").await?;
    let metrics_source = {
        let (store, stats, shards) = (store.clone(), endpoint_stats, observed_shards.clone());
        move || {
            let endpoints = flotilla_endpoints::stats_snapshots(&stats);
            let node_uid = store.uid().unwrap_or(0);
            flotilla_metrics::sample_of(&store.state(), node_uid, &endpoints, &shards.snapshot())
        }
    };
    let metrics = spawn(flotilla_metrics::serve(
        metrics_listener,
        metrics_source,
        stopped(stop_rx.clone()),
    ));
    let reporter = spawn(flotilla_agent::run_reporter_with_shards(
        store.clone(),
        node.software_version.clone(),
        node.os.clone(),
        observed_shards,
        stop_rx,
    ));

    wait_for_signal().await?;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::join!(
        rpc, rest, reporter, endpoints, failover, shards, discovery, actions, metrics, naming
    );
    store.shutdown().await;
    Ok(())
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
const BIND_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(3);

async fn bind(addr: IpAddr, port: u16, what: &str) -> Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_RETRY_FOR;
    loop {
        match TcpListener::bind((addr, port)).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            bound => {
                return bound.with_context(|| {
                    format!("binding the {what} on {addr}:{port}: is another daemon using this address? (`ss -ltnp` shows who listens there)")
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
fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(task.in_current_span())
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

async fn serve(listener: TcpListener, router: axum::Router, stop: watch::Receiver<bool>) {
    // axum serves each connection in a task of its own: requests run in the node's span too.
    let span = Span::current();
    let router = router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            next.run(request).instrument(span.clone())
        },
    ));
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stopped(stop))
        .await
    {
        tracing::error!(error = %e, "server stopped");
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,openraft=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The daemon's pidfile: refuses to start a second daemon on one data dir, removed on exit.
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
