//! The owner's control of a running endpoint, for an in-place handover (DESIGN.md, "Cluster
//! software, in place"): stop and resume accepting without closing the listening socket, ask
//! every session to stop at its next command boundary and hand itself over
//! ([`DetachedSession`]), or to close there instead, and adopt sessions detached from another
//! endpoint instance.
//!
//! The owner holds an [`EndpointControl`]; the accept loop ([`crate::serve_controlled`]) holds
//! the matching [`EndpointInbox`] and carries each request out between accepts. Each session
//! has its own signal channel (`SessionControl`), which it listens to only where it already
//! waits (for its client, for a published message, for a blocked reply): the data path pays
//! nothing for it while no handover runs.

use std::future::pending;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::handover::DetachedSession;

/// Why a detached session could not be adopted. Its sockets are closed.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// A socket could not be taken over by this process's I/O driver.
    #[error("cannot take over client {client_id}'s sockets: {source}")]
    Io {
        /// The client's id.
        client_id: u64,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The state names more or fewer engine connections than were passed.
    #[error(
        "client {client_id}: {described} pinned engine connections described, {passed} passed"
    )]
    Sockets {
        /// The client's id.
        client_id: u64,
        /// How many the state describes.
        described: usize,
        /// How many sockets came.
        passed: usize,
    },
    /// The state names a shard this endpoint's topology does not have.
    #[error("client {client_id}: shard index {shard} is not in this endpoint's topology")]
    UnknownShard {
        /// The client's id.
        client_id: u64,
        /// The shard index.
        shard: u16,
    },
    /// The blocked request's connection did not come along.
    #[error("client {client_id}: the connection its blocked request waits on was not passed")]
    BlockedWithoutConnection {
        /// The client's id.
        client_id: u64,
    },
    /// The endpoint stopped serving.
    #[error("the endpoint is no longer serving")]
    Stopped,
}

/// How sessions of one endpoint ended or moved, since it started.
///
/// A session's end is counted when the accept loop reaps its task, a moment after the end
/// itself (a [`DetachedSession`] may reach the owner just before it is counted here); a close
/// at a boundary is counted by the session before it ends, so an owner whose [`Detaching`]
/// ran out reads every close.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoverCounts {
    /// Client sessions running now (accepted or adopted, not ended).
    pub sessions: u64,
    /// Sessions handed over ([`DetachedSession`]s yielded).
    pub detached: u64,
    /// Sessions closed at a command boundary on the owner's request.
    pub closed_at_boundary: u64,
    /// Sessions adopted from another endpoint instance.
    pub adopted: u64,
}

/// The counters behind [`HandoverCounts`].
#[derive(Debug, Default)]
pub(crate) struct Counts {
    sessions: AtomicU64,
    detached: AtomicU64,
    closed_at_boundary: AtomicU64,
    adopted: AtomicU64,
}

impl Counts {
    /// A session started (`adopted`: taken over rather than accepted).
    pub fn started(&self, adopted: bool) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        if adopted {
            self.adopted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A session's task ended as `ended` says (`None`: it failed).
    pub fn ended(&self, ended: Option<Ended>) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        let counter = match ended {
            Some(Ended::Detached) => &self.detached,
            // Counted by the session itself: SessionControl::closing_at_boundary.
            Some(Ended::Closed) | Some(Ended::Client) | None => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HandoverCounts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HandoverCounts {
            sessions: load(&self.sessions),
            detached: load(&self.detached),
            closed_at_boundary: load(&self.closed_at_boundary),
            adopted: load(&self.adopted),
        }
    }
}

/// How a session's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The client left, quit, sent garbage, or the session closed it (its subscriptions
    /// moved away).
    Client,
    /// Handed over as a [`DetachedSession`]; the client's connection stays open.
    Detached,
    /// Closed at a command boundary on the owner's request.
    Closed,
}

/// What the owner asks of the sessions.
#[derive(Debug, Clone)]
pub(crate) enum Signal {
    /// Stop at the next command boundary and send yourself here.
    Detach(mpsc::UnboundedSender<DetachedSession>),
    /// Close at the next command boundary.
    Close,
    /// Forget an earlier request: keep serving.
    Serve,
}

/// What a session was last asked.
#[derive(Debug, Default)]
enum Asked {
    /// Nothing: serve.
    #[default]
    Serve,
    /// Detach, sending the session through this channel.
    Detach(mpsc::UnboundedSender<DetachedSession>),
    /// Close at the next boundary.
    Close,
}

/// One session's end of the owner's signals.
#[derive(Debug, Default)]
pub(crate) struct SessionControl {
    /// `None` once the endpoint can no longer signal (or never could).
    rx: Option<mpsc::UnboundedReceiver<Signal>>,
    asked: Asked,
    /// The endpoint's counts, where the session records its own close at a boundary.
    counts: Arc<Counts>,
}

