//! Active-Active databases (issue 15), the control side, against real clusters: `crdb create`
//! across two clusters makes both instances (one GUID, ids 1 and 2, each database marked as its
//! instance, both endpoints answering), `crdb list`/`show`/`delete`; bad input is refused naming
//! the flag; a create that fails on one cluster leaves nothing on the other; and the store
//! commands wait for cluster version 0.2.0.
//!
//! Subnets 127.0.237.x - 127.0.240.x (two clusters per test).

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use flotilla_testkit::{
    assert_success, endpoint_connection, flotilla_bin, poll_until, runtime, DevCluster, Packages,
};
use serde_json::Value;

/// The daemons' environment variable that arms failpoints (crates/store/src/failpoint.rs).
const FAILPOINTS: &str = "FLOTILLA_FAILPOINTS";
/// The daemons' environment variable that makes their software claim a newer CRDB protocol.
const PROTOCOL_ENV: &str = "FLOTILLA_TEST_CRDT_PROTOCOL_VERSION";

/// What `flotilla status --issues-only` of cluster `c` prints.
fn status_issues(c: &DevCluster) -> String {
    let output = c.flotilla(&["status", "--issues-only"]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `flotilla crdb create` run against cluster `a`, with one `--instance` per cluster.
fn crdb_create(a: &DevCluster, clusters: &[&DevCluster], name: &str, port: u16) -> Output {
    let port = port.to_string();
    let mut args = vec![
        "crdb", "create", "--name", name, "--port", &port, "--memory", "100mb",
    ];
    let urls: Vec<String> = clusters.iter().map(|c| c.url(1)).collect();
    for url in &urls {
        args.extend(["--instance", url.as_str()]);
    }
    a.flotilla(&args)
}

/// `GET /v1/crdbs` of cluster `c`.
fn crdbs(c: &DevCluster) -> Vec<Value> {
    let list = c.json(1, &["crdb", "list", "--json"]);
    list.as_array().cloned().expect("a list")
}

/// `GET /v1/bdbs` of cluster `c`.
fn bdbs(c: &DevCluster) -> Vec<Value> {
    let list = c.json(1, &["db", "list", "--json"]);
    list.as_array().cloned().expect("a list")
}

/// Waits (bounded) until `flotilla status --json` of `c` lists its CRDB links, every one in
/// sync with no ops left to apply.
fn wait_links_in_sync(c: &DevCluster) {
    let mut sources = Value::Null;
    let synced = poll_until(Duration::from_secs(30), || {
        sources = c.json(1, &["status", "--json"])["crdt_sources"].clone();
        sources.as_array().is_some_and(|all| {
            !all.is_empty()
                && all
                    .iter()
                    .all(|s| s["status"] == "in_sync" && s["ops_lag"] == 0)
        })
    });
    assert!(synced, "every link in sync: {sources:#}");
}

/// Starts node 1 of `c` again (after a failpoint's exit); returns once it answers.
fn restart(c: &DevCluster) {
    let mut daemon = c.start_daemon_with_env(1, &[]);
    assert!(
        poll_until(Duration::from_secs(60), || c
            .flotilla(&["status"])
            .status
            .success()),
        "node 1 back up"
    );
    // Stopped by the cluster's drop (by pidfile); this thread only keeps it from a zombie.
    std::thread::spawn(move || daemon.wait());
}

/// Waits (bounded) until every database of `c` is active; panics naming the one that is not.
fn all_active(c: &DevCluster) {
    let active = poll_until(Duration::from_secs(60), || {
        bdbs(c).iter().all(|b| b["status"] == "active")
    });
    assert!(active, "databases not active: {:#?}", bdbs(c));
}

/// Held by the tests on subnets 237 and 238 (one at a time).
static SUBNETS_237_238: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn crdb_create_across_two_clusters_makes_both_instances_and_delete_removes_every_one() {
    let _subnets = SUBNETS_237_238.lock().unwrap_or_else(|e| e.into_inner());
    // Cluster A's software speaks CRDB protocol 2 (as a newer release would), B's protocol 1.
    let a = DevCluster::up_with_env(&bin(), 237, 1, &[(PROTOCOL_ENV, "2")]);
    let b = DevCluster::up(&bin(), 238, 1);
    let started = Instant::now();
    let created = crdb_create(&a, &[&a, &b], "cache", 12237);
    assert_success(&created, "crdb create");
    eprintln!("crdb create across two clusters: {:?}", started.elapsed());

    // One GUID; cluster A is instance 1, B instance 2; each local database says so.
    let (on_a, on_b) = (crdbs(&a), crdbs(&b));
    assert_eq!((on_a.len(), on_b.len()), (1, 1), "{on_a:#?} {on_b:#?}");
    let guid = on_a[0]["guid"].as_str().unwrap().to_string();
    assert_eq!(on_b[0]["guid"], guid.as_str());
    for (cluster, crdb, id) in [(&a, &on_a[0], 1), (&b, &on_b[0], 2)] {
        assert_eq!(crdb["local_instance_id"], id);
        assert_eq!(
            crdb["protocol_version"], 1,
            "every instance starts on a protocol all of them speak"
        );
        assert_eq!(crdb["featureset_version"], 1);
        let ids: Vec<&Value> = crdb["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["id"])
            .collect();
        assert_eq!(ids, [1, 2]);
        assert!(
            !crdb.to_string().contains(flotilla_testkit::PASSWORD),
            "no password shown: {crdb}"
        );
        let dbs = bdbs(cluster);
        assert_eq!(dbs.len(), 1);
        assert_eq!(dbs[0]["name"], "cache");
        assert_eq!(dbs[0]["crdt_guid"], guid.as_str());
        assert_eq!(dbs[0]["crdt_replica_id"], id);
        assert_eq!(dbs[0]["crdt_protocol_version"], 1);
    }
    // Each instance's URLs are the HTTPS URLs of its cluster's nodes, its CA the cluster's.
    let peer = &on_a[0]["instances"][1]["cluster"];
    assert_eq!(peer["url"], format!("https://{}:9443", b.addr(1)));

    // Both endpoints answer.
    all_active(&a);
    all_active(&b);
    for cluster in [&a, &b] {
        let mut connection = endpoint_connection(cluster.addr(1), 12237);
        let pong: String = redis::cmd("PING").query(&mut connection).unwrap();
        assert_eq!(pong, "PONG");
    }

    // `crdb list` prints one line per instance; `crdb show` the versions.
    let list = a.flotilla(&["crdb", "list"]);
    assert_success(&list, "crdb list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.starts_with("CRDB-GUID"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with(&guid)).count(), 2);
    let show = b.flotilla(&["crdb", "show", "--crdb-guid", &guid]);
    assert_success(&show, "crdb show");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("protocol version:    1") && text.contains("feature set version: 1"),
        "{text}"
    );

    // Every instance answers with the same configuration.
    let health = b.json(1, &["crdb", "health", "--crdb-guid", &guid, "--json"]);
    assert_eq!(health["consistent"], true, "{health:#}");
    assert_eq!(health["configurations"].as_array().unwrap().len(), 2);

    // `crdb flush` empties every instance.
    for (cluster, key) in [(&a, "from-a"), (&b, "from-b")] {
        let mut connection = endpoint_connection(cluster.addr(1), 12237);
        let () = redis::cmd("SET")
            .arg(key)
            .arg("1")
            .query(&mut connection)
            .unwrap();
    }
    assert_success(
        &b.flotilla(&["crdb", "flush", "--crdb-guid", &guid]),
        "crdb flush",
    );
    for cluster in [&a, &b] {
        let mut connection = endpoint_connection(cluster.addr(1), 12237);
        let size: u64 = redis::cmd("DBSIZE").query(&mut connection).unwrap();
        assert_eq!(size, 0, "flushed");
    }
    // The syncers go on after the flush: once every link is in sync again (`status --json`),
    // nothing flushed came back from a peer, and a write after the flush reaches the peer.
    wait_links_in_sync(&a);
    wait_links_in_sync(&b);
    for cluster in [&a, &b] {
        let mut connection = endpoint_connection(cluster.addr(1), 12237);
        let size: u64 = redis::cmd("DBSIZE").query(&mut connection).unwrap();
        assert_eq!(size, 0, "nothing flushed came back once in sync");
    }
    let mut on_a = endpoint_connection(a.addr(1), 12237);
    let () = redis::cmd("SET")
        .arg("after-flush")
        .arg("1")
        .query(&mut on_a)
        .unwrap();
    let mut on_b = endpoint_connection(b.addr(1), 12237);
    let reached = poll_until(Duration::from_secs(20), || {
        redis::cmd("GET")
            .arg("after-flush")
            .query::<Option<String>>(&mut on_b)
            .unwrap()
            .is_some()
    });
    assert!(reached, "a write after the flush reaches the peer");
    let () = redis::cmd("DEL")
        .arg("after-flush")
        .query::<u64>(&mut on_a)
        .map(|_| ())
        .unwrap();

    // A's instance runs an older protocol than A speaks: `status` flags it.
    assert!(status_issues(&a).contains("OLD CRDB PROTOCOL VERSION 1"));
    assert!(!status_issues(&b).contains("OLD CRDB"));
    // Same protocol everywhere: the feature set may move (it is already the newest, 1).
    assert_success(
        &a.flotilla(&[
            "crdb",
            "update",
            "--crdb-guid",
            &guid,
            "--featureset-version",
            "true",
        ]),
        "crdb update --featureset-version",
    );
    // An engine upgrade keeping the protocol keeps it; one without raises it once done.
    let upgrade = |extra: &[&str]| {
        let mut args = vec![
            "db",
            "upgrade",
            "cache",
            "--force-restart",
            "--discard-data",
        ];
        args.extend_from_slice(extra);
        assert_success(&a.flotilla(&args), "db upgrade");
    };
    upgrade(&["--keep-crdt-protocol-version"]);
    assert_eq!(crdbs(&a)[0]["protocol_version"], 1);
    // The raise is a part of the upgrade action: A's only node dies (kill -9, by a failpoint)
    // before the `finalize` step, and the node that drives the action after the restart raises
    // the protocol (no watcher on the node that took the request, lost with it).
    a.kill9(1);
    let mut armed = a.start_daemon_with_env(1, &[(FAILPOINTS, "finalize=exit")]);
    assert!(
        poll_until(Duration::from_secs(60), || a
            .flotilla(&["status"])
            .status
            .success()),
        "A back up, armed to exit before finalize"
    );
    upgrade(&["--no-wait"]);
    let exited = poll_until(Duration::from_secs(60), || {
        armed.try_wait().expect("A's daemon").is_some()
    });
    assert!(exited, "A's node exits by the failpoint before finalize");
    restart(&a);
    let raised = poll_until(Duration::from_secs(20), || {
        crdbs(&a)[0]["protocol_version"] == 2
    });
    assert!(
        raised,
        "protocol raised after the upgrade: {:#?}",
        crdbs(&a)
    );
    assert!(!status_issues(&a).contains("OLD CRDB PROTOCOL VERSION"));
    // Mixed protocols: the feature set bump is refused, naming B's instance.
    let refused = a.flotilla(&[
        "crdb",
        "update",
        "--crdb-guid",
        &guid,
        "--featureset-version",
        "true",
    ]);
    let error = stderr(&refused);
    assert!(
        !refused.status.success()
            && error.contains(
                "instance 2 (cluster 'flotilla-238-11.local') runs CRDB protocol 1 (newest 2)"
            ),
        "{error}"
    );

    // A plain `db delete` of an instance is refused; `crdb delete` removes every instance.
    let refused = a.flotilla(&["db", "delete", "cache"]);
    assert!(
        !refused.status.success() && stderr(&refused).contains("crdb delete --crdb-guid"),
        "{}",
        stderr(&refused)
    );
    assert_success(
        &a.flotilla(&["crdb", "delete", "--crdb-guid", &guid]),
        "crdb delete",
    );
    for cluster in [&a, &b] {
        assert!(crdbs(cluster).is_empty() && bdbs(cluster).is_empty());
    }
}

/// This cluster's instance of a two-instance CRDB, as a coordinator asks for it.
fn local_request(port: u16) -> flotilla_model::rest::CrdbLocalCreate {
    serde_json::from_value(serde_json::json!({
        "guid": "2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a",
        "name": "cache",
        "instances": [
            {"id": 1, "cluster": {"name": "a", "urls": ["https://127.0.239.11:9443"], "ca_cert": "x", "username": "u", "password": "p"}},
            {"id": 2, "cluster": {"name": "b", "urls": ["https://127.0.240.11:9443"], "ca_cert": "x", "username": "u", "password": "p"}}
        ],
        "local_instance_id": 2,
        "default_db_config": {"port": port, "memory_size": 104857600}
    }))
    .unwrap()
}

/// Cluster B starts on release 0.1.0 and its node is upgraded to this build: until the cluster
/// version is finalized to 0.2.0 it makes no CRDB instance (the store command is gated) and a
/// coordinator cannot use it; then it takes part.
#[test]
fn bad_input_is_refused_naming_the_flag_and_a_failure_on_one_cluster_leaves_nothing_on_the_other() {
    let packages = Packages::shared(&bin());
    let (v010, (v020, _)) = (packages.release_0_1_0(), packages.current_pair());
    let a = DevCluster::up(&bin(), 239, 1);
    let b = DevCluster::up_from_package(&bin(), 240, 1, &v010);
    let upgraded = b.flotilla(&[
        "upgrade",
        "node",
        "1",
        "--package",
        &v020.to_string_lossy(),
        "--yes",
        "--force",
        "quorum",
        "--no-auto-finalize",
    ]);
    assert_success(&upgraded, "upgrade node 1 of cluster B");
    let rt = runtime();
    let refused = rt
        .block_on(b.client(1).create_local_crdb(&local_request(12240)))
        .unwrap_err();
    assert!(
        refused.to_string().contains("needs cluster version 0.2.0"),
        "{refused}"
    );
    let early = crdb_create(&a, &[&a, &b], "cache", 12239);
    assert!(
        !early.status.success() && stderr(&early).contains("cluster version 0.2.0"),
        "{}",
        stderr(&early)
    );
    for cluster in [&a, &b] {
        assert!(crdbs(cluster).is_empty() && bdbs(cluster).is_empty());
    }
    assert_success(&b.flotilla(&["upgrade", "finalize"]), "upgrade finalize");
    let has_ca = poll_until(Duration::from_secs(20), || {
        rt.block_on(b.client(1).cluster())
            .is_ok_and(|c| c.ca_fingerprint.is_some())
    });
    assert!(has_ca, "the finalized cluster makes its CA");
    // What a coordinator sends is checked field by field, naming the field; nothing is made.
    for (spoil, expected) in [
        (
            serde_json::json!({"guid": "not-a-guid"}),
            "guid: 'not-a-guid' is not a GUID",
        ),
        (
            serde_json::json!({"local_instance_id": 5}),
            "local_instance_id: 5 is not among the instances' ids (1, 2)",
        ),
        (
            serde_json::json!({"protocol_version": 9}),
            "protocol_version: 9 is newer than this cluster's software knows",
        ),
    ] {
        let mut request = serde_json::to_value(local_request(12240)).unwrap();
        for (key, value) in spoil.as_object().unwrap() {
            request[key] = value.clone();
        }
        let request = serde_json::from_value(request).unwrap();
        let refused = rt
            .block_on(b.client(1).create_local_crdb(&request))
            .unwrap_err();
        assert!(refused.to_string().contains(expected), "{refused}");
    }
    assert!(crdbs(&b).is_empty() && bdbs(&b).is_empty());

    let (url_a, url_b) = (a.url(1), b.url(1));
    for (args, expected) in [
        (
            vec!["--instance", url_a.as_str()],
            "--instance: a CRDB needs at least 2 clusters",
        ),
        (
            vec!["--instance", url_a.as_str(), "--instance", "ftp://x"],
            "instances[1].url: 'ftp://x' is not a REST URL",
        ),
        (
            vec!["--instance", url_a.as_str(), "--instance", url_a.as_str()],
            "is given twice",
        ),
        (
            vec![
                "--instance",
                url_a.as_str(),
                "--instance",
                "url=http://x,color=red",
            ],
            "unknown key 'color'",
        ),
    ] {
        let mut full = vec![
            "crdb", "create", "--name", "cache", "--port", "12239", "--memory", "100mb",
        ];
        full.extend(args);
        let output = a.flotilla(&full);
        assert!(
            !output.status.success() && stderr(&output).contains(expected),
            "{full:?}: {}",
            stderr(&output)
        );
    }

    // Port 12239 taken on cluster B's node by another process: B refuses, and the instance
    // already made on A is deleted again.
    let taken = std::net::TcpListener::bind((b.addr(1), 12239)).unwrap();
    let failed = crdb_create(&a, &[&a, &b], "cache", 12239);
    let error = stderr(&failed);
    assert!(
        !failed.status.success() && error.contains("port: 12239 is already in use"),
        "{error}"
    );
    assert!(!error.contains("left_behind"), "{error}");
    for cluster in [&a, &b] {
        assert!(crdbs(cluster).is_empty(), "{:#?}", crdbs(cluster));
        assert!(bdbs(cluster).is_empty(), "{:#?}", bdbs(cluster));
    }
    drop(taken);

    // The same request works once the port is free.
    assert_success(&crdb_create(&a, &[&a, &b], "cache", 12239), "crdb create");
    assert_eq!((crdbs(&a).len(), crdbs(&b).len()), (1, 1));
    let guid = crdbs(&a)[0]["guid"].as_str().unwrap().to_string();

    // B's instance removed with --force: A records it as removed, B keeps it until purged.
    assert_success(
        &a.flotilla(&[
            "crdb",
            "remove-instance",
            "--crdb-guid",
            &guid,
            "--instance-id",
            "2",
            "--force",
        ]),
        "crdb remove-instance --force",
    );
    let on_a = &crdbs(&a)[0];
    assert_eq!(on_a["instances"].as_array().unwrap().len(), 1);
    assert_eq!(on_a["ghost_instance_ids"], serde_json::json!([2]));
    assert_eq!(
        crdbs(&b).len(),
        1,
        "a forced removal leaves the removed side as it was"
    );
    let wrong = b.flotilla(&[
        "crdb",
        "purge-instance",
        "--crdb-guid",
        &guid,
        "--instance-id",
        "1",
    ]);
    assert!(
        !wrong.status.success()
            && stderr(&wrong).contains("--instance-id: this cluster's instance")
    );
    assert_success(
        &b.flotilla(&[
            "crdb",
            "purge-instance",
            "--crdb-guid",
            &guid,
            "--instance-id",
            "2",
        ]),
        "crdb purge-instance",
    );
    assert!(crdbs(&b).is_empty() && bdbs(&b).is_empty());

    // B joins again as a new instance (id 3: removed ids are never reused).
    assert_success(
        &a.flotilla(&[
            "crdb",
            "add-instance",
            "--crdb-guid",
            &guid,
            "--instance",
            &url_b,
        ]),
        "crdb add-instance",
    );
    let on_b = &crdbs(&b)[0];
    assert_eq!(on_b["local_instance_id"], 3);
    let ids = |crdb: &Value| -> Vec<u64> {
        crdb["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(on_b), [1, 3]);
    assert_eq!(ids(&crdbs(&a)[0]), [1, 3]);
    all_active(&b);
}

#[test]
fn a_sharded_replicated_crdb_spans_two_three_node_clusters() {
    let _subnets = SUBNETS_237_238.lock().unwrap_or_else(|e| e.into_inner());
    let a = DevCluster::up(&bin(), 237, 3);
    let b = DevCluster::up(&bin(), 238, 3);
    let started = Instant::now();
    let port = "12238";
    let mut args = vec![
        "crdb",
        "create",
        "--name",
        "orders",
        "--port",
        port,
        "--memory",
        "200mb",
        "--shards",
        "2",
        "--replication",
    ];
    let (url_a, url_b) = (a.url(2), b.url(3));
    args.extend(["--instance", url_a.as_str(), "--instance", url_b.as_str()]);
    args.push("--no-wait");
    let started_task = a.flotilla_at(2, &args);
    assert_success(&started_task, "crdb create --no-wait");
    let task_id = String::from_utf8_lossy(&started_task.stdout)
        .trim()
        .to_string();
    let finished = poll_until(Duration::from_secs(30), || {
        let status = a.flotilla_at(2, &["crdb", "task", "status", "--task-id", &task_id]);
        String::from_utf8_lossy(&status.stdout).contains("create Finished")
    });
    assert!(finished, "task {task_id} finished");
    all_active(&a);
    all_active(&b);
    eprintln!(
        "2-shard replicated CRDB on two 3-node clusters active after {:?}",
        started.elapsed()
    );
    let guid = crdbs(&a)[0]["guid"].as_str().unwrap().to_string();
    for (cluster, id) in [(&a, 1), (&b, 2)] {
        let crdb = &crdbs(cluster)[0];
        assert_eq!(
            (crdb["guid"].as_str(), &crdb["local_instance_id"]),
            (Some(guid.as_str()), &serde_json::json!(id))
        );
        // Every node of each cluster is named for the peers' syncers.
        let urls = crdb["instances"][if id == 1 { 1 } else { 0 }]["cluster"]["urls"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(urls, 3);
        assert_eq!(cluster.shards_at(1).len(), 4, "2 primaries and 2 replicas");
        for n in cluster.node_numbers() {
            let mut connection = endpoint_connection(cluster.addr(n), 12238);
            let pong: String = redis::cmd("PING").query(&mut connection).unwrap();
            assert_eq!(pong, "PONG");
        }
    }
    // Deleted from the other cluster: every instance goes.
    assert_success(
        &b.flotilla(&["crdb", "delete", "--crdb-guid", &guid]),
        "crdb delete",
    );
    for cluster in [&a, &b] {
        assert!(crdbs(cluster).is_empty() && bdbs(cluster).is_empty());
    }
}
