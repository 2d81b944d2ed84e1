//! A client session's links to the shards: which connection carries its requests for each
//! shard (its handle on the endpoint's shared connection while it may use them, or one of its
//! own, opened on first use), the connections opened mid-batch to resend refused writes to a
//! shard's next primary, the generation that tells a shard's connections apart (a WATCH does
//! not survive a reconnect), and their replacement when the topology moves a primary.

use std::net::SocketAddr;

use bytes::Bytes;
use flotilla_resp::{Protocol, Request, Value};

use crate::command::LocalCommand;
use crate::route::{Decision, Route};
use crate::shard::{ShardConn, ShardError};
use crate::shared::{Conn, SharedPool};
use crate::slot::ShardIndex;
use crate::topology::Topology;
use crate::verdict::{Reason, Side, Verdict};

use super::transaction::Watch;
use crate::handover::{protocol_number, PinnedConnection, PinnedPurpose};

/// A shard connection ready to take a request.
pub(super) struct Opened {
    /// The shard's index, which is also its connection's.
    pub index: usize,
    /// Whether a HELLO was appended first (an own connection switched to the client's
    /// protocol): its reply is to be discarded.
    pub hello: bool,
}

/// A reply as the engine encoded it.
pub(super) struct RawReply {
    /// The address of the shard primary that answered (or failed).
    pub addr: SocketAddr,
    /// The reply, or why there is none.
    pub raw: Result<Bytes, ShardError>,
    /// Its verdict.
    pub verdict: Verdict,
}

/// One client session's shard connections.
pub(super) struct ShardLinks {
    /// The connection to each shard's primary, by shard index, once used.
    conns: Vec<Option<Conn>>,
    /// The endpoint's shared shard connections, while this client's commands may use them.
    shared: Option<SharedPool>,
    /// Whether this batch sent anything over a shared connection.
    sent_shared: bool,
    /// Whether this client ever sent anything over a shared connection.
    used_shared: bool,
    /// The generation of the last own connection opened.
    generation: u64,
    /// Connections to shards' new primaries opened to resend refused writes mid-batch; they
    /// replace the old connections once the batch is answered.
    retries: Vec<Option<ShardConn>>,
}

impl ShardLinks {
    /// No connection yet, for a database of `shard_count` shards; `shared` is the endpoint's
    /// pool when the client may share connections.
    pub fn new(shard_count: u16, shared: Option<SharedPool>) -> Self {
        let count = usize::from(shard_count);
        ShardLinks {
            conns: (0..count).map(|_| None).collect(),
            shared,
            sent_shared: false,
            used_shared: false,
            generation: 0,
            retries: (0..count).map(|_| None).collect(),
        }
    }

    /// A new batch begins: nothing sent over a shared connection in it yet.
    pub fn start_batch(&mut self) {
        self.sent_shared = false;
    }

    /// Whether this batch sent anything over a shared connection.
    pub fn sent_shared(&self) -> bool {
        self.sent_shared
    }

    /// Whether the client's plain commands still use the shared connections.
    pub fn uses_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether a request makes this client leave the shared connections: it goes to a shard
    /// and needs the client's own connection there (see `shared.rs`), or runs a script that
    /// may hold its connection for long (see [`crate::command::CommandSpec::runs_script`]).
    pub fn must_leave_shared(&self, decision: &Decision, protocol: Protocol) -> bool {
        let to_shard = !matches!(
            decision.route,
            Route::Local(_)
                | Route::Admin(_)
                | Route::CrossSlot
                | Route::Refused(_)
                | Route::Unknown
                | Route::Invalid(_)
        );
        // CLIENT TRACKING and its kin: a tracking client's requests go over connections
        // that track for it (see `tracking.rs`).
        let tracking = decision.route == Route::Local(LocalCommand::ClientTracking);
        self.shared.is_some()
            && (tracking
                || to_shard
                    && (decision.blocking
                        || decision.spec.is_some_and(|spec| spec.runs_script())
                        || matches!(decision.route, Route::Transaction { .. })
                        || protocol != Protocol::Resp2))
    }

    /// Moves this client to connections of its own for good; returns whether it ever sent
    /// anything over shared ones (before a WAIT, each own connection must then first count
    /// those writes).
    pub fn leave_shared(&mut self) -> bool {
        self.shared = None;
        for conn in &mut self.conns {
            if conn.as_ref().is_some_and(Conn::is_shared) {
                *conn = None;
            }
        }
        self.used_shared
    }

