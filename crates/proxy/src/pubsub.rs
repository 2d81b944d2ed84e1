//! A client connection's subscriptions: one dedicated engine connection per shard it subscribed
//! on (shard 0 for classic channels and patterns, the channel's shard for sharded channels),
//! and the bookkeeping that pairs each (un)subscribe request with its confirmations.
//!
//! Why dedicated connections: a RESP2 engine connection in subscribed mode refuses ordinary
//! commands, and on RESP3 pushed messages would interleave with the replies of the client's
//! other commands; keeping subscriptions apart leaves the request/reply connections untouched.
//!
//! Confirmations are counted, not guessed: the set of channels, patterns and shard channels is
//! updated when a request is routed (the engine applies them in the same order), so the number
//! of confirmation frames each request produces is known before its replies are read, and
//! published messages read in between are passed through as they come.
//!
//! The session's pub/sub glue lives here too: sending a routed (un)subscribe request and
//! saying how it is answered ([`Answer`]), reading its confirmations back in the client's
//! order, and passing published messages to a client waiting between batches.

use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use flotilla_resp::{Protocol, Request, Value};

use crate::handover::{protocol_number, PinnedConnection, PinnedPurpose, ShardSubscriptions};
use crate::shard::{ShardConn, ShardError};
use crate::slot::ShardIndex;
use crate::topology::Topology;

/// What a (un)subscribe command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubKind {
    /// SUBSCRIBE / UNSUBSCRIBE.
    Channel,
    /// PSUBSCRIBE / PUNSUBSCRIBE.
    Pattern,
    /// SSUBSCRIBE / SUNSUBSCRIBE.
    ShardChannel,
}

impl SubKind {
    /// The kind and direction (`true`: subscribe) of a (un)subscribe command name.
    pub fn of(name: &str) -> Option<(SubKind, bool)> {
        Some(match name {
            "SUBSCRIBE" => (SubKind::Channel, true),
            "PSUBSCRIBE" => (SubKind::Pattern, true),
            "SSUBSCRIBE" => (SubKind::ShardChannel, true),
            "UNSUBSCRIBE" => (SubKind::Channel, false),
            "PUNSUBSCRIBE" => (SubKind::Pattern, false),
            "SUNSUBSCRIBE" => (SubKind::ShardChannel, false),
            _ => return None,
        })
    }

    /// The command that drops every subscription of this kind.
    pub fn unsubscribe_command(self) -> &'static str {
        match self {
            SubKind::Channel => "UNSUBSCRIBE",
            SubKind::Pattern => "PUNSUBSCRIBE",
            SubKind::ShardChannel => "SUNSUBSCRIBE",
        }
    }

    const ALL: [SubKind; 3] = [SubKind::Channel, SubKind::Pattern, SubKind::ShardChannel];
}

/// The names one subscriber connection is subscribed to, by kind, as routed so far.
#[derive(Debug, Default)]
pub(crate) struct Names([HashSet<Bytes>; 3]);

impl Names {
    /// How many names of `kind` there are.
    pub fn count(&self, kind: SubKind) -> usize {
        self.0[kind as usize].len()
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(HashSet::is_empty)
    }

    /// The names of `kind`, for the handover state.
    fn list(&self, kind: SubKind) -> Vec<Vec<u8>> {
        self.0[kind as usize].iter().map(|n| n.to_vec()).collect()
    }

    /// Records a routed (un)subscribe request; returns how many confirmations it produces (an
    /// unsubscribe from everything is confirmed once per name, or once when there was none).
    pub fn apply(&mut self, kind: SubKind, subscribe: bool, names: &[Bytes]) -> usize {
        let set = &mut self.0[kind as usize];
        if names.is_empty() {
            let dropped = set.len();
            set.clear();
            return dropped.max(1);
        }
        for name in names {
            if subscribe {
                set.insert(name.clone());
            } else {
                set.remove(name);
            }
        }
        names.len()
    }
}

/// One engine connection carrying a client's subscriptions on one shard.
#[derive(Debug)]
pub(crate) struct Subscriber {
    /// The connection, in subscribed mode once its first SUBSCRIBE is sent.
    pub conn: ShardConn,
    /// What it is subscribed to.
    pub names: Names,
    /// The engine's last confirmed count of shard channels on this connection.
    confirmed_shard_channels: i64,
}

