//! Shared helpers of the crdb integration tests: real engines standing for two instances of an
//! Active-Active database (one shard each) on the test's own loopback address, the syncer's
//! shipping loop in its simplest form, and a key-by-key comparison of two engines.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_crdb::{
    apply_remote, is_hidden, meta_key, position, read_log, scan_states, Applied, Conn, InstanceId,
    KeyState, Position,
};
use flotilla_crdt::{Blob, Op, Value, CRDT_PROTOCOL_VERSION};
use flotilla_engine::{adopt, start, EngineCatalog, EngineVersion, Persistence, ShardSpec};
use flotilla_model::{EngineUsers, ADMIN_USER};

const PASSWORD: &str = "crdb-test-internal-pw";

/// Instance ids of the two engines.
pub const A: InstanceId = InstanceId(1);
/// The second instance.
pub const B: InstanceId = InstanceId(2);

/// Engines on one address; killed by pid when dropped, even when the test fails.
pub struct Engines {
    specs: Vec<ShardSpec>,
    _dir: tempfile::TempDir,
}

impl Engines {
    /// Starts `count` engines of `version` on `ip` (ports 20001...).
    pub async fn start(ip: &str, version: EngineVersion, count: usize) -> Engines {
        let catalog = EngineCatalog::dev();
        if let Err(e) = catalog.binary(version) {
            panic!("crdb integration tests need real engines; run scripts/fetch-engines: {e}");
        }
        let ip: IpAddr = ip.parse().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("flotilla-crdb-test-")
            .tempdir()
            .unwrap();
        let mut engines = Engines {
            specs: Vec::new(),
            _dir: dir,
        };
        for i in 0..count {
            let spec = ShardSpec {
                shard_id: i as u64 + 1,
                version,
                bind: ip,
                port: 20001 + i as u16,
                password: PASSWORD.into(),
                users: Some(EngineUsers::derive(PASSWORD)),
                legacy: false,
                maxmemory_bytes: 256 << 20,
                eviction: Default::default(),
                persistence: Persistence::None,
                dir: engines._dir.path().join(format!("shard-{i}")),
                replica_of: None,
            };
            engines.specs.push(spec.clone());
            start(&catalog, &spec)
                .await
                .unwrap_or_else(|e| panic!("start engine {}: {e}", spec.addr()));
        }
        engines
    }

    /// A new admin connection to engine `i` (what the syncer uses).
    pub async fn conn(&self, i: usize) -> Conn {
        let spec = &self.specs[i];
        let admin = EngineUsers::derive(PASSWORD).admin;
        let url = format!("redis://{ADMIN_USER}:{admin}@{}:{}/", spec.bind, spec.port);
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect to the engine")
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        for spec in &self.specs {
            if let Ok(Some(process)) = adopt(spec) {
                process.kill_now(Duration::from_secs(5));
            }
        }
    }
}

/// The wall clock in milliseconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What one shipping pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shipped {
    /// Ops applied for the first time.
    pub new: usize,
    /// Ops the receiver had already applied.
    pub duplicate: usize,
}

/// Ships `origin`'s op log from `from` to `to` from `to`'s recorded position (or from `start`
/// when given), in pages of 7, as the syncer's puller does; returns what was applied.
pub async fn ship(
    from: &mut Conn,
    to: &mut Conn,
    origin: InstanceId,
    start: Option<Position>,
) -> Shipped {
    let mut at = match start {
        Some(p) => p,
        None => position(to, origin)
            .await
            .unwrap()
            .unwrap_or(Position::START),
    };
    let mut shipped = Shipped::default();
    loop {
        let page = read_log(from, at.n, 7).await.unwrap();
        if page.entries.is_empty() {
            assert_eq!(page.last, at.n, "the log ends where the puller is");
            return shipped;
        }
        for entry in page.entries {
            assert_eq!(entry.n, at.n + 1, "entries come without gaps");
            assert_eq!(entry.protocol, CRDT_PROTOCOL_VERSION);
            let op = Op::from_json(&entry.json, CRDT_PROTOCOL_VERSION).unwrap();
            assert_eq!(op.id, entry.dot);
            at = entry.position();
            match apply_remote(to, origin, at, &op).await.unwrap() {
                Applied::New => shipped.new += 1,
                Applied::Duplicate => shipped.duplicate += 1,
            }
            assert_eq!(position(to, origin).await.unwrap(), Some(at));
        }
    }
}

/// The client-visible keys of an engine (no hidden key), sorted.
pub async fn user_keys(conn: &mut Conn) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap();
    keys.retain(|k| !is_hidden(k));
    keys.sort();
    keys
}

