//! Client-side caching through an endpoint: CLIENT TRACKING, CACHING, GETREDIR and
//! TRACKINGINFO, with invalidation messages that come from the engines.
//!
//! The engines keep the tracking tables; the proxy only carries the options to them and the
//! invalidations back. A client that turns tracking on leaves the shared shard connections
//! (see `shared.rs`): its requests go to connections of its own, one per shard, and on each the
//! proxy runs `CLIENT TRACKING ON REDIRECT <id>` with the client's options (BCAST, PREFIX,
//! OPTIN, OPTOUT, NOLOOP), where `<id>` is the engine's id of an *inbox*: a second connection
//! to the same shard, owned by the session, subscribed to `__redis__:invalidate`. Every key
//! the client read (or, in BCAST mode, every key under its prefixes) that changes on that shard
//! through any connection of any node's endpoint, expires or is evicted reaches the inbox as
//! the engine's own invalidation message; the session passes it on between batches (and before
//! the next batch's replies), in the client's protocol:
//! - without REDIRECT, as the RESP3 push `invalidate [keys]` on the client's connection
//!   (nothing for a RESP2 client, as Redis sends nothing there);
//! - with `REDIRECT id`, to the endpoint's client of that id (the one CLIENT ID gave it on the
//!   same endpoint) through its mailbox (see [`register`]): a RESP2 client subscribed to
//!   anything gets the `message __redis__:invalidate [keys]` pub/sub message, a RESP3 client
//!   the push; once the redirect client is gone, the tracking client gets the
//!   `tracking-redir-broken` push (RESP3) and TRACKINGINFO says `broken_redirect`.
//!
//! FLUSHALL/FLUSHDB give a `null` key list, once per shard the flush reached. CLIENT CACHING
//! YES/NO is sent, just before the next command that goes to shards, to each shard that
//! command goes to (the engine then applies it to that command and clears it, as Redis does
//! for the next command of a connection). NOLOOP is the engine's "not for writes of this
//! connection": through the endpoint, the writes of this client session, which all go over the
//! connections that track for it.
//!
//! When a shard connection of a tracking client is replaced (its primary moved, or it broke)
//! or its inbox breaks, the keys tracked there are lost with the engine's table: the client is
//! sent a `null` invalidation (flush the whole cache) and tracking is set up again on the new
//! connection. A tracking client is closed at a command boundary rather than handed over in
//! an in-place upgrade (its inboxes cannot travel); clients flush their cache on reconnect.
//!
//! Limits: INFO's `tracking_*` fields are the shards' sums (one engine connection per shard
//! per tracking client); `tracking-table-max-keys` is the engines' (not settable through an
//! endpoint); a write resent to a new primary after a failover goes over a connection that
//! does not track.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use flotilla_resp::{Protocol, Request, Value};
use futures_util::task::AtomicWaker;

use crate::shard::{ShardConn, ShardError};
use crate::slot::ShardIndex;
use crate::topology::Topology;

/// The pub/sub channel Redis names invalidation messages with.
pub(crate) const INVALIDATE_CHANNEL: &str = "__redis__:invalidate";

/// What a redirect client gets from a tracking client: the keys to invalidate (`None`: all).
pub(crate) type Note = Option<Vec<Bytes>>;

/// One client's mailbox, as the endpoint's clients know it for REDIRECT.
struct Entry {
    /// The endpoint the client is connected to: a redirect never crosses databases.
    local: SocketAddr,
    /// Where its invalidation notes go.
    shelf: Arc<Shelf>,
}

/// The notes waiting for one client. No channel: every client of an endpoint has one (any may
/// be named by a REDIRECT), so an empty one must cost next to nothing (an idle connection's
/// memory is bounded by a test), and a queue allocates only once notes arrive.
#[derive(Default)]
struct Shelf {
    notes: Mutex<VecDeque<Note>>,
    /// Set when a note found the shelf full: the client then gets one "flush everything"
    /// note instead of the ones dropped.
    overflowed: AtomicBool,
    /// The session's task, woken when a note arrives.
    waker: AtomicWaker,
}

impl Shelf {
    /// Puts `note` on the shelf (past [`MAILBOX_NOTES`]: the shelf collapses into one
    /// "flush everything" note) and wakes the client's session.
    fn put(&self, note: Note) {
        {
            let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
            if notes.len() >= MAILBOX_NOTES {
                notes.clear();
                self.overflowed.store(true, Ordering::Release);
            } else {
                notes.push_back(note);
            }
        }
        self.waker.wake();
    }
}