impl SessionControl {
    /// A session the endpoint signals through `rx` and counts in `counts`.
    pub fn new(rx: mpsc::UnboundedReceiver<Signal>, counts: Arc<Counts>) -> Self {
        SessionControl {
            rx: Some(rx),
            asked: Asked::Serve,
            counts,
        }
    }

    /// Counts the session's close at a command boundary, before it lets go of the owner's
    /// request: an owner that saw every session asked detach or end reads a count that
    /// includes this close (the accept loop reaps the task only a moment later).
    pub fn closing_at_boundary(&self) {
        self.counts
            .closed_at_boundary
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for the owner's next signals and records them (every one already queued: the
    /// latest wins); pending forever once no more can come. Cancel safe.
    pub async fn listen(&mut self) {
        let Some(rx) = self.rx.as_mut() else {
            return pending().await;
        };
        let Some(signal) = rx.recv().await else {
            self.rx = None;
            return pending().await;
        };
        self.note(signal);
        while let Some(signal) = self.rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
            self.note(signal);
        }
    }

    /// Records a signal: the latest request wins.
    pub fn note(&mut self, signal: Signal) {
        self.asked = match signal {
            Signal::Detach(to) => Asked::Detach(to),
            Signal::Close => Asked::Close,
            Signal::Serve => Asked::Serve,
        };
    }

    /// Whether the session is asked to stop (detach or close) at its next boundary.
    pub fn stopping(&self) -> bool {
        !matches!(self.asked, Asked::Serve)
    }

    /// Whether the session is asked to detach (and its owner still listens).
    pub fn wants_detach(&self) -> bool {
        matches!(&self.asked, Asked::Detach(to) if !to.is_closed())
    }

    /// Sends the detached session to the owner; `false` if the owner stopped listening (the
    /// session, sockets and all, is then dropped: its client sees the connection close).
    pub fn send(&mut self, detached: DetachedSession) -> bool {
        match std::mem::take(&mut self.asked) {
            Asked::Detach(to) => to.send(detached).is_ok(),
            _ => false,
        }
    }
}

/// A request to the accept loop.
pub(crate) enum Command {
    /// Stop accepting; answered once no accept will follow.
    StopAccepting(oneshot::Sender<()>),
    /// Accept again.
    ResumeAccepting,
    /// Pass a signal to every session; answered with how many there were.
    Signal(Signal, oneshot::Sender<usize>),
    /// Run a detached session here; answered with its client id.
    Adopt(
        Box<DetachedSession>,
        oneshot::Sender<Result<u64, AdoptError>>,
    ),
}

/// The owner's handle on a running endpoint: cheap to clone.
///
/// Exists for the in-place handover: the old daemon stops accepting (the new one, holding a
/// duplicate of the listening socket, accepts instead), detaches every session at its next
/// command boundary and passes each to the new daemon, which adopts it; what cannot move
/// within the owner's bound is closed at its next command boundary. An aborted handover
/// resumes accepting and adopts back what was detached. A sketch, with `old` and `new` two
/// endpoints on the same listening socket:
///
/// ```no_run
/// # async fn handover(old: flotilla_proxy::EndpointControl, new: flotilla_proxy::EndpointControl) {
/// # let bound = std::time::Duration::from_secs(5);
/// old.stop_accepting().await;
/// let mut detaching = old.detach_all().await;
/// let deadline = tokio::time::sleep(bound);
/// tokio::pin!(deadline);
/// loop {
///     tokio::select! {
///         next = detaching.next() => match next {
///             Some(session) => { new.adopt(session).await.ok(); }
///             None => break,
///         },
///         () = &mut deadline => { old.close_at_boundary().await; }
///     }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct EndpointControl {
    commands: mpsc::UnboundedSender<Command>,
    counts: Arc<Counts>,
}

/// The accept loop's end of an [`EndpointControl`]: pass it to [`crate::serve_controlled`].
pub struct EndpointInbox {
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) counts: Arc<Counts>,
}

impl EndpointInbox {
    /// The next request; pending forever once every [`EndpointControl`] is gone.
    pub(crate) async fn next(&mut self) -> Command {
        match self.commands.recv().await {
            Some(command) => command,
            None => pending().await,
        }
    }
}

/// A control handle and the inbox the endpoint it controls serves with.
pub fn endpoint_control() -> (EndpointControl, EndpointInbox) {
    let (commands, rx) = mpsc::unbounded_channel();
    let counts = Arc::new(Counts::default());
    let control = EndpointControl {
        commands,
        counts: counts.clone(),
    };
    (
        control,
        EndpointInbox {
            commands: rx,
            counts,
        },
    )
}

/// The sessions asked to detach, arriving as each reaches its command boundary.
#[derive(Debug)]
pub struct Detaching {
    rx: mpsc::UnboundedReceiver<DetachedSession>,
    asked: usize,
}

