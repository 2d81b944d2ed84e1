//! The reply queue: one entry per client reply still to be written, in the client's order, and
//! their resolution into the client's output once the batch is sent.
//!
//! Ordering rests on one invariant: entries are pushed in the same order their requests are
//! appended to the shard connections, and each shard answers in order, so resolving the
//! entries front to back reads every shard's replies in sequence.
//!
//! Each resolved reply gets a [`Verdict`], counted in the batch's statistics; a reply that
//! says its request certainly did not run may be resent by the resend policy (see `resend.rs`)
//! before the client sees it.

use std::time::Duration;

use flotilla_resp::{Protocol, Request, Value};
use tokio::sync::watch;

use crate::command::Merge;
use crate::control::SessionControl;
use crate::info::{merge_info, InfoContext};
use crate::pubsub::{Subscriptions, Unconfirmed};
use crate::route::Split;
use crate::scan;
use crate::shard::ShardError;
use crate::slot::ShardIndex;
use crate::stats::{BatchStats, EndpointStats};
use crate::topology::Topology;
use crate::verdict::{Reason, Side, Verdict};

use super::links::{RawReply, ShardLinks};
use super::resend::{transaction_requests, ResendPolicy, Retry};
use super::transaction::null_array;
use super::ClientIo;

/// Where one reply comes from.
#[derive(Debug)]
pub(super) enum Source {
    /// The next reply of this shard's connection.
    Shard(usize),
    /// The next reply of this shard's connection to a write, resent to the shard if it
    /// certainly did not run it (see [`ResendPolicy::retry_of`]).
    Write(usize, Request),
    /// The next reply of this shard's connection to a read, asked again at the shard's next
    /// primary if a request before it in the batch went there, or if it was lost.
    Read(usize, Request),
    /// The request never reached the shard.
    Failed(ShardError),
    /// The requests never reached the shard, which could not be reached: they are sent when
    /// the shard answers again or a failover names its new primary, within the hold (see
    /// `resend.rs`); the last one's reply is the client's (one request, or a whole
    /// transaction: MULTI, the queued requests, EXEC).
    Unsent(ShardIndex, ShardError, Vec<Request>),
}

impl Source {
    /// A source that failed to open for `request` to `shard`: [`Source::Unsent`] when the
    /// shard could not be reached, so the request waits for it within the hold.
    pub fn unsent(self, shard: ShardIndex, request: Request) -> Source {
        match self {
            Source::Failed(error @ ShardError::Unavailable { .. }) => {
                Source::Unsent(shard, error, vec![request])
            }
            other => other,
        }
    }

    /// This source of a transaction's MULTI, when its shard could not be reached: the whole
    /// transaction (`queued` between MULTI and EXEC) waits for the shard within the hold.
    /// Nothing of it ran, so sending it whole elsewhere is safe; a watched one is not resent
    /// (its watch stays on the connection that is gone, see [`Source::not_resent`]).
    pub fn unsent_transaction(self, queued: &[Request]) -> Source {
        match self {
            Source::Unsent(shard, error, _) => {
                Source::Unsent(shard, error, transaction_requests(queued))
            }
            other => other,
        }
    }

    /// This source with an unsent request answered as failed: for requests whose reply is not
    /// the client's own (a transaction's MULTI) or whose effect the session tracks on its own
    /// connection (WATCH), which a resend on another connection would lose.
    pub fn not_resent(self) -> Source {
        match self {
            Source::Unsent(_, error, _) => Source::Failed(error),
            other => other,
        }
    }
}

/// How the replies of a multi-shard request combine.
#[derive(Debug)]
pub(super) enum Combine {
    /// A split request (MGET, MSET, DEL...).
    Split(Split),
    /// The same request sent to every shard (DBSIZE, KEYS, FLUSHALL...).
    Merge(Merge),
    /// INFO sent to every shard, combined with what the endpoint knows of itself.
    Info(InfoContext),
}

/// How much a client blocked in a command may send meanwhile before the session stops
/// reading it (and so stops noticing it leave) until the reply comes.
const READ_WHILE_BLOCKED: usize = 1 << 20;

/// What ended the wait for a blocking request's reply (see [`Resolver::wait_blocked`]).
enum BlockedWait {
    /// The reply is ready (or the request was not a blocking one).
    Reply,
    /// The owner asks the session to detach.
    Detach,
    /// The client disconnected.
    ClientGone,
}

