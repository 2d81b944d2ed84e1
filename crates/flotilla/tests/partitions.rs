//! Network partitions (issue 14), each node of a 3-node cluster in its own network namespace
//! (`flotilla_testkit::netns`), the test's CLI, REST clients and load checker in a client
//! namespace on the same bridge:
//! - a master's node cut off from everything: its slot range fails over to the replica, the
//!   cut-off master stops taking writes within its master lease (a client inside the cut-off
//!   node's namespace writing through that node's endpoint gets no write acknowledged past the
//!   bound), the writes it acknowledged during the cut and lost after the heal are counted;
//! - the primary node cut off: the others elect a new one and it takes over, the old one
//!   changes nothing (its state does not advance, an operator's change there fails clearly);
//!   after the heal it follows;
//! - a proxy cut off from a master (the one link between the endpoint's node and the master's
//!   node): a write through that endpoint gets a clear error within the hold bound, no failover
//!   happens (the master still hears the primary node), so no write goes to two masters.
//!
//! After every heal: every node up and agreeing, one master per slot range, every shard active
//! in its role; the load checker's verdict printed.
//!
//! Needs root and iproute2 (`scripts/install-test-packages`). Networks `10.14.230.x`-`.232.x`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flotilla_model::timing::{
    FAILOVER_AFTER, HOLD_TIMEOUT, LEASE_CHECK, LEASE_FENCE_REACH, LIVENESS_WINDOW, MASTER_LEASE,
};
use flotilla_resp::Value;
use flotilla_testkit::netns::{run_in, Network};
use flotilla_testkit::{
    flotilla_bin, load_runtime, poll_until, start_load, stop_load, DevCluster, RespClient,
};
use serde_json::Value as Json;

const ENGINE: &str = "valkey-8.1";
/// How long the cluster gets to notice a fault or to converge after a heal (a loaded 2-core
/// machine; the measured times are printed).
const CONVERGE: Duration = Duration::from_secs(60);
/// Room for a loaded machine on top of a documented bound (the measured value is printed).
const SLACK: Duration = Duration::from_millis(750);

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

/// A replicated database of one shard on `port`: one master, one replica, on two nodes.
fn one_shard_db(cluster: &DevCluster, port: u16) -> u64 {
    let bdb = cluster.create_replicated_db_of("part", port, ENGINE, 1);
    bdb["uid"].as_u64().expect("database uid")
}

/// The node number (address order) of node `uid`, as node `at` lists the nodes.
fn number_of(cluster: &DevCluster, net: &Network, at: u8, uid: u64) -> u8 {
    let nodes = runtime_nodes(cluster, at).expect("GET /v1/nodes");
    let addr = nodes
        .iter()
        .find(|n| n["uid"].as_u64() == Some(uid))
        .and_then(|n| n["addr"].as_str())
        .expect("the node is listed")
        .to_string();
    cluster
        .node_numbers()
        .find(|n| net.addr(*n).to_string() == addr)
        .expect("a node of the network")
}

/// The masters (node uids) of the database's slot range, as node `at` sees it (none when it
/// does not answer at once).
fn masters(cluster: &DevCluster, at: u8) -> Vec<u64> {
    runtime_shards(cluster, at)
        .unwrap_or_default()
        .iter()
        .filter(|s| s["role"] == "master")
        .map(|s| s["node_uid"].as_u64().expect("node uid"))
        .collect()
}

/// The primary node's uid as node `at` answers at once (`None` when it cannot tell).
fn primary_node(cluster: &DevCluster, at: u8) -> Option<u64> {
    let nodes = runtime_nodes(cluster, at).ok()?;
    let primary = nodes.iter().find(|n| n["role"] == "primary")?;
    primary["uid"].as_u64()
}

