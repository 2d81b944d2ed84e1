//! Shared helpers for the proxy's integration tests: real redis-7.0 shards started with the
//! engine crate on the test's own loopback address, a proxy endpoint serving them, clients,
//! and a guard that kills the test's engines by pid even when the test fails.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use flotilla_engine::{adopt, start, EngineCatalog, EngineVersion, Persistence, ShardSpec};
use flotilla_model::{EngineUsers, ADMIN_USER, PROXY_USER};
use flotilla_proxy::{
    endpoint_control, serve_controlled, EndpointControl, EndpointStats, ProxyOptions, ShardIndex,
    ShardLogin, Topology,
};
use flotilla_resp::{Decoder, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// The shards' internal password.
pub const SHARD_PASSWORD: &str = "proxy-test-internal-pw";
/// The endpoint port every test uses on its own address.
pub const ENDPOINT_PORT: u16 = 12000;
/// First shard port on each test's address.
pub const FIRST_SHARD_PORT: u16 = 20001;

/// Real engines plus a proxy endpoint in front of the first `shards` of them.
pub struct Setup {
    /// The endpoint clients connect to.
    pub endpoint: SocketAddr,
    /// Every engine started, in order; the first `shards` serve the database at start.
    pub engines: Vec<ShardSpec>,
    /// Publishes topology changes to the endpoint.
    pub topology: watch::Sender<Topology>,
    /// The endpoint's counters.
    pub stats: EndpointStats,
    /// The owner's handle on the endpoint (in-place handover).
    pub control: EndpointControl,
    /// A duplicate of the endpoint's listening socket, for a successor endpoint.
    listener: Option<std::net::TcpListener>,
    options: ProxyOptions,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// A second endpoint serving the same listening socket and topology, as the new daemon of an
/// in-place handover serves the socket the old one passed it.
pub struct Successor {
    /// The owner's handle on it.
    pub control: EndpointControl,
    /// Its counters.
    pub stats: EndpointStats,
    _stop: oneshot::Sender<()>,
}

impl Setup {
    /// Starts `engines` redis-7.0 shards on `ip` and an endpoint routing to the first `shards`.
    pub async fn start(ip: &str, engines: usize, shards: usize, password: Option<&str>) -> Setup {
        Setup::start_with(ip, engines, shards, password, ProxyOptions::default()).await
    }

    /// [`Setup::start`] with the endpoint's [`ProxyOptions`] given.
    pub async fn start_with(
        ip: &str,
        engines: usize,
        shards: usize,
        password: Option<&str>,
        options: ProxyOptions,
    ) -> Setup {
        let catalog = EngineCatalog::dev();
        if let Err(e) = catalog.binary(EngineVersion::Redis70) {
            panic!("proxy integration tests need real engines; run scripts/fetch-engines: {e}");
        }
        let ip: IpAddr = ip.parse().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("flotilla-proxy-test-")
            .tempdir()
            .unwrap();
        let mut setup = Setup {
            endpoint: SocketAddr::new(ip, ENDPOINT_PORT),
            engines: Vec::new(),
            topology: watch::channel(placeholder()).0,
            stats: EndpointStats::new(),
            control: endpoint_control().0,
            listener: None,
            options,
            stop: None,
            _dir: dir,
        };
        for i in 0..engines {
            let spec = shard_spec(ip, i, setup._dir.path());
            setup.engines.push(spec.clone());
            start(&catalog, &spec)
                .await
                .unwrap_or_else(|e| panic!("start engine {}: {e}", spec.addr()));
        }
        let primaries = (0..shards).map(|i| setup.engine_addr(i)).collect();
        // The engines' proxy user, as in a cluster: every test runs the data path with the
        // permissions the proxy has there.
        let topology = Topology::even(password.map(str::to_owned), "", primaries)
            .unwrap()
            .with_shard_login(ShardLogin {
                user: Some(PROXY_USER.into()),
                password: users().proxy,
                fallback: None,
            });
        let (tx, rx) = watch::channel(topology);
        let listener = TcpListener::bind(setup.endpoint).await.unwrap();
        let listener = listener.into_std().unwrap();
        setup.listener = Some(listener.try_clone().unwrap());
        let (control, stop) = serve(listener, rx, options, setup.stats.clone());
        setup.control = control;
        setup.topology = tx;
        setup.stop = Some(stop);
        setup
    }

    /// Starts a second endpoint on a duplicate of this one's listening socket (as the new
    /// daemon of an in-place handover gets it), following the same topology. It accepts from
    /// the start, alongside this one.
    pub fn successor(&self) -> Successor {
        let listener = self.listener.as_ref().unwrap().try_clone().unwrap();
        let stats = EndpointStats::new();
        let (control, stop) = serve(
            listener,
            self.topology.subscribe(),
            self.options,
            stats.clone(),
        );
        Successor {
            control,
            stats,
            _stop: stop,
        }
    }

    /// `ip:port` of engine `i`.
    pub fn engine_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.engines[i].bind, self.engines[i].port)
    }

    /// Points shard `shard` at engine `engine` (a switchover as the daemon would publish it).
    pub fn move_shard(&self, shard: u16, addr: SocketAddr) {
        let next = self
            .topology
            .borrow()
            .with_primary(ShardIndex(shard), addr)
            .unwrap();
        self.topology.send(next).unwrap();
    }

    /// Publishes shard `shard` held (`true`) or released (`false`).
    pub fn hold(&self, shard: u16, held: bool) {
        let next = self
            .topology
            .borrow()
            .with_hold(ShardIndex(shard), held)
            .unwrap();
        self.topology.send(next).unwrap();
    }

    /// Publishes `addr` as shard `shard`'s primary and releases its hold, in one topology.
    pub fn release_to(&self, shard: u16, addr: SocketAddr) {
        let next = self
            .topology
            .borrow()
            .with_primary(ShardIndex(shard), addr)
            .and_then(|t| t.with_hold(ShardIndex(shard), false))
            .unwrap();
        self.topology.send(next).unwrap();
    }

    /// A client through the endpoint that waits up to `timeout` for each reply (the redis
    /// crate's default is 500 ms).
    pub async fn patient_client(&self, timeout: Duration) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
        redis::Client::open(format!("redis://{}/", self.endpoint))
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect through the proxy")
    }

    /// The engine crate's client for engine `i` (replication and fencing commands).
    pub async fn engine(&self, i: usize) -> flotilla_engine::EngineClient {
        let addr = self.engine_addr(i);
        let login = flotilla_engine::EngineLogin::admin(&users(), SHARD_PASSWORD);
        flotilla_engine::EngineClient::connect(addr.ip(), addr.port(), &login)
            .await
            .unwrap_or_else(|e| panic!("connect to engine {addr}: {e}"))
    }

    /// A client connection through the endpoint (redis crate, multiplexed).
    pub async fn client(&self, password: Option<&str>) -> redis::aio::MultiplexedConnection {
        let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
        let url = format!("redis://{auth}{}/", self.endpoint);
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect through the proxy")
    }

    /// Waits, at most 5 s, until a blocking command (BLPOP) sent through the endpoint blocks on
    /// engine `i`.
    pub async fn wait_blocked(&self, i: usize) {
        self.wait_blpop(i, true, "BLPOP never reached the shard")
            .await;
    }

    /// Waits, at most 5 s, until engine `i` has (`blocked`) or no longer has a client blocked
    /// in BLPOP; panics with `failure` otherwise.
    pub async fn wait_blpop(&self, i: usize, blocked: bool, failure: &str) {
        let mut engine = self.direct(i).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut engine)
                .await
                .unwrap();
            if clients.contains("cmd=blpop") == blocked {
                return;
            }
            assert!(Instant::now() < deadline, "{failure}: {clients}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes engine 1 a replica of engine 0 and waits until it reports a real offset (a fresh
    /// replica reports 0 for a while after its first sync) and has caught up, as before a
    /// switchover or a failover; their engine clients.
    pub async fn replicate(
        &self,
    ) -> (flotilla_engine::EngineClient, flotilla_engine::EngineClient) {
        let (m, r) = (self.engine(0).await, self.engine(1).await);
        let m_addr = self.engine_addr(0);
        r.replicaof(m_addr.ip(), m_addr.port()).await.unwrap();
        r.wait_link_up(Duration::from_secs(10)).await.unwrap();
        let mut direct = self.direct(0).await;
        let () = redis::AsyncCommands::set(&mut direct, "warmup", 1)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.replication().await.unwrap().offset() <= 0 {
            assert!(
                Instant::now() < deadline,
                "the replica never reported an offset"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        flotilla_engine::wait_for_sync(&m, &r, Duration::from_secs(10))
            .await
            .unwrap();
        (m, r)
    }

    /// A direct, authenticated connection to engine `i`, bypassing the proxy.
    pub async fn direct(&self, i: usize) -> redis::aio::MultiplexedConnection {
        let admin = users().admin;
        let url = format!("redis://{ADMIN_USER}:{admin}@{}/", self.engine_addr(i));
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the engine")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for spec in &self.engines {
            if let Ok(Some(process)) = adopt(spec) {
                process.kill_now(Duration::from_secs(5));
            }
        }
    }
}

/// Serves an endpoint on `listener` under a control handle until the returned sender is
/// dropped or used.
fn serve(
    listener: std::net::TcpListener,
    topology: watch::Receiver<Topology>,
    options: ProxyOptions,
    stats: EndpointStats,
) -> (EndpointControl, oneshot::Sender<()>) {
    let listener = TcpListener::from_std(listener).unwrap();
    let (control, inbox) = endpoint_control();
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let tls = flotilla_proxy::EndpointTls::default();
    tokio::spawn(serve_controlled(
        listener, topology, shutdown, options, stats, inbox, tls,
    ));
    (control, stop)
}

fn shard_spec(ip: IpAddr, i: usize, dir: &std::path::Path) -> ShardSpec {
    ShardSpec {
        shard_id: i as u64 + 1,
        version: EngineVersion::Redis70,
        bind: ip,
        port: FIRST_SHARD_PORT + i as u16,
        password: SHARD_PASSWORD.into(),
        users: Some(users()),
        legacy: false,
        maxmemory_bytes: 128 << 20,
        eviction: Default::default(),
        persistence: Persistence::None,
        dir: dir.join(format!("shard-{i}")),
        replica_of: None,
    }
}

/// The engines' users, derived from [`SHARD_PASSWORD`] as a cluster derives them from its
/// secret.
pub fn users() -> EngineUsers {
    EngineUsers::derive(SHARD_PASSWORD)
}

fn placeholder() -> Topology {
    Topology::even(None, "", vec![SocketAddr::from(([127, 0, 0, 1], 1))]).unwrap()
}

/// Polls `done` every 10 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
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

    /// Reads until `expected` bytes have arrived or the peer closes, within 5 s.
    pub async fn read_at_least(&mut self, expected: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < expected {
            let mut buf = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("read: {e}"),
            }
        }
        got
    }

    /// Reads everything until the peer closes; panics if it stays open for 5 s.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read_to_end(&mut got));
        match read.await {
            Ok(Ok(_)) => got,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => panic!("the proxy kept the connection open; got so far {got:?}"),
        }
    }
}

