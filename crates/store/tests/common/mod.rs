//! Store members in this process for the store's own tests and its benchmark: a real openraft
//! member with its redb files in a temp dir, serving the store's internal RPC routes (mutual
//! TLS, or plaintext while a node has no certificate) on its own loopback address, as a daemon does (without the layers above the store).

#![allow(dead_code)] // each test target uses a part

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use flotilla_model::{
    BdbCreation, BdbSpec, Command, CommandResult, DataPersistence, EngineVersion, NodeSpec,
    ShardPlan, ShardRole, SlotRange,
};
use flotilla_store::{Store, StoreConfig};
use futures_util::future::join_all;
use tokio::task::JoinHandle;

/// The internal RPC port, as in a daemon.
pub const RPC_PORT: u16 = 3333;
/// Operator credentials.
pub const USER: &str = "admin";
/// Operator password.
pub const PASSWORD: &str = "store-test";
/// Release 0.1.0's request body limit (axum's default).
const LIMIT_0_1_0: u64 = 2 * 1024 * 1024;

/// One store member and its RPC server.
pub struct Member {
    /// The store.
    pub store: Store,
    addr: IpAddr,
    routes: Routes,
    server: JoinHandle<()>,
    dir: tempfile::TempDir,
}

/// Which routes a member serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// This release's.
    Current,
    /// As release 0.1.0 answers a snapshot: no whole binary snapshot route (404) and requests
    /// over 2 MB refused (413).
    Like0_1_0,
}

impl Member {
    /// Opens a store on `addr` in a new temp dir and serves its routes.
    pub async fn start(addr: &str, routes: Routes) -> Member {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr: IpAddr = addr.parse().expect("an address");
        let (store, server) = open(&dir, addr, routes).await;
        Member {
            store,
            addr,
            routes,
            server,
            dir,
        }
    }

    /// Stops Raft and the server, lets go of the store, and opens it again from its files.
    pub async fn restart(self) -> Member {
        let Member {
            store,
            addr,
            routes,
            server,
            dir,
        } = self;
        store.shutdown().await;
        server.abort();
        let _ = server.await;
        drop(store);
        let (store, server) = open(&dir, addr, routes).await;
        Member {
            store,
            addr,
            routes,
            server,
            dir,
        }
    }

    /// The member's data dir.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `addr:3333`.
    pub fn rpc_addr(&self) -> String {
        format!("{}:{RPC_PORT}", self.addr)
    }

    /// How this node introduces itself.
    pub fn spec(&self) -> NodeSpec {
        NodeSpec {
            addr: self.addr,
            software_version: env!("CARGO_PKG_VERSION").into(),
            os: "test".into(),
            host: Default::default(),
        }
    }

    /// Creates the cluster with this member as node 1.
    pub async fn create_cluster(&self) {
        let uid = self
            .store
            .create_cluster(
                "store-test".into(),
                USER.into(),
                PASSWORD.into(),
                self.spec(),
            )
            .await
            .expect("cluster created");
        assert_eq!(uid, 1);
    }

    /// Joins the cluster `seed` belongs to.
    pub async fn join(&self, seed: &Member) -> u64 {
        self.store
            .join_cluster(
                &[seed.rpc_addr()],
                USER.into(),
                PASSWORD.into(),
                self.spec(),
                None,
                None,
            )
            .await
            .expect("joined")
    }
}

async fn open(dir: &tempfile::TempDir, addr: IpAddr, routes: Routes) -> (Store, JoinHandle<()>) {
    let config = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        addr,
        rpc_port: RPC_PORT,
    };
    // A restarted member's previous Raft tasks may hold the redb file for a moment.
    let mut store = Store::open(config.clone()).await;
    for _ in 0..50 {
        if store.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        store = Store::open(config.clone()).await;
    }
    let store = store.expect("store opens");
    let mut router = flotilla_store::rpc::router(store.clone());
    if routes == Routes::Like0_1_0 {
        router = router.layer(middleware::from_fn(as_0_1_0));
    }
    let listener = bind(addr).await;
    let policy = store.rpc_policy();
    let server = tokio::spawn(async move {
        // Served until the task is aborted: the stop signal never comes.
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        flotilla_store::listener::serve(listener, router, policy, stop).await;
    });
    (store, server)
}

/// Binds the RPC port, retrying briefly while a previous server of the same member lets go.
async fn bind(addr: IpAddr) -> tokio::net::TcpListener {
    for _ in 0..50 {
        if let Ok(listener) = tokio::net::TcpListener::bind((addr, RPC_PORT)).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr}:{RPC_PORT} stayed taken");
}

async fn as_0_1_0(request: Request, next: Next) -> Response {
    if request.uri().path() == "/raft/full_snapshot" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let length = request
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|length| length > LIMIT_0_1_0) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response();
    }
    next.run(request).await
}

/// Database `i` (from 0): 2 primary shards on node 1 and their replicas on node 2, endpoint
/// port 10000 + i, shard ports 20000 + 2i and the next ([`shard_port`]).
pub fn database(i: u16) -> Command {
    let spec = BdbSpec {
        name: format!("db-{i:05}"),
        port: 10000 + i,
        memory_size: 100 << 20,
        shards_count: 2,
        replication: true,
        data_persistence: DataPersistence::Aof,
        redis_version: EngineVersion::Redis70,
        authentication_redis_pass: Some(format!("password-of-db-{i:05}")),
        authentication_redis_pass_sha256: None,
        limits: Default::default(),
        tls_mode: Default::default(),
        config: Default::default(),
        crdt: None,
    };
    let shard = |node_uid, role, slots| ShardPlan {
        node_uid,
        role,
        assigned_slots: SlotRange::even(slots, 2),
        port: shard_port(i, slots),
    };
    let shards = (0..2)
        .flat_map(|s| {
            [
                shard(1, ShardRole::Primary, s),
                shard(2, ShardRole::Replica, s),
            ]
        })
        .collect();
    Command::CreateBdb(BdbCreation {
        bdb: spec,
        created_at: 1_700_000_000,
        shards,
    })
}

/// The port of database `i`'s shards of slot range `slots` (0 or 1) on each node: from 20000 up,
/// then, past 65535, from 1024 up (so up to 32,000 databases fit on two nodes).
fn shard_port(i: u16, slots: u16) -> u16 {
    let n = 2 * u32::from(i) + u32::from(slots);
    let port = if n < 45536 {
        20000 + n
    } else {
        1024 + n - 45536
    };
    u16::try_from(port).expect("fewer than 32,000 databases")
}

/// Creates databases `from..to` ([`database`]), `parallel` proposals at a time.
pub async fn fill(store: &Store, from: u16, to: u16, parallel: usize) {
    let indexes: Vec<u16> = (from..to).collect();
    for batch in indexes.chunks(parallel) {
        let proposals = batch.iter().map(|i| store.propose(database(*i)));
        for outcome in join_all(proposals).await {
            let outcome = outcome.expect("database created");
            assert!(matches!(outcome, CommandResult::BdbCreated { .. }));
        }
    }
}

/// The JSON size of a state: what its snapshot carries.
pub fn state_bytes(store: &Store) -> usize {
    serde_json::to_vec(&*store.state())
        .expect("the state encodes")
        .len()
}
