//! Cluster software upgrades in place (issue 10), against real daemons and engines:
//! - a handover between two packages of this source keeps every client connection (same local
//!   port, same `CLIENT ID`), a subscriber's messages, an open MULTI and every engine's pid,
//!   under load with zero client errors and zero lost writes, on every node, primary first;
//! - a node moves back before finalization, and is refused once the cluster is finalized;
//! - from the real release 0.1.0 the upgrade restarts each daemon (counted), loses no write,
//!   restarts no shard, and while 0.1.0 nodes are members every node's state stays identical
//!   and nothing is proposed that 0.1.0 cannot decode;
//! - a kill -9 of the new process, or of the old one, during the handover leaves the node
//!   serving.
//!
//! Subnets 127.0.101-104.x.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_resp::Value;
use flotilla_testkit::{
    assert_success, flotilla_bin, load_runtime, poll_until, runtime, start_load, stop_load,
    stop_load_clean, DevCluster, Packages, RespClient,
};

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

fn packages() -> &'static Packages {
    Packages::shared(&bin())
}

/// The binary under test as 0.2.0 and as 0.2.1.
fn current_pair() -> (PathBuf, PathBuf) {
    packages().current_pair()
}

/// `flotilla upgrade node N --package P --yes` against node 1's API; its output.
fn upgrade_node(
    cluster: &DevCluster,
    node: u8,
    package: &Path,
    extra: &[&str],
) -> std::process::Output {
    let package = package.to_string_lossy().into_owned();
    let node = node.to_string();
    let mut args = vec!["upgrade", "node", &node, "--package", &package, "--yes"];
    args.extend_from_slice(extra);
    cluster.flotilla(&args)
}

