//! Shared helpers for the agent's integration tests: a one-node cluster store in a temp dir on
//! the test's own loopback address, the real engine catalog (failing loudly, naming
//! `scripts/fetch-engines`, when an engine is missing), a running [`ShardAgent`], and a guard
//! that kills every engine recorded in the shards dir, by pid, even when a test fails.

#![allow(dead_code)]

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_agent::shards::{local_shard_dirs, recorded_spec};
use flotilla_agent::{ObservedShards, ShardAgent};
use flotilla_engine::{adopt, EngineCatalog, EngineClient, EngineLogin, EngineVersion};
use flotilla_model::rest::ShardReport;
use flotilla_model::{
    BdbCreation, BdbSpec, BdbUid, Command, CommandResult, DataPersistence, NodeSpec, ShardPlan,
    ShardRole, ShardUid, SlotRange,
};
use flotilla_store::{Store, StoreConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The engine every test database runs.
pub const VERSION: EngineVersion = EngineVersion::Redis70;

/// The developer engine catalog; panics naming `scripts/fetch-engines` when the engine is missing.
pub fn catalog() -> EngineCatalog {
    let catalog = EngineCatalog::dev();
    if let Err(err) = catalog.binary(VERSION) {
        panic!("agent integration tests need real engines: {err}");
    }
    catalog
}

/// Kills, on drop, every engine recorded in the shards dir (by its recorded spec, so only a pid
/// that still is that shard's engine), then removes the temp dir.
pub struct EngineGuard {
    shards_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for EngineGuard {
    fn drop(&mut self) {
        for (uid, dir) in local_shard_dirs(&self.shards_dir).unwrap_or_default() {
            let Ok(Some(spec)) = recorded_spec(&dir) else {
                continue;
            };
            if let Ok(Some(process)) = adopt(&spec) {
                let gone = process.kill_now(Duration::from_secs(5));
                eprintln!(
                    "guard: killed shard {uid} engine pid {}: {gone}",
                    process.pid()
                );
            }
        }
    }
}

/// A one-node cluster: its store, address and shards dir.
pub struct TestNode {
    pub store: Store,
    pub addr: IpAddr,
    pub shards_dir: PathBuf,
    pub guard: EngineGuard,
}

impl TestNode {
    /// Opens a store in a temp dir on `addr` and creates a cluster with this node as uid 1.
    pub async fn create(addr: &str) -> TestNode {
        catalog();
        let dir = tempfile::Builder::new()
            .prefix("flotilla-agent-test-")
            .tempdir()
            .expect("temp dir");
        let addr: IpAddr = addr.parse().unwrap();
        let store = Store::open(StoreConfig {
            data_dir: dir.path().join("data"),
            addr,
            rpc_port: 3333,
        })
        .await
        .expect("open store");
        let node = NodeSpec {
            addr,
            software_version: "test".into(),
            os: "test".into(),
            host: Default::default(),
        };
        let uid = store
            .create_cluster("test".into(), "admin".into(), "pw".into(), node)
            .await
            .expect("create cluster");
        assert_eq!(uid, 1);
        let shards_dir = dir.path().join("data").join("shards");
        TestNode {
            store,
            addr,
            shards_dir: shards_dir.clone(),
            guard: EngineGuard {
                shards_dir,
                _dir: dir,
            },
        }
    }

    /// How the agent logs in to this node's engines (the admin user).
    pub fn login(&self) -> EngineLogin {
        EngineLogin::cluster_admin(&self.store.state().engine_credentials().unwrap())
    }

    /// Proposes a one-shard, replicated database with its primary on `primary_port` and its replica
    /// on `replica_port`, both on this node. Returns the bdb uid and the (primary, replica) uids.
    pub async fn create_bdb(
        &self,
        name: &str,
        primary_port: u16,
        replica_port: u16,
    ) -> (BdbUid, ShardUid, ShardUid) {
        let slots = SlotRange::even(0, 1);
        let plan = |role, port| ShardPlan {
            node_uid: 1,
            role,
            assigned_slots: slots,
            port,
        };
        let command = Command::CreateBdb(BdbCreation {
            bdb: BdbSpec {
                name: name.into(),
                port: 12000 + (primary_port % 1000),
                memory_size: 64 << 20,
                shards_count: 1,
                replication: true,
                data_persistence: DataPersistence::Disabled,
                redis_version: VERSION,
                authentication_redis_pass: None,
                authentication_redis_pass_sha256: None,
                limits: Default::default(),
                tls_mode: Default::default(),
                config: Default::default(),
                crdt: None,
            },
            created_at: 0,
            shards: vec![
                plan(ShardRole::Primary, primary_port),
                plan(ShardRole::Replica, replica_port),
            ],
        });
        let CommandResult::BdbCreated { uid } = self.store.propose(command).await.unwrap() else {
            panic!("CreateBdb was not applied");
        };
        let state = self.store.state();
        let uid_at = |port| state.shards_of(uid).find(|s| s.port == port).unwrap().uid;
        (uid, uid_at(primary_port), uid_at(replica_port))
    }

    /// Proposes `command` and asserts it applied.
    pub async fn propose_ok(&self, command: Command) {
        let result = self.store.propose(command.clone()).await.unwrap();
        assert_eq!(result, CommandResult::Ok, "{command:?}");
    }

    /// A client to the engine on this node's `port`.
    pub async fn client(&self, port: u16) -> EngineClient {
        EngineClient::connect(self.addr, port, &self.login())
            .await
            .unwrap_or_else(|e| panic!("connect to shard port {port}: {e}"))
    }

    /// The folder of shard `uid`.
    pub fn shard_dir(&self, uid: ShardUid) -> PathBuf {
        self.shards_dir.join(uid.to_string())
    }
}

/// A [`ShardAgent`] running in a task, with its stop switch and its observations.
pub struct RunningAgent {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    pub observed: ObservedShards,
}

impl RunningAgent {
    /// Starts an agent for `node`.
    pub fn start(node: &TestNode) -> RunningAgent {
        let agent = ShardAgent::new(
            node.store.clone(),
            catalog(),
            node.addr,
            node.shards_dir.clone(),
        );
        let observed = agent.observed_shards();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(agent.run(stop_rx));
        RunningAgent {
            stop,
            task,
            observed,
        }
    }

    /// Stops the agent and waits (bounded) for it to return.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("agent stops within 15 s")
            .expect("agent task did not panic");
    }

    /// The latest report of shard `uid`.
    pub fn report(&self, uid: ShardUid) -> Option<ShardReport> {
        self.observed.snapshot().into_iter().find(|r| r.uid == uid)
    }
}

/// Polls `check` every 100 ms until it yields a value; panics naming `what` and the last
/// thing seen after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// True while `pid` runs (a zombie that no one reaped yet counts as gone).
pub fn pid_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// SIGKILL to the engine recorded for shard `uid` (checked to be that engine), waiting until
/// it is gone; returns its pid.
pub fn kill_shard(node: &TestNode, uid: ShardUid) -> u32 {
    let spec = recorded_spec(&node.shard_dir(uid))
        .unwrap()
        .expect("shard record");
    let process = adopt(&spec).unwrap().expect("shard engine runs");
    assert!(
        process.kill_now(Duration::from_secs(5)),
        "engine of shard {uid} still runs"
    );
    process.pid()
}
