//! The resend policy: which requests go again to a shard's next primary, and sending them.
//!
//! Only a request *certainly not executed* is resent (DESIGN.md, "Data path", step 5): one a
//! demoted primary refused (`-READONLY`, `-UNBLOCKED`, `-EXECABORT` for `READONLY`), one
//! whose shard could not be reached (nothing was sent: a refused connection, a connection the
//! engine had closed before the request was written), one an engine refused with `-LOADING`
//! while it loads its data after a restart (held like an unreachable shard's, and sent again
//! every [`RECONNECT_EVERY`] until the engine has loaded), or a write lost in flight on a dead
//! master that the promoted replica provably never got ([`Retry::Unconfirmed`], see
//! `outcome.rs`: proven before anything is sent, else the client gets "may have executed").
//! A write whose outcome stays unknown is never resent. Reads are the other case: a read whose
//! connection was lost after sending is
//! asked again (it changed nothing), and a read pipelined after a write that went to the
//! shard's new primary in the same batch is asked again there, so a `SET k v; GET k` split by a
//! switchover reads `v`, not the demoted primary's older value.
//!
//! Resending a request a demoted primary refused waits, within the hold timeout, for a
//! topology that names a primary other than the one that refused, and goes on to the one after
//! if that one refuses too. Resending a request whose shard could not be reached is the hold of
//! an unplanned failover, or of a shard still starting: within the same bound it reconnects to
//! the shard's primary every [`RECONNECT_EVERY`] and at every new topology, so it goes to the
//! replica the orchestrator promotes, or to the same engine once it answers again. Past the
//! bound the client gets the shard's error (not executed), and the session's later requests for
//! that shard fail at once, without waiting again, until a new topology arrives or the shard
//! answers.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_resp::{Protocol, Request, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::outcome::StreamPosition;
use crate::shard::ShardError;
use crate::slot::ShardIndex;
use crate::topology::{ShardName, Topology};
use crate::verdict::{Reason, Side, Verdict};

use super::links::ShardLinks;

/// How often a request held because its shard could not be reached tries the shard's primary
/// again (a new topology is tried at once).
pub(super) const RECONNECT_EVERY: Duration = Duration::from_millis(100);

/// Why a request goes to its shard again, which decides where it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// A demoted primary refused it: only another primary may take it.
    NewPrimary,
    /// Its shard could not be reached (or, for a read, the connection was lost): the same
    /// primary may take it once it answers again, or the one a failover names.
    Reachable,
    /// A write lost in flight after this position of its master's replication stream: it goes
    /// to the shard's next primary only if that one proves it applied nothing of the dead
    /// master's stream after it (`outcome.rs`); otherwise its outcome stays unknown.
    Unconfirmed(StreamPosition),
}

/// One client session's resend bookkeeping.
pub(super) struct ResendPolicy {
    /// Shards (by index) whose requests of this batch were resent to a new primary: the reads
    /// after them in the batch are asked there too.
    moved: Vec<bool>,
    /// Shards (by index) whose reconnection this session waited out: their unreachable
    /// requests fail at once until a new topology arrives or the shard answers.
    expired: Vec<bool>,
    /// How long a resend waits for a new primary.
    timeout: Duration,
}

impl ResendPolicy {
    /// Nothing resent yet, for `shard_count` shards; a resend waits at most `timeout` for a new
    /// primary.
    pub fn new(shard_count: u16, timeout: Duration) -> Self {
        ResendPolicy {
            moved: vec![false; usize::from(shard_count)],
            expired: vec![false; usize::from(shard_count)],
            timeout,
        }
    }

    /// A new batch's replies are about to be read: nothing resent in it yet.
    pub fn start_batch(&mut self) {
        self.moved.iter_mut().for_each(|moved| *moved = false);
    }

    /// Follows a topology of `shard_count` shards: reconnections waited out are forgotten (it
    /// may name a new primary).
    pub fn adopt(&mut self, shard_count: u16) {
        self.moved.resize(usize::from(shard_count), false);
        self.expired.clear();
        self.expired.resize(usize::from(shard_count), false);
    }

