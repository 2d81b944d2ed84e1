//! Prerequisite and port checks (issue 10): `check ports` names another program holding a
//! port a node needs; `upgrade check` refuses for each reason, naming the object and the fix,
//! and an upgrade refused by it changes nothing.
//!
//! Subnets 127.0.105-107.x.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_testkit::{assert_success, flotilla_bin, poll_until, DevCluster, Packages};

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

fn packages() -> &'static Packages {
    Packages::shared(&bin())
}

#[test]
fn check_ports_names_the_program_that_holds_a_needed_port() {
    let cluster = DevCluster::up(&bin(), 105, 2);
    // This test process takes node 2's endpoint port before the database exists.
    let squatter = TcpListener::bind((cluster.addr(2), 12105)).expect("bind the port first");
    let created = cluster.flotilla(&[
        "db", "create", "--name", "squat", "--port", "12105", "--memory", "50mb", "--shards", "1",
    ]);
    assert_success(&created, "db create");
    let output = cluster.flotilla(&["check", "ports", "--node", "2", "--json"]);
    assert!(!output.status.success(), "a taken port fails the check");
    let ports: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let endpoint = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 12105)
        .expect("the database endpoint is listed");
    assert_eq!(endpoint["state"], "taken", "{endpoint}");
    assert_eq!(
        endpoint["pid"],
        std::process::id(),
        "names the holder's pid: {endpoint}"
    );
    assert!(
        endpoint["program"].as_str().is_some_and(|p| !p.is_empty()),
        "{endpoint}"
    );
    let rest = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 8080)
        .unwrap();
    assert_eq!(rest["state"], "flotilla", "{rest}");
    let text = cluster.flotilla(&["check", "ports", "--node", "2"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("TAKEN by"), "{text}");
    drop(squatter);
    let check = cluster.flotilla(&["check", "--node", "1"]);
    assert_success(&check, "flotilla check on a healthy node");
}

