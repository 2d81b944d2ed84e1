//! A crash after every step's side effect of the cluster software upgrade actions (issue 14),
//! against real daemons and engines from packages 0.2.0 and 0.2.1, under load through a node
//! that never crashes.
//!
//! The node running each step is the primary node. Node 1 creates the cluster and is the only
//! node that stands for election on its own (the others start with `store:campaign=error`); the
//! load node also refuses primary-ship handed to it (`store:take_primary=error`), so it is never
//! the primary node and its endpoint never goes down with one. Each test starts node 1 with
//! `STEP@after=exit` armed for the first step, and whenever a daemon exits at a step's failpoint
//! (its log says so and it is gone) starts it again, from the package of the version the cluster
//! lists it on, with the next step armed (and without the campaign failpoint: a node the test
//! restarted may stand for election). The step of the primary node's own upgrade (in place:
//! `upgrade_node node:P`; rolling: `add_node node:P`) is where primary-ship moves: the primary
//! node hands it away, and the node that takes it (armed for that step by the cluster's
//! environment) runs the step and exits after it. Its crash may then leave node 1 to be elected
//! and run the step again, also crashing after it if armed: every crash is followed by a restart,
//! and the test only requires that every step saw at least one crash after its side effect.
//!
//! The in-place handover of node 1 itself is crashed too: node 1's old daemon exits at
//! `handover:sessions` (the new one has started, has the listeners and the store not yet: a
//! crash of the old process in the middle of passing the node over). The new daemon binds what it
//! was not given and takes the node over; the step sees node 1 on 0.2.1 and completes. (A crash
//! of the new daemon there is the other half of that moment: `tests/in_place.rs` kills it -9
//! and the old daemon keeps serving.)
//!
//! Subnets 127.0.148.x (in place), 127.0.149.x (rolling, add-node) and 127.0.151.x (rolling,
//! replace-node).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use flotilla_loadcheck::LoadHandle;
use flotilla_store::failpoint::FAILPOINTS;
use flotilla_testkit::{
    assert_success, flotilla_bin, load_runtime, poll_until, process_alive,
    start_load_across_primary_crashes, stop_load_clean, DevCluster, Packages, RespClient,
};
use serde_json::Value;

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

/// The binary under test as 0.2.0 and as 0.2.1.
fn current_pair() -> (PathBuf, PathBuf) {
    Packages::shared(&bin()).current_pair()
}

/// The node that creates the cluster, the primary node until it upgrades itself.
const FIRST: u8 = 1;
/// Failpoints of a node that never becomes the primary node.
const NEVER_PRIMARY: &str = "store:campaign=error;store:take_primary=error";
/// How long a whole upgrade may take with a crash after each step, on a loaded 2-core machine.
const ACTION_BOUND: Duration = Duration::from_secs(400);

/// The failpoint spec that crashes after `step`'s side effect.
fn exit_after(step: &str) -> String {
    format!("{step}@after=exit")
}

/// The points named by node `n`'s log as the places a failpoint made its daemon exit
/// (`upgrade_node node:2@after`, `handover:sessions@before`), oldest first.
fn exits_logged(cluster: &DevCluster, n: u8) -> Vec<String> {
    let log = std::fs::read_to_string(cluster.data_dir(n).join("flotilla.log")).unwrap_or_default();
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("failpoint ")? + "failpoint ".len()..];
            let (point, _) = rest.split_once(": exiting at once")?;
            Some(point.to_string())
        })
        .collect()
}

/// `action show UID --json` as node `n` answers it.
fn action(cluster: &DevCluster, n: u8, uid: u64) -> Value {
    let output = cluster.flotilla_at(n, &["action", "show", &uid.to_string(), "--json"]);
    serde_json::from_slice(&output.stdout).unwrap_or_default()
}

/// Every listed node's version, and the cluster version, as node `n` answers.
fn versions(cluster: &DevCluster, n: u8) -> (BTreeMap<u64, String>, String) {
    let status = cluster.status_json(n);
    let nodes = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| {
            let version = node["software_version"].as_str().unwrap_or("?");
            (node["uid"].as_u64().unwrap_or(0), version.to_string())
        })
        .collect();
    let version = status["cluster"]["cluster_version"].as_str().unwrap_or("");
    (nodes, version.to_string())
}

/// Waits (bounded) until node `n`'s endpoint on `port` answers PING (a node that just joined).
fn wait_endpoint(cluster: &DevCluster, n: u8, port: u16) {
    let addr = std::net::SocketAddr::new(cluster.addr(n).into(), port);
    let answers = poll_until(Duration::from_secs(30), || {
        RespClient::connect(addr, Duration::from_secs(1))
            .and_then(|mut c| c.call(&["PING"]))
            .is_ok()
    });
    assert!(answers, "the endpoint {addr} answers");
}

