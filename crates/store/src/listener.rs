//! The node's RPC listener: TLS and plaintext on one port, told apart by the first byte.
//!
//! A TLS connection starts with a handshake record (0x16); anything else is plaintext HTTP.
//! Plaintext is taken only while the caller's policy allows it (a cluster with 0.1.0 nodes, or
//! nodes that have no certificate yet), and is then closed unread. Every request carries the
//! [`Channel`] it came by, so routes can tell a peer that presented a certificate from the
//! cluster CA from one that did not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a new connection may take to send its first byte, and a TLS handshake to finish.
const FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);

/// How a request reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Plaintext HTTP (0.1.0 peers, nodes without certificates, the REST API's plain port).
    Plain {
        /// The peer's address.
        peer: SocketAddr,
    },
    /// TLS; `certified` when the peer presented a client certificate the server verified.
    Tls {
        /// The peer's address.
        peer: SocketAddr,
        /// The peer presented a valid client certificate.
        certified: bool,
    },
}

impl Channel {
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        match self {
            Channel::Plain { peer } | Channel::Tls { peer, .. } => *peer,
        }
    }
}

/// What the listener does with connections: where TLS comes from and whether plaintext is
/// still taken. Asked at every connection, so it follows the cluster state.
pub trait ListenPolicy: Send + Sync + 'static {
    /// The TLS server configuration, `None` while the node has no certificate.
    fn tls(&self) -> Option<Arc<ServerConfig>>;
    /// Whether a plaintext connection is served now.
    fn plaintext_allowed(&self) -> bool;
}

/// Serves `router` on `listener` until `stop` turns true, then lets open connections finish
/// their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    policy: Arc<dyn ListenPolicy>,
    stop: watch::Receiver<bool>,
) {
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (router, policy, stop) = (router.clone(), policy.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(reason) = connection(stream, peer, router, &*policy, stop).await {
                tracing::debug!(%peer, reason, "connection closed");
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    policy: &dyn ListenPolicy,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(FIRST_BYTES_WITHIN, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) => {}
        _ => return Err("no first byte".into()),
    }
    if first[0] == TLS_HANDSHAKE {
        let config = policy
            .tls()
            .ok_or("TLS handshake, but this node has no certificate yet")?;
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
        let stream = tokio::time::timeout(FIRST_BYTES_WITHIN, accept)
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let certified = stream
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty());
        let channel = Channel::Tls { peer, certified };
        serve_http(TokioIo::new(stream), channel, router, stop).await;
        return Ok(());
    }
    if !policy.plaintext_allowed() {
        return Err("plaintext refused: this port takes TLS only".into());
    }
    serve_http(TokioIo::new(stream), Channel::Plain { peer }, router, stop).await;
    Ok(())
}

async fn serve_http<I>(io: I, channel: Channel, router: Router, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(channel);
        // The client's address as axum's `ConnectInfo`: failed logins count against it.
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(channel.peer()));
        router.clone().oneshot(request)
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}
