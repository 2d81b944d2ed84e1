//! One client connection: reads a batch of pipelined requests, routes each one, writes every
//! shard's part of the batch in one go, then reads the shards' replies back in the client's
//! order and writes them to the client in one go. Requests are all sent before any reply is
//! awaited, so a batch touching several shards costs one round trip to the slowest of them,
//! not one per command.
//!
//! The session is composed of parts, each owning its state:
//! - the loop (this file): the client's socket and buffers, the session's view of the
//!   topology, reading a batch, sending it, writing the replies, closing;
//! - `dispatch.rs`: what one routed request does (answer, queue, send to shards), the glue
//!   between the parts; it owns nothing;
//! - `links.rs`: the shard connections (own, shared, retry), their generations, and following
//!   the topology;
//! - `replies.rs`: the reply queue and its resolution into client replies, in order (the
//!   ordering invariant is stated there);
//! - `hold.rs`: the hold gate (a request for a held shard parks the client until the release
//!   or the hold timeout);
//! - `resend.rs`: the resend policy (only a request certainly not executed goes again, to the
//!   shard's next primary; reads after a resent write follow it);
//! - `transaction.rs`: MULTI/EXEC/DISCARD/WATCH as pure decisions;
//! - `pubsub.rs` (crate level, next to the subscriptions): the pub/sub glue;
//! - `handover.rs` (crate level): the state an in-place handover carries, as one value
//!   ([`SessionState`]), which each part contributes its piece of.

use std::net::SocketAddr;

