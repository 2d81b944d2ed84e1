//! One client connection: reads a batch of pipelined requests, routes each one, writes every
//! shard's part of the batch in one go, then reads the shards' replies back in the client's
//! order and writes them to the client in one go.
//!
//! Ordering rests on one invariant: [`Pending`] entries are pushed in the same order their
//! requests are appended to the shard connections, and each shard answers in order, so
//! resolving the entries front to back reads every shard's replies in sequence. Requests are
//! all sent before any reply is awaited, so a batch touching several shards costs one round
//! trip to the slowest of them, not one per command.
//!
//! Switchovers: a request for a shard the topology holds is parked with everything the client
//! sent after it (the client's order is kept across shards) until a topology releases the
//! shard or the hold times out; on timeout those requests are answered `-TRYAGAIN` without
//! being sent. A write the old primary refuses with `-READONLY` (fenced and demoted, so not
//! executed), or a blocked write it gives up with `-UNBLOCKED` when demoted, is resent to the
//! shard's next primary once the topology names one; so is a transaction it refused.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use flotilla_resp::{Protocol, Request, RequestDecoder, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{ClientState, LocalOutcome};
use crate::command::{LocalCommand, Merge, PubSubKind, TxStep};
use crate::pubsub::{self, Frame, SubKind, Subscriber, Subscriptions};
use crate::route::{route, Decision, PubSubTarget, Route, ScanStep, Split};
use crate::scan;
use crate::server::ProxyOptions;
use crate::shard::{ShardConn, ShardError};
use crate::shared::{Conn, SharedPool};
use crate::slot::ShardIndex;
use crate::stats::{BatchStats, EndpointStats, Outcome};
use crate::topology::Topology;

/// Most requests routed before the batch is sent; bounds the memory one pipeline can pin.
const MAX_BATCH: usize = 1024;

/// Where one reply comes from.
#[derive(Debug)]
enum Source {
    /// The next reply of this shard's connection.
    Shard(usize),
    /// The next reply of this shard's connection to a write, resent to the shard's next
    /// primary if this one refuses it with `-READONLY`.
    Write(usize, Request),
    /// The next reply of this shard's connection to a read, sent again to the shard's next
    /// primary if a write before it in the batch went there (see [`Session::moved`]).
    Read(usize, Request),
    /// The request never reached the shard.
    Failed(ShardError),
}

/// How the replies of a multi-shard request combine.
#[derive(Debug)]
enum Combine {
    /// A split request (MGET, MSET, DEL...).
    Split(Split),
    /// The same request sent to every shard (DBSIZE, KEYS, FLUSHALL...).
    Merge(Merge),
}

/// One client reply still to be written, in order.
#[derive(Debug)]
enum Pending {
    /// Known already (local answers, refusals).
    Ready(Value, Protocol),
    /// Several frames answering one request, known already (unsubscribing from nothing).
    Frames(Vec<Value>, Protocol),
    /// One shard's reply, as is.
    Forward(Source, Protocol),
    /// Several shards' replies, combined.
    Combine(Vec<Source>, Combine, Protocol),
    /// A SCAN reply whose cursor is re-encoded for the client.
    Scan(Source, ShardIndex, u16, Protocol),
    /// A reply the client never asked for (HELLO to a shard, an offset marker).
    Discard(Source),
    /// A transaction sent as MULTI, its queued requests and EXEC on shard connection `index`:
    /// only EXEC's reply goes to the client. One that a demoted primary refused (`-READONLY`
    /// while queueing, or `-EXECABORT` for `READONLY`: nothing ran) is sent again, whole, to
    /// the shard's next primary; a watched one is answered as aborted (null), since its
    /// watch does not carry over.
    Exec {
        index: usize,
        shard: ShardIndex,
        queued: Vec<Request>,
        watched: bool,
        protocol: Protocol,
    },
    /// The confirmations of a (un)subscribe request from a shard's subscriber connection,
    /// with the messages published before them; `forward: false` drops them all (RESET).
    PubSub {
        shard: usize,
        replies: usize,
        protocol: Protocol,
        forward: bool,
    },
}

/// A MULTI in progress: requests are queued here and sent with EXEC.
#[derive(Debug, Default)]
struct Transaction {
    slot: Option<u16>,
    queued: Vec<Request>,
    aborted: bool,
}

/// Keys watched on one shard connection.
#[derive(Debug, Clone, Copy)]
struct Watch {
    slot: u16,
    shard: usize,
    generation: u64,
}

/// The state of one client connection.
pub(crate) struct Session {
    stream: TcpStream,
    input: BytesMut,
    output: BytesMut,
    decoder: RequestDecoder,
    state: ClientState,
    topology_rx: watch::Receiver<Topology>,
    topology: Topology,
    shards: Vec<Option<Conn>>,
    /// The endpoint's shared shard connections, while this client's commands may use them.
    shared: Option<SharedPool>,
    /// Whether this batch sent anything over a shared connection.
    sent_shared: bool,
    /// Whether this client ever sent anything over a shared connection.
    used_shared: bool,
    /// A request that must go over the client's own connections, read after requests sent
    /// over shared ones in the same batch: it is routed in the next batch, once those are
    /// answered, so the client's order holds across the two.
    deferred: Option<Request>,
    generation: u64,
    pending: Vec<Pending>,
    tx: Option<Transaction>,
    watch: Option<Watch>,
    closing: bool,
    options: ProxyOptions,
    /// A request for a held shard, waiting for the release with everything read after it.
    parked: Option<(Request, ShardIndex)>,
    /// Held shards whose hold this client waited out: their requests get `-TRYAGAIN` at once
    /// until the next topology arrives.
    expired: Vec<ShardIndex>,
    /// Connections to shards' new primaries opened to resend refused writes mid-batch; they
    /// replace the old connections once the batch is answered.
    retries: Vec<Option<ShardConn>>,
    /// Shards (by index) whose requests of this batch were resent to a new primary: the reads
    /// after them in the batch are answered by the new primary too, so a pipelined `SET k v;
    /// GET k` split by a switchover reads `v`, not the demoted primary's older value.
    moved: Vec<bool>,
    /// False once the topology sender is gone (no release can come).
    topology_open: bool,
    /// The client's subscriptions and their engine connections.
    subs: Subscriptions,
    /// The endpoint's counters, and this batch's share of them.
    stats: EndpointStats,
    batch: BatchStats,
}

