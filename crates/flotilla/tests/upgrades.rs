//! Database engine upgrades under load (issue: resumable actions and database upgrades):
//! every hop across engine families with zero client errors and zero lost acknowledged writes,
//! the refusals, and a kill -9 of the primary node's daemon at each step of the action.

use std::time::{Duration, Instant};

use flotilla_model::{Op, SlotRange, UpgradeShape};
use flotilla_testkit::{
    assert_success, flotilla_bin, load_runtime as runtime, poll_until, start_load,
    stop_load_clean as stop_load, DevCluster,
};

fn bin() -> std::path::PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

/// Runs `flotilla db upgrade` (which follows the action) and checks it completed.
fn upgrade(cluster: &DevCluster, node: u8, db: &str, version: &str, extra: &[&str]) -> Duration {
    let started = Instant::now();
    let mut args = vec!["db", "upgrade", db, "--redis-version", version];
    args.extend_from_slice(extra);
    let output = cluster.flotilla_at(node, &args);
    assert_success(&output, &format!("db upgrade to {version}"));
    started.elapsed()
}

/// Every shard of the cluster runs `version` (as the store says and as its engine reports).
fn all_on(cluster: &DevCluster, version: &str) -> bool {
    cluster
        .shards_at(1)
        .iter()
        .all(|s| s["redis_version"] == version && s["status"] == "active")
}

#[test]
fn a_replicated_database_climbs_every_engine_under_load() {
    let cluster = DevCluster::up(&bin(), 41, 3);
    cluster.create_db(&[
        "--name",
        "climb",
        "--port",
        "12100",
        "--memory",
        "200mb",
        "--shards",
        "2",
        "--replication",
        "--redis-version",
        "redis-6.2",
    ]);
    let issues = cluster.flotilla(&["status", "--issues-only"]);
    let text = String::from_utf8_lossy(&issues.stdout);
    assert!(
        text.contains("OLD REDIS VERSION redis-6.2"),
        "status flags the old engine: {text}"
    );
    let rt = runtime();
    let load = start_load(&rt, format!("{}:12100", cluster.addr(2)));

    let hops = [
        ("redis-7.0", vec![]),
        ("valkey-8.1", vec!["--preserve-roles"]),
        ("valkey-9.1", vec!["--parallel-shards", "2"]),
    ];
    for (version, extra) in hops {
        let took = upgrade(&cluster, 3, "climb", version, &extra);
        eprintln!("upgrade to {version} {extra:?} took {took:?}");
        assert!(
            poll_until(Duration::from_secs(20), || all_on(&cluster, version)),
            "every shard runs {version}"
        );
    }
    let db = cluster.json(1, &["db", "show", "climb", "--json"]);
    assert_eq!(db["redis_version"], "valkey-9.1");
    let issues = cluster.flotilla(&["status", "--issues-only"]);
    let text = String::from_utf8_lossy(&issues.stdout);
    assert!(!text.contains("OLD REDIS VERSION"), "no longer old: {text}");
    stop_load(&rt, load);
}

#[test]
fn preserve_roles_puts_every_primary_back_and_a_skip_upgrade_works() {
    let cluster = DevCluster::up(&bin(), 42, 2);
    cluster.create_replicated_db("skip", 12101, "redis-6.2");
    let rt = runtime();
    let load = start_load(&rt, format!("{}:12101", cluster.addr(1)));
    let primaries = |c: &DevCluster| -> Vec<u64> {
        c.shards_at(1)
            .iter()
            .filter(|s| s["role"] == "master")
            .map(|s| s["uid"].as_u64().unwrap())
            .collect()
    };
    let before = primaries(&cluster);
    upgrade(&cluster, 1, "skip", "valkey-9.1", &["--preserve-roles"]);
    assert!(
        poll_until(Duration::from_secs(20), || all_on(&cluster, "valkey-9.1")),
        "6.2 -> 9.1 in one hop"
    );
    assert_eq!(
        primaries(&cluster),
        before,
        "with --preserve-roles the primaries end where they began"
    );
    stop_load(&rt, load);
}

