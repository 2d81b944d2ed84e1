//! The session's side of the in-place handover: taking its state at a command boundary (or
//! while its one outstanding request blocks), handing the client socket and the pinned engine
//! sockets over with it, and rebuilding a session from them in another endpoint instance.
//!
//! Nothing is sent to the client or the engines on the way: the client's unread bytes, the
//! bytes read from each pinned engine connection and not passed on, and a blocked request's
//! awaited reply all travel in the state, so the new session carries on where this one
//! stopped.

use std::io;

use bytes::Bytes;
use flotilla_resp::Request;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::control::{AdoptError, Ended, SessionControl};
use crate::handover::{
    protocol_of, BlockedState, DetachedSession, PinnedPurpose, SessionState, ShardSubscriptions,
};
use crate::pubsub::Subscriptions;
use crate::server::ProxyOptions;
use crate::shard::ShardConn;
use crate::shared::SharedPool;
use crate::slot::ShardIndex;
use crate::stats::EndpointStats;
use crate::topology::Topology;

use super::replies::{Pending, Source};
use super::transaction::TxState;
use super::Session;

impl Session {
    /// Whether every request read so far is answered: no reply pending, nothing parked or
    /// deferred, not closing. The client sees the session stop (or close) between replies.
    pub(super) fn is_between_replies(&self) -> bool {
        self.replies.is_empty()
            && self.hold.parked_shard().is_none()
            && self.deferred.is_none()
            && !self.closing
    }

    /// The session's state for an in-place handover, taken at a command boundary: every
    /// request read has been answered, none is parked, deferred or half decoded, and every
    /// pinned connection's unread bytes can travel. `None` elsewhere (the handover then waits
    /// for the next boundary).
    pub(super) fn capture(&self) -> Option<SessionState> {
        if !self.is_between_replies() {
            return None;
        }
        self.capture_with(None)
    }

    /// The session's state while its one outstanding request, `blocked` (the batch's last,
    /// given back by [`super::replies::ReplyQueue::resolve_all`]), waits for a reply on its own
    /// connection; `None` when it cannot move now (the session then waits for the reply).
    pub(super) fn capture_blocked(&self, blocked: &Pending) -> Option<SessionState> {
        if self.client.stream.is_tls() || self.tracking.pins() {
            return None;
        }
        let Pending::Blocking(source, _) = blocked else {
            return None;
        };
        let (index, request, write) = match source {
            Source::Write(index, request) => (index, request, true),
            Source::Read(index, request) => (index, request, false),
            Source::Shard(_) | Source::Failed(_) | Source::Unsent(..) => return None,
        };
        if !self.is_between_replies() {
            return None;
        }
        self.capture_with(Some(BlockedState {
            shard: u16::try_from(*index).ok()?,
            request: request.argv().iter().map(|a| a.to_vec()).collect(),
            write,
        }))
    }

    fn capture_with(&self, blocked: Option<BlockedState>) -> Option<SessionState> {
        if self.client.decoder.is_mid_request() {
            return None;
        }
        let topology = &self.view.current;
        let (transaction, watch) = self.tx.capture();
        let (subscriptions, subscribers) = self.subs.capture(topology)?;
        let mut pinned = Vec::with_capacity(subscribers.len() + 2);
        let watched = self.tx.current_watch();
        if let Some(pin) = watched.and_then(|w| self.links.pinned_watch(&w, topology)) {
            let pin = pin?;
            debug_assert!(
                blocked.is_some() || pin.buffered.is_empty(),
                "a watch connection has nothing pending at a command boundary"
            );
            pinned.push(pin);
        }
        if let Some(blocked) = &blocked {
            // The watch's connection, when the request blocks on that one.
            if !pinned.iter().any(|p| p.shard == blocked.shard) {
                let index = usize::from(blocked.shard);
                pinned.push(self.links.pin(index, PinnedPurpose::Blocked, topology)?);
            }
        }
        pinned.extend(subscribers);
        Some(SessionState {
            client_id: self.state.id,
            authenticated: self.state.authenticated,
            protocol: crate::handover::protocol_number(self.state.protocol),
            name: self.state.name.as_ref().map(|n| n.to_vec()),
            shared_connections: self.links.uses_shared(),
            subscriptions,
            transaction,
            watch,
            pinned,
            unread: self.client.input.to_vec(),
            blocked,
        })
    }