/// Upgrades node `n` and checks the command succeeded; returns its report line.
fn upgrade_ok(cluster: &DevCluster, node: u8, package: &Path) -> String {
    let started = Instant::now();
    let output = upgrade_node(cluster, node, package, &[]);
    assert_success(&output, &format!("upgrade node {node}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("node {node} upgraded in {:?}:\n{text}", started.elapsed());
    let log = std::fs::read_to_string(cluster.data_dir(node).join("flotilla.log")).unwrap();
    assert!(
        !log.contains("could not move primary-ship first"),
        "a primary node hands primary-ship to another node before it hands over"
    );
    text
}

/// Every running engine's pid on every node, by shard uid.
fn engine_pids(cluster: &DevCluster) -> BTreeMap<String, u32> {
    let mut pids = BTreeMap::new();
    for n in cluster.node_numbers() {
        let shards = cluster.data_dir(n).join("shards");
        for entry in std::fs::read_dir(&shards).into_iter().flatten().flatten() {
            let pid = std::fs::read_to_string(entry.path().join("engine.pid"))
                .ok()
                .and_then(|t| t.trim().parse().ok());
            if let Some(pid) = pid {
                pids.insert(entry.file_name().to_string_lossy().into_owned(), pid);
            }
        }
    }
    pids
}

/// The versions every node reports, and the cluster version, as node 1 answers.
fn versions(cluster: &DevCluster) -> (Vec<String>, String) {
    let status = cluster.status_json(1);
    let nodes = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["software_version"].as_str().unwrap_or("?").to_string())
        .collect();
    let cluster_version = status["cluster"]["cluster_version"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (nodes, cluster_version)
}

fn text(value: &Value) -> String {
    match value {
        Value::SimpleString(b) | Value::BulkString(b) | Value::Error(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        Value::Integer(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// Client connections that must live through the upgrade of one node: a plain client, a
/// subscriber and a client inside MULTI, each on its own connection that never reconnects.
struct Witnesses {
    plain: RespClient,
    plain_id: (u16, i64),
    subscriber: RespClient,
    subscriber_port: u16,
    multi: RespClient,
    multi_id: (u16, i64),
}

const CHANNEL: &str = "in-place-upgrade";

impl Witnesses {
    fn open(endpoint: SocketAddr) -> Witnesses {
        let connect = || RespClient::connect(endpoint, Duration::from_secs(10)).expect("connect");
        let mut plain = connect();
        let plain_id = (plain.local_port(), plain.integer(&["CLIENT", "ID"]));
        let mut subscriber = connect();
        let confirmation = subscriber.call(&["SUBSCRIBE", CHANNEL]).expect("subscribe");
        assert!(matches!(confirmation, Value::Array(_)), "{confirmation:?}");
        let subscriber_port = subscriber.local_port();
        let mut multi = connect();
        let multi_id = (multi.local_port(), multi.integer(&["CLIENT", "ID"]));
        assert_eq!(text(&multi.call(&["MULTI"]).unwrap()), "OK");
        assert_eq!(
            text(&multi.call(&["SET", "multi-key", "set-in-multi"]).unwrap()),
            "QUEUED"
        );
        Witnesses {
            plain,
            plain_id,
            subscriber,
            subscriber_port,
            multi,
            multi_id,
        }
    }

    /// Each client is still on its connection and works: same port, same id; every message
    /// published (1..=published) arrived in order, none twice; the MULTI executes.
    fn check(mut self, published: u64) {
        assert_eq!(
            (
                self.plain.local_port(),
                self.plain.integer(&["CLIENT", "ID"])
            ),
            self.plain_id,
            "the plain client keeps its connection and its CLIENT ID"
        );
        assert_eq!(text(&self.plain.call(&["PING"]).unwrap()), "PONG");
        assert_eq!(self.subscriber.local_port(), self.subscriber_port);
        for expected in 1..=published {
            let message = self.subscriber.read().expect("a published message");
            let Value::Array(parts) = &message else {
                panic!("not a message: {message:?}")
            };
            assert_eq!(
                text(&parts[2]),
                expected.to_string(),
                "messages arrive in order, none lost or twice"
            );
        }
        assert_eq!(self.multi.local_port(), self.multi_id.0);
        let exec = self.multi.call(&["EXEC"]).expect("EXEC");
        assert!(
            matches!(&exec, Value::Array(items) if items.len() == 1),
            "EXEC ran the queued SET: {exec:?}"
        );
        assert_eq!(self.multi.integer(&["CLIENT", "ID"]), self.multi_id.1);
        assert_eq!(
            text(&self.multi.call(&["GET", "multi-key"]).unwrap()),
            "set-in-multi"
        );
    }
}

/// Publishes 1, 2, 3... on [`CHANNEL`] through `endpoint` until stopped; returns how many
/// were published.
struct Publisher {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Publisher {
    /// Publishes through `endpoint` to `subscribers` subscribers.
    fn start(endpoint: SocketAddr, subscribers: i64) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (stop2, count2) = (stop.clone(), count.clone());
        let thread = std::thread::spawn(move || {
            let mut client =
                RespClient::connect(endpoint, Duration::from_secs(10)).expect("publisher");
            while !stop2.load(Ordering::SeqCst) {
                let next = count2.load(Ordering::SeqCst) + 1;
                let receivers = client.integer(&["PUBLISH", CHANNEL, &next.to_string()]);
                assert_eq!(receivers, subscribers, "every subscriber stays subscribed");
                count2.store(next, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Publisher {
            stop,
            count,
            thread,
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("publisher thread");
        self.count.load(Ordering::SeqCst)
    }
}

fn endpoint(cluster: &DevCluster, node: u8, port: u16) -> SocketAddr {
    SocketAddr::new(cluster.addr(node).into(), port)
}

fn replicated_db(cluster: &DevCluster, name: &str, port: u16) {
    cluster.create_replicated_db(name, port, "valkey-8.1");
}

#[test]
fn every_connection_lives_through_a_handover_of_every_node_primary_first() {
    let (v020, v021) = current_pair();
    let cluster = DevCluster::up_from_package(&bin(), 101, 3, &v020);
    replicated_db(&cluster, "live", 12101);
    let pids = engine_pids(&cluster);
    assert_eq!(pids.len(), 4, "two primaries and two replicas: {pids:?}");
    let rt = load_runtime();
    let load = start_load(&rt, format!("{}:12101", cluster.addr(2)));
    let witnesses: Vec<Witnesses> = (1..=3)
        .map(|n| Witnesses::open(endpoint(&cluster, n, 12101)))
        .collect();
    let publisher = Publisher::start(endpoint(&cluster, 2, 12101), 3);

    for node in [1, 2, 3] {
        let tarball = PathBuf::from(format!("{}.tar.gz", v021.display()));
        let report = upgrade_ok(&cluster, node, &tarball);
        assert!(report.contains("by handover"), "{report}");
        assert!(
            report.contains("0 closed at a command boundary"),
            "{report}"
        );
    }
    let published = publisher.stop();
    assert!(
        published > 100,
        "the publisher ran throughout ({published})"
    );
    for witness in witnesses {
        witness.check(published);
    }
    assert_eq!(engine_pids(&cluster), pids, "no engine restarted");
    let report = stop_load_clean(&rt, load);
    eprintln!(
        "longest stall through every node's handover: {:.1} ms",
        report.longest_stall_ms
    );
    let (nodes, cluster_version) = versions(&cluster);
    assert_eq!(nodes, ["0.2.1"; 3]);
    assert_eq!(
        cluster_version, "0.2.1",
        "finalized once every node ran 0.2.1"
    );
    let check = cluster.flotilla(&["check", "--node", "2"]);
    assert_success(&check, "flotilla check after the upgrade");
}

#[test]
fn a_node_moves_back_before_finalization_and_is_refused_after() {
    let (v020, v021) = current_pair();
    let cluster = DevCluster::up_from_package(&bin(), 102, 3, &v020);
    replicated_db(&cluster, "back", 12102);
    let pids = engine_pids(&cluster);
    let rt = load_runtime();
    let load = start_load(&rt, format!("{}:12102", cluster.addr(2)));
    let witness = Witnesses::open(endpoint(&cluster, 2, 12102));
    let publisher = Publisher::start(endpoint(&cluster, 3, 12102), 1);

    upgrade_ok(&cluster, 2, &v021);
    let back = upgrade_ok(&cluster, 2, &v020);
    assert!(back.contains("from 0.2.1 to 0.2.0 by handover"), "{back}");
    let (nodes, cluster_version) = versions(&cluster);
    assert_eq!(
        (nodes, cluster_version.as_str()),
        (vec!["0.2.0".to_string(); 3], "0.2.0")
    );

    for node in [1, 2, 3] {
        upgrade_ok(&cluster, node, &v021);
    }
    assert_eq!(versions(&cluster).1, "0.2.1");
    let refused = upgrade_node(&cluster, 2, &v020, &[]);
    assert!(
        !refused.status.success(),
        "moving back after finalization is refused"
    );
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("the cluster version is 0.2.1 (finalized)") && error.contains("Options:"),
        "the refusal says why and what the options are: {error}"
    );
    assert_eq!(versions(&cluster).0, ["0.2.1"; 3], "nothing changed");

    let published = publisher.stop();
    witness.check(published);
    assert_eq!(engine_pids(&cluster), pids, "no engine restarted");
    stop_load_clean(&rt, load);

    // To a version without the handover the daemon restarts in its own place: the new one
    // finishes the record (the CLI waits for it) and adopts the engines.
    let no_handover = packages().current("0.2.2", &["--handover-protocol", "0"]);
    let restart = upgrade_ok(&cluster, 2, &no_handover);
    assert!(restart.contains("by restart"), "{restart}");
    assert_eq!(
        engine_pids(&cluster),
        pids,
        "the restarted daemon adopts the engines"
    );
}

/// The store-derived fields of what every node's API shows (the fields 0.1.0 has; status and
/// roles observed at different moments are left out).
fn replicated_view(cluster: &DevCluster, node: u8) -> serde_json::Value {
    let client = cluster.client(node);
    let rt = runtime();
    let get = |path: &str| -> serde_json::Value {
        rt.block_on(client.call::<(), serde_json::Value>(reqwest_get(), path, None))
            .unwrap_or_else(|e| panic!("GET {path} on node {node}: {e}"))
    };
    let keep = |items: serde_json::Value, fields: &[&str]| -> serde_json::Value {
        let items = items.as_array().cloned().unwrap_or_default();
        serde_json::Value::Array(
            items
                .into_iter()
                .map(|item| {
                    let kept: serde_json::Map<String, serde_json::Value> = fields
                        .iter()
                        .map(|f| (f.to_string(), item[*f].clone()))
                        .collect();
                    serde_json::Value::Object(kept)
                })
                .collect(),
        )
    };
    serde_json::json!({
        "nodes": keep(get("/v1/nodes"), &["uid", "addr", "software_version", "os"]),
        "bdbs": keep(get("/v1/bdbs"), &["uid", "name", "port", "memory_size", "shards_count", "replication", "data_persistence", "redis_version", "shard_list"]),
        "shards": keep(get("/v1/shards"), &["uid", "bdb_uid", "node_uid", "role", "assigned_slots", "port", "redis_version"]),
        "actions": keep(get("/v1/actions"), &["action_uid", "name", "object", "status", "pending_ops", "step_index", "steps_total", "steps", "error", "kind"]),
    })
}

fn reqwest_get() -> reqwest::Method {
    reqwest::Method::GET
}

/// Waits until every node's view is the same; returns it.
fn identical_views(cluster: &DevCluster) -> serde_json::Value {
    let mut last = Vec::new();
    let same = poll_until(Duration::from_secs(20), || {
        last = cluster
            .node_numbers()
            .map(|n| replicated_view(cluster, n))
            .collect();
        last.windows(2).all(|w| w[0] == w[1])
    });
    assert!(same, "every node shows the same state: {last:#?}");
    last.remove(0)
}

#[test]
fn from_release_0_1_0_each_daemon_restarts_no_write_is_lost_and_mixed_nodes_agree() {
    let v010 = packages().release_0_1_0();
    let (_, v021) = current_pair();
    let cluster = DevCluster::up_from_package(&bin(), 103, 3, &v010);
    assert_eq!(
        versions(&cluster),
        (vec!["0.1.0".to_string(); 3], String::new())
    );
    replicated_db(&cluster, "old", 12103);
    let pids = engine_pids(&cluster);
    let rt = load_runtime();
    let load = start_load(&rt, format!("{}:12103", cluster.addr(1)));

    // A rolling upgrade needs store commands 0.1.0 cannot apply: refused, naming the way that
    // works (every node in place, then any method); nothing changes.
    for method in ["add-node", "replace-node", "in-place"] {
        let package = v021.to_string_lossy();
        let args = [
            "upgrade",
            "cluster",
            "--package",
            &package,
            "--method",
            method,
            "--yes",
        ];
        let refused = cluster.flotilla(&args);
        let error = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success()
                && error.contains("the cluster version is 0.1.0")
                && error.contains("flotilla upgrade node N --package P"),
            "upgrade cluster --method {method} from 0.1.0 is refused naming the per-node path: {error}"
        );
    }
    assert_eq!(versions(&cluster).0, ["0.1.0"; 3], "nothing changed");

    let report = upgrade_ok(&cluster, 2, &v021);
    assert!(
        report.contains("by restart") && report.contains("connections were closed"),
        "the fallback says so: {report}"
    );

    // Mixed: node 2 runs 0.2.1 beside two 0.1.0 nodes. What 0.1.0 cannot decode is refused
    // before it is proposed; what it can is applied identically everywhere.
    let finalize = cluster.flotilla_at(2, &["upgrade", "finalize"]);
    assert!(
        !finalize.status.success(),
        "nothing to finalize while 0.1.0 nodes are members"
    );
    let unset = cluster.flotilla_at(2, &["db", "set", "old", "--db-password", ""]);
    let error = String::from_utf8_lossy(&unset.stderr);
    assert!(
        !unset.status.success() && error.contains("needs cluster version 0.2.0"),
        "removing a password (a 0.2.0 field) waits for the cluster version: {error}"
    );
    let created = cluster.flotilla_at(
        2,
        &[
            "db",
            "create",
            "--name",
            "mixed",
            "--port",
            "12113",
            "--memory",
            "50mb",
            "--shards",
            "1",
            "--replication",
            "--redis-version",
            "redis-7.0",
        ],
    );
    assert_success(&created, "db create through the 0.2.1 node");
    assert!(poll_until(Duration::from_secs(60), || cluster.db_status(2) == "active"));
    let upgraded = cluster.flotilla_at(
        2,
        &["db", "upgrade", "mixed", "--redis-version", "valkey-8.1"],
    );
    assert_success(
        &upgraded,
        "db upgrade while the cluster runs mixed versions",
    );
    let view = identical_views(&cluster);
    assert_eq!(view["bdbs"].as_array().map(Vec::len), Some(2), "{view:#}");

    upgrade_ok(&cluster, 1, &v021);
    upgrade_ok(&cluster, 3, &v021);
    let (nodes, cluster_version) = versions(&cluster);
    assert_eq!(
        (nodes, cluster_version.as_str()),
        (vec!["0.2.1".to_string(); 3], "0.2.1")
    );
    let after = engine_pids(&cluster);
    for (shard, pid) in &pids {
        assert_eq!(
            after.get(shard),
            Some(pid),
            "shard {shard}'s engine was not restarted"
        );
    }
    let report = stop_load(&rt, load);
    assert_eq!(
        report.lost_writes, 0,
        "no acknowledged write lost: {:?}",
        report.lost_write_examples
    );
    eprintln!(
        "from 0.1.0 by restart: {} client errors, {} reconnects (closed connections), longest stall {:.1} ms",
        report.client_errors_total, report.reconnects, report.longest_stall_ms
    );
}

/// Starts `upgrade node` in the background; returns the child and waits until the node's
/// handover reached `step` (from its record in the data dir), giving the new daemon's pid.
fn upgrade_until_step(
    cluster: &DevCluster,
    node: u8,
    package: &Path,
    step: &str,
) -> (std::process::Child, u32, u32) {
    let package = package.to_string_lossy();
    let child = cluster
        .command_at(
            1,
            &[
                "upgrade",
                "node",
                &node.to_string(),
                "--package",
                &package,
                "--yes",
            ],
        )
        .spawn()
        .expect("upgrade node");
    let record = cluster.data_dir(node).join("upgrade.json");
    let mut pids = (0, 0);
    let reached = poll_until(Duration::from_secs(30), || {
        let Ok(text) = std::fs::read_to_string(&record) else {
            return false;
        };
        let status: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        pids = (
            status["old_pid"].as_u64().unwrap_or(0) as u32,
            status["new_pid"].as_u64().unwrap_or(0) as u32,
        );
        // A record left by an earlier attempt has ended (failed or done): only a running
        // one is this upgrade's.
        status["state"] == "running" && status["step"] == step && pids.1 != 0
    });
    assert!(reached, "the handover reached '{step}'");
    (child, pids.0, pids.1)
}

/// How long until node `n` answers REST and its endpoint again, with the expected version.
fn serving_again(cluster: &DevCluster, n: u8, port: u16, version: &str) -> Duration {
    let started = Instant::now();
    let rt = runtime();
    let client = cluster.client(n);
    let up = poll_until(Duration::from_secs(60), || {
        let version_ok = rt
            .block_on(client.health())
            .is_ok_and(|h| h.software_version == version);
        let endpoint_ok = RespClient::connect(endpoint(cluster, n, port), Duration::from_secs(1))
            .and_then(|mut c| c.call(&["PING"]))
            .is_ok_and(|v| text(&v) == "PONG");
        version_ok && endpoint_ok
    });
    assert!(up, "node {n} serves again on {version}");
    started.elapsed()
}

#[test]
fn a_kill_9_of_either_process_during_the_handover_leaves_the_node_serving() {
    let (v020, v021) = current_pair();
    let env = [
        ("FLOTILLA_FAILPOINT_PAUSE_STEP", "handover:sessions"),
        ("FLOTILLA_FAILPOINT_PAUSE_MS", "4000"),
    ];
    let cluster = DevCluster::up_from_package_with_env(&bin(), 104, 3, &v020, &env);
    replicated_db(&cluster, "kill", 12104);
    let pids = engine_pids(&cluster);
    let rt = load_runtime();
    let load = start_load(&rt, format!("{}:12104", cluster.addr(1)));

    // The new process dies: the old one keeps (takes back) everything.
    let (mut upgrade, old_pid, new_pid) = upgrade_until_step(&cluster, 2, &v021, "listeners");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(new_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        !upgrade.wait().unwrap().success(),
        "the upgrade reports the failure"
    );
    let took = serving_again(&cluster, 2, 12104, "0.2.0");
    eprintln!(
        "kill -9 of the new daemon: node 2 serves on (old daemon pid {old_pid}) after {took:?}"
    );
    assert_eq!(
        cluster.daemon_pid(2),
        Some(old_pid),
        "the old daemon still serves"
    );

    // The old process dies: the new one takes the node over anyway.
    let (mut upgrade, old_pid, new_pid) = upgrade_until_step(&cluster, 2, &v021, "listeners");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = upgrade.wait();
    let took = serving_again(&cluster, 2, 12104, "0.2.1");
    eprintln!(
        "kill -9 of the old daemon: node 2 serves on the new daemon (pid {new_pid}) after {took:?}"
    );
    assert!(poll_until(Duration::from_secs(20), || cluster
        .daemon_pid(2)
        == Some(new_pid)));

    assert_eq!(engine_pids(&cluster), pids, "no shard lost or restarted");
    assert!(poll_until(Duration::from_secs(30), || cluster.db_status(1) == "active"));
    let report = stop_load(&rt, load);
    assert_eq!(
        report.lost_writes, 0,
        "nothing lost: {:?}",
        report.lost_write_examples
    );
}

/// `flotilla upgrade cluster --package P --yes [extra]` against node 1; asserts success.
fn upgrade_cluster(cluster: &DevCluster, package: &Path, extra: &[&str]) -> String {
    let package = package.to_string_lossy().into_owned();
    let mut args = vec!["upgrade", "cluster", "--package", &package, "--yes"];
    args.extend_from_slice(extra);
    let output = cluster.flotilla(&args);
    assert_success(&output, "flotilla upgrade cluster");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The latest cluster upgrade action as `action show --json` prints it.
fn cluster_upgrade_action(cluster: &DevCluster) -> serde_json::Value {
    let actions = cluster.json(1, &["action", "list", "--json"]);
    let latest = actions
        .as_array()
        .and_then(|a| a.iter().rev().find(|a| a["name"] == "SMUpgradeCluster"))
        .cloned()
        .expect("a cluster upgrade action");
    let uid = latest["action_uid"].to_string();
    cluster.json(1, &["action", "show", &uid, "--json"])
}

#[test]
fn upgrade_cluster_moves_every_node_in_one_action_under_load() {
    let (v020, v021) = current_pair();
    let cluster = DevCluster::up_from_package(&bin(), 125, 3, &v020);
    replicated_db(&cluster, "whole", 12125);
    let pids = engine_pids(&cluster);
    let rt = load_runtime();
    let load = start_load(&rt, format!("{}:12125", cluster.addr(2)));
    let primary_before = cluster.status_json(1)["cluster"]["master_node"].clone();

    let printed = upgrade_cluster(&cluster, &v021, &[]);
    assert!(printed.contains("the primary node last"), "{printed}");

    let report = stop_load_clean(&rt, load);
    eprintln!(
        "upgrade cluster in place: longest stall {:.1} ms",
        report.longest_stall_ms
    );
    assert_eq!(
        versions(&cluster),
        (vec!["0.2.1".to_string(); 3], "0.2.1".to_string()),
        "every node on 0.2.1 and the cluster version finalized"
    );
    let action = cluster_upgrade_action(&cluster);
    assert_eq!(action["status"], "completed", "{action:#}");
    let plan: Vec<String> = action["plan"]
        .as_array()
        .expect("the action lists its plan")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(plan.len(), 4, "three nodes and finalize: {plan:?}");
    assert_eq!(
        plan[2],
        format!("upgrade_node node:{primary_before}"),
        "the primary node moves last"
    );
    assert_eq!(plan[3], "finalize_cluster");
    assert_eq!(engine_pids(&cluster), pids, "no engine restarted");
}

/// The step index of the running cluster upgrade, as the first node that answers sees it.
fn running_step(cluster: &DevCluster) -> Option<u64> {
    cluster.node_numbers().find_map(|n| {
        let output = cluster.flotilla_at(n, &["action", "list", "--json"]);
        let actions: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        let action = actions
            .as_array()?
            .iter()
            .find(|a| a["name"] == "SMUpgradeCluster" && a["status"] == "running")?
            .clone();
        action["step_index"].as_u64()
    })
}

/// `status --json` from a node other than `killed`, once the others elected a primary node.
fn status_after_kill(cluster: &DevCluster, killed: u8) -> serde_json::Value {
    let survivor = if killed == 1 { 2 } else { 1 };
    let mut status = serde_json::Value::Null;
    let answered = poll_until(Duration::from_secs(30), || {
        let output = cluster.flotilla_at(survivor, &["status", "--json"]);
        status = serde_json::from_slice(&output.stdout).unwrap_or_default();
        output.status.success()
    });
    assert!(answered, "the surviving nodes elect a primary node");
    status
}

/// Restarts node `n`'s daemon (after a kill -9) from the package of the version the cluster
/// lists it on.
fn restart_killed(cluster: &DevCluster, n: u8, v020: &Path, v021: &Path) {
    let status = status_after_kill(cluster, n);
    let version = status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|x| x["uid"] == u64::from(n)).cloned())
        .and_then(|x| x["software_version"].as_str().map(str::to_string))
        .unwrap_or_default();
    let package = if version == "0.2.1" { v021 } else { v020 };
    cluster.restart_from(n, package);
}

#[test]
fn upgrade_cluster_resumes_after_a_kill_9_of_the_primary_node_at_each_step() {
    let (v020, v021) = current_pair();
    let cluster = DevCluster::up_from_package_with_env(
        &bin(),
        126,
        3,
        &v020,
        &[
            (
                "FLOTILLA_FAILPOINT_PAUSE_STEP",
                "upgrade_node,finalize_cluster",
            ),
            ("FLOTILLA_FAILPOINT_PAUSE_MS", "2000"),
        ],
    );
    replicated_db(&cluster, "resume", 12126);
    let rt = load_runtime();
    let load = start_load(&rt, format!("{}:12126", cluster.addr(1)));
    upgrade_cluster(&cluster, &v021, &["--no-wait"]);

    let mut killed_at = Vec::new();
    // Three `upgrade_node` steps, then `finalize_cluster`.
    for index in 0..4u64 {
        // The step is held by the failpoint: kill -9 the primary node's daemon then.
        let at_step = poll_until(Duration::from_secs(120), || {
            running_step(&cluster) == Some(index)
        });
        assert!(at_step, "the action reached step {index}");
        let previous = killed_at.last().map(|(n, _)| *n).unwrap_or(0);
        let primary = status_after_kill(&cluster, previous)["cluster"]["master_node"]
            .as_u64()
            .unwrap() as u8;
        cluster.kill9(primary);
        killed_at.push((primary, index));
        restart_killed(&cluster, primary, &v020, &v021);
    }
    // Node 1, which the checks below ask, once it answers (it may be between daemons at that
    // moment). The action is marked completed by its own command after the finalize step's:
    // wait for both.
    let done = poll_until(Duration::from_secs(240), || {
        let status = cluster.flotilla_at(1, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        let actions = cluster.flotilla_at(1, &["action", "list", "--json"]);
        let actions: serde_json::Value =
            serde_json::from_slice(&actions.stdout).unwrap_or_default();
        let completed = actions.as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["name"] == "SMUpgradeCluster" && a["status"] == "completed")
        });
        status["cluster"]["cluster_version"] == "0.2.1" && completed
    });
    assert!(
        done,
        "the action completed after {killed_at:?}: {:#}",
        cluster_upgrade_action(&cluster)
    );
    assert_eq!(cluster_upgrade_action(&cluster)["status"], "completed");
    assert_eq!(versions(&cluster).0, ["0.2.1"; 3]);
    let report = flotilla_testkit::stop_load(&rt, load);
    assert_eq!(
        report.lost_writes, 0,
        "no acknowledged write lost: {report}"
    );
    eprintln!("primary node killed at steps {killed_at:?}");
}