#[test]
fn refused_upgrades_name_the_problem_and_change_nothing() {
    let cluster = DevCluster::up_with_env(
        &bin(),
        43,
        2,
        &[
            ("FLOTILLA_FAILPOINT_PAUSE_STEP", Op::SyncReplica.name()),
            ("FLOTILLA_FAILPOINT_PAUSE_MS", "4000"),
        ],
    );
    cluster.create_db(&[
        "--name",
        "rep",
        "--port",
        "12102",
        "--memory",
        "100mb",
        "--replication",
        "--redis-version",
        "redis-7.0",
    ]);
    cluster.create_db(&[
        "--name",
        "single",
        "--port",
        "12103",
        "--memory",
        "100mb",
        "--redis-version",
        "redis-7.0",
        "--persistence",
        "aof",
    ]);
    let refuse = |args: &[&str], needle: &str| {
        let output = cluster.flotilla(args);
        assert!(!output.status.success(), "{args:?} must be refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            stderr.contains("400") || stderr.contains("409"),
            "a 4xx: {stderr}"
        );
    };
    refuse(
        &["db", "upgrade", "rep", "--redis-version", "redis-6.2"],
        "downgrade",
    );
    refuse(
        &["db", "upgrade", "rep", "--redis-version", "redis-5.0"],
        "unknown engine version",
    );
    refuse(
        &["db", "upgrade", "rep", "--redis-version", "redis-7.0"],
        "force_restart",
    );
    refuse(
        &[
            "db",
            "upgrade",
            "single",
            "--redis-version",
            "valkey-8.1",
            "--discard-data",
        ],
        "force_discard",
    );
    let no_actions = flotilla_testkit::runtime()
        .block_on(cluster.client(1).actions())
        .unwrap();
    assert!(no_actions.is_empty(), "refusals created no action");

    // A second upgrade while one runs on the same database is refused, naming the action.
    let started = cluster.flotilla(&[
        "db",
        "upgrade",
        "rep",
        "--redis-version",
        "valkey-8.1",
        "--no-wait",
    ]);
    assert_success(&started, "first upgrade");
    refuse(
        &["db", "upgrade", "rep", "--redis-version", "valkey-9.1"],
        "action 1",
    );
    let db = cluster.json(1, &["db", "show", "single", "--json"]);
    assert_eq!(
        db["redis_version"], "redis-7.0",
        "the refused database is unchanged"
    );
    let waited = cluster.flotilla(&["action", "wait", "1"]);
    assert_success(&waited, "the running upgrade still completes");
}

#[test]
fn a_cancelled_upgrade_stops_at_a_boundary_with_every_slot_range_on_one_engine() {
    let cluster = DevCluster::up_with_env(
        &bin(),
        44,
        2,
        &[
            ("FLOTILLA_FAILPOINT_PAUSE_STEP", Op::SyncReplica.name()),
            ("FLOTILLA_FAILPOINT_PAUSE_MS", "3000"),
        ],
    );
    cluster.create_replicated_db("halt", 12104, "redis-6.2");
    let rt = runtime();
    let load = start_load(&rt, format!("{}:12104", cluster.addr(1)));
    assert_success(
        &cluster.flotilla(&[
            "db",
            "upgrade",
            "halt",
            "--redis-version",
            "redis-7.0",
            "--no-wait",
        ]),
        "upgrade",
    );
    assert_success(&cluster.flotilla(&["action", "cancel", "1"]), "cancel");
    let ended = poll_until(Duration::from_secs(60), || {
        cluster.json(1, &["action", "show", "1", "--json"])["status"] != "running"
    });
    assert!(ended, "the cancelled action ends");
    let action = cluster.json(1, &["action", "show", "1", "--json"]);
    assert_eq!(action["status"], "cancelled", "{action}");
    // The first slot range finished its pair; the second never started: each range is on one engine.
    let all = cluster.shards_at(1);
    for range in ["0-8191", "8192-16383"] {
        let versions: Vec<&str> = all
            .iter()
            .filter(|s| s["assigned_slots"] == range)
            .map(|s| s["redis_version"].as_str().unwrap())
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] == w[1]),
            "slot range {range} on one engine: {versions:?}"
        );
    }
    stop_load(&rt, load);
}

/// The operations of a one-range upgrade of `shape`, in order, as the model's plan (the one
/// the primary node runs) names them; each is also a failpoint name.
fn one_range_ops(shape: UpgradeShape) -> Vec<&'static str> {
    shape
        .steps(&[SlotRange::even(0, 1)], 1)
        .iter()
        .map(|step| step.op.name())
        .collect()
}

