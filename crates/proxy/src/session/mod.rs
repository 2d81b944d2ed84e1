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
//!   ([`SessionState`]), which each part contributes its piece of; `detach.rs`: taking it at a
//!   command boundary (or while blocked) with the sockets, and rebuilding a session from them.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use flotilla_model::ClientLimits;
use flotilla_resp::{ProtocolError, Request, RequestDecoder, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::ClientState;
use crate::control::{Ended, SessionControl};
use crate::handover::SessionState;
use crate::pubsub::Subscriptions;
use crate::route::route;
use crate::server::ProxyOptions;
use crate::shared::SharedPool;
use crate::slot::ShardIndex;
use crate::stats::EndpointStats;
use crate::tls::ClientStream;
use crate::topology::Topology;
use crate::tracking::Tracking;

mod detach;
mod dispatch;
mod hold;
mod links;
mod replies;
mod resend;
mod track;
mod transaction;

use dispatch::CrdtStep;
use hold::{Admit, HoldGate, Waited};
use links::ShardLinks;
use replies::{Pending, ReplyQueue, Resolver};
use resend::ResendPolicy;
use transaction::TxState;

/// Most requests routed before the batch is sent; bounds the memory one pipeline can pin.
const MAX_BATCH: usize = 1024;

/// Requests of a client's first batch; each batch whose replies stay under
/// [`BATCH_REPLY_BYTES`] doubles the next one, up to [`MAX_BATCH`].
const FIRST_BATCH: usize = 16;

/// The reply bytes one batch aims to stay under: a batch whose replies were larger makes the
/// next one smaller in proportion. Replies of a batch on a shared shard connection arrive
/// whole before they are written (see `shared.rs`), so this is what bounds the replies a
/// client that does not read them pins in the proxy: about one batch's worth, not 1,024
/// large replies.
const BATCH_REPLY_BYTES: usize = 4 << 20;

/// The next batch's size after one of `routed` requests whose replies took `bytes`.
fn next_batch_size(current: usize, routed: usize, bytes: usize) -> usize {
    if bytes > BATCH_REPLY_BYTES {
        let fitting = routed.saturating_mul(BATCH_REPLY_BYTES) / bytes.max(1);
        fitting.clamp(1, MAX_BATCH)
    } else if routed >= current {
        current.saturating_mul(2).min(MAX_BATCH)
    } else {
        current
    }
}

/// Replies pending past this many bytes are written out at once, mid-batch: a batch's replies
/// are not all held until its last one is resolved. While the client does not take them, the
/// session waits in that write and reads none of the client's further requests (backpressure).
const FLUSH_AT: usize = 64 * 1024;

/// Room made in the input buffer before each read (it is allocated only then: an idle
/// connection holds no buffer).
const READ_CHUNK: usize = 16 * 1024;

/// Most bytes one wake-up reads from the client while the socket has more: a read that fills
/// the buffer's room is followed by another with more room, so a pipeline a little larger than
/// [`READ_CHUNK`] (16 SETs of 1 KB) is routed as one batch, not as a batch and its last request.
const READ_AHEAD: usize = 256 * 1024;

/// What the session enforces on the client's replies (from the database's [`ClientLimits`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct OutputBounds {
    /// Most bytes of replies pending; 0: no limit.
    hard_limit: usize,
    /// Longest wait for the client to take any byte of its pending replies.
    timeout: Option<Duration>,
}

impl OutputBounds {
    fn of(limits: &ClientLimits) -> Self {
        OutputBounds {
            hard_limit: usize::try_from(limits.client_output_buffer_limit).unwrap_or(usize::MAX),
            timeout: (limits.client_output_timeout > 0)
                .then(|| Duration::from_secs(u64::from(limits.client_output_timeout))),
        }
    }
}

/// The client's side of the connection: its socket and buffers.
pub(super) struct ClientIo {
    stream: ClientStream,
    /// Bytes received and not yet decoded.
    input: BytesMut,
    /// Replies not yet written (written once [`FLUSH_AT`] bytes are pending, and at the end
    /// of each batch).
    output: BytesMut,
    decoder: RequestDecoder,
    /// The bounds on `output`.
    bounds: OutputBounds,
    /// Set once the client exceeded an output bound or its socket failed: its replies are
    /// dropped and the session ends after the batch.
    broken: bool,
    /// Reply bytes written since the batch started.
    batch_bytes: usize,
    /// Whether the client has authenticated: only then does a read go on past
    /// [`READ_CHUNK`] (see [`read_ahead`]), so a client without the password is still bounded
    /// to a few KB.
    authenticated: bool,
    /// Reply bytes of the previous batch: the output buffer is given that much room (at most
    /// [`FLUSH_AT`]) before a batch's replies are added, instead of growing by doubling.
    last_batch_bytes: usize,
}