    /// The connection to `shard`, opened if needed and switched to `protocol`.
    pub async fn open(
        &mut self,
        shard: ShardIndex,
        topology: &Topology,
        protocol: Protocol,
    ) -> Result<Opened, ShardError> {
        let index = usize::from(shard.0);
        let addr = primary_of(topology, shard)?;
        if self.conns[index].is_none() {
            let conn = match &self.shared {
                Some(pool) if protocol == Protocol::Resp2 => {
                    Conn::Shared(pool.conn(topology.shard_uid(shard), addr, topology.shard_login()))
                }
                _ => Conn::Own(self.connect_to(shard, addr, topology, protocol).await?),
            };
            self.conns[index] = Some(conn);
        }
        let mut hello = false;
        match self.conns[index].as_mut().expect("connected above") {
            Conn::Shared(_) => {
                self.sent_shared = true;
                self.used_shared = true;
            }
            Conn::Own(conn) if conn.protocol() != protocol => {
                conn.send_hello(protocol);
                hello = true;
            }
            Conn::Own(_) => {}
        }
        Ok(Opened { index, hello })
    }

    /// A new own connection to `shard`'s primary in `topology` (a subscriber connection).
    pub async fn connect(
        &mut self,
        shard: ShardIndex,
        topology: &Topology,
        protocol: Protocol,
    ) -> Result<ShardConn, ShardError> {
        let addr = primary_of(topology, shard)?;
        self.connect_to(shard, addr, topology, protocol).await
    }

    async fn connect_to(
        &mut self,
        shard: ShardIndex,
        addr: SocketAddr,
        topology: &Topology,
        protocol: Protocol,
    ) -> Result<ShardConn, ShardError> {
        let generation = self.next_generation();
        let uid = topology.shard_uid(shard);
        let login = topology.shard_login();
        ShardConn::connect(uid, addr, login, protocol, generation).await
    }

    /// Appends `request` to the pipeline of connection `index`.
    pub fn send(&mut self, index: usize, request: &Request) {
        if let Some(conn) = self.conns[index].as_mut() {
            conn.send(request);
        }
    }

    /// Connection `index`, if open.
    pub fn conn_mut(&mut self, index: usize) -> Option<&mut Conn> {
        self.conns.get_mut(index).and_then(Option::as_mut)
    }

    /// The address connection `index` goes to, if open.
    pub fn addr(&self, index: usize) -> Option<SocketAddr> {
        self.conns
            .get(index)
            .and_then(Option::as_ref)
            .map(Conn::addr)
    }

    /// Writes every connection's part of the batch.
    pub async fn flush(&mut self) {
        for conn in self.conns.iter_mut().flatten() {
            conn.flush().await;
        }
    }

    /// The next reply of connection `index`, decoded, with its verdict.
    pub async fn reply(&mut self, index: usize) -> (Value, Verdict) {
        let (reply, verdict, _) = self.reply_or_lost(index).await;
        (reply, verdict)
    }

    /// [`ShardLinks::reply`], and the connection's error when it broke before answering (for
    /// [`super::resend::ResendPolicy::unconfirmed`]).
    pub async fn reply_or_lost(&mut self, index: usize) -> (Value, Verdict, Option<ShardError>) {
        match self.conn_mut(index) {
            Some(conn) => match conn.reply().await {
                Ok(reply) => {
                    let verdict = Verdict::of_reply(&reply);
                    (reply, verdict, None)
                }
                Err(e) => (e.reply(), Verdict::of_shard_error(&e), Some(e)),
            },
            None => (
                Value::error("ERR internal: shard connection missing"),
                Verdict::NotExecuted {
                    side: Side::Proxy,
                    reason: Reason::Internal,
                },
                None,
            ),
        }
    }

    /// The next reply of connection `index` as the engine encoded it; `None` when the
    /// connection is not open.
    pub async fn reply_raw(&mut self, index: usize) -> Option<RawReply> {
        let conn = self.conn_mut(index)?;
        let addr = conn.addr();
        let raw = conn.reply_raw().await;
        let verdict = match &raw {
            Ok(raw) => Verdict::of_raw(raw),
            Err(e) => Verdict::of_shard_error(e),
        };
        Some(RawReply { addr, raw, verdict })
    }

    /// A connection to `shard`'s primary in `topology` for resending refused requests, reused
    /// within the batch.
    pub async fn retry_conn(
        &mut self,
        shard: ShardIndex,
        topology: &Topology,
        protocol: Protocol,
    ) -> Result<&mut ShardConn, ShardError> {
        Ok(self.retry_conn_fresh(shard, topology, protocol).await?.0)
    }

    /// [`ShardLinks::retry_conn`], and whether the connection was opened just now.
    pub async fn retry_conn_fresh(
        &mut self,
        shard: ShardIndex,
        topology: &Topology,
        protocol: Protocol,
    ) -> Result<(&mut ShardConn, bool), ShardError> {
        let index = usize::from(shard.0);
        if self.retries.len() <= index {
            self.retries.resize_with(index + 1, || None);
        }
        let addr = primary_of(topology, shard)?;
        let reusable = self.retries[index]
            .as_ref()
            .is_some_and(|c| c.addr() == addr && !c.is_broken());
        if !reusable {
            let conn = self.connect_to(shard, addr, topology, protocol).await?;
            self.retries[index] = Some(conn);
        }
        Ok((self.retries[index].as_mut().expect("set above"), !reusable))
    }

