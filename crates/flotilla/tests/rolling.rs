//! Rolling cluster upgrades (issue 11), against real daemons and engines, with two replicated
//! databases (one of 2 shards, one of 1) under load:
//! - `upgrade cluster --method add-node`: for each old node a new node with the package
//!   joins (the action pauses until the operator added it; the test does, then resumes), the
//!   old node drains and leaves; 0 client errors, 0 lost writes, every node on the new
//!   version, finalized, as many nodes as before;
//! - `--method replace-node`: each old node drains, leaves, and its reinstalled machine joins
//!   back under its uid; the same invariants, and the uids kept;
//! - a kill -9 of the primary node's daemon at every step of an add-node upgrade, and of the
//!   drained node's during its drain: the action resumes and completes, no acknowledged write
//!   lost.
//!
//! A client connected to a node's endpoint loses that connection when the node leaves: the
//! load runs on the node that is upgraded last and moves to a node that stays before that one
//! drains (what an operator does with DNS or discovery; README "Rolling upgrades").
//! From the real 0.1.0 release every method is refused (tests/in_place.rs shows it).
//!
//! Operating system upgrades (`upgrade os`, issue 12) are the same action with a target OS:
//! nodes started with `--os-release` files standing for debian-12 machines move to debian-13 by
//! extra-node and by replace-node under load; the OS checks' refusals; a kill -9 of the
//! primary node's daemon in the middle.
//!
//! Subnets 127.0.127-130.x and 127.0.133-136.x.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_loadcheck::LoadHandle;
use flotilla_testkit::{
    assert_success, flotilla_bin, load_runtime, poll_until, start_load, stop_load_clean,
    DevCluster, Packages, RespClient,
};
use serde_json::Value;

const ENGINE: &str = "valkey-8.1";

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

/// The two databases: `two` (2 shards) on `port`, `one` (1 shard) on `port + 1`, both
/// replicated.
fn two_databases(cluster: &DevCluster, port: u16) -> [u16; 2] {
    cluster.create_replicated_db("two", port, ENGINE);
    cluster.create_replicated_db_of("one", port + 1, ENGINE, 1);
    [port, port + 1]
}

/// One load checker per database, through node `n`'s endpoints.
struct Loads(Vec<LoadHandle>);

impl Loads {
    fn start(rt: &tokio::runtime::Runtime, cluster: &DevCluster, n: u8, ports: [u16; 2]) -> Self {
        for port in ports {
            wait_endpoint(SocketAddr::new(cluster.addr(n).into(), port));
        }
        Loads(
            ports
                .iter()
                .map(|port| start_load(rt, format!("{}:{port}", cluster.addr(n))))
                .collect(),
        )
    }

    /// Stops them; asserts 0 client errors and 0 lost writes; the longest stall in ms.
    fn stop_clean(self, rt: &tokio::runtime::Runtime) -> f64 {
        self.0
            .into_iter()
            .map(|load| stop_load_clean(rt, load).longest_stall_ms)
            .fold(0.0, f64::max)
    }

    /// Stops them; asserts 0 lost writes (connection errors are expected when their node
    /// is killed).
    fn stop_without_loss(self, rt: &tokio::runtime::Runtime) {
        for load in self.0 {
            let report = rt.block_on(load.stop()).expect("load checker verifies");
            eprintln!("{report}");
            assert_eq!(
                report.lost_writes, 0,
                "no acknowledged write lost: {report}"
            );
        }
    }
}

/// Waits (bounded) until the endpoint at `addr` answers PING.
fn wait_endpoint(addr: SocketAddr) {
    let answers = poll_until(Duration::from_secs(30), || {
        RespClient::connect(addr, Duration::from_secs(1))
            .and_then(|mut c| c.call(&["PING"]))
            .is_ok()
    });
    assert!(answers, "the endpoint {addr} answers");
}

/// Starts `upgrade cluster --method METHOD --no-wait` against node `n`; the action's uid.
fn start_upgrade(cluster: &DevCluster, n: u8, package: &Path, method: &str) -> u64 {
    let package = package.to_string_lossy();
    start(
        cluster,
        n,
        &["cluster", "--package", &package, "--method", method],
    )
}

