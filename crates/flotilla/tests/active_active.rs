//! Active-Active databases (issue 15): the syncer between two real clusters.
//!
//! Each test starts two clusters (A, instance 1; B, instance 2), makes one CRDB with an instance
//! on each (`POST /v1/crdbs/local` on both, as a coordinator does), and puts a [`Relay`] in front
//! of every node's HTTPS REST API: the CRDB's URLs name the relays, so the syncers' links cross
//! them and a test cuts and heals them. Writes go to the instances' master engines through
//! `flotilla_crdb::write_local` (the write path the proxy's CRDT layer runs for a client write),
//! as the engines' admin. At the end every key is compared on both sides, engine value by engine
//! value, and counters equal the sum of every acknowledged increment.
//!
//! Subnets 127.0.241.x (A) and 127.0.242.x (B); 127.0.243.x and 127.0.244.x for the tests that
//! need clusters of their own next to those.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_crdb::{Conn, InstanceId, Write};
use flotilla_model::crdb_sync::{SourceReport, SyncStatus};
use flotilla_testkit::{flotilla_bin, poll_until, runtime, DevCluster, Relay, PASSWORD, USER};
use serde_json::{json, Value};

const ENGINE: &str = "valkey-9.1";
/// The port each node's relay listens on (on the node's own address: the node's certificate
/// names that address, so TLS checks pass through the relay unchanged).
const RELAY_PORT: u16 = 19443;
const DB_PORT: u16 = 12000;
/// The protocol version instances start on.
const PROTOCOL: u16 = flotilla_crdt::CRDT_PROTOCOL_VERSION;
/// The CRDB of the tests.
const GUID: &str = "5e1f0a3c-1111-4aaa-8bbb-0123456789ab";
/// How long a healed link may take to converge.
const CONVERGE: Duration = Duration::from_secs(30);

/// Tests that use the subnets 241/242, one at a time (the file's tests run two at a time).
static SUBNETS_241: Mutex<()> = Mutex::new(());
/// Tests that use the subnets 243/244, one at a time.
static SUBNETS_243: Mutex<()> = Mutex::new(());

