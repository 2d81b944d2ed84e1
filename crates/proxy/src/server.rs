//! The endpoint's accept loop: one task per client connection, each with its own view of the
//! topology, until shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::session::Session;
use crate::shared::SharedPool;
use crate::stats::EndpointStats;
use crate::topology::Topology;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Client connection ids (CLIENT ID), unique within the process.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// How long a switchover hold may keep a client's commands queued before they are answered
/// `-TRYAGAIN` (not executed), unless configured otherwise: the cluster's hold timeout
/// (`flotilla_model::timing::HOLD_TIMEOUT`, which the endpoints pass in [`ProxyOptions`]; the
/// endpoints crate checks at compile time that the two are the same).
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(5);

/// How many bytes of commands one client may have queued during a hold, unless configured
/// otherwise.
pub const DEFAULT_HOLD_MAX_BYTES: usize = 16 << 20;

/// Tunables of one endpoint's data path.
///
/// Exists so the bounds of a switchover (how long and how much a client's commands may wait)
/// are set by the daemon, not hard-coded; [`serve`] uses [`ProxyOptions::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyOptions {
    /// How long commands for a held shard wait for the release, and how long a write refused
    /// with `-READONLY` waits for a new primary, before being answered `-TRYAGAIN`.
    pub hold_timeout: Duration,
    /// The most bytes of commands read from one client while it waits for a release; beyond
    /// that the proxy stops reading (the client's further commands wait in its socket).
    pub hold_max_bytes: usize,
    /// Whether RESP2 clients' plain commands share one engine connection per shard primary
    /// (see `shared.rs`); off, every client has connections of its own.
    pub shared_connections: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            hold_timeout: DEFAULT_HOLD_TIMEOUT,
            hold_max_bytes: DEFAULT_HOLD_MAX_BYTES,
            shared_connections: true,
        }
    }
}

/// Serves one database endpoint on `listener` until `shutdown` completes, with the default
/// [`ProxyOptions`].
///
/// Each accepted client gets its own task; it reads the current [`Topology`] from `topology`
/// before every batch of commands, so a new primary address published there is used by the
/// next command without dropping client connections. When `shutdown` completes the listener
/// stops accepting and the client connections still open are closed.
pub async fn serve(
    listener: TcpListener,
    topology: watch::Receiver<Topology>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, topology, shutdown, ProxyOptions::default()).await;
}

/// [`serve`] with explicit [`ProxyOptions`].
pub async fn serve_with(
    listener: TcpListener,
    topology: watch::Receiver<Topology>,
    shutdown: impl Future<Output = ()>,
    options: ProxyOptions,
) {
    serve_with_stats(listener, topology, shutdown, options, EndpointStats::new()).await;
}

/// [`serve_with`] counting commands, outcomes, connections and latency in `stats`, which the
/// caller keeps a clone of to read with [`EndpointStats::snapshot`].
pub async fn serve_with_stats(
    listener: TcpListener,
    topology: watch::Receiver<Topology>,
    shutdown: impl Future<Output = ()>,
    options: ProxyOptions,
    stats: EndpointStats,
) {
    let mut clients = JoinSet::new();
    let shared = options.shared_connections.then(SharedPool::default);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
                    let counted = stats.connection();
                    let session = Session::new(stream, id, topology.clone(), options, stats.clone(), shared.clone());
                    let span = session.span();
                    clients.spawn(async move {
                        let _counted = counted;
                        if let Err(e) = session.run().await {
                            tracing::debug!(%peer, error = %e, "client connection ended");
                        }
                    }.instrument(span));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    clients.shutdown().await;
}