/// Every node, asked itself, lists every node up, the same primary node, one master for each
/// slot range on the same node, and every shard active in its role.
fn converged(cluster: &DevCluster) -> bool {
    let mut views = Vec::new();
    for n in cluster.node_numbers() {
        let Ok(nodes) = runtime_nodes(cluster, n) else {
            return false;
        };
        let all_up = nodes.iter().all(|n| n["status"] == "up");
        let Ok(shards) = runtime_shards(cluster, n) else {
            return false;
        };
        let active = shards.iter().all(|s| s["status"] == "active");
        let masters: Vec<(String, u64)> = shards
            .iter()
            .filter(|s| s["role"] == "master")
            .filter_map(|s| Some((s["assigned_slots"].to_string(), s["node_uid"].as_u64()?)))
            .collect();
        let ranges: std::collections::BTreeSet<String> = shards
            .iter()
            .map(|s| s["assigned_slots"].to_string())
            .collect();
        let one_each = masters.len() == ranges.len()
            && ranges
                .iter()
                .all(|r| masters.iter().filter(|(m, _)| m == r).count() == 1);
        if !all_up || !active || !one_each {
            return false;
        }
        views.push((primary_node(cluster, n), masters));
    }
    views.windows(2).all(|w| w[0] == w[1]) && views[0].0.is_some()
}

/// How long a REST call of the test may take: a node whose primary node is cut off may wait
/// for it long; the test asks again rather than wait.
const CALL: Duration = Duration::from_secs(3);

fn runtime_nodes(cluster: &DevCluster, n: u8) -> Result<Vec<Json>, String> {
    let client = cluster.client(n);
    let nodes = flotilla_testkit::runtime()
        .block_on(async { tokio::time::timeout(CALL, client.nodes()).await })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(nodes
        .into_iter()
        .map(|s| serde_json::to_value(s).expect("node as JSON"))
        .collect())
}

fn runtime_shards(cluster: &DevCluster, n: u8) -> Result<Vec<Json>, String> {
    let client = cluster.client(n);
    let shards = flotilla_testkit::runtime()
        .block_on(async { tokio::time::timeout(CALL, client.shards()).await })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(shards
        .into_iter()
        .map(|s| serde_json::to_value(s).expect("shard as JSON"))
        .collect())
}

/// How far a master's replication stream must have gone (bytes of writes) before a test
/// takes its offset as the mark its replicas must reach: past a freshly created database's
/// initial sync, whose stream starts only once the replica acknowledged it.
const STREAMED: i64 = 100_000;

