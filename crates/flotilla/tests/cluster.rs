//! The cluster foundation against real daemons: formation, primary node failover, full restart,
//! bootstrap refusals, basic auth, and per-node address binding.
//!
//! Each test uses its own loopback subnet (127.0.S.x) so tests never collide.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use flotilla_testkit::{
    assert_success, flotilla_bin, poll_until, runtime, BareNode, DevCluster, PASSWORD, USER,
};
use serde_json::Value;

fn bin() -> std::path::PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

fn nodes(status: &Value) -> &Vec<Value> {
    status["nodes"].as_array().expect("status lists nodes")
}

fn primary_nodes(status: &Value) -> Vec<u64> {
    nodes(status)
        .iter()
        .filter(|n| n["role"] == "primary")
        .map(|n| n["uid"].as_u64().unwrap())
        .collect()
}

#[test]
fn three_nodes_form_a_cluster_with_one_primary() {
    let started = Instant::now();
    let cluster = DevCluster::up(&bin(), 21, 3);
    eprintln!("formation of 3 nodes took {:?}", started.elapsed());

    for n in cluster.node_numbers() {
        let status = cluster.status_json(n);
        let listed = nodes(&status);
        assert_eq!(listed.len(), 3, "node {n} lists 3 nodes: {status}");
        assert_eq!(
            primary_nodes(&status).len(),
            1,
            "exactly one primary node: {status}"
        );
        for node in listed {
            assert_eq!(node["status"], "up", "every node is up: {status}");
            assert_eq!(node["software_version"], env!("CARGO_PKG_VERSION"));
            assert!(!node["os"].as_str().unwrap().is_empty());
        }
        let addrs: Vec<&str> = listed.iter().map(|n| n["addr"].as_str().unwrap()).collect();
        assert_eq!(addrs, ["127.0.21.11", "127.0.21.12", "127.0.21.13"]);
    }
    let rt = runtime();
    let nodes_status = rt.block_on(cluster.client(2).nodes_status()).unwrap();
    let listed_as_master = nodes_status.values().filter(|e| e.role == "master").count();
    assert_eq!(
        listed_as_master, 1,
        "/v1/nodes/status names one primary node (role master): {nodes_status:?}"
    );
}

#[test]
fn each_node_serves_only_its_own_address() {
    let cluster = DevCluster::up(&bin(), 22, 2);
    let rt = runtime();
    for n in cluster.node_numbers() {
        let health = rt.block_on(cluster.client(n).health()).unwrap();
        assert_eq!(
            health.node_uid,
            Some(n as u64),
            "{} is served by node {n}",
            cluster.url(n)
        );
    }
    // Nothing listens on the address of a third node: node 1 did not bind a wildcard.
    let other = flotilla_client::Client::new("http://127.0.22.13:8080", None, None);
    assert!(
        rt.block_on(other.health()).is_err(),
        "127.0.22.13:8080 must not be served"
    );
    assert!(std::net::TcpStream::connect((Ipv4Addr::new(127, 0, 22, 13), 3333)).is_err());
    assert!(std::net::TcpStream::connect((Ipv4Addr::new(127, 0, 22, 1), 8080)).is_err());
}

#[test]
fn killed_primary_is_replaced_and_changes_reach_every_node() {
    let cluster = DevCluster::up(&bin(), 23, 3);
    let old = primary_nodes(&cluster.status_json(1))[0] as u8;
    let survivors: Vec<u8> = cluster.node_numbers().filter(|n| *n != old).collect();

    let killed_at = Instant::now();
    cluster.kill9(old);
    let mut new_primary_node = 0;
    let elected = poll_until(Duration::from_secs(30), || {
        let output = cluster.flotilla_at(survivors[0], &["status", "--json"]);
        let Ok(status) = serde_json::from_slice::<Value>(&output.stdout) else {
            return false;
        };
        match status["cluster"]["master_node"].as_u64() {
            Some(p) if p != old as u64 => {
                new_primary_node = p;
                true
            }
            _ => false,
        }
    });
    assert!(
        elected,
        "no new primary node within 30 s after kill -9 of node {old}"
    );
    eprintln!(
        "new primary node {new_primary_node} elected {:?} after kill -9 of node {old}",
        killed_at.elapsed()
    );

    let renamed = cluster.flotilla_at(
        survivors[1],
        &["cluster", "set", "--name", "after-failover"],
    );
    assert_success(&renamed, "cluster set --name on a surviving node");
    for n in &survivors {
        let seen = poll_until(Duration::from_secs(10), || {
            cluster.status_json(*n)["cluster"]["name"] == "after-failover"
        });
        assert!(seen, "node {n} sees the change made after the failover");
    }
    let down = poll_until(Duration::from_secs(10), || {
        nodes(&cluster.status_json(survivors[0]))
            .iter()
            .any(|n| n["uid"] == old as u64 && n["status"] == "down")
    });
    assert!(down, "the killed node is reported down");

    cluster.dev_up();
    let caught_up = poll_until(Duration::from_secs(20), || {
        let status = cluster.status_json(old);
        status["cluster"]["name"] == "after-failover"
            && nodes(&status).iter().all(|n| n["status"] == "up")
    });
    assert!(
        caught_up,
        "the restarted node {old} catches up and every node is up"
    );
}