/// Runs `flotilla upgrade ARGS --yes --no-wait` against node `n`; the action's uid.
fn start(cluster: &DevCluster, n: u8, args: &[&str]) -> u64 {
    let mut full = vec!["upgrade"];
    full.extend_from_slice(args);
    full.extend(["--yes", "--no-wait"]);
    let output = cluster.flotilla_at(n, &full);
    assert_success(&output, &full.join(" "));
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("{text}");
    let uid = text
        .lines()
        .find_map(|l| l.strip_prefix("action "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|uid| uid.parse().ok());
    uid.expect("the CLI prints the action's uid")
}

/// `action show UID --json` from the first node that answers.
fn action(cluster: &DevCluster, uid: u64) -> Option<Value> {
    cluster.node_numbers().find_map(|n| {
        let output = cluster.flotilla_at(n, &["action", "show", &uid.to_string(), "--json"]);
        serde_json::from_slice(&output.stdout).ok()
    })
}

/// Follows action `uid` to its end: each time it pauses for the operator, `operate` gets the
/// step's name (`add_node node:N`, `rejoin_node node:N`) and does the machine work, and the
/// action is resumed. Panics when it fails or does not end within `timeout`.
fn roll(cluster: &mut DevCluster, uid: u64, mut operate: impl FnMut(&mut DevCluster, &str)) {
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let mut stopped = Value::Null;
        let ended = poll_until(Duration::from_secs(300), || {
            stopped = action(cluster, uid).unwrap_or_default();
            stopped["status"].as_str().is_some_and(|s| s != "running")
        });
        assert!(ended, "the action did not stop running: {stopped:#}");
        match stopped["status"].as_str() {
            Some("completed") => return,
            Some("paused") => {
                let step = stopped["pending_ops"].as_str().unwrap_or("").to_string();
                let says = stopped["error"].as_str().unwrap_or("");
                assert!(
                    says.contains(&format!("flotilla action resume {uid}")),
                    "a pause says what to do and how to continue: {says}"
                );
                operate(cluster, &step);
                let n = cluster.answering_node();
                let resumed =
                    cluster.flotilla_at(n, &["action", "resume", &uid.to_string(), "--no-wait"]);
                assert_success(&resumed, "flotilla action resume");
            }
            _ => panic!("the action did not complete: {stopped:#}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upgrade took too long"
        );
    }
}

/// The node number (dir `node-N`) of node uid `uid`: the same for old nodes, dev add-node's
/// next number for new ones (uids and numbers advance together in these clusters).
fn number(uid: u64) -> u8 {
    uid as u8
}

/// Every listed node's uid and version, and the cluster version, from the first node that
/// answers.
fn nodes_and_version(cluster: &DevCluster) -> (Vec<(u64, String)>, String) {
    let status = cluster.status_json(cluster.answering_node());
    let nodes = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let version = n["software_version"].as_str().unwrap_or("?").to_string();
            (n["uid"].as_u64().unwrap_or(0), version)
        })
        .collect();
    let version = status["cluster"]["cluster_version"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (nodes, version)
}

fn primary_node(cluster: &DevCluster) -> u64 {
    cluster.status_json(cluster.answering_node())["cluster"]["master_node"]
        .as_u64()
        .expect("a primary node")
}

/// The step's node uid (`add_node node:3` -> 3).
fn step_node(step: &str) -> u64 {
    step.rsplit_once("node:")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("step '{step}' names no node"))
}