/// Every client of this process's endpoints by id (ids are unique in the process, see
/// `server.rs`), so that `CLIENT TRACKING ON REDIRECT id` can find the redirect client's
/// session, as Redis finds a client by id.
static CLIENTS: LazyLock<Mutex<HashMap<u64, Entry>>> = LazyLock::new(Default::default);

fn clients() -> std::sync::MutexGuard<'static, HashMap<u64, Entry>> {
    CLIENTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A client's registration as a possible redirect client; removed when dropped.
pub(crate) struct Mailbox {
    id: u64,
    /// The shelf kept in the registry (also tells this registration from a later one).
    shelf: Arc<Shelf>,
}

/// How many invalidation notes a redirect client's mailbox holds before later ones collapse
/// into one "flush everything" note: a redirect client that does not read (blocked, or
/// monitoring) costs bounded memory however many clients redirect to it.
const MAILBOX_NOTES: usize = 1024;

/// Registers client `id` of the endpoint at `local` as a possible redirect client.
pub(crate) fn register(id: u64, local: SocketAddr) -> Mailbox {
    let shelf = Arc::new(Shelf::default());
    clients().insert(
        id,
        Entry {
            local,
            shelf: shelf.clone(),
        },
    );
    Mailbox { id, shelf }
}

impl Mailbox {
    /// Takes the client out of the registry: redirects to it break from now on.
    fn leave(&mut self) {
        let mut clients = clients();
        // A session resumed in this same process registered the id again: keep that one.
        if clients
            .get(&self.id)
            .is_some_and(|e| Arc::ptr_eq(&e.shelf, &self.shelf))
        {
            clients.remove(&self.id);
        }
    }

    /// The next note for this client; after an overflow, one note to flush everything in place
    /// of every note still queued (they are covered by it).
    fn poll_note(&mut self, cx: &mut Context<'_>) -> Poll<Option<Note>> {
        self.shelf.waker.register(cx.waker());
        let mut notes = self.shelf.notes.lock().unwrap_or_else(|p| p.into_inner());
        if self.shelf.overflowed.swap(false, Ordering::AcqRel) {
            notes.clear();
            return Poll::Ready(Some(None));
        }
        match notes.pop_front() {
            Some(note) => Poll::Ready(Some(note)),
            None => Poll::Pending,
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Whether client `id` is connected to the endpoint at `local`.
fn exists(id: u64, local: SocketAddr) -> bool {
    clients().get(&id).is_some_and(|e| e.local == local)
}

/// Sends `note` to client `id` of the endpoint at `local`; `false` when it is gone.
fn send_to(id: u64, local: SocketAddr, note: Note) -> bool {
    let shelf = clients()
        .get(&id)
        .filter(|e| e.local == local)
        .map(|e| e.shelf.clone());
    match shelf {
        Some(shelf) => {
            shelf.put(note);
            true
        }
        None => false,
    }
}

/// The options tracking is on with, as Redis keeps them for a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mode {
    /// The redirect client's id; 0: none (the client's own connection).
    pub redirect: u64,
    /// BCAST: every key under `prefixes`, read or not.
    pub bcast: bool,
    /// OPTIN: only reads after CLIENT CACHING YES.
    pub optin: bool,
    /// OPTOUT: every read but those after CLIENT CACHING NO.
    pub optout: bool,
    /// NOLOOP: not the client's own writes.
    pub noloop: bool,
    /// BCAST prefixes ("" when BCAST was given none).
    pub prefixes: Vec<Bytes>,
}

/// A parsed `CLIENT TRACKING ON|OFF [options]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ask {
    on: bool,
    redirect: u64,
    bcast: bool,
    optin: bool,
    optout: bool,
    noloop: bool,
    prefixes: Vec<Bytes>,
}

/// What a CLIENT TRACKING request makes the session do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Send `CLIENT TRACKING ON ...` with these arguments (after `ON`, without REDIRECT) to
    /// every shard connection already tracking; connections not tracking yet are set up with
    /// the whole mode.
    On(Vec<Bytes>),
    /// Send `CLIENT TRACKING OFF` to every shard connection tracking.
    Off,
}

/// One shard's inbox: the connection the engine redirects this client's invalidations to.
struct Inbox {
    conn: ShardConn,
    /// The engine's id of the inbox connection.
    engine_id: i64,
}

/// Something that happened to a tracking client between its requests.
#[derive(Debug)]
pub(crate) enum Event {
    /// An engine invalidated keys (`None`: all of them) for this client.
    Invalidated(Note),
    /// The inbox of this shard index broke: what it tracked is lost.
    InboxLost(usize),
    /// Another client of the endpoint, redirecting to this one, had keys invalidated.
    Redirected(Note),
}