/// The value an engine holds under `key`, as the CRDT layer names values.
pub async fn engine_value(conn: &mut Conn, key: &[u8]) -> Option<Value> {
    let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await.unwrap();
    let blobs = |v: Vec<Vec<u8>>| v.into_iter().map(Blob).collect::<Vec<_>>();
    Some(match kind.as_str() {
        "none" => return None,
        "string" => {
            let v: Vec<u8> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
            Value::String(Blob(v))
        }
        "hash" => {
            let v: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(key)
                .query_async(conn)
                .await
                .unwrap();
            Value::Hash(v.into_iter().map(|(f, v)| (Blob(f), Blob(v))).collect())
        }
        "set" => {
            let v: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(conn)
                .await
                .unwrap();
            Value::Set(blobs(v).into_iter().collect::<BTreeSet<_>>())
        }
        "zset" => {
            let v: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(conn)
                .await
                .unwrap();
            Value::Zset(v.into_iter().map(|(m, s)| (Blob(m), s)).collect())
        }
        "list" => {
            let v: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(conn)
                .await
                .unwrap();
            Value::List(blobs(v))
        }
        other => panic!("unexpected type {other} of {key:?}"),
    })
}

/// `PTTL key`.
pub async fn pttl(conn: &mut Conn, key: &[u8]) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

/// Every key's state as its metadata holds it.
pub async fn states(conn: &mut Conn) -> BTreeMap<Vec<u8>, KeyState> {
    let mut out = BTreeMap::new();
    let mut cursor = 0;
    loop {
        let (next, page) = scan_states(conn, cursor, 100).await.unwrap();
        for (key, json) in page {
            out.insert(key, KeyState::from_meta(&json).unwrap());
        }
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// Checks one engine against its own metadata: every key's engine value is the state's
/// materialization (deadline included), and no client key lacks metadata.
pub async fn check_engine_matches_metadata(conn: &mut Conn) {
    let at = now();
    let states = states(conn).await;
    for key in user_keys(conn).await {
        assert!(states.contains_key(&key), "{key:?} has no metadata");
    }
    for (key, state) in &states {
        let engine = engine_value(conn, key).await;
        assert_eq!(engine, state.visible(at), "engine value of {key:?}");
        let ttl = pttl(conn, key).await;
        match state.view().expire_at {
            _ if engine.is_none() => {}
            None => assert_eq!(ttl, -1, "{key:?} has no deadline"),
            Some(deadline) => {
                let left = deadline as i64 - at as i64;
                assert!(
                    (ttl - left).abs() < 2000,
                    "{key:?}: pttl {ttl}, expected ~{left}"
                );
            }
        }
    }
}

/// Compares two engines key by key: the same client keys, values and deadlines (to 2 s), and the
/// same metadata; each engine also matches its own metadata.
pub async fn assert_same(a: &mut Conn, b: &mut Conn) {
    let keys = user_keys(a).await;
    assert_eq!(keys, user_keys(b).await, "the same keys on both engines");
    for conn in [&mut *a, &mut *b] {
        let visible = flotilla_crdb::dbsize(conn).await.unwrap();
        assert_eq!(visible, keys.len() as u64, "DBSIZE without the hidden keys");
    }
    for key in &keys {
        assert_eq!(
            engine_value(a, key).await,
            engine_value(b, key).await,
            "value of {:?}",
            String::from_utf8_lossy(key)
        );
        let (ta, tb) = (pttl(a, key).await, pttl(b, key).await);
        assert!(
            (ta == -1 && tb == -1) || (ta > 0 && tb > 0 && (ta - tb).abs() < 2000),
            "deadline of {key:?}: {ta} and {tb}"
        );
    }
    let (sa, sb) = (states(a).await, states(b).await);
    assert_eq!(
        sa.keys().collect::<Vec<_>>(),
        sb.keys().collect::<Vec<_>>(),
        "the same metadata keys"
    );
    for (key, state) in &sa {
        assert_eq!(
            state.materialize(),
            sb[key].materialize(),
            "materialization of {key:?}"
        );
        assert_eq!(state.clock, sb[key].clock, "clock of {key:?}");
        assert_eq!(state.expiry(), sb[key].expiry(), "expiry of {key:?}");
    }
    check_engine_matches_metadata(a).await;
    check_engine_matches_metadata(b).await;
}

/// The raw metadata text of `key` (for checks that something did not change at all).
pub async fn raw_meta(conn: &mut Conn, key: &[u8]) -> Option<String> {
    redis::cmd("HGET")
        .arg(meta_key(key))
        .arg("s")
        .query_async(conn)
        .await
        .unwrap()
}