#[test]
fn the_upgrade_resumes_after_a_kill_9_of_the_primary_node_at_every_step() {
    kill_the_primary_at_every_step(UpgradeShape::Replicated, 45, &["--replication"], &[]);
}

#[test]
fn an_upgrade_preserving_roles_resumes_after_a_kill_9_of_the_primary_node_at_every_step() {
    kill_the_primary_at_every_step(
        UpgradeShape::PreserveRoles,
        81,
        &["--replication"],
        &["--preserve-roles"],
    );
}

#[test]
fn an_upgrade_without_replication_resumes_after_a_kill_9_of_the_primary_node_at_every_step() {
    kill_the_primary_at_every_step(UpgradeShape::WithoutReplication, 91, &[], &[]);
}

/// For each step of a one-range upgrade of `shape`: a 3-node cluster on subnet
/// `first_subnet + i` whose daemons pause at that step, a one-range database (`create`
/// arguments added) under load, an upgrade (`upgrade` arguments added, which must make it an
/// upgrade of `shape`) started from another node; the primary node's daemon is killed -9 at
/// the step and restarted; the action must complete with every shard on the new engine and the
/// load clean.
fn kill_the_primary_at_every_step(
    shape: UpgradeShape,
    first_subnet: u8,
    create: &[&str],
    upgrade: &[&str],
) {
    let steps = one_range_ops(shape);
    for (i, step) in steps.iter().enumerate() {
        let subnet = first_subnet + i as u8;
        let cluster = DevCluster::up_with_env(
            &bin(),
            subnet,
            3,
            &[
                ("FLOTILLA_FAILPOINT_PAUSE_STEP", step),
                ("FLOTILLA_FAILPOINT_PAUSE_MS", "2500"),
            ],
        );
        let mut args = vec![
            "--name",
            "tough",
            "--port",
            "12105",
            "--memory",
            "100mb",
            "--redis-version",
            "redis-7.0",
        ];
        args.extend_from_slice(create);
        cluster.create_db(&args);
        let primary_node = cluster.json(1, &["status", "--json"])["cluster"]["master_node"]
            .as_u64()
            .unwrap() as u8;
        let other = cluster.node_numbers().find(|n| *n != primary_node).unwrap();
        let rt = runtime();
        let load = start_load(&rt, format!("{}:12105", cluster.addr(other)));
        let mut args = vec![
            "db",
            "upgrade",
            "tough",
            "--redis-version",
            "valkey-8.1",
            "--no-wait",
        ];
        args.extend_from_slice(upgrade);
        assert_success(&cluster.flotilla_at(other, &args), "upgrade");
        let shown = cluster.json(other, &["action", "show", "1", "--json"]);
        let listed: Vec<&str> = shown["plan"]
            .as_array()
            .expect("action show lists the plan")
            .iter()
            .map(|s| s["op"].as_str().unwrap())
            .collect();
        assert_eq!(listed, steps, "the action runs the plan the test walks");
        let reached = poll_until(Duration::from_secs(60), || {
            cluster.json(other, &["action", "show", "1", "--json"])["pending_ops"]
                .as_str()
                .unwrap_or("")
                .starts_with(step)
        });
        assert!(reached, "the action reached step {step}");
        cluster.kill9(primary_node);
        cluster.dev_up();
        let done = poll_until(Duration::from_secs(120), || {
            cluster.json(other, &["action", "show", "1", "--json"])["status"] != "running"
        });
        let action = cluster.json(other, &["action", "show", "1", "--json"]);
        assert!(
            done && action["status"] == "completed",
            "killed at {step}: {action}"
        );
        assert!(
            poll_until(Duration::from_secs(30), || all_on(&cluster, "valkey-8.1")),
            "killed at {step}: every shard on valkey-8.1"
        );
        eprintln!(
            "kill -9 of the primary node at {step} ({upgrade:?} {create:?}): resumed and completed"
        );
        stop_load(&rt, load);
    }
}