/// One client session's tracking: its mode, its pending CLIENT CACHING, its inboxes, which
/// shard connections track for it, and its mailbox as a redirect client.
pub(crate) struct Tracking {
    mode: Option<Mode>,
    /// CLIENT CACHING YES (`true`) or NO, for the next command.
    caching: Option<bool>,
    /// The redirect client went away (TRACKINGINFO's `broken_redirect`).
    broken: bool,
    /// The inbox of each shard index, once opened.
    inboxes: Vec<Option<Inbox>>,
    /// For each shard index, the generation of the shard connection tracking is on at.
    armed: Vec<Option<u64>>,
    mailbox: Mailbox,
}

impl Tracking {
    /// Off, with client `id` of the endpoint at `local` registered as a possible redirect
    /// client.
    pub fn new(id: u64, local: SocketAddr) -> Self {
        Tracking {
            mode: None,
            caching: None,
            broken: false,
            inboxes: Vec::new(),
            armed: Vec::new(),
            mailbox: register(id, local),
        }
    }

    /// The client is closing: clients redirecting to it hear that it is gone from now on,
    /// not once its session is dropped.
    pub fn leave(&mut self) {
        self.mailbox.leave();
    }

    /// Whether tracking is on.
    pub fn is_on(&self) -> bool {
        self.mode.is_some()
    }

    /// Whether the session has engine connections for tracking (they cannot travel in a
    /// handover: the client is closed at a boundary instead).
    pub fn pins(&self) -> bool {
        self.is_on() || self.inboxes.iter().any(Option::is_some)
    }

    /// The flags and redirect of CLIENT INFO/LIST: `t` tracking, `R` broken redirect, `B`
    /// broadcast, as Redis writes them; the redirect is -1 when off.
    pub fn client_flags(&self) -> (String, i64) {
        let Some(mode) = &self.mode else {
            return (String::new(), -1);
        };
        let mut flags = String::from("t");
        if self.broken {
            flags.push('R');
        }
        if mode.bcast {
            flags.push('B');
        }
        (flags, mode.redirect as i64)
    }

    /// Answers CLIENT TRACKING/CACHING/GETREDIR/TRACKINGINFO of the client connected to the
    /// endpoint at `local`: a reply now, or the change the shards must make (the state here
    /// is changed already: every check the engines make is made first).
    pub fn command(&mut self, request: &Request, local: SocketAddr) -> Result<Change, Value> {
        let sub = request
            .arg(1)
            .map(|s| s.to_ascii_uppercase())
            .unwrap_or_default();
        match sub.as_slice() {
            b"TRACKING" => self.tracking(request, local),
            b"CACHING" => Err(self.set_caching(request)),
            b"GETREDIR" => Err(Value::Integer(
                self.mode.as_ref().map_or(-1, |m| m.redirect as i64),
            )),
            _ => Err(self.info()),
        }
    }

    fn tracking(&mut self, request: &Request, local: SocketAddr) -> Result<Change, Value> {
        let args = &request.args()[1..];
        if args.is_empty() {
            return Err(Value::error(
                "ERR wrong number of arguments for 'client|tracking' command",
            ));
        }
        let ask = parse(args, local)?;
        if !ask.on {
            self.mode = None;
            self.caching = None;
            self.broken = false;
            return Ok(Change::Off);
        }
        let mode = self.check_on(&ask)?;
        self.mode = Some(mode);
        self.broken = false;
        Ok(Change::On(options(&ask)))
    }

    /// Redis's checks of `CLIENT TRACKING ON`, in its order, against the current mode; the
    /// new mode.
    fn check_on(&self, ask: &Ask) -> Result<Mode, Value> {
        if !ask.bcast && !ask.prefixes.is_empty() {
            return Err(Value::error(
                "ERR PREFIX option requires BCAST mode to be enabled",
            ));
        }
        if let Some(current) = &self.mode {
            if current.bcast != ask.bcast {
                return Err(Value::error("ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode."));
            }
        }
        if ask.bcast && (ask.optin || ask.optout) {
            return Err(Value::error(
                "ERR OPTIN and OPTOUT are not compatible with BCAST",
            ));
        }
        if ask.optin && ask.optout {
            return Err(Value::error("ERR You can't use both OPTIN and OPTOUT"));
        }
        let current = self.mode.clone().unwrap_or_default();
        if (ask.optin && current.optout) || (ask.optout && current.optin) {
            return Err(Value::error("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode."));
        }
        let mut prefixes = current.prefixes;
        if ask.bcast {
            check_prefixes(&prefixes, &ask.prefixes)?;
            let given = if ask.prefixes.is_empty() {
                vec![Bytes::new()]
            } else {
                ask.prefixes.clone()
            };
            for prefix in given {
                if !prefixes.contains(&prefix) {
                    prefixes.push(prefix);
                }
            }
        }
        Ok(Mode {
            redirect: ask.redirect,
            bcast: ask.bcast,
            optin: ask.optin,
            optout: ask.optout,
            noloop: ask.noloop,
            prefixes,
        })
    }

