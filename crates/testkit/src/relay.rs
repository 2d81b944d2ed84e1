//! A TCP relay a test can cut: the link between two clusters of an Active-Active database.
//!
//! [`Relay`] listens on an address the test picks and forwards every connection to a target
//! (a peer node's REST API); a CRDB's `CrdbCluster.urls` name the relay, so the syncer's traffic
//! crosses it. [`Relay::cut`] drops every connection at once and refuses new ones (the listener
//! is closed: a connect gets "connection refused"), [`Relay::heal`] listens again. Real
//! sockets, bytes forwarded unchanged (TLS passes through end to end): nothing is mocked.
//!
//! The relay runs on its own runtime thread, so synchronous tests use it as they use a cluster.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A cuttable TCP forwarder from `listen` to `target`.
pub struct Relay {
    listen: SocketAddr,
    target: SocketAddr,
    runtime: tokio::runtime::Runtime,
    /// The accept loop and every connection it forwards; dropped together by a cut.
    serving: Mutex<Option<ServingHandle>>,
    /// Connections accepted since the relay started (a test can see traffic did cross).
    accepted: Arc<std::sync::atomic::AtomicU64>,
}

struct ServingHandle {
    stop: watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Relay {
    /// Starts forwarding `listen` to `target`; panics when `listen` cannot be bound.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the relay's runtime");
        let relay = Relay {
            listen,
            target,
            runtime,
            serving: Mutex::new(None),
            accepted: Arc::default(),
        };
        relay.heal();
        relay
    }

    /// Where the relay listens (what the CRDB's URLs name).
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// `https://LISTEN` for a relay in front of a node's HTTPS REST API.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.listen)
    }

    /// Connections accepted since the relay started.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Cuts the link: every forwarded connection is dropped (both sides see it close) and the
    /// listener is closed, so new connections are refused until [`Relay::heal`]. Returns once
    /// the listener and every connection are gone.
    pub fn cut(&self) {
        let handle = self.serving.lock().unwrap().take();
        if let Some(handle) = handle {
            let _ = handle.stop.send(true);
            handle
                .done
                .recv_timeout(Duration::from_secs(5))
                .expect("the relay stops within 5 s");
        }
    }

    /// Restores the link: listens again (a no-op while it listens). Panics when the address
    /// cannot be bound again within a few seconds.
    pub fn heal(&self) {
        let mut serving = self.serving.lock().unwrap();
        if serving.is_some() {
            return;
        }
        let listener = self.runtime.block_on(bind(self.listen));
        let (stop, stopped) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let (target, accepted) = (self.target, self.accepted.clone());
        self.runtime.spawn(async move {
            serve(listener, target, accepted, stopped).await;
            let _ = done_tx.send(());
        });
        *serving = Some(ServingHandle { stop, done });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Binds `addr` with `SO_REUSEADDR`, retrying a few seconds (the port of a listener just
/// closed by a cut).
async fn bind(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .expect("a TCP socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        match socket.bind(addr).and_then(|()| socket.listen(128)) {
            Ok(listener) => return listener,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the relay cannot listen on {addr}: {e}"),
        }
    }
}

/// Accepts and forwards until `stop`; then drops the listener and every connection.
async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            incoming = listener.accept() => {
                let Ok((client, _)) = incoming else { continue };
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                connections.spawn(forward(client, target));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Copies bytes both ways between `client` and a new connection to `target`.
async fn forward(mut client: TcpStream, target: SocketAddr) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A one-shot echo server on `addr`: answers each connection's first read with itself.
    fn echo(addr: SocketAddr) -> std::thread::JoinHandle<()> {
        let listener = std::net::TcpListener::bind(addr).expect("echo server binds");
        std::thread::spawn(move || {
            for stream in listener.incoming().take(3) {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 16];
                let n = stream.read(&mut buf).unwrap();
                stream.write_all(&buf[..n]).unwrap();
                // Held open until the other side closes (a cut closes it).
                let _ = stream.read(&mut buf);
            }
        })
    }

    fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn a_cut_refuses_connections_and_a_heal_forwards_again() {
        let target: SocketAddr = "127.0.160.2:19990".parse().unwrap();
        let listen: SocketAddr = "127.0.160.1:19991".parse().unwrap();
        let server = echo(target);
        let relay = Relay::start(listen, target);
        assert_eq!(round_trip(listen).unwrap(), b"ping");
        // A connection open through the relay is dropped by the cut.
        let mut open = std::net::TcpStream::connect(listen).unwrap();
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        open.write_all(b"ping").unwrap();
        let mut pong = [0u8; 4];
        open.read_exact(&mut pong).unwrap();
        relay.cut();
        let mut buf = [0u8; 1];
        assert!(
            matches!(open.read(&mut buf), Ok(0) | Err(_)),
            "closed by the cut"
        );
        let refused = std::net::TcpStream::connect(listen).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        relay.heal();
        assert_eq!(round_trip(listen).unwrap(), b"ping");
        assert_eq!(relay.accepted(), 3);
        server.join().unwrap();
    }
}