impl Detaching {
    /// How many sessions were asked.
    pub fn asked(&self) -> usize {
        self.asked
    }

    /// The next detached session; `None` once every session asked has detached or ended
    /// (closed at a boundary, or its client left).
    pub async fn next(&mut self) -> Option<DetachedSession> {
        self.rx.recv().await
    }
}

impl EndpointControl {
    /// Stops accepting connections; returns once no accept will follow. The listening socket
    /// stays open: connections arriving meanwhile wait in its backlog (for another endpoint
    /// on the same socket, or for [`EndpointControl::resume_accepting`]).
    pub async fn stop_accepting(&self) {
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::StopAccepting(done)).is_ok() {
            let _ = stopped.await;
        }
    }

    /// Accepts connections again (an aborted handover).
    pub fn resume_accepting(&self) {
        let _ = self.commands.send(Command::ResumeAccepting);
    }

    /// Asks every session running now to stop at its next command boundary and hand itself
    /// over; they arrive through the returned [`Detaching`]. A session parked on a
    /// switchover hold waits for the release first (bounded by the hold timeout); a client
    /// blocked in a blocking command on its own engine connection moves while blocked.
    pub async fn detach_all(&self) -> Detaching {
        let (to, rx) = mpsc::unbounded_channel();
        let asked = self.signal(Signal::Detach(to)).await;
        Detaching { rx, asked }
    }

    /// Asks every session still running to close at its next command boundary instead (the
    /// owner's bound ran out); returns how many were asked. Nothing is cut mid-reply; the
    /// closes are counted in [`HandoverCounts::closed_at_boundary`].
    pub async fn close_at_boundary(&self) -> usize {
        self.signal(Signal::Close).await
    }

    /// Withdraws an earlier [`EndpointControl::detach_all`] or
    /// [`EndpointControl::close_at_boundary`] from the sessions that have not acted on it yet
    /// (an aborted handover); returns how many sessions were told.
    pub async fn keep_serving(&self) -> usize {
        self.signal(Signal::Serve).await
    }

    /// Runs a session detached from another endpoint instance (or from this one, when a
    /// handover is aborted) here; returns its client id. The process-wide client id counter
    /// is raised past it.
    pub async fn adopt(&self, session: DetachedSession) -> Result<u64, AdoptError> {
        let (done, adopted) = oneshot::channel();
        self.commands
            .send(Command::Adopt(Box::new(session), done))
            .map_err(|_| AdoptError::Stopped)?;
        adopted.await.unwrap_or(Err(AdoptError::Stopped))
    }

    /// How the endpoint's sessions ended or moved so far.
    pub fn counts(&self) -> HandoverCounts {
        self.counts.snapshot()
    }

    async fn signal(&self, signal: Signal) -> usize {
        let (done, told) = oneshot::channel();
        if self.commands.send(Command::Signal(signal, done)).is_err() {
            return 0;
        }
        told.await.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_latest_request_wins_and_a_gone_owner_stops_detaching() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut control = SessionControl::new(rx, Arc::default());
        assert!(!control.stopping());
        let (to, owner) = mpsc::unbounded_channel();
        tx.send(Signal::Detach(to)).unwrap();
        control.listen().await;
        assert!(control.stopping() && control.wants_detach());
        control.note(Signal::Close);
        assert!(control.stopping() && !control.wants_detach());
        let (again, _listening) = mpsc::unbounded_channel();
        tx.send(Signal::Detach(again)).unwrap();
        tx.send(Signal::Serve).unwrap();
        control.listen().await;
        assert!(!control.stopping(), "the latest queued signal wins");
        let (to, _) = mpsc::unbounded_channel();
        control.note(Signal::Detach(to));
        assert!(
            control.stopping() && !control.wants_detach(),
            "nobody listens"
        );
        drop(owner);
        drop(tx);
        let next = tokio::time::timeout(std::time::Duration::from_millis(20), control.listen());
        assert!(next.await.is_err(), "no signal once the endpoint is gone");
        assert!(control.rx.is_none());
    }

    #[test]
    fn ends_are_counted_by_kind() {
        let counts = Arc::new(Counts::default());
        for adopted in [false, true, false, false] {
            counts.started(adopted);
        }
        counts.ended(Some(Ended::Detached));
        let (_, rx) = mpsc::unbounded_channel();
        SessionControl::new(rx, counts.clone()).closing_at_boundary();
        counts.ended(Some(Ended::Closed));
        counts.ended(Some(Ended::Client));
        let snap = counts.snapshot();
        assert_eq!(
            snap,
            HandoverCounts {
                sessions: 1,
                detached: 1,
                closed_at_boundary: 1,
                adopted: 1,
            }
        );
    }
}