#[test]
fn a_fully_restarted_cluster_keeps_uids_and_settings() {
    let cluster = DevCluster::up(&bin(), 24, 3);
    assert_success(
        &cluster.flotilla(&["cluster", "set", "--name", "kept.local"]),
        "cluster set",
    );
    let before = cluster.status_json(1);

    cluster.dev_down();
    for n in cluster.node_numbers() {
        assert!(
            cluster.daemon_pid(n).is_none(),
            "node {n}'s daemon stopped and removed its pidfile"
        );
    }
    let restarted = Instant::now();
    cluster.dev_up();
    eprintln!("full restart of 3 nodes took {:?}", restarted.elapsed());

    let after = cluster.status_json(2);
    assert_eq!(after["cluster"]["name"], "kept.local");
    assert_eq!(
        after["cluster"]["created_time"],
        before["cluster"]["created_time"]
    );
    let uid_addr = |s: &Value| -> Vec<(u64, String)> {
        nodes(s)
            .iter()
            .map(|n| {
                (
                    n["uid"].as_u64().unwrap(),
                    n["addr"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        uid_addr(&after),
        uid_addr(&before),
        "same uids on the same addresses"
    );
}

#[test]
fn bootstrap_refusals_name_the_problem_and_change_nothing() {
    let cluster = DevCluster::up(&bin(), 25, 1);
    let joiner = BareNode::start(&bin(), Ipv4Addr::new(127, 0, 25, 12));
    let rt = runtime();
    let anonymous = joiner.client(None, None);
    let seeds = vec!["127.0.25.11".to_string()];

    // Wrong password: 401 with a JSON error, and the joiner stays outside any cluster.
    let err = rt
        .block_on(anonymous.join_cluster(&seeds, USER, "wrong"))
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401), "{err}");
    assert!(err.to_string().contains("unauthorized"), "{err}");
    assert_eq!(
        rt.block_on(anonymous.health()).unwrap().node_uid,
        None,
        "nothing half-done"
    );
    assert_eq!(
        rt.block_on(cluster.client(1).nodes()).unwrap().len(),
        1,
        "no node was added"
    );

    // Create on a node that already belongs to a cluster: 409.
    let err = rt
        .block_on(cluster.client(1).create_cluster("again", USER, PASSWORD))
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409), "{err}");

    // Malformed JSON and missing fields (with the node's bootstrap token): 400 naming the field.
    flotilla_testkit::install_crypto_provider();
    let http = reqwest::Client::new();
    let token =
        flotilla_client::read_bootstrap_token(joiner.data_dir()).expect("a fresh node's token");
    let post = |path: &str, body: &str| {
        let response = rt
            .block_on(
                http.post(format!("http://127.0.25.12:8080{path}"))
                    .header("content-type", "application/json")
                    .header(flotilla_model::rest::BOOTSTRAP_TOKEN_HEADER, &token)
                    .body(body.to_string())
                    .send(),
            )
            .unwrap();
        let status = response.status().as_u16();
        let json: Value = rt.block_on(response.json()).unwrap();
        (status, json)
    };
    let (status, body) = post("/v1/bootstrap/join_cluster", "{not json");
    assert_eq!(status, 400);
    assert_eq!(body["error_code"], "invalid_schema", "{body}");
    let (status, body) = post(
        "/v1/bootstrap/join_cluster",
        r#"{"cluster":{"nodes":["127.0.25.11"]},"credentials":{"username":"admin"}}"#,
    );
    assert_eq!(status, 400);
    assert!(
        body["description"].as_str().unwrap().contains("password"),
        "{body}"
    );
    let (status, body) = post(
        "/v1/bootstrap/create_cluster",
        r#"{"cluster":{},"credentials":{"username":"a","password":"b"}}"#,
    );
    assert_eq!(status, 400);
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("cluster.name"),
        "{body}"
    );
    let (status, body) = post(
        "/v1/bootstrap/join_cluster",
        r#"{"cluster":{"nodes":["not-an-ip"]},"credentials":{"username":"a","password":"b"}}"#,
    );
    assert_eq!(status, 400);
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("cluster.nodes"),
        "{body}"
    );
    assert_eq!(
        rt.block_on(anonymous.health()).unwrap().node_uid,
        None,
        "still nothing half-done"
    );

    // The right password joins.
    let joined = rt
        .block_on(anonymous.join_cluster(&seeds, USER, PASSWORD))
        .unwrap();
    assert_eq!(joined.node_uid, 2);
    assert_eq!(rt.block_on(cluster.client(1).nodes()).unwrap().len(), 2);
}