use bytes::BytesMut;
use flotilla_resp::{RequestDecoder, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::ClientState;
use crate::handover::{protocol_number, SessionState};
use crate::pubsub::Subscriptions;
use crate::route::route;
use crate::server::ProxyOptions;
use crate::shared::SharedPool;
use crate::slot::ShardIndex;
use crate::stats::EndpointStats;
use crate::topology::Topology;

mod dispatch;
mod hold;
mod links;
mod replies;
mod resend;
mod transaction;

use hold::{Admit, HoldGate, Waited};
use links::ShardLinks;
use replies::{Pending, ReplyQueue, Resolver};
use resend::ResendPolicy;
use transaction::TxState;

/// Most requests routed before the batch is sent; bounds the memory one pipeline can pin.
const MAX_BATCH: usize = 1024;

/// The client's side of the connection: its socket and buffers.
pub(super) struct ClientIo {
    stream: TcpStream,
    /// Bytes received and not yet decoded.
    input: BytesMut,
    /// Replies of the batch, written in one go.
    output: BytesMut,
    decoder: RequestDecoder,
}

impl ClientIo {
    /// Reads what the client sent into the input buffer; `false` when it closed.
    async fn read(&mut self) -> std::io::Result<bool> {
        Ok(self.stream.read_buf(&mut self.input).await? > 0)
    }

    /// Writes the output buffer to the client.
    async fn write_output(&mut self) -> std::io::Result<()> {
        self.stream.write_all(&self.output).await?;
        self.output.clear();
        Ok(())
    }
}

/// The session's view of the endpoint's topology: the one it routes with, adopted between
/// batches, and the channel new ones are published on.
pub(super) struct TopologyView {
    rx: watch::Receiver<Topology>,
    current: Topology,
    /// False once the sender is gone (no release can come).
    open: bool,
}

impl TopologyView {
    fn new(mut rx: watch::Receiver<Topology>) -> Self {
        let current = rx.borrow_and_update().clone();
        TopologyView {
            rx,
            current,
            open: true,
        }
    }

    /// Whether a topology was published since the last one adopted.
    fn has_changed(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }

    /// Makes the latest published topology the current one.
    fn take_latest(&mut self) {
        self.current = self.rx.borrow_and_update().clone();
    }

    /// Whether topologies may still be published.
    fn is_open(&self) -> bool {
        self.open
    }

    /// Waits for a newly published topology; `false` when the sender is gone.
    async fn changed(&mut self) -> bool {
        let changed = self.rx.changed().await.is_ok();
        self.open &= changed;
        changed
    }
}

/// The state of one client connection, as its parts.
pub(crate) struct Session {
    client: ClientIo,
    state: ClientState,
    view: TopologyView,
    links: ShardLinks,
    replies: ReplyQueue,
    hold: HoldGate,
    resend: ResendPolicy,
    tx: TxState,
    subs: Subscriptions,
    /// A request that must go over the client's own connections, read after requests sent
    /// over shared ones in the same batch: it is routed in the next batch, once those are
    /// answered, so the client's order holds across the two.
    deferred: Option<flotilla_resp::Request>,
    closing: bool,
    stats: EndpointStats,
}

impl Session {
    /// A session for an accepted client connection.
    pub fn new(
        stream: TcpStream,
        id: u64,
        topology_rx: watch::Receiver<Topology>,
        options: ProxyOptions,
        stats: EndpointStats,
        shared: Option<SharedPool>,
    ) -> Self {
        let view = TopologyView::new(topology_rx);
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let peer = stream.peer_addr().unwrap_or(unknown);
        let local = stream.local_addr().unwrap_or(unknown);
        let _ = stream.set_nodelay(true);
        let shard_count = view.current.shard_count();
        Session {
            client: ClientIo {
                stream,
                input: BytesMut::with_capacity(16 * 1024),
                output: BytesMut::with_capacity(16 * 1024),
                decoder: RequestDecoder::default(),
            },
            state: ClientState::new(id, peer, local, view.current.password()),
            links: ShardLinks::new(shard_count, shared),
            replies: ReplyQueue::default(),
            hold: HoldGate::new(&options),
            resend: ResendPolicy::new(shard_count, options.hold_timeout),
            tx: TxState::default(),
            subs: Subscriptions::default(),
            deferred: None,
            closing: false,
            stats,
            view,
        }
    }

    /// The tracing span of this session: the client's id and the database it uses (its
    /// endpoint port, and its uid when the topology names it). At debug level, so the data
    /// path pays nothing for it unless debug logging is on.
    pub fn span(&self) -> tracing::Span {
        let span = tracing::debug_span!(
            "client",
            client = self.state.id,
            port = self.state.local.port(),
            bdb = tracing::field::Empty,
        );
        if let Some(bdb) = self.view.current.bdb_uid() {
            span.record("bdb", bdb);
        }
        span
    }

    /// Serves the client until it disconnects, sends QUIT, or sends malformed input.
    ///
    /// A subscribed client is disconnected when the primary of a shard it subscribed on moves
    /// (or its subscriber connection breaks): its subscriptions live on the old engine, and
    /// clients resubscribe when they reconnect, so closing is the one signal every client
    /// library acts on.
    pub async fn run(mut self) -> std::io::Result<()> {
        loop {
            self.refresh_topology();
            if let Some(shard) = self.subs.moved(&self.view.current) {
                tracing::debug!(
                    shard = self.view.current.shard_uid(shard),
                    "closing a subscribed client: its shard's primary moved or its subscriber connection broke"
                );
                let _ = self.client.stream.shutdown().await;
                return Ok(());
            }
            let started = Instant::now();
            let routed = self.route_batch().await;
            if routed > 0 || self.closing {
                self.send_batch().await;
                self.subs.prune();
                self.client.write_output().await?;
                self.replies.finish_batch(started.elapsed(), &self.stats);
                if self.closing {
                    let _ = self.client.stream.shutdown().await;
                    return Ok(());
                }
                continue;
            }
            // Every request read so far is answered: a command boundary, unless a request is
            // parked (below) or half decoded. The in-place handover stops a session here and
            // takes `Session::capture`.
            if let Some(shard) = self.hold.parked_shard() {
                if !self.wait_for_release(shard).await? {
                    return Ok(());
                }
                continue;
            }
            if self.subs.is_open() {
                if !self.wait_subscribed().await? {
                    return Ok(());
                }
                continue;
            }
            if !self.client.read().await? {
                return Ok(());
            }
        }
    }

    /// Waits for the client's next bytes while passing published messages on, and notices a
    /// new topology; `false` when the client or a subscriber connection is gone.
    async fn wait_subscribed(&mut self) -> std::io::Result<bool> {
        let open = self.view.is_open();
        tokio::select! {
            read = self.client.read() => read,
            message = self.subs.next_message(self.state.protocol) => match message {
                Ok(value) => {
                    value.encode_as(&mut self.client.output, self.state.protocol);
                    self.client.write_output().await?;
                    Ok(true)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "subscriber connection lost; closing the client");
                    Ok(false)
                }
            },
            changed = self.view.changed(), if open => {
                if changed {
                    self.adopt_topology();
                }
                Ok(true)
            }
        }
    }

    /// Waits until `shard` is released, the hold times out (its requests are then answered
    /// `-TRYAGAIN`), or the client leaves (`false`). Meanwhile the client's further requests
    /// are read into the input buffer up to the byte bound, then left in its socket.
    async fn wait_for_release(&mut self, shard: ShardIndex) -> std::io::Result<bool> {
        let deadline = self.hold.deadline();
        while self.view.current.is_held(shard) {
            let waited = self
                .hold
                .wait(shard, deadline, &mut self.view, &mut self.client)
                .await?;
            match waited {
                Waited::Read => {}
                Waited::Topology => {
                    self.adopt_topology();
                    self.links.drop_stale(&self.view.current);
                }
                Waited::TimedOut => return Ok(true),
                Waited::ClientGone => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Decodes and routes the requests already received, up to [`MAX_BATCH`].
    /// Stops at a request for a held shard, which is parked (see [`Session::wait_for_release`]).
    async fn route_batch(&mut self) -> usize {
        let mut routed = 0;
        self.links.start_batch();
        while routed < MAX_BATCH && !self.closing {
            let request = match self.hold.take_parked().or_else(|| self.deferred.take()) {
                Some(request) => request,
                None => match self.client.decoder.decode(&mut self.client.input) {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "closing client after protocol error");
                        self.ready(Value::error(format!("ERR {e}")));
                        self.closing = true;
                        break;
                    }
                },
            };
            let decision = route(&request, self.view.current.slots());
            let held = self.held_shard(&request, &decision);
            match self.hold.admit(request, held) {
                Admit::Parked => break,
                Admit::Expired(shard) => {
                    let (reply, verdict) = self
                        .hold
                        .expired_reply(&self.view.current.shard_name(shard));
                    let protocol = self.state.protocol;
                    self.replies.push(Pending::Ready(reply, protocol, verdict));
                }
                Admit::Pass(request) => {
                    if self.links.must_leave_shared(&decision, self.state.protocol) {
                        if self.links.sent_shared() {
                            self.deferred = Some(request);
                            break;
                        }
                        self.leave_shared(&request).await;
                    }
                    self.dispatch(request, decision).await;
                }
            }
            routed += 1;
        }
        routed
    }

    /// Flushes every shard's part of the batch, then resolves the replies in order.
    async fn send_batch(&mut self) {
        self.links.flush().await;
        self.subs.flush().await;
        self.resend.start_batch();
        let mut resolver = Resolver {
            links: &mut self.links,
            resend: &mut self.resend,
            subs: &mut self.subs,
            topology: &self.view.rx,
            out: &mut self.client.output,
            protocol: self.state.protocol,
            closing: &mut self.closing,
        };
        self.replies.resolve_all(&mut resolver).await;
    }

    /// Takes a newly published topology between batches: connections to a shard whose primary
    /// moved are dropped (and reopened to the new primary on next use), broken ones too.
    fn refresh_topology(&mut self) {
        if self.view.has_changed() {
            self.adopt_topology();
        }
        self.links.drop_stale(&self.view.current);
    }

    /// Makes the latest published topology this session's, for every part.
    fn adopt_topology(&mut self) {
        self.view.take_latest();
        let topology = &self.view.current;
        self.links.adopt(topology);
        self.hold.adopt();
        self.resend.adopt(topology.shard_count());
    }

    /// The session's state for an in-place handover, taken at a command boundary: every
    /// request read has been answered, none is parked, deferred or half decoded. `None`
    /// elsewhere (the handover then waits for the next boundary).
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "called by the in-place handover (issue 10)")
    )]
    pub fn capture(&self) -> Option<SessionState> {
        let at_boundary = self.replies.is_empty()
            && self.hold.parked_shard().is_none()
            && self.deferred.is_none()
            && !self.client.decoder.is_mid_request()
            && !self.closing;
        if !at_boundary {
            return None;
        }
        let (transaction, watch) = self.tx.capture();
        let (subscriptions, mut pinned) = self.subs.capture(&self.view.current);
        let watched = self.tx.current_watch();
        if let Some(pin) = watched.and_then(|w| self.links.pinned_watch(&w, &self.view.current)) {
            pinned.insert(0, pin);
        }
        Some(SessionState {
            client_id: self.state.id,
            authenticated: self.state.authenticated,
            protocol: protocol_number(self.state.protocol),
            name: self.state.name.as_ref().map(|n| n.to_vec()),
            shared_connections: self.links.uses_shared(),
            subscriptions,
            transaction,
            watch,
            pinned,
            unread: self.client.input.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A session over a real loopback connection whose one shard is never reached (the
    /// requests below are all answered by the proxy), and the client's end.
    async fn session(password: Option<&str>) -> (Session, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let shard = SocketAddr::from(([127, 0, 0, 1], 1));
        let topology = Topology::even(password.map(str::to_owned), "", vec![shard]).unwrap();
        let (_tx, rx) = watch::channel(topology);
        let session = Session::new(
            stream,
            42,
            rx,
            ProxyOptions::default(),
            EndpointStats::new(),
            Some(SharedPool::default()),
        );
        (session, client)
    }

    /// Has the session read `bytes` from its client and answer what they complete.
    async fn feed(session: &mut Session, client: &mut TcpStream, bytes: &[u8]) {
        client.write_all(bytes).await.unwrap();
        let mut read = 0;
        while read < bytes.len() {
            let before = session.client.input.len();
            session.client.read().await.unwrap();
            read += session.client.input.len() - before;
        }
        session.route_batch().await;
        session.send_batch().await;
        session.client.write_output().await.unwrap();
    }

    #[tokio::test]
    async fn the_handover_state_is_taken_at_command_boundaries() {
        let (mut session, mut client) = session(Some("secret")).await;
        let fresh = session.capture().unwrap();
        assert_eq!(
            (fresh.client_id, fresh.authenticated, fresh.protocol),
            (42, false, 2)
        );
        assert!(fresh.shared_connections && fresh.pinned.is_empty());

        feed(
            &mut session,
            &mut client,
            b"HELLO 3 AUTH default secret SETNAME app\r\nMULTI\r\nSET k v\r\nPING\r\n*2\r\n$3\r\nGET\r\n",
        )
        .await;
        assert!(session.capture().is_none(), "a request is half decoded");
        feed(&mut session, &mut client, b"$1\r\nk\r\nEX").await;
        let state = session.capture().expect("at a boundary");
        assert!(state.authenticated);
        assert_eq!(state.protocol, 3);
        assert_eq!(state.name.as_deref(), Some(&b"app"[..]));
        let tx = state.transaction.expect("in MULTI");
        let names: Vec<_> = tx.queued.iter().map(|argv| argv[0].clone()).collect();
        assert_eq!(names, [b"SET".to_vec(), b"PING".to_vec(), b"GET".to_vec()]);
        assert_eq!(tx.slot, Some(crate::slot::key_slot(b"k")));
        assert!(!tx.aborted);
        assert_eq!(state.watch, None);
        assert_eq!(state.unread, b"EX".to_vec(), "the start of an inline EXEC");
    }
}
