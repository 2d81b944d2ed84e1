//! Security of a cluster on a machine shared with other users and software (issue 13):
//! - the engines' users: through a database endpoint, a script cannot reach what the proxy
//!   refuses (`EVAL "return redis.call('SWAPDB',0,1)" 0`, CONFIG, DEBUG, MODULE); directly on a
//!   shard the proxy user is refused those; the cluster secret no longer logs in to any shard;
//! - file modes: no file or dir of a node is readable by group or others once a database with
//!   persistence exists (store, identity, engine configs, RDB/AOF, logs);
//! - the upgrade of a cluster made by the real release 0.1.0: in place, then finalized under
//!   load without a client error, after which every engine (started by 0.1.0, never
//!   restarted) refuses the secret as the default user's password and the proxy user cannot
//!   CONFIG; the data dirs 0.1.0 made world-readable are owner-only.
//!
//! Subnets 127.0.176-178.x.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_model::{EngineUsers, PROXY_USER};
use flotilla_testkit::{
    assert_success, flotilla_bin, load_runtime, poll_until, start_load, stop_load_clean,
    DevCluster, Packages,
};
use serde_json::Value;

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

/// The cluster secret, from a node's identity.
fn secret(data_dir: &Path) -> String {
    let identity: Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("identity.json")).unwrap()).unwrap();
    identity["secret"].as_str().unwrap().to_string()
}

/// `ip:port` of every shard of the cluster.
fn shard_addrs(cluster: &DevCluster) -> Vec<String> {
    let shards = cluster.shard_addrs_at(1);
    shards.into_iter().map(|(_, addr)| addr).collect()
}

fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))
}

/// The error `words` get on `conn`, or `None` when they ran.
fn refusal(conn: &mut redis::Connection, words: &[&str]) -> Option<String> {
    let mut cmd = redis::cmd(words[0]);
    for word in &words[1..] {
        cmd.arg(*word);
    }
    cmd.query::<redis::Value>(conn).err().map(|e| e.to_string())
}

/// Shard administration a client must never reach through a script, and the proxy user never
/// directly.
const ADMINISTRATION: &[&[&str]] = &[
    &["SWAPDB", "0", "1"],
    &["CONFIG", "SET", "dir", "/tmp"],
    &["CONFIG", "SET", "dbfilename", "x.rdb"],
    &["DEBUG", "SLEEP", "0"],
    &["MODULE", "LIST"],
    &["SELECT", "1"],
    &["MIGRATE", "127.0.0.1", "1", "k", "0", "10"],
    &["SLOWLOG", "GET"],
    &["SAVE"],
    &["SHUTDOWN", "NOSAVE"],
];

#[test]
fn scripts_and_the_proxy_user_cannot_administer_shards_and_the_secret_logs_in_nowhere() {
    let cluster = DevCluster::up(&bin(), 176, 2);
    // redis-6.2: the engine on which the issue reached SWAPDB, MIGRATE and SLOWLOG from EVAL.
    cluster.create_replicated_db("acl", 12000, "redis-6.2");
    assert_engines_refuse_administration(&cluster, 12000);
    cluster.dev_down();
}

