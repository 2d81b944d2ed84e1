//! The hold gate: a client's request for a shard held for a switchover is parked, with
//! everything the client sent after it (its order is kept across shards), until a topology
//! releases the shard or the hold outlasts its bounds: then the shard's requests are answered
//! `-TRYAGAIN ... not executed` without being sent, until the next topology arrives.
//!
//! The bounds are [`ProxyOptions`]'s: how long a parked request waits, and how many bytes of
//! the client's further requests are read meanwhile (beyond that they wait in its socket).

use std::io;
use std::time::Duration;

use flotilla_resp::{Request, Value};
use tokio::time::Instant;

use crate::server::ProxyOptions;
use crate::slot::ShardIndex;
use crate::topology::ShardName;
use crate::verdict::{Reason, Side, Verdict};

use super::{ClientIo, TopologyView};

/// What the gate does with a request.
pub(super) enum Admit {
    /// Route it now.
    Pass(Request),
    /// Parked until its shard is released: the batch stops here.
    Parked,
    /// Its shard's hold was waited out already: answer it this way, without sending it.
    Expired(ShardIndex),
}

/// What ended one wait for a release.
pub(super) enum Waited {
    /// More of the client's requests were read, or nothing worth acting on happened.
    Read,
    /// A new topology was published: adopt it, then look again.
    Topology,
    /// The hold outlasted the timeout: its requests are now answered `-TRYAGAIN`.
    TimedOut,
    /// The client left.
    ClientGone,
}

/// One client session's parked request and waited-out holds.
pub(super) struct HoldGate {
    /// A request for a held shard, waiting for the release with everything read after it.
    parked: Option<(Request, ShardIndex)>,
    /// Held shards whose hold this client waited out: their requests get `-TRYAGAIN` at once
    /// until the next topology arrives.
    expired: Vec<ShardIndex>,
    timeout: Duration,
    max_bytes: usize,
}

impl HoldGate {
    /// Nothing parked, within `options`' bounds.
    pub fn new(options: &ProxyOptions) -> Self {
        HoldGate {
            parked: None,
            expired: Vec::new(),
            timeout: options.hold_timeout,
            max_bytes: options.hold_max_bytes,
        }
    }

    /// Lets `request` through unless it is bound for `held`, a held shard: then it is parked,
    /// or refused if that hold was waited out already.
    pub fn admit(&mut self, request: Request, held: Option<ShardIndex>) -> Admit {
        match held {
            None => Admit::Pass(request),
            Some(shard) if self.expired.contains(&shard) => Admit::Expired(shard),
            Some(shard) => {
                self.parked = Some((request, shard));
                Admit::Parked
            }
        }
    }

    /// The parked request, to be routed again (its shard was released or its hold expired).
    pub fn take_parked(&mut self) -> Option<Request> {
        self.parked.take().map(|(request, _)| request)
    }

    /// The shard the parked request waits for.
    pub fn parked_shard(&self) -> Option<ShardIndex> {
        self.parked.as_ref().map(|(_, shard)| *shard)
    }

    /// A new topology: holds waited out are forgotten (it may hold or release them anew).
    pub fn adopt(&mut self) {
        self.expired.clear();
    }

    /// When a wait for a release that starts now gives up.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// The answer to a request for a shard whose hold was waited out, and its verdict.
    pub fn expired_reply(&self, shard: &ShardName) -> (Value, Verdict) {
        let reply = Value::error(format!(
            "TRYAGAIN {shard} is held for a switchover for more than {} ms; the command was not executed",
            self.timeout.as_millis()
        ));
        let verdict = Verdict::NotExecuted {
            side: Side::Proxy,
            reason: Reason::HoldExpired,
        };
        (reply, verdict)
    }

    /// Waits for the next thing that may end the wait for `shard`'s release by `deadline`:
    /// a topology, the deadline (the hold is then recorded as waited out), or the client's
    /// bytes, read up to the byte bound.
    pub async fn wait(
        &mut self,
        shard: ShardIndex,
        deadline: Instant,
        view: &mut TopologyView,
        client: &mut ClientIo,
    ) -> io::Result<Waited> {
        let room = client.input.len() < self.max_bytes;
        let open = view.is_open();
        tokio::select! {
            changed = view.changed(), if open => {
                Ok(if changed { Waited::Topology } else { Waited::Read })
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!(shard = view.current.shard_uid(shard), "hold timed out");
                self.expired.push(shard);
                Ok(Waited::TimedOut)
            }
            read = client.read(), if room => {
                Ok(if read? { Waited::Read } else { Waited::ClientGone })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    fn request() -> Request {
        Request::new("SET", ["k".into(), "v".into()])
    }

    #[test]
    fn requests_for_held_shards_are_parked_then_refused_once_the_hold_expired() {
        let options = ProxyOptions {
            hold_timeout: Duration::from_millis(300),
            ..ProxyOptions::default()
        };
        let mut gate = HoldGate::new(&options);
        assert!(matches!(gate.admit(request(), None), Admit::Pass(_)));
        assert!(matches!(
            gate.admit(request(), Some(ShardIndex(1))),
            Admit::Parked
        ));
        assert_eq!(gate.parked_shard(), Some(ShardIndex(1)));
        assert_eq!(gate.take_parked(), Some(request()));
        assert_eq!(gate.parked_shard(), None);
        gate.expired.push(ShardIndex(1));
        assert!(matches!(
            gate.admit(request(), Some(ShardIndex(1))),
            Admit::Expired(ShardIndex(1))
        ));
        assert!(matches!(
            gate.admit(request(), Some(ShardIndex(0))),
            Admit::Parked
        ));
        gate.adopt();
        gate.take_parked();
        assert!(matches!(
            gate.admit(request(), Some(ShardIndex(1))),
            Admit::Parked
        ));
    }

    #[test]
    fn an_expired_hold_is_answered_not_executed_naming_the_shard() {
        let options = ProxyOptions {
            hold_timeout: Duration::from_millis(300),
            ..ProxyOptions::default()
        };
        let gate = HoldGate::new(&options);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let topology = Topology::even(None, "", vec![addr, addr])
            .unwrap()
            .with_uids(1, vec![7, 8])
            .unwrap();
        let (reply, verdict) = gate.expired_reply(&topology.shard_name(ShardIndex(0)));
        assert_eq!(
            reply,
            Value::error("TRYAGAIN shard 7 (slots 0-8191) is held for a switchover for more than 300 ms; the command was not executed")
        );
        assert!(verdict.not_executed() && !verdict.refused_as_replica());
    }
}
