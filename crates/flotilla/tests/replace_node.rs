//! Replacing a node (issue 11): a freshly installed machine joins with `--replace-node UID` and
//! takes the place and the uid of a node that is gone; the shards assigned to that uid are
//! created again on it and sync from their primaries, under load, with no client error and no
//! lost write. Replacing a node that still runs is refused and changes nothing.
//!
//! Subnet 127.0.108.x.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_testkit::{
    assert_success, flotilla_bin, load_runtime, poll_until, runtime, start_load, stop_load_clean,
    BareNode, DevCluster, PASSWORD, USER,
};

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

/// The uids of the primary shards on node `node_uid`, as node 1 sees them.
fn primaries_on(cluster: &DevCluster, node_uid: u64) -> Vec<u64> {
    cluster
        .shards_at(1)
        .iter()
        .filter(|s| s["node_uid"] == node_uid && s["role"] == "master")
        .filter_map(|s| s["uid"].as_u64())
        .collect()
}

/// Whether every replica shard on node `node_uid` runs and has caught up with its primary.
fn replicas_caught_up(cluster: &DevCluster, node_uid: u64) -> bool {
    let shards = cluster.shards_at(1);
    let on_node: Vec<_> = shards
        .iter()
        .filter(|s| s["node_uid"] == node_uid)
        .collect();
    !on_node.is_empty()
        && on_node.iter().all(|replica| {
            let primary = shards.iter().find(|p| {
                p["bdb_uid"] == replica["bdb_uid"]
                    && p["assigned_slots"] == replica["assigned_slots"]
                    && p["role"] == "master"
            });
            replica["role"] == "slave"
                && replica["status"] == "active"
                && primary.is_some_and(|p| p["offset"] == replica["offset"])
        })
}

#[test]
fn a_fresh_machine_takes_the_place_and_uid_of_a_node_that_is_gone() {
    let cluster = DevCluster::up(&bin(), 108, 3);
    cluster.create_replicated_db("kept", 12108, "valkey-8.1");
    let rt = load_runtime();
    let load = start_load(&rt, format!("{}:12108", cluster.addr(1)));

    // The primaries leave node 3 first (planned switchovers: clients see nothing).
    for uid in primaries_on(&cluster, 3) {
        let moved = cluster.flotilla(&["shard", "failover", &uid.to_string()]);
        assert_success(&moved, "shard failover");
    }
    assert!(
        primaries_on(&cluster, 3).is_empty(),
        "no primary left on node 3"
    );

    // Node 3's machine is gone: its daemon and engines die, its disk with them.
    cluster.lose_machine(3);

    let replacement = BareNode::start(&bin(), Ipv4Addr::new(127, 0, 108, 14));
    let client = replacement.client(Some(USER), Some(PASSWORD));
    let seeds = vec![cluster.addr(1).to_string()];
    let rt_api = runtime();

    // Replacing a node that runs is refused, naming it, and changes nothing.
    let refused = rt_api.block_on(client.join_cluster_replacing(&seeds, USER, PASSWORD, Some(2)));
    let error = refused
        .expect_err("replacing a running node is refused")
        .to_string();
    assert!(
        error.contains("node 2 (127.0.108.12) is running") && error.contains("stop its daemon"),
        "the refusal names the node and the fix: {error}"
    );
    assert!(
        rt_api.block_on(client.health()).unwrap().node_uid.is_none(),
        "the refused machine did not join"
    );

    let joined = rt_api
        .block_on(client.join_cluster_replacing(&seeds, USER, PASSWORD, Some(3)))
        .expect("the replacement joins");
    assert_eq!(
        joined.node_uid, 3,
        "the replacement takes the uid of the node it replaces"
    );
    let status = cluster.status_json(1);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "the same number of nodes: {status:#}");
    let node3 = nodes.iter().find(|n| n["uid"] == 3).unwrap();
    assert_eq!(node3["addr"], "127.0.108.14", "{node3:#}");

    // Its shards come back on the new machine and sync from their primaries.
    assert!(
        poll_until(Duration::from_secs(60), || cluster.db_status(1) == "active"),
        "the database is active again"
    );
    stop_load_clean(&rt, load);
    assert!(
        poll_until(Duration::from_secs(30), || replicas_caught_up(&cluster, 3)),
        "node 3's replicas run on the new machine and caught up: {:#?}",
        cluster.shards_at(1)
    );
    assert!(
        !flotilla_engine::engines_under(replacement.data_dir()).is_empty(),
        "the engines run on the replacement"
    );
}