    /// Whether a request of this batch on shard `index` was resent to a new primary.
    pub fn moved_in_batch(&self, index: usize) -> bool {
        self.moved.get(index).copied().unwrap_or(false)
    }

    /// Whether, and why, a request a shard answered with `verdict` goes to the shard again:
    /// refused by a demoted primary (to the next primary), not sent because the shard could
    /// not be reached or refused by an engine still loading its data (to whichever primary
    /// answers within the hold), or, for a `read`, lost after sending (a read changed
    /// nothing). Never a write whose outcome is unknown.
    pub fn retry_of(verdict: Verdict, read: bool) -> Option<Retry> {
        if verdict.refused_as_replica() {
            Some(Retry::NewPrimary)
        } else if verdict.unreachable()
            || verdict.loading()
            || (read && matches!(verdict, Verdict::Unknown { .. }))
        {
            Some(Retry::Reachable)
        } else {
            None
        }
    }

    /// Whether a write whose connection was lost after sending (`error`) may go to the shard's
    /// next primary once that one proves it lacks it: when the connection knew where the
    /// master's stream stood before the write.
    pub fn unconfirmed(error: &ShardError) -> Option<Retry> {
        match error {
            ShardError::Lost {
                position: Some(position),
                ..
            } => Some(Retry::Unconfirmed(**position)),
            _ => None,
        }
    }

