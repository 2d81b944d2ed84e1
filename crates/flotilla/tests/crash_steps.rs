//! A crash after every step's side effect, before the step is recorded (issue 14), against real
//! daemons and engines, under load through another node's endpoint.
//!
//! Each test walks whole actions on one 3-node cluster. Nodes 2 and 3 never stand for election
//! (failpoint `store:campaign=error`), so node 1, the creator, stays the primary node: it runs
//! every step. For each action the test reads the plan's step names from the action itself
//! (`flotilla action show --json`), starts node 1 with `STEP@after=exit` armed for the step the
//! action is at, waits until the daemon exits there (exit status
//! [`flotilla_store::failpoint::EXIT_STATUS`], the step's side effect done and not recorded),
//! and starts it again with the next step armed, until the action completes. Then: 0 client
//! errors, 0 lost acknowledged writes, every slot range with exactly one primary, the database
//! active.
//!
//! Plans walked: a shard migration (primary shard), a node removal, a database upgrade of each
//! shape (replicated, preserving roles, without replication; discarding data, without load),
//! maintenance on and off. A last test injects the other faults once each: the store's `error` after a
//! commit, the agent's `exit` after it started an engine, a step's `error`. Subnets 127.0.215.x
//! to 127.0.219.x.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use flotilla_store::failpoint::{EXIT_STATUS, FAILPOINTS};
use flotilla_testkit::{
    assert_success, flotilla_bin, load_runtime, poll_until, start_load_across_primary_crashes,
    stop_load_clean, DevCluster,
};
use serde_json::Value;

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

/// The node every test keeps as the primary node, and crashes.
const CRASHER: u8 = 1;
/// The node whose endpoint the load goes through; never crashed, never the object of an action.
const LOAD_NODE: u8 = 3;
/// How long one step may take to reach its failpoint (a full sync, a switchover's retries).
const STEP_BOUND: Duration = Duration::from_secs(120);

/// A 3-node cluster whose nodes do not stand for election: node 1 created it, so it is the
/// primary node, and stays so while it crashes and starts again (it is started without the
/// campaign failpoint).
fn cluster(subnet: u8) -> DevCluster {
    let cluster =
        DevCluster::up_with_env(&bin(), subnet, 3, &[(FAILPOINTS, "store:campaign=error")]);
    assert_eq!(primary_node(&cluster), u64::from(CRASHER));
    cluster
}

fn primary_node(cluster: &DevCluster) -> u64 {
    cluster.status_json(LOAD_NODE)["cluster"]["master_node"]
        .as_u64()
        .expect("a primary node")
}

/// `db create` of a database of `shards` shards on `port` (`extra` added), active.
fn database(
    cluster: &DevCluster,
    name: &str,
    port: u16,
    shards: u16,
    engine: &str,
    extra: &[&str],
) {
    let (port, shards) = (port.to_string(), shards.to_string());
    let mut args = vec![
        "--name",
        name,
        "--port",
        &port,
        "--memory",
        "100mb",
        "--shards",
        &shards,
        "--redis-version",
        engine,
    ];
    args.extend_from_slice(extra);
    cluster.create_db(&args);
}

/// Node 1's daemon killed -9 and started again with `spec` armed; waits (bounded) until the
/// load node sees every node up with node 1 the primary node, so that what the test asks next
/// is planned with node 1 counted (a placement, a quorum check).
fn restart_crasher(cluster: &DevCluster, spec: &str) -> Child {
    cluster.kill9(CRASHER);
    let daemon = cluster.start_daemon_with_env(CRASHER, &[(FAILPOINTS, spec)]);
    let up = poll_until(Duration::from_secs(60), || {
        let output = cluster.flotilla_at(LOAD_NODE, &["status", "--json"]);
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        status["cluster"]["master_node"] == u64::from(CRASHER)
            && !nodes.is_empty()
            && nodes.iter().all(|n| n["status"] == "up")
    });
    assert!(up, "node 1 back as the primary node, every node up");
    daemon
}

/// `action show UID --json` as the load node answers it.
fn action(cluster: &DevCluster, uid: u64) -> Value {
    cluster.json(LOAD_NODE, &["action", "show", &uid.to_string(), "--json"])
}

/// The uid in a started action's first line (`action N (...)`).
fn action_uid(stdout: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "action")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("the CLI prints the action's uid: {text}"))
}

