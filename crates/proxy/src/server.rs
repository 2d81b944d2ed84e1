//! The endpoint's accept loop: one task per client connection, each with its own view of the
//! topology, until shutdown; between accepts, the owner's requests (see `control.rs`): stop or
//! resume accepting, signal every session, adopt a detached one.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinSet};
use tracing::Instrument;

use crate::control::{
    endpoint_control, AdoptError, Command, Counts, Ended, EndpointInbox, SessionControl, Signal,
};
use crate::handover::DetachedSession;
use crate::session::Session;
use crate::shared::SharedPool;
use crate::stats::EndpointStats;
use crate::tls::{ClientStream, EndpointTls, HANDSHAKE_TIMEOUT};
use crate::topology::Topology;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Client connection ids (CLIENT ID), unique within the process, and across an in-place
/// handover once the new process raised it past the old one's ([`set_next_client_id`]).
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// The id the next accepted client connection gets.
///
/// Exists for the in-place handover: the old process tells the new one where its ids stop,
/// so ids handed out after the handover never collide with those of the clients that moved.
pub fn next_client_id() -> u64 {
    NEXT_CLIENT_ID.load(Ordering::Relaxed)
}

/// Raises the id the next accepted client connection gets to at least `next` (never lowers
/// it); see [`next_client_id`]. Adopting a session also raises it past the session's id.
pub fn set_next_client_id(next: u64) {
    NEXT_CLIENT_ID.fetch_max(next, Ordering::Relaxed);
}

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
    let (_control, inbox) = endpoint_control();
    let tls = EndpointTls::default();
    serve_controlled(listener, topology, shutdown, options, stats, inbox, tls).await;
}

/// [`serve_with_stats`] under the control of the [`crate::EndpointControl`] that `inbox`
/// belongs to (see [`crate::endpoint_control`]): the in-place handover's entry point.
///
/// Sessions detached, adopted or closed at a boundary are counted in the control's
/// [`crate::HandoverCounts`]; in `stats`, an adopted session counts as a connection
/// (current and total) like an accepted one, and a detached one simply stops being current.
pub async fn serve_controlled(
    listener: TcpListener,
    topology: watch::Receiver<Topology>,
    shutdown: impl Future<Output = ()>,
    options: ProxyOptions,
    stats: EndpointStats,
    mut inbox: EndpointInbox,
    tls: EndpointTls,
) {
    let mut sessions = Sessions {
        tasks: JoinSet::new(),
        signals: HashMap::new(),
        shared: options.shared_connections.then(SharedPool::default),
        topology,
        options,
        stats,
        counts: inbox.counts.clone(),
        tls,
    };
    let mut accepting = true;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            command = inbox.next() => match command {
                Command::StopAccepting(done) => {
                    accepting = false;
                    let _ = done.send(());
                }
                Command::ResumeAccepting => accepting = true,
                Command::Signal(signal, done) => {
                    let _ = done.send(sessions.signal(&signal));
                }
                Command::Adopt(detached, done) => {
                    let _ = done.send(sessions.adopt(*detached));
                }
            },
            Some(joined) = sessions.tasks.join_next_with_id(), if !sessions.tasks.is_empty() => {
                sessions.joined(joined);
            }
            accepted = listener.accept(), if accepting => match accepted {
                Ok((stream, peer)) if sessions.full() => refuse(stream, peer),
                Ok((stream, peer)) => sessions.accept(stream, peer),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    sessions.tasks.shutdown().await;
}

/// The running sessions of one endpoint, and what a new one needs.
struct Sessions {
    tasks: JoinSet<Ended>,
    /// Each running session's signal channel, by its task.
    signals: HashMap<tokio::task::Id, mpsc::UnboundedSender<Signal>>,
    shared: Option<SharedPool>,
    topology: watch::Receiver<Topology>,
    options: ProxyOptions,
    stats: EndpointStats,
    counts: Arc<Counts>,
    /// The node's TLS configuration, for databases in TLS mode.
    tls: EndpointTls,
}

/// What a client past the database's `max_connections` is answered before it is closed
/// (Redis's wording).
const MAX_CLIENTS_REACHED: &[u8] = b"-ERR max number of clients reached\r\n";

/// How long the refusal of a client past `max_connections` may take to write.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers a client past the database's `max_connections` with Redis's error and closes it,
/// in a task of its own (not a session: it does not count as a client).
fn refuse(mut stream: TcpStream, peer: SocketAddr) {
    tracing::debug!(%peer, "refusing a client: max_connections reached");
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let write = stream.write_all(MAX_CLIENTS_REACHED);
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, write).await;
        let _ = stream.shutdown().await;
    });
}