/// The version node `asked` lists node `n` on (`None` when it cannot tell within 30 s).
fn listed_version(cluster: &DevCluster, asked: u8, n: u8) -> Option<String> {
    let mut version = None;
    poll_until(Duration::from_secs(30), || {
        let output = cluster.flotilla_at(asked, &["status", "--json"]);
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        version = status["nodes"].as_array().and_then(|nodes| {
            let node = nodes.iter().find(|x| x["uid"] == u64::from(n))?;
            Some(node["software_version"].as_str()?.to_string())
        });
        version.is_some()
    });
    version
}

/// Starts `flotilla upgrade cluster --package P --yes --no-wait [extra]` through node `n`; the
/// action's uid.
fn start_upgrade(cluster: &DevCluster, n: u8, package: &Path, extra: &[&str]) -> u64 {
    let package = package.to_string_lossy();
    let mut args = vec![
        "upgrade",
        "cluster",
        "--package",
        &package,
        "--yes",
        "--no-wait",
    ];
    args.extend_from_slice(extra);
    let output = cluster.flotilla_at(n, &args);
    assert_success(&output, &args.join(" "));
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("action "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("the CLI prints the action's uid: {text}"))
}

/// Waits (bounded) until node `n` lists every node up, `primary` (if given) the primary node.
fn wait_all_up(cluster: &DevCluster, n: u8, primary: Option<u8>) {
    let up = poll_until(Duration::from_secs(60), || {
        let output = cluster.flotilla_at(n, &["status", "--json"]);
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        let primary_ok = primary.is_none_or(|p| status["cluster"]["master_node"] == u64::from(p));
        primary_ok && !nodes.is_empty() && nodes.iter().all(|x| x["status"] == "up")
    });
    assert!(
        up,
        "every node up (primary node {primary:?}) as node {n} sees it"
    );
}

/// A cluster of 3 nodes on 0.2.0 where only node 1 stands for election, every node armed to exit
/// after `hand_over_step` (the step at which primary-ship moves), the load node `load` never
/// primary (its daemon returned), both packages installed for restarts.
fn cluster(subnet: u8, v020: &Path, hand_over_step: &str, load: u8) -> (DevCluster, Child) {
    let spec = format!("store:campaign=error;{}", exit_after(hand_over_step));
    let cluster =
        DevCluster::up_from_package_with_env(&bin(), subnet, 3, v020, &[(FAILPOINTS, &spec)]);
    // Installed once now: a crashed daemon starts again at once.
    let (_, v021) = current_pair();
    for package in [v020, v021.as_path()] {
        cluster.install_package(package);
    }
    assert_eq!(
        cluster.status_json(load)["cluster"]["master_node"],
        u64::from(FIRST),
        "the creator is the primary node"
    );
    let spec = format!("{NEVER_PRIMARY};{}", exit_after(hand_over_step));
    cluster.kill9(load);
    let daemon = cluster.start_daemon_with_env(load, &[(FAILPOINTS, &spec)]);
    wait_all_up(&cluster, FIRST, Some(FIRST));
    (cluster, daemon)
}

/// Restarts node 1 (kill -9 first) with `spec` armed; waits until the load node sees it the
/// primary node again.
fn restart_first(cluster: &DevCluster, load: u8, spec: &str) -> Child {
    cluster.kill9(FIRST);
    let child = cluster.start_daemon_with_env(FIRST, &[(FAILPOINTS, spec)]);
    wait_all_up(cluster, load, Some(FIRST));
    child
}

/// A cluster upgrade action walked with a crash after every step: restarts every daemon that a
/// step's failpoint ended, hands a pause for the operator to `operate`, until the action
/// completes.
struct Walk {
    uid: u64,
    /// The plan's step names, in order.
    steps: Vec<String>,
    /// The node the CLI asks (a load node: never down).
    asked: u8,
    packages: (PathBuf, PathBuf),
    /// Failpoints added to every restart of a node, by node number.
    extra: BTreeMap<u8, String>,
    /// Exit lines already handled, by node number.
    seen: BTreeMap<u8, usize>,
    /// Every failpoint exit: the node and the point.
    crashes: Vec<(u8, String)>,
    /// Daemons this test started, reaped as they exit.
    children: Vec<Child>,
    started: Instant,
}