/// How many times node 1's log says a failpoint made it exit after `step`.
fn exits_logged(cluster: &DevCluster, step: &str) -> usize {
    let log =
        std::fs::read_to_string(cluster.data_dir(CRASHER).join("flotilla.log")).unwrap_or_default();
    log.matches(&format!("failpoint {step}@after: exiting at once"))
        .count()
}

/// Waits (bounded) until `daemon` exits; its exit status.
fn wait_exit(daemon: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    poll_until(bound, || {
        status = daemon.try_wait().expect("waiting for the daemon");
        status.is_some()
    });
    status
}

/// Starts the action `args` (`--no-wait` added) through the load node, node 1 armed to exit after
/// the first step, whose operation is one of `first_ops` (which one may depend on the placement);
/// then walks every step of the plan the action
/// lists: waits until node 1 exits after the step, checks the step was not recorded as done,
/// starts node 1 with the next step armed. Returns the steps and how long the action took.
/// Node 1 is left running with nothing armed.
fn crash_after_every_step(
    cluster: &DevCluster,
    args: &[&str],
    first_ops: &[&str],
) -> (Vec<String>, Duration) {
    let armed: Vec<String> = first_ops
        .iter()
        .map(|op| format!("{op}@after=exit"))
        .collect();
    let spec = armed.join(";");
    let mut daemon = restart_crasher(cluster, &spec);
    let mut full = args.to_vec();
    full.push("--no-wait");
    let mut start = cluster
        .command_at(LOAD_NODE, &full)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the action");
    // A quick first step can end node 1 before node 3 learnt that the action was committed (no
    // other node stands for election): node 1 then starts again armed the same way (one more
    // exit after the first step), so that node 3 sees the action and answers.
    let answered = poll_until(STEP_BOUND, || {
        if daemon.try_wait().expect("node 1's daemon").is_some() {
            daemon = cluster.start_daemon_with_env(CRASHER, &[(FAILPOINTS, &spec)]);
        }
        start.try_wait().expect("the CLI").is_some()
    });
    assert!(answered, "{} answers", args.join(" "));
    let output = start.wait_with_output().expect("the CLI's output");
    assert_success(&output, &args.join(" "));
    let started = Instant::now();
    let uid = action_uid(&output.stdout);
    let steps: Vec<String> = action(cluster, uid)["plan"]
        .as_array()
        .expect("action show lists the plan")
        .iter()
        .map(|s| s["name"].as_str().expect("a step name").to_string())
        .collect();
    assert!(
        steps
            .first()
            .and_then(|s| s.split(' ').next())
            .is_some_and(|op| first_ops.contains(&op)),
        "the plan starts with one of {first_ops:?}: {steps:?}"
    );
    for (i, step) in steps.iter().enumerate() {
        let status = wait_exit(&mut daemon, STEP_BOUND);
        let shown = action(cluster, uid);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(EXIT_STATUS),
            "node 1 exits by the failpoint after {step}: {shown:#}"
        );
        assert!(exits_logged(cluster, step) >= 1, "the log names {step}");
        assert_eq!(
            shown["status"], "running",
            "after the exit at {step}: {shown:#}"
        );
        assert!(
            shown["step_index"].as_u64() <= Some(i as u64),
            "{step} not recorded as done before the crash: {shown:#}"
        );
        let next = steps
            .get(i + 1)
            .map(|s| format!("{s}@after=exit"))
            .unwrap_or_default();
        daemon = cluster.start_daemon_with_env(CRASHER, &[(FAILPOINTS, &next)]);
        eprintln!(
            "exit after {step} ({} of {}): node 1 restarted",
            i + 1,
            steps.len()
        );
    }
    let done = poll_until(STEP_BOUND, || action(cluster, uid)["status"] != "running");
    let shown = action(cluster, uid);
    assert!(done && shown["status"] == "completed", "{shown:#}");
    (steps, started.elapsed())
}

/// Every slot range of every database has exactly one primary shard, as the load node sees it;
/// every database becomes active.
fn assert_consistent(cluster: &DevCluster) {
    let mut primaries: BTreeMap<(u64, String), usize> = BTreeMap::new();
    for shard in cluster.shards_at(LOAD_NODE) {
        let range = (
            shard["bdb_uid"].as_u64().unwrap(),
            shard["assigned_slots"].to_string(),
        );
        *primaries.entry(range).or_default() += usize::from(shard["role"] == "master");
    }
    assert!(
        primaries.values().all(|n| *n == 1),
        "one primary per slot range: {primaries:?}"
    );
    for bdb in primaries.keys().map(|(bdb, _)| *bdb) {
        let active = poll_until(Duration::from_secs(60), || {
            cluster.db_status(bdb) == "active"
        });
        assert!(active, "database {bdb} active: {}", cluster.db_status(bdb));
    }
}