#[test]
fn a_database_without_replication_upgrades_through_a_temporary_replica() {
    let cluster = DevCluster::up(&bin(), 52, 2);
    cluster.create_db(&[
        "--name",
        "solo",
        "--port",
        "12106",
        "--memory",
        "100mb",
        "--shards",
        "2",
        "--redis-version",
        "redis-7.0",
    ]);
    let before: Vec<(u64, u64)> = cluster
        .shards_at(1)
        .iter()
        .map(|s| (s["uid"].as_u64().unwrap(), s["node_uid"].as_u64().unwrap()))
        .collect();
    let rt = runtime();
    let load = start_load(&rt, format!("{}:12106", cluster.addr(2)));
    let took = upgrade(&cluster, 1, "solo", "valkey-9.1", &[]);
    eprintln!("non-replicated upgrade took {took:?}");
    assert!(
        poll_until(Duration::from_secs(20), || all_on(&cluster, "valkey-9.1")),
        "every shard on valkey-9.1"
    );
    let after: Vec<(u64, u64)> = cluster
        .shards_at(1)
        .iter()
        .map(|s| (s["uid"].as_u64().unwrap(), s["node_uid"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        after, before,
        "the same primaries on the same nodes, temporary replicas removed"
    );
    stop_load(&rt, load);
}

#[test]
fn a_replica_engine_killed_during_its_sync_is_restarted_and_the_upgrade_completes() {
    let cluster = DevCluster::up_with_env(
        &bin(),
        53,
        2,
        &[
            ("FLOTILLA_FAILPOINT_PAUSE_STEP", Op::SyncReplica.name()),
            ("FLOTILLA_FAILPOINT_PAUSE_MS", "1500"),
        ],
    );
    cluster.create_db(&[
        "--name",
        "sync",
        "--port",
        "12107",
        "--memory",
        "100mb",
        "--replication",
        "--redis-version",
        "redis-6.2",
    ]);
    let rt = runtime();
    let load = start_load(&rt, format!("{}:12107", cluster.addr(1)));
    assert_success(
        &cluster.flotilla(&[
            "db",
            "upgrade",
            "sync",
            "--redis-version",
            "valkey-8.1",
            "--no-wait",
        ]),
        "upgrade",
    );
    let in_sync = poll_until(Duration::from_secs(30), || {
        cluster.json(1, &["action", "show", "1", "--json"])["pending_ops"]
            .as_str()
            .unwrap_or("")
            .starts_with(Op::SyncReplica.name())
    });
    assert!(in_sync, "the action reached sync_replica");
    let replica = cluster
        .shards_at(1)
        .into_iter()
        .find(|s| s["role"] == "slave")
        .unwrap();
    let node = replica["node_uid"].as_u64().unwrap() as u8;
    let pidfile = cluster
        .data_dir(node)
        .join("shards")
        .join(replica["uid"].to_string())
        .join("engine.pid");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let done = poll_until(Duration::from_secs(120), || {
        cluster.json(1, &["action", "show", "1", "--json"])["status"] != "running"
    });
    let action = cluster.json(1, &["action", "show", "1", "--json"]);
    assert!(done && action["status"] == "completed", "{action}");
    assert!(
        poll_until(Duration::from_secs(30), || all_on(&cluster, "valkey-8.1")),
        "every shard on valkey-8.1"
    );
    stop_load(&rt, load);
}

#[test]
fn discard_data_restarts_a_memory_only_database_empty_on_the_new_engine() {
    let cluster = DevCluster::up(&bin(), 54, 1);
    cluster.create_db(&[
        "--name",
        "scratch",
        "--port",
        "12108",
        "--memory",
        "100mb",
        "--shards",
        "2",
        "--redis-version",
        "redis-6.2",
    ]);
    let mut conn = redis::Client::open(format!("redis://{}:12108/", cluster.addr(1)))
        .unwrap()
        .get_connection()
        .unwrap();
    let () = redis::cmd("SET")
        .arg("gone")
        .arg("soon")
        .query(&mut conn)
        .unwrap();
    upgrade(&cluster, 1, "scratch", "valkey-9.1", &["--discard-data"]);
    assert!(
        poll_until(Duration::from_secs(20), || all_on(&cluster, "valkey-9.1")),
        "every shard on valkey-9.1"
    );
    let writable = poll_until(Duration::from_secs(10), || {
        redis::Client::open(format!("redis://{}:12108/", cluster.addr(1)))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("DBSIZE").query::<u64>(&mut c))
            .is_ok_and(|size| size == 0)
    });
    assert!(
        writable,
        "the database serves again, empty, as --discard-data says"
    );
}