/// Through the endpoint on `port`, no script reaches shard administration; on every shard the
/// cluster secret does not log in and the proxy user is refused administration.
fn assert_engines_refuse_administration(cluster: &DevCluster, port: u16) {
    let endpoint = format!("redis://{}:{port}/", cluster.addr(1));
    let mut client = connect(&endpoint).expect("connect through the endpoint");
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut client)
        .unwrap();
    for words in ADMINISTRATION {
        let args: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let script = format!("return redis.call({})", args.join(","));
        let text = refusal(&mut client, &["EVAL", &script, "0"])
            .unwrap_or_else(|| panic!("EVAL {script} ran through the endpoint"));
        assert!(
            text.contains("can't run this command") || text.contains("not allowed from script"),
            "EVAL {script} refused for another reason: {text}"
        );
    }
    let got: String = redis::cmd("GET").arg("k").query(&mut client).unwrap();
    assert_eq!(got, "v", "the data path still works");

    let secret = secret(&cluster.data_dir(1));
    let proxy = EngineUsers::derive(&secret).proxy;
    let shards = shard_addrs(cluster);
    assert_eq!(shards.len(), 4);
    for shard in &shards {
        let err = connect(&format!("redis://:{secret}@{shard}/"))
            .err()
            .unwrap_or_else(|| panic!("the cluster secret logged in to shard {shard}"));
        assert_eq!(
            err.kind(),
            redis::ErrorKind::AuthenticationFailed,
            "{shard}: {err}"
        );
        let mut as_proxy = connect(&format!("redis://{PROXY_USER}:{proxy}@{shard}/"))
            .unwrap_or_else(|e| panic!("the proxy user cannot log in to {shard}: {e}"));
        for words in ADMINISTRATION {
            let text = refusal(&mut as_proxy, words)
                .unwrap_or_else(|| panic!("the proxy user ran {words:?} on {shard}"));
            assert!(
                text.contains("NOPERM") || text.contains("no permissions"),
                "{words:?} on {shard} refused for another reason: {text}"
            );
        }
    }
}

/// The mode of every file and dir under `root` (itself included), symlinks aside; an entry
/// gone while walking (an engine's temp file) is skipped.
fn modes(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
        found.push((path, meta.permissions().mode() & 0o777));
    }
    found
}

/// Every file or dir under `root` that group or others may read, write or enter.
fn readable_by_others(root: &Path) -> Vec<String> {
    modes(root)
        .into_iter()
        .filter(|(_, mode)| mode & 0o077 != 0)
        .map(|(path, mode)| format!("{mode:o} {}", path.display()))
        .collect()
}

#[test]
fn no_node_file_is_readable_by_group_or_others() {
    let cluster = DevCluster::up(&bin(), 177, 2);
    cluster.create_db(&[
        "--name",
        "kept",
        "--port",
        "12000",
        "--memory",
        "100mb",
        "--shards",
        "1",
        "--replication",
        "--persistence",
        "snapshot",
        "--redis-version",
        "valkey-9.1",
    ]);
    let endpoint = format!("redis://{}:12000/", cluster.addr(1));
    let mut client = connect(&endpoint).unwrap();
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut client)
        .unwrap();
    let aof = cluster.create_db(&[
        "--name",
        "logged",
        "--port",
        "12001",
        "--memory",
        "100mb",
        "--shards",
        "1",
        "--persistence",
        "aof",
        "--redis-version",
        "redis-7.0",
    ]);
    assert!(aof["uid"].is_u64());
    // A snapshot on disk: the engines write their RDB files under the daemon's umask.
    let secret = secret(&cluster.data_dir(1));
    let admin = EngineUsers::derive(&secret).admin;
    for shard in shard_addrs(&cluster) {
        let url = format!("redis://{}:{admin}@{shard}/", flotilla_model::ADMIN_USER);
        let mut engine = connect(&url).unwrap();
        let _: redis::Value = redis::cmd("SAVE").query(&mut engine).unwrap();
    }
    let mut offenders = Vec::new();
    let mut files = 0;
    for n in cluster.node_numbers() {
        let dir = cluster.data_dir(n);
        for name in ["store.redb", "identity.json", "flotilla.log", "shards"] {
            assert!(dir.join(name).exists(), "{} has no {name}", dir.display());
        }
        files += modes(&dir).len();
        offenders.extend(readable_by_others(&dir));
    }
    assert!(files > 20, "only {files} entries walked");
    assert!(
        offenders.is_empty(),
        "readable by group or others:\n{}",
        offenders.join("\n")
    );
    cluster.dev_down();
}