/// Every shard runs `engine`, as the load node sees it.
fn assert_all_on(cluster: &DevCluster, engine: &str) {
    let shards = cluster.shards_at(LOAD_NODE);
    assert!(
        shards.iter().all(|s| s["redis_version"] == engine),
        "every shard on {engine}: {shards:?}"
    );
}

/// A primary shard of database `bdb`: its uid, its node, and a node without a copy of its slot
/// range (where it can move).
fn movable_primary(cluster: &DevCluster, bdb: u64) -> (u64, u64, u64) {
    let shards = cluster.shards_at(LOAD_NODE);
    let primary = shards
        .iter()
        .find(|s| s["bdb_uid"] == bdb && s["role"] == "master")
        .expect("a primary shard");
    let holders: Vec<u64> = shards
        .iter()
        .filter(|s| s["bdb_uid"] == bdb && s["assigned_slots"] == primary["assigned_slots"])
        .map(|s| s["node_uid"].as_u64().unwrap())
        .collect();
    let free = (1..=3u64)
        .find(|n| !holders.contains(n))
        .expect("a node without a copy");
    (
        primary["uid"].as_u64().unwrap(),
        primary["node_uid"].as_u64().unwrap(),
        free,
    )
}

fn report(what: &str, steps: &[String], took: Duration) {
    eprintln!(
        "{what}: {} steps, a crash after each, completed in {:.1} s: {steps:?}",
        steps.len(),
        took.as_secs_f64()
    );
}

#[test]
fn a_migration_and_a_node_removal_complete_after_a_crash_after_every_step() {
    let cluster = cluster(215);
    database(
        &cluster,
        "moving",
        12215,
        2,
        "valkey-8.1",
        &["--replication"],
    );
    let rt = load_runtime();
    let load = start_load_across_primary_crashes(&rt, format!("{}:12215", cluster.addr(LOAD_NODE)));

    // A primary shard moves to the node without a copy of its range.
    let (shard, from, to) = movable_primary(&cluster, 1);
    let (shard, to) = (shard.to_string(), to.to_string());
    let (steps, took) = crash_after_every_step(
        &cluster,
        &["shard", "migrate", &shard, "--to-node", &to],
        &["add_copy"],
    );
    report(
        &format!("migrate shard {shard} from node {from} to node {to}"),
        &steps,
        took,
    );
    assert_consistent(&cluster);

    let (steps, took) =
        crash_after_every_step(&cluster, &["node", "remove", "2"], &["demote_node"]);
    report("node remove 2", &steps, took);
    assert!(
        cluster
            .shards_at(LOAD_NODE)
            .iter()
            .all(|s| s["node_uid"] != 2),
        "node 2 holds no shard"
    );
    assert_consistent(&cluster);
    stop_load_clean(&rt, load);
}

#[test]
fn replicated_upgrades_complete_after_a_crash_after_every_step() {
    let cluster = cluster(216);
    database(&cluster, "up", 12216, 1, "redis-7.0", &["--replication"]);
    let rt = load_runtime();
    let load = start_load_across_primary_crashes(&rt, format!("{}:12216", cluster.addr(LOAD_NODE)));
    let upgrade = ["db", "upgrade", "up", "--redis-version", "valkey-8.1"];
    let (steps, took) = crash_after_every_step(&cluster, &upgrade, &["add_replacement"]);
    report("replicated upgrade", &steps, took);
    assert_consistent(&cluster);
    let preserve = [
        "db",
        "upgrade",
        "up",
        "--redis-version",
        "valkey-9.1",
        "--preserve-roles",
    ];
    let (steps, took) = crash_after_every_step(&cluster, &preserve, &["upgrade_replica"]);
    report("upgrade preserving roles", &steps, took);
    assert_consistent(&cluster);
    assert_all_on(&cluster, "valkey-9.1");
    stop_load_clean(&rt, load);
}