    /// Sends `requests` again to `shard` (see [`Retry`]): after a refusal, to the first primary
    /// a topology names other than `failed_at`, and to the one after if that one refuses them
    /// as a replica too; when the shard could not be reached at `failed_at`, to its primary as
    /// soon as one answers. Within the timeout; returns the last request's reply. `error` is
    /// what the client gets when the shard stays unreachable.
    #[allow(clippy::too_many_arguments)]
    pub async fn resend(
        &mut self,
        links: &mut ShardLinks,
        topology: &watch::Receiver<Topology>,
        shard: ShardIndex,
        requests: &[Request],
        failed_at: SocketAddr,
        retry: Retry,
        protocol: Protocol,
    ) -> (Value, Verdict) {
        let deadline = Instant::now() + self.timeout;
        let mut retry = retry;
        let mut failed_at = failed_at;
        let index = usize::from(shard.0);
        // The primary proven to lack writes lost in flight: they go there or nowhere.
        let mut proven = None;
        if let Retry::Unconfirmed(position) = retry {
            let checked = confirm_absent(
                links, topology, shard, &position, failed_at, deadline, protocol,
            )
            .await;
            let uid = topology.borrow().shard_uid(shard);
            match checked {
                Ok(addr) => {
                    tracing::info!(
                        shard = uid,
                        dead = %failed_at,
                        promoted = %addr,
                        "writes lost in flight on a dead master go to its promoted replica, which provably never got them"
                    );
                    proven = Some(addr);
                    retry = Retry::NewPrimary;
                }
                Err(why) => {
                    tracing::info!(
                        shard = uid,
                        dead = %failed_at,
                        why,
                        "writes lost in flight on a dead master stay of unknown outcome"
                    );
                    return still_unknown(topology, shard, failed_at, why);
                }
            }
        }
        if let Some(moved) = self.moved.get_mut(index) {
            *moved = true;
        }
        let mut unreachable: Option<crate::shard::ShardError> = None;
        loop {
            let next = match retry {
                Retry::NewPrimary | Retry::Unconfirmed(_) => {
                    next_primary(topology, shard, failed_at, deadline).await
                }
                Retry::Reachable => serving(topology, shard, deadline).await,
            };
            let Some(next) = next else {
                return match (retry, unreachable) {
                    (Retry::Reachable, Some(e)) => {
                        self.mark_expired(index);
                        (e.reply(), Verdict::of_shard_error(&e))
                    }
                    _ => no_longer_primary(topology, shard, failed_at, self.timeout),
                };
            };
            let opened =
                tokio::time::timeout_at(deadline, links.retry_conn_fresh(shard, &next, protocol))
                    .await;
            let opened = match opened {
                // An engine found again where one died may have been restarted as a replica of
                // the shard's new primary before this endpoint heard of the promotion: only a
                // primary takes the requests.
                Ok(Ok((conn, true)))
                    if retry == Retry::Reachable && Some(failed_at) == next.primary(shard) =>
                {
                    match conn.is_primary().await {
                        Ok(true) => Ok(Ok(())),
                        Ok(false) | Err(_) => {
                            links.drop_retry(shard);
                            if Instant::now() >= deadline {
                                return no_longer_primary(topology, shard, failed_at, self.timeout);
                            }
                            wait_for_change(topology, deadline).await;
                            continue;
                        }
                    }
                }
                Ok(Ok(_)) => Ok(Ok(())),
                Ok(Err(e)) => Ok(Err(e)),
                Err(elapsed) => Err(elapsed),
            };
            let conn = match opened {
                Ok(Ok(())) => match links.retry_conn(shard, &next, protocol).await {
                    Ok(conn) => conn,
                    Err(e) => return (e.reply(), Verdict::of_shard_error(&e)),
                },
                Ok(Err(e))
                    if retry == Retry::Reachable
                        && !self.is_expired(index)
                        && Instant::now() < deadline =>
                {
                    unreachable = Some(e);
                    wait_for_change(topology, deadline).await;
                    continue;
                }
                Ok(Err(e)) => {
                    if retry == Retry::Reachable {
                        self.mark_expired(index);
                    }
                    return (e.reply(), Verdict::of_shard_error(&e));
                }
                Err(_) => {
                    let e = unreachable.unwrap_or_else(|| crate::shard::ShardError::Unavailable {
                        shard: next.shard_uid(shard),
                        addr: next.primary(shard).unwrap_or(failed_at),
                        reason: "timed out connecting".into(),
                    });
                    self.mark_expired(index);
                    return (e.reply(), Verdict::of_shard_error(&e));
                }
            };
            if let Some(expired) = self.expired.get_mut(index) {
                *expired = false;
            }
            if proven.take().is_some_and(|addr| addr != conn.addr()) {
                // Another failover since the proof: that primary was not checked.
                return still_unknown(
                    topology,
                    shard,
                    failed_at,
                    "the shard's primary changed again",
                );
            }
            let (reply, verdict, refused) = exchange(conn, requests).await;
            if refused || verdict.refused_as_replica() {
                failed_at = conn.addr();
                let named = topology.borrow().primary(shard) == Some(failed_at);
                if named && Instant::now() < deadline {
                    // The store names it the primary already and its agent has not promoted
                    // the engine yet (an unplanned failover): ask it again shortly.
                    retry = Retry::Reachable;
                    wait_for_change(topology, deadline).await;
                } else {
                    retry = Retry::NewPrimary;
                }
                continue;
            }
            let read = requests
                .iter()
                .all(|r| crate::lookup_request(r).is_some_and(|s| !s.write));
            match Self::retry_of(verdict, read) {
                Some(Retry::Reachable) if Instant::now() < deadline => {
                    retry = Retry::Reachable;
                    failed_at = conn.addr();
                    wait_for_change(topology, deadline).await;
                }
                _ => return (reply, verdict),
            }
        }
    }

    /// Whether this session waited out the reconnection of shard `index` already.
    fn is_expired(&self, index: usize) -> bool {
        self.expired.get(index).copied().unwrap_or(false)
    }

    fn mark_expired(&mut self, index: usize) {
        if let Some(expired) = self.expired.get_mut(index) {
            *expired = true;
        }
    }
}

