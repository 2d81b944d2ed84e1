//! The resend policy: which requests go again to a shard's next primary, and sending them.
//!
//! Only a request *certainly not executed* is resent (DESIGN.md, "Data path", step 5): one a
//! demoted primary refused (`-READONLY`, `-UNBLOCKED`, `-EXECABORT` for `READONLY`), or one
//! whose shard could not be reached while the published topology already names another
//! primary (the session's topology was a moment old). A request whose outcome is unknown is
//! never resent. Reads are the one other case: a read pipelined after a write that went to the
//! shard's new primary in the same batch is asked again there, so a `SET k v; GET k` split by a
//! switchover reads `v`, not the demoted primary's older value.
//!
//! Resending waits, within the hold timeout, for a topology that names a primary other than
//! the one that refused, and goes on to the one after if that one refuses too.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_resp::{Protocol, Request, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::slot::ShardIndex;
use crate::topology::{ShardName, Topology};
use crate::verdict::{Reason, Side, Verdict};

use super::links::ShardLinks;

/// One client session's resend bookkeeping.
pub(super) struct ResendPolicy {
    /// Shards (by index) whose requests of this batch were resent to a new primary: the reads
    /// after them in the batch are asked there too.
    moved: Vec<bool>,
    /// How long a resend waits for a new primary.
    timeout: Duration,
}

impl ResendPolicy {
    /// Nothing resent yet, for `shard_count` shards; a resend waits at most `timeout` for a new
    /// primary.
    pub fn new(shard_count: u16, timeout: Duration) -> Self {
        ResendPolicy {
            moved: vec![false; usize::from(shard_count)],
            timeout,
        }
    }

    /// A new batch's replies are about to be read: nothing resent in it yet.
    pub fn start_batch(&mut self) {
        self.moved.iter_mut().for_each(|moved| *moved = false);
    }

    /// Follows a topology of `shard_count` shards.
    pub fn adopt(&mut self, shard_count: u16) {
        self.moved.resize(usize::from(shard_count), false);
    }

    /// Whether a request of this batch on shard `index` was resent to a new primary.
    pub fn moved_in_batch(&self, index: usize) -> bool {
        self.moved.get(index).copied().unwrap_or(false)
    }

    /// Whether a request a shard answered with `verdict` goes to the shard's next primary:
    /// refused by a demoted primary, or unreachable while the published topology names another
    /// primary (`moved`, asked only then). Nothing else, and never an unknown outcome.
    pub fn may_resend(verdict: Verdict, moved: impl FnOnce() -> bool) -> bool {
        verdict.refused_as_replica() || (verdict.unreachable() && moved())
    }

    /// Sends `requests` to `shard`'s next primary (the first a topology names other than
    /// `refused_by`), again to the one after if that one refuses them as a replica too, within
    /// the timeout; returns the last request's reply.
    pub async fn resend(
        &mut self,
        links: &mut ShardLinks,
        topology: &watch::Receiver<Topology>,
        shard: ShardIndex,
        requests: &[Request],
        refused_by: SocketAddr,
        protocol: Protocol,
    ) -> (Value, Verdict) {
        let deadline = Instant::now() + self.timeout;
        let mut refused_by = refused_by;
        if let Some(moved) = self.moved.get_mut(usize::from(shard.0)) {
            *moved = true;
        }
        loop {
            let Some(next) = next_primary(topology, shard, refused_by, deadline).await else {
                let name = topology.borrow().shard_name(shard);
                let reply = no_new_primary(&name, refused_by, self.timeout);
                let verdict = Verdict::NotExecuted {
                    side: Side::Proxy,
                    reason: Reason::NoNewPrimary,
                };
                return (reply, verdict);
            };
            let conn = match links.retry_conn(shard, &next, protocol).await {
                Ok(conn) => conn,
                Err(e) => return (e.reply(), Verdict::of_shard_error(&e)),
            };
            for request in requests {
                conn.send(request);
            }
            conn.flush().await;
            let mut refused = false;
            for _ in 1..requests.len() {
                match conn.reply().await {
                    Ok(reply) => refused |= Verdict::of_reply(&reply).refused_as_replica(),
                    Err(e) => return (e.reply(), Verdict::of_shard_error(&e)),
                }
            }
            let reply = match conn.reply().await {
                Ok(reply) => reply,
                Err(e) => return (e.reply(), Verdict::of_shard_error(&e)),
            };
            let verdict = Verdict::of_reply(&reply);
            if !(refused || verdict.refused_as_replica()) {
                return (reply, verdict);
            }
            refused_by = conn.addr();
        }
    }
}

/// Whether the latest published topology names a primary for `shard` other than `addr`.
pub(super) fn primary_moved(
    topology: &watch::Receiver<Topology>,
    shard: ShardIndex,
    addr: SocketAddr,
) -> bool {
    topology
        .borrow()
        .primary(shard)
        .is_some_and(|primary| primary != addr)
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
    fn only_requests_certainly_not_executed_are_resent() {
        let refused = Verdict::NotExecuted {
            side: Side::Shard,
            reason: Reason::RefusedAsReplica,
        };
        let unreachable = Verdict::NotExecuted {
            side: Side::Shard,
            reason: Reason::Unreachable,
        };
        let never = || panic!("the topology is only asked about an unreachable shard");
        assert!(ResendPolicy::may_resend(refused, never));
        assert!(ResendPolicy::may_resend(unreachable, || true));
        assert!(!ResendPolicy::may_resend(unreachable, || false));
        for verdict in [
            Verdict::OK,
            Verdict::Executed { error_reply: true },
            Verdict::Unknown { side: Side::Shard },
            Verdict::REFUSED,
            Verdict::NotExecuted {
                side: Side::Proxy,
                reason: Reason::HoldExpired,
            },
        ] {
            assert!(!ResendPolicy::may_resend(verdict, never), "{verdict:?}");
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
