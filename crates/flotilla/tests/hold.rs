//! What an endpoint's hold and the agents must cover around a master's death (issue 14),
//! against real daemons and engines:
//! - a master killed right after its replica reports in sync (a fresh full sync) loses no
//!   acknowledged write: the agent counts a replica as linked only once its primary streams
//!   to it (after a diskless full sync an engine sends its replica nothing until the replica's
//!   first acknowledgement after the fork is reaped, up to a second later).
//!
//! Subnets 127.0.144.x to 127.0.147.x.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_testkit::{flotilla_bin, load_runtime, poll_until, stop_load, DevCluster};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const ENGINE: &str = "valkey-8.1";

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

fn kill9(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// The database's shards as node `n` answers (none while it cannot answer).
fn shards(cluster: &DevCluster, n: u8, bdb: u64) -> Vec<Value> {
    let answer = flotilla_testkit::runtime().block_on(cluster.client(n).shards());
    answer
        .unwrap_or_default()
        .into_iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .filter(|s| s["bdb_uid"] == bdb)
        .collect()
}

fn uid(shard: &Value) -> u64 {
    shard["uid"].as_u64().unwrap()
}

fn node_of(shard: &Value) -> u8 {
    shard["node_uid"].as_u64().unwrap() as u8
}

/// The pid in shard `shard`'s engine pidfile on node `n`, if it can be read now (a restarting
/// engine may not have written it yet).
fn engine_pid_now(cluster: &DevCluster, n: u8, shard: u64) -> Option<u32> {
    let path = cluster
        .data_dir(n)
        .join("shards")
        .join(shard.to_string())
        .join("engine.pid");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Polls `check` every 5 ms (the API answers in a few ms) until it holds or `timeout` passes.
fn poll_fast(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Valkey 8.1 streamed nothing to a replica until the replica's first acknowledgement after a
/// diskless full sync (up to ~1 s after the shard reported the replica in sync): a master killed
/// then lost what it acknowledged meanwhile (127 writes once). Three rounds, each on a fresh
/// full sync: kill -9 of a replica engine (the agent restarts it empty: a full sync), and the
/// instant the API reports it active again, kill -9 of its master, under load through another
/// node's endpoint; no acknowledged write may be lost.
#[test]
fn a_master_killed_right_after_its_replica_reports_in_sync_loses_no_acknowledged_write() {
    let cluster = DevCluster::up(&bin(), 144, 3);
    let bdb = cluster.create_replicated_db("fresh", 12144, ENGINE)["uid"]
        .as_u64()
        .unwrap();
    for round in 1..=3 {
        let all = shards(&cluster, 1, bdb);
        let master = all.iter().find(|s| s["role"] == "master").unwrap().clone();
        let replica = all
            .iter()
            .find(|s| s["role"] == "slave" && s["assigned_slots"] == master["assigned_slots"])
            .unwrap()
            .clone();
        let (master_node, replica_node) = (node_of(&master), node_of(&replica));
        let through = cluster.node_numbers().find(|n| *n != master_node).unwrap();
        let rt = load_runtime();
        let load = flotilla_testkit::start_load(&rt, format!("{}:12144", cluster.addr(through)));

        let old_pid = cluster.engine_pid(replica_node, uid(&replica));
        let before = shards(&cluster, through, bdb);
        let offset_before = before
            .iter()
            .find(|s| uid(s) == uid(&replica))
            .and_then(|s| s["offset"].as_i64())
            .unwrap_or(0);
        kill9(old_pid);
        let killed = Instant::now();
        // Active in a report made after the restart: a new engine, and an offset past what the
        // dead one had reached (the load keeps the primary's offset moving).
        let resynced = poll_fast(Duration::from_secs(30), || {
            let restarted = engine_pid_now(&cluster, replica_node, uid(&replica))
                .is_some_and(|pid| pid != old_pid);
            restarted
                && shards(&cluster, through, bdb).iter().any(|s| {
                    uid(s) == uid(&replica)
                        && s["status"] == "active"
                        && s["offset"].as_i64().unwrap_or(0) > offset_before
                })
        });
        assert!(
            resynced,
            "round {round}: the replica resynced and reported active"
        );
        let synced_after = killed.elapsed();
        kill9(cluster.engine_pid(master_node, uid(&master)));

        let promoted = poll_until(Duration::from_secs(30), || {
            shards(&cluster, through, bdb).iter().any(|s| {
                s["role"] == "master"
                    && s["assigned_slots"] == master["assigned_slots"]
                    && uid(s) != uid(&master)
            })
        });
        assert!(promoted, "round {round}: the replica was promoted");
        let report = stop_load(&rt, load);
        eprintln!(
            "round {round}: replica active again {synced_after:?} after its kill; master \
             killed then: acknowledged writes lost {}, client errors {}, longest stall {:.0} ms",
            report.lost_writes, report.client_errors_total, report.longest_stall_ms
        );
        assert_eq!(
            report.lost_writes, 0,
            "round {round}: no acknowledged write lost: {:?}",
            report.lost_write_examples
        );
        let active = poll_until(Duration::from_secs(60), || {
            cluster.db_status(bdb) == "active"
        });
        assert!(active, "round {round}: the database is active again");
    }
}