/// Waits for the owner's next request, or forever without an owner.
async fn listen(control: Option<&mut SessionControl>) {
    match control {
        Some(control) => control.listen().await,
        None => std::future::pending().await,
    }
}

/// One client reply still to be written, in order.
#[derive(Debug)]
pub(super) enum Pending {
    /// A reply the client asked not to get (CLIENT REPLY OFF/SKIP): resolved, not written.
    Muted(Box<Pending>),
    /// Known already (local answers, refusals), with its verdict.
    Ready(Value, Protocol, Verdict),
    /// Several frames answering one request, known already (unsubscribing from nothing).
    Frames(Vec<Value>, Protocol),
    /// One shard's reply, as is.
    Forward(Source, Protocol),
    /// The reply of a blocking request (BLPOP...) sent to one shard, as is: like
    /// [`Pending::Forward`], except that a client waiting for nothing else may be handed over
    /// while it waits (see [`ReplyQueue::resolve_all`]).
    Blocking(Source, Protocol),
    /// Several shards' replies, combined.
    Combine(Vec<Source>, Combine, Protocol),
    /// A SCAN reply whose cursor is re-encoded for the client.
    Scan(Source, ShardIndex, u16, Protocol),
    /// A reply the client never asked for (HELLO to a shard, UNWATCH, an offset marker).
    Discard(Source),
    /// A transaction sent as MULTI, its queued requests and EXEC on shard connection `index`:
    /// only EXEC's reply goes to the client. One that a demoted primary refused (`-READONLY`
    /// while queueing, or `-EXECABORT` for `READONLY`: nothing ran) is sent again, whole, to
    /// the shard's next primary; one of which nothing reached an engine that could run it
    /// (the connection had closed before the write, or the engine was loading) is sent again,
    /// whole, once the shard answers, within the hold; a watched one is answered as aborted
    /// (null), since its watch does not carry over. One lost after sending is never resent.
    Exec {
        /// The shard connection it was sent on.
        index: usize,
        /// The shard.
        shard: ShardIndex,
        /// The requests between MULTI and EXEC.
        queued: Vec<Request>,
        /// Whether a WATCH guards it.
        watched: bool,
        /// The client's protocol.
        protocol: Protocol,
    },
    /// The confirmations of a (un)subscribe request from a shard's subscriber connection,
    /// with the messages published before them; `forward: false` drops them all (RESET).
    PubSub {
        /// The subscriber's shard index.
        shard: usize,
        /// How many confirmations.
        replies: usize,
        /// The client's protocol.
        protocol: Protocol,
        /// Whether the client gets them.
        forward: bool,
    },
}

/// The replies of one batch still to be written, and the batch's counts.
#[derive(Default)]
pub(super) struct ReplyQueue {
    pending: Vec<Pending>,
    batch: BatchStats,
}

/// What resolving replies reads from and writes to: the session's other parts, borrowed for
/// the time of one batch's resolution.
pub(super) struct Resolver<'a> {
    /// Where shard replies are read.
    pub links: &'a mut ShardLinks,
    /// Where refused requests are resent.
    pub resend: &'a mut ResendPolicy,
    /// Where subscription confirmations are read.
    pub subs: &'a mut Subscriptions,
    /// The published topology (for resends).
    pub topology: &'a watch::Receiver<Topology>,
    /// The client's socket and output: replies are written out as soon as enough of them are
    /// pending (see [`ClientIo::after_reply`]).
    pub client: &'a mut ClientIo,
    /// The client's protocol now.
    pub protocol: Protocol,
    /// Set when the client must be closed after this batch (a subscriber connection broke).
    pub closing: &'a mut bool,
    /// The owner's requests, when a blocking request may be given back for the session to
    /// detach while it waits.
    pub control: Option<&'a mut SessionControl>,
}

impl ReplyQueue {
    /// Queues the next reply.
    pub fn push(&mut self, entry: Pending) {
        self.pending.push(entry);
    }

    /// How many replies are queued.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Makes the replies queued from `from` on silent (CLIENT REPLY OFF/SKIP): still read
    /// from their shards, never written to the client. (Un)subscribe confirmations stay: the
    /// engine pushes them whatever the reply mode, as it does published messages, and a
    /// subscriber waits for them.
    pub fn mute_from(&mut self, from: usize) {
        for entry in self.pending.iter_mut().skip(from) {
            if matches!(entry, Pending::PubSub { .. } | Pending::Frames(..)) {
                continue;
            }
            let inner = std::mem::replace(entry, Pending::Frames(Vec::new(), Protocol::Resp2));
            *entry = Pending::Muted(Box::new(inner));
        }
    }