impl Walk {
    /// Before the action starts: the exits logged so far are not the action's.
    fn new(cluster: &DevCluster, asked: u8, packages: (PathBuf, PathBuf)) -> Walk {
        let seen = cluster
            .node_numbers()
            .map(|n| (n, exits_logged(cluster, n).len()))
            .collect();
        Walk {
            uid: 0,
            steps: Vec::new(),
            asked,
            packages,
            extra: BTreeMap::new(),
            seen,
            crashes: Vec::new(),
            children: Vec::new(),
            started: Instant::now(),
        }
    }

    /// The action `uid` started: its plan.
    fn follow(&mut self, cluster: &DevCluster, uid: u64) {
        self.uid = uid;
        self.started = Instant::now();
        self.steps = action(cluster, self.asked, uid)["plan"]
            .as_array()
            .expect("action show lists the plan")
            .iter()
            .map(|s| s["name"].as_str().expect("a step name").to_string())
            .collect();
    }

    /// Follows the action to its end (bounded); returns how long it took.
    fn run(
        &mut self,
        cluster: &mut DevCluster,
        mut operate: impl FnMut(&mut DevCluster, &str) -> Option<u8>,
    ) -> Duration {
        let mut last = Value::Null;
        // The pause the operator's part was done for: a resume whose answer was lost (the
        // primary node crashed after the step it resumed) is asked again, the part not redone.
        let mut operated: Option<String> = None;
        let completed = poll_until(ACTION_BOUND, || {
            self.children
                .retain_mut(|c| c.try_wait().ok().flatten().is_none());
            for n in cluster.node_numbers() {
                self.restart_if_crashed(cluster, n);
            }
            last = action(cluster, self.asked, self.uid);
            match last["status"].as_str() {
                Some("completed") => true,
                Some("paused") => {
                    let step = last["pending_ops"].as_str().unwrap_or("").to_string();
                    if operated.as_ref() != Some(&step) {
                        if let Some(asked) = operate(cluster, &step) {
                            self.asked = asked;
                        }
                        operated = Some(step);
                    }
                    let resume = ["action", "resume", &self.uid.to_string(), "--no-wait"];
                    let output = cluster.flotilla_at(self.asked, &resume);
                    if !output.status.success() {
                        eprintln!(
                            "action resume: {} (asked again while the action is paused)",
                            String::from_utf8_lossy(&output.stderr).trim()
                        );
                    }
                    false
                }
                Some("running") | None => false,
                Some(other) => panic!("the action ended {other}: {last:#}"),
            }
        });
        assert!(
            completed,
            "the action completed after crashes {:?}: {last:#}",
            self.crashes
        );
        for step in &self.steps {
            let point = format!("{step}@after");
            assert!(
                self.crashes.iter().any(|(_, p)| *p == point),
                "a crash after {step}: {:?}",
                self.crashes
            );
        }
        self.started.elapsed()
    }

    /// Stops the cluster (its daemons killed by pid) and reaps the daemons this test started.
    fn reap(self, cluster: DevCluster) {
        drop(cluster);
        for mut child in self.children {
            child.wait().expect("a daemon the test started, reaped");
        }
    }

    /// When node `n`'s log shows a new failpoint exit: recorded; after a step, the daemon is
    /// started again (once gone) with the next step armed.
    fn restart_if_crashed(&mut self, cluster: &DevCluster, n: u8) {
        let exits = exits_logged(cluster, n);
        let seen = self.seen.entry(n).or_default();
        if exits.len() <= *seen {
            return;
        }
        *seen = exits.len();
        let point = exits.last().expect("an exit").clone();
        eprintln!(
            "node {n} exited at {point} ({:.1} s into the action)",
            self.started.elapsed().as_secs_f64()
        );
        self.crashes.push((n, point.clone()));
        let Some(index) = point
            .strip_suffix("@after")
            .and_then(|step| self.steps.iter().position(|s| s == step))
        else {
            // Not a step (a handover's old daemon): the node's other process goes on.
            return;
        };
        let gone = poll_until(Duration::from_secs(10), || {
            cluster.daemon_pid(n).is_none_or(|pid| !process_alive(pid))
        });
        assert!(gone, "node {n}'s daemon is gone after {point}");
        let mut next = self
            .steps
            .get(index + 1)
            .map(|s| exit_after(s))
            .unwrap_or_default();
        if let Some(extra) = self.extra.get(&n) {
            next = format!("{next};{extra}");
        }
        let (v020, v021) = &self.packages;
        let package = match listed_version(cluster, self.asked, n).as_deref() {
            Some("0.2.1") => v021,
            _ => v020,
        };
        let child = cluster.start_daemon_from_package(n, package, &[(FAILPOINTS, &next)]);
        self.children.push(child);
    }
}

