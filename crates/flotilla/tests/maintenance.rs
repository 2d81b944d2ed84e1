//! Maintenance mode (issue 12), against real daemons and engines, on 3-node clusters with two
//! replicated databases (one of 2 shards, one of 1):
//! - `node maintenance N on --demote-node` on the primary node, then `off`, under load through
//!   another node's endpoints: every shard leaves the node and comes back to the same nodes in
//!   the same roles (slot range -> (node, role) before and after), 0 client errors, 0 lost
//!   acknowledged writes; while the node is in maintenance `flotilla status` and `GET
//!   /v1/nodes` show it and `upgrade check` refuses naming it;
//! - refusals, each naming the object and the fix and changing nothing: another action running
//!   on an affected database or node, quorum (2 of 3 nodes in maintenance), memory (the other
//!   nodes lack room for a shard);
//! - `on --keep-replicas`: the node keeps every copy, as replicas; `off` gives the primary roles
//!   back;
//! - a kill -9 of the primary node's daemon at every step of `on` and of `off`: each resumes and
//!   completes, the shards come back to their nodes and roles, no acknowledged write lost.
//!
//! Subnets 127.0.131.x, 127.0.132.x and 127.0.137.x.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
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

/// The two databases: `two` (2 shards) on `port`, `one` (1 shard) on `port + 1`, both
/// replicated.
fn two_databases(cluster: &DevCluster, port: u16) -> [u16; 2] {
    cluster.create_replicated_db("two", port, ENGINE);
    one_shard_db(cluster, "one", port + 1, "100mb");
    [port, port + 1]
}

/// A replicated database of one shard.
fn one_shard_db(cluster: &DevCluster, name: &str, port: u16, memory: &str) {
    let port = port.to_string();
    cluster.create_db(&[
        "--name",
        name,
        "--port",
        &port,
        "--memory",
        memory,
        "--shards",
        "1",
        "--replication",
        "--redis-version",
        ENGINE,
    ]);
}

/// Each slot range (database, slots) -> its copies as (node, role), as node `n` answers.
type Placement = BTreeMap<(u64, String), BTreeSet<(u64, String)>>;

fn placement(cluster: &DevCluster, n: u8) -> Placement {
    let mut places = Placement::new();
    for s in cluster.shards_at(n) {
        let range = (
            s["bdb_uid"].as_u64().unwrap(),
            s["assigned_slots"].as_str().unwrap().to_string(),
        );
        let copy = (
            s["node_uid"].as_u64().unwrap(),
            s["role"].as_str().unwrap().to_string(),
        );
        places.entry(range).or_default().insert(copy);
    }
    places
}

/// The nodes holding a shard.
fn nodes_with_shards(placement: &Placement) -> BTreeSet<u64> {
    placement
        .values()
        .flat_map(|copies| copies.iter().map(|(node, _)| *node))
        .collect()
}

/// What a refused request must leave as it was: every node's maintenance mark, the shards'
/// places, the actions.
fn unchanged_view(cluster: &DevCluster, n: u8) -> (Vec<(u64, bool)>, Placement, usize) {
    let actions = cluster.json(n, &["action", "list", "--json"]);
    (
        maintenance_marks(cluster, n),
        placement(cluster, n),
        actions.as_array().unwrap().len(),
    )
}

/// Each node's uid and whether `GET /v1/nodes` shows it in maintenance.
fn maintenance_marks(cluster: &DevCluster, n: u8) -> Vec<(u64, bool)> {
    let status = cluster.status_json(n);
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            let marked = node["maintenance"].as_bool().unwrap_or(false);
            (node["uid"].as_u64().unwrap(), marked)
        })
        .collect()
}

fn primary_node(cluster: &DevCluster, n: u8) -> u64 {
    cluster.status_json(n)["cluster"]["master_node"]
        .as_u64()
        .expect("a primary node")
}