impl Sessions {
    /// Whether the endpoint serves as many clients as the database's `max_connections`
    /// allows (0: no limit).
    fn full(&self) -> bool {
        let max = self.topology.borrow().limits().max_connections;
        max > 0 && self.tasks.len() >= max as usize
    }

    /// Starts a session for an accepted client connection.
    fn accept(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.topology.borrow().tls_mode().is_enabled() {
            return self.accept_tls(stream, peer);
        }
        let id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
        let (signals, rx) = mpsc::unbounded_channel();
        let session = Session::new(
            stream,
            id,
            self.topology.clone(),
            self.options,
            self.stats.clone(),
            self.shared.clone(),
            SessionControl::new(rx, self.counts.clone()),
        );
        self.spawn(session, peer, signals, false);
    }

    /// Starts a session for a client of a database in TLS mode: its task completes the
    /// handshake first (a plaintext client fails it and is closed, as is every client while
    /// the node has no TLS configuration yet).
    fn accept_tls(&mut self, stream: TcpStream, peer: SocketAddr) {
        let Some(acceptor) = self.tls.acceptor() else {
            tracing::warn!(%peer, "closing a client of a TLS database: the node has no certificate yet");
            return;
        };
        let id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
        let (signals, rx) = mpsc::unbounded_channel();
        let (topology, options, stats, shared, counts) = (
            self.topology.clone(),
            self.options,
            self.stats.clone(),
            self.shared.clone(),
            self.counts.clone(),
        );
        let counted = self.stats.connection();
        self.counts.started(false);
        let span = tracing::debug_span!("tls_handshake", client = id, %peer);
        let task = self.tasks.spawn(
            async move {
                let _counted = counted;
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return Ended::Client;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return Ended::Client;
                    }
                };
                let client = ClientStream::Tls(Box::new(stream));
                let control = SessionControl::new(rx, counts);
                let session =
                    Session::with_client(client, id, topology, options, stats, shared, control);
                let span = session.span();
                session.run().instrument(span).await.unwrap_or_else(|e| {
                    tracing::debug!(%peer, error = %e, "client connection ended");
                    Ended::Client
                })
            }
            .instrument(span),
        );
        self.signals.insert(task.id(), signals);
    }

    /// Starts a session detached from another endpoint instance; returns its client id.
    fn adopt(&mut self, detached: DetachedSession) -> Result<u64, AdoptError> {
        let id = detached.state.client_id;
        set_next_client_id(id.saturating_add(1));
        let (signals, rx) = mpsc::unbounded_channel();
        let session = Session::resume(
            detached,
            self.topology.clone(),
            self.options,
            self.stats.clone(),
            self.shared.clone(),
            SessionControl::new(rx, self.counts.clone()),
        )?;
        let peer = session.peer();
        self.spawn(session, peer, signals, true);
        Ok(id)
    }

    fn spawn(
        &mut self,
        session: Session,
        peer: SocketAddr,
        signals: mpsc::UnboundedSender<Signal>,
        adopted: bool,
    ) {
        let counted = self.stats.connection();
        self.counts.started(adopted);
        let span = session.span();
        // The session moves into its run future at once, so the task holds it once.
        let run = session.run();
        let task = self.tasks.spawn(
            async move {
                let _counted = counted;
                run.await.unwrap_or_else(|e| {
                    tracing::debug!(%peer, error = %e, "client connection ended");
                    Ended::Client
                })
            }
            .instrument(span),
        );
        self.signals.insert(task.id(), signals);
    }

    /// Passes `signal` to every running session; returns how many there are.
    fn signal(&mut self, signal: &Signal) -> usize {
        self.signals
            .retain(|_, session| session.send(signal.clone()).is_ok());
        self.signals.len()
    }

    /// A session's task ended.
    fn joined(&mut self, joined: Result<(tokio::task::Id, Ended), JoinError>) {
        let (task, ended) = match joined {
            Ok((task, ended)) => (task, Some(ended)),
            Err(e) => (e.id(), None),
        };
        self.signals.remove(&task);
        self.counts.ended(ended);
    }
}