    /// Hands the session over with `state` (from [`Session::capture`] or
    /// [`Session::capture_blocked`]): the client socket and the pinned engine sockets leave
    /// this process's I/O driver, open, and go to the owner.
    pub(super) fn detach(mut self, state: SessionState) -> io::Result<Ended> {
        let mut engines = Vec::with_capacity(state.pinned.len());
        for pin in &state.pinned {
            let index = usize::from(pin.shard);
            let conn = match pin.purpose {
                PinnedPurpose::Watch | PinnedPurpose::Blocked => self.links.take_own(index),
                PinnedPurpose::Subscriber => self.subs.take_conn(index),
            };
            let conn = conn.ok_or_else(|| io::Error::other("a pinned connection is missing"))?;
            engines.push(conn.into_std()?);
        }
        let client = self.client.stream.into_std()?;
        let detached = DetachedSession {
            client,
            state,
            engines,
        };
        if !self.control.send(detached) {
            let gone = "the endpoint's owner stopped taking detached sessions";
            return Err(io::Error::other(gone));
        }
        Ok(Ended::Detached)
    }

    /// A session rebuilt from one detached from another endpoint instance (or from this one,
    /// when a handover is aborted): the same client id, authentication, protocol, name,
    /// subscriptions on their connections, transaction and watch, and first the reply of a
    /// request it was blocked in. A watch whose connection did not come along is lost (EXEC
    /// answers null, as after a reconnect).
    pub fn resume(
        detached: DetachedSession,
        topology_rx: watch::Receiver<Topology>,
        options: ProxyOptions,
        stats: EndpointStats,
        shared: Option<SharedPool>,
        control: SessionControl,
    ) -> Result<Session, AdoptError> {
        let DetachedSession {
            client,
            state,
            engines,
        } = detached;
        let client_id = state.client_id;
        let io = |source| AdoptError::Io { client_id, source };
        if engines.len() != state.pinned.len() {
            return Err(AdoptError::Sockets {
                client_id,
                described: state.pinned.len(),
                passed: engines.len(),
            });
        }
        client.set_nonblocking(true).map_err(io)?;
        let stream = TcpStream::from_std(client).map_err(io)?;
        let shared = shared.filter(|_| state.shared_connections);
        let mut session = Session::new(
            stream,
            client_id,
            topology_rx,
            options,
            stats,
            shared,
            control,
        );
        session.state.authenticated = state.authenticated;
        session.state.protocol = protocol_of(state.protocol);
        session.state.name = state.name.map(Bytes::from);
        session.listed.rename(session.state.name_text());
        if state.shared_connections {
            session.links.mark_used_shared();
        }
        session.client.input.extend_from_slice(&state.unread);

        let topology = session.view.current.clone();
        let mut subscribers = Vec::new();
        let mut watch_generation = 0;
        for (pin, socket) in state.pinned.iter().zip(engines) {
            if pin.shard >= topology.shard_count() {
                return Err(AdoptError::UnknownShard {
                    client_id,
                    shard: pin.shard,
                });
            }
            let uid = topology.shard_uid(ShardIndex(pin.shard));
            let generation = session.links.next_generation();
            let protocol = protocol_of(pin.protocol);
            let conn = ShardConn::adopt(uid, pin.addr, socket, protocol, generation, &pin.buffered)
                .map_err(io)?;
            let index = usize::from(pin.shard);
            match pin.purpose {
                PinnedPurpose::Watch => {
                    watch_generation = generation;
                    session.links.install_own(index, conn);
                }
                PinnedPurpose::Blocked => session.links.install_own(index, conn),
                PinnedPurpose::Subscriber => {
                    let names = state
                        .subscriptions
                        .iter()
                        .find(|s| s.shard == pin.shard)
                        .cloned()
                        .unwrap_or(ShardSubscriptions {
                            shard: pin.shard,
                            ..ShardSubscriptions::default()
                        });
                    subscribers.push((names, conn));
                }
            }
        }
        session.subs = Subscriptions::restore(subscribers);
        session.tx = TxState::restore(state.transaction, state.watch, watch_generation);
        if let Some(blocked) = state.blocked {
            session.await_blocked(blocked, client_id)?;
        }
        Ok(session)
    }

    /// Queues the reply of the request the client was blocked in when it moved: the first
    /// thing the resumed session writes.
    fn await_blocked(&mut self, blocked: BlockedState, client_id: u64) -> Result<(), AdoptError> {
        let index = usize::from(blocked.shard);
        let argv = blocked.request.into_iter().map(Bytes::from).collect();
        let (Some(_), Some(request)) = (self.links.addr(index), Request::from_argv(argv)) else {
            return Err(AdoptError::BlockedWithoutConnection { client_id });
        };
        let source = if blocked.write {
            Source::Write(index, request)
        } else {
            Source::Read(index, request)
        };
        self.replies
            .push(Pending::Blocking(source, self.state.protocol));
        Ok(())
    }
}