impl ClientIo {
    fn new(stream: ClientStream) -> Self {
        ClientIo {
            stream,
            input: BytesMut::new(),
            output: BytesMut::new(),
            decoder: RequestDecoder::default(),
            bounds: OutputBounds::default(),
            broken: false,
            batch_bytes: 0,
            last_batch_bytes: 0,
            authenticated: false,
        }
    }

    /// Before a routed batch's replies are added: room for as many bytes as the previous
    /// batch's replies took (within [`FLUSH_AT`]).
    fn make_room(&mut self) {
        let room = self.last_batch_bytes.min(FLUSH_AT);
        if self.output.capacity() - self.output.len() < room {
            self.output.reserve(room);
        }
    }

    /// Applies the database's limits and the client's authentication to what is decoded
    /// and written from now on.
    fn bound(&mut self, limits: &ClientLimits, authenticated: bool) {
        self.bounds = OutputBounds::of(limits);
        self.authenticated = authenticated;
        self.decoder.set_unauthenticated(!authenticated);
        let query = usize::try_from(limits.client_query_buffer_limit).unwrap_or(usize::MAX);
        self.decoder.set_query_buffer_limit(Some(query));
    }

    /// Reads what the client sent into the input buffer; `false` when it closed.
    ///
    /// The input buffer gets room only once the socket is readable, so a connection waiting
    /// for its client holds no buffer (see [`ClientIo::release_idle_buffers`]).
    async fn read(&mut self) -> io::Result<bool> {
        let ClientIo {
            stream,
            input,
            output,
            authenticated,
            ..
        } = self;
        let plain = match stream {
            ClientStream::Plain(plain) => plain,
            ClientStream::Tls(tls) => {
                // TLS decrypts into its own buffers: read once the buffer has room.
                reserve_input(input);
                return Ok(tls.read_buf(input).await? > 0);
            }
        };
        loop {
            plain.readable().await?;
            reserve_input(input);
            match plain.try_read_buf(input) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    if *authenticated {
                        read_ahead(plain, input);
                    }
                    return Ok(true);
                }
                // A spurious wake-up (a new socket is reported ready once): wait again
                // without the buffer.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => release_idle(input, output),
                Err(e) => return Err(e),
            }
        }
    }

    /// Frees the buffers while they are empty: between requests, a connection costs its
    /// socket and its session, not 16 KB of buffers.
    fn release_idle_buffers(&mut self) {
        release_idle(&mut self.input, &mut self.output);
    }

    /// Writes the output buffer to the client, within the output timeout; an error once the
    /// client broke an output bound.
    async fn write_output(&mut self) -> io::Result<()> {
        if self.broken {
            self.output.clear();
            return Err(io::Error::other(
                "the client's replies exceeded its output bounds",
            ));
        }
        let written = write_within(&mut self.stream, &self.output, self.bounds.timeout).await;
        self.batch_bytes += self.output.len();
        self.output.clear();
        if written.is_err() {
            self.broken = true;
        }
        written
    }

    /// After a reply was added to the output: writes it out once [`FLUSH_AT`] bytes are
    /// pending, and enforces the hard limit. `false` once the client is to be closed (its
    /// replies are dropped from then on).
    async fn after_reply(&mut self) -> bool {
        if self.broken {
            self.output.clear();
            return false;
        }
        let hard = self.bounds.hard_limit;
        if hard > 0 && self.output.len() > hard {
            tracing::debug!(
                pending = self.output.len(),
                limit = hard,
                "closing a client whose replies exceed its output buffer limit"
            );
            self.broken = true;
            self.output.clear();
            return false;
        }
        if self.output.len() >= FLUSH_AT {
            if let Err(e) = self.write_output().await {
                tracing::debug!(error = %e, "closing a client that does not take its replies");
                return false;
            }
        }
        true
    }

    /// The next request received. `whole`: only a request already received whole is decoded,
    /// so the input buffer is left holding exactly the bytes not handled (the session is
    /// about to stop at a boundary and pass them on); the request in the middle of decoding,
    /// if any, is finished first.
    fn next_request(&mut self, whole: bool) -> Result<Option<Request>, ProtocolError> {
        if !whole || self.decoder.is_mid_request() {
            return self.decoder.decode(&mut self.input);
        }
        while let Some(len) = whole_request_len(&self.input) {
            let mut request = self.input.split_to(len);
            let decoded = self.decoder.decode(&mut request);
            if !request.is_empty() {
                // The decoder saw the request's end elsewhere: give back what it left.
                request.unsplit(std::mem::take(&mut self.input));
                self.input = request;
            }
            match decoded? {
                Some(request) => return Ok(Some(request)),
                None if self.decoder.is_mid_request() => {
                    return self.decoder.decode(&mut self.input);
                }
                None => {}
            }
        }
        Ok(None)
    }
}