/// Every node on 0.2.1, the cluster finalized, every slot range with one primary, the database
/// active.
fn assert_upgraded(cluster: &DevCluster, n: u8, nodes: usize) {
    let (listed, version) = versions(cluster, n);
    assert_eq!(listed.len(), nodes, "{listed:?}");
    assert!(listed.values().all(|v| v == "0.2.1"), "{listed:?}");
    assert_eq!(version, "0.2.1", "finalized");
    let mut primaries: BTreeMap<String, usize> = BTreeMap::new();
    for shard in cluster.shards_at(n) {
        let range = shard["assigned_slots"].to_string();
        *primaries.entry(range).or_default() += usize::from(shard["role"] == "master");
    }
    assert!(
        primaries.values().all(|p| *p == 1),
        "one primary per slot range: {primaries:?}"
    );
    let active = poll_until(Duration::from_secs(60), || {
        let output = cluster.flotilla_at(n, &["db", "show", "1", "--json"]);
        let bdb: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        bdb["status"] == "active"
    });
    assert!(active, "the database is active");
}

fn report(what: &str, walk: &Walk, took: Duration, stall_ms: f64) {
    eprintln!(
        "{what}: {} steps {:?}, crashes {:?}, completed in {:.1} s, longest stall {stall_ms:.1} ms",
        walk.steps.len(),
        walk.steps,
        walk.crashes,
        took.as_secs_f64()
    );
}

#[test]
fn an_in_place_cluster_upgrade_completes_after_a_crash_after_every_step() {
    let test_started = Instant::now();
    let (v020, v021) = current_pair();
    const LOAD: u8 = 3;
    let hand_over = format!("upgrade_node node:{FIRST}");
    let (mut cluster, load_daemon) = cluster(148, &v020, &hand_over, LOAD);
    cluster.create_replicated_db("kept", 12148, "valkey-8.1");
    let rt = load_runtime();
    let load = start_load_across_primary_crashes(&rt, format!("{}:12148", cluster.addr(LOAD)));

    let mut walk = Walk::new(&cluster, LOAD, (v020.clone(), v021.clone()));
    // Node 1's old daemon also exits in the middle of its own handover (its restarts before
    // that step are from 0.2.0: the old side of the handover).
    walk.extra
        .insert(FIRST, "handover:sessions=exit".to_string());
    walk.children.push(load_daemon);
    let first = restart_first(&cluster, LOAD, &exit_after("upgrade_node"));
    walk.children.push(first);
    let uid = start_upgrade(&cluster, LOAD, &v021, &[]);
    walk.follow(&cluster, uid);
    assert_eq!(
        walk.steps.get(2).map(String::as_str),
        Some(hand_over.as_str()),
        "node 1, the primary node, moves last: {:?}",
        walk.steps
    );
    let took = walk.run(&mut cluster, |_, step| {
        panic!("an in-place upgrade does not pause: {step}")
    });
    let handover_crash = walk
        .crashes
        .iter()
        .any(|(n, point)| *n == FIRST && point == "handover:sessions@before");
    let report_load = stop_load_clean(&rt, load);
    report(
        "in-place cluster upgrade",
        &walk,
        took,
        report_load.longest_stall_ms,
    );
    assert!(
        handover_crash,
        "node 1's old daemon exited in its handover: {:?}",
        walk.crashes
    );
    assert_upgraded(&cluster, LOAD, 3);
    eprintln!("test took {:.1} s", test_started.elapsed().as_secs_f64());
    walk.reap(cluster);
}

/// The loads of a rolling upgrade: one through the load node, moved to another node before the
/// load node's turn.
struct Loads {
    rt: tokio::runtime::Runtime,
    port: u16,
    load: Option<LoadHandle>,
    stalls: Vec<f64>,
}

impl Loads {
    fn start(cluster: &DevCluster, n: u8, port: u16) -> Loads {
        let rt = load_runtime();
        let load = start_load_across_primary_crashes(&rt, format!("{}:{port}", cluster.addr(n)));
        Loads {
            rt,
            port,
            load: Some(load),
            stalls: Vec::new(),
        }
    }

    /// The load moves to node `n` (its endpoint answering first); the old one is verified while
    /// its node still serves.
    fn move_to(&mut self, cluster: &DevCluster, n: u8) {
        wait_endpoint(cluster, n, self.port);
        let next = start_load_across_primary_crashes(
            &self.rt,
            format!("{}:{}", cluster.addr(n), self.port),
        );
        let old = self.load.replace(next).expect("a load");
        self.stalls
            .push(stop_load_clean(&self.rt, old).longest_stall_ms);
    }