#[test]
fn an_upgrade_without_replication_completes_after_a_crash_after_every_step() {
    let cluster = cluster(217);
    database(&cluster, "solo", 12217, 1, "redis-7.0", &[]);
    let rt = load_runtime();
    let load = start_load_across_primary_crashes(&rt, format!("{}:12217", cluster.addr(LOAD_NODE)));
    let upgrade = ["db", "upgrade", "solo", "--redis-version", "valkey-8.1"];
    let (steps, took) = crash_after_every_step(&cluster, &upgrade, &["add_temporary_replica"]);
    report("upgrade without replication", &steps, took);
    assert_consistent(&cluster);
    stop_load_clean(&rt, load);

    // `--discard-data` restarts the shards empty by design: walked without a load.
    let discard = [
        "db",
        "upgrade",
        "solo",
        "--redis-version",
        "valkey-9.1",
        "--discard-data",
    ];
    let (steps, took) = crash_after_every_step(&cluster, &discard, &["restart_on_new_engine"]);
    report("upgrade discarding data", &steps, took);
    assert_consistent(&cluster);
    assert_all_on(&cluster, "valkey-9.1");
}

#[test]
fn maintenance_on_and_off_complete_after_a_crash_after_every_step() {
    let cluster = cluster(218);
    database(&cluster, "kept", 12218, 2, "valkey-8.1", &["--replication"]);
    let rt = load_runtime();
    let load = start_load_across_primary_crashes(&rt, format!("{}:12218", cluster.addr(LOAD_NODE)));
    let on = ["node", "maintenance", "2", "on"];
    let (steps, took) = crash_after_every_step(&cluster, &on, &["snapshot"]);
    report("maintenance on", &steps, took);
    assert!(
        cluster
            .shards_at(LOAD_NODE)
            .iter()
            .all(|s| s["node_uid"] != 2),
        "node 2 holds no shard in maintenance"
    );
    assert_consistent(&cluster);
    let off = ["node", "maintenance", "2", "off"];
    let first_off = ["add_copy", "switch_back", "end_maintenance"];
    let (steps, took) = crash_after_every_step(&cluster, &off, &first_off);
    report("maintenance off", &steps, took);
    assert_consistent(&cluster);
    stop_load_clean(&rt, load);
}

/// Node 1's log.
fn crasher_log(cluster: &DevCluster) -> String {
    std::fs::read_to_string(cluster.data_dir(CRASHER).join("flotilla.log")).unwrap_or_default()
}

/// The other failpoints, one each: the store's `error` after a commit (the proposer is told the
/// outcome is unknown, finds its change applied, and answers it as done), the agent's `exit`
/// after it started an engine (the restarted daemon adopts the engine), and a step's `error`
/// (the runner retries the step and the action completes).
#[test]
fn the_store_agent_and_step_failpoints_inject_their_fault() {
    let cluster = cluster(219);
    let spec = "store:commit create_bdb@after=1*error;agent:start_engine@after=exit";
    let mut daemon = restart_crasher(&cluster, spec);
    // In the background: node 1 exits while the create may still wait for its shards.
    let create = cluster
        .command_at(
            LOAD_NODE,
            &[
                "db",
                "create",
                "--json",
                "--name",
                "faults",
                "--port",
                "12219",
                "--memory",
                "100mb",
                "--shards",
                "3",
                "--redis-version",
                "valkey-8.1",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("db create");
    let status = wait_exit(&mut daemon, STEP_BOUND);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(EXIT_STATUS),
        "node 1 exits after starting an engine"
    );
    assert!(crasher_log(&cluster).contains("failpoint agent:start_engine shard:"));
    daemon = cluster.start_daemon_with_env(CRASHER, &[(FAILPOINTS, "add_copy=1*error")]);
    let output = create.wait_with_output().expect("db create ends");
    assert_success(&output, "db create through node 3");
    let load_log =
        std::fs::read_to_string(cluster.data_dir(LOAD_NODE).join("flotilla.log")).unwrap();
    assert!(
        load_log.contains("failpoint store:commit create_bdb@after injected an error")
            && load_log.contains("answer was lost but the state shows it applied"),
        "node 3 was told the outcome is unknown and found the database"
    );
    let active = poll_until(Duration::from_secs(60), || cluster.db_status(1) == "active");
    assert!(active, "the database is active: {}", cluster.db_status(1));

    let (shard, _, to) = movable_primary(&cluster, 1);
    let (shard, to) = (shard.to_string(), to.to_string());
    let output = cluster.flotilla_at(LOAD_NODE, &["shard", "migrate", &shard, "--to-node", &to]);
    assert_success(&output, "shard migrate (followed to its end)");
    let uid = action_uid(&output.stdout);
    assert_eq!(action(&cluster, uid)["status"], "completed");
    let log = crasher_log(&cluster);
    assert!(
        log.contains(&format!(
            "failpoint add_copy shard:{shard}@before injected an error"
        )),
        "the step failed once by the failpoint"
    );
    assert!(
        log.contains("action step failed; running it again"),
        "and ran again"
    );
    assert_consistent(&cluster);
    // The test started this daemon: it ends and reaps it.
    cluster.kill9(CRASHER);
    daemon.wait().expect("node 1's daemon reaped");
}

/// The exits a failpoint caused in node `n`'s log, by point (`agent:replicaof shard:2@after`).
fn agent_exits(cluster: &DevCluster, n: u8) -> Vec<String> {
    let log = std::fs::read_to_string(cluster.data_dir(n).join("flotilla.log")).unwrap_or_default();
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("failpoint agent:")? + "failpoint ".len()..];
            Some(rest.split_once(": exiting at once")?.0.to_string())
        })
        .collect()
}