/// Gives the input buffer room for a read when it has little left.
fn reserve_input(input: &mut BytesMut) {
    if input.capacity() - input.len() < READ_CHUNK / 4 {
        input.reserve(READ_CHUNK);
    }
}

/// After a read that filled the input buffer's room: reads on while the socket has bytes, the
/// buffer growing by [`READ_CHUNK`], up to [`READ_AHEAD`] bytes buffered. What is left stays
/// in the socket (and the end of the stream, if it came, is seen by the next read).
fn read_ahead(plain: &TcpStream, input: &mut BytesMut) {
    while input.len() == input.capacity() && input.len() < READ_AHEAD {
        input.reserve(READ_CHUNK);
        match plain.try_read_buf(input) {
            Ok(read) if read > 0 => {}
            _ => return,
        }
    }
}

/// Frees `input` and `output` while they are empty (see [`ClientIo::release_idle_buffers`]).
fn release_idle(input: &mut BytesMut, output: &mut BytesMut) {
    if input.is_empty() && input.capacity() > 0 {
        *input = BytesMut::new();
    }
    if output.is_empty() && output.capacity() > 0 {
        *output = BytesMut::new();
    }
}

/// Writes `bytes` to `stream`; with a `timeout`, fails once the client takes no byte for that
/// long (it does not read its replies).
async fn write_within(
    stream: &mut ClientStream,
    bytes: &[u8],
    timeout: Option<Duration>,
) -> io::Result<()> {
    let Some(timeout) = timeout else {
        stream.write_all(bytes).await?;
        // TLS keeps what it could not send yet in its own buffer.
        return stream.flush().await;
    };
    let mut at = 0;
    while at < bytes.len() {
        let written = tokio::time::timeout(timeout, stream.write(&bytes[at..]))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the client took none of its replies for {} s (client_output_timeout)",
                        timeout.as_secs()
                    ),
                )
            })??;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += written;
    }
    if stream.is_tls() {
        tokio::time::timeout(timeout, stream.flush())
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    }
    Ok(())
}