#[test]
fn add_node_upgrade_moves_every_database_to_new_nodes_under_load() {
    let (v020, v021) = current_pair();
    let mut cluster = DevCluster::up_from_package(&bin(), 127, 3, &v020);
    let ports = two_databases(&cluster, 12127);
    let last = primary_node(&cluster);
    let rt = load_runtime();
    let mut loads = Some(Loads::start(&rt, &cluster, number(last), ports));
    let mut stalls = Vec::new();

    let uid = start_upgrade(&cluster, number(last), &v021, "add-node");
    let mut added = Vec::new();
    roll(&mut cluster, uid, |cluster, step| {
        assert!(
            step.starts_with("add_node "),
            "add-node pauses only to add: {step}"
        );
        if step_node(step) == last {
            // The node the load runs on goes next: the clients move to a node that stays.
            let first_new = added[0];
            let next = Loads::start(&rt, cluster, first_new, ports);
            stalls.push(loads.replace(next).expect("loads").stop_clean(&rt));
        }
        added.push(cluster.add_node_from(Some(&v021)));
    });
    stalls.push(loads.take().expect("loads").stop_clean(&rt));

    let (nodes, version) = nodes_and_version(&cluster);
    let uids: Vec<u64> = nodes.iter().map(|(uid, _)| *uid).collect();
    assert_eq!(uids, [4, 5, 6], "each old node replaced by a new one");
    assert!(nodes.iter().all(|(_, v)| v == "0.2.1"), "{nodes:?}");
    assert_eq!(version, "0.2.1", "finalized");
    let shards = cluster.shards_at(added[0]);
    assert_eq!(shards.len(), 6, "every shard kept: {shards:?}");
    eprintln!(
        "add-node upgrade under load: longest stall {:.1} ms",
        stalls.iter().copied().fold(0.0, f64::max)
    );
}

#[test]
fn replace_node_upgrade_keeps_the_uids_under_load() {
    let (v020, v021) = current_pair();
    let mut cluster = DevCluster::up_from_package(&bin(), 128, 3, &v020);
    let ports = two_databases(&cluster, 12128);
    let last = primary_node(&cluster);
    let rt = load_runtime();
    let mut loads = Some(Loads::start(&rt, &cluster, number(last), ports));
    let mut stalls = Vec::new();

    let uid = start_upgrade(&cluster, number(last), &v021, "replace-node");
    let plan: Vec<String> = action(&cluster, uid).expect("the action")["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s.as_str().unwrap_or("").to_string())
        .collect();
    let order: Vec<u64> = plan
        .iter()
        .filter(|s| s.starts_with("rejoin_node "))
        .map(|s| step_node(s))
        .collect();
    assert_eq!(order.last(), Some(&last), "the primary node last: {plan:?}");
    roll(&mut cluster, uid, |cluster, step| {
        assert!(
            step.starts_with("rejoin_node "),
            "replace-node pauses only to rejoin: {step}"
        );
        let node = step_node(step);
        cluster.reinstall_node(node, &v021);
        if order.iter().position(|n| *n == node) == Some(order.len() - 2) {
            // The node the load runs on goes next: the clients move to a node that stays.
            let next = Loads::start(&rt, cluster, number(node), ports);
            stalls.push(loads.replace(next).expect("loads").stop_clean(&rt));
        }
    });
    stalls.push(loads.take().expect("loads").stop_clean(&rt));

    let (nodes, version) = nodes_and_version(&cluster);
    let uids: Vec<u64> = nodes.iter().map(|(uid, _)| *uid).collect();
    assert_eq!(uids, [1, 2, 3], "every node back under its uid");
    assert!(nodes.iter().all(|(_, v)| v == "0.2.1"), "{nodes:?}");
    assert_eq!(version, "0.2.1", "finalized");
    assert_eq!(cluster.shards_at(number(last)).len(), 6, "every shard kept");
    eprintln!(
        "replace-node upgrade under load: longest stall {:.1} ms",
        stalls.iter().copied().fold(0.0, f64::max)
    );
}

/// The step action `uid` is at while it runs, with its index.
fn running_step(cluster: &DevCluster, uid: u64) -> Option<(u64, String)> {
    let action = action(cluster, uid)?;
    (action["status"] == "running").then(|| {
        (
            action["step_index"].as_u64().unwrap_or(0),
            action["pending_ops"].as_str().unwrap_or("").to_string(),
        )
    })
}

#[test]
fn add_node_upgrade_resumes_after_a_kill_9_of_the_primary_node_at_each_step_and_of_the_drained_node(
) {
    let (v020, v021) = current_pair();
    let mut cluster = DevCluster::up_from_package_with_env(
        &bin(),
        129,
        3,
        &v020,
        &[
            (
                "FLOTILLA_FAILPOINT_PAUSE_STEP",
                "add_node,drain_node,leave_cluster,finalize_cluster",
            ),
            ("FLOTILLA_FAILPOINT_PAUSE_MS", "2000"),
        ],
    );
    let ports = two_databases(&cluster, 12129);
    let rt = load_runtime();
    let last = primary_node(&cluster);
    let mut loads = Some(Loads::start(&rt, &cluster, number(last), ports));
    let uid = start_upgrade(&cluster, number(last), &v021, "add-node");

    let mut killed_at: Vec<(u64, String)> = Vec::new();
    let steps_total = action(&cluster, uid).expect("the action")["steps_total"]
        .as_u64()
        .unwrap();
    let mut index = 0;
    while index < steps_total {
        // The step is held by the failpoint (or paused for the operator): kill -9 the primary
        // node's daemon while it runs, then restart it from the package of its version.
        let mut at = None;
        let reached = poll_until(Duration::from_secs(180), || {
            if let Some(a) = action(&cluster, uid) {
                if a["status"] == "paused" {
                    let step = a["pending_ops"].as_str().unwrap_or("");
                    if step_node(step) == last {
                        // Its node goes next: the load moves to the first new node (and is
                        // verified there while it still serves).
                        let next = Loads::start(&rt, &cluster, 4, ports);
                        loads.replace(next).expect("loads").stop_without_loss(&rt);
                    }
                    let n = cluster.add_node_from(Some(&v021));
                    eprintln!("added node {n} for '{}'", a["pending_ops"]);
                    let answering = cluster.answering_node();
                    let resume = ["action", "resume", &uid.to_string(), "--no-wait"];
                    assert_success(&cluster.flotilla_at(answering, &resume), "action resume");
                    return false;
                }
                if a["status"] == "completed" {
                    return true;
                }
            }
            at = running_step(&cluster, uid).filter(|(i, _)| *i >= index);
            at.is_some()
        });
        assert!(
            reached,
            "the action reached step {index}: {:?}",
            action(&cluster, uid)
        );
        let Some((i, step)) = at else { break };
        let primary = primary_node(&cluster);
        let version = nodes_and_version(&cluster)
            .0
            .into_iter()
            .find(|(u, _)| *u == primary)
            .map(|(_, v)| v)
            .unwrap_or_default();
        cluster.kill9(number(primary));
        let package = if version == "0.2.1" { &v021 } else { &v020 };
        cluster.restart_from(number(primary), package);
        // The node being drained too (an old node, on 0.2.0), while its shards move off it.
        let drained = step
            .starts_with("drain_node ")
            .then(|| step_node(&step))
            .filter(|n| *n != primary);
        if let Some(drained) = drained {
            cluster.kill9(number(drained));
            cluster.restart_from(number(drained), &v020);
            killed_at.push((drained, step.clone()));
        }
        killed_at.push((primary, step));
        index = i + 1;
    }
    let done = poll_until(Duration::from_secs(240), || {
        action(&cluster, uid).is_some_and(|a| a["status"] == "completed")
    });
    assert!(
        done,
        "completed after kills at {killed_at:?}: {:#}",
        action(&cluster, uid).unwrap_or_default()
    );
    loads.take().expect("loads").stop_without_loss(&rt);
    let (nodes, version) = nodes_and_version(&cluster);
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|(_, v)| v == "0.2.1"), "{nodes:?}");
    assert_eq!(version, "0.2.1");
    eprintln!("primary node killed -9 at {killed_at:?}");
}

