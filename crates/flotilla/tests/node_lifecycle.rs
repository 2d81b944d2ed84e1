//! The node lifecycle on real clusters under load (issue 11): a node joins (`dev add-node`),
//! a shard moves (`shard migrate`), primary-ship moves (`cluster promote`), nodes are drained
//! and removed (`node remove`, `dev remove-node`) with zero client errors and zero lost
//! acknowledged writes; every refusal (quorum, memory, anti-affinity, running action) names
//! the object and the fix and changes nothing; a kill -9 of the primary node's daemon at each
//! step of a node removal is resumed and the removal completes.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use flotilla_model::{Op, MIGRATION_OPS};
use flotilla_testkit::{
    assert_success, flotilla_bin, load_runtime as runtime, poll_until, process_alive, start_load,
    stop_load_clean as stop_load, DevCluster,
};
use serde_json::Value;

fn bin() -> std::path::PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

/// Every shard as (uid, database, node, role).
type Placement = BTreeSet<(u64, u64, u64, String)>;

/// Every shard's place, as node `n` answers.
fn placement(cluster: &DevCluster, n: u8) -> Placement {
    cluster
        .shards_at(n)
        .iter()
        .map(|s| {
            (
                s["uid"].as_u64().unwrap(),
                s["bdb_uid"].as_u64().unwrap(),
                s["node_uid"].as_u64().unwrap(),
                s["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// What a refused request must leave as it was: the nodes, the shards' places, the actions.
fn snapshot(cluster: &DevCluster, n: u8) -> (Vec<u64>, Placement, usize) {
    let status = cluster.status_json(n);
    let nodes = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["uid"].as_u64().unwrap())
        .collect();
    let actions = cluster.json(n, &["action", "list", "--json"]);
    (
        nodes,
        placement(cluster, n),
        actions.as_array().unwrap().len(),
    )
}

/// The primary node's uid as node `n` knows it.
fn primary_node(cluster: &DevCluster, n: u8) -> u64 {
    cluster.status_json(n)["cluster"]["master_node"]
        .as_u64()
        .expect("a primary node")
}

/// Every shard active, as node `n` answers.
fn all_active(cluster: &DevCluster, n: u8) -> bool {
    cluster.shards_at(n).iter().all(|s| s["status"] == "active")
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

/// The first primary shard of database `bdb` (in uid order), its node, and the nodes that
/// hold a copy of its slot range.
fn primary_and_holders(cluster: &DevCluster, bdb: u64) -> (u64, u64, Vec<u64>) {
    let shards = cluster.shards_at(1);
    let primary = shards
        .iter()
        .find(|s| s["bdb_uid"] == bdb && s["role"] == "master")
        .expect("a primary shard");
    let holders = shards
        .iter()
        .filter(|s| s["bdb_uid"] == bdb && s["assigned_slots"] == primary["assigned_slots"])
        .map(|s| s["node_uid"].as_u64().unwrap())
        .collect();
    let uid = primary["uid"].as_u64().unwrap();
    (uid, primary["node_uid"].as_u64().unwrap(), holders)
}

fn create(cluster: &DevCluster, name: &str, port: &str, memory: &str, extra: &[&str]) -> u64 {
    let mut args = vec!["--name", name, "--port", port, "--memory", memory];
    args.extend_from_slice(extra);
    cluster.create_db(&args)["uid"].as_u64().unwrap()
}

#[test]
fn a_node_joins_a_shard_moves_primary_ship_moves_and_nodes_leave_under_load() {
    let mut cluster = DevCluster::up(&bin(), 115, 3);
    assert_eq!(
        cluster.add_node(),
        4,
        "dev add-node starts and joins node 4"
    );
    assert_eq!(cluster.status_json(1)["nodes"].as_array().unwrap().len(), 4);
    let orders = create(
        &cluster,
        "orders",
        "12150",
        "100mb",
        &["--shards", "2", "--replication"],
    );
    let carts = create(&cluster, "carts", "12151", "100mb", &["--replication"]);
    // Node 4 stays to the end: the clients go through it.
    let rt = runtime();
    let orders_load = start_load(&rt, format!("{}:12150", cluster.addr(4)));
    let carts_load = start_load(&rt, format!("{}:12151", cluster.addr(4)));

    // shard migrate: a primary shard of `orders` moves to a node without a copy of its range.
    let (moved, from, holders) = primary_and_holders(&cluster, orders);
    let target = (1..=4).find(|n| !holders.contains(n)).unwrap();
    let output = cluster.flotilla(&[
        "shard",
        "migrate",
        &moved.to_string(),
        "--to-node",
        &target.to_string(),
    ]);
    assert_success(&output, "shard migrate");
    let after = placement(&cluster, 1);
    assert!(!after.iter().any(|s| s.0 == moved), "shard {moved} is gone");
    let (_, now_on, now_holders) = primary_and_holders(&cluster, orders);
    assert_eq!(
        now_on, target,
        "the range's primary now runs on node {target}"
    );
    assert!(
        !now_holders.contains(&from),
        "node {from} holds no copy of the range any more"
    );
    assert!(poll_until(Duration::from_secs(30), || all_active(
        &cluster, 1
    )));

    // cluster promote: primary-ship moves to a node of our choice.
    let primary = primary_node(&cluster, 1);
    let promoted = (1..=3).find(|n| *n != primary).unwrap();
    assert_success(
        &cluster.flotilla(&["cluster", "promote", &promoted.to_string()]),
        "cluster promote",
    );
    assert!(
        poll_until(Duration::from_secs(5), || primary_node(&cluster, 4)
            == promoted),
        "node {promoted} is the primary node"
    );

    // dev remove-node of the primary node: it is demoted, drained, removed, its daemon stops.
    let pid = cluster.daemon_pid(promoted as u8).unwrap();
    let output = cluster.flotilla_at(
        4,
        &[
            "dev",
            "remove-node",
            &promoted.to_string(),
            "--dir",
            &cluster.data_dir(1).parent().unwrap().to_string_lossy(),
        ],
    );
    assert_success(&output, "dev remove-node");
    assert_ne!(primary_node(&cluster, 4), promoted);
    assert!(
        poll_until(Duration::from_secs(10), || !process_alive(pid)),
        "the removed node's daemon stopped"
    );
    let engines =
        flotilla_engine::running_engine_pids(&cluster.data_dir(promoted as u8).join("shards"));
    assert!(engines.is_empty(), "its engines are gone: {engines:?}");
    assert!(cluster.data_dir(promoted as u8).join("REMOVED").exists());
    let nodes = cluster.status_json(4)["nodes"].as_array().unwrap().len();
    assert_eq!(nodes, 3);
    assert!(!placement(&cluster, 4).iter().any(|s| s.2 == promoted));
    assert!(poll_until(Duration::from_secs(30), || all_active(
        &cluster, 4
    )));

    // node remove of one more node (not the primary node): 2 nodes left.
    let left = (1..=3)
        .find(|n| *n != promoted && *n != primary_node(&cluster, 4))
        .unwrap();
    assert_success(
        &cluster.flotilla_at(4, &["node", "remove", &left.to_string()]),
        "node remove",
    );
    assert_eq!(cluster.status_json(4)["nodes"].as_array().unwrap().len(), 2);
    assert!(poll_until(Duration::from_secs(30), || all_active(
        &cluster, 4
    )));

    // Two nodes with replicated databases: a node cannot go (Redis Software's rule too).
    let last = (1..=3).find(|n| *n != promoted && *n != left).unwrap();
    let before = snapshot(&cluster, 4);
    refused(
        &cluster.flotilla_at(4, &["node", "remove", &last.to_string()]),
        &[
            "anti_affinity",
            "never share a node",
            "flotilla cluster join",
        ],
    );
    assert_eq!(snapshot(&cluster, 4), before, "a refusal changes nothing");

    let actions = cluster.json(4, &["action", "list", "--json"]);
    let names: Vec<&str> = actions
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["SMMigrateShard", "SMRemoveNode", "SMRemoveNode"]);
    assert!(actions
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["status"] == "completed"));
    for (bdb, load) in [(orders, orders_load), (carts, carts_load)] {
        let report = stop_load(&rt, load);
        eprintln!(
            "database {bdb}: longest stall {:.1} ms over the migration, the promotion and two removals",
            report.longest_stall_ms
        );
    }
}

#[test]
fn refusals_name_the_object_and_the_fix_and_change_nothing() {
    let cluster = DevCluster::up_with_env(
        &bin(),
        116,
        3,
        &[
            // The migration below waits before its first step: the state stays as it is while
            // the refusals are checked against it.
            ("FLOTILLA_FAILPOINT_PAUSE_STEP", Op::AddCopy.name()),
            ("FLOTILLA_FAILPOINT_PAUSE_MS", "5000"),
        ],
    );
    // Memory: two databases each of 60% of the machine's memory; a third node cannot take a
    // second one (node memory is what each node reports: here all share one machine).
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    let big = format!("{}mb", total_kb * 6 / 10 / 1024);
    create(&cluster, "big", "12160", &big, &["--replication"]);
    let big2 = create(&cluster, "big2", "12161", &big, &["--replication"]);
    let (_, _, holders) = primary_and_holders(&cluster, 1);
    assert_eq!(holders, [1, 2], "big on nodes 1 and 2");
    let before = snapshot(&cluster, 2);
    refused(
        &cluster.flotilla_at(2, &["node", "remove", "1"]),
        &[
            "insufficient_memory",
            "shard 1 of database 1",
            "node 3 has",
            "flotilla db set 1 --memory",
        ],
    );
    assert_eq!(snapshot(&cluster, 2), before, "a refusal changes nothing");
    refused(
        &cluster.flotilla_at(2, &["shard", "migrate", "1", "--to-node", "2"]),
        &[
            "anti_affinity",
            "node(s) 2 already hold a copy",
            "flotilla cluster join",
        ],
    );
    assert_eq!(snapshot(&cluster, 2), before, "a refusal changes nothing");
    assert_success(
        &cluster.flotilla(&["db", "delete", &big2.to_string()]),
        "db delete",
    );

    // Another action on an affected database or node.
    let small = create(&cluster, "small", "12162", "100mb", &["--replication"]);
    let (moving, from, holders) = primary_and_holders(&cluster, small);
    let target = (1..=3).find(|n| !holders.contains(n)).unwrap();
    assert_success(
        &cluster.flotilla(&[
            "shard",
            "migrate",
            &moving.to_string(),
            "--to-node",
            &target.to_string(),
            "--no-wait",
        ]),
        "shard migrate",
    );
    let before = snapshot(&cluster, 2);
    refused(
        &cluster.flotilla_at(2, &["node", "remove", &target.to_string()]),
        &[
            "action_running",
            "SMMigrateShard",
            &format!("node {target}"),
            "flotilla action wait",
        ],
    );
    refused(
        &cluster.flotilla_at(2, &["node", "remove", &from.to_string()]),
        &["action_running", "SMMigrateShard", "flotilla action cancel"],
    );
    refused(
        &cluster.flotilla_at(2, &["db", "upgrade", "small", "--force-restart"]),
        &["SMMigrateShard", "flotilla action wait"],
    );
    assert_eq!(snapshot(&cluster, 2), before, "a refusal changes nothing");
    let migrate = before.2.to_string();
    assert_success(
        &cluster.flotilla(&["action", "wait", &migrate]),
        "the migration completes",
    );

    // Quorum: with node 3 down, removing node 2 would leave one voter up of two.
    cluster.kill9(3);
    let down = poll_until(Duration::from_secs(20), || {
        cluster.status_json(1)["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["uid"] == 3 && n["status"] == "down")
    });
    assert!(down, "node 3 is seen down");
    let before = snapshot(&cluster, 1);
    refused(
        &cluster.flotilla(&["node", "remove", "2"]),
        &[
            "quorum_lost",
            "removing node 2 would lose quorum",
            "bring node(s) 3 back up",
        ],
    );
    assert_eq!(snapshot(&cluster, 1), before, "a refusal changes nothing");
}

/// The node removal's operations in plan order, each once.
fn removal_ops() -> Vec<&'static str> {
    std::iter::once(Op::DemoteNode)
        .chain(MIGRATION_OPS)
        .chain(std::iter::once(Op::LeaveCluster))
        .map(Op::name)
        .collect()
}

/// For each operation of a node removal: a 3-node cluster on its own subnet whose daemons
/// pause at that step, a replicated database whose primary shard is on the primary node, the
/// primary node removed; the daemon of the node that is the primary node while the action is
/// at that step is killed -9 and restarted. The removal must complete: the node gone, its
/// shards elsewhere and active, and the load clean. The load runs from the kill on (which node
/// drives a step is known only then), through a node that is neither killed nor removed:
/// killing the daemon a client is connected to closes its connection, in any system.
#[test]
fn a_node_removal_resumes_after_a_kill_9_of_the_primary_node_at_every_step() {
    for (i, step) in removal_ops().into_iter().enumerate() {
        let subnet = 117 + i as u8;
        let cluster = DevCluster::up_with_env(
            &bin(),
            subnet,
            3,
            &[
                ("FLOTILLA_FAILPOINT_PAUSE_STEP", step),
                ("FLOTILLA_FAILPOINT_PAUSE_MS", "2500"),
            ],
        );
        let tough = create(&cluster, "tough", "12165", "100mb", &["--replication"]);
        // The node that holds the primary shard is made the primary node, and removed.
        let (_, leaving, _) = primary_and_holders(&cluster, tough);
        let promote = cluster.flotilla(&["cluster", "promote", &leaving.to_string()]);
        assert_success(&promote, "cluster promote");
        let asker = (1..=3u64).find(|n| *n != leaving).unwrap() as u8;
        let leaving_arg = leaving.to_string();
        let started = cluster.flotilla_at(asker, &["node", "remove", &leaving_arg, "--no-wait"]);
        assert_success(&started, "node remove");
        let action =
            |c: &DevCluster| -> Value { c.json(asker, &["action", "show", "1", "--json"]) };
        let reached = poll_until(Duration::from_secs(60), || {
            action(&cluster)["pending_ops"]
                .as_str()
                .unwrap_or("")
                .starts_with(step)
        });
        assert!(
            reached,
            "the removal reached step {step}: {}",
            action(&cluster)
        );
        let driver = primary_node(&cluster, asker);
        let client_node = (1..=3u64).find(|n| *n != leaving && *n != driver).unwrap() as u8;
        cluster.kill9(driver as u8);
        // The resumed step pauses again on the new primary node: the load covers it.
        let rt = runtime();
        let load = start_load(&rt, format!("{}:12165", cluster.addr(client_node)));
        cluster.dev_up();
        let done = poll_until(Duration::from_secs(120), || {
            action(&cluster)["status"] != "running"
        });
        let shown = action(&cluster);
        assert!(
            done && shown["status"] == "completed",
            "killed at {step}: {shown}"
        );
        let nodes: Vec<u64> = cluster.status_json(client_node)["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["uid"].as_u64().unwrap())
            .collect();
        assert!(
            !nodes.contains(&leaving) && nodes.len() == 2,
            "node {leaving} left: {nodes:?}"
        );
        assert!(
            poll_until(Duration::from_secs(30), || all_active(
                &cluster,
                client_node
            )),
            "killed at {step}: every shard active"
        );
        assert!(!placement(&cluster, client_node)
            .iter()
            .any(|s| s.2 == leaving));
        eprintln!("kill -9 of the primary node {driver} at {step} of node {leaving}'s removal: resumed and completed");
        stop_load(&rt, load);
    }
}