/// Waits, by `deadline`, for a primary of `shard` other than the dead master at `failed_at`
/// that answers `INFO replication` as a master promoted from the stream `position` is in, and
/// proves it applied nothing of it after `position` (see `outcome.rs`); its address. The
/// reason otherwise: writes lost in flight after `position` may have run there.
async fn confirm_absent(
    links: &mut ShardLinks,
    topology: &watch::Receiver<Topology>,
    shard: ShardIndex,
    position: &StreamPosition,
    failed_at: SocketAddr,
    deadline: Instant,
    protocol: Protocol,
) -> Result<SocketAddr, &'static str> {
    loop {
        let Some(next) = next_primary(topology, shard, failed_at, deadline).await else {
            return Err("no new primary was published within the hold");
        };
        let opened =
            tokio::time::timeout_at(deadline, links.retry_conn_fresh(shard, &next, protocol)).await;
        match opened {
            Err(_) => return Err("the new primary did not answer within the hold"),
            // Not reachable yet (its engine starting, or its address not serving yet).
            Ok(Err(_)) => {}
            Ok(Ok((conn, _))) => {
                let replication = tokio::time::timeout_at(deadline, conn.replication()).await;
                match replication {
                    Ok(Ok(Some(info))) if info.lacks_everything_after(position) => {
                        return Ok(conn.addr());
                    }
                    // Named the primary in the store, not promoted by its agent yet.
                    Ok(Ok(Some(info))) if !info.master => {}
                    Ok(Ok(Some(_))) => {
                        return Err(
                            "the promoted replica had received the master's stream beyond the \
                             offset read before the write, maybe the write itself",
                        )
                    }
                    Ok(Ok(None)) => {
                        return Err("the new primary did not tell its replication offsets")
                    }
                    Ok(Err(_)) => links.drop_retry(shard),
                    Err(_) => return Err("the new primary did not answer within the hold"),
                }
            }
        }
        if Instant::now() >= deadline {
            return Err("no new primary was promoted within the hold");
        }
        wait_for_change(topology, deadline).await;
    }
}

/// The answer to writes lost in flight whose absence from the shard's new primary could not be
/// proven (`why`): their outcome stays unknown, as when their connection broke.
fn still_unknown(
    topology: &watch::Receiver<Topology>,
    shard: ShardIndex,
    failed_at: SocketAddr,
    why: &str,
) -> (Value, Verdict) {
    let error = ShardError::Lost {
        shard: topology.borrow().shard_uid(shard),
        addr: failed_at,
        reason: format!("connection closed by the shard; {why}"),
        position: None,
    };
    (error.reply(), Verdict::Unknown { side: Side::Shard })
}

/// The answer, and its verdict, to requests that no primary of `shard` took within `timeout`
/// after the one at `failed_at` was no longer the primary.
fn no_longer_primary(
    topology: &watch::Receiver<Topology>,
    shard: ShardIndex,
    failed_at: SocketAddr,
    timeout: Duration,
) -> (Value, Verdict) {
    let name = topology.borrow().shard_name(shard);
    let reply = no_new_primary(&name, failed_at, timeout);
    let verdict = Verdict::NotExecuted {
        side: Side::Proxy,
        reason: Reason::NoNewPrimary,
    };
    (reply, verdict)
}

/// Sends `requests` over `conn` and reads their replies: the last one's, its verdict, and
/// whether an earlier one was refused as a replica.
async fn exchange(
    conn: &mut crate::shard::ShardConn,
    requests: &[Request],
) -> (Value, Verdict, bool) {
    for request in requests {
        conn.send(request);
    }
    conn.flush().await;
    let mut refused = false;
    for _ in 1..requests.len() {
        match conn.reply().await {
            Ok(reply) => refused |= Verdict::of_reply(&reply).refused_as_replica(),
            Err(e) => return (e.reply(), Verdict::of_shard_error(&e), refused),
        }
    }
    match conn.reply().await {
        Ok(reply) => {
            let verdict = Verdict::of_reply(&reply);
            (reply, verdict, refused)
        }
        Err(e) => (e.reply(), Verdict::of_shard_error(&e), refused),
    }
}

