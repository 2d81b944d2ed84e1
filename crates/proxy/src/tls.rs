//! TLS on database endpoints: the node's server configuration the endpoints share, and a
//! client connection that is either plaintext or TLS.
//!
//! A database in TLS mode (`tls_mode: enabled`) has its endpoint accept TLS only, with the
//! node's certificate from the cluster CA, as Redis does with `tls-port` alone: a plaintext
//! client's bytes fail the handshake and it is closed. A TLS session cannot be passed to a new
//! daemon at an in-place handover (its keys live in this process): it is closed at a command
//! boundary instead, and counted as such.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its TLS handshake before it is closed.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS server configuration the node's database endpoints present, once the node has one.
///
/// Exists because the endpoints start before the node's store (an in-place handover serves
/// them from the predecessor's state first) and so before its certificate is known: the
/// daemon sets the configuration when it has it, and every endpoint reads it at each accept.
/// A configuration whose certificate resolver reads the node's current certificate makes a
/// rotation show at the next handshake. Cheap to clone (all clones share the setting).
#[derive(Clone, Default)]
pub struct EndpointTls(Arc<RwLock<Option<Arc<ServerConfig>>>>);

impl std::fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTls")
            .field("configured", &self.acceptor().is_some())
            .finish()
    }
}

impl EndpointTls {
    /// Endpoints serving TLS with `config` from the start.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        let tls = EndpointTls::default();
        tls.set(config);
        tls
    }

    /// Puts `config` in use for the handshakes of clients accepted from now on.
    pub fn set(&self, config: Arc<ServerConfig>) {
        *self.0.write().expect("endpoint TLS") = Some(config);
    }

    /// The acceptor for a new client of a TLS database; `None` until a configuration is set.
    pub(crate) fn acceptor(&self) -> Option<TlsAcceptor> {
        let config = self.0.read().expect("endpoint TLS");
        config.clone().map(TlsAcceptor::from)
    }
}

/// A client connection: plaintext, or TLS over TCP.
pub(crate) enum ClientStream {
    /// Plain RESP over TCP.
    Plain(TcpStream),
    /// RESP inside TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The TCP socket under the connection.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(stream) => stream,
            ClientStream::Tls(stream) => stream.get_ref().0,
        }
    }

    /// Whether the client speaks TLS (its session cannot be handed over).
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The plaintext socket, to pass to another process; an error for a TLS connection.
    pub(crate) fn into_std(self) -> io::Result<std::net::TcpStream> {
        match self {
            ClientStream::Plain(stream) => stream.into_std(),
            ClientStream::Tls(_) => Err(io::Error::other(
                "a TLS client connection cannot be passed to another process",
            )),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            ClientStream::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            ClientStream::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            ClientStream::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            ClientStream::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}