/// A RESP client over one TCP connection that never reconnects, speaking whatever protocol
/// it negotiated: what a handover test needs to show the connection it holds is the same one.
pub struct Resp {
    stream: TcpStream,
    input: BytesMut,
    decoder: Decoder,
}

impl Resp {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Resp {
        Resp {
            stream: TcpStream::connect(addr).await.unwrap(),
            input: BytesMut::new(),
            decoder: Decoder::default(),
        }
    }

    /// This end's address (the client's local port).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    /// Sends one request.
    pub async fn send(&mut self, args: &[&str]) {
        self.send_all(&[args]).await;
    }

    /// The next reply (or pushed frame), within 5 s; panics if the connection closes.
    pub async fn reply(&mut self) -> Value {
        let deadline = Duration::from_secs(5);
        tokio::time::timeout(deadline, self.read_value())
            .await
            .expect("a reply within 5 s")
            .expect("the connection stays open")
    }

    /// The next reply or frame; `None` when the connection closes.
    pub async fn read_value(&mut self) -> Option<Value> {
        loop {
            if let Some(value) = self.decoder.decode(&mut self.input).unwrap() {
                return Some(value);
            }
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends `requests` in one write (a pipeline the endpoint reads at once).
    pub async fn send_all(&mut self, requests: &[&[&str]]) {
        let mut out = String::new();
        for args in requests {
            out.push_str(&format!("*{}\r\n", args.len()));
            for arg in *args {
                out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
        }
        self.stream.write_all(out.as_bytes()).await.unwrap();
    }

    /// Sends one request and returns its reply.
    pub async fn call(&mut self, args: &[&str]) -> Value {
        self.send(args).await;
        self.reply().await
    }

    /// Whether the connection is closed with nothing more to read, within 5 s.
    pub async fn closed(&mut self) -> bool {
        let read = tokio::time::timeout(Duration::from_secs(5), self.read_value());
        read.await.expect("closed within 5 s").is_none() && self.input.is_empty()
    }
}
