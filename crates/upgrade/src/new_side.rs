//! The new daemon's side of an in-place upgrade: greet the predecessor, take its listening
//! sockets and the cluster state, serve the endpoints from that state at once, adopt each
//! client connection it passes, and open the store once the predecessor is gone.
//!
//! Whatever the predecessor did not pass (it died early, or was killed -9 mid-way) the new
//! daemon makes itself: it binds the missing listeners and follows the store from the start,
//! so a node always ends up served by the new daemon once the old one is gone.

use std::net::TcpListener;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use flotilla_endpoints::Endpoints;
use flotilla_handover::{Channel, ChannelError, Message, Service, HANDOVER_PROTOCOL};
use flotilla_model::ClusterState;
use flotilla_proxy::{DetachedSession, SessionState};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::PassedServices;

/// How long the predecessor may take to answer the greeting and pass its listeners.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the endpoints may take to serve the passed listeners before accepting is declared.
const SERVE_PASSED_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the predecessor may take to be gone once it closed the channel.
const PREDECESSOR_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the predecessor passed before the sessions.
#[derive(Debug, Default)]
pub struct Inheritance {
    /// The cluster state as the predecessor had applied it.
    pub state: Option<ClusterState>,
    /// The first client id this daemon may hand out.
    pub next_client_id: u64,
    /// The service listeners passed.
    pub services: PassedServices,
    /// The endpoint listeners passed.
    pub endpoints: Vec<TcpListener>,
    /// The predecessor's pid.
    pub predecessor_pid: u32,
}

/// The new daemon's end of the handover, after the greeting.
pub struct Successor {
    channel: Arc<Channel>,
    /// The predecessor's pid.
    pub predecessor_pid: u32,
}

/// What following the predecessor brought.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    /// Sessions adopted.
    pub adopted: u64,
    /// Sessions that could not be adopted (their endpoint is not served here) and were closed.
    pub refused: u64,
    /// Whether the predecessor said all sessions were passed (else it died mid-way).
    pub completed: bool,
}

/// Greets the predecessor on the inherited descriptor `fd` and takes what it passes before the
/// sessions. Never fails: on any trouble it returns what it got (possibly nothing) and no
/// successor, and the daemon starts from scratch for the rest.
pub async fn greet(fd: RawFd, software_version: &str) -> (Option<Successor>, Inheritance) {
    let predecessor_pid = std::os::unix::process::parent_id();
    let mut inheritance = Inheritance {
        predecessor_pid,
        next_client_id: 1,
        ..Inheritance::default()
    };
    // SAFETY: the predecessor passed this descriptor for the handover and nothing else uses it.
    let channel = match unsafe { Channel::from_raw_fd(fd) } {
        Ok(channel) => Arc::new(channel),
        Err(e) => {
            tracing::error!(fd, error = %e, "the handover descriptor is unusable; starting afresh");
            return (None, inheritance);
        }
    };
    let hello = Message::Hello {
        protocol: HANDOVER_PROTOCOL,
        software_version: software_version.into(),
        pid: std::process::id(),
    };
    if let Err(e) = channel.send(&hello, &[]).await {
        tracing::error!(error = %e, "could not greet the previous daemon; starting afresh");
        return (None, inheritance);
    }
    match receive_inheritance(&channel, &mut inheritance).await {
        Ok(()) => (
            Some(Successor {
                channel,
                predecessor_pid,
            }),
            inheritance,
        ),
        Err(e) => {
            tracing::error!(error = %e, "the previous daemon's handover broke off; binding what it did not pass");
            (None, inheritance)
        }
    }
}