#[test]
fn on_a_dev_cluster_the_cli_does_the_operators_part_of_both_rolling_methods() {
    let (v020, v021) = current_pair();
    let v022 = packages().current("0.2.2", &[]);
    let mut cluster = DevCluster::up_from_package(&bin(), 130, 2, &v020);
    let dir = cluster
        .data_dir(1)
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let base = cluster.addr(1).to_string();
    let upgrade = |cluster: &DevCluster, n: u8, package: &Path, method: &str| {
        let package = package.to_string_lossy();
        let args = [
            "upgrade",
            "cluster",
            "--package",
            &package,
            "--method",
            method,
            "--yes",
            // Two nodes: the quorum check's warning is accepted (nothing is down here).
            "--force",
            "quorum",
            "--dev-dir",
            &dir,
            "--base-addr",
            &base,
        ];
        let output = cluster.flotilla_at(n, &args);
        assert_success(
            &output,
            &format!("upgrade cluster --method {method} --dev-dir"),
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    // Node 1 (the primary node, last) leaves: the CLI follows the action through another node.
    let printed = upgrade(&cluster, 1, &v021, "add-node");
    assert!(printed.contains("doing the operator's part"), "{printed}");
    cluster.count_node_dirs();
    let (nodes, version) = nodes_and_version(&cluster);
    assert_eq!(
        nodes,
        [(3, "0.2.1".to_string()), (4, "0.2.1".to_string())],
        "two new nodes"
    );
    assert_eq!(version, "0.2.1");

    let printed = upgrade(&cluster, 3, &v022, "replace-node");
    assert!(printed.contains("completed"), "{printed}");
    let (nodes, version) = nodes_and_version(&cluster);
    assert_eq!(
        nodes,
        [(3, "0.2.2".to_string()), (4, "0.2.2".to_string())],
        "the same nodes, reinstalled"
    );
    assert_eq!(version, "0.2.2");
}

/// An os-release file for `ID-VERSION_ID` `debian-V` in `dir`.
fn debian(dir: &Path, version: u32) -> PathBuf {
    let file = dir.join(format!("os-release-debian-{version}"));
    let text = format!(
        "PRETTY_NAME=\"Debian GNU/Linux {version}\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"{version}\"\nID=debian\n"
    );
    std::fs::write(&file, text).expect("writing an os-release file");
    file
}

/// A 3-node cluster from `package` on debian-12 machines (`--os-release` files in `files`).
fn debian_12_cluster(subnet: u8, package: &Path, files: &Path, env: &[(&str, &str)]) -> DevCluster {
    let deb12 = debian(files, 12);
    let deb12 = deb12.to_string_lossy().into_owned();
    let mut env = env.to_vec();
    env.push(("FLOTILLA_DEV_OS_RELEASE", &deb12));
    let cluster = DevCluster::up_from_package_with_env(&bin(), subnet, 3, package, &env);
    let (nodes, _) = nodes_and_version(&cluster);
    let os: Vec<String> = (1..=3).map(|n| os_id(&cluster, n)).collect();
    assert_eq!(
        os, ["debian-12"; 3],
        "nodes report the OS of their os-release: {nodes:?}"
    );
    cluster
}

/// Node uid `uid`'s OS id as the cluster lists it.
fn os_id(cluster: &DevCluster, uid: u64) -> String {
    let status = cluster.status_json(cluster.answering_node());
    status["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["uid"] == uid))
        .and_then(|n| n["os_id"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Every listed node's OS id.
fn all_os(cluster: &DevCluster) -> Vec<String> {
    let status = cluster.status_json(cluster.answering_node());
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["os_id"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn os_upgrade_by_extra_node_moves_every_node_to_debian_13_under_load() {
    let (v020, _) = current_pair();
    let files = tempfile::tempdir().unwrap();
    let mut cluster = debian_12_cluster(133, &v020, files.path(), &[]);
    let deb13 = debian(files.path(), 13);
    let ports = two_databases(&cluster, 12133);
    let last = primary_node(&cluster);
    let rt = load_runtime();
    let mut loads = Some(Loads::start(&rt, &cluster, number(last), ports));
    let mut stalls = Vec::new();

    let package = v020.to_string_lossy();
    let args = [
        "os",
        "--os",
        "debian-13",
        "--method",
        "extra-node",
        "--package",
        &package,
    ];
    let uid = start(&cluster, number(last), &args);
    let mut added = Vec::new();
    let deb13_arg = deb13.to_string_lossy().into_owned();
    roll(&mut cluster, uid, |cluster, step| {
        assert!(step.starts_with("add_node "), "{step}");
        if step_node(step) == last {
            let next = Loads::start(&rt, cluster, added[0], ports);
            stalls.push(loads.replace(next).expect("loads").stop_clean(&rt));
        }
        added.push(cluster.add_node_with(Some(&v020), &["--os-release", &deb13_arg]));
    });
    stalls.push(loads.take().expect("loads").stop_clean(&rt));

    assert_eq!(all_os(&cluster), ["debian-13"; 3]);
    let (nodes, version) = nodes_and_version(&cluster);
    assert_eq!(nodes.len(), 3);
    assert!(
        nodes.iter().all(|(_, v)| v == "0.2.0"),
        "the software version kept: {nodes:?}"
    );
    assert_eq!(version, "0.2.0");
    assert_eq!(action(&cluster, uid).unwrap()["name"], "SMUpgradeOS");
    eprintln!(
        "OS upgrade by extra-node under load: longest stall {:.1} ms",
        stalls.iter().copied().fold(0.0, f64::max)
    );
}

#[test]
fn os_upgrade_by_replace_node_keeps_the_uids_under_load() {
    let (v020, _) = current_pair();
    let files = tempfile::tempdir().unwrap();
    let mut cluster = debian_12_cluster(134, &v020, files.path(), &[]);
    let deb13 = debian(files.path(), 13);
    let deb13_arg = deb13.to_string_lossy().into_owned();
    let ports = two_databases(&cluster, 12134);
    let last = primary_node(&cluster);
    let rt = load_runtime();
    let mut loads = Some(Loads::start(&rt, &cluster, number(last), ports));
    let mut stalls = Vec::new();

    let package = v020.to_string_lossy();
    let args = [
        "os",
        "--os",
        "debian-13",
        "--method",
        "replace-node",
        "--package",
        &package,
    ];
    let uid = start(&cluster, number(last), &args);
    let order: Vec<u64> = action(&cluster, uid).expect("the action")["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| {
            s.as_str()
                .filter(|s| s.starts_with("rejoin_node "))
                .map(step_node)
        })
        .collect();
    roll(&mut cluster, uid, |cluster, step| {
        let node = step_node(step);
        cluster.reinstall_node_with(node, &v020, &["--os-release", &deb13_arg]);
        if order.iter().position(|n| *n == node) == Some(order.len() - 2) {
            let next = Loads::start(&rt, cluster, number(node), ports);
            stalls.push(loads.replace(next).expect("loads").stop_clean(&rt));
        }
    });
    stalls.push(loads.take().expect("loads").stop_clean(&rt));

    assert_eq!(all_os(&cluster), ["debian-13"; 3]);
    let uids: Vec<u64> = nodes_and_version(&cluster)
        .0
        .iter()
        .map(|(u, _)| *u)
        .collect();
    assert_eq!(uids, [1, 2, 3], "every node back under its uid");
    eprintln!(
        "OS upgrade by replace-node under load: longest stall {:.1} ms",
        stalls.iter().copied().fold(0.0, f64::max)
    );
}

#[test]
fn os_checks_refuse_naming_the_object_and_the_fix_and_change_nothing() {
    let (v020, _) = current_pair();
    let files = tempfile::tempdir().unwrap();
    let mut cluster = debian_12_cluster(135, &v020, files.path(), &[]);
    let package = v020.to_string_lossy().into_owned();
    let refused = |cluster: &DevCluster, args: &[&str], says: &[&str]| {
        let output = cluster.flotilla_at(cluster.answering_node(), args);
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{args:?} is refused: {text}");
        for s in says {
            assert!(text.contains(s), "{args:?} says '{s}': {text}");
        }
    };
    // A target the installed package does not support: the software upgrade comes first.
    refused(
        &cluster,
        &["upgrade", "check", "--os", "debian-99"],
        &[
            "[os_unsupported] node:1",
            "not debian-99",
            "upgrade cluster",
        ],
    );
    let os_args = |target: &'static str| {
        vec![
            "upgrade",
            "os",
            "--os",
            target,
            "--method",
            "extra-node",
            "--package",
            &package,
            "--yes",
        ]
    };
    refused(
        &cluster,
        &os_args("debian-99"),
        &["--os debian-99", "upgrade the cluster software first"],
    );

    // A node whose package is installed elsewhere (this binary, not the package folder).
    let odd = cluster.add_node_with(None, &[]);
    refused(
        &cluster,
        &["upgrade", "check", "--os", "debian-13"],
        &[
            &format!("[install_dirs] node:{odd}"),
            "installs packages in",
        ],
    );
    refused(
        &cluster,
        &os_args("debian-13"),
        &[&format!("node:{odd}"), "install_dirs"],
    );
    let removed = cluster.flotilla_at(
        1,
        &[
            "dev",
            "remove-node",
            &odd.to_string(),
            "--dir",
            &cluster.data_dir(1).parent().unwrap().to_string_lossy(),
        ],
    );
    assert_success(&removed, "dev remove-node");

    // A running (here: paused) action.
    let uid = start(
        &cluster,
        1,
        &[
            "os",
            "--os",
            "debian-13",
            "--method",
            "extra-node",
            "--package",
            &package,
        ],
    );
    let paused = poll_until(Duration::from_secs(30), || {
        action(&cluster, uid).is_some_and(|a| a["status"] == "paused")
    });
    assert!(paused, "the upgrade waits for a new node");
    refused(
        &cluster,
        &["upgrade", "check", "--os", "debian-13"],
        &[
            &format!("[action_running] action:{uid}"),
            "flotilla action cancel",
        ],
    );
    let cancel = cluster.flotilla_at(1, &["action", "cancel", &uid.to_string()]);
    assert_success(&cancel, "action cancel of a paused action");
    assert_eq!(action(&cluster, uid).unwrap()["status"], "cancelled");

    // A node in maintenance mode.
    let on = cluster.flotilla_at(1, &["node", "maintenance", "2", "on"]);
    assert_success(&on, "node maintenance 2 on");
    refused(
        &cluster,
        &["upgrade", "check", "--os", "debian-13"],
        &["[maintenance] node:2", "flotilla node maintenance 2 off"],
    );
    let off = cluster.flotilla_at(1, &["node", "maintenance", "2", "off"]);
    assert_success(&off, "node maintenance 2 off");

    assert_eq!(all_os(&cluster), ["debian-12"; 3], "nothing changed");
    let check = cluster.flotilla_at(1, &["upgrade", "check", "--os", "debian-13"]);
    assert_success(&check, "upgrade check --os debian-13 once nothing blocks");

    // A machine whose OS its package does not support refuses to join, naming both.
    let deb99 = debian(files.path(), 99);
    let dir = cluster
        .data_dir(1)
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let base = cluster.addr(1).to_string();
    let deb99 = deb99.to_string_lossy();
    let args = [
        "dev",
        "add-node",
        "--dir",
        &dir,
        "--base-addr",
        &base,
        "--package",
        &package,
        "--os-release",
        &deb99,
    ];
    refused(
        &cluster,
        &args,
        &["debian-99", "does not support", "debian-12"],
    );
    assert_eq!(nodes_and_version(&cluster).0.len(), 3, "it did not join");
}

#[test]
fn an_os_upgrade_resumes_after_a_kill_9_of_the_primary_node() {
    let (v020, _) = current_pair();
    let files = tempfile::tempdir().unwrap();
    let env = [
        ("FLOTILLA_FAILPOINT_PAUSE_STEP", "drain_node"),
        ("FLOTILLA_FAILPOINT_PAUSE_MS", "2000"),
    ];
    let mut cluster = debian_12_cluster(136, &v020, files.path(), &env);
    let deb13 = debian(files.path(), 13);
    let deb13_arg = deb13.to_string_lossy().into_owned();
    let ports = two_databases(&cluster, 12136);
    let rt = load_runtime();
    let last = primary_node(&cluster);
    let loads = Loads::start(&rt, &cluster, number(last), ports);
    let package = v020.to_string_lossy();
    let args = [
        "os",
        "--os",
        "debian-13",
        "--method",
        "replace-node",
        "--package",
        &package,
    ];
    let uid = start(&cluster, number(last), &args);

    // The first drain is held by the failpoint: kill -9 the primary node's daemon then.
    let draining = poll_until(Duration::from_secs(60), || {
        running_step(&cluster, uid).is_some_and(|(_, step)| step.starts_with("drain_node "))
    });
    assert!(
        draining,
        "the action reached a drain: {:?}",
        action(&cluster, uid)
    );
    let primary = primary_node(&cluster);
    cluster.kill9(number(primary));
    cluster.restart_from(number(primary), &v020);
    assert_eq!(
        os_id(&cluster, primary),
        "debian-12",
        "a restarted node keeps its machine's OS"
    );

    let mut moved = None;
    roll(&mut cluster, uid, |cluster, step| {
        let node = step_node(step);
        cluster.reinstall_node_with(node, &v020, &["--os-release", &deb13_arg]);
        moved.get_or_insert(node);
    });
    assert_eq!(all_os(&cluster), ["debian-13"; 3]);
    loads.stop_without_loss(&rt);
    eprintln!("primary node {primary} killed -9 during the first drain; first node reinstalled: {moved:?}");
}