/// Whether the cluster secret still logs in to `shard` as the default user.
fn secret_logs_in(secret: &str, shard: &str) -> bool {
    connect(&format!("redis://:{secret}@{shard}/")).is_ok()
}

/// Polls (30 s at most) until `problems` finds none on any shard; panics listing the last ones.
fn wait_every_shard(shards: &[String], what: &str, problems: impl Fn(&str) -> Vec<String>) {
    let all = || -> Vec<String> { shards.iter().flat_map(|s| problems(s)).collect() };
    if !poll_until(Duration::from_secs(30), || all().is_empty()) {
        panic!("{what}, after finalization, does not hold: {:#?}", all());
    }
}

/// The engine's client connections logged in as the default user, replicas' links aside (a
/// replica that synced before the move keeps its link until it reconnects).
fn default_clients(admin: &str, shard: &str) -> Vec<String> {
    let Ok(mut engine) = connect(&format!("redis://{admin}@{shard}/")) else {
        return vec![format!("{shard}: the admin user cannot log in")];
    };
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut engine)
        .unwrap_or_default();
    list.lines()
        .filter(|line| line.contains(" user=default"))
        .filter(|line| {
            !line
                .split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('S'))
        })
        .map(|line| format!("{shard}: {line}"))
        .collect()
}

#[test]
fn a_cluster_made_by_0_1_0_moves_to_the_engine_users_at_finalization_under_load() {
    let packages = Packages::shared(&bin());
    let v010 = packages.release_0_1_0();
    let (_, v021) = packages.current_pair();
    let cluster = DevCluster::up_from_package(&bin(), 178, 3, &v010);
    cluster.create_replicated_db("old", 12000, "redis-6.2");
    let secret = secret(&cluster.data_dir(1));
    let shards = shard_addrs(&cluster);
    assert!(
        shards.iter().all(|s| secret_logs_in(&secret, s)),
        "0.1.0 runs every engine with the secret as the default user's password"
    );
    let before = readable_by_others(&cluster.data_dir(1));
    assert!(!before.is_empty(), "0.1.0 leaves its files world-readable");

    let package = v021.to_string_lossy().into_owned();
    for node in [2, 3, 1] {
        let node = node.to_string();
        let args = [
            "upgrade",
            "node",
            &node,
            "--package",
            &package,
            "--yes",
            "--no-auto-finalize",
        ];
        assert_success(&cluster.flotilla(&args), &format!("upgrade node {node}"));
    }
    // Mixed until finalization: the engines 0.1.0 started keep the default user.
    assert!(shards.iter().all(|s| secret_logs_in(&secret, s)));

    let rt = load_runtime();
    let load = start_load(&rt, format!("{}:12000", cluster.addr(1)));
    assert_success(
        &cluster.flotilla(&["upgrade", "finalize"]),
        "upgrade finalize",
    );
    wait_every_shard(&shards, "the secret no longer logs in", |s| {
        if secret_logs_in(&secret, s) {
            vec![format!("{s}: the secret logs in")]
        } else {
            Vec::new()
        }
    });
    // The proxies' shard connections, opened as the default user before, move to the proxy
    // user while the load keeps going.
    let admin = format!(
        "{}:{}",
        flotilla_model::ADMIN_USER,
        EngineUsers::derive(&secret).admin
    );
    wait_every_shard(&shards, "no connection as the default user", |s| {
        default_clients(&admin, s)
    });
    let report = stop_load_clean(&rt, load);
    eprintln!(
        "finalization under load: {} ops, longest stall {:.1} ms",
        report.ops, report.longest_stall_ms
    );
    assert_engines_refuse_administration(&cluster, 12000);
    for n in cluster.node_numbers() {
        let offenders = readable_by_others(&cluster.data_dir(n));
        assert!(
            offenders.is_empty(),
            "node {n} after the upgrade, readable by group or others:\n{}",
            offenders.join("\n")
        );
    }
    cluster.dev_down();
}