    /// Whether no reply is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Resolves every queued reply, front to back, into `resolver.out`.
    ///
    /// The exceptions, for a blocking request queued last (see [`Resolver::wait_blocked`]):
    /// while the owner asks the session to detach before its reply came
    /// (`resolver.control`), it is given back unanswered, its reply still to come on its
    /// connection: the client waits for nothing else, so it may move with that connection.
    /// When the client disconnects meanwhile, it is dropped and the session closes, which
    /// closes the engine connection the request blocks on: the engine frees that client as
    /// it frees a directly connected one that leaves (its blocked count drops).
    pub async fn resolve_all(&mut self, resolver: &mut Resolver<'_>) -> Option<Pending> {
        let last = self.pending.len().checked_sub(1);
        let mut given_back = None;
        for (i, entry) in self.pending.drain(..).enumerate() {
            if Some(i) == last {
                match resolver.wait_blocked(&entry).await {
                    BlockedWait::Reply => {}
                    BlockedWait::Detach => {
                        given_back = Some(entry);
                        break;
                    }
                    BlockedWait::ClientGone => {
                        *resolver.closing = true;
                        break;
                    }
                }
            }
            if let Some(verdict) = resolver.resolve(entry).await {
                self.batch.record(verdict);
            }
            if !resolver.client.after_reply().await {
                *resolver.closing = true;
            }
        }
        given_back
    }

    /// Adds the batch's counts to `stats`, every command with round trip `elapsed`.
    pub fn finish_batch(&mut self, elapsed: Duration, stats: &EndpointStats) {
        self.batch.finish(elapsed, stats);
    }
}