    /// Forgets the connection opened to resend to `shard` (its engine is not the primary).
    pub fn drop_retry(&mut self, shard: ShardIndex) {
        if let Some(slot) = self.retries.get_mut(usize::from(shard.0)) {
            *slot = None;
        }
    }

    /// Follows a newly adopted topology: as many connection places as shards, and the shared
    /// pool forgets former primaries.
    pub fn adopt(&mut self, topology: &Topology) {
        if let Some(pool) = &self.shared {
            pool.retain_primaries(topology);
        }
        let count = usize::from(topology.shard_count());
        self.conns.resize_with(count, || None);
        self.retries.resize_with(count, || None);
    }

    /// Drops broken connections, those to a former primary and those not logged in as the
    /// topology asks (see [`ShardConn::logged_in_as`]: the cluster moved to the proxy user, or
    /// a fallback login is due to be tried again); a connection opened to resend writes to the
    /// current primary takes its place. Between batches, so nothing is in flight on them.
    pub fn drop_stale(&mut self, topology: &Topology) {
        let login = topology.shard_login();
        for (index, slot) in self.conns.iter_mut().enumerate() {
            let primary = topology.primary(ShardIndex(index as u16));
            let stale = |broken: bool, addr: SocketAddr| broken || Some(addr) != primary;
            if slot
                .as_ref()
                .is_some_and(|c| stale(c.is_broken(), c.addr()) || !c.logged_in_as(login))
            {
                *slot = None;
            }
            let retry = self.retries.get_mut(index).and_then(Option::take);
            if slot.is_none() {
                *slot = retry
                    .filter(|c| !stale(c.is_broken(), c.addr()) && c.logged_in_as(login))
                    .map(Conn::Own);
            }
        }
    }

    /// The generation of connection `index` (0 when not open or shared).
    pub fn generation(&self, index: usize) -> u64 {
        self.conns
            .get(index)
            .and_then(Option::as_ref)
            .map_or(0, Conn::generation)
    }

    /// Whether the connection that took `watch` still serves its shard.
    pub fn holds(&self, watch: &Watch) -> bool {
        self.conns
            .get(watch.shard)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.generation() == watch.generation && !c.is_broken())
    }

    /// The connection holding `watch`, described for the handover: `None` when it was
    /// replaced (the watch is lost, as a reconnect loses it), `Some(None)` when it cannot
    /// travel now (see [`ShardConn::handover_bytes`]).
    pub fn pinned_watch(
        &self,
        watch: &Watch,
        topology: &Topology,
    ) -> Option<Option<PinnedConnection>> {
        if !self.holds(watch) {
            return None;
        }
        Some(self.pin(watch.shard, PinnedPurpose::Watch, topology))
    }

    /// Own connection `index`, described for the handover as holding `purpose`; `None` when
    /// it is not an own connection or cannot travel now.
    pub fn pin(
        &self,
        index: usize,
        purpose: PinnedPurpose,
        topology: &Topology,
    ) -> Option<PinnedConnection> {
        let Some(Conn::Own(conn)) = self.conns.get(index).and_then(Option::as_ref) else {
            return None;
        };
        let shard = index as u16;
        Some(PinnedConnection {
            purpose,
            shard,
            shard_uid: topology.shard_uid(ShardIndex(shard)),
            addr: conn.addr(),
            protocol: protocol_number(conn.protocol()),
            buffered: conn.handover_bytes()?,
        })
    }

    /// Takes own connection `index` out (the handover passes its socket).
    pub fn take_own(&mut self, index: usize) -> Option<ShardConn> {
        match self.conns.get_mut(index)?.take()? {
            Conn::Own(conn) => Some(conn),
            shared => {
                self.conns[index] = Some(shared);
                None
            }
        }
    }

    /// The generation the next own connection gets (one taken over in a handover).
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Installs `conn`, taken over in a handover, as own connection `index`.
    pub fn install_own(&mut self, index: usize, conn: ShardConn) {
        if self.conns.len() <= index {
            self.conns.resize_with(index + 1, || None);
        }
        self.conns[index] = Some(Conn::Own(conn));
    }

    /// Waits until own connection `index` has its next reply whole (or failed); at once for
    /// any other connection. Takes nothing: the reply is read as usual afterwards.
    pub async fn reply_ready(&mut self, index: usize) {
        if let Some(Some(Conn::Own(conn))) = self.conns.get_mut(index) {
            std::future::poll_fn(|cx| conn.poll_frame_ready(cx)).await;
        }
    }

    /// Records that the client sent over shared connections in another endpoint instance (a
    /// handover): before its first WAIT, its own connections count those writes first.
    pub fn mark_used_shared(&mut self) {
        self.used_shared = true;
    }
}

/// The address of `shard`'s primary, or the error of a shard that does not exist.
fn primary_of(topology: &Topology, shard: ShardIndex) -> Result<SocketAddr, ShardError> {
    topology
        .primary(shard)
        .ok_or_else(|| ShardError::Unavailable {
            shard: topology.shard_uid(shard),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: "no such shard".into(),
        })
}