/// Asserts that `output` failed with an error naming every one of `words`.
fn refused(output: &Output, words: &[&str]) {
    assert!(!output.status.success(), "refused: {output:?}");
    let text = String::from_utf8_lossy(&output.stderr);
    for word in words {
        assert!(text.contains(word), "the refusal names '{word}': {text}");
    }
    eprintln!("refused as expected: {}", text.trim());
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

/// One load checker per database, through node `n`'s endpoints.
fn start_loads(
    rt: &tokio::runtime::Runtime,
    cluster: &DevCluster,
    n: u8,
    ports: [u16; 2],
) -> Vec<LoadHandle> {
    ports
        .iter()
        .map(|port| {
            wait_endpoint(SocketAddr::new(cluster.addr(n).into(), *port));
            start_load(rt, format!("{}:{port}", cluster.addr(n)))
        })
        .collect()
}

/// `node maintenance ARGS` against node `n`.
fn maintenance(cluster: &DevCluster, n: u8, args: &[&str]) -> Output {
    let mut full = vec!["node", "maintenance"];
    full.extend_from_slice(args);
    let output = cluster.flotilla_at(n, &full);
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    output
}

/// The blockers `upgrade check --json` names, as node `n` answers.
fn upgrade_refusals(cluster: &DevCluster, n: u8) -> Vec<Value> {
    let package = packages().current("0.2.1", &[]);
    let package = package.to_string_lossy();
    let output = cluster.flotilla_at(n, &["upgrade", "check", "--package", &package, "--json"]);
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(&output.stderr)));
    let refusals = report["refusals"].as_array().cloned().unwrap_or_default();
    assert_eq!(output.status.success(), refusals.is_empty());
    refusals
}

