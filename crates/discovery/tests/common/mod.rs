//! Shared helpers for the discovery service's integration tests: a served listener on the
//! test's own loopback address with a hand-built snapshot, and raw TCP clients.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use flotilla_discovery::{serve, Databases, DISCOVERY_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long a test waits for any one reply before failing.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A discovery service serving a snapshot the test controls.
pub struct Served {
    /// Where clients connect (`ip:8001`).
    pub addr: SocketAddr,
    /// Publishes new snapshots, as the daemon would.
    pub snapshot: watch::Sender<Databases>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Served {
    /// Serves `dbs` on `ip:8001`.
    pub async fn start(ip: &str, dbs: Databases) -> Served {
        let ip: IpAddr = ip.parse().unwrap();
        let addr = SocketAddr::new(ip, DISCOVERY_PORT);
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let (tx, rx) = watch::channel(dbs);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, rx, async {
            let _ = stopped.await;
        }));
        Served {
            addr,
            snapshot: tx,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the service and waits until the listener is closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(REPLY_TIMEOUT, task)
                .await
                .expect("serve returns after shutdown")
                .unwrap();
        }
    }

    /// A client of the `redis` crate, multiplexed.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://{}/", self.addr))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the discovery service")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A raw TCP client for byte-level tests.
pub struct Raw {
    stream: TcpStream,
}

impl Raw {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// Sends bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads exactly `expected.len()` bytes and checks they are `expected`.
    pub async fn expect(&mut self, expected: &[u8]) {
        let mut got = vec![0u8; expected.len()];
        tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_exact(&mut got))
            .await
            .expect("reply in time")
            .expect("read reply");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    /// Reads until the server closes the connection; returns everything read.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_to_end(&mut got))
            .await
            .expect("server closes the connection in time")
            .expect("read until close");
        got
    }
}