    /// CLIENT CACHING YES|NO, kept for the next command (see [`Tracking::take_caching`]).
    fn set_caching(&mut self, request: &Request) -> Value {
        let args = &request.args()[1..];
        let [answer] = args else {
            return Value::error("ERR wrong number of arguments for 'client|caching' command");
        };
        let mode = self.mode.clone().unwrap_or_default();
        if !(mode.optin || mode.optout) {
            return Value::error("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled");
        }
        match answer.to_ascii_uppercase().as_slice() {
            b"YES" if mode.optin => self.caching = Some(true),
            b"YES" => {
                return Value::error(
                    "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
                )
            }
            b"NO" if mode.optout => self.caching = Some(false),
            b"NO" => {
                return Value::error(
                    "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
                )
            }
            _ => return Value::error("ERR syntax error"),
        }
        Value::simple("OK")
    }

    /// CLIENT TRACKINGINFO as Redis answers it.
    fn info(&self) -> Value {
        let mut flags = Vec::new();
        match &self.mode {
            None => flags.push("off"),
            Some(mode) => {
                flags.push("on");
                if mode.bcast {
                    flags.push("bcast");
                }
                if mode.optin {
                    flags.push("optin");
                    if self.caching == Some(true) {
                        flags.push("caching-yes");
                    }
                }
                if mode.optout {
                    flags.push("optout");
                    if self.caching == Some(false) {
                        flags.push("caching-no");
                    }
                }
                if mode.noloop {
                    flags.push("noloop");
                }
                if self.broken {
                    flags.push("broken_redirect");
                }
            }
        }
        let redirect = self.mode.as_ref().map_or(-1, |m| m.redirect as i64);
        let prefixes = self
            .mode
            .as_ref()
            .map(|m| m.prefixes.iter().cloned().map(Value::bulk).collect())
            .unwrap_or_default();
        Value::Map(vec![
            (
                Value::bulk("flags"),
                Value::Array(flags.into_iter().map(Value::bulk).collect()),
            ),
            (Value::bulk("redirect"), Value::Integer(redirect)),
            (Value::bulk("prefixes"), Value::Array(prefixes)),
        ])
    }

    /// The pending CLIENT CACHING answer, taken by a command that is not CLIENT and not
    /// queued in MULTI (Redis clears it after any such command); `keep` leaves it.
    pub fn take_caching(&mut self, keep: bool) -> Option<bool> {
        if keep {
            return None;
        }
        self.caching.take().filter(|_| self.is_on())
    }

    /// RESET: tracking off, inboxes kept (they are reused if tracking comes on again).
    pub fn reset(&mut self) {
        self.mode = None;
        self.caching = None;
        self.broken = false;
    }

    /// Whether the shard connection of `index` at `generation` tracks with the current
    /// inbox.
    pub fn armed_at(&self, index: usize, generation: u64) -> bool {
        self.armed.get(index).copied().flatten() == Some(generation)
            && self.inboxes.get(index).is_some_and(Option::is_some)
    }

    /// Whether tracking was set up at shard index `index` before (on a connection now gone:
    /// what it tracked is lost).
    pub fn was_armed(&self, index: usize) -> bool {
        self.armed.get(index).copied().flatten().is_some()
    }

    /// Notes that the shard connection of `index` at `generation` now tracks.
    pub fn arm(&mut self, index: usize, generation: u64) {
        if self.armed.len() <= index {
            self.armed.resize(index + 1, None);
        }
        self.armed[index] = Some(generation);
    }

    /// Forgets every shard connection's tracking (after OFF).
    pub fn disarm_all(&mut self) {
        self.armed.clear();
    }