#[test]
fn maintenance_on_and_off_bring_every_shard_back_to_its_node_and_role_under_load() {
    let cluster = DevCluster::up(&bin(), 131, 3);
    let ports = two_databases(&cluster, 12131);
    let node = primary_node(&cluster, 1);
    let uid = node.to_string();
    let other = cluster
        .node_numbers()
        .find(|n| u64::from(*n) != node)
        .unwrap();
    let before = placement(&cluster, other);
    assert!(nodes_with_shards(&before).contains(&node), "{before:?}");
    assert!(
        upgrade_refusals(&cluster, other).is_empty(),
        "a healthy cluster"
    );
    let rt = load_runtime();
    let loads = start_loads(&rt, &cluster, other, ports);

    let on = maintenance(&cluster, other, &[&uid, "on", "--demote-node"]);
    assert_success(&on, "node maintenance on --demote-node");
    let during = placement(&cluster, other);
    assert!(
        !nodes_with_shards(&during).contains(&node),
        "every shard left node {node}: {during:?}"
    );
    assert_eq!(during.len(), before.len(), "every slot range kept");
    assert!(
        during.values().all(|copies| copies.len() == 2),
        "{during:?}"
    );
    assert_ne!(
        primary_node(&cluster, other),
        node,
        "primary-ship handed away"
    );
    assert!(maintenance_marks(&cluster, other).contains(&(node, true)));
    let status = cluster.flotilla_at(other, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("MAINTENANCE"), "{status}");
    let blockers = upgrade_refusals(&cluster, other);
    assert_eq!(blockers.len(), 1, "{blockers:#?}");
    assert_eq!(blockers[0]["blocker"], "maintenance", "{blockers:#?}");
    assert!(
        blockers[0]["object"]
            .as_str()
            .unwrap()
            .starts_with(&format!("node:{node} ")),
        "{blockers:#?}"
    );
    assert!(
        blockers[0]["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("flotilla node maintenance {node} off")),
        "{blockers:#?}"
    );

    let off = maintenance(&cluster, other, &[&uid, "off"]);
    assert_success(&off, "node maintenance off");
    let after = placement(&cluster, other);
    assert_eq!(
        after, before,
        "every slot range back on its nodes in its roles"
    );
    assert!(maintenance_marks(&cluster, other).iter().all(|(_, m)| !m));
    assert!(
        upgrade_refusals(&cluster, other).is_empty(),
        "the mark is gone"
    );

    let stall = loads
        .into_iter()
        .map(|load| stop_load_clean(&rt, load).longest_stall_ms)
        .fold(0.0, f64::max);
    eprintln!("maintenance on and off under load: longest stall {stall:.1} ms");
}

#[test]
fn maintenance_is_refused_while_an_action_runs_when_quorum_or_memory_would_be_lost_and_can_keep_replicas(
) {
    let env = [
        ("FLOTILLA_FAILPOINT_PAUSE_STEP", "snapshot"),
        ("FLOTILLA_FAILPOINT_PAUSE_MS", "8000"),
    ];
    let cluster = DevCluster::up_with_env(&bin(), 132, 3, &env);
    two_databases(&cluster, 12132);

    // Node 2's `on` holds at its snapshot step: an `on` touching its databases is refused.
    let started = maintenance(&cluster, 1, &["2", "on", "--no-wait"]);
    assert_success(&started, "node maintenance 2 on --no-wait");
    let text = String::from_utf8_lossy(&started.stdout);
    let action = text
        .lines()
        .find_map(|l| l.strip_prefix("action "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the CLI prints the action's uid")
        .to_string();
    let before = unchanged_view(&cluster, 1);
    let busy = maintenance(&cluster, 1, &["3", "on"]);
    refused(
        &busy,
        &[
            &format!("action {action} (SMMaintenanceOn)"),
            &format!("flotilla action wait {action}"),
            "nothing was changed",
        ],
    );
    assert_eq!(
        unchanged_view(&cluster, 1),
        before,
        "the refusal changed nothing"
    );
    let waited = cluster.flotilla_at(1, &["action", "wait", &action]);
    assert_success(&waited, "action wait");
    assert!(maintenance_marks(&cluster, 1).contains(&(2, true)));

    // With node 2 in maintenance, a second node would leave one of three up.
    let before = unchanged_view(&cluster, 1);
    let quorum = maintenance(&cluster, 1, &["3", "on"]);
    refused(
        &quorum,
        &[
            "putting node 3 in maintenance would lose quorum",
            "flotilla node maintenance 2 off",
            "nothing was changed",
        ],
    );
    assert_eq!(
        unchanged_view(&cluster, 1),
        before,
        "the refusal changed nothing"
    );
    let off = maintenance(&cluster, 1, &["2", "off"]);
    assert_success(&off, "node maintenance 2 off");

    // --keep-replicas: a node's primaries hand their role over, every copy stays; `off` gives
    // the roles back.
    let before = placement(&cluster, 1);
    let holder = before
        .values()
        .flat_map(|copies| copies.iter())
        .find(|(_, role)| role == "master")
        .map(|(node, _)| *node)
        .expect("a primary shard");
    let copies_on = |places: &Placement| -> Vec<String> {
        places
            .values()
            .flat_map(|copies| copies.iter().filter(|(n, _)| *n == holder))
            .map(|(_, role)| role.clone())
            .collect()
    };
    let uid = holder.to_string();
    let on = maintenance(&cluster, 1, &[&uid, "on", "--keep-replicas"]);
    assert_success(&on, "node maintenance on --keep-replicas");
    let kept = placement(&cluster, 1);
    assert_eq!(copies_on(&kept).len(), copies_on(&before).len(), "{kept:?}");
    assert!(copies_on(&kept).iter().all(|r| r == "slave"), "{kept:?}");
    let off = maintenance(&cluster, 1, &[&uid, "off"]);
    assert_success(&off, "node maintenance off");
    assert_eq!(placement(&cluster, 1), before, "the primary roles are back");

    // A database far larger than any machine: none of the other nodes has room for its shards.
    one_shard_db(&cluster, "huge", 12134, "65536gb");
    let places = placement(&cluster, 1);
    let huge_node = places
        .iter()
        .find(|((bdb, _), _)| *bdb == 3)
        .and_then(|(_, copies)| copies.iter().next())
        .map(|(node, _)| node.to_string())
        .expect("the huge database's shards");
    let before = unchanged_view(&cluster, 1);
    let memory = maintenance(&cluster, 1, &[&huge_node, "on"]);
    refused(
        &memory,
        &[
            "the other nodes lack memory for",
            "free of",
            "flotilla db set",
            "nothing was changed",
        ],
    );
    assert_eq!(
        unchanged_view(&cluster, 1),
        before,
        "the refusal changed nothing"
    );
}

/// Runs `node maintenance ARGS --no-wait` against node `n` and kills -9 the primary node's
/// daemon at every step of the action it starts (each held 2 s by the failpoint), restarting
/// it from `package`; waits until the action completed. The steps where it was killed.
fn kill_at_every_step(
    cluster: &DevCluster,
    n: u8,
    args: &[&str],
    package: &std::path::Path,
) -> Vec<String> {
    let mut full = vec!["--no-wait"];
    full.extend_from_slice(args);
    let output = maintenance(cluster, n, &full);
    assert_success(&output, "node maintenance --no-wait");
    let text = String::from_utf8_lossy(&output.stdout);
    let uid: u64 = text
        .split_whitespace()
        .skip_while(|w| *w != "action")
        .nth(1)
        .and_then(|w| w.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("the CLI prints the action's uid: {text}"));
    let action = |cluster: &DevCluster| -> Value {
        cluster
            .node_numbers()
            .find_map(|m| {
                let out = cluster.flotilla_at(m, &["action", "show", &uid.to_string(), "--json"]);
                serde_json::from_slice(&out.stdout).ok()
            })
            .unwrap_or_default()
    };
    let mut killed = Vec::new();
    let mut index = 0;
    loop {
        let mut at = None;
        let reached = poll_until(Duration::from_secs(120), || {
            let a = action(cluster);
            if a["status"] == "completed" {
                return true;
            }
            let running = a["status"] == "running" && a["step_index"].as_u64() >= Some(index);
            at = running.then(|| {
                (
                    a["step_index"].as_u64().unwrap(),
                    a["pending_ops"].to_string(),
                )
            });
            at.is_some()
        });
        assert!(reached, "action {uid} went on: {:#}", action(cluster));
        let Some((i, step)) = at else { break };
        let primary = cluster
            .node_numbers()
            .find_map(|m| {
                let out = cluster.flotilla_at(m, &["status", "--json"]);
                let status: Value = serde_json::from_slice(&out.stdout).ok()?;
                status["cluster"]["master_node"].as_u64()
            })
            .expect("a primary node");
        cluster.kill9(primary as u8);
        cluster.restart_from(primary as u8, package);
        killed.push(format!("{step} (node {primary})"));
        index = i + 1;
    }
    let done = poll_until(Duration::from_secs(120), || {
        action(cluster)["status"] == "completed"
    });
    assert!(
        done,
        "action {uid} completed after kills at {killed:?}: {:#}",
        action(cluster)
    );
    killed
}

#[test]
fn maintenance_on_and_off_resume_after_a_kill_9_of_the_primary_node_at_every_step() {
    let v020 = packages().current("0.2.0", &[]);
    let steps =
        "demote_node,snapshot,switchover,add_copy,sync_copy,drop_old,switch_back,end_maintenance";
    let env = [
        ("FLOTILLA_FAILPOINT_PAUSE_STEP", steps),
        ("FLOTILLA_FAILPOINT_PAUSE_MS", "2000"),
    ];
    let cluster = DevCluster::up_from_package_with_env(&bin(), 137, 3, &v020, &env);
    let ports = two_databases(&cluster, 12137);
    let primary = primary_node(&cluster, 1);
    // A node that is not the primary node goes into maintenance; the load runs on the third.
    let mut others = cluster.node_numbers().filter(|n| u64::from(*n) != primary);
    let (node, load_node) = (others.next().unwrap(), others.next().unwrap());
    let before = placement(&cluster, load_node);
    let rt = load_runtime();
    let loads = start_loads(&rt, &cluster, load_node, ports);

    let uid = node.to_string();
    let on = kill_at_every_step(&cluster, load_node, &[&uid, "on"], &v020);
    let during = placement(&cluster, load_node);
    assert!(
        !nodes_with_shards(&during).contains(&u64::from(node)),
        "{during:?}"
    );
    let off = kill_at_every_step(&cluster, load_node, &[&uid, "off"], &v020);
    let after = poll_until(Duration::from_secs(30), || {
        placement(&cluster, load_node) == before
    });
    assert!(
        after,
        "every shard back in its place and role: {:?} vs {before:?}",
        placement(&cluster, load_node)
    );
    for load in loads {
        let report = rt.block_on(load.stop()).expect("load checker verifies");
        eprintln!("{report}");
        assert_eq!(
            report.lost_writes, 0,
            "no acknowledged write lost: {report}"
        );
    }
    eprintln!("killed at: on {on:?}; off {off:?}");
}