/// Node `n`'s failpoints when the test starts its daemon: `agent` on top of keeping the primary
/// node where it is (every node but node 1 never stands for election).
fn agent_spec(n: u8, agent: &str) -> String {
    match n {
        CRASHER => agent.to_string(),
        _ => format!("store:campaign=error;{agent}"),
    }
}

/// Waits (bounded) until `done`, restarting every node of `nodes` whose daemon an agent
/// failpoint ended, with the spec `next` gives for the point it exited at; the points exited at.
fn restart_agents_until(
    cluster: &DevCluster,
    nodes: &[u8],
    next: impl Fn(&str) -> &'static str,
    mut done: impl FnMut() -> bool,
) -> Vec<(u8, String)> {
    let mut seen: BTreeMap<u8, usize> = nodes
        .iter()
        .map(|n| (*n, agent_exits(cluster, *n).len()))
        .collect();
    let mut exits = Vec::new();
    let mut daemons = Vec::new();
    let finished = poll_until(STEP_BOUND, || {
        for n in nodes {
            let logged = agent_exits(cluster, *n);
            let count = seen.get_mut(n).expect("a watched node");
            if logged.len() <= *count {
                continue;
            }
            *count = logged.len();
            let point = logged.last().expect("an exit").clone();
            let gone = poll_until(Duration::from_secs(10), || {
                cluster
                    .daemon_pid(*n)
                    .is_none_or(|pid| !flotilla_testkit::process_alive(pid))
            });
            assert!(gone, "node {n}'s daemon is gone after {point}");
            eprintln!("node {n} exited at {point}: started again");
            let spec = agent_spec(*n, next(&point));
            daemons.push(cluster.start_daemon_with_env(*n, &[(FAILPOINTS, &spec)]));
            exits.push((*n, point));
        }
        done()
    });
    assert!(finished, "the flow completed after the exits {exits:?}");
    exits
}

