//! Shared helpers for the engine integration tests: the engine catalog (failing loudly when
//! engines are missing), shard specs on per-test loopback addresses, and a guard that kills
//! every engine a test started, by pid, even when the test fails.

#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_engine::{
    adopt, EngineCatalog, EngineClient, EngineVersion, Persistence, ReplicaOf, ShardSpec,
};

/// Internal password used by every test shard.
pub const PASSWORD: &str = "test-internal-pw";

/// The developer engine catalog; panics naming `scripts/fetch-engines` if any engine is missing.
pub fn catalog() -> EngineCatalog {
    let catalog = EngineCatalog::dev();
    for version in EngineVersion::ALL {
        if let Err(err) = catalog.binary(version) {
            panic!("engine integration tests need real engines: {err}");
        }
    }
    catalog
}

/// Owns a temp dir for shard data and kills, on drop, every shard whose spec it handed out.
pub struct Harness {
    pub catalog: EngineCatalog,
    dir: tempfile::TempDir,
    specs: std::sync::Mutex<Vec<ShardSpec>>,
}

impl Harness {
    pub fn new() -> Self {
        Harness {
            catalog: catalog(),
            dir: tempfile::Builder::new()
                .prefix("flotilla-engine-test-")
                .tempdir()
                .expect("temp dir"),
            specs: Default::default(),
        }
    }

    /// A spec for a shard on `ip:port` running `version`, with its own dir; tracked for cleanup.
    pub fn spec(&self, shard_id: u64, version: EngineVersion, ip: &str, port: u16) -> ShardSpec {
        let spec = ShardSpec {
            shard_id,
            version,
            bind: ip.parse().unwrap(),
            port,
            password: PASSWORD.into(),
            users: Some(flotilla_model::EngineUsers::derive(PASSWORD)),
            legacy: false,
            maxmemory_bytes: 256 << 20,
            eviction: Default::default(),
            persistence: Persistence::None,
            dir: self.dir.path().join(format!("shard-{shard_id}")),
            replica_of: None,
        };
        self.track(&spec);
        spec
    }

    /// Tracks a spec built by hand (same dir as an earlier one is fine).
    pub fn track(&self, spec: &ShardSpec) {
        self.specs.lock().unwrap().push(spec.clone());
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for spec in self.specs.lock().unwrap().iter() {
            if let Ok(Some(process)) = adopt(spec) {
                let gone = process.kill_now(Duration::from_secs(5));
                eprintln!(
                    "harness: killed engine pid {} ({}): {gone}",
                    process.pid(),
                    spec.addr()
                );
            }
        }
    }
}

/// `spec` turned into a replica of `primary`.
pub fn replica_of(mut spec: ShardSpec, primary: &ShardSpec) -> ShardSpec {
    spec.replica_of = Some(ReplicaOf {
        host: primary.bind,
        port: primary.port,
    });
    spec
}

/// Loads `count` keys `key:{i}` = `value:{i}` through pipelines of 1000 commands.
pub async fn load_keys(client: &EngineClient, count: usize) {
    let mut conn = client.connection();
    for chunk_start in (0..count).step_by(1000) {
        let mut pipe = redis::pipe();
        for i in chunk_start..(chunk_start + 1000).min(count) {
            pipe.cmd("SET")
                .arg(format!("key:{i}"))
                .arg(format!("value:{i}"))
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.expect("load keys");
    }
}

/// Asserts that all `count` keys written by [`load_keys`] are present with their values.
pub async fn assert_keys(client: &EngineClient, count: usize) {
    let size: usize = client.command(&redis::cmd("DBSIZE")).await.unwrap();
    assert_eq!(size, count, "DBSIZE on {}", client.addr());
    let mut conn = client.connection();
    for chunk_start in (0..count).step_by(1000) {
        let keys: Vec<String> = (chunk_start..(chunk_start + 1000).min(count))
            .map(|i| format!("key:{i}"))
            .collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
        for (i, value) in (chunk_start..).zip(values) {
            assert_eq!(
                value.as_deref(),
                Some(format!("value:{i}").as_str()),
                "key:{i} on {}",
                client.addr()
            );
        }
    }
}

/// Connects to a spec's shard.
pub async fn client(spec: &ShardSpec) -> EngineClient {
    EngineClient::connect(spec.bind, spec.port, &spec.admin_login())
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", spec.addr()))
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