impl Session {
    /// A session for an accepted client connection.
    pub fn new(
        stream: TcpStream,
        id: u64,
        mut topology_rx: watch::Receiver<Topology>,
        options: ProxyOptions,
        stats: EndpointStats,
        shared: Option<SharedPool>,
    ) -> Self {
        let topology = topology_rx.borrow_and_update().clone();
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let peer = stream.peer_addr().unwrap_or(unknown);
        let local = stream.local_addr().unwrap_or(unknown);
        let _ = stream.set_nodelay(true);
        let shard_count = usize::from(topology.shard_count());
        Session {
            stream,
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::with_capacity(16 * 1024),
            decoder: RequestDecoder::default(),
            state: ClientState::new(id, peer, local, topology.password()),
            topology_rx,
            topology,
            shards: (0..shard_count).map(|_| None).collect(),
            shared,
            sent_shared: false,
            used_shared: false,
            deferred: None,
            generation: 0,
            pending: Vec::new(),
            tx: None,
            watch: None,
            closing: false,
            options,
            parked: None,
            expired: Vec::new(),
            retries: (0..shard_count).map(|_| None).collect(),
            moved: vec![false; shard_count],
            topology_open: true,
            subs: Subscriptions::default(),
            stats,
            batch: BatchStats::default(),
        }
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
            if let Some(shard) = self.subs.moved(&self.topology) {
                tracing::debug!(
                    client = self.state.id,
                    shard = shard.0,
                    "closing a subscribed client: its shard's primary moved or its subscriber connection broke"
                );
                let _ = self.stream.shutdown().await;
                return Ok(());
            }
            let started = Instant::now();
            let routed = self.route_batch().await;
            if routed > 0 || self.closing {
                self.send_batch().await;
                self.subs.prune();
                self.stream.write_all(&self.output).await?;
                self.output.clear();
                self.batch.finish(started.elapsed(), &self.stats);
                if self.closing {
                    let _ = self.stream.shutdown().await;
                    return Ok(());
                }
                continue;
            }
            if let Some((_, shard)) = &self.parked {
                let shard = *shard;
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
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Ok(());
            }
        }
    }

    /// Waits for the client's next bytes while passing published messages on, and notices a
    /// new topology; `false` when the client or a subscriber connection is gone.
    async fn wait_subscribed(&mut self) -> std::io::Result<bool> {
        tokio::select! {
            read = self.stream.read_buf(&mut self.input) => Ok(read? > 0),
            (shard, frame) = self.subs.next_frame() => match frame {
                Ok(mut value) => {
                    self.subs.pass(shard, &mut value, self.state.protocol);
                    value.encode_as(&mut self.output, self.state.protocol);
                    self.stream.write_all(&self.output).await?;
                    self.output.clear();
                    Ok(true)
                }
                Err(e) => {
                    tracing::debug!(client = self.state.id, error = %e, "subscriber connection lost; closing the client");
                    Ok(false)
                }
            },
            changed = self.topology_rx.changed(), if self.topology_open => {
                match changed {
                    Ok(()) => self.adopt_topology(),
                    Err(_) => self.topology_open = false,
                }
                Ok(true)
            }
        }
    }

    /// Waits until `shard` is released, the hold times out (its requests are then answered
    /// `-TRYAGAIN`), or the client leaves (`false`). Meanwhile the client's further requests
    /// are read into the input buffer up to the byte bound, then left in its socket.
    async fn wait_for_release(&mut self, shard: ShardIndex) -> std::io::Result<bool> {
        let deadline = Instant::now() + self.options.hold_timeout;
        loop {
            if !self.topology.is_held(shard) {
                return Ok(true);
            }
            let room = self.input.len() < self.options.hold_max_bytes;
            tokio::select! {
                changed = self.topology_rx.changed(), if self.topology_open => match changed {
                    Ok(()) => {
                        self.adopt_topology();
                        self.drop_stale_connections();
                    }
                    Err(_) => self.topology_open = false,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(client = self.state.id, shard = shard.0, "hold timed out");
                    self.expired.push(shard);
                    return Ok(true);
                }
                read = self.stream.read_buf(&mut self.input), if room => {
                    if read? == 0 {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Decodes and routes the requests already received, up to [`MAX_BATCH`].
    /// Stops at a request for a held shard, which is parked (see [`Session::wait_for_release`]).
    async fn route_batch(&mut self) -> usize {
        let mut routed = 0;
        self.sent_shared = false;
        while routed < MAX_BATCH && !self.closing {
            let request = match self.parked.take() {
                Some((request, _)) => request,
                None => match self.deferred.take() {
                    Some(request) => request,
                    None => match self.decoder.decode(&mut self.input) {
                        Ok(Some(request)) => request,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(client = self.state.id, error = %e, "closing client after protocol error");
                            self.ready(Value::error(format!("ERR {e}")));
                            self.closing = true;
                            break;
                        }
                    },
                },
            };
            let decision = route(&request, self.topology.slots());
            if let Some(shard) = self.held_shard(&request, &decision) {
                if !self.expired.contains(&shard) {
                    self.parked = Some((request, shard));
                    break;
                }
                self.ready(hold_expired(shard, self.options.hold_timeout));
            } else if self.must_leave_shared(&decision) {
                if self.sent_shared {
                    self.deferred = Some(request);
                    break;
                }
                self.leave_shared(&request).await;
                self.dispatch(request, decision).await;
            } else {
                self.dispatch(request, decision).await;
            }
            routed += 1;
        }
        routed
    }

    /// Whether a request makes this client leave the shared connections: it goes to a shard
    /// and needs the client's own connection there (see `shared.rs`).
    fn must_leave_shared(&self, decision: &Decision) -> bool {
        let to_shard = !matches!(
            decision.route,
            Route::Local(_)
                | Route::CrossSlot
                | Route::Refused(_)
                | Route::Unknown
                | Route::Invalid(_)
        );
        self.shared.is_some()
            && to_shard
            && (decision.blocking
                || matches!(decision.route, Route::Transaction { .. })
                || self.state.protocol != Protocol::Resp2)
    }

    /// Moves this client to connections of its own for good. Before a WAIT (or WAITAOF),
    /// each shard connection first runs a command that replicates, so the engine's count of
    /// this connection's writes covers those the client made over shared connections.
    async fn leave_shared(&mut self, request: &Request) {
        self.shared = None;
        for slot in &mut self.shards {
            if slot.as_ref().is_some_and(Conn::is_shared) {
                *slot = None;
            }
        }
        if !(self.used_shared && matches!(request.name(), "WAIT" | "WAITAOF")) {
            return;
        }
        for shard in 0..self.topology.shard_count() {
            if let Source::Shard(index) = self.sender(ShardIndex(shard)).await {
                if let Some(conn) = self.shards[index].as_mut() {
                    conn.send(&Request::new(
                        "PUBLISH",
                        [OFFSET_MARKER_CHANNEL.into(), "".into()],
                    ));
                    self.pending.push(Pending::Discard(Source::Shard(index)));
                }
            }
        }
    }

    /// The held shard `request` would be sent to, if any.
    fn held_shard(&self, request: &Request, decision: &Decision) -> Option<ShardIndex> {
        if !self.topology.any_held()
            || (!self.state.authenticated && !allowed_before_auth(request))
            || (self.tx.is_some() && !runs_inside_multi(&decision.route))
            || decision.rejection(request).is_some()
        {
            return None;
        }
        let slots = self.topology.slots();
        let held = |shard: &ShardIndex| self.topology.is_held(*shard);
        match &decision.route {
            Route::Slot(slot) => Some(slots.shard_of(*slot)).filter(held),
            Route::AnyShard => Some(self.any_shard()).filter(held),
            Route::Split(split) => split.parts.iter().map(|p| p.shard).find(held),
            Route::AllShards(_) => (0..self.topology.shard_count()).map(ShardIndex).find(held),
            Route::Scan(step) => Some(step.shard).filter(held),
            Route::PubSub { target, .. } => match target {
                PubSubTarget::Slot(slot) => Some(slots.shard_of(*slot)),
                _ => Some(ShardIndex(0)),
            }
            .filter(held),
            Route::Transaction {
                step: TxStep::Exec, ..
            } => Some(
                self.tx
                    .as_ref()
                    .and_then(|tx| tx.slot)
                    .map_or_else(|| self.any_shard(), |slot| slots.shard_of(slot)),
            )
            .filter(held),
            Route::Transaction {
                step: TxStep::Watch,
                slot: Some(slot),
            } => Some(slots.shard_of(*slot)).filter(held),
            _ => None,
        }
    }

    /// Flushes every shard's part of the batch, then resolves the replies in order.
    async fn send_batch(&mut self) {
        for conn in self.shards.iter_mut().flatten() {
            conn.flush().await;
        }
        self.subs.flush().await;
        self.moved.iter_mut().for_each(|moved| *moved = false);
        for entry in std::mem::take(&mut self.pending) {
            self.resolve(entry).await;
        }
    }

    async fn resolve(&mut self, entry: Pending) {
        let outcome = match entry {
            Pending::Ready(value, protocol) => {
                value.encode_as(&mut self.output, protocol);
                Outcome::of_local(&value)
            }
            Pending::Frames(values, protocol) => {
                for value in &values {
                    value.encode_as(&mut self.output, protocol);
                }
                Outcome::Ok
            }
            Pending::Forward(Source::Shard(index), protocol) => {
                self.forward_raw(index, None, protocol).await
            }
            Pending::Forward(Source::Write(index, request), protocol) => {
                self.forward_raw(index, Some(request), protocol).await
            }
            Pending::Forward(Source::Read(index, request), protocol) => {
                self.forward_read(index, request, protocol).await
            }
            Pending::Forward(source, protocol) => {
                let (value, outcome) = self.take(source).await;
                value.encode_as(&mut self.output, protocol);
                outcome
            }
            Pending::Combine(sources, combine, protocol) => {
                self.resolve_combine(sources, combine, protocol).await
            }
            Pending::Scan(source, shard, count, protocol) => {
                let (value, outcome) = self.take(source).await;
                let value = scan_reply(value, shard, count);
                value.encode_as(&mut self.output, protocol);
                combined_outcome(&value, &[outcome])
            }
            Pending::Discard(source) => {
                self.take(source).await;
                return;
            }
            Pending::Exec {
                index,
                shard,
                queued,
                watched,
                protocol,
            } => {
                let (value, outcome) = self.resolve_exec(index, shard, &queued, watched).await;
                value.encode_as(&mut self.output, protocol);
                outcome
            }
            Pending::PubSub {
                shard,
                replies,
                protocol,
                forward,
            } => {
                let outcome = self.resolve_pubsub(shard, replies, protocol, forward).await;
                if !forward {
                    return;
                }
                outcome
            }
        };
        self.batch.record(outcome);
    }

    /// Copies the next reply of shard connection `index` to the client as the engine encoded
    /// it: the request went out in the client's protocol (see [`Session::sender`]), so no
    /// re-encoding is needed. A write (`request`) refused `-READONLY` is resent as in
    /// [`Session::take`].
    async fn forward_raw(
        &mut self,
        index: usize,
        request: Option<Request>,
        protocol: Protocol,
    ) -> Outcome {
        let Some(conn) = self.shards[index].as_mut() else {
            let (value, outcome) = self.reply_from(index).await;
            value.encode_as(&mut self.output, protocol);
            return outcome;
        };
        let addr = conn.addr();
        let raw = match conn.reply_raw().await {
            Ok(raw) => raw,
            Err(e) => {
                let shard = ShardIndex(index as u16);
                let (value, outcome) = match request {
                    Some(request) if self.unreachable_and_moved(e.outcome(), shard, addr) => {
                        self.resend(shard, &request, addr).await
                    }
                    _ => (e.reply(), e.outcome()),
                };
                value.encode_as(&mut self.output, protocol);
                return outcome;
            }
        };
        if let Some(request) = request.filter(|_| refused_as_replica(&raw)) {
            let refused_by = conn.addr();
            let shard = ShardIndex(index as u16);
            let (value, outcome) = self.resend(shard, &request, refused_by).await;
            value.encode_as(&mut self.output, protocol);
            return outcome;
        }
        self.output.extend_from_slice(&raw);
        match raw.first() {
            Some(b'-' | b'!') => Outcome::Error,
            _ => Outcome::Ok,
        }
    }

    /// [`Session::forward_raw`] for a read: when a write before it in the batch went to the
    /// shard's new primary, the old primary's answer is dropped and the read asked again there.
    async fn forward_read(
        &mut self,
        index: usize,
        request: Request,
        protocol: Protocol,
    ) -> Outcome {
        if !self.moved_in_batch(index) {
            return self.forward_raw(index, None, protocol).await;
        }
        let (value, outcome) = self.take(Source::Read(index, request)).await;
        value.encode_as(&mut self.output, protocol);
        outcome
    }

    async fn resolve_combine(
        &mut self,
        sources: Vec<Source>,
        combine: Combine,
        protocol: Protocol,
    ) -> Outcome {
        let mut replies = Vec::with_capacity(sources.len());
        let mut outcomes = Vec::with_capacity(sources.len());
        for source in sources {
            let (reply, outcome) = self.take(source).await;
            replies.push(reply);
            outcomes.push(outcome);
        }
        let value = match combine {
            Combine::Split(split) => split.merge(replies),
            Combine::Merge(merge) => crate::merge_replies(merge, replies),
        };
        value.encode_as(&mut self.output, protocol);
        combined_outcome(&value, &outcomes)
    }

    /// Reads `replies` confirmations from `shard`'s subscriber, passing on (unless `forward` is
    /// false) the messages read before them. A lost subscriber closes the client.
    async fn resolve_pubsub(
        &mut self,
        shard: usize,
        replies: usize,
        protocol: Protocol,
        forward: bool,
    ) -> Outcome {
        let mut seen = 0;
        while seen < replies {
            let Some(sub) = self.subs.get_mut(shard) else {
                Value::error("ERR internal: subscriber connection missing")
                    .encode_as(&mut self.output, protocol);
                return Outcome::Error;
            };
            let mut value = match sub.conn.reply().await {
                Ok(value) => value,
                Err(e) => {
                    e.reply().encode_as(&mut self.output, protocol);
                    self.closing = true;
                    return e.outcome();
                }
            };
            if self.subs.pass(shard, &mut value, protocol) == Frame::Reply {
                seen += 1;
            }
            if forward {
                value.encode_as(&mut self.output, protocol);
            }
        }
        Outcome::Ok
    }

    /// The next reply from `source` and how its command ended; a failed shard gives an error
    /// that says whether the command may have run.
    async fn take(&mut self, source: Source) -> (Value, Outcome) {
        match source {
            Source::Failed(error) => (error.reply(), error.outcome()),
            Source::Shard(index) => self.reply_from(index).await,
            Source::Read(index, request) => {
                let addr = self.shards[index].as_ref().map(|c| c.addr());
                let (reply, outcome) = self.reply_from(index).await;
                match addr {
                    Some(addr) if self.moved_in_batch(index) => {
                        self.resend(ShardIndex(index as u16), &request, addr).await
                    }
                    _ => (reply, outcome),
                }
            }
            Source::Write(index, request) => {
                let shard = ShardIndex(index as u16);
                let Some(addr) = self.shards[index].as_ref().map(|c| c.addr()) else {
                    return self.reply_from(index).await;
                };
                let (reply, outcome) = self.reply_from(index).await;
                if self.unreachable_and_moved(outcome, shard, addr)
                    || refused_as_replica_reply(&reply)
                {
                    self.resend(shard, &request, addr).await
                } else {
                    (reply, outcome)
                }
            }
        }
    }

    /// A write that could not reach `addr` (so it did not run) while the published topology
    /// already names another primary for `shard`: the session's topology was a moment old (a
    /// switchover, then the old primary's engine stopped), and the write is resent, as after
    /// `-READONLY`.
    fn unreachable_and_moved(&self, outcome: Outcome, shard: ShardIndex, addr: SocketAddr) -> bool {
        outcome == Outcome::NotExecuted && self.primary_moved(shard, addr)
    }

    /// Whether a request of this batch on shard connection `index` was resent to a new primary.
    fn moved_in_batch(&self, index: usize) -> bool {
        self.moved.get(index).copied().unwrap_or(false)
    }

    /// The latest published topology names a primary for `shard` other than `addr`.
    fn primary_moved(&self, shard: ShardIndex, addr: SocketAddr) -> bool {
        self.topology_rx
            .borrow()
            .primary(shard)
            .is_some_and(|primary| primary != addr)
    }

    /// Reads the replies of a transaction sent on shard connection `index` (see
    /// [`Pending::Exec`]) and returns EXEC's, resending the transaction if it was refused.
    async fn resolve_exec(
        &mut self,
        index: usize,
        shard: ShardIndex,
        queued: &[Request],
        watched: bool,
    ) -> (Value, Outcome) {
        let (multi, _) = self.reply_from(index).await;
        let mut refused = false;
        for _ in queued {
            let (reply, _) = self.reply_from(index).await;
            refused |= is_readonly(&reply);
        }
        let (reply, outcome) = self.reply_from(index).await;
        let refused_by = self.shards[index].as_ref().map(|c| c.addr());
        match refused_by {
            Some(refused_by) if !multi.is_error() && (refused || is_exec_readonly(&reply)) => {
                if watched {
                    (null_array(self.state.protocol), Outcome::Ok)
                } else {
                    self.resend_transaction(shard, queued, refused_by).await
                }
            }
            _ => (reply, outcome),
        }
    }

    /// [`Session::resend`] for a whole transaction: MULTI, `queued` and EXEC go to the shard's
    /// next primary; EXEC's reply is returned.
    async fn resend_transaction(
        &mut self,
        shard: ShardIndex,
        queued: &[Request],
        refused_by: SocketAddr,
    ) -> (Value, Outcome) {
        let mut requests = Vec::with_capacity(queued.len() + 2);
        requests.push(Request::new("MULTI", []));
        requests.extend(queued.iter().cloned());
        requests.push(Request::new("EXEC", []));
        self.resend_requests(shard, &requests, refused_by).await
    }

    async fn reply_from(&mut self, index: usize) -> (Value, Outcome) {
        match self.shards[index].as_mut() {
            Some(conn) => match conn.reply().await {
                Ok(reply) => {
                    let outcome = Outcome::of_reply(&reply);
                    (reply, outcome)
                }
                Err(e) => (e.reply(), e.outcome()),
            },
            None => (
                Value::error("ERR internal: shard connection missing"),
                Outcome::NotExecuted,
            ),
        }
    }

    /// Resends a write that the primary at `refused_by` answered `-READONLY` (so it did not
    /// run) to the shard's next primary, once a topology names one, within the hold timeout.
    async fn resend(
        &mut self,
        shard: ShardIndex,
        request: &Request,
        refused_by: SocketAddr,
    ) -> (Value, Outcome) {
        self.resend_requests(shard, std::slice::from_ref(request), refused_by)
            .await
    }

    /// Sends `requests` to the shard's next primary, again to the one after if that one
    /// refuses them as a replica too; returns the last one's reply.
    async fn resend_requests(
        &mut self,
        shard: ShardIndex,
        requests: &[Request],
        refused_by: SocketAddr,
    ) -> (Value, Outcome) {
        let deadline = Instant::now() + self.options.hold_timeout;
        let mut refused_by = refused_by;
        if let Some(moved) = self.moved.get_mut(usize::from(shard.0)) {
            *moved = true;
        }
        loop {
            let Some(topology) = self.next_primary(shard, refused_by, deadline).await else {
                let reply = no_new_primary(shard, refused_by, self.options.hold_timeout);
                return (reply, Outcome::NotExecuted);
            };
            let conn = match self.retry_conn(shard, &topology).await {
                Ok(conn) => conn,
                Err(e) => return (e.reply(), e.outcome()),
            };
            for request in requests {
                conn.send(request);
            }
            conn.flush().await;
            let mut refused = false;
            for _ in 1..requests.len() {
                match conn.reply().await {
                    Ok(reply) => refused |= is_readonly(&reply),
                    Err(e) => return (e.reply(), e.outcome()),
                }
            }
            match conn.reply().await {
                Ok(reply) if refused || refused_as_replica_reply(&reply) => {
                    refused_by = conn.addr()
                }
                Ok(reply) => {
                    let outcome = Outcome::of_reply(&reply);
                    return (reply, outcome);
                }
                Err(e) => return (e.reply(), e.outcome()),
            }
        }
    }

    /// The first topology, by `deadline`, naming a primary for `shard` other than `refused_by`
    /// and not holding it. Reads a copy of the channel: the session adopts it between batches.
    async fn next_primary(
        &self,
        shard: ShardIndex,
        refused_by: SocketAddr,
        deadline: Instant,
    ) -> Option<Topology> {
        let mut rx = self.topology_rx.clone();
        loop {
            {
                let topology = rx.borrow_and_update();
                let moved = topology.primary(shard).is_some_and(|a| a != refused_by);
                if moved && !topology.is_held(shard) {
                    return Some(topology.clone());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// A connection to `shard`'s primary in `topology` for resending writes, reused within the
    /// batch.
    async fn retry_conn(
        &mut self,
        shard: ShardIndex,
        topology: &Topology,
    ) -> Result<&mut ShardConn, ShardError> {
        let index = usize::from(shard.0);
        if self.retries.len() <= index {
            self.retries.resize_with(index + 1, || None);
        }
        let addr = topology.primary(shard).expect("next_primary checked it");
        let reusable = self.retries[index]
            .as_ref()
            .is_some_and(|c| c.addr() == addr && !c.is_broken());
        if !reusable {
            self.generation += 1;
            let password = topology.shard_password();
            let conn = ShardConn::connect(
                shard.0,
                addr,
                password,
                self.state.protocol,
                self.generation,
            )
            .await?;
            self.retries[index] = Some(conn);
        }
        Ok(self.retries[index].as_mut().expect("set above"))
    }

    /// Takes a newly published topology between batches: connections to a shard whose primary
    /// moved are dropped (and reopened to the new primary on next use), broken ones too.
    fn refresh_topology(&mut self) {
        if self.topology_rx.has_changed().unwrap_or(false) {
            self.adopt_topology();
        }
        self.drop_stale_connections();
    }

    /// Makes the latest published topology this session's; expired holds are forgotten.
    fn adopt_topology(&mut self) {
        self.topology = self.topology_rx.borrow_and_update().clone();
        if let Some(pool) = &self.shared {
            pool.retain_primaries(&self.topology);
        }
        self.expired.clear();
        let count = usize::from(self.topology.shard_count());
        self.shards.resize_with(count, || None);
        self.retries.resize_with(count, || None);
        self.moved.resize(count, false);
    }

    /// Drops broken connections and those to a former primary; a connection opened to resend
    /// writes to the current primary takes its place.
    fn drop_stale_connections(&mut self) {
        for (index, slot) in self.shards.iter_mut().enumerate() {
            let primary = self.topology.primary(ShardIndex(index as u16));
            let stale = |broken: bool, addr: SocketAddr| broken || Some(addr) != primary;
            if slot
                .as_ref()
                .is_some_and(|c| stale(c.is_broken(), c.addr()))
            {
                *slot = None;
            }
            let retry = self.retries.get_mut(index).and_then(Option::take);
            if slot.is_none() {
                *slot = retry
                    .filter(|c| !stale(c.is_broken(), c.addr()))
                    .map(Conn::Own);
            }
        }
    }

    fn ready(&mut self, value: Value) {
        self.pending
            .push(Pending::Ready(value, self.state.protocol));
    }

    /// Routes one request: answers it, queues it in a transaction, or sends it to shards.
    async fn dispatch(&mut self, request: Request, decision: Decision) {
        if !self.state.authenticated && !allowed_before_auth(&request) {
            self.ready(Value::error("NOAUTH Authentication required."));
            return;
        }
        if self.resp2_subscribed() && !pubsub::allowed_when_subscribed(request.name()) {
            self.ready(pubsub::refused_when_subscribed(request.name()));
            return;
        }
        if self.tx.is_some() && !runs_inside_multi(&decision.route) {
            self.queue(request, decision);
            return;
        }
        if let Some(rejection) = decision.rejection(&request) {
            self.ready(Value::error(rejection.to_string()));
            return;
        }
        let write = decision.write;
        match decision.route {
            Route::Slot(slot) => {
                let shard = self.topology.slots().shard_of(slot);
                self.forward(shard, request, write).await;
            }
            Route::AnyShard => self.forward(self.any_shard(), request, write).await,
            Route::Split(split) => self.split(split, write).await,
            Route::AllShards(merge) => self.all_shards(merge, &request, write).await,
            Route::Scan(step) => self.scan(step).await,
            Route::PubSub { kind, target } => self.pubsub(kind, target, &request).await,
            Route::Transaction { step, slot } => self.transaction(step, slot, &request).await,
            Route::Local(command) => self.local(command, &request),
            Route::CrossSlot | Route::Refused(_) | Route::Unknown | Route::Invalid(_) => {
                self.ready(Value::error("ERR internal: unrouted request"));
            }
        }
    }

    /// A keyless command's shard: spread over shards by client id.
    fn any_shard(&self) -> ShardIndex {
        let count = u64::from(self.topology.shard_count().max(1));
        ShardIndex((self.state.id % count) as u16)
    }

    /// The connection to `shard`, opened if needed and switched to the client's protocol.
    async fn sender(&mut self, shard: ShardIndex) -> Source {
        let index = usize::from(shard.0);
        let Some(addr) = self.topology.primary(shard) else {
            return Source::Failed(ShardError::Unavailable {
                shard: shard.0,
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                reason: "no such shard".into(),
            });
        };
        let protocol = self.state.protocol;
        if self.shards[index].is_none() {
            let password = self.topology.shard_password().to_owned();
            let conn = match &self.shared {
                Some(pool) if protocol == Protocol::Resp2 => {
                    Conn::Shared(pool.conn(shard.0, addr, &password))
                }
                _ => {
                    self.generation += 1;
                    match ShardConn::connect(shard.0, addr, &password, protocol, self.generation)
                        .await
                    {
                        Ok(conn) => Conn::Own(conn),
                        Err(e) => return Source::Failed(e),
                    }
                }
            };
            self.shards[index] = Some(conn);
        }
        match self.shards[index].as_mut().expect("connected above") {
            Conn::Shared(_) => {
                self.sent_shared = true;
                self.used_shared = true;
            }
            Conn::Own(conn) if conn.protocol() != protocol => {
                conn.send_hello(protocol);
                self.pending.push(Pending::Discard(Source::Shard(index)));
            }
            Conn::Own(_) => {}
        }
        Source::Shard(index)
    }

    /// Appends `request` to `shard`'s pipeline; returns where its reply will come from. A
    /// `write` keeps a copy of the request to resend it if the primary refuses it as READONLY.
    async fn send(&mut self, shard: ShardIndex, request: &Request, write: bool) -> Source {
        let source = self.sender(shard).await;
        let Source::Shard(index) = source else {
            return source;
        };
        if let Some(conn) = self.shards[index].as_mut() {
            conn.send(request);
        }
        if write {
            Source::Write(index, request.clone())
        } else {
            source
        }
    }

    /// [`Session::send`] for a request the session owns: a `write` keeps the request itself
    /// (its arguments are slices of the client's input buffer), so nothing is copied.
    async fn send_owned(&mut self, shard: ShardIndex, request: Request, write: bool) -> Source {
        let source = self.sender(shard).await;
        let Source::Shard(index) = source else {
            return source;
        };
        if let Some(conn) = self.shards[index].as_mut() {
            conn.send(&request);
        }
        if write {
            Source::Write(index, request)
        } else {
            Source::Read(index, request)
        }
    }

    async fn forward(&mut self, shard: ShardIndex, request: Request, write: bool) {
        let source = self.send_owned(shard, request, write).await;
        self.pending
            .push(Pending::Forward(source, self.state.protocol));
    }

    async fn split(&mut self, split: Split, write: bool) {
        let mut sources = Vec::with_capacity(split.parts.len());
        for part in &split.parts {
            sources.push(self.send(part.shard, &part.request, write).await);
        }
        let protocol = self.state.protocol;
        self.pending
            .push(Pending::Combine(sources, Combine::Split(split), protocol));
    }

    async fn all_shards(&mut self, merge: Merge, request: &Request, write: bool) {
        let mut sources = Vec::new();
        for shard in 0..self.topology.shard_count() {
            sources.push(self.send(ShardIndex(shard), request, write).await);
        }
        let protocol = self.state.protocol;
        self.pending
            .push(Pending::Combine(sources, Combine::Merge(merge), protocol));
    }

    async fn scan(&mut self, step: ScanStep) {
        let count = self.topology.shard_count();
        if step.shard.0 >= count {
            self.ready(Value::error("ERR invalid cursor"));
            return;
        }
        let source = self.send(step.shard, &step.request, false).await;
        let protocol = self.state.protocol;
        self.pending
            .push(Pending::Scan(source, step.shard, count, protocol));
    }

    async fn pubsub(&mut self, kind: PubSubKind, target: PubSubTarget, request: &Request) {
        let shard = match target {
            PubSubTarget::Slot(slot) => self.topology.slots().shard_of(slot),
            PubSubTarget::PubSubShard | PubSubTarget::SubscribedShards => ShardIndex(0),
        };
        let Some((sub_kind, _)) = SubKind::of(request.name()) else {
            let source = self.send(shard, request, false).await;
            self.pending
                .push(Pending::Forward(source, self.state.protocol));
            return;
        };
        match (kind, target) {
            (PubSubKind::Subscribe, _) => self.subscribe(shard, sub_kind, request).await,
            (_, PubSubTarget::SubscribedShards) => self.unsubscribe_everywhere(sub_kind, request),
            _ => self.unsubscribe(shard, sub_kind, request),
        }
    }

    /// Whether the client is in RESP2 subscribed mode, where Redis allows only (un)subscribing,
    /// PING, QUIT and RESET.
    fn resp2_subscribed(&self) -> bool {
        self.state.protocol == Protocol::Resp2 && self.subs.active()
    }

    /// Sends a SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE to `shard`'s subscriber connection.
    async fn subscribe(&mut self, shard: ShardIndex, kind: SubKind, request: &Request) {
        if request.args().is_empty() {
            let name = request.name().to_ascii_lowercase();
            self.ready(Value::error(format!(
                "ERR wrong number of arguments for '{name}' command"
            )));
            return;
        }
        let protocol = self.state.protocol;
        let sub = match self.subscriber(shard).await {
            Ok(sub) => sub,
            Err(e) => return self.ready(e.reply()),
        };
        sub.conn.send(request);
        let replies = sub.names.apply(kind, true, request.args());
        self.pending.push(Pending::PubSub {
            shard: usize::from(shard.0),
            replies,
            protocol,
            forward: true,
        });
    }

    /// Sends an unsubscribe request to `shard`'s subscriber, or answers it as Redis would when
    /// nothing of its kind is subscribed there.
    fn unsubscribe(&mut self, shard: ShardIndex, kind: SubKind, request: &Request) {
        let protocol = self.state.protocol;
        let index = usize::from(shard.0);
        if let Some(sub) = self.subs.get_mut(index) {
            sub.conn.send(request);
            let replies = sub.names.apply(kind, false, request.args());
            self.pending.push(Pending::PubSub {
                shard: index,
                replies,
                protocol,
                forward: true,
            });
            return;
        }
        let count = match kind {
            SubKind::ShardChannel => self.subs.total(SubKind::ShardChannel),
            SubKind::Channel | SubKind::Pattern => 0,
        };
        let frames = pubsub::local_unsubscribe(request.name(), request.args(), count, protocol);
        self.pending.push(Pending::Frames(frames, protocol));
    }

    /// SUNSUBSCRIBE without channels: to every shard the client has shard channels on.
    fn unsubscribe_everywhere(&mut self, kind: SubKind, request: &Request) {
        let shards = self.subs.shards_with(kind);
        if shards.is_empty() {
            let protocol = self.state.protocol;
            let frames = pubsub::local_unsubscribe(request.name(), &[], 0, protocol);
            self.pending.push(Pending::Frames(frames, protocol));
        }
        for (shard, _) in shards {
            self.unsubscribe(ShardIndex(shard as u16), kind, request);
        }
    }

    /// `shard`'s subscriber connection, opened on first use in the client's protocol.
    async fn subscriber(&mut self, shard: ShardIndex) -> Result<&mut Subscriber, ShardError> {
        let index = usize::from(shard.0);
        if self.subs.get_mut(index).is_none() {
            let addr = self
                .topology
                .primary(shard)
                .ok_or_else(|| ShardError::Unavailable {
                    shard: shard.0,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    reason: "no such shard".into(),
                })?;
            self.generation += 1;
            let password = self.topology.shard_password().to_owned();
            let protocol = self.state.protocol;
            let conn =
                ShardConn::connect(shard.0, addr, &password, protocol, self.generation).await?;
            self.subs.insert(index, Subscriber::new(conn));
        }
        Ok(self.subs.get_mut(index).expect("opened above"))
    }

    fn local(&mut self, command: LocalCommand, request: &Request) {
        if command == LocalCommand::Ping && self.resp2_subscribed() && request.argc() <= 2 {
            self.ready(pubsub::subscribed_pong(request.arg(1)));
            return;
        }
        let password = self.topology.password().map(str::to_owned);
        match self.state.answer(command, request, password.as_deref()) {
            LocalOutcome::Reply(value) => self.ready(value),
            LocalOutcome::Quit => {
                self.ready(Value::simple("OK"));
                self.closing = true;
            }
            LocalOutcome::Reset => {
                self.tx = None;
                self.unwatch();
                for (shard, replies) in self.subs.reset() {
                    self.pending.push(Pending::PubSub {
                        shard,
                        replies,
                        protocol: self.state.protocol,
                        forward: false,
                    });
                }
                self.state.reset(password.as_deref());
                self.ready(Value::simple("RESET"));
            }
        }
    }

    /// Queues a request inside MULTI, after checking it can run in the pinned slot.
    fn queue(&mut self, request: Request, decision: crate::Decision) {
        let error = match (decision.rejection(&request), &decision.route) {
            (Some(rejection), _) => Some(rejection.to_string()),
            (None, Route::Slot(slot)) => self.pin(*slot),
            (None, Route::AnyShard)
            | (None, Route::Local(LocalCommand::Ping | LocalCommand::Echo))
            | (None, Route::Transaction { .. }) => None,
            (None, _) => Some(format!(
                "ERR {} cannot run inside MULTI through the proxy: a transaction runs on one shard",
                request.name()
            )),
        };
        let tx = self.tx.as_mut().expect("queue is only called inside MULTI");
        match error {
            Some(error) => {
                tx.aborted = true;
                self.ready(Value::error(error));
            }
            None => {
                tx.queued.push(request);
                self.ready(Value::simple("QUEUED"));
            }
        }
    }

    /// Pins the transaction to `slot`, or says why it cannot be.
    fn pin(&mut self, slot: u16) -> Option<String> {
        let tx = self.tx.as_mut()?;
        match tx.slot {
            Some(pinned) if pinned != slot => Some(
                "CROSSSLOT Keys in request don't hash to the same slot (the transaction is pinned to another slot)"
                    .into(),
            ),
            _ => {
                tx.slot = Some(slot);
                None
            }
        }
    }

    async fn transaction(&mut self, step: TxStep, slot: Option<u16>, request: &Request) {
        match step {
            TxStep::Multi => self.multi(),
            TxStep::Exec => self.exec().await,
            TxStep::Discard => self.discard(),
            TxStep::Watch => self.watch(slot, request).await,
            TxStep::Unwatch => {
                self.unwatch();
                self.ready(Value::simple("OK"));
            }
        }
    }

    fn multi(&mut self) {
        if self.tx.is_some() {
            self.ready(Value::error("ERR MULTI calls can not be nested"));
            return;
        }
        self.tx = Some(Transaction {
            slot: self.watch.map(|w| w.slot),
            ..Transaction::default()
        });
        self.ready(Value::simple("OK"));
    }

    fn discard(&mut self) {
        if self.tx.take().is_none() {
            self.ready(Value::error("ERR DISCARD without MULTI"));
            return;
        }
        self.unwatch();
        self.ready(Value::simple("OK"));
    }

    /// Sends MULTI, the queued requests and EXEC to the pinned shard; only EXEC's reply reaches
    /// the client. If the watched shard connection was replaced (a new primary), the watch is
    /// lost, so the transaction is aborted as if a watched key had changed.
    async fn exec(&mut self) {
        let Some(tx) = self.tx.take() else {
            self.ready(Value::error("ERR EXEC without MULTI"));
            return;
        };
        if tx.aborted {
            self.unwatch();
            self.ready(Value::error(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
            return;
        }
        let shard = tx
            .slot
            .map_or_else(|| self.any_shard(), |s| self.topology.slots().shard_of(s));
        let watched = match self.watch.take() {
            Some(watch) if !self.same_connection(watch) || watch.shard != usize::from(shard.0) => {
                self.ready(null_array(self.state.protocol));
                return;
            }
            watch => watch.is_some(),
        };
        let source = self.send(shard, &Request::new("MULTI", []), false).await;
        if let Source::Shard(index) = source {
            let conn = self.shards[index].as_mut().expect("sender connected it");
            for request in &tx.queued {
                conn.send(request);
            }
            conn.send(&Request::new("EXEC", []));
            self.pending.push(Pending::Exec {
                index,
                shard,
                queued: tx.queued,
                watched,
                protocol: self.state.protocol,
            });
        } else {
            self.pending
                .push(Pending::Forward(source, self.state.protocol));
        }
    }

    async fn watch(&mut self, slot: Option<u16>, request: &Request) {
        if self.tx.is_some() {
            self.ready(Value::error("ERR WATCH inside MULTI is not allowed"));
            return;
        }
        let Some(slot) = slot else {
            self.ready(Value::error(
                "ERR wrong number of arguments for 'watch' command",
            ));
            return;
        };
        if self.watch.is_some_and(|w| w.slot != slot) {
            self.ready(Value::error(
                "CROSSSLOT Keys in request don't hash to the same slot (already watching another slot)",
            ));
            return;
        }
        let shard = self.topology.slots().shard_of(slot);
        let source = self.send(shard, request, false).await;
        if let Source::Shard(index) = source {
            let generation = self.shards[index].as_ref().map_or(0, |c| c.generation());
            self.watch = Some(Watch {
                slot,
                shard: index,
                generation,
            });
        }
        self.pending
            .push(Pending::Forward(source, self.state.protocol));
    }

    /// Drops the watch, telling the shard if the watching connection is still the current one.
    fn unwatch(&mut self) {
        let Some(watch) = self.watch.take() else {
            return;
        };
        if self.same_connection(watch) {
            if let Some(conn) = self.shards[watch.shard].as_mut() {
                conn.send(&Request::new("UNWATCH", []));
                self.pending
                    .push(Pending::Discard(Source::Shard(watch.shard)));
            }
        }
    }

    fn same_connection(&self, watch: Watch) -> bool {
        self.shards
            .get(watch.shard)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.generation() == watch.generation && !c.is_broken())
    }
}

/// The channel of the command that makes a client's own shard connection count the writes it
/// made over shared ones before its first WAIT (see [`Session::leave_shared`]); nobody
/// subscribes to it, so publishing there costs one replicated message.
const OFFSET_MARKER_CHANNEL: &str = "__flotilla__:wait-offset";

/// Commands a client may send before authenticating.
fn allowed_before_auth(request: &Request) -> bool {
    matches!(request.name(), "AUTH" | "HELLO" | "QUIT")
}

/// Commands that act immediately inside MULTI instead of being queued.
fn runs_inside_multi(route: &Route) -> bool {
    matches!(
        route,
        Route::Transaction {
            step: TxStep::Multi | TxStep::Exec | TxStep::Discard | TxStep::Watch,
            ..
        } | Route::Local(LocalCommand::Quit | LocalCommand::Reset)
    )
}

/// Whether a shard refused a command because it is a replica: the command did not run.
fn is_readonly(reply: &Value) -> bool {
    match reply {
        Value::Error(text) | Value::BlobError(text) => text.starts_with(b"READONLY"),
        _ => false,
    }
}

/// The text a primary turned replica sends to clients blocked in a write (BLPOP, BLMOVE...):
/// the command was given up without taking anything.
const UNBLOCKED_BY_DEMOTION: &[u8] =
    b"UNBLOCKED force unblock from blocking operation, instance state changed";

/// Whether a blocked write was given up because its shard became a replica.
fn is_unblocked_by_demotion(reply: &Value) -> bool {
    match reply {
        Value::Error(text) | Value::BlobError(text) => text.starts_with(UNBLOCKED_BY_DEMOTION),
        _ => false,
    }
}

/// Whether a shard that had become a replica refused a request: a write (`-READONLY`), a
/// blocked write (`-UNBLOCKED`) or a transaction (`-EXECABORT` for READONLY). Nothing ran.
fn refused_as_replica_reply(reply: &Value) -> bool {
    is_readonly(reply) || is_unblocked_by_demotion(reply) || is_exec_readonly(reply)
}

/// [`is_readonly`] or [`is_unblocked_by_demotion`] for a reply as the engine encoded it.
fn refused_as_replica(raw: &[u8]) -> bool {
    let text = raw.strip_prefix(b"-").unwrap_or_default();
    text.starts_with(b"READONLY") || text.starts_with(UNBLOCKED_BY_DEMOTION)
}

/// Whether EXEC was refused because the shard had become a replica: the transaction did not run.
fn is_exec_readonly(reply: &Value) -> bool {
    match reply {
        Value::Error(text) | Value::BlobError(text) => {
            text.starts_with(b"EXECABORT") && text.windows(8).any(|w| w == b"READONLY")
        }
        _ => false,
    }
}

/// The answer to a request whose shard stayed held past the hold timeout.
fn hold_expired(shard: ShardIndex, timeout: Duration) -> Value {
    Value::error(format!(
        "TRYAGAIN shard {} is held for a switchover for more than {} ms; the command was not executed",
        shard.0,
        timeout.as_millis()
    ))
}

/// The answer to a write refused as READONLY when no new primary was published in time.
fn no_new_primary(shard: ShardIndex, refused_by: SocketAddr, timeout: Duration) -> Value {
    Value::error(format!(
        "TRYAGAIN shard {} at {refused_by} is no longer primary and no new primary was published within {} ms; the command was not executed",
        shard.0,
        timeout.as_millis()
    ))
}

/// How a command whose reply combines several shards' ended: an error reply counts as not
/// executed only if no part of it ran.
fn combined_outcome(reply: &Value, parts: &[Outcome]) -> Outcome {
    if !reply.is_error() {
        Outcome::Ok
    } else if parts.iter().all(|&o| o == Outcome::NotExecuted) {
        Outcome::NotExecuted
    } else {
        Outcome::Error
    }
}

/// The null reply of an aborted EXEC.
fn null_array(protocol: Protocol) -> Value {
    match protocol {
        Protocol::Resp2 => Value::NullArray,
        Protocol::Resp3 => Value::Null,
    }
}

/// A shard's `[cursor, keys]` with the cursor turned into the client's cursor.
fn scan_reply(reply: Value, shard: ShardIndex, count: u16) -> Value {
    let Value::Array(mut items) = reply else {
        return reply;
    };
    let cursor = match items.first() {
        Some(Value::BulkString(raw)) => std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()),
        _ => None,
    };
    let Some(next) = cursor.and_then(|c| scan::next_cursor(shard, c, count)) else {
        return Value::error("ERR unexpected SCAN reply from a shard");
    };
    items[0] = Value::bulk(next.to_string());
    Value::Array(items)
}