/// The length of the request at the start of `input` when it is all there (an inline line, or
/// a multibulk whose every argument arrived); `None` when more bytes are needed. Input the
/// scanner does not understand is given whole to the decoder, which says what is wrong.
fn whole_request_len(input: &[u8]) -> Option<usize> {
    match input.first()? {
        b'*' => match crate::frame::frame_len(input) {
            Ok(len) => len,
            Err(_) => Some(input.len()),
        },
        _ => input.iter().position(|&b| b == b'\n').map(|at| at + 1),
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
    /// CLIENT TRACKING: the client's mode, inboxes and mailbox (see `tracking.rs`).
    tracking: Tracking,
    /// A request that must go over the client's own connections, read after requests sent
    /// over shared ones in the same batch: it is routed in the next batch, once those are
    /// answered, so the client's order holds across the two.
    deferred: Option<flotilla_resp::Request>,
    closing: bool,
    /// Most requests the next batch routes (see [`next_batch_size`]).
    batch_size: usize,
    stats: EndpointStats,
    /// Keeps the client in the endpoint's directory (CLIENT LIST) while the session lives.
    listed: crate::directory::Listed,
    /// MONITOR's connections to every shard, once the client ran it.
    monitors: crate::monitor::Monitors,
    /// The owner's requests (detach, close at a boundary), heard where the session waits.
    control: SessionControl,
}

/// What the session's loop does after a turn.
enum Turn {
    /// Take another turn at once.
    Again,
    /// Wait for the client's next bytes, then take another turn.
    WaitClient,
    /// What the batch or boundary decided.
    Over(Step),
}

/// What the session does after a batch or at a boundary.
enum Step {
    /// Go on serving.
    Serve,
    /// The session is over.
    End(Ended),
    /// Hand the session over with this state.
    Detach(Box<SessionState>),
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
        control: SessionControl,
    ) -> Self {
        let client = ClientStream::Plain(stream);
        Session::with_client(client, id, topology_rx, options, stats, shared, control)
    }

    /// A session for an accepted client connection, plaintext or TLS.
    pub(crate) fn with_client(
        stream: ClientStream,
        id: u64,
        topology_rx: watch::Receiver<Topology>,
        options: ProxyOptions,
        stats: EndpointStats,
        shared: Option<SharedPool>,
        control: SessionControl,
    ) -> Self {
        let view = TopologyView::new(topology_rx);
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let peer = stream.tcp().peer_addr().unwrap_or(unknown);
        let local = stream.tcp().local_addr().unwrap_or(unknown);
        let _ = stream.tcp().set_nodelay(true);
        let shard_count = view.current.shard_count();
        let state = ClientState::new(id, peer, local, view.current.password());
        let listed = stats.directory().enter(id, state.directory_entry());
        let mut client = ClientIo::new(stream);
        client.bound(view.current.limits(), state.authenticated);
        Session {
            client,
            state,
            links: ShardLinks::new(shard_count, shared),
            replies: ReplyQueue::default(),
            hold: HoldGate::new(&options),
            resend: ResendPolicy::new(shard_count, options.hold_timeout),
            tx: TxState::default(),
            subs: Subscriptions::default(),
            tracking: Tracking::new(id, local),
            deferred: None,
            closing: false,
            batch_size: FIRST_BATCH,
            stats,
            listed,
            monitors: crate::monitor::Monitors::default(),
            view,
            control,
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.state.peer
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

    /// Serves the client until it disconnects, sends QUIT, or sends malformed input, or until
    /// the endpoint's owner has it detach or close at a command boundary.
    ///
    /// A subscribed client is disconnected when the primary of a shard it subscribed on moves
    /// (or its subscriber connection breaks): its subscriptions live on the old engine, and
    /// clients resubscribe when they reconnect, so closing is the one signal every client
    /// library acts on.
    pub fn run(self) -> impl std::future::Future<Output = std::io::Result<Ended>> + Send {
        // Boxed once: the task holds a pointer to the session, not (in unoptimized builds)
        // copies of it.
        let mut session = Box::new(self);
        async move {
            match session.serve().await? {
                Ok(ended) => Ok(ended),
                Err(state) => session.detach(*state),
            }
        }
    }

    /// The loop of [`Session::run`]: how the session ended, or the state to detach with.
    async fn serve(&mut self) -> std::io::Result<Result<Ended, Box<SessionState>>> {
        if !self.replies.is_empty() {
            // Adopted while blocked: the blocked request's reply comes first.
            match Box::pin(self.answer_batch(Instant::now())).await? {
                Step::Serve => {}
                Step::End(ended) => return Ok(Ok(ended)),
                Step::Detach(state) => return Ok(Err(state)),
            }
        }
        // Everything but the wait for the client's next bytes runs in a boxed future: the
        // session's task then holds only the state of that wait while the client is idle,
        // and an idle connection costs a few KB less.
        loop {
            match Box::pin(self.turn()).await? {
                Turn::Again => {}
                Turn::WaitClient => {
                    if !self.wait_client().await? {
                        return Ok(Ok(Ended::Client));
                    }
                }
                Turn::Over(Step::End(ended)) => return Ok(Ok(ended)),
                Turn::Over(Step::Detach(state)) => return Ok(Err(state)),
                Turn::Over(Step::Serve) => {}
            }
        }
    }

    /// One turn of the session's loop: a batch, or a wait other than for the client's next
    /// bytes (a hold's release, a subscriber's messages).
    async fn turn(&mut self) -> std::io::Result<Turn> {
        self.refresh_topology();
        if let Some(shard) = self.subs.moved(&self.view.current) {
            tracing::debug!(
                shard = self.view.current.shard_uid(shard),
                "closing a subscribed client: its shard's primary moved or its subscriber connection broke"
            );
            let _ = self.client.stream.shutdown().await;
            return Ok(Turn::Over(Step::End(Ended::Client)));
        }
        self.drain_tracking().await?;
        let started = Instant::now();
        self.client.batch_bytes = 0;
        let routed = self.route_batch().await;
        if routed > 0 || self.closing {
            self.client.make_room();
            let answered = self.answer_batch(started).await?;
            self.client.last_batch_bytes = self.client.batch_bytes;
            self.batch_size = next_batch_size(self.batch_size, routed, self.client.batch_bytes);
            return Ok(match answered {
                Step::Serve => Turn::Again,
                over => Turn::Over(over),
            });
        }
        // Every request read so far is answered: a command boundary, unless a request is
        // parked (below) or half decoded. The owner's request to detach or close is carried
        // out here.
        match self.at_boundary().await {
            Step::Serve => {}
            over => return Ok(Turn::Over(over)),
        }
        if let Some(shard) = self.hold.parked_shard() {
            if !self.wait_for_release(shard).await? {
                return Ok(Turn::Over(Step::End(Ended::Client)));
            }
            return Ok(Turn::Again);
        }
        if self.monitors.active() {
            if !self.wait_monitoring().await? {
                return Ok(Turn::Over(Step::End(Ended::Client)));
            }
            return Ok(Turn::Again);
        }
        if self.subs.is_open() {
            if !self.wait_subscribed().await? {
                return Ok(Turn::Over(Step::End(Ended::Client)));
            }
            return Ok(Turn::Again);
        }
        Ok(Turn::WaitClient)
    }

    /// Sends the batch routed, writes its replies, and says what comes next: the client is
    /// closed after QUIT, and a client whose only outstanding request blocks is handed over
    /// if the owner asked for it meanwhile.
    async fn answer_batch(&mut self, started: Instant) -> std::io::Result<Step> {
        let interrupted = self.send_batch(true).await;
        self.subs.prune();
        self.client.write_output().await?;
        self.replies.finish_batch(started.elapsed(), &self.stats);
        if let Some(blocked) = interrupted {
            if let Some(state) = self.capture_blocked(&blocked) {
                self.replies.push(blocked);
                return Ok(Step::Detach(Box::new(state)));
            }
            self.replies.push(blocked);
            self.resolve_replies(false).await;
            self.client.write_output().await?;
            self.replies.finish_batch(started.elapsed(), &self.stats);
        }
        if self.closing {
            self.tracking.leave();
            let _ = self.client.stream.shutdown().await;
            return Ok(Step::End(Ended::Client));
        }
        Ok(Step::Serve)
    }

    /// At a command boundary: carries out the owner's request, if any and if the session can.
    async fn at_boundary(&mut self) -> Step {
        if !self.control.stopping() {
            return Step::Serve;
        }
        // A TLS session cannot leave the process, nor can a tracking client's inboxes (see
        // `tracking.rs`) or a monitoring one's MONITOR connections: it is closed at a boundary
        // instead.
        if self.control.wants_detach()
            && !self.client.stream.is_tls()
            && !self.tracking.pins()
            && !self.monitors.active()
        {
            return self
                .capture()
                .map_or(Step::Serve, |state| Step::Detach(Box::new(state)));
        }
        if self.is_between_replies() {
            self.control.closing_at_boundary();
            let _ = self.client.stream.shutdown().await;
            return Step::End(Ended::Closed);
        }
        Step::Serve
    }

    /// Waits for the client's next bytes, or for the owner's next request; `false` when the
    /// client is gone or another client killed it (CLIENT KILL).
    async fn wait_client(&mut self) -> std::io::Result<bool> {
        self.client.release_idle_buffers();
        let idle = self.view.current.limits().client_timeout;
        let timeout = Duration::from_secs(u64::from(idle));
        tokio::select! {
            biased;
            () = self.control.listen() => Ok(true),
            () = self.listed.killed() => Ok(false),
            read = self.client.read() => read,
            event = self.tracking.next_event() => {
                self.on_tracking_event(event);
                self.client.write_output().await?;
                Ok(true)
            }
            () = tokio::time::sleep(timeout), if idle > 0 => {
                tracing::debug!(seconds = idle, "closing an idle client (client_timeout)");
                Ok(false)
            }
        }
    }

    /// Waits for the client's next bytes while passing MONITOR's lines on; `false` when the
    /// client is gone or a shard's MONITOR connection broke (the client is closed, as when a
    /// subscriber connection breaks).
    async fn wait_monitoring(&mut self) -> std::io::Result<bool> {
        tokio::select! {
            () = self.control.listen() => Ok(true),
            () = self.listed.killed() => Ok(false),
            read = self.client.read() => read,
            line = self.monitors.next_line() => match line {
                Ok(value) => {
                    value.encode_as(&mut self.client.output, self.state.protocol);
                    self.client.write_output().await?;
                    Ok(true)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "MONITOR connection lost; closing the client");
                    Ok(false)
                }
            },
        }
    }

    /// Waits for the client's next bytes while passing published messages on, and notices a
    /// new topology; `false` when the client or a subscriber connection is gone.
    async fn wait_subscribed(&mut self) -> std::io::Result<bool> {
        let open = self.view.is_open();
        tokio::select! {
            () = self.control.listen() => Ok(true),
            () = self.listed.killed() => Ok(false),
            read = self.client.read() => read,
            event = self.tracking.next_event() => {
                self.on_tracking_event(event);
                self.client.write_output().await?;
                Ok(true)
            }
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

    /// Decodes and routes the requests already received, up to the batch size (at most
    /// [`MAX_BATCH`]).
    /// Stops at a request for a held shard, which is parked (see [`Session::wait_for_release`]).
    async fn route_batch(&mut self) -> usize {
        let mut routed = 0;
        let whole = self.control.stopping();
        self.links.start_batch();
        while routed < self.batch_size && !self.closing {
            let request = match self.hold.take_parked().or_else(|| self.deferred.take()) {
                Some(request) => request,
                None => match self.next_request(whole) {
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
                    match self.crdt_screen(&request, &decision) {
                        CrdtStep::Pass => {}
                        CrdtStep::Answered => {
                            routed += 1;
                            continue;
                        }
                        CrdtStep::Run(crdt) => {
                            // Run at the start of a batch only, once every earlier request of
                            // the client is answered, and before any later one is sent.
                            if routed > 0 {
                                self.deferred = Some(request);
                                break;
                            }
                            self.run_crdt(crdt, &request, &decision).await;
                            routed += 1;
                            continue;
                        }
                    }
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

    /// The client's next request, decoded within the bounds its authentication and the
    /// database's limits set now.
    fn next_request(&mut self, whole: bool) -> Result<Option<Request>, ProtocolError> {
        self.client
            .bound(self.view.current.limits(), self.state.authenticated);
        self.client.next_request(whole)
    }

    /// Flushes every shard's part of the batch, then resolves the replies in order (see
    /// [`Session::resolve_replies`]).
    async fn send_batch(&mut self, may_detach: bool) -> Option<Pending> {
        self.links.flush().await;
        self.subs.flush().await;
        self.resend.start_batch();
        self.resolve_replies(may_detach).await
    }

    /// Resolves the queued replies in order into the client's output. With `may_detach`, a
    /// blocking request left last is given back unanswered if the owner asks the session to
    /// detach while it waits (see [`ReplyQueue::resolve_all`]).
    async fn resolve_replies(&mut self, may_detach: bool) -> Option<Pending> {
        let mut resolver = Resolver {
            links: &mut self.links,
            resend: &mut self.resend,
            subs: &mut self.subs,
            topology: &self.view.rx,
            client: &mut self.client,
            protocol: self.state.protocol,
            closing: &mut self.closing,
            control: may_detach.then_some(&mut self.control),
        };
        self.replies.resolve_all(&mut resolver).await
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
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::control::Signal;
    use crate::handover::{BlockedState, DetachedSession, PinnedPurpose};

    /// A session over a real loopback connection whose one shard is never reached (the
    /// requests below are all answered by the proxy), and the client's end.
    async fn session(password: Option<&str>) -> (Session, TcpStream) {
        let shard = SocketAddr::from(([127, 0, 0, 1], 1));
        session_with_shard(password, shard).await
    }

    /// [`session`] with its one shard at `shard`.
    async fn session_with_shard(password: Option<&str>, shard: SocketAddr) -> (Session, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let session = Session::new(
            stream,
            42,
            topology_rx(password, shard),
            ProxyOptions::default(),
            EndpointStats::new(),
            Some(SharedPool::default()),
            SessionControl::default(),
        );
        (session, client)
    }

    /// [`session`] whose one shard is a listener the test reads and writes as the shard's end
    /// of the session's connections.
    async fn session_with_listening_shard() -> (Session, TcpStream, TcpListener) {
        let shard = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (session, client) = session_with_shard(None, shard.local_addr().unwrap()).await;
        (session, client, shard)
    }

    /// A one-shard topology, as an endpoint publishes it (the sender is dropped: it never
    /// changes).
    fn topology_rx(password: Option<&str>, shard: SocketAddr) -> watch::Receiver<Topology> {
        let topology = Topology::even(password.map(str::to_owned), "", vec![shard]).unwrap();
        watch::channel(topology).1
    }

    /// Gives `session` a signal channel and asks it to detach; returns the signal sender and
    /// where the detached session arrives.
    fn ask_detach(
        session: &mut Session,
    ) -> (
        mpsc::UnboundedSender<Signal>,
        mpsc::UnboundedReceiver<DetachedSession>,
    ) {
        let (signals, rx) = mpsc::unbounded_channel();
        session.control = SessionControl::new(rx, Default::default());
        let (to, detached) = mpsc::unbounded_channel();
        session.control.note(Signal::Detach(to));
        (signals, detached)
    }

    /// `detached` resumed over the same one-shard topology, as another endpoint would.
    fn resume(detached: DetachedSession, password: Option<&str>, shard: SocketAddr) -> Session {
        Session::resume(
            detached,
            topology_rx(password, shard),
            ProxyOptions::default(),
            EndpointStats::new(),
            Some(SharedPool::default()),
            SessionControl::default(),
        )
        .unwrap()
    }

    /// Closes the client and checks its resumed session ended for that reason.
    async fn leave(client: TcpStream, served: tokio::task::JoinHandle<std::io::Result<Ended>>) {
        drop(client);
        assert_eq!(served.await.unwrap().unwrap(), Ended::Client);
    }

    /// Reads exactly `expected.len()` bytes from `stream` and compares them.
    async fn expect(stream: &mut TcpStream, expected: &[u8]) {
        let mut got = vec![0; expected.len()];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
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
        session.send_batch(false).await;
        session.client.write_output().await.unwrap();
    }

    #[test]
    fn batches_grow_while_replies_are_small_and_shrink_to_large_ones() {
        let mut size = FIRST_BATCH;
        for _ in 0..10 {
            size = next_batch_size(size, size, size * 10);
        }
        assert_eq!(size, MAX_BATCH);
        assert_eq!(
            next_batch_size(MAX_BATCH, 3, 30),
            MAX_BATCH,
            "a short pipeline"
        );
        // 1,024 replies of 256 KB: the next batch holds 16 of them (4 MB).
        assert_eq!(next_batch_size(MAX_BATCH, MAX_BATCH, MAX_BATCH << 18), 16);
        assert_eq!(next_batch_size(16, 1, 512 << 20), 1, "at least one request");
    }

    #[tokio::test]
    async fn an_unauthenticated_client_is_refused_at_the_header_of_a_huge_bulk() {
        let (mut s, mut client) = session(Some("secret")).await;
        feed(
            &mut s,
            &mut client,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$500000000\r\n",
        )
        .await;
        expect(
            &mut client,
            b"-ERR Protocol error: unauthenticated bulk length\r\n",
        )
        .await;
        assert!(s.closing);
        let (mut s, mut client) = session(Some("secret")).await;
        feed(&mut s, &mut client, b"*11\r\n").await;
        expect(
            &mut client,
            b"-ERR Protocol error: unauthenticated multibulk length\r\n",
        )
        .await;
        // Once authenticated (in the same pipeline), the bounds are lifted.
        let (mut s, mut client) = session(Some("secret")).await;
        let mut wire = b"AUTH secret\r\n*2\r\n$4\r\nECHO\r\n$20000\r\n".to_vec();
        wire.extend_from_slice(&[b'x'; 20000]);
        wire.extend_from_slice(b"\r\n");
        feed(&mut s, &mut client, &wire).await;
        let mut reply = b"+OK\r\n$20000\r\n".to_vec();
        reply.extend_from_slice(&[b'x'; 20000]);
        reply.extend_from_slice(b"\r\n");
        expect(&mut client, &reply).await;
        assert!(!s.closing);
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

    /// A shard that refuses connections (still starting, or its engine died) holds the
    /// client's request, which is sent once the shard answers, within the hold; past the hold
    /// the client gets the shard's error, which says the command was not executed.
    #[tokio::test]
    async fn a_request_for_a_shard_that_refuses_connections_waits_for_it() {
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shard = free.local_addr().unwrap();
        drop(free);
        let (mut session, mut client) = session_with_shard(None, shard).await;
        let hello = b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n";
        let engine = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let listener = TcpListener::bind(shard).await.unwrap();
            // First an engine that is a replica (restarted after a failover the endpoint has
            // not heard of yet): nothing is sent to it.
            let (mut replica, _) = listener.accept().await.unwrap();
            expect(&mut replica, hello).await;
            replica
                .write_all(b"*2\r\n$4\r\nrole\r\n$7\r\nreplica\r\n")
                .await
                .unwrap();
            let (mut engine, _) = listener.accept().await.unwrap();
            expect(&mut engine, hello).await;
            engine
                .write_all(b"*2\r\n$4\r\nrole\r\n$6\r\nmaster\r\n")
                .await
                .unwrap();
            expect(&mut engine, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n").await;
            engine.write_all(b"+OK\r\n").await.unwrap();
            (replica, engine)
        };
        let started = Instant::now();
        let (_, _engine) = tokio::join!(feed(&mut session, &mut client, b"SET k v\r\n"), engine);
        expect(&mut client, b"+OK\r\n").await;
        assert!(started.elapsed() >= Duration::from_millis(300));

        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shard = free.local_addr().unwrap();
        drop(free);
        let (mut session, mut client) = session_with_shard(None, shard).await;
        session.resend = ResendPolicy::new(1, Duration::from_millis(300));
        feed(&mut session, &mut client, b"SET k v\r\n").await;
        let mut reply = vec![0; 256];
        let n = client.read(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
        assert!(
            reply.starts_with("-ERR shard 0 at ") && reply.contains("the command was not executed"),
            "{reply}"
        );
        // The hold was waited out: the next request fails at once.
        let started = Instant::now();
        feed(&mut session, &mut client, b"GET k\r\n").await;
        let n = client.read(&mut vec![0; 256]).await.unwrap();
        assert!(n > 0 && started.elapsed() < Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_stopping_session_leaves_a_request_not_whole_undecoded() {
        let (mut session, mut client) = session(None).await;
        feed(&mut session, &mut client, b"*2\r\n$4\r\nECHO\r\n").await;
        assert!(session.capture().is_none(), "a request is half decoded");
        let _owner = ask_detach(&mut session);
        feed(
            &mut session,
            &mut client,
            b"$2\r\nhi\r\nECHO yo\r\n*1\r\n$4\r\nPI",
        )
        .await;
        expect(&mut client, b"$2\r\nhi\r\n$2\r\nyo\r\n").await;
        let state = session.capture().expect("at a boundary");
        assert_eq!(state.unread, b"*1\r\n$4\r\nPI".to_vec());
    }

    #[tokio::test]
    async fn a_detached_session_resumes_with_its_state_on_the_same_connection() {
        let (mut session, mut client) = session(Some("secret")).await;
        feed(
            &mut session,
            &mut client,
            b"HELLO 3 AUTH default secret SETNAME app\r\nMULTI\r\nSET k v\r\nPIN",
        )
        .await;
        let mut hello = vec![0; 4096];
        let _ = client.read(&mut hello).await.unwrap();
        let (_signals, mut owner) = ask_detach(&mut session);
        let state = session.capture().expect("at a boundary");
        assert_eq!(session.detach(state.clone()).unwrap(), Ended::Detached);
        let detached = owner.recv().await.expect("handed over");
        assert_eq!(
            detached.client.peer_addr().unwrap(),
            client.local_addr().unwrap()
        );
        assert!(detached.engines.is_empty());

        let shard = SocketAddr::from(([127, 0, 0, 1], 1));
        let resumed = resume(detached, Some("secret"), shard);
        assert_eq!(resumed.capture(), Some(state));
        let served = tokio::spawn(resumed.run());
        client
            .write_all(b"G\r\nDISCARD\r\nCLIENT GETNAME\r\nCLIENT ID\r\n")
            .await
            .unwrap();
        expect(&mut client, b"+QUEUED\r\n+OK\r\n$3\r\napp\r\n:42\r\n").await;
        leave(client, served).await;
    }

    #[tokio::test]
    async fn a_client_blocked_on_its_own_connection_detaches_with_it() {
        // A listener standing in for the shard's socket: it reads the request and writes the
        // reply in two parts, around the handover.
        let (mut session, mut client, shard) = session_with_listening_shard().await;
        let shard_addr = shard.local_addr().unwrap();
        let (signals, rx) = mpsc::unbounded_channel();
        session.control = SessionControl::new(rx, Default::default());
        client.write_all(b"BLPOP q 0\r\n").await.unwrap();
        session.client.read().await.unwrap();
        assert_eq!(session.route_batch().await, 1);
        let reply = b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n";
        let (to, mut owner) = mpsc::unbounded_channel();
        let engine = async {
            let (mut engine, _) = shard.accept().await.unwrap();
            expect(&mut engine, b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n").await;
            engine.write_all(&reply[..6]).await.unwrap();
            signals.send(Signal::Detach(to)).unwrap();
            engine
        };
        let (given_back, mut engine) = tokio::join!(session.send_batch(true), engine);
        let blocked = given_back.expect("handed back unanswered");
        let state = session
            .capture_blocked(&blocked)
            .expect("may move while blocked");
        assert_eq!(
            state.blocked,
            Some(BlockedState {
                shard: 0,
                request: vec![b"BLPOP".to_vec(), b"q".to_vec(), b"0".to_vec()],
                write: true,
            })
        );
        assert_eq!(state.pinned.len(), 1);
        assert_eq!(state.pinned[0].purpose, PinnedPurpose::Blocked);
        assert!(reply.starts_with(&state.pinned[0].buffered));
        assert!(!state.shared_connections);
        session.replies.push(blocked);
        assert_eq!(session.detach(state).unwrap(), Ended::Detached);

        let detached = owner.recv().await.expect("handed over");
        let resumed = resume(detached, None, shard_addr);
        let served = tokio::spawn(resumed.run());
        engine.write_all(&reply[6..]).await.unwrap();
        expect(&mut client, reply).await;
        client.write_all(b"ECHO yo\r\n").await.unwrap();
        expect(&mut client, b"$2\r\nyo\r\n").await;
        leave(client, served).await;
    }

    #[tokio::test]
    async fn a_subscriber_moves_with_the_bytes_read_from_its_connection() {
        // A listener standing in for the shard's socket: it confirms the SUBSCRIBE and sends
        // a message in two parts, around the handover.
        let (mut session, mut client, shard) = session_with_listening_shard().await;
        let shard_addr = shard.local_addr().unwrap();
        let confirmation = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        let engine = async {
            let (mut engine, _) = shard.accept().await.unwrap();
            expect(&mut engine, b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n").await;
            let mut first = confirmation.to_vec();
            first.extend_from_slice(&message[..10]);
            engine.write_all(&first).await.unwrap();
            engine
        };
        let (_, mut engine) =
            tokio::join!(feed(&mut session, &mut client, b"SUBSCRIBE ch\r\n"), engine);
        expect(&mut client, confirmation).await;

        let (_signals, mut owner) = ask_detach(&mut session);
        let state = session.capture().expect("at a boundary");
        assert_eq!(state.subscriptions.len(), 1);
        assert_eq!(state.subscriptions[0].channels, vec![b"ch".to_vec()]);
        assert_eq!(state.pinned.len(), 1);
        assert_eq!(state.pinned[0].purpose, PinnedPurpose::Subscriber);
        let buffered = state.pinned[0].buffered.clone();
        assert!(message.starts_with(&buffered), "{buffered:?}");
        assert_eq!(session.detach(state).unwrap(), Ended::Detached);

        let resumed = resume(owner.recv().await.expect("handed over"), None, shard_addr);
        let served = tokio::spawn(resumed.run());
        engine.write_all(&message[10..]).await.unwrap();
        expect(&mut client, message).await;
        client.write_all(b"PING\r\n").await.unwrap();
        expect(&mut client, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n").await;
        leave(client, served).await;
    }
}