/// The latest topology that does not hold `shard`, by `deadline` (a switchover's hold is
/// waited out first).
async fn serving(
    topology: &watch::Receiver<Topology>,
    shard: ShardIndex,
    deadline: Instant,
) -> Option<Topology> {
    let mut rx = topology.clone();
    loop {
        {
            let topology = rx.borrow_and_update();
            if !topology.is_held(shard) {
                return Some(topology.clone());
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    }
}

/// Waits for a new topology, at most [`RECONNECT_EVERY`] and not past `deadline`.
async fn wait_for_change(topology: &watch::Receiver<Topology>, deadline: Instant) {
    let mut rx = topology.clone();
    let until = deadline.min(Instant::now() + RECONNECT_EVERY);
    let _ = tokio::time::timeout_at(until, rx.changed()).await;
}

/// The first topology, by `deadline`, naming a primary for `shard` other than `refused_by` and
/// not holding it. Reads a copy of the channel: the session adopts it between batches.
async fn next_primary(
    topology: &watch::Receiver<Topology>,
    shard: ShardIndex,
    refused_by: SocketAddr,
    deadline: Instant,
) -> Option<Topology> {
    let mut rx = topology.clone();
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

/// A whole transaction as it is resent: MULTI, the queued requests, EXEC.
pub(super) fn transaction_requests(queued: &[Request]) -> Vec<Request> {
    let mut requests = Vec::with_capacity(queued.len() + 2);
    requests.push(Request::new("MULTI", []));
    requests.extend(queued.iter().cloned());
    requests.push(Request::new("EXEC", []));
    requests
}

/// The answer to a request refused as a replica when no new primary was published in time.
fn no_new_primary(shard: &ShardName, refused_by: SocketAddr, timeout: Duration) -> Value {
    Value::error(format!(
        "TRYAGAIN {shard} at {refused_by} is no longer primary and no new primary was published within {} ms; the command was not executed",
        timeout.as_millis()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_certainly_not_executed_are_resent_and_lost_reads() {
        let refused = Verdict::NotExecuted {
            side: Side::Shard,
            reason: Reason::RefusedAsReplica,
        };
        let unreachable = Verdict::NotExecuted {
            side: Side::Shard,
            reason: Reason::Unreachable,
        };
        let lost = Verdict::Unknown { side: Side::Shard };
        let loading = Verdict::NotExecuted {
            side: Side::Shard,
            reason: Reason::Loading,
        };
        for read in [false, true] {
            assert_eq!(
                ResendPolicy::retry_of(loading, read),
                Some(Retry::Reachable)
            );
            assert_eq!(
                ResendPolicy::retry_of(refused, read),
                Some(Retry::NewPrimary)
            );
            assert_eq!(
                ResendPolicy::retry_of(unreachable, read),
                Some(Retry::Reachable)
            );
        }
        assert_eq!(ResendPolicy::retry_of(lost, true), Some(Retry::Reachable));
        assert_eq!(ResendPolicy::retry_of(lost, false), None, "outcome unknown");
        for verdict in [
            Verdict::OK,
            Verdict::Executed { error_reply: true },
            Verdict::REFUSED,
            Verdict::NotExecuted {
                side: Side::Proxy,
                reason: Reason::HoldExpired,
            },
        ] {
            for read in [false, true] {
                assert_eq!(ResendPolicy::retry_of(verdict, read), None, "{verdict:?}");
            }
        }
    }

    #[test]
    fn reads_are_asked_again_only_after_a_resend_in_the_batch() {
        let mut policy = ResendPolicy::new(2, Duration::from_secs(1));
        assert!(!policy.moved_in_batch(1));
        policy.moved[1] = true;
        assert!(policy.moved_in_batch(1) && !policy.moved_in_batch(0));
        policy.start_batch();
        assert!(!policy.moved_in_batch(1));
        policy.adopt(3);
        assert!(!policy.moved_in_batch(2) && !policy.moved_in_batch(9));
    }

    #[test]
    fn a_transaction_is_resent_whole() {
        let queued = [Request::new("SET", ["k".into(), "v".into()])];
        let names: Vec<_> = transaction_requests(&queued)
            .iter()
            .map(|r| r.name().to_owned())
            .collect();
        assert_eq!(names, ["MULTI", "SET", "EXEC"]);
    }

    #[test]
    fn giving_up_names_the_shard_by_uid_and_says_not_executed() {
        let shard = ShardName {
            uid: 7,
            slots: vec![(0, 8191)],
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 20001));
        assert_eq!(
            no_new_primary(&shard, addr, Duration::from_millis(1500)),
            Value::error("TRYAGAIN shard 7 (slots 0-8191) at 127.0.0.1:20001 is no longer primary and no new primary was published within 1500 ms; the command was not executed")
        );
    }
}