fn hold(subnets: &'static Mutex<()>) -> MutexGuard<'static, ()> {
    subnets
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

/// One participating cluster.
struct Side {
    cluster: DevCluster,
    /// One relay per node, in front of its REST API (what the peer pulls through).
    relays: Vec<Relay>,
    /// Its instance id.
    id: u16,
    /// Its local database.
    bdb: u64,
}

impl Side {
    fn up(subnet: u8, nodes: u8, id: u16) -> Side {
        let cluster = DevCluster::up(&bin(), subnet, nodes);
        let relays = cluster
            .node_numbers()
            .map(|n| {
                let addr = cluster.addr(n);
                Relay::start(
                    (addr, RELAY_PORT).into(),
                    (addr, flotilla_testkit::HTTPS_PORT).into(),
                )
            })
            .collect();
        Side {
            cluster,
            relays,
            id,
            bdb: 0,
        }
    }

    /// This cluster as the CRDB names it: its relays' URLs and its CA.
    fn instance(&self, name: &str) -> Value {
        let ca = std::fs::read_to_string(self.cluster.cacert()).expect("the cluster CA");
        let urls: Vec<String> = self.relays.iter().map(Relay::https_url).collect();
        json!({"id": self.id, "cluster": {
            "name": name, "urls": urls, "ca_cert": ca, "username": USER, "password": PASSWORD,
        }})
    }

    fn cut(&self) {
        self.relays.iter().for_each(Relay::cut);
    }

    fn heal(&self) {
        self.relays.iter().for_each(Relay::heal);
    }

    /// The sync sources of every node (a shard's pullers run on its master's node).
    fn sources(&self) -> Vec<SourceReport> {
        let rt = runtime();
        let mut all = Vec::new();
        for n in self.cluster.node_numbers() {
            let client = self.cluster.client(n);
            all.extend(rt.block_on(client.crdt_sources()).unwrap_or_default());
        }
        all
    }

    /// The master engine addresses of the local database, in slot order (none while a shard
    /// has no master).
    fn masters(&self) -> Vec<String> {
        let mut masters: Vec<(u64, String)> = self
            .cluster
            .db_shards_at(1, self.bdb)
            .into_iter()
            .filter(|s| s["role"] == "master")
            .map(|s| {
                let start = s["assigned_slots"]
                    .as_str()
                    .and_then(|r| r.split('-').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let node = s["node_uid"].as_u64().unwrap() as u8;
                (start, format!("{}:{}", self.cluster.addr(node), s["port"]))
            })
            .collect();
        masters.sort();
        masters.into_iter().map(|(_, addr)| addr).collect()
    }

    /// The engine URLs (admin login) of the local database's masters, in slot order.
    fn master_urls(&self) -> Vec<String> {
        let admin = self.cluster.engine_admin();
        self.masters()
            .into_iter()
            .map(|addr| format!("redis://{admin}@{addr}/"))
            .collect()
    }

    /// The engine URL (admin login) of the master of the local database's (only) shard.
    fn master(&self) -> String {
        let masters = self.masters();
        let addr = masters.first().expect("the shard has a master");
        format!("redis://{}@{addr}/", self.cluster.engine_admin())
    }

    /// A client connection to the database's endpoint on node `n` (the CRDT layer of the
    /// proxy turns its writes into ops).
    fn client(&self, n: u8) -> redis::Connection {
        flotilla_testkit::endpoint_connection(self.cluster.addr(n), DB_PORT)
    }

    /// One client write on this instance; panics unless acknowledged.
    async fn write(&self, conn: &mut Conn, key: &str, write: Write) {
        let now = flotilla_model::now_millis();
        flotilla_crdb::write_local(
            conn,
            InstanceId(self.id),
            PROTOCOL,
            now,
            key.as_bytes(),
            write,
        )
        .await
        .unwrap_or_else(|e| panic!("instance {} writing {key}: {e}", self.id));
    }
}

/// The CRDB of the tests, with an instance on each of `sides` (`POST /v1/crdbs/local` on each,
/// as a coordinator does); returns once each instance's database is active.
fn create_crdb(sides: &mut [&mut Side], shards: u16, replication: bool) {
    let guid = GUID;
    let names = ["a", "b", "c"];
    let instances: Vec<Value> = sides
        .iter()
        .map(|side| side.instance(names[usize::from(side.id) - 1]))
        .collect();
    for side in sides.iter_mut() {
        let body = json!({
            "guid": guid, "name": "aa", "instances": instances,
            "local_instance_id": side.id,
            "default_db_config": {
                "port": DB_PORT, "memory_size": 104857600u64, "shards_count": shards,
                "replication": replication, "redis_version": ENGINE,
            },
        });
        let created: Value = runtime()
            .block_on(side.cluster.client(1).call(
                reqwest::Method::POST,
                "/v1/crdbs/local",
                Some(&body),
            ))
            .unwrap_or_else(|e| panic!("POST /v1/crdbs/local on instance {}: {e}", side.id));
        side.bdb = created["local_databases"][0]["bdb_uid"]
            .as_u64()
            .expect("the CRDB names its local database");
        let bdb = side.bdb;
        let active = poll_until(Duration::from_secs(60), || {
            side.cluster.db_status(bdb) == "active"
        });
        assert!(active, "instance {}'s database became active", side.id);
    }
}

/// Two clusters and a CRDB with an instance on each.
struct Pair {
    a: Side,
    b: Side,
}

impl Pair {
    /// Clusters on `subnets` with `nodes` nodes each, and a CRDB of `shards` shards
    /// (`replication`), in sync on both sides when this returns.
    fn up(subnets: (u8, u8), nodes: (u8, u8), shards: u16, replication: bool) -> Pair {
        let mut a = Side::up(subnets.0, nodes.0, 1);
        let mut b = Side::up(subnets.1, nodes.1, 2);
        create_crdb(&mut [&mut a, &mut b], shards, replication);
        let pair = Pair { a, b };
        pair.wait_in_sync(usize::from(shards));
        pair
    }

    /// Waits (bounded) until each side has `shards` sources, all in sync with no lag.
    fn wait_in_sync(&self, shards: usize) {
        for side in [&self.a, &self.b] {
            let synced = poll_until(CONVERGE, || {
                let sources = side.sources();
                sources.len() == shards
                    && sources
                        .iter()
                        .all(|s| s.status == SyncStatus::InSync && s.ops_lag == 0 && s.lag == 0)
            });
            assert!(
                synced,
                "instance {} in sync with no lag: {:#?}",
                side.id,
                side.sources()
            );
        }
    }

    /// Waits (bounded) until every key is the same on both sides and both are in sync; the
    /// keys and values.
    fn converge(&self, shards: usize) -> BTreeMap<Vec<u8>, String> {
        let rt = runtime();
        let mut last = (BTreeMap::new(), BTreeMap::new());
        let same = poll_until(CONVERGE, || {
            let (a, b) = (self.a.master_urls(), self.b.master_urls());
            last = rt.block_on(async { (snapshot_all(&a).await, snapshot_all(&b).await) });
            last.0 == last.1
        });
        assert!(same, "both sides converge: A {:?}\nB {:?}", last.0, last.1);
        self.wait_in_sync(shards);
        last.0
    }
}

/// An async connection to the engine at `url`.
async fn connect(url: &str) -> Conn {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// [`snapshot`] of every master of an instance (each shard holds its own keys).
async fn snapshot_all(urls: &[String]) -> BTreeMap<Vec<u8>, String> {
    let mut all = BTreeMap::new();
    for url in urls {
        all.extend(snapshot(&mut connect(url).await).await);
    }
    all
}

/// Every client key of an engine (hidden CRDT keys left out) with its value in one canonical
/// text: type, then the content (sorted where the type is unordered).
async fn snapshot(conn: &mut Conn) -> BTreeMap<Vec<u8>, String> {
    let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap();
    keys.retain(|k| !flotilla_crdb::is_hidden(k));
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap();
        let text = |items: Vec<Vec<u8>>| -> String {
            items
                .iter()
                .map(|i| String::from_utf8_lossy(i).into_owned())
                .collect::<Vec<_>>()
                .join(",")
        };
        let value = match kind.as_str() {
            "none" => continue,
            "string" => {
                let v: Vec<u8> = redis::cmd("GET").arg(&key).query_async(conn).await.unwrap();
                text(vec![v])
            }
            "hash" => {
                let v: BTreeMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .unwrap();
                text(v.into_iter().flat_map(|(f, v)| [f, v]).collect())
            }
            "set" => {
                let mut v: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .unwrap();
                v.sort();
                text(v)
            }
            "zset" | "list" => {
                let mut command = redis::cmd(if kind == "zset" { "ZRANGE" } else { "LRANGE" });
                command.arg(&key).arg(0).arg(-1);
                if kind == "zset" {
                    command.arg("WITHSCORES");
                }
                let v: Vec<Vec<u8>> = command.query_async(conn).await.unwrap();
                text(v)
            }
            other => panic!("unexpected type {other} of {key:?}"),
        };
        out.insert(key, format!("{kind}:{value}"));
    }
    out
}

/// The one source of `side` (a one-shard CRDB, one peer).
fn source(side: &Side) -> SourceReport {
    let sources = side.sources();
    assert_eq!(sources.len(), 1, "one source: {sources:#?}");
    sources.into_iter().next().unwrap()
}

/// Waits (bounded) until `side`'s pullers see the link down.
fn wait_out_of_sync(side: &Side) {
    let down = poll_until(Duration::from_secs(20), || {
        let sources = side.sources();
        !sources.is_empty() && sources.iter().all(|s| s.status == SyncStatus::OutOfSync)
    });
    assert!(
        down,
        "instance {} sees the cut: {:#?}",
        side.id,
        side.sources()
    );
}

fn string(value: &str) -> Write {
    Write::Set {
        value: value.into(),
        keep_ttl: false,
    }
}

#[test]
fn writes_on_both_sides_of_a_cut_link_converge_after_a_partial_resync() {
    let _subnets = hold(&SUBNETS_241);
    let pair = Pair::up((241, 242), (1, 1), 1, false);
    let rt = runtime();
    let (before_a, before_b) = (source(&pair.a), source(&pair.b));
    pair.a.cut();
    pair.b.cut();
    wait_out_of_sync(&pair.a);
    wait_out_of_sync(&pair.b);
    let issues = status_text(&pair.a, &["status", "--issues-only"]);
    assert!(
        issues.contains(&format!(
            "db:{} crdb {GUID}: OUT OF SYNC with instance 2 (b) on shard 0",
            pair.a.bdb
        )),
        "status --issues-only names the link out of sync: {issues}"
    );
    let table = status_text(&pair.b, &["status"]);
    assert!(
        table.contains("CRDB SYNC:") && table.contains("1 (a)") && table.contains("OUT_OF_SYNC"),
        "status shows B's link from A out of sync: {table}"
    );
    let mut increments = 0;
    let (a, b) = (pair.a.master(), pair.b.master());
    rt.block_on(async {
        let mut a = connect(&a).await;
        let mut b = connect(&b).await;
        for i in 0..20 {
            pair.a.write(&mut a, "counter", Write::IncrBy(7)).await;
            pair.b.write(&mut b, "counter", Write::IncrBy(3)).await;
            increments += 10;
            pair.a
                .write(&mut a, &format!("a:{i}"), string("from a"))
                .await;
            pair.b
                .write(&mut b, &format!("b:{i}"), string("from b"))
                .await;
        }
        pair.a.write(&mut a, "register", string("a")).await;
        pair.b.write(&mut b, "register", string("b")).await;
        pair.a
            .write(&mut a, "set", Write::SAdd(vec!["x".into(), "y".into()]))
            .await;
        pair.b
            .write(&mut b, "set", Write::SAdd(vec!["z".into()]))
            .await;
        let field = |f: &str, v: &str| (f.into(), v.into());
        pair.a
            .write(&mut a, "hash", Write::HSet(vec![field("f1", "a")]))
            .await;
        pair.b
            .write(&mut b, "hash", Write::HSet(vec![field("f2", "b")]))
            .await;
        pair.a
            .write(
                &mut a,
                "list",
                Write::Push(flotilla_crdt::End::Left, vec!["a".into()]),
            )
            .await;
        pair.b
            .write(
                &mut b,
                "list",
                Write::Push(flotilla_crdt::End::Left, vec!["b".into()]),
            )
            .await;
    });
    pair.a.heal();
    pair.b.heal();
    let keys = pair.converge(1);
    assert_eq!(keys[&b"counter"[..]], format!("string:{increments}"));
    assert_eq!(keys[&b"set"[..]], "set:x,y,z");
    assert_eq!(keys[&b"hash"[..]], "hash:f1,a,f2,b");
    assert_eq!(keys.len(), 40 + 5, "every key on both sides: {keys:?}");
    for (side, before) in [(&pair.a, before_a), (&pair.b, before_b)] {
        let after = source(side);
        assert_eq!(
            after.crdt_sync_partial_ok,
            before.crdt_sync_partial_ok + 1,
            "instance {} resumed once from its position: {after:#?}",
            side.id
        );
        assert_eq!(after.crdt_sync_full, before.crdt_sync_full, "no full sync");
        assert_eq!((after.lag, after.ops_lag), (0, 0), "no lag left");
        let status: Value =
            serde_json::from_str(&status_text(side, &["status", "--json"])).unwrap();
        let sources = status["crdt_sources"].as_array().expect("crdt_sources");
        assert_eq!(sources.len(), 1, "one link in status --json: {status:#}");
        assert_eq!(sources[0]["status"], "in_sync");
        assert_eq!(
            (sources[0]["lag"].as_u64(), sources[0]["ops_lag"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(sources[0]["bdb_uid"].as_u64(), Some(side.bdb));
        assert!(
            status["issues"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| !i.as_str().unwrap().contains("OUT OF SYNC")),
            "no link out of sync once healed: {status:#}"
        );
    }
}

/// `flotilla <args>` on `side`'s node 1; its stdout (panics unless it succeeds).
fn status_text(side: &Side, args: &[&str]) -> String {
    let output = side.cluster.flotilla(args);
    assert!(
        output.status.success(),
        "flotilla {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Writes `INCRBY counter 1` on `side` in a loop on its own thread until stopped; counts the
/// acknowledged ones. The engine it writes to is resolved once (the test keeps the master).
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(side: &Side) -> Writer {
        let (stop, acked) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (url, id) = (side.master(), side.id);
        let thread = {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                runtime().block_on(async {
                    let mut conn = connect(&url).await;
                    while !stop.load(Ordering::Relaxed) {
                        let now = flotilla_model::now_millis();
                        let write = Write::IncrBy(1);
                        flotilla_crdb::write_local(
                            &mut conn,
                            InstanceId(id),
                            PROTOCOL,
                            now,
                            b"load",
                            write,
                        )
                        .await
                        .expect("an increment on a live master");
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
        };
        Writer {
            stop,
            acked,
            thread,
        }
    }

    /// Waits (bounded) until `more` increments past the current count are acknowledged.
    fn wait_for(&self, more: u64) {
        let target = self.acked.load(Ordering::Relaxed) + more;
        let done = poll_until(Duration::from_secs(20), || {
            self.acked.load(Ordering::Relaxed) >= target
        });
        assert!(done, "the writer made progress");
    }

    /// Stops the writer; the acknowledged increments.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the writer thread");
        self.acked.load(Ordering::Relaxed)
    }
}

#[test]
fn a_cut_longer_than_the_backlog_ends_in_a_full_sync_and_the_lag_returns_to_zero() {
    let _subnets = hold(&SUBNETS_241);
    let pair = Pair::up((241, 242), (1, 1), 1, false);
    let rt = runtime();
    let (a, b) = (pair.a.master(), pair.b.master());
    rt.block_on(async {
        let mut a = connect(&a).await;
        flotilla_crdb::set_repl_backlog(&mut a, 10).await.unwrap();
        for i in 0..5 {
            pair.a
                .write(&mut a, &format!("early:{i}"), string("a"))
                .await;
        }
    });
    pair.converge(1);
    let (before_a, before_b) = (source(&pair.a), source(&pair.b));
    pair.a.cut();
    pair.b.cut();
    wait_out_of_sync(&pair.b);
    rt.block_on(async {
        let mut a = connect(&a).await;
        let mut b = connect(&b).await;
        // Several hundred entries: `MAXLEN ~` trims whole stream nodes (100 entries each).
        for i in 0..400 {
            pair.a
                .write(
                    &mut a,
                    &format!("cut:{}", i % 150),
                    string(&format!("a{i}")),
                )
                .await;
            pair.a.write(&mut a, "counter", Write::IncrBy(2)).await;
        }
        pair.b.write(&mut b, "counter", Write::IncrBy(5)).await;
        pair.b.write(&mut b, "from-b", string("b")).await;
        let log = flotilla_crdb::read_log(&mut a, 0, 1).await.unwrap();
        let first = log.first.expect("the log keeps its newest entries");
        assert!(
            first > before_b.applied + 1,
            "the log was trimmed past B's position {}: first kept {first}",
            before_b.applied
        );
    });
    pair.a.heal();
    pair.b.heal();
    let keys = pair.converge(1);
    assert_eq!(keys[&b"counter"[..]], "string:805");
    assert_eq!(keys.len(), 5 + 150 + 2, "every key on both sides");
    let (after_a, after_b) = (source(&pair.a), source(&pair.b));
    assert_eq!(
        after_b.crdt_sync_full,
        before_b.crdt_sync_full + 1,
        "B transferred A's whole state once: {after_b:#?}"
    );
    assert_eq!((after_b.lag, after_b.ops_lag), (0, 0), "B's lag back to 0");
    assert_eq!(
        after_a.crdt_sync_full, before_a.crdt_sync_full,
        "A did not need one"
    );
    assert_eq!(
        after_a.crdt_sync_partial_ok,
        before_a.crdt_sync_partial_ok + 1
    );
}

#[test]
fn a_syncer_killed_mid_stream_resumes_from_its_position_and_loses_nothing() {
    let _subnets = hold(&SUBNETS_241);
    let pair = Pair::up((241, 242), (1, 1), 1, false);
    let writer_a = Writer::start(&pair.a);
    let writer_b = Writer::start(&pair.b);
    writer_b.wait_for(200);
    // The syncer on A's node dies with its daemon; the engines (and the writers) keep going.
    pair.a.cluster.kill9(1);
    writer_b.wait_for(300);
    writer_a.wait_for(300);
    pair.a.cluster.dev_up();
    writer_b.wait_for(300);
    let acked = writer_a.stop() + writer_b.stop();
    let keys = pair.converge(1);
    assert_eq!(
        keys[&b"load"[..]],
        format!("string:{acked}"),
        "every acknowledged increment of both sides"
    );
    let a = source(&pair.a);
    assert_eq!(a.crdt_sync_full, 0, "no full sync: {a:#?}");
    assert_eq!(
        a.crdt_sync_partial_ok, 1,
        "the new daemon's puller resumed: {a:#?}"
    );
    let b = source(&pair.b);
    assert_eq!(b.crdt_sync_full, 0, "no full sync: {b:#?}");
    assert!(
        b.crdt_sync_partial_ok >= 1,
        "B resumed after A came back: {b:#?}"
    );
}

#[test]
fn a_shard_master_failed_over_on_one_side_converges() {
    let _subnets = hold(&SUBNETS_243);
    let pair = Pair::up((243, 244), (2, 2), 1, true);
    let writer_b = Writer::start(&pair.b);
    let rt = runtime();
    let (a, a_master) = (pair.a.master(), pair.a.masters()[0].clone());
    rt.block_on(async {
        let mut a = connect(&a).await;
        for _ in 0..50 {
            pair.a.write(&mut a, "load", Write::IncrBy(1)).await;
        }
        // The replica has every acknowledged write before the master dies.
        let replicas: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query_async(&mut a)
            .await
            .unwrap();
        assert_eq!(replicas, 1, "the replica acknowledged");
    });
    writer_b.wait_for(100);
    let shards = pair.a.cluster.db_shards_at(1, pair.a.bdb);
    let master = shards.iter().find(|s| s["role"] == "master").unwrap();
    let node = master["node_uid"].as_u64().unwrap() as u8;
    let uid = master["uid"].as_u64().unwrap();
    flotilla_testkit::kill9_pid(pair.a.cluster.engine_pid(node, uid));
    let promoted = poll_until(Duration::from_secs(30), || {
        pair.a.masters().first().is_some_and(|m| *m != a_master)
    });
    assert!(promoted, "A's replica was promoted");
    writer_b.wait_for(100);
    let a = pair.a.master();
    rt.block_on(async {
        let mut a = connect(&a).await;
        for _ in 0..50 {
            pair.a.write(&mut a, "load", Write::IncrBy(1)).await;
        }
    });
    let acked = 100 + writer_b.stop();
    let keys = pair.converge(1);
    assert_eq!(keys[&b"load"[..]], format!("string:{acked}"));
    // The puller moved with the master (one source in the cluster, on the new master's node)
    // and resumed from the position the replica had; the peer's log on the promoted replica
    // still held every op B had pulled: no full sync on either side.
    for side in [&pair.a, &pair.b] {
        let source = source(side);
        assert_eq!(source.crdt_sync_full, 0, "{source:#?}");
    }
}

/// Runs `command` on `conn`; panics with the command when the endpoint refuses it.
fn run<T: redis::FromRedisValue>(conn: &mut redis::Connection, command: &[&str]) -> T {
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    cmd.query(conn)
        .unwrap_or_else(|e| panic!("{}: {e}", command.join(" ")))
}

/// The error `command` gets from the endpoint.
fn refused(conn: &mut redis::Connection, command: &[&str]) -> String {
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    match cmd.query::<redis::Value>(conn) {
        Ok(reply) => panic!("{} was accepted: {reply:?}", command.join(" ")),
        Err(e) => e.to_string(),
    }
}

/// The reference's section 6 rules T1-T6 and T15's convergent type, each with concurrent
/// writes through both instances' endpoints while the link is cut, then healed.
#[test]
fn the_reference_rules_t1_to_t6_and_t15_hold_across_a_cut_link() {
    let _subnets = hold(&SUBNETS_243);
    let pair = Pair::up((243, 244), (1, 1), 1, false);
    let (mut a, mut b) = (pair.a.client(1), pair.b.client(1));
    // Starting points, synced: T3's {a,b}, T4's field, T5's 4.1, T6's [x].
    run::<i64>(&mut a, &["SADD", "s", "a", "b"]);
    run::<i64>(&mut a, &["HSET", "h", "f3", "old"]);
    run::<i64>(&mut a, &["ZADD", "z", "4.1", "x"]);
    run::<i64>(&mut a, &["RPUSH", "L", "x"]);
    pair.converge(1);
    pair.a.cut();
    pair.b.cut();
    wait_out_of_sync(&pair.a);
    wait_out_of_sync(&pair.b);
    // T1: counters sum.
    run::<i64>(&mut a, &["INCRBY", "c", "7"]);
    run::<i64>(&mut b, &["INCRBY", "c", "3"]);
    // T3: SREM removes only what it saw; the concurrent SADD wins.
    run::<i64>(&mut a, &["SREM", "s", "a"]);
    run::<i64>(&mut a, &["SREM", "s", "c"]);
    run::<i64>(&mut b, &["SADD", "s", "c"]);
    // T4: HSET beats a concurrent HDEL; HINCRBY sums.
    run::<i64>(&mut a, &["HDEL", "h", "f3"]);
    run::<i64>(&mut a, &["HINCRBY", "h", "n", "5"]);
    run::<i64>(&mut b, &["HSET", "h", "f3", "x"]);
    run::<i64>(&mut b, &["HINCRBY", "h", "n", "2"]);
    // T5: ZREM removes only the score it saw.
    run::<i64>(&mut a, &["ZREM", "z", "x"]);
    run::<String>(&mut b, &["ZINCRBY", "z", "2", "x"]);
    // T6: concurrent inserts after the same element.
    run::<i64>(&mut a, &["LINSERT", "L", "AFTER", "x", "y1"]);
    run::<i64>(&mut b, &["LINSERT", "L", "AFTER", "x", "y2"]);
    // T15: one key written as two types.
    run::<()>(&mut a, &["SET", "t", "1"]);
    run::<i64>(&mut b, &["SADD", "t", "m"]);
    // T2: later wall clock wins, an exact tie goes to the lower instance id (timestamps given
    // to the write path directly: the endpoint reads the clock itself).
    let (ea, eb) = (pair.a.master(), pair.b.master());
    runtime().block_on(async {
        let (mut ea, mut eb) = (connect(&ea).await, connect(&eb).await);
        let t = flotilla_model::now_millis();
        for (side, ts, key, value) in [
            (1, t, "k", "a"),
            (2, t + 1000, "k", "b"),
            (1, t, "k2", "a"),
            (2, t, "k2", "b"),
        ] {
            let conn = if side == 1 { &mut ea } else { &mut eb };
            let key = key.as_bytes();
            flotilla_crdb::write_local(conn, InstanceId(side), PROTOCOL, ts, key, string(value))
                .await
                .unwrap();
        }
    });
    pair.a.heal();
    pair.b.heal();
    let keys = pair.converge(1);
    let value = |key: &str| keys.get(key.as_bytes()).cloned().unwrap_or_default();
    assert_eq!(value("c"), "string:10", "T1");
    assert_eq!(value("k"), "string:b", "T2: the later write");
    assert_eq!(value("k2"), "string:a", "T2: a tie goes to instance 1");
    assert_eq!(value("s"), "set:b,c", "T3");
    assert_eq!(value("h"), "hash:f3,x,n,7", "T4");
    assert_eq!(value("z"), "zset:x,2", "T5");
    let list = value("L");
    assert!(
        list == "list:x,y1,y2" || list == "list:x,y2,y1",
        "T6: both inserts after x, in one order on both sides: {list}"
    );
    assert!(
        value("t").starts_with("string:") || value("t").starts_with("set:"),
        "T15: one convergent type on both sides: {}",
        value("t")
    );
    // T1: past 59 bits is an error, on either side.
    let overflow = refused(&mut a, &["INCRBY", "c", &(1i64 << 58).to_string()]);
    assert!(overflow.contains("overflow"), "T1 overflow: {overflow}");
    // T6, second part: LPUSH concurrent with DEL keeps only the unseen push.
    pair.a.cut();
    pair.b.cut();
    wait_out_of_sync(&pair.a);
    run::<i64>(&mut a, &["LPUSH", "L", "z"]);
    run::<i64>(&mut b, &["DEL", "L"]);
    pair.a.heal();
    pair.b.heal();
    let keys = pair.converge(1);
    assert_eq!(
        keys[&b"L"[..]],
        "list:z",
        "T6: DEL removes only what it saw"
    );
    // T15: refusals, each naming the command (a cross-shard MSET needs two shards: the
    // proxy's own tests, crates/proxy/tests/crdt.rs, cover it).
    for command in [&["FLUSHALL"][..], &["OBJECT", "ENCODING", "c"]] {
        let error = refused(&mut a, command);
        assert!(
            error.contains(command[0]),
            "{} refused by name: {error}",
            command[0]
        );
    }
}

#[test]
fn three_node_clusters_of_two_shards_converge_after_a_cut_with_clients_on_every_node() {
    let _subnets = hold(&SUBNETS_241);
    let pair = Pair::up((241, 242), (3, 3), 2, true);
    let (before_a, before_b) = (pair.a.sources(), pair.b.sources());
    pair.a.cut();
    pair.b.cut();
    wait_out_of_sync(&pair.a);
    wait_out_of_sync(&pair.b);
    // Clients on every node of both sides, keys on both shards.
    let mut sums = BTreeMap::new();
    for (side, by) in [(&pair.a, 7), (&pair.b, 3)] {
        for n in side.cluster.node_numbers() {
            let mut client = side.client(n);
            for k in 0..10 {
                let counter = format!("counter:{k}");
                run::<i64>(&mut client, &["INCRBY", &counter, &by.to_string()]);
                *sums.entry(counter).or_insert(0) += by;
                let key = format!("{}:{n}:{k}", side.id);
                run::<()>(&mut client, &["SET", &key, "v"]);
            }
        }
    }
    pair.a.heal();
    pair.b.heal();
    let keys = pair.converge(2);
    for (counter, sum) in &sums {
        assert_eq!(
            keys[counter.as_bytes()],
            format!("string:{sum}"),
            "{counter}"
        );
    }
    assert_eq!(keys.len(), 10 + 2 * 3 * 10, "every key on both sides");
    for (side, before) in [(&pair.a, before_a), (&pair.b, before_b)] {
        let after = side.sources();
        assert_eq!(after.len(), 2, "one source per shard: {after:#?}");
        for source in &after {
            let earlier = before.iter().find(|s| s.shard == source.shard).unwrap();
            assert_eq!(
                source.crdt_sync_partial_ok,
                earlier.crdt_sync_partial_ok + 1,
                "instance {} shard {} resumed once: {source:#?}",
                side.id,
                source.shard
            );
            assert_eq!(source.crdt_sync_full, 0);
        }
    }
    // T15: an MSET across the two shards is refused, naming the command.
    let (low, high) = {
        let slot = |k: &str| flotilla_resp::slot::key_slot(k.as_bytes());
        let keys: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
        let low = keys.iter().find(|k| slot(k) < 8192).unwrap().clone();
        let high = keys.iter().find(|k| slot(k) >= 8192).unwrap().clone();
        (low, high)
    };
    let mut client = pair.a.client(1);
    let error = refused(&mut client, &["MSET", &low, "1", &high, "2"]);
    assert!(
        error.contains("MSET"),
        "a cross-shard MSET is refused by name: {error}"
    );
    // One of A's URLs unreachable: B's pullers go on through A's other nodes.
    pair.a.relays[0].cut();
    let mut client = pair.a.client(2);
    run::<()>(&mut client, &["SET", "after-url-cut", "v"]);
    let keys = pair.converge(2);
    assert!(keys.contains_key(&b"after-url-cut"[..]));
    let first_url = pair.a.relays[0].https_url();
    // A long poll in flight answers within its wait: the URL shows at its answer.
    let moved = poll_until(Duration::from_secs(10), || {
        pair.b.sources().iter().all(|s| s.uri != first_url)
    });
    assert!(
        moved,
        "B pulls through another node: {:#?}",
        pair.b.sources()
    );
}

/// `GET ADDR:8070/metrics` of `side`'s node `n`.
fn metrics(side: &Side, n: u8) -> String {
    flotilla_testkit::install_crypto_provider();
    let url = format!("http://{}:8070/metrics", side.cluster.addr(n));
    runtime().block_on(async {
        let response = reqwest::get(&url).await.expect("scraping metrics");
        response.text().await.expect("metrics text")
    })
}

/// The value of the series whose line starts with `series` (name and labels).
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn replication_lag_is_measured_and_exported_as_metrics() {
    let _subnets = hold(&SUBNETS_243);
    let pair = Pair::up((243, 244), (1, 1), 1, false);
    let (mut a, mut b) = (pair.a.client(1), pair.b.client(1));
    // Write on A, time until B's endpoint reads it.
    let mut lags = Vec::new();
    for i in 0..200 {
        let key = format!("lag:{i}");
        let started = std::time::Instant::now();
        run::<()>(&mut a, &["SET", &key, "v"]);
        // Polled every millisecond (poll_until's 50 ms would hide the lag), for 10 s at most.
        while run::<Option<String>>(&mut b, &["GET", &key]).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{key} reached B"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        lags.push(started.elapsed());
    }
    lags.sort();
    let (p50, p99) = (lags[lags.len() / 2], lags[lags.len() * 99 / 100]);
    eprintln!("A->B replication lag over 200 writes: p50 {p50:?}, p99 {p99:?}");
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");
    // B's node exports its link: in sync, no lag.
    pair.wait_in_sync(1);
    let labels = r#"{bdb="1",source="a/1",shard="0"}"#;
    let text = metrics(&pair.b, 1);
    let lag =
        r#"flotilla_database_syncer_lag_ms{bdb="1",syncer_type="crdt",source="a/1",shard="0"}"#;
    assert_eq!(series(&text, lag), Some(0.0), "{text}");
    let status = format!("flotilla_bdb_crdt_syncer_status{labels}");
    assert_eq!(series(&text, &status), Some(0.0), "in sync: {text}");
    // Cut: out of sync (2), and the lag grows from the last contact.
    pair.a.cut();
    wait_out_of_sync(&pair.b);
    let text = metrics(&pair.b, 1);
    assert_eq!(series(&text, &status), Some(2.0), "out of sync: {text}");
    let grows = poll_until(Duration::from_secs(10), || {
        series(&metrics(&pair.b, 1), lag).is_some_and(|ms| ms >= 500.0)
    });
    assert!(grows, "the lag grows while the link is cut");
    pair.a.heal();
    pair.wait_in_sync(1);
    let text = metrics(&pair.b, 1);
    assert_eq!(series(&text, &status), Some(0.0), "in sync again: {text}");
    let partial = format!("flotilla_crdt_sync_partial_ok_total{labels}");
    assert_eq!(
        series(&text, &partial),
        Some(1.0),
        "one partial resync: {text}"
    );
    // Catch-up rate: a backlog of 3000 ops written during a cut, applied after the heal.
    pair.a.cut();
    wait_out_of_sync(&pair.b);
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.cmd("INCRBY")
            .arg(format!("rate:{}", i % 100))
            .arg(1)
            .ignore();
    }
    let _: () = pipe.query(&mut a).expect("3000 increments");
    let healed = std::time::Instant::now();
    pair.a.heal();
    pair.wait_in_sync(1);
    let took = healed.elapsed();
    eprintln!(
        "catch-up of 3000 ops after a cut: {took:?} ({:.0} ops/s, reconnect backoff included)",
        3000.0 / took.as_secs_f64()
    );
}

/// T9 on three clusters: concurrent EXPIRE 10, EXPIRE 50 and PERSIST: PERSIST wins; without
/// the PERSIST, the longest TTL wins.
#[test]
fn t9_persist_beats_every_ttl_and_the_longest_ttl_wins_on_three_clusters() {
    let _first = hold(&SUBNETS_241);
    let _second = hold(&SUBNETS_243);
    let mut a = Side::up(241, 1, 1);
    let mut b = Side::up(242, 1, 2);
    let mut c = Side::up(243, 1, 3);
    create_crdb(&mut [&mut a, &mut b, &mut c], 1, false);
    let sides = [&a, &b, &c];
    let in_sync = |what: &str| {
        for side in sides {
            let synced = poll_until(CONVERGE, || {
                let sources = side.sources();
                sources.len() == 2
                    && sources
                        .iter()
                        .all(|s| s.status == SyncStatus::InSync && s.ops_lag == 0)
            });
            assert!(
                synced,
                "{what}: instance {} in sync: {:#?}",
                side.id,
                side.sources()
            );
        }
    };
    let mut clients: Vec<redis::Connection> = sides.iter().map(|s| s.client(1)).collect();
    // Keys with a TTL every instance has seen (a PERSIST of a key without one does nothing,
    // on an engine as here).
    run::<()>(&mut clients[0], &["SET", "k", "v", "EX", "100"]);
    run::<()>(&mut clients[0], &["SET", "k2", "v", "EX", "100"]);
    let everywhere = |clients: &mut Vec<redis::Connection>, key: &str| {
        poll_until(CONVERGE, || {
            clients
                .iter_mut()
                .all(|c| run::<Option<String>>(c, &["GET", key]).is_some())
        })
    };
    assert!(
        everywhere(&mut clients, "k2"),
        "the keys reached every instance"
    );
    in_sync("before the cut");
    sides.iter().for_each(|s| s.cut());
    for side in sides {
        wait_out_of_sync(side);
    }
    run::<i64>(&mut clients[0], &["EXPIRE", "k", "10"]);
    run::<i64>(&mut clients[1], &["EXPIRE", "k", "50"]);
    run::<i64>(&mut clients[2], &["PERSIST", "k"]);
    run::<i64>(&mut clients[0], &["EXPIRE", "k2", "10"]);
    run::<i64>(&mut clients[1], &["EXPIRE", "k2", "50"]);
    sides.iter().for_each(|s| s.heal());
    in_sync("after the heal");
    for (i, client) in clients.iter_mut().enumerate() {
        let ttl: i64 = run(client, &["TTL", "k"]);
        assert_eq!(ttl, -1, "instance {}: PERSIST beats every TTL", i + 1);
        let ttl: i64 = run(client, &["TTL", "k2"]);
        assert!(
            (40..=50).contains(&ttl),
            "instance {}: the longest TTL wins: {ttl}",
            i + 1
        );
    }
}

/// `XRANGE`'s reply: entry ids with their fields.
type StreamEntries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// A peer whose log no longer holds the op at the puller's position under the same number (its
/// master failed over and lost unreplicated ops, then logged new ones): the dot differs, the
/// puller transfers the whole state instead of skipping or re-reading the wrong ops.
#[test]
fn a_peer_log_rewritten_under_the_position_ends_in_a_full_sync() {
    let _subnets = hold(&SUBNETS_241);
    let pair = Pair::up((241, 242), (1, 1), 1, false);
    let mut a = pair.a.client(1);
    for i in 0..10 {
        run::<()>(&mut a, &["SET", &format!("k{i}"), "first"]);
    }
    pair.converge(1);
    let before = source(&pair.b);
    assert_eq!(before.applied, 10);
    // What a failover that lost A's last 3 ops leaves: a log ending at 7, the next op 8.
    let url = pair.a.master();
    runtime().block_on(async {
        let mut conn = connect(&url).await;
        let oplog = flotilla_crdb::OPLOG_KEY;
        // The stream rebuilt with entries 1-7 only (XTRIM would keep its last id, 10-0).
        let kept: StreamEntries = redis::cmd("XRANGE")
            .arg(oplog)
            .arg("-")
            .arg("7-0")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(kept.len(), 7);
        let _: i64 = redis::cmd("DEL")
            .arg(oplog)
            .query_async(&mut conn)
            .await
            .unwrap();
        for (id, fields) in kept {
            let mut xadd = redis::cmd("XADD");
            xadd.arg(oplog).arg(id);
            for (field, value) in fields {
                xadd.arg(field).arg(value);
            }
            let _: String = xadd.query_async(&mut conn).await.unwrap();
        }
        let _: () = redis::cmd("SET")
            .arg(flotilla_crdb::OPSEQ_KEY)
            .arg(7)
            .query_async(&mut conn)
            .await
            .unwrap();
    });
    // New ops take the numbers 8, 9, 10 with other dots (other keys).
    for i in 0..3 {
        run::<()>(&mut a, &["SET", &format!("new{i}"), "second"]);
    }
    let keys = pair.converge(1);
    assert_eq!(keys.len(), 13, "every key on both sides");
    let after = source(&pair.b);
    assert_eq!(
        after.crdt_sync_full,
        before.crdt_sync_full + 1,
        "{after:#?}"
    );
}

/// The users' path: `flotilla crdb create` with each cluster's URL (no relay); writes on both
/// instances reach the other.
#[test]
fn a_crdb_made_with_crdb_create_syncs_both_ways() {
    let _subnets = hold(&SUBNETS_243);
    let a = DevCluster::up(&bin(), 243, 1);
    let b = DevCluster::up(&bin(), 244, 1);
    let port = DB_PORT.to_string();
    let (url_a, url_b) = (a.url(1), b.url(1));
    let created = a.flotilla(&[
        "crdb",
        "create",
        "--name",
        "made",
        "--port",
        &port,
        "--memory",
        "100mb",
        "--instance",
        &url_a,
        "--instance",
        &url_b,
    ]);
    flotilla_testkit::assert_success(&created, "flotilla crdb create");
    for cluster in [&a, &b] {
        let active = poll_until(Duration::from_secs(60), || {
            let bdbs = cluster.json(1, &["db", "list", "--json"]);
            bdbs.as_array()
                .is_some_and(|l| !l.is_empty() && l.iter().all(|b| b["status"] == "active"))
        });
        assert!(active, "the instance's database is active");
    }
    let mut ca = flotilla_testkit::endpoint_connection(a.addr(1), DB_PORT);
    let mut cb = flotilla_testkit::endpoint_connection(b.addr(1), DB_PORT);
    run::<()>(&mut ca, &["SET", "from-a", "1"]);
    run::<i64>(&mut ca, &["INCRBY", "c", "5"]);
    run::<i64>(&mut cb, &["INCRBY", "c", "7"]);
    let both = poll_until(CONVERGE, || {
        let seen = |conn: &mut redis::Connection| {
            run::<Option<String>>(conn, &["GET", "c"]).as_deref() == Some("12")
                && run::<Option<String>>(conn, &["GET", "from-a"]).is_some()
        };
        seen(&mut ca) && seen(&mut cb)
    });
    assert!(both, "both instances have every write");
}