impl Resolver<'_> {
    /// Writes one entry's reply; its verdict, unless the client never asked for it.
    async fn resolve(&mut self, entry: Pending) -> Option<Verdict> {
        let verdict = match entry {
            Pending::Muted(inner) => {
                let written = self.client.output.len();
                let verdict = Box::pin(self.resolve(*inner)).await;
                self.client.output.truncate(written);
                return verdict;
            }
            Pending::Ready(value, protocol, verdict) => {
                value.encode_as(&mut self.client.output, protocol);
                verdict
            }
            Pending::Frames(values, protocol) => {
                for value in &values {
                    value.encode_as(&mut self.client.output, protocol);
                }
                Verdict::OK
            }
            Pending::Forward(source, protocol) | Pending::Blocking(source, protocol) => {
                self.forward(source, protocol).await
            }
            Pending::Combine(sources, combine, protocol) => {
                self.combine(sources, combine, protocol).await
            }
            Pending::Scan(source, shard, count, protocol) => {
                let (value, verdict) = self.take(source).await;
                let value = scan_reply(value, shard, count);
                value.encode_as(&mut self.client.output, protocol);
                Verdict::combined(&value, &[verdict])
            }
            Pending::Discard(source) => {
                self.take(source).await;
                return None;
            }
            Pending::Exec {
                index,
                shard,
                queued,
                watched,
                protocol,
            } => {
                let (value, verdict) = self.exec(index, shard, &queued, watched).await;
                value.encode_as(&mut self.client.output, protocol);
                verdict
            }
            Pending::PubSub {
                shard,
                replies,
                protocol,
                forward,
            } => {
                let verdict = self.confirmations(shard, replies, protocol, forward).await;
                if !forward {
                    return None;
                }
                verdict
            }
        };
        Some(verdict)
    }

    /// One shard's reply to the client, as the engine encoded it when it can be.
    async fn forward(&mut self, source: Source, protocol: Protocol) -> Verdict {
        match source {
            Source::Shard(index) => self.forward_raw(index, None, protocol).await,
            Source::Write(index, request) => {
                self.forward_raw(index, Some((request, false)), protocol)
                    .await
            }
            Source::Read(index, request) => self.forward_read(index, request, protocol).await,
            source @ (Source::Failed(_) | Source::Unsent(..)) => {
                let (value, verdict) = self.take(source).await;
                value.encode_as(&mut self.client.output, protocol);
                verdict
            }
        }
    }

    /// Waits for the reply of `entry`, the batch's last, when it is a blocking request: until
    /// the reply is whole in its connection's buffer, the owner asks the session to detach
    /// (now, or while it waits), or the client disconnects. Meanwhile what the client sends
    /// is read into its input buffer (up to [`READ_WHILE_BLOCKED`]), for after the reply.
    async fn wait_blocked(&mut self, entry: &Pending) -> BlockedWait {
        let Pending::Blocking(
            Source::Write(index, _) | Source::Read(index, _) | Source::Shard(index),
            _,
        ) = entry
        else {
            return BlockedWait::Reply;
        };
        loop {
            let detach = self
                .control
                .as_deref()
                .is_some_and(SessionControl::wants_detach);
            let room = self.client.input.len() < READ_WHILE_BLOCKED;
            tokio::select! {
                biased;
                () = self.links.reply_ready(*index) => return BlockedWait::Reply,
                () = std::future::ready(()), if detach => return BlockedWait::Detach,
                () = listen(self.control.as_deref_mut()) => {}
                read = self.client.read(), if room => {
                    if !matches!(read, Ok(true)) {
                        return BlockedWait::ClientGone;
                    }
                }
            }
        }
    }

    /// Copies the next reply of shard connection `index` to the client as the engine encoded
    /// it: the request went out in the client's protocol, so no re-encoding is needed. A
    /// request kept (`request`, and whether it is a read) is resent when the shard did not run
    /// it or, for a read, lost it (see [`ResendPolicy::retry_of`]).
    async fn forward_raw(
        &mut self,
        index: usize,
        request: Option<(Request, bool)>,
        protocol: Protocol,
    ) -> Verdict {
        let Some(RawReply { addr, raw, verdict }) = self.links.reply_raw(index).await else {
            let (value, verdict) = self.links.reply(index).await;
            value.encode_as(&mut self.client.output, protocol);
            return verdict;
        };
        let shard = ShardIndex(index as u16);
        if let Some((request, read)) = request {
            let retry = ResendPolicy::retry_of(verdict, read)
                .or_else(|| raw.as_ref().err().and_then(ResendPolicy::unconfirmed));
            if let Some(retry) = retry {
                let (value, verdict) = self
                    .resend(shard, std::slice::from_ref(&request), addr, retry)
                    .await;
                value.encode_as(&mut self.client.output, protocol);
                return verdict;
            }
        }
        match raw {
            Ok(raw) => self.client.output.extend_from_slice(&raw),
            Err(e) => e.reply().encode_as(&mut self.client.output, protocol),
        }
        verdict
    }

    /// [`Resolver::forward_raw`] for a read: when a request before it in the batch went to the
    /// shard's new primary, the old primary's answer is dropped and the read asked again there.
    async fn forward_read(
        &mut self,
        index: usize,
        request: Request,
        protocol: Protocol,
    ) -> Verdict {
        if !self.resend.moved_in_batch(index) {
            return self
                .forward_raw(index, Some((request, true)), protocol)
                .await;
        }
        let (value, verdict) = self.take(Source::Read(index, request)).await;
        value.encode_as(&mut self.client.output, protocol);
        verdict
    }

    async fn combine(
        &mut self,
        sources: Vec<Source>,
        combine: Combine,
        protocol: Protocol,
    ) -> Verdict {
        let mut replies = Vec::with_capacity(sources.len());
        let mut verdicts = Vec::with_capacity(sources.len());
        for source in sources {
            let (reply, verdict) = self.take(source).await;
            replies.push(reply);
            verdicts.push(verdict);
        }
        let value = match combine {
            Combine::Split(split) => split.merge(replies),
            Combine::Merge(merge) => crate::merge_replies(merge, replies),
            Combine::Info(context) => merge_info(replies, &context),
        };
        value.encode_as(&mut self.client.output, protocol);
        Verdict::combined(&value, &verdicts)
    }

    /// Reads a (un)subscribe request's confirmations; a lost subscriber closes the client.
    async fn confirmations(
        &mut self,
        shard: usize,
        replies: usize,
        protocol: Protocol,
        forward: bool,
    ) -> Verdict {
        let read = self
            .subs
            .read_confirmations(shard, replies, protocol, forward, &mut self.client.output)
            .await;
        match read {
            Ok(()) => Verdict::OK,
            Err(Unconfirmed::Missing) => {
                Value::error("ERR internal: subscriber connection missing")
                    .encode_as(&mut self.client.output, protocol);
                Verdict::NotExecuted {
                    side: Side::Proxy,
                    reason: Reason::Internal,
                }
            }
            Err(Unconfirmed::Lost(e)) => {
                e.reply().encode_as(&mut self.client.output, protocol);
                *self.closing = true;
                Verdict::of_shard_error(&e)
            }
        }
    }

    /// The next reply from `source` and its verdict; a failed shard gives an error that says
    /// whether the command may have run.
    async fn take(&mut self, source: Source) -> (Value, Verdict) {
        match source {
            Source::Failed(error) => (error.reply(), Verdict::of_shard_error(&error)),
            Source::Unsent(shard, error, requests) => {
                let addr = match &error {
                    ShardError::Unavailable { addr, .. } | ShardError::Lost { addr, .. } => *addr,
                };
                self.resend(shard, &requests, addr, Retry::Reachable).await
            }
            Source::Shard(index) => self.links.reply(index).await,
            Source::Read(index, request) => {
                let addr = self.links.addr(index);
                let (reply, verdict) = self.links.reply(index).await;
                let shard = ShardIndex(index as u16);
                let retry = if self.resend.moved_in_batch(index) {
                    Some(Retry::Reachable)
                } else {
                    ResendPolicy::retry_of(verdict, true)
                };
                match (addr, retry) {
                    (Some(addr), Some(retry)) => {
                        self.resend(shard, std::slice::from_ref(&request), addr, retry)
                            .await
                    }
                    _ => (reply, verdict),
                }
            }
            Source::Write(index, request) => {
                let Some(addr) = self.links.addr(index) else {
                    return self.links.reply(index).await;
                };
                let (reply, verdict, lost) = self.links.reply_or_lost(index).await;
                let shard = ShardIndex(index as u16);
                let retry = ResendPolicy::retry_of(verdict, false)
                    .or_else(|| lost.as_ref().and_then(ResendPolicy::unconfirmed));
                match retry {
                    Some(retry) => {
                        self.resend(shard, std::slice::from_ref(&request), addr, retry)
                            .await
                    }
                    None => (reply, verdict),
                }
            }
        }
    }

    /// Reads the replies of a transaction sent on shard connection `index` (see
    /// [`Pending::Exec`]) and returns EXEC's, resending the transaction if a demoted primary
    /// refused it.
    async fn exec(
        &mut self,
        index: usize,
        shard: ShardIndex,
        queued: &[Request],
        watched: bool,
    ) -> (Value, Verdict) {
        let (multi, multi_verdict) = self.links.reply(index).await;
        let mut refused = false;
        let mut unsent = unsent(multi_verdict);
        for _ in queued {
            let (_, verdict) = self.links.reply(index).await;
            refused |= verdict.refused_as_replica();
            unsent &= self::unsent(verdict);
        }
        let (reply, verdict) = self.links.reply(index).await;
        unsent &= self::unsent(verdict);
        let retry = if unsent {
            // Nothing of it reached an engine that could run it (the shard could not be
            // reached, or was loading): the whole transaction waits for the shard.
            Some(Retry::Reachable)
        } else if !multi.is_error() && (refused || verdict.refused_as_replica()) {
            Some(Retry::NewPrimary)
        } else {
            None
        };
        match (self.links.addr(index), retry) {
            (Some(_), Some(_)) if watched => (null_array(self.protocol), Verdict::OK),
            (Some(failed_at), Some(retry)) => {
                let requests = transaction_requests(queued);
                self.resend(shard, &requests, failed_at, retry).await
            }
            _ => (reply, verdict),
        }
    }

    /// Sends `requests`, which `shard`'s primary at `failed_at` did not run, to the shard again
    /// (see [`ResendPolicy::resend`]).
    async fn resend(
        &mut self,
        shard: ShardIndex,
        requests: &[Request],
        failed_at: std::net::SocketAddr,
        retry: Retry,
    ) -> (Value, Verdict) {
        self.resend
            .resend(
                self.links,
                self.topology,
                shard,
                requests,
                failed_at,
                retry,
                self.protocol,
            )
            .await
    }
}

/// Whether a request answered with `verdict` reached no engine that could run it: its shard
/// could not be reached, or was loading its data.
fn unsent(verdict: Verdict) -> bool {
    verdict.unreachable() || verdict.loading()
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