/// Waits (bounded) until every master, as node `at` reports them, has streamed [`STREAMED`]
/// bytes of writes, then until every replica is linked and has replicated what its master had
/// then: the cut then finds replication caught up (what the "expected 0 lost" assumes).
fn wait_caught_up(cluster: &DevCluster, at: u8) {
    let master_offsets = || -> Option<Vec<(String, i64)>> {
        let shards = runtime_shards(cluster, at).ok()?;
        let masters: Vec<(String, i64)> = shards
            .iter()
            .filter(|s| s["role"] == "master")
            .map(|s| {
                (
                    s["assigned_slots"].to_string(),
                    s["offset"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        masters
            .iter()
            .all(|(_, o)| *o >= STREAMED)
            .then_some(masters)
    };
    let mut wanted = None;
    let streamed = poll_until(CONVERGE, || {
        wanted = master_offsets();
        wanted.is_some()
    });
    assert!(
        streamed,
        "the load did not write {STREAMED} bytes to every master"
    );
    let wanted = wanted.unwrap_or_default();
    let caught_up = poll_until(CONVERGE, || {
        let Ok(now) = runtime_shards(cluster, at) else {
            return false;
        };
        wanted.iter().all(|(range, offset)| {
            now.iter()
                .filter(|s| s["role"] == "slave" && s["assigned_slots"] == *range)
                .all(|s| s["status"] == "active" && s["offset"].as_i64() >= Some(*offset))
        })
    });
    assert!(caught_up, "replicas did not catch up within {CONVERGE:?}");
}

/// The slot range (`start-end`) of the master on node `node`.
fn master_slots(cluster: &DevCluster, node: u64) -> (u16, u16) {
    let shards = runtime_shards(cluster, 1).expect("GET /v1/shards");
    let shard = shards
        .iter()
        .find(|s| s["role"] == "master" && s["node_uid"].as_u64() == Some(node))
        .expect("the master is listed");
    let range = shard["assigned_slots"].as_str().expect("a slot range");
    let (start, end) = range.split_once('-').expect("start-end");
    (start.parse().unwrap(), end.parse().unwrap())
}

/// A key prefix with a hash tag whose slot is in `range`: every key of it goes to that shard.
fn tag_in(range: &(u16, u16)) -> String {
    (0..)
        .map(|i| format!("{{inside{i}}}"))
        .find(|tag| (range.0..=range.1).contains(&flotilla_proxy::key_slot(tag.as_bytes())))
        .expect("some tag hashes into the range")
}

/// One write a [`Writer`] saw acknowledged.
struct Acked {
    key: String,
    at: Instant,
}

/// A client that SETs fresh keys one at a time through `endpoint` from namespace `ns`, never
/// retrying a key (an error or a timeout leaves its outcome unknown; the next write uses a new
/// key on a new connection), and keeps what was acknowledged and when.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::Mutex<Vec<Acked>>>,
    thread: JoinHandle<()>,
}

impl Writer {
    fn start(ns: &str, endpoint: SocketAddr, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop_flag, record, prefix) = (stop.clone(), acked.clone(), prefix.to_string());
        let thread = run_in(ns, move || {
            let mut client: Option<RespClient> = None;
            for i in 0u64.. {
                if stop_flag.load(Ordering::Relaxed) {
                    return;
                }
                let connected = match client.as_mut() {
                    Some(c) => Ok(c),
                    None => RespClient::connect(endpoint, Duration::from_millis(500))
                        .map(|c| client.insert(c)),
                };
                let Ok(c) = connected else {
                    // Not reachable: pace the next attempt (each attempt is a fresh key).
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let key = format!("{prefix}:{i}");
                match c.call(&["SET", &key, "v"]) {
                    Ok(Value::SimpleString(ok)) if &ok[..] == b"OK" => {
                        let at = Instant::now();
                        record.lock().unwrap().push(Acked { key, at });
                    }
                    _ => client = None,
                }
            }
        });
        Writer {
            stop,
            acked,
            thread,
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn stop(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("writer thread");
        Arc::try_unwrap(self.acked)
            .ok()
            .expect("the writer is done")
            .into_inner()
            .unwrap()
    }
}

/// The acknowledged keys that `endpoint` (from the test's namespace) no longer has.
fn missing(endpoint: SocketAddr, acked: &[Acked]) -> Vec<&Acked> {
    let mut client = RespClient::connect(endpoint, Duration::from_secs(5)).expect("endpoint");
    acked
        .iter()
        .filter(|a| {
            let value = client.call(&["GET", &a.key]).expect("GET answers");
            !matches!(value, Value::BulkString(v) if &v[..] == b"v")
        })
        .collect()
}

/// A load through a node that is not cut off reaches a cut-off master only before the cut:
/// what it loses is what was in flight to the master's replica at that moment (asynchronous
/// replication; 0 to 2 writes measured), far less than a second's worth.
fn assert_loss_within_a_second(report: &flotilla_loadcheck::Report) {
    let per_second = report.writes_acknowledged * 1000 / report.elapsed_ms.max(1);
    assert!(
        report.lost_writes <= per_second,
        "the load lost {} acknowledged writes (a second is {per_second}): {:?}",
        report.lost_writes,
        report.lost_write_examples
    );
}

fn endpoint(net: &Network, n: u8, port: u16) -> SocketAddr {
    SocketAddr::from((net.addr(n), port))
}

/// (2) A master's node cut off from everything (not the primary node's: that is (1)).
#[test]
fn a_cut_off_master_stops_taking_writes_within_its_lease_and_its_range_fails_over() {
    let net = Network::create("mcut", 230, 3);
    let cluster = net.up_cluster(&bin());
    let port = 12000;
    let bdb = cluster.create_replicated_db("part", port, ENGINE)["uid"]
        .as_u64()
        .expect("database uid");
    let primary = primary_node(&cluster, 1).expect("a primary node");
    let master = masters(&cluster, 1)
        .into_iter()
        .find(|uid| *uid != primary)
        .expect("a master off the primary node (2 shards on 3 nodes)");
    let m = number_of(&cluster, &net, 1, master);
    let other = number_of(&cluster, &net, 1, primary);
    let tag = tag_in(&master_slots(&cluster, master));
    eprintln!("database {bdb}: a master on node {m}; load through node {other}");

    let rt = load_runtime();
    let load = start_load(&rt, endpoint(&net, other, port).to_string());
    // A client on the master's own side of the cut, through its node's endpoint.
    let inside = Writer::start(&net.node_ns(m), endpoint(&net, m, port), &tag);
    assert!(
        poll_until(Duration::from_secs(10), || inside.count() > 50),
        "the client inside node {m}'s namespace writes"
    );
    wait_caught_up(&cluster, other);

    net.isolate(m);
    let cut = Instant::now();
    let failed_over = poll_until(CONVERGE, || {
        let now = masters(&cluster, other);
        now.len() == 2 && !now.contains(&master)
    });
    let failover_took = cut.elapsed();
    assert!(
        failed_over,
        "the slot range did not fail over within {CONVERGE:?}"
    );
    // The cut-off master, fenced, acknowledges nothing more however long the cut lasts.
    let acked_before_heal = inside.count();
    let fenced_for = poll_until(Duration::from_secs(2), || {
        inside.count() != acked_before_heal
    });
    assert!(
        !fenced_for,
        "the cut-off master acknowledged a write after the failover"
    );

    net.heal();
    let healed = Instant::now();
    assert!(
        poll_until(CONVERGE, || converged(&cluster)),
        "the cluster did not converge within {CONVERGE:?} after the heal"
    );
    let converge_took = healed.elapsed();
    let acked = inside.stop();
    let report = stop_load(&rt, load);

    let bound = MASTER_LEASE + LEASE_CHECK + LEASE_FENCE_REACH;
    // Acknowledged while cut off (after the heal, the endpoint routes to the new master).
    let after_cut: Vec<&Acked> = acked
        .iter()
        .filter(|a| a.at > cut && a.at < healed)
        .collect();
    let last_after_cut = after_cut.iter().map(|a| a.at - cut).max();
    let lost = missing(endpoint(&net, other, port), &acked);
    eprintln!(
        "master cut off: failover seen {failover_took:?} after the cut (no earlier than {:?} \
         after the master's last report); inside writer: {} acknowledged, {} during the cut, the last {last_after_cut:?} \
         after the cut (lease bound {bound:?}), the heal {:?} after the cut; {} acknowledged \
         writes lost after the heal; \
         converged {converge_took:?} after the heal; outside load: {} acknowledged, {} client \
         errors, {} lost, longest stall {:.0} ms",
        LIVENESS_WINDOW + FAILOVER_AFTER,
        acked.len(),
        after_cut.len(),
        healed - cut,
        lost.len(),
        report.writes_acknowledged,
        report.client_errors_total,
        report.lost_writes,
        report.longest_stall_ms,
    );
    assert!(
        last_after_cut.is_none_or(|t| t <= bound + SLACK),
        "the cut-off master acknowledged a write {last_after_cut:?} after the cut, past its \
         lease bound {bound:?}"
    );
    // What is lost is what the cut-off master acknowledged around the cut, not before.
    let early = lost
        .iter()
        .filter(|a| a.at + Duration::from_secs(1) < cut)
        .count();
    assert_eq!(
        early, 0,
        "writes acknowledged well before the cut were lost"
    );
    assert_loss_within_a_second(&report);
    let now_masters = masters(&cluster, m);
    assert!(
        !now_masters.contains(&master),
        "the old master follows its successor: {now_masters:?}"
    );
}

/// (1) The primary node cut off.
#[test]
fn a_cut_off_primary_node_changes_nothing_and_follows_after_the_heal() {
    let net = Network::create("pcut", 231, 3);
    let cluster = net.up_cluster(&bin());
    let port = 12001;
    one_shard_db(&cluster, port);
    let primary = primary_node(&cluster, 1).expect("a primary node");
    let p = number_of(&cluster, &net, 1, primary);
    let other = cluster.node_numbers().find(|n| *n != p).unwrap();
    let rt = load_runtime();
    let load = start_load(&rt, endpoint(&net, other, port).to_string());
    wait_caught_up(&cluster, other);

    net.isolate(p);
    let cut = Instant::now();
    let elected = poll_until(CONVERGE, || {
        primary_node(&cluster, other).is_some_and(|uid| uid != primary)
    });
    assert!(elected, "no new primary node within {CONVERGE:?}");
    eprintln!("primary node {p} cut off: a new one in {:?}", cut.elapsed());

    // On the cut-off side: an operator's change fails clearly, and the state does not move.
    let (before, refused) = {
        let cluster_bin = bin();
        let url = cluster.url(p);
        run_in(&net.node_ns(p), move || {
            let cli = |args: &[&str]| {
                std::process::Command::new(&cluster_bin)
                    .args(args)
                    .env("FLOTILLA_URL", &url)
                    .env("FLOTILLA_USER", flotilla_testkit::USER)
                    .env("FLOTILLA_PASSWORD", flotilla_testkit::PASSWORD)
                    .output()
                    .expect("the CLI runs")
            };
            let shards = |out: std::process::Output| String::from_utf8_lossy(&out.stdout).into();
            let before: String = shards(cli(&["db", "list", "--json"]));
            let started = Instant::now();
            let create = cli(&[
                "db", "create", "--name", "minority", "--port", "12099", "--memory", "50mb",
            ]);
            eprintln!(
                "db create on the cut-off primary node: {:?} after {:?}: {}",
                create.status,
                started.elapsed(),
                String::from_utf8_lossy(&create.stderr).trim()
            );
            let after: String = shards(cli(&["db", "list", "--json"]));
            ((before, after), create)
        })
        .join()
        .expect("the cut-off side's client")
    };
    assert!(
        !refused.status.success(),
        "a database created on the cut-off primary node: {refused:?}"
    );
    assert!(!refused.stderr.is_empty(), "the refusal says why");
    assert_eq!(before.0, before.1, "the cut-off primary node's state moved");

    net.heal();
    assert!(
        poll_until(CONVERGE, || converged(&cluster)),
        "the cluster did not converge within {CONVERGE:?} after the heal"
    );
    assert_ne!(
        primary_node(&cluster, p),
        Some(primary),
        "the old one follows"
    );
    let dbs = cluster.json(p, &["db", "list", "--json"]);
    let names: Vec<&str> = dbs
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["part"],
        "nothing the minority side tried was applied"
    );
    let report = stop_load(&rt, load);
    assert_loss_within_a_second(&report);
}

/// (3) A proxy cut off from a master (that link only).
#[test]
fn a_proxy_cut_off_from_a_master_answers_a_clear_error_within_the_hold_bound() {
    let net = Network::create("lcut", 232, 3);
    let cluster = net.up_cluster(&bin());
    let port = 12002;
    one_shard_db(&cluster, port);
    let master = masters(&cluster, 1)[0];
    let m = number_of(&cluster, &net, 1, master);
    let k = cluster.node_numbers().find(|n| *n != m).unwrap();
    let rt = load_runtime();
    let third = cluster.node_numbers().find(|n| *n != m && *n != k).unwrap();
    let load = start_load(&rt, endpoint(&net, third, port).to_string());

    net.cut_link(k, m);
    let mut client = RespClient::connect(endpoint(&net, k, port), Duration::from_secs(30))
        .expect("node k's endpoint");
    let started = Instant::now();
    let answer = client.call(&["SET", "cut:1", "v"]);
    let took = started.elapsed();
    eprintln!("a write through node {k}, cut from master node {m}: {answer:?} after {took:?}");
    let bound = HOLD_TIMEOUT + Duration::from_secs(2) + SLACK;
    match answer {
        Ok(Value::Error(message)) => {
            let message = String::from_utf8_lossy(&message).to_lowercase();
            assert!(
                message.contains("not executed") || message.starts_with("tryagain"),
                "the error says the write was not executed: {message}"
            );
        }
        other => panic!("expected a clear error, got {other:?}"),
    }
    assert!(took <= bound, "answered after {took:?}, past {bound:?}");
    // The master still hears the primary node: no failover, one master.
    assert_eq!(masters(&cluster, third), vec![master], "no failover");

    net.heal();
    assert!(
        poll_until(CONVERGE, || converged(&cluster)),
        "the cluster did not converge within {CONVERGE:?} after the heal"
    );
    assert!(
        poll_until(CONVERGE, || {
            let Ok(mut c) = RespClient::connect(endpoint(&net, k, port), Duration::from_secs(5))
            else {
                return false;
            };
            matches!(c.call(&["SET", "cut:2", "v"]), Ok(Value::SimpleString(_)))
        }),
        "writes through node {k} work again after the heal"
    );
    let report = stop_load(&rt, load);
    assert_eq!(
        report.client_errors_total, 0,
        "the load through node {third} (which reaches the master) saw no error: {:?}",
        report.error_examples
    );
    assert_eq!(report.lost_writes, 0, "{:?}", report.lost_write_examples);
}
