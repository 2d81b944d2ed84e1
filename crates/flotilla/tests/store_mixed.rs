//! Snapshots between this release and the real release 0.1.0 (issue 11), both ways: a 0.1.0
//! primary node brings a node of this release back from far behind with its JSON chunks (3 MiB
//! each, more than the 2 MB a request could carry before), and a primary node of this release
//! brings a 0.1.0 node back with chunks that node accepts (it has no binary snapshot route).
//!
//! Subnet 127.0.112.x.

use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_model::rest::ClusterUpdate;
use flotilla_testkit::{flotilla_bin, poll_until, runtime, DevCluster, Packages};
use serde_json::Value;

fn bin() -> std::path::PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

fn primary_node(cluster: &DevCluster, asked: u8) -> u64 {
    let status = cluster.status_json(asked);
    let nodes = status["nodes"].as_array().expect("status lists nodes");
    let primary = nodes.iter().find(|n| n["role"] == "primary");
    primary.and_then(|n| n["uid"].as_u64()).unwrap_or(0)
}

/// More cluster renames through node `via` than one snapshot interval plus the log kept after
/// it (500 + 500): a node that missed them needs a snapshot. Returns the last name.
fn renames(cluster: &DevCluster, via: u8, tag: &str) -> String {
    let client = cluster.client(via);
    runtime().block_on(async {
        for i in 0..1100 {
            let update = ClusterUpdate {
                name: Some(format!("{tag}-{i}")),
            };
            client
                .update_cluster(&update)
                .await
                .expect("cluster update");
        }
    });
    format!("{tag}-1099")
}

fn caught_up(cluster: &DevCluster, n: u8, name: &str) -> bool {
    poll_until(Duration::from_secs(60), || {
        let output = cluster.flotilla_at(n, &["status", "--json"]);
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        status["cluster"]["name"] == name
    })
}

/// Starts node `n` of `cluster` on the binary under test, on its data dir (as an operator who
/// installed the new release on that machine would); the cluster stops it by pid on drop.
fn start_current(cluster: &DevCluster, n: u8) -> std::process::Child {
    let dir = cluster.data_dir(n);
    let log = std::fs::File::options()
        .append(true)
        .create(true)
        .open(dir.join("flotilla.log"))
        .expect("log file");
    Command::new(bin())
        .args([
            "node",
            "start",
            "--addr",
            &cluster.addr(n).to_string(),
            "--data-dir",
        ])
        .arg(&dir)
        // The cluster's CLI calls reach it where they reach the 0.1.0 nodes.
        .args(["--http-port", "8080"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("starting the daemon")
}

/// Asks node `n` to stand for election now (the route an in-place upgrade uses to move
/// primary-ship).
fn elect(cluster: &DevCluster, n: u8) {
    let identity: Value =
        serde_json::from_slice(&std::fs::read(cluster.data_dir(n).join("identity.json")).unwrap())
            .unwrap();
    let secret = identity["secret"].as_str().unwrap().to_string();
    let url = format!("http://{}:3333/internal/elect", cluster.addr(n));
    flotilla_testkit::install_crypto_provider();
    runtime().block_on(async {
        reqwest::Client::new()
            .post(url)
            .header("x-flotilla-secret", secret)
            .json(&())
            .send()
            .await
            .expect("elect answered");
    });
}

#[test]
fn snapshots_travel_both_ways_between_this_release_and_0_1_0() {
    let packages = Packages::new(&bin());
    let v010 = packages.release_0_1_0();
    let cluster = DevCluster::up_from_package(&bin(), 112, 3, &v010);

    // A 0.1.0 primary node and a node of this release that missed more than the kept log.
    cluster.kill9(3);
    let name = renames(&cluster, 1, "from-0-1-0");
    let mut node_3 = start_current(&cluster, 3);
    assert!(
        caught_up(&cluster, 3, &name),
        "node 3 (this release) installed the 0.1.0 primary node's snapshot"
    );

    // A primary node of this release and a 0.1.0 node that missed more than the kept log.
    elect(&cluster, 3);
    assert!(
        poll_until(Duration::from_secs(10), || primary_node(&cluster, 3) == 3),
        "node 3 became the primary node"
    );
    cluster.kill9(2);
    let name = renames(&cluster, 3, "to-0-1-0");
    cluster.dev_up();
    assert!(
        caught_up(&cluster, 2, &name),
        "node 2 (0.1.0) installed the snapshot of this release's primary node"
    );
    let log = std::fs::read_to_string(cluster.data_dir(3).join("flotilla.log")).unwrap();
    assert!(
        log.contains("sending JSON chunks"),
        "the primary node fell back to the chunks 0.1.0 takes"
    );
    for n in cluster.node_numbers() {
        assert!(caught_up(&cluster, n, &name), "node {n} has every change");
    }
    let _ = node_3.kill();
    let _ = node_3.wait();
}