/// `upgrade check --json` against node 1: the blockers it names.
fn refusals(cluster: &DevCluster, package: &std::path::Path) -> Vec<serde_json::Value> {
    let output = cluster.flotilla(&[
        "upgrade",
        "check",
        "--package",
        &package.to_string_lossy(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(&output.stderr)));
    let refusals = report["refusals"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        output.status.success(),
        refusals.is_empty(),
        "the exit code says whether it may"
    );
    refusals
}

fn only(refusals: &[serde_json::Value], blocker: &str) -> serde_json::Value {
    let found: Vec<_> = refusals
        .iter()
        .filter(|r| r["blocker"] == blocker)
        .collect();
    assert_eq!(found.len(), 1, "one {blocker} refusal in {refusals:#?}");
    found[0].clone()
}

#[test]
fn upgrade_check_refuses_each_blocker_naming_the_fix_and_an_upgrade_it_refuses_changes_nothing() {
    let ok = packages().current("0.2.1", &[]);
    let no_path = packages().current("0.2.3", &["--upgrade-from", ">=0.3.0"]);
    let newest_only = packages().current(
        "0.2.4",
        &["--engine", "valkey-9.1", "--default-engine", "valkey-9.1"],
    );
    let env = [
        ("FLOTILLA_FAILPOINT_PAUSE_STEP", "sync_replica"),
        ("FLOTILLA_FAILPOINT_PAUSE_MS", "15000"),
    ];
    let cluster = DevCluster::up_with_env(&bin(), 106, 3, &env);
    cluster.create_db(&[
        "--name",
        "gate",
        "--port",
        "12106",
        "--memory",
        "50mb",
        "--shards",
        "1",
        "--replication",
        "--redis-version",
        "valkey-8.1",
    ]);
    assert!(
        refusals(&cluster, &ok).is_empty(),
        "a healthy cluster may move"
    );

    let paths = refusals(&cluster, &no_path);
    assert_eq!(paths.len(), 3, "one per node: {paths:#?}");
    for (n, path) in paths.iter().enumerate() {
        assert_eq!(path["blocker"], "upgrade_path");
        assert_eq!(
            path["object"],
            format!("node:{} ({})", n + 1, cluster.addr(n as u8 + 1))
        );
        assert!(
            path["reason"].as_str().unwrap().contains(">=0.3.0"),
            "{path}"
        );
    }
    let before = cluster.status_json(1);
    let refused = cluster.flotilla(&[
        "upgrade",
        "node",
        "2",
        "--package",
        &no_path.to_string_lossy(),
        "--yes",
    ]);
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("[upgrade_path]") && error.contains("--force"),
        "{error}"
    );
    assert_eq!(
        cluster.status_json(1)["nodes"],
        before["nodes"],
        "a refused upgrade changes nothing"
    );
    assert!(
        !cluster.data_dir(2).join("upgrade.json").exists(),
        "nothing was started on node 2"
    );

    let engine = only(&refusals(&cluster, &newest_only), "engine_unsupported");
    assert_eq!(engine["object"], "db:1 'gate'");
    assert!(
        engine["fix"]
            .as_str()
            .unwrap()
            .contains("flotilla db upgrade gate --redis-version valkey-9.1"),
        "{engine}"
    );

    // An action running: a database upgrade held at its sync step.
    let upgrade = cluster
        .command_at(
            1,
            &["db", "upgrade", "gate", "--redis-version", "valkey-9.1"],
        )
        .spawn()
        .expect("db upgrade");
    let mut action = serde_json::Value::Null;
    assert!(poll_until(Duration::from_secs(20), || {
        action = refusals(&cluster, &ok)
            .into_iter()
            .find(|r| r["blocker"] == "action_running")
            .unwrap_or_default();
        !action.is_null()
    }));
    assert!(
        action["fix"]
            .as_str()
            .unwrap()
            .contains("flotilla action wait"),
        "{action}"
    );
    let mut upgrade = upgrade;
    assert!(
        upgrade.wait().unwrap().success(),
        "the held upgrade finishes"
    );
    assert!(poll_until(Duration::from_secs(30), || refusals(
        &cluster, &ok
    )
    .is_empty()));

    // A shard that does not answer: its engine stopped (SIGSTOP), then resumed.
    let engine_pid = |n: u8| -> Option<i32> {
        std::fs::read_dir(cluster.data_dir(n).join("shards"))
            .ok()?
            .flatten()
            .find_map(|shard| std::fs::read_to_string(shard.path().join("engine.pid")).ok())?
            .trim()
            .parse()
            .ok()
    };
    let (node, pid) = (1..=3)
        .find_map(|n| engine_pid(n).map(|pid| (n, pid)))
        .expect("some node runs a shard");
    let engine = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(engine, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut shard = serde_json::Value::Null;
    let seen = poll_until(Duration::from_secs(20), || {
        shard = refusals(&cluster, &ok)
            .into_iter()
            .find(|r| r["blocker"] == "shard_unhealthy")
            .unwrap_or_default();
        !shard.is_null()
    });
    nix::sys::signal::kill(engine, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(seen, "a stopped engine makes its shard unhealthy");
    let on = format!("of db:1 'gate' on node:{node}");
    assert!(shard["object"].as_str().unwrap().contains(&on), "{shard}");
    assert!(poll_until(Duration::from_secs(30), || refusals(
        &cluster, &ok
    )
    .is_empty()));

    // A node down.
    cluster.kill9(3);
    let mut down = serde_json::Value::Null;
    assert!(poll_until(Duration::from_secs(20), || {
        down = refusals(&cluster, &ok)
            .into_iter()
            .find(|r| r["blocker"] == "node_down")
            .unwrap_or_default();
        !down.is_null()
    }));
    assert_eq!(down["object"], format!("node:3 ({})", cluster.addr(3)));
    assert!(
        down["fix"]
            .as_str()
            .unwrap()
            .contains("flotilla node start"),
        "{down}"
    );
}

#[test]
fn upgrade_check_refuses_a_cluster_that_would_lose_its_quorum() {
    let ok = packages().current("0.2.1", &[]);
    let cluster = DevCluster::up(&bin(), 107, 1);
    let quorum = only(&refusals(&cluster, &ok), "quorum");
    assert!(
        quorum["fix"].as_str().unwrap().contains("--force quorum"),
        "{quorum}"
    );
    let forced = cluster.flotilla(&["upgrade", "check", "--package", &ok.to_string_lossy()]);
    assert!(!forced.status.success());
}