async fn receive_inheritance(channel: &Channel, into: &mut Inheritance) -> Result<(), String> {
    let (listeners, state, next) = match timeout(WELCOME_TIMEOUT, channel.recv()).await {
        Ok(Ok((
            Message::Welcome {
                next_client_id,
                state,
                listeners,
                ..
            },
            _,
        ))) => (listeners, state, next_client_id),
        other => return Err(format!("no welcome: {}", describe(other))),
    };
    into.state = Some(
        serde_json::from_value(state)
            .map_err(|e| format!("the state passed does not decode: {e}"))?,
    );
    into.next_client_id = next;
    for _ in 0..listeners {
        match timeout(WELCOME_TIMEOUT, channel.recv()).await {
            Ok(Ok((Message::Listener { service, addr }, mut fds))) if fds.len() == 1 => {
                let listener = TcpListener::from(fds.remove(0));
                tracing::info!(?service, %addr, "took over a listening socket");
                match service {
                    Service::Endpoint { .. } => into.endpoints.push(listener),
                    other => into.services.insert(&other, listener),
                }
            }
            other => return Err(format!("expected a listener: {}", describe(other))),
        }
    }
    Ok(())
}

fn describe(
    received: Result<Result<(Message, Vec<OwnedFd>), ChannelError>, tokio::time::error::Elapsed>,
) -> String {
    match received {
        Err(_) => "no message in time".into(),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok((message, fds))) => format!("{message:?} with {} descriptor(s)", fds.len()),
    }
}

impl Successor {
    /// Tells the predecessor this daemon serves the endpoints it passed (once they are served,
    /// within a bound), so it stops accepting and starts passing sessions.
    pub async fn accepting(&self, endpoints: &Endpoints) -> Result<(), ChannelError> {
        let deadline = tokio::time::Instant::now() + SERVE_PASSED_TIMEOUT;
        while endpoints.inherited_waiting() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.channel.send(&Message::Accepting, &[]).await
    }

    /// Adopts the sessions the predecessor passes and follows its cluster state into `feed`,
    /// until the predecessor closes the channel (it exits after the sessions, or died).
    pub async fn follow(
        self,
        feed: &watch::Sender<Arc<ClusterState>>,
        endpoints: &Endpoints,
    ) -> Followed {
        let mut followed = Followed::default();
        loop {
            match self.channel.recv().await {
                Ok((Message::State { state }, _)) => match serde_json::from_value(state) {
                    Ok(state) => {
                        feed.send_replace(Arc::new(state));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a state passed by the previous daemon does not decode")
                    }
                },
                Ok((Message::Session { endpoint, session }, fds)) => {
                    if adopt(endpoints, endpoint.port(), session, fds).await {
                        followed.adopted += 1;
                    } else {
                        followed.refused += 1;
                    }
                }
                Ok((
                    Message::SessionsDone {
                        moved,
                        closed,
                        took_ms,
                    },
                    _,
                )) => {
                    tracing::info!(
                        moved,
                        closed,
                        took_ms,
                        "the previous daemon passed its sessions"
                    );
                    followed.completed = true;
                }
                Ok((other, _)) => tracing::warn!(?other, "unexpected handover message"),
                Err(ChannelError::Closed) => break,
                Err(e) => {
                    tracing::error!(error = %e, "handover channel failed");
                    break;
                }
            }
        }
        followed
    }
}

/// Waits (bounded) until `pid` no longer runs.
pub async fn wait_gone(pid: u32) -> bool {
    let deadline = tokio::time::Instant::now() + PREDECESSOR_EXIT_TIMEOUT;
    while flotilla_engine::pid_running(pid) {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Rebuilds one passed session in the endpoint listening on `port`.
async fn adopt(
    endpoints: &Endpoints,
    port: u16,
    session: serde_json::Value,
    mut fds: Vec<OwnedFd>,
) -> bool {
    let state: SessionState = match serde_json::from_value(session) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(port, error = %e, "a passed session does not decode; closing its connection");
            return false;
        }
    };
    if fds.is_empty() {
        tracing::error!(port, "a passed session came without its client socket");
        return false;
    }
    let client = std::net::TcpStream::from(fds.remove(0));
    let engines = fds.into_iter().map(std::net::TcpStream::from).collect();
    let Some(handle) = endpoints.on_port(port) else {
        tracing::error!(
            port,
            client = state.client_id,
            "a session came for an endpoint not served here; closing it"
        );
        return false;
    };
    let detached = DetachedSession {
        client,
        state,
        engines,
    };
    match handle.control.adopt(detached).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(port, error = %e, "could not adopt a passed session");
            false
        }
    }
}