    /// Stops and verifies the load: 0 client errors, 0 lost writes; the longest stall in ms.
    fn stop_clean(mut self) -> f64 {
        let load = self.load.take().expect("a load");
        self.stalls
            .push(stop_load_clean(&self.rt, load).longest_stall_ms);
        self.stalls.iter().copied().fold(0.0, f64::max)
    }
}

/// A rolling upgrade (`--method METHOD`) walked with a crash after every step, under load through
/// node 3 on `port`: node 1 armed after the first step's operation `first_op`, every node after
/// `hand_over` (node 1's first step, where it hands primary-ship away, the step of index 6 of 10);
/// `operate` does the operator's part of each pause (with the loads, to move them).
fn walk_rolling(
    subnet: u8,
    method: &str,
    first_op: &str,
    hand_over: &str,
    mut operate: impl FnMut(&mut DevCluster, &str, &mut Loads) -> Option<u8>,
) {
    let test_started = Instant::now();
    let (v020, v021) = current_pair();
    const FIRST_LOAD: u8 = 3;
    let port = 12000 + u16::from(subnet);
    let (mut cluster, load_daemon) = cluster(subnet, &v020, hand_over, FIRST_LOAD);
    cluster.create_replicated_db("kept", port, "valkey-8.1");
    let mut loads = Loads::start(&cluster, FIRST_LOAD, port);

    let mut walk = Walk::new(&cluster, FIRST_LOAD, (v020.clone(), v021.clone()));
    walk.children.push(load_daemon);
    let first = restart_first(&cluster, FIRST_LOAD, &exit_after(first_op));
    walk.children.push(first);
    let uid = start_upgrade(&cluster, FIRST_LOAD, &v021, &["--method", method]);
    walk.follow(&cluster, uid);
    assert_eq!(
        (walk.steps.len(), walk.steps.get(6).map(String::as_str)),
        (10, Some(hand_over)),
        "three nodes and finalize, node 1, the primary node, last: {:?}",
        walk.steps
    );
    let took = walk.run(&mut cluster, |cluster, step| {
        operate(cluster, step, &mut loads)
    });
    let stall = loads.stop_clean();
    let asked = walk.asked;
    report(
        &format!("rolling ({method}) cluster upgrade"),
        &walk,
        took,
        stall,
    );
    assert_upgraded(&cluster, asked, 3);
    eprintln!("test took {:.1} s", test_started.elapsed().as_secs_f64());
    walk.reap(cluster);
}

/// The node a step names (`add_node node:3` -> 3).
fn step_node(step: &str) -> u8 {
    step.rsplit_once("node:")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("step '{step}' names no node"))
}

#[test]
fn a_rolling_cluster_upgrade_completes_after_a_crash_after_every_step() {
    let v021 = current_pair().1;
    let hand_over = format!("add_node node:{FIRST}");
    walk_rolling(
        149,
        "add-node",
        "add_node",
        &hand_over,
        |cluster, step, loads| {
            assert!(
                step.starts_with("add_node "),
                "add-node pauses to add: {step}"
            );
            if step_node(step) != 3 {
                cluster.add_node_from(Some(&v021));
                return None;
            }
            // The load's node goes next: a new node that never becomes the primary node takes it.
            let spec = format!("{NEVER_PRIMARY};{}", exit_after(&hand_over));
            let added = cluster.add_node_with_env(Some(&v021), &[], &[(FAILPOINTS, &spec)]);
            loads.move_to(cluster, added);
            Some(added)
        },
    );
}

#[test]
fn a_replace_node_cluster_upgrade_completes_after_a_crash_after_every_step() {
    let v021 = current_pair().1;
    let hand_over = format!("drain_node node:{FIRST}");
    walk_rolling(
        151,
        "replace-node",
        "drain_node",
        &hand_over,
        |cluster, step, loads| {
            assert!(
                step.starts_with("rejoin_node "),
                "replace-node pauses to rejoin: {step}"
            );
            let node = step_node(step);
            if node != 2 {
                cluster.reinstall_node(u64::from(node), &v021);
                return None;
            }
            // Node 2 (first in the plan) comes back never to be the primary node, and takes the load
            // before node 3, the load's node, goes.
            let spec = format!("{NEVER_PRIMARY};{}", exit_after(&hand_over));
            cluster.reinstall_node_with_env(u64::from(node), &v021, &[], &[(FAILPOINTS, &spec)]);
            loads.move_to(cluster, node);
            Some(node)
        },
    );
}