/// The agent's failpoints other than `start_engine`, in the flows that reach them, each ending
/// the daemon (`exit`) or failing the agent's work once (`error`): an engine upgrade in place
/// (`--preserve-roles`: each copy's engine is stopped and started on the new version, and a
/// replica follows its primary again) resumes and completes under load with 0 client errors and
/// 0 lost writes; an unplanned failover (the master's engine killed -9) whose promoted replica's
/// daemon exits right after `REPLICAOF NO ONE` ends with the replica the serving primary.
/// Subnet 127.0.150.x.
#[test]
fn the_agent_failpoints_of_an_engine_upgrade_and_a_failover_resume() {
    let cluster = cluster(150);
    database(
        &cluster,
        "agents",
        12150,
        1,
        "redis-7.0",
        &["--replication"],
    );
    let holders: Vec<u8> = cluster
        .shards_at(LOAD_NODE)
        .iter()
        .map(|s| s["node_uid"].as_u64().unwrap() as u8)
        .collect();
    let load_node = (1..=3u8)
        .find(|n| !holders.contains(n))
        .expect("a node without a copy");
    let rt = load_runtime();
    let load = start_load_across_primary_crashes(&rt, format!("{}:12150", cluster.addr(load_node)));

    // Each copy's daemon exits right after its engine on redis-7.0 is stopped; started again, it
    // starts the engine on valkey-8.1.
    let restart = "agent:restart_engine@after=exit";
    // Daemons the test starts: reaped when the test ends (they may exit, or be killed, before).
    let mut daemons = Vec::new();
    for n in &holders {
        cluster.kill9(*n);
        daemons.push(cluster.start_daemon_with_env(*n, &[(FAILPOINTS, &agent_spec(*n, restart))]));
    }
    let up = poll_until(Duration::from_secs(60), || {
        cluster.db_status(1) == "active" && primary_node(&cluster) == u64::from(CRASHER)
    });
    assert!(up, "the database is active again, node 1 the primary node");
    let upgrade = cluster
        .command_at(
            load_node,
            &[
                "db",
                "upgrade",
                "agents",
                "--redis-version",
                "valkey-8.1",
                "--preserve-roles",
                "--no-wait",
            ],
        )
        .stdout(Stdio::piped())
        .output()
        .expect("db upgrade");
    assert_success(&upgrade, "db upgrade --preserve-roles");
    let uid = action_uid(&upgrade.stdout);
    let started = Instant::now();
    let exits = restart_agents_until(
        &cluster,
        &holders,
        |_| "",
        || action(&cluster, uid)["status"] != "running",
    );
    let shown = action(&cluster, uid);
    assert_eq!(shown["status"], "completed", "{shown:#}");
    eprintln!(
        "engine upgrade with agent exits {exits:?}: completed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let restarted: Vec<u8> = exits
        .iter()
        .filter(|(_, p)| p.starts_with("agent:restart_engine shard:") && p.ends_with("@after"))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        restarted.len(),
        2,
        "both copies' daemons exited after their old engine stopped: {exits:?}"
    );
    assert_consistent(&cluster);
    assert_all_on(&cluster, "valkey-8.1");
    let report = stop_load_clean(&rt, load);
    eprintln!(
        "engine upgrade with agent failpoints: longest stall {:.1} ms",
        report.longest_stall_ms
    );

    // A failover of a frozen master: the replica's daemon exits right after it promoted its
    // engine; once the old master's engine runs again, its agent demotes it (REPLICAOF), which
    // fails once by the failpoint and is done again.
    let shards = cluster.shards_at(load_node);
    let shard = |role: &str| {
        shards
            .iter()
            .find(|s| s["role"] == role)
            .cloned()
            .expect("a copy")
    };
    let (primary, replica) = (shard("master"), shard("slave"));
    let node_of = |s: &Value| s["node_uid"].as_u64().unwrap() as u8;
    let (primary_node_n, replica_node) = (node_of(&primary), node_of(&replica));
    for (n, spec) in [
        (replica_node, "agent:promote@after=exit"),
        (primary_node_n, "agent:replicaof@after=1*error"),
    ] {
        cluster.kill9(n);
        daemons.push(cluster.start_daemon_with_env(n, &[(FAILPOINTS, &agent_spec(n, spec))]));
    }
    let linked = poll_until(Duration::from_secs(60), || {
        cluster.db_status(1) == "active" && primary_node(&cluster) == u64::from(CRASHER)
    });
    assert!(
        linked,
        "the database is active again, node 1 the primary node"
    );
    let engine = nix::unistd::Pid::from_raw(
        cluster.engine_pid(primary_node_n, primary["uid"].as_u64().unwrap()) as i32,
    );
    let signal = |sig| nix::sys::signal::kill(engine, sig).expect("signalling the master's engine");
    signal(nix::sys::signal::Signal::SIGSTOP);
    let frozen = Instant::now();
    let mut resumed = None;
    let demoted_again = || {
        std::fs::read_to_string(cluster.data_dir(primary_node_n).join("flotilla.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("agent:replicaof shard:") && l.contains("inject"))
    };
    let exits = restart_agents_until(
        &cluster,
        &[replica_node, primary_node_n],
        |_| "",
        || {
            let shards = cluster.shards_at(load_node);
            let role = |s: &Value| {
                shards
                    .iter()
                    .find(|x| x["uid"] == s["uid"])
                    .map(|x| x["role"].clone())
            };
            let promoted = role(&replica) == Some("master".into());
            if promoted && resumed.is_none() {
                signal(nix::sys::signal::Signal::SIGCONT);
                resumed = Some(frozen.elapsed());
            }
            promoted
                && role(&primary) == Some("slave".into())
                && demoted_again()
                && cluster.db_status(1) == "active"
        },
    );
    eprintln!("failover of a frozen master: promoted after {resumed:?}; agent exits {exits:?}");
    assert!(
        exits
            .iter()
            .any(|(n, p)| *n == replica_node && p.starts_with("agent:promote shard:")),
        "the replica's daemon exited after promoting its engine: {exits:?}"
    );
    assert_consistent(&cluster);
    drop(cluster);
    for mut daemon in daemons {
        daemon.wait().expect("a daemon the test started, reaped");
    }
}