    /// The shard indexes whose connection tracks (for OFF).
    pub fn armed(&self) -> Vec<(usize, u64)> {
        self.armed
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.map(|g| (i, g)))
            .collect()
    }

    /// The engine id of the inbox at `shard` in `topology`, opened (HELLO for the id, then
    /// SUBSCRIBE) if needed.
    pub async fn inbox(
        &mut self,
        shard: ShardIndex,
        topology: &Topology,
        generation: u64,
    ) -> Result<i64, ShardError> {
        let index = usize::from(shard.0);
        if let Some(Some(inbox)) = self.inboxes.get(index) {
            if !inbox.conn.is_broken() && topology.primary(shard) == Some(inbox.conn.addr()) {
                return Ok(inbox.engine_id);
            }
        }
        let inbox = open_inbox(shard, topology, generation).await?;
        let id = inbox.engine_id;
        // Connections that tracked redirect to the inbox that is gone: set them up again.
        if let Some(slot) = self.armed.get_mut(index) {
            *slot = None;
        }
        if self.inboxes.len() <= index {
            self.inboxes.resize_with(index + 1, || None);
        }
        self.inboxes[index] = Some(inbox);
        Ok(id)
    }

    /// The `CLIENT TRACKING ON REDIRECT inbox ...` that sets a new shard connection up with
    /// the whole current mode.
    pub fn whole_request(&self, inbox: i64) -> Request {
        let mode = self.mode.clone().unwrap_or_default();
        let ask = Ask {
            on: true,
            redirect: 0,
            bcast: mode.bcast,
            optin: mode.optin,
            optout: mode.optout,
            noloop: mode.noloop,
            prefixes: mode.prefixes,
        };
        on_request(inbox, &options(&ask))
    }

    /// The next event, for a session waiting between requests: an inbox's invalidation (or
    /// its loss) or a redirected note. Pending while there is none.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        for index in 0..self.inboxes.len() {
            while let Some(inbox) = self.inboxes[index].as_mut() {
                match inbox.conn.poll_reply(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_)) => {
                        self.inboxes[index] = None;
                        if let Some(slot) = self.armed.get_mut(index) {
                            *slot = None;
                        }
                        return Poll::Ready(Event::InboxLost(index));
                    }
                    Poll::Ready(Ok(frame)) => {
                        if let Some(note) = invalidation(frame) {
                            return Poll::Ready(Event::Invalidated(note));
                        }
                    }
                }
            }
        }
        match self.mailbox.poll_note(cx) {
            Poll::Ready(Some(note)) => Poll::Ready(Event::Redirected(note)),
            _ => Poll::Pending,
        }
    }

    /// Waits for the next event (see [`Tracking::poll_event`]).
    pub async fn next_event(&mut self) -> Event {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The events ready now, without waiting.
    pub async fn ready_events(&mut self) -> Vec<Event> {
        std::future::poll_fn(|cx| {
            let mut events = Vec::new();
            while let Poll::Ready(event) = self.poll_event(cx) {
                events.push(event);
            }
            Poll::Ready(events)
        })
        .await
    }

    /// What an engine's invalidation (`note`) for this client becomes: written to `out` for
    /// the client itself, or sent to its redirect client (the client `local` is connected
    /// to). Nothing once tracking is off, or for a RESP2 client without redirect.
    pub fn deliver(&mut self, note: Note, protocol: Protocol, local: SocketAddr) -> Option<Value> {
        let mode = self.mode.as_ref()?;
        if mode.redirect == 0 {
            return (protocol == Protocol::Resp3).then(|| push(note, protocol));
        }
        if send_to(mode.redirect, local, note) {
            return None;
        }
        if std::mem::replace(&mut self.broken, true) {
            return None;
        }
        (protocol == Protocol::Resp3).then(|| {
            Value::Push(vec![
                Value::bulk("tracking-redir-broken"),
                Value::Integer(mode.redirect as i64),
            ])
        })
    }
}

/// A note for a redirect client: the push `invalidate [keys]` for a RESP3 client, the
/// `__redis__:invalidate` message for a RESP2 client in subscribed mode, nothing otherwise.
pub(crate) fn redirected(note: Note, protocol: Protocol, subscribed: bool) -> Option<Value> {
    match protocol {
        Protocol::Resp3 => Some(push(note, protocol)),
        Protocol::Resp2 if subscribed => Some(Value::Array(vec![
            Value::bulk("message"),
            Value::bulk(INVALIDATE_CHANNEL),
            keys(note, protocol),
        ])),
        Protocol::Resp2 => None,
    }
}

/// The push `invalidate [keys]` (RESP3).
fn push(note: Note, protocol: Protocol) -> Value {
    Value::Push(vec![Value::bulk("invalidate"), keys(note, protocol)])
}