impl Subscriber {
    /// A subscriber over a freshly opened connection.
    pub fn new(conn: ShardConn) -> Self {
        Subscriber {
            conn,
            names: Names::default(),
            confirmed_shard_channels: 0,
        }
    }
}

/// A frame read from a subscriber connection.
#[derive(Debug, PartialEq)]
pub(crate) enum Frame {
    /// A published message (`message`, `pmessage`, `smessage`): not a reply to anything.
    Message,
    /// A reply: a (un)subscribe confirmation, a PING answer or an error.
    Reply,
}

/// How a routed (un)subscribe request is answered.
#[derive(Debug)]
pub(crate) enum Answer {
    /// By `replies` confirmations from shard `shard`'s subscriber, with the messages published
    /// before them.
    Confirmations {
        /// The shard index.
        shard: usize,
        /// How many confirmation frames.
        replies: usize,
    },
    /// By frames the proxy writes itself (nothing of its kind is subscribed there).
    Frames(Vec<Value>),
    /// By an error the proxy writes itself (a request without names).
    Refused(Value),
    /// The subscriber connection could not be opened.
    Failed(ShardError),
}

/// Why a request's confirmations could not be read.
#[derive(Debug)]
pub(crate) enum Unconfirmed {
    /// No subscriber connection on that shard (the session's bookkeeping failed).
    Missing,
    /// The subscriber connection broke: the client must be closed, its subscriptions are gone.
    Lost(ShardError),
}

/// Every subscriber of one client connection, by shard index.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    by_shard: Vec<Option<Subscriber>>,
}

impl Subscriptions {
    /// Whether the client is in RESP2 subscribed mode, where Redis allows only (un)subscribing,
    /// PING, QUIT and RESET.
    pub fn resp2_mode(&self, protocol: Protocol) -> bool {
        protocol == Protocol::Resp2 && self.active()
    }

    /// How many channels, patterns and shard channels the client is subscribed to (CLIENT
    /// INFO's `sub`, `psub` and `ssub`).
    pub fn counts(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for sub in self.by_shard.iter().flatten() {
            for kind in SubKind::ALL {
                counts[kind as usize] += sub.names.count(kind);
            }
        }
        counts
    }

    /// Sends a SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE to `shard`'s subscriber connection, opened
    /// by awaiting `open` on first use (left unpolled otherwise).
    pub async fn subscribe(
        &mut self,
        shard: usize,
        kind: SubKind,
        request: &Request,
        open: impl Future<Output = Result<ShardConn, ShardError>>,
    ) -> Answer {
        if request.args().is_empty() {
            let name = request.name().to_ascii_lowercase();
            return Answer::Refused(Value::error(format!(
                "ERR wrong number of arguments for '{name}' command"
            )));
        }
        if self.get_mut(shard).is_none() {
            match open.await {
                Ok(conn) => self.insert(shard, Subscriber::new(conn)),
                Err(e) => return Answer::Failed(e),
            }
        }
        let sub = self.get_mut(shard).expect("opened above");
        sub.conn.send(request);
        let replies = sub.names.apply(kind, true, request.args());
        Answer::Confirmations { shard, replies }
    }

    /// Sends an unsubscribe request to `shard`'s subscriber, or answers it as Redis would when
    /// nothing of its kind is subscribed there.
    pub fn unsubscribe(
        &mut self,
        shard: usize,
        kind: SubKind,
        request: &Request,
        protocol: Protocol,
    ) -> Answer {
        if let Some(sub) = self.get_mut(shard) {
            sub.conn.send(request);
            let replies = sub.names.apply(kind, false, request.args());
            return Answer::Confirmations { shard, replies };
        }
        let count = match kind {
            SubKind::ShardChannel => self.total(SubKind::ShardChannel),
            SubKind::Channel | SubKind::Pattern => 0,
        };
        Answer::Frames(local_unsubscribe(
            request.name(),
            request.args(),
            count,
            protocol,
        ))
    }

    /// SUNSUBSCRIBE without channels: to every shard the client has shard channels on.
    pub fn unsubscribe_everywhere(
        &mut self,
        kind: SubKind,
        request: &Request,
        protocol: Protocol,
    ) -> Vec<Answer> {
        let shards = self.shards_with(kind);
        if shards.is_empty() {
            let frames = local_unsubscribe(request.name(), &[], 0, protocol);
            return vec![Answer::Frames(frames)];
        }
        shards
            .into_iter()
            .map(|(shard, _)| self.unsubscribe(shard, kind, request, protocol))
            .collect()
    }

