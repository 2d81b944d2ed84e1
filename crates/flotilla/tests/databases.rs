//! Databases on real engine shards behind the proxy endpoint on every node: placement, routing,
//! adoption after a daemon crash, and failover. Each test owns a loopback subnet (127.0.S.x).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_testkit::{
    assert_success, endpoint_connection, flotilla_bin, poll_until, process_alive, runtime,
    DevCluster,
};

fn bin() -> std::path::PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

#[test]
fn a_replicated_sharded_database_answers_on_every_node() {
    let cluster = DevCluster::up(&bin(), 31, 3);
    let started = Instant::now();
    cluster.create_db(&[
        "--name",
        "cache",
        "--port",
        "12000",
        "--memory",
        "300mb",
        "--shards",
        "3",
        "--replication",
        "--redis-version",
        "redis-7.0",
    ]);
    eprintln!(
        "3-shard replicated database active after {:?}",
        started.elapsed()
    );

    let all = cluster.shards_at(1);
    assert_eq!(all.len(), 6);
    for primary in all.iter().filter(|s| s["role"] == "master") {
        let replica = all
            .iter()
            .find(|s| s["role"] == "slave" && s["assigned_slots"] == primary["assigned_slots"])
            .expect("every primary has a replica");
        assert_ne!(
            primary["node_uid"], replica["node_uid"],
            "primary and replica on different nodes"
        );
    }

    // Every node's endpoint serves the database; keys written through one are read through all.
    let keys: Vec<String> = (0..300).map(|i| format!("key:{i}")).collect();
    let mut first = endpoint_connection(cluster.addr(1), 12000);
    let pairs: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), format!("v-{k}"))).collect();
    let () = redis::cmd("MSET").arg(&pairs).query(&mut first).unwrap();
    for n in cluster.node_numbers() {
        let mut conn = endpoint_connection(cluster.addr(n), 12000);
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut conn).unwrap();
        assert!(
            values
                .iter()
                .zip(&keys)
                .all(|(v, k)| v.as_deref() == Some(&format!("v-{k}"))),
            "node {n} reads every key"
        );
        let size: u64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
        assert_eq!(size, 300, "DBSIZE sums the shards through node {n}");
    }

    // Keys landed on every primary shard (asked of the engines directly).
    let admin = cluster.engine_admin();
    let shards = cluster.shard_addrs_at(1);
    for (primary, addr) in shards.iter().filter(|(s, _)| s["role"] == "master") {
        let url = format!("redis://{admin}@{addr}/");
        let mut engine = redis::Client::open(url).unwrap().get_connection().unwrap();
        let size: u64 = redis::cmd("DBSIZE").query(&mut engine).unwrap();
        assert!(
            size > 50,
            "primary shard {} holds a share of the keys ({size})",
            primary["uid"]
        );
    }

    // redis-cli works unchanged against the endpoint.
    let cli = |args: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-h", &cluster.addr(2).to_string(), "-p", "12000"])
            .args(args)
            .output()
            .expect("redis-cli (from redis-tools, installed by scripts/fetch-engines)");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "from-cli", "yes"]), "OK");
    assert_eq!(cli(&["GET", "from-cli"]), "yes");

    // Node 1's metrics count the requests its endpoint served and show its shards.
    let metrics = runtime()
        .block_on(async {
            let url = format!("http://{}:8070/metrics", cluster.addr(1));
            flotilla_testkit::install_crypto_provider();
            reqwest::get(url).await?.text().await
        })
        .expect("metrics endpoint answers");
    let requests: f64 = metrics
        .lines()
        .find(|l| l.starts_with("flotilla_bdb_requests_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("flotilla_bdb_requests_total is exported");
    assert!(
        requests >= 4.0,
        "node 1 served the MSET, MGET and DBSIZE: {requests}"
    );
    assert!(
        metrics.contains("flotilla_shard_used_memory_bytes{"),
        "{metrics}"
    );
}

#[test]
fn a_killed_daemon_leaves_its_shards_running_and_adopts_them() {
    let cluster = DevCluster::up(&bin(), 32, 3);
    cluster.create_replicated_db("adopt", 12001, "valkey-8.1");
    let node = 2;
    let on_node: Vec<u64> = cluster
        .shards_at(1)
        .iter()
        .filter(|s| s["node_uid"] == node as u64)
        .map(|s| s["uid"].as_u64().unwrap())
        .collect();
    assert!(!on_node.is_empty(), "node {node} runs shards");
    let pids: Vec<u32> = on_node
        .iter()
        .map(|uid| cluster.engine_pid(node, *uid))
        .collect();

    cluster.kill9(node);
    for pid in &pids {
        assert!(
            process_alive(*pid),
            "engine {pid} survives kill -9 of its daemon"
        );
    }
    let mut conn = endpoint_connection(cluster.addr(1), 12001);
    let () = redis::cmd("SET")
        .arg("during")
        .arg("outage")
        .query(&mut conn)
        .unwrap();

    cluster.dev_up();
    let adopted = poll_until(Duration::from_secs(30), || cluster.db_status(1) == "active");
    assert!(adopted, "the restarted daemon reports its shards active");
    let after: Vec<u32> = on_node
        .iter()
        .map(|uid| cluster.engine_pid(node, *uid))
        .collect();
    assert_eq!(
        after, pids,
        "the restarted daemon adopted the same engine processes"
    );
    let mut conn = endpoint_connection(cluster.addr(node), 12001);
    let value: String = redis::cmd("GET").arg("during").query(&mut conn).unwrap();
    assert_eq!(value, "outage");
}

/// Uids of (primary, replica) shard pairs, by slot range.
fn pairs(cluster: &DevCluster) -> Vec<(u64, u64)> {
    let all = cluster.shards_at(1);
    all.iter()
        .filter(|s| s["role"] == "master")
        .map(|m| {
            let replica = all
                .iter()
                .find(|s| s["role"] == "slave" && s["assigned_slots"] == m["assigned_slots"])
                .unwrap();
            (m["uid"].as_u64().unwrap(), replica["uid"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn planned_switchovers_under_load_lose_nothing_and_raise_no_error() {
    let cluster = DevCluster::up(&bin(), 33, 3);
    cluster.create_db(&[
        "--name",
        "swap",
        "--port",
        "12002",
        "--memory",
        "200mb",
        "--shards",
        "2",
        "--replication",
        "--redis-version",
        "redis-7.0",
    ]);
    let rt = flotilla_testkit::load_runtime();
    let load = flotilla_testkit::start_load(&rt, format!("{}:12002", cluster.addr(2)));
    let client = cluster.client(3);
    let mut holds = Vec::new();
    let mut phases = Vec::new();
    for round in 0..3 {
        for (primary, _) in pairs(&cluster) {
            let report = rt
                .block_on(client.failover_shard(primary))
                .unwrap_or_else(|e| panic!("round {round}: switchover of {primary}: {e}"));
            holds.push(report["hold_ms"].as_u64().unwrap());
            phases.push((
                report["spread_ms"].as_u64().unwrap(),
                report["catch_up_ms"].as_u64().unwrap(),
            ));
        }
    }
    // The six switchovers can take under a second: let the load run long enough to count
    // (about half its operations are acknowledged writes).
    assert!(
        rt.block_on(load.wait_for_ops(2_500, Duration::from_secs(30))),
        "the load keeps running"
    );
    let report = flotilla_testkit::stop_load_clean(&rt, load);
    eprintln!(
        "switchover hold times (ms): {holds:?} (spread, catch-up: {phases:?}); longest client stall {:.1} ms",
        report.longest_stall_ms
    );
    assert!(report.writes_acknowledged > 1000);
    let settled = poll_until(Duration::from_secs(10), || {
        cluster
            .shards_at(1)
            .iter()
            .filter(|s| s["status"] == "active")
            .count()
            == 4
    });
    assert!(
        settled,
        "after the switchovers every shard runs in its new role: {:?}",
        cluster.shards_at(1)
    );
}

/// Writes `count` keys through the endpoint and waits until the replicas have them.
fn write_keys(addr: Ipv4Addr, port: u16, count: usize) -> Vec<String> {
    let mut conn = endpoint_connection(addr, port);
    let keys: Vec<String> = (0..count).map(|i| format!("durable:{i}")).collect();
    for chunk in keys.chunks(100) {
        let pairs: Vec<(&String, &String)> = chunk.iter().map(|k| (k, k)).collect();
        let () = redis::cmd("MSET").arg(&pairs).query(&mut conn).unwrap();
    }
    let replicated: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut conn)
        .unwrap();
    assert!(
        replicated >= 1,
        "every shard's replica acknowledged the writes"
    );
    keys
}

fn all_keys_present(addr: Ipv4Addr, port: u16, keys: &[String]) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://{addr}:{port}/")) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
        return false;
    };
    let values: Result<Vec<Option<String>>, _> = redis::cmd("MGET").arg(keys).query(&mut conn);
    values.is_ok_and(|v| {
        v.iter()
            .zip(keys)
            .all(|(v, k)| v.as_deref() == Some(k.as_str()))
    })
}

fn writable(addr: Ipv4Addr, port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://{addr}:{port}/")) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    (0..16).all(|i| {
        redis::cmd("SET")
            .arg(format!("probe:{i}"))
            .arg(1)
            .query::<()>(&mut conn)
            .is_ok()
    })
}

#[test]
fn a_killed_primary_engine_fails_over_and_keeps_the_data() {
    let cluster = DevCluster::up(&bin(), 34, 3);
    cluster.create_db(&[
        "--name",
        "crash",
        "--port",
        "12003",
        "--memory",
        "200mb",
        "--shards",
        "2",
        "--replication",
        "--redis-version",
        "redis-7.0",
    ]);
    let keys = write_keys(cluster.addr(1), 12003, 1000);
    let (primary, replica) = pairs(&cluster)[0];
    let node = cluster
        .shards_at(1)
        .iter()
        .find(|s| s["uid"] == primary)
        .unwrap()["node_uid"]
        .as_u64()
        .unwrap() as u8;
    let pid = cluster.engine_pid(node, primary);

    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let serving = poll_until(Duration::from_secs(30), || writable(cluster.addr(3), 12003));
    assert!(
        serving,
        "the endpoint serves writes again after the primary engine died"
    );
    eprintln!(
        "endpoint writable {:?} after kill -9 of primary shard {primary}",
        killed.elapsed()
    );
    let promoted = cluster
        .shards_at(1)
        .iter()
        .any(|s| s["uid"] == replica && s["role"] == "master");
    assert!(promoted, "the replica {replica} was promoted");
    assert!(
        all_keys_present(cluster.addr(2), 12003, &keys),
        "no acknowledged, replicated key was lost"
    );
    let healed = poll_until(Duration::from_secs(30), || cluster.db_status(1) == "active");
    assert!(
        healed,
        "the old primary comes back as a replica and the database is active again"
    );
}

#[test]
fn a_whole_node_lost_fails_over_to_the_other_nodes() {
    let cluster = DevCluster::up(&bin(), 35, 3);
    cluster.create_db(&[
        "--name",
        "gone",
        "--port",
        "12004",
        "--memory",
        "300mb",
        "--shards",
        "3",
        "--replication",
        "--redis-version",
        "valkey-8.1",
    ]);
    let keys = write_keys(cluster.addr(1), 12004, 600);
    // Lose a node that is not the primary node and holds a primary shard: daemon and engines.
    let primary_node = cluster.status_json(1)["cluster"]["master_node"]
        .as_u64()
        .unwrap();
    let all = cluster.shards_at(1);
    let victim = all
        .iter()
        .filter(|s| s["role"] == "master" && s["node_uid"] != primary_node)
        .map(|s| s["node_uid"].as_u64().unwrap() as u8)
        .next()
        .expect("some primary shard lives on a secondary node");
    let engines: Vec<u32> = all
        .iter()
        .filter(|s| s["node_uid"] == victim as u64)
        .map(|s| cluster.engine_pid(victim, s["uid"].as_u64().unwrap()))
        .collect();
    let killed = Instant::now();
    cluster.kill9(victim);
    for pid in engines {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let survivor = cluster.node_numbers().find(|n| *n != victim).unwrap();
    let serving = poll_until(Duration::from_secs(30), || {
        writable(cluster.addr(survivor), 12004)
    });
    assert!(
        serving,
        "the endpoint on node {survivor} serves writes after node {victim} was lost"
    );
    eprintln!(
        "endpoint writable {:?} after losing node {victim}",
        killed.elapsed()
    );
    assert!(
        all_keys_present(cluster.addr(survivor), 12004, &keys),
        "replicated keys survive the node loss"
    );
}

#[test]
fn redis_py_sentinel_discovers_the_database_by_name_and_writes() {
    let cluster = DevCluster::up(&bin(), 36, 2);
    cluster.create_db(&[
        "--name",
        "named",
        "--port",
        "12005",
        "--memory",
        "100mb",
        "--shards",
        "2",
        "--replication",
    ]);
    let python = Command::new("scripts/python-env")
        .current_dir(repo_root())
        .output()
        .expect("scripts/python-env");
    assert_success(
        &python,
        "scripts/python-env (creates .cache/python with redis-py)",
    );
    let python = String::from_utf8_lossy(&python.stdout)
        .trim()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let output = Command::new(&python)
        .current_dir(repo_root())
        .args([
            "scripts/sentinel_check.py",
            "--sentinel",
            &format!("{}:8001", cluster.addr(2)),
            "--name",
            "named",
            "--write",
        ])
        .output()
        .unwrap();
    assert_success(&output, "sentinel_check.py --write");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains(&cluster.addr(2).to_string()) && printed.contains("12005"),
        "{printed}"
    );
    let mut conn = endpoint_connection(cluster.addr(1), 12005);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(
        !keys.is_empty(),
        "the key redis-py wrote is in the database: {printed}"
    );
}

#[test]
fn malformed_resp_never_breaks_the_endpoint_or_other_clients() {
    use rand::{Rng, SeedableRng};
    use std::io::{Read, Write};
    let cluster = DevCluster::up(&bin(), 37, 1);
    cluster.create_db(&[
        "--name", "fuzz", "--port", "12006", "--memory", "100mb", "--shards", "2",
    ]);
    let mut bystander = endpoint_connection(cluster.addr(1), 12006);
    let () = redis::cmd("SET")
        .arg("bystander")
        .arg("ok")
        .query(&mut bystander)
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let valid: &[&[u8]] = &[
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"PING\r\n",
    ];
    for round in 0..2000 {
        let mut input: Vec<u8> = if round % 2 == 0 {
            (0..rng.random_range(1..200))
                .map(|_| rng.random())
                .collect()
        } else {
            let frame = valid[round % valid.len()];
            let mut bytes = frame[..rng.random_range(1..frame.len())].to_vec();
            let at = rng.random_range(0..bytes.len());
            bytes[at] = rng.random();
            bytes
        };
        if round % 5 == 0 {
            input.extend_from_slice(b"*1\r\n$-7\r\n");
        }
        let mut stream = std::net::TcpStream::connect((cluster.addr(1), 12006)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let _ = stream.write_all(&input);
        let mut buf = [0u8; 512];
        let _ = stream.read(&mut buf);
        if round % 250 == 0 {
            let value: String = redis::cmd("GET")
                .arg("bystander")
                .query(&mut bystander)
                .unwrap();
            assert_eq!(value, "ok", "another client keeps working (round {round})");
        }
    }
    let value: String = redis::cmd("GET")
        .arg("bystander")
        .query(&mut bystander)
        .unwrap();
    assert_eq!(value, "ok");
    assert!(
        writable(cluster.addr(1), 12006),
        "the endpoint still serves new clients"
    );
    assert!(
        cluster.daemon_pid(1).is_some_and(process_alive),
        "the daemon did not crash"
    );
}

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn a_switchover_cut_short_by_a_primary_node_crash_is_repaired_without_losing_writes() {
    let env = [
        ("FLOTILLA_FAILPOINT_PAUSE_STEP", "switchover:fenced"),
        ("FLOTILLA_FAILPOINT_PAUSE_MS", "4000"),
    ];
    let cluster = DevCluster::up_with_env(&bin(), 38, 3, &env);
    cluster.create_db(&[
        "--name",
        "cut",
        "--port",
        "12007",
        "--memory",
        "100mb",
        "--replication",
        "--redis-version",
        "redis-7.0",
    ]);
    let primary_node = cluster.status_json(1)["cluster"]["master_node"]
        .as_u64()
        .unwrap() as u8;
    let other = cluster.node_numbers().find(|n| *n != primary_node).unwrap();
    let rt = flotilla_testkit::load_runtime();
    let load = flotilla_testkit::start_load(&rt, format!("{}:12007", cluster.addr(other)));
    let (primary, _) = pairs(&cluster)[0];
    let mut failover = cluster.command_at(other, &["shard", "failover", &primary.to_string()]);
    let failover = std::thread::spawn(move || {
        failover
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
    });
    // The switchover pauses after fencing the primary (failpoint): kill the primary node then.
    let held = poll_until(Duration::from_secs(10), || {
        cluster
            .shards_at(other)
            .iter()
            .any(|s| s["uid"] == primary && s["held"] == true)
    });
    assert!(held, "the switchover holds the primary's slots");
    let killed = Instant::now();
    cluster.kill9(primary_node);
    let _ = failover.join();
    let serving = poll_until(Duration::from_secs(30), || {
        writable(cluster.addr(other), 12007)
    });
    assert!(
        serving,
        "the new primary node repaired the interrupted switchover and the endpoint serves writes"
    );
    eprintln!(
        "writable again {:?} after kill -9 of the primary node mid-switchover",
        killed.elapsed()
    );
    let report = flotilla_testkit::stop_load(&rt, load);
    // Commands held past the hold timeout are answered "not executed" (TRYAGAIN): errors, but
    // never a lost acknowledged write.
    assert_eq!(
        report.lost_writes, 0,
        "no acknowledged write lost: {:?}",
        report.lost_write_examples
    );
    let released = poll_until(Duration::from_secs(10), || {
        cluster.shards_at(other).iter().all(|s| s["held"] == false)
    });
    assert!(released, "no slot range stays held");
    let repaired = cluster
        .node_numbers()
        .filter(|n| *n != primary_node)
        .any(|n| {
            let log = std::fs::read_to_string(cluster.data_dir(n).join("flotilla.log"))
                .unwrap_or_default();
            log.contains("switchover interrupted")
        });
    assert!(
        repaired,
        "the new primary node repaired the interrupted switchover"
    );
}