fn keys(note: Note, protocol: Protocol) -> Value {
    match (note, protocol) {
        (Some(keys), _) => Value::Array(keys.into_iter().map(Value::bulk).collect()),
        (None, Protocol::Resp2) => Value::NullArray,
        (None, Protocol::Resp3) => Value::Null,
    }
}

/// The keys of an invalidation message read from an inbox (`message __redis__:invalidate
/// [keys]`); `None` for any other frame (the subscription's confirmation).
fn invalidation(frame: Value) -> Option<Note> {
    let (Value::Array(items) | Value::Push(items)) = frame else {
        return None;
    };
    let [kind, _, keys] = <[Value; 3]>::try_from(items).ok()?;
    if !matches!(&kind, Value::BulkString(k) if k.eq_ignore_ascii_case(b"message")) {
        return None;
    }
    match keys {
        Value::Array(keys) => Some(Some(
            keys.into_iter()
                .filter_map(|k| match k {
                    Value::BulkString(k) | Value::SimpleString(k) => Some(k),
                    _ => None,
                })
                .collect(),
        )),
        _ => Some(None),
    }
}

/// Parses the arguments after `CLIENT TRACKING` as Redis does: options first (a redirect
/// client must exist on the same endpoint), then ON or OFF.
fn parse(args: &[Bytes], local: SocketAddr) -> Result<Ask, Value> {
    let syntax = || Value::error("ERR syntax error");
    let mut ask = Ask::default();
    let mut j = 1;
    while j < args.len() {
        let more = j + 1 < args.len();
        match args[j].to_ascii_uppercase().as_slice() {
            b"REDIRECT" if more => {
                j += 1;
                if ask.redirect != 0 {
                    return Err(Value::error(
                        "ERR A client can only redirect to a single other client",
                    ));
                }
                let id = std::str::from_utf8(&args[j])
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| Value::error("ERR value is not an integer or out of range"))?;
                if id <= 0 || !exists(id as u64, local) {
                    return Err(Value::error(
                        "ERR The client ID you want redirect to does not exist",
                    ));
                }
                ask.redirect = id as u64;
            }
            b"BCAST" => ask.bcast = true,
            b"OPTIN" => ask.optin = true,
            b"OPTOUT" => ask.optout = true,
            b"NOLOOP" => ask.noloop = true,
            b"PREFIX" if more => {
                j += 1;
                ask.prefixes.push(args[j].clone());
            }
            _ => return Err(syntax()),
        }
        j += 1;
    }
    match args[0].to_ascii_uppercase().as_slice() {
        b"ON" => ask.on = true,
        b"OFF" => ask.on = false,
        _ => return Err(syntax()),
    }
    Ok(ask)
}

/// Redis's prefix checks: no given prefix overlaps an existing one or another given one.
fn check_prefixes(existing: &[Bytes], given: &[Bytes]) -> Result<(), Value> {
    let overlap = |a: &[u8], b: &[u8]| {
        let n = a.len().min(b.len());
        a[..n] == b[..n]
    };
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    for (i, prefix) in given.iter().enumerate() {
        if let Some(old) = existing.iter().find(|old| overlap(old, prefix)) {
            return Err(Value::error(format!(
                "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                text(prefix),
                text(old)
            )));
        }
        if let Some(other) = given[i + 1..].iter().find(|other| overlap(prefix, other)) {
            return Err(Value::error(format!(
                "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                text(prefix),
                text(other)
            )));
        }
    }
    Ok(())
}

/// The options of `ask` as engine arguments (after `ON`, without REDIRECT).
fn options(ask: &Ask) -> Vec<Bytes> {
    let mut args = Vec::new();
    for (set, name) in [
        (ask.bcast, "BCAST"),
        (ask.optin, "OPTIN"),
        (ask.optout, "OPTOUT"),
        (ask.noloop, "NOLOOP"),
    ] {
        if set {
            args.push(Bytes::from_static(name.as_bytes()));
        }
    }
    for prefix in &ask.prefixes {
        args.push(Bytes::from_static(b"PREFIX"));
        args.push(prefix.clone());
    }
    args
}

/// `CLIENT TRACKING ON REDIRECT inbox <options>`.
pub(crate) fn on_request(inbox: i64, options: &[Bytes]) -> Request {
    let mut args = vec![
        Bytes::from_static(b"TRACKING"),
        Bytes::from_static(b"ON"),
        Bytes::from_static(b"REDIRECT"),
        Bytes::from(inbox.to_string()),
    ];
    args.extend(options.iter().cloned());
    Request::new("CLIENT", args)
}