    /// Reads `replies` confirmations from `shard`'s subscriber and writes them to `out`, with
    /// the messages read before them (nothing is written when `forward` is false).
    pub async fn read_confirmations(
        &mut self,
        shard: usize,
        replies: usize,
        protocol: Protocol,
        forward: bool,
        out: &mut BytesMut,
    ) -> Result<(), Unconfirmed> {
        let mut seen = 0;
        while seen < replies {
            let Some(sub) = self.get_mut(shard) else {
                return Err(Unconfirmed::Missing);
            };
            let mut value = sub.conn.reply().await.map_err(Unconfirmed::Lost)?;
            if self.pass(shard, &mut value, protocol) == Frame::Reply {
                seen += 1;
            }
            if forward {
                value.encode_as(out, protocol);
            }
        }
        Ok(())
    }

    /// Waits for the next frame any subscriber has (a published message between batches),
    /// made the client's (see [`Subscriptions::pass`]). Pending forever when no subscriber is
    /// open.
    pub async fn next_message(&mut self, protocol: Protocol) -> Result<Value, ShardError> {
        let (shard, frame) = self.next_frame().await;
        let mut value = frame?;
        self.pass(shard, &mut value, protocol);
        Ok(value)
    }

    /// The handover's view of the subscriptions: the names per kind per shard, and the
    /// subscriber connections they ride on with the bytes read from each and not passed on
    /// yet; `None` when a connection cannot travel now (see [`ShardConn::handover_bytes`]).
    pub fn capture(
        &self,
        topology: &Topology,
    ) -> Option<(Vec<ShardSubscriptions>, Vec<PinnedConnection>)> {
        let mut subscriptions = Vec::new();
        let mut pinned = Vec::new();
        for (i, sub) in self.by_shard.iter().enumerate() {
            let Some(sub) = sub else { continue };
            let shard = i as u16;
            subscriptions.push(ShardSubscriptions {
                shard,
                channels: sub.names.list(SubKind::Channel),
                patterns: sub.names.list(SubKind::Pattern),
                shard_channels: sub.names.list(SubKind::ShardChannel),
            });
            pinned.push(PinnedConnection {
                purpose: PinnedPurpose::Subscriber,
                shard,
                shard_uid: topology.shard_uid(ShardIndex(shard)),
                addr: sub.conn.addr(),
                protocol: protocol_number(sub.conn.protocol()),
                buffered: sub.conn.handover_bytes()?,
            });
        }
        Some((subscriptions, pinned))
    }

    /// Takes the subscriber connection of `shard` out (the handover passes its socket).
    pub fn take_conn(&mut self, shard: usize) -> Option<ShardConn> {
        self.by_shard
            .get_mut(shard)
            .and_then(Option::take)
            .map(|sub| sub.conn)
    }

    /// Subscriptions taken over in a handover: the names [`Subscriptions::capture`] took, on
    /// the connection passed for each shard.
    pub fn restore(subscribers: Vec<(ShardSubscriptions, ShardConn)>) -> Subscriptions {
        let mut subs = Subscriptions::default();
        for (names, conn) in subscribers {
            let mut sub = Subscriber::new(conn);
            let all = [
                (SubKind::Channel, names.channels),
                (SubKind::Pattern, names.patterns),
                (SubKind::ShardChannel, names.shard_channels),
            ];
            for (kind, list) in all.into_iter().filter(|(_, list)| !list.is_empty()) {
                let list: Vec<Bytes> = list.into_iter().map(Bytes::from).collect();
                sub.names.apply(kind, true, &list);
            }
            sub.confirmed_shard_channels = sub.names.count(SubKind::ShardChannel) as i64;
            subs.insert(usize::from(names.shard), sub);
        }
        subs
    }

    /// Whether the client is subscribed to anything (as routed so far): Redis's subscribed mode.
    pub fn active(&self) -> bool {
        self.by_shard.iter().flatten().any(|s| !s.names.is_empty())
    }

    /// Whether any subscriber connection is open (messages may arrive).
    pub fn is_open(&self) -> bool {
        self.by_shard.iter().any(Option::is_some)
    }