#[test]
fn every_endpoint_but_health_needs_the_operator_credentials() {
    let cluster = DevCluster::up(&bin(), 26, 1);
    let rt = runtime();
    let url = cluster.url(1);
    for (user, password) in [
        (None, None),
        (Some(USER), Some("wrong")),
        (Some("nobody"), Some(PASSWORD)),
    ] {
        let client =
            flotilla_client::Client::new(&url, user.map(String::from), password.map(String::from));
        for result in [
            rt.block_on(client.nodes()).map(|_| ()),
            rt.block_on(client.cluster()).map(|_| ()),
        ] {
            let err = result.unwrap_err();
            assert_eq!(
                err.status().map(|s| s.as_u16()),
                Some(401),
                "{user:?}: {err}"
            );
        }
        assert!(
            rt.block_on(client.health()).is_ok(),
            "health needs no credentials"
        );
    }
    assert!(rt.block_on(cluster.client(1).nodes()).is_ok());
    let err = rt
        .block_on(cluster.client(1).update_cluster(&Default::default()))
        .unwrap_err();
    assert_eq!(
        err.status().map(|s| s.as_u16()),
        Some(400),
        "an empty settings change is refused: {err}"
    );
}

#[test]
fn a_node_that_missed_more_than_the_kept_log_catches_up_from_a_snapshot() {
    let cluster = DevCluster::up(&bin(), 27, 3);
    let lagging = 3;
    assert_ne!(
        primary_nodes(&cluster.status_json(1))[0],
        lagging as u64,
        "node 1 created the cluster and leads"
    );
    cluster.kill9(lagging);

    // More changes than one snapshot interval plus the log kept after it (500 + 500), so the
    // primary node purges entries the lagging node never saw and must send it a snapshot.
    let rt = runtime();
    let client = cluster.client(1);
    rt.block_on(async {
        for i in 0..1100 {
            let update = flotilla_model::rest::ClusterUpdate {
                name: Some(format!("name-{i}")),
            };
            client
                .update_cluster(&update)
                .await
                .expect("cluster update");
        }
    });

    cluster.dev_up();
    let caught_up = poll_until(Duration::from_secs(30), || {
        cluster.status_json(lagging)["cluster"]["name"] == "name-1099"
    });
    assert!(
        caught_up,
        "node {lagging} installed the snapshot and reached the last change"
    );
    let log = std::fs::read_to_string(cluster.data_dir(lagging).join("flotilla.log")).unwrap();
    assert!(!log.contains("panicked"), "no panic on the lagging node");
}

/// A database created through a secondary node whose forwarded proposal the primary node
/// commits and then loses the answer of (failpoint `FLOTILLA_FAILPOINT_LOSE_ANSWER`): the
/// create is reported as done, once, never proposed again and refused as a duplicate.
#[test]
fn a_forwarded_create_whose_answer_is_lost_is_reported_as_done() {
    let cluster = DevCluster::up_with_env(
        &bin(),
        67,
        2,
        &[("FLOTILLA_FAILPOINT_LOSE_ANSWER", "create_bdb")],
    );
    let primary_node = primary_nodes(&cluster.status_json(1))[0] as u8;
    let secondary = if primary_node == 1 { 2 } else { 1 };

    let output = cluster.flotilla_at(
        secondary,
        &[
            "db",
            "create",
            "--json",
            "--name",
            "lost",
            "--port",
            "12670",
            "--memory",
            "100mb",
            "--redis-version",
            "redis-7.0",
        ],
    );
    let log = |n: u8| std::fs::read_to_string(cluster.data_dir(n).join("flotilla.log")).unwrap();
    assert!(
        log(primary_node).contains("FLOTILLA_FAILPOINT_LOSE_ANSWER: the proposal was committed"),
        "the primary node lost the answer of the forwarded create"
    );
    assert_success(&output, "db create through the secondary node");
    let created: Value = serde_json::from_slice(&output.stdout).expect("db create prints JSON");
    assert_eq!(created["name"], "lost");
    assert!(
        log(secondary).contains("answer was lost but the state shows it applied"),
        "the secondary node found its create in the state"
    );

    let listed = cluster.json(primary_node, &["db", "list", "--json"]);
    let named: Vec<&Value> = listed
        .as_array()
        .expect("db list --json is an array")
        .iter()
        .filter(|b| b["name"] == "lost")
        .collect();
    assert_eq!(named.len(), 1, "one database, created once: {listed}");
    assert_eq!(named[0]["uid"], created["uid"]);
    // Its shard's engine is started and recorded before the cluster is dropped, so the drop
    // finds and stops it.
    let uid = created["uid"].as_u64().expect("the database has a uid");
    let active = poll_until(Duration::from_secs(60), || {
        cluster.db_status(uid) == "active"
    });
    assert!(
        active,
        "database {uid} became active: {}",
        cluster.db_status(uid)
    );
}