/// `CLIENT TRACKING OFF`.
pub(crate) fn off_request() -> Request {
    Request::new(
        "CLIENT",
        [Bytes::from_static(b"TRACKING"), Bytes::from_static(b"OFF")],
    )
}

/// `CLIENT CACHING YES|NO`.
pub(crate) fn caching_request(yes: bool) -> Request {
    let answer: &'static [u8] = if yes { b"YES" } else { b"NO" };
    Request::new(
        "CLIENT",
        [Bytes::from_static(b"CACHING"), Bytes::from_static(answer)],
    )
}

/// How long opening an inbox (connect, HELLO, SUBSCRIBE) may take.
const INBOX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens `shard`'s inbox: a RESP2 connection whose engine id HELLO gives, subscribed to
/// [`INVALIDATE_CHANNEL`].
async fn open_inbox(
    shard: ShardIndex,
    topology: &Topology,
    generation: u64,
) -> Result<Inbox, ShardError> {
    let uid = topology.shard_uid(shard);
    let addr = topology
        .primary(shard)
        .ok_or_else(|| ShardError::Unavailable {
            shard: uid,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: "the shard has no primary".into(),
        })?;
    let login = topology.shard_login();
    let failed = |reason: String| ShardError::Unavailable {
        shard: uid,
        addr,
        reason,
    };
    // Bounded like the endpoint's other side connections (MONITOR, admin): an engine that
    // accepts and then stalls must not hang the session while it routes.
    let opened = tokio::time::timeout(INBOX_TIMEOUT, async {
        let mut conn = ShardConn::connect(uid, addr, login, Protocol::Resp2, generation).await?;
        conn.send(&Request::new("HELLO", [Bytes::from_static(b"2")]));
        conn.send(&Request::new(
            "SUBSCRIBE",
            [Bytes::from_static(INVALIDATE_CHANNEL.as_bytes())],
        ));
        conn.flush().await;
        let hello = conn.reply().await?;
        let subscribed = conn.reply().await?;
        Ok::<_, ShardError>((conn, hello, subscribed))
    })
    .await;
    let (conn, hello, subscribed) = match opened {
        Ok(opened) => opened?,
        Err(_) => return Err(failed("the inbox did not answer within 5 s".into())),
    };
    if subscribed.is_error() {
        return Err(failed(format!("inbox refused: {subscribed:?}")));
    }
    let engine_id =
        hello_id(&hello).ok_or_else(|| failed(format!("HELLO gave no id: {hello:?}")))?;
    Ok(Inbox { conn, engine_id })
}