    /// The subscriber on `shard`, if open.
    fn get_mut(&mut self, shard: usize) -> Option<&mut Subscriber> {
        self.by_shard.get_mut(shard).and_then(Option::as_mut)
    }

    /// Installs a subscriber for `shard`.
    fn insert(&mut self, shard: usize, subscriber: Subscriber) {
        if self.by_shard.len() <= shard {
            self.by_shard.resize_with(shard + 1, || None);
        }
        self.by_shard[shard] = Some(subscriber);
    }

    /// Shards with subscriptions of `kind`, with how many.
    fn shards_with(&self, kind: SubKind) -> Vec<(usize, usize)> {
        self.by_shard
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.names.count(kind))))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Names of `kind` subscribed over every shard (as routed so far).
    fn total(&self, kind: SubKind) -> usize {
        self.by_shard
            .iter()
            .flatten()
            .map(|s| s.names.count(kind))
            .sum()
    }

    /// Flushes every subscriber's pending requests.
    pub async fn flush(&mut self) {
        for sub in self.by_shard.iter_mut().flatten() {
            sub.conn.flush().await;
        }
    }

    /// Closes the connections that no longer carry a subscription (after a batch is answered).
    pub fn prune(&mut self) {
        for slot in &mut self.by_shard {
            if slot.as_ref().is_some_and(|s| s.names.is_empty()) {
                *slot = None;
            }
        }
    }

    /// Forgets every subscription as RESET does: each connection is told to unsubscribe
    /// everything; returns `(shard, confirmations)` for the caller to read and discard.
    pub fn reset(&mut self) -> Vec<(usize, usize)> {
        let mut discard = Vec::new();
        for (shard, sub) in self.by_shard.iter_mut().enumerate() {
            let Some(sub) = sub.as_mut() else { continue };
            for kind in SubKind::ALL {
                if sub.names.count(kind) > 0 {
                    let request = flotilla_resp::Request::new(kind.unsubscribe_command(), []);
                    sub.conn.send(&request);
                    discard.push((shard, sub.names.apply(kind, false, &[])));
                }
            }
        }
        discard
    }

    /// The first subscriber whose shard moved to another primary (or whose connection broke):
    /// its client must be disconnected, since its subscriptions are on the old primary.
    pub fn moved(&self, topology: &Topology) -> Option<ShardIndex> {
        self.by_shard.iter().enumerate().find_map(|(i, s)| {
            let shard = ShardIndex(i as u16);
            let sub = s.as_ref()?;
            let gone = sub.conn.is_broken() || topology.primary(shard) != Some(sub.conn.addr());
            gone.then_some(shard)
        })
    }

    /// The next frame any subscriber connection has, for a client waiting between batches.
    /// Pending forever when no subscriber is open.
    async fn next_frame(&mut self) -> (usize, Result<Value, ShardError>) {
        poll_fn(|cx| {
            for (i, sub) in self.by_shard.iter_mut().enumerate() {
                if let Some(sub) = sub.as_mut() {
                    if let Poll::Ready(frame) = sub.conn.poll_reply(cx) {
                        return Poll::Ready((i, frame));
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Classifies a frame read from `shard`'s subscriber and makes it the client's: a
    /// shard-channel confirmation's count becomes the client's total over every shard (Redis
    /// counts a client's shard channels, not a connection's), and a RESP3 client gets push
    /// frames even from a connection opened before it switched protocols.
    fn pass(&mut self, shard: usize, frame: &mut Value, protocol: Protocol) -> Frame {
        if protocol == Protocol::Resp3 {
            if let Value::Array(items) = frame {
                *frame = Value::Push(std::mem::take(items));
            }
        }
        let (Value::Push(items) | Value::Array(items)) = frame else {
            return Frame::Reply;
        };
        let kind = match items.first() {
            Some(Value::BulkString(k) | Value::SimpleString(k)) => k.to_ascii_lowercase(),
            _ => return Frame::Reply,
        };
        match kind.as_slice() {
            b"message" | b"pmessage" | b"smessage" => Frame::Message,
            b"ssubscribe" | b"sunsubscribe" => {
                if let Some(Value::Integer(count)) = items.get(2) {
                    items[2] = Value::Integer(self.confirm_shard_channels(shard, *count));
                }
                Frame::Reply
            }
            _ => Frame::Reply,
        }
    }

    /// Records `shard`'s confirmed shard-channel count; returns the client's total.
    fn confirm_shard_channels(&mut self, shard: usize, count: i64) -> i64 {
        if let Some(sub) = self.get_mut(shard) {
            sub.confirmed_shard_channels = count;
        }
        self.by_shard
            .iter()
            .flatten()
            .map(|s| s.confirmed_shard_channels)
            .sum()
    }
}

/// Redis's confirmations for an unsubscribe request that reaches no engine connection (nothing
/// of its kind is subscribed there): one frame per name, or one with a null name.
fn local_unsubscribe(
    command: &str,
    names: &[Bytes],
    count: usize,
    protocol: Protocol,
) -> Vec<Value> {
    let kind = Value::bulk(command.to_ascii_lowercase());
    let frame = |name: Value| confirmation(kind.clone(), name, count, protocol);
    if names.is_empty() {
        return vec![frame(Value::NullBulkString)];
    }
    names
        .iter()
        .map(|n| frame(Value::bulk(n.clone())))
        .collect()
}

fn confirmation(kind: Value, name: Value, count: usize, protocol: Protocol) -> Value {
    let items = vec![kind, name, Value::Integer(count as i64)];
    match protocol {
        Protocol::Resp2 => Value::Array(items),
        Protocol::Resp3 => Value::Push(items),
    }
}

/// Redis's answer to PING from a RESP2 client in subscribed mode: `["pong", message]`.
pub(crate) fn subscribed_pong(message: Option<&Bytes>) -> Value {
    Value::Array(vec![
        Value::bulk("pong"),
        Value::bulk(message.cloned().unwrap_or_default()),
    ])
}

/// Commands a RESP2 client in subscribed mode may send, as Redis allows them.
pub(crate) fn allowed_when_subscribed(name: &str) -> bool {
    matches!(
        name,
        "SUBSCRIBE"
            | "PSUBSCRIBE"
            | "SSUBSCRIBE"
            | "UNSUBSCRIBE"
            | "PUNSUBSCRIBE"
            | "SUNSUBSCRIBE"
            | "PING"
            | "QUIT"
            | "RESET"
    )
}

/// Redis's refusal of another command in RESP2 subscribed mode.
pub(crate) fn refused_when_subscribed(name: &str) -> Value {
    Value::error(format!(
        "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
        name.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_are_counted_from_routed_requests() {
        let bytes = |args: &[&str]| -> Vec<Bytes> {
            args.iter().map(|a| Bytes::from(a.to_string())).collect()
        };
        let mut names = Names::default();
        assert!(names.is_empty());
        assert_eq!(
            names.apply(SubKind::Channel, true, &bytes(&["a", "b", "a"])),
            3
        );
        assert_eq!(names.count(SubKind::Channel), 2);
        assert_eq!(names.apply(SubKind::Pattern, true, &bytes(&["p*"])), 1);
        assert_eq!(names.apply(SubKind::Channel, false, &bytes(&["zz"])), 1);
        assert_eq!(names.apply(SubKind::Channel, false, &[]), 2);
        assert_eq!(names.apply(SubKind::Channel, false, &[]), 1);
        assert!(!names.is_empty());
        assert_eq!(names.apply(SubKind::Pattern, false, &bytes(&["p*"])), 1);
        assert!(names.is_empty());
        assert_eq!(SubKind::of("PSUBSCRIBE"), Some((SubKind::Pattern, true)));
        assert_eq!(SubKind::of("GET"), None);
    }

    #[test]
    fn local_confirmations_look_like_redis() {
        let frames = local_unsubscribe("UNSUBSCRIBE", &[], 0, Protocol::Resp2);
        assert_eq!(
            frames,
            vec![Value::Array(vec![
                Value::bulk("unsubscribe"),
                Value::NullBulkString,
                Value::Integer(0)
            ])]
        );
        let frames = local_unsubscribe("SUNSUBSCRIBE", &[Bytes::from("x")], 2, Protocol::Resp3);
        assert!(matches!(&frames[0], Value::Push(items) if items[2] == Value::Integer(2)));
        assert!(allowed_when_subscribed("PING") && !allowed_when_subscribed("GET"));
        assert!(refused_when_subscribed("GET").is_error());
    }
}