/// The `id` of a HELLO reply (a flat array in RESP2, a map in RESP3).
fn hello_id(hello: &Value) -> Option<i64> {
    let is_id = |k: &Value| matches!(k, Value::BulkString(k) | Value::SimpleString(k) if k.as_ref() == b"id");
    match hello {
        Value::Array(items) => items
            .chunks(2)
            .find(|pair| pair.len() == 2 && is_id(&pair[0]))
            .and_then(|pair| match pair[1] {
                Value::Integer(id) => Some(id),
                _ => None,
            }),
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| is_id(k))
            .and_then(|(_, v)| match v {
                Value::Integer(id) => Some(*id),
                _ => None,
            }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A redirect client that does not read holds at most `MAILBOX_NOTES` notes; past that it
    /// gets one "flush everything" note in place of all of them, then nothing more.
    #[tokio::test]
    async fn a_full_mailbox_collapses_into_one_flush() {
        let local = SocketAddr::from(([127, 0, 0, 1], 1));
        let id = u64::MAX - 7;
        let mut mailbox = register(id, local);
        for n in 0..MAILBOX_NOTES + 10 {
            assert!(send_to(id, local, Some(vec![Bytes::from(n.to_string())])));
        }
        let first = std::future::poll_fn(|cx| mailbox.poll_note(cx)).await;
        assert_eq!(first, Some(None), "one note to flush everything");
        let next = std::future::poll_fn(|cx| Poll::Ready(mailbox.poll_note(cx))).await;
        assert!(
            next.is_pending(),
            "the queued notes were covered by the flush"
        );
        drop(mailbox);
        assert!(!exists(id, local), "a dropped mailbox leaves the registry");
    }

    fn req(line: &str) -> Request {
        let args: Vec<Bytes> = line
            .split(' ')
            .skip(1)
            .map(|a| Bytes::from(a.to_owned()))
            .collect();
        Request::new("CLIENT", args)
    }

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7))
    }

    fn err(value: Value) -> String {
        match value {
            Value::Error(e) => String::from_utf8_lossy(&e).into_owned(),
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn tracking_checks_options_as_redis_does() {
        let mut t = Tracking::new(900_001, local());
        let on = t.command(
            &req("CLIENT TRACKING on BCAST PREFIX FOOBAR PREFIX FOO"),
            local(),
        );
        assert!(err(on.unwrap_err()).starts_with("ERR Prefix 'FOOBAR' overlaps with another"));
        assert_eq!(
            t.command(
                &req("CLIENT TRACKING on BCAST PREFIX FOO PREFIX BAR"),
                local()
            ),
            Ok(Change::On(vec![
                Bytes::from("BCAST"),
                Bytes::from("PREFIX"),
                Bytes::from("FOO"),
                Bytes::from("PREFIX"),
                Bytes::from("BAR"),
            ]))
        );
        let fo = t.command(&req("CLIENT TRACKING on BCAST PREFIX FO"), local());
        assert!(err(fo.unwrap_err())
            .starts_with("ERR Prefix 'FO' overlaps with an existing prefix 'FOO'"));
        let switch = t.command(&req("CLIENT TRACKING on"), local());
        assert!(err(switch.unwrap_err()).contains("switch BCAST mode"));
        let missing = t.command(&req("CLIENT TRACKING on REDIRECT 12345678"), local());
        assert!(err(missing.unwrap_err()).contains("does not exist"));
        assert_eq!(t.client_flags(), ("tB".to_string(), 0));
        assert_eq!(
            t.command(&req("CLIENT TRACKING off"), local()),
            Ok(Change::Off)
        );
        assert_eq!(t.client_flags(), (String::new(), -1));
        assert_eq!(
            t.command(&req("CLIENT GETREDIR"), local()),
            Err(Value::Integer(-1))
        );
        let caching = t.command(&req("CLIENT CACHING yes"), local());
        assert!(err(caching.unwrap_err()).contains("OPTIN or OPTOUT"));
    }

    #[test]
    fn trackinginfo_and_caching_follow_the_mode() {
        let mut t = Tracking::new(900_002, local());
        let other = Tracking::new(900_003, local());
        assert!(t
            .command(&req("CLIENT TRACKING on optin REDIRECT 900003"), local())
            .is_ok());
        assert_eq!(
            t.command(&req("CLIENT CACHING yes"), local()),
            Err(Value::simple("OK"))
        );
        let Err(Value::Map(info)) = t.command(&req("CLIENT TRACKINGINFO"), local()) else {
            panic!("a map")
        };
        assert_eq!(
            info[0].1,
            Value::Array(vec![
                Value::bulk("on"),
                Value::bulk("optin"),
                Value::bulk("caching-yes")
            ])
        );
        assert_eq!(info[1].1, Value::Integer(900_003));
        assert_eq!(t.take_caching(true), None);
        assert_eq!(t.take_caching(false), Some(true));
        assert_eq!(t.take_caching(false), None);
        // The redirect client goes away: the next invalidation says so, once.
        drop(other);
        let broken = t.deliver(Some(vec![Bytes::from("k")]), Protocol::Resp3, local());
        assert_eq!(
            broken,
            Some(Value::Push(vec![
                Value::bulk("tracking-redir-broken"),
                Value::Integer(900_003)
            ]))
        );
        assert_eq!(t.deliver(None, Protocol::Resp3, local()), None);
        assert_eq!(t.client_flags(), ("tR".to_string(), 900_003));
    }

    #[test]
    fn invalidation_messages_are_read_and_written_as_redis_does() {
        let message = |keys: Value| {
            Value::Array(vec![
                Value::bulk("message"),
                Value::bulk(INVALIDATE_CHANNEL),
                keys,
            ])
        };
        let note = invalidation(message(Value::Array(vec![Value::bulk("a")])));
        assert_eq!(note, Some(Some(vec![Bytes::from("a")])));
        assert_eq!(invalidation(message(Value::NullArray)), Some(None));
        assert_eq!(
            redirected(None, Protocol::Resp2, true),
            Some(message(Value::NullArray))
        );
        assert_eq!(redirected(None, Protocol::Resp2, false), None);
        assert_eq!(
            redirected(Some(vec![Bytes::from("a")]), Protocol::Resp3, false),
            Some(Value::Push(vec![
                Value::bulk("invalidate"),
                Value::Array(vec![Value::bulk("a")])
            ]))
        );
        let hello = Value::Array(vec![
            Value::bulk("server"),
            Value::bulk("redis"),
            Value::bulk("id"),
            Value::Integer(7),
        ]);
        assert_eq!(hello_id(&hello), Some(7));
    }
}
