//! A database's engine settings (issue 16), against real daemons and engines: `CONFIG SET`
//! through an endpoint is kept in the store and applied to every shard, so a failover (kill -9
//! of the master engine) and an engine upgrade (redis-6.2, which knows only the `ziplist`
//! names, to redis-7.0) keep it, read back through the endpoint and on each engine directly
//! (as the admin user); settings outside Redis Software's subset are refused naming the
//! setting; `db set --config` and REST `PUT /v1/bdbs/UID` take the same settings with the same
//! checks.
//!
//! Subnet 127.0.152.x.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_testkit::{
    assert_success, endpoint_connection, flotilla_bin, poll_until, runtime, DevCluster,
};
use serde_json::Value;

const PORT: u16 = 12152;

fn bin() -> PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

/// The engines' admin login (derived from the cluster secret in a node's identity).
fn admin_password(data_dir: &Path) -> String {
    let identity: Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("identity.json")).unwrap()).unwrap();
    flotilla_model::EngineUsers::derive(identity["secret"].as_str().unwrap()).admin
}

/// `CONFIG GET name` on one shard's engine directly, as the admin user (`None`: the engine
/// does not know the name or does not answer).
fn engine_setting(cluster: &DevCluster, shard: &Value, name: &str) -> Option<String> {
    let node = shard["node_uid"].as_u64().unwrap() as u8;
    let url = format!(
        "redis://{}:{}@{}:{}/",
        flotilla_model::ADMIN_USER,
        admin_password(&cluster.data_dir(1)),
        cluster.addr(node),
        shard["port"]
    );
    let client = redis::Client::open(url).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .ok()?;
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query(&mut conn)
        .ok()?;
    pair.into_iter().nth(1)
}

/// The database's shards as node 1 answers.
fn shards(cluster: &DevCluster) -> Vec<Value> {
    cluster.shards_at(1)
}

/// Every shard's engine answers `name` = `value` (bounded wait: a restarted engine gets the
/// database's settings from its agent).
fn every_engine_has(cluster: &DevCluster, name: &str, value: &str) -> bool {
    poll_until(Duration::from_secs(30), || {
        let all = shards(cluster);
        !all.is_empty()
            && all
                .iter()
                .all(|s| engine_setting(cluster, s, name).as_deref() == Some(value))
    })
}

/// `CONFIG GET name` through the endpoint, as name/value pairs.
fn endpoint_get(conn: &mut redis::Connection, name: &str) -> Vec<String> {
    redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query(conn)
        .unwrap_or_else(|e| panic!("CONFIG GET {name} through the endpoint: {e}"))
}

fn endpoint_error(conn: &mut redis::Connection, args: &[&str]) -> String {
    let result: redis::RedisResult<redis::Value> = redis::cmd("CONFIG").arg(args).query(conn);
    match result {
        Err(e) => e.to_string(),
        Ok(v) => panic!("CONFIG {args:?} was accepted: {v:?}"),
    }
}

fn master(cluster: &DevCluster) -> Value {
    shards(cluster)
        .into_iter()
        .find(|s| s["role"] == "master")
        .expect("the database has a master shard")
}

#[test]
fn config_set_through_an_endpoint_survives_a_failover_and_an_engine_upgrade() {
    let cluster = DevCluster::up(&bin(), 152, 2);
    cluster.create_replicated_db_of("tuned", PORT, "redis-6.2", 1);
    let mut conn = endpoint_connection(cluster.addr(2), PORT);

    // The Redis 7 name is mapped to the name redis-6.2 knows; OK means every primary runs it.
    let started = Instant::now();
    let ok: String = redis::cmd("CONFIG")
        .arg("SET")
        .arg("hash-max-listpack-entries")
        .arg("64")
        .arg("slowlog-max-len")
        .arg("200")
        .query(&mut conn)
        .expect("CONFIG SET through the endpoint");
    eprintln!("CONFIG SET answered {ok} after {:?}", started.elapsed());
    assert_eq!(ok, "OK");
    assert_eq!(
        endpoint_get(&mut conn, "hash-max-ziplist-entries"),
        ["hash-max-ziplist-entries", "64"],
        "read back on the same connection at once"
    );
    let primary = master(&cluster);
    assert_eq!(
        engine_setting(&cluster, &primary, "hash-max-ziplist-entries").as_deref(),
        Some("64"),
        "the primary engine runs the setting when OK is answered"
    );
    assert!(every_engine_has(&cluster, "hash-max-ziplist-entries", "64"));
    let started = Instant::now();
    assert!(every_engine_has(&cluster, "slowlog-max-len", "200"));
    eprintln!(
        "the replica had slowlog-max-len within {:?} more",
        started.elapsed()
    );

    // A glob answers the matching settings the engine has; anything else is refused by name.
    let matched = endpoint_get(&mut conn, "*max-*-entries*");
    for name in [
        "hash-max-ziplist-entries",
        "zset-max-ziplist-entries",
        "set-max-intset-entries",
    ] {
        assert!(matched.iter().any(|m| m == name), "{name} in {matched:?}");
    }
    // As Redis's glob: `*max-*-entries*` needs a dash between `max-` and `entries`.
    assert!(
        !matched.iter().any(|m| m == "stream-node-max-entries"),
        "{matched:?}"
    );
    assert!(
        !matched.iter().any(|m| m.starts_with("maxmemory")),
        "{matched:?}"
    );
    let refused = endpoint_error(&mut conn, &["SET", "maxmemory", "1"]);
    assert!(
        refused.contains("'maxmemory' is not configurable per database"),
        "{refused}"
    );
    let refused = endpoint_error(&mut conn, &["GET", "requirepass"]);
    assert!(refused.contains("'requirepass'"), "{refused}");
    let refused = endpoint_error(&mut conn, &["SET", "busy-reply-threshold", "70000"]);
    assert!(refused.contains("between 0 and 60000"), "{refused}");

    // The persistence settings are read, and may be set only to what they are (Redis's own
    // test suite sets `save ""` at the start of its units); a change is refused by name.
    assert_eq!(endpoint_get(&mut conn, "save"), ["save", ""]);
    assert_eq!(endpoint_get(&mut conn, "appendonly"), ["appendonly", "no"]);
    let same: String = redis::cmd("CONFIG")
        .arg("SET")
        .arg("save")
        .arg("")
        .arg("appendonly")
        .arg("no")
        .query(&mut conn)
        .expect("CONFIG SET of the persistence settings' current values");
    assert_eq!(same, "OK");
    let refused = endpoint_error(&mut conn, &["SET", "save", "60 1"]);
    assert!(
        refused.contains("'save' is set by the database's persistence"),
        "{refused}"
    );
    assert_eq!(
        engine_setting(&cluster, &master(&cluster), "save").as_deref(),
        Some(""),
        "a refused change reaches no engine"
    );

    // Failover: kill -9 of the master engine; the promoted replica and the restarted engine
    // keep the setting.
    let node = primary["node_uid"].as_u64().unwrap() as u8;
    let old = primary["uid"].as_u64().unwrap();
    let pid = cluster.engine_pid(node, old);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 of our own engine");
    let started = Instant::now();
    assert!(
        poll_until(Duration::from_secs(30), || master(&cluster)["uid"] != old),
        "the replica was promoted"
    );
    eprintln!("failover took {:?}", started.elapsed());
    let promoted = master(&cluster);
    assert_eq!(
        engine_setting(&cluster, &promoted, "hash-max-ziplist-entries").as_deref(),
        Some("64")
    );
    assert!(
        every_engine_has(&cluster, "hash-max-ziplist-entries", "64"),
        "the restarted engine got the setting back"
    );
    let mut conn = endpoint_connection(cluster.addr(1), PORT);
    assert_eq!(
        endpoint_get(&mut conn, "hash-max-ziplist-entries"),
        ["hash-max-ziplist-entries", "64"]
    );

    // Upgrade to redis-7.0: both names read back the setting, on the endpoint and the engines.
    assert!(
        poll_until(Duration::from_secs(60), || shards(&cluster)
            .iter()
            .all(|s| s["status"] == "active")),
        "every shard active before the upgrade"
    );
    let output = cluster.flotilla(&["db", "upgrade", "tuned", "--redis-version", "redis-7.0"]);
    assert_success(&output, "db upgrade to redis-7.0");
    assert!(
        poll_until(Duration::from_secs(60), || shards(&cluster).iter().all(
            |s| s["redis_version"] == "redis-7.0" && s["status"] == "active"
        )),
        "every shard runs redis-7.0"
    );
    assert!(every_engine_has(
        &cluster,
        "hash-max-listpack-entries",
        "64"
    ));
    assert!(every_engine_has(&cluster, "slowlog-max-len", "200"));
    let mut conn = endpoint_connection(cluster.addr(2), PORT);
    assert_eq!(
        endpoint_get(&mut conn, "hash-max-listpack-entries"),
        ["hash-max-listpack-entries", "64"]
    );
    assert_eq!(
        endpoint_get(&mut conn, "hash-max-ziplist-entries"),
        ["hash-max-ziplist-entries", "64"]
    );

    // `db set --config` and REST take the same settings, with the same checks.
    let output = cluster.flotilla(&["db", "set", "tuned", "--config", "list-max-ziplist-size=-1"]);
    assert_success(&output, "db set --config");
    assert!(every_engine_has(&cluster, "list-max-listpack-size", "-1"));
    let shown = cluster.json(1, &["db", "show", "tuned", "--json"]);
    assert_eq!(shown["config"]["list-max-listpack-size"], "-1", "{shown}");
    let output = cluster.flotilla(&["db", "set", "tuned", "--config", "maxmemory=1"]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("'maxmemory' is not configurable per database"),
        "{text}"
    );
    let uid = shown["uid"].as_u64().unwrap();
    let refused = runtime().block_on(cluster.client(2).update_bdb(
        uid,
        &flotilla_model::rest::BdbUpdate {
            config: [("save".to_string(), "60 1".to_string())].into(),
            ..Default::default()
        },
    ));
    let text = refused.expect_err("REST refuses save").to_string();
    assert!(
        text.contains("'save' is not configurable per database"),
        "{text}"
    );
    let updated = runtime()
        .block_on(cluster.client(2).update_bdb(
            uid,
            &flotilla_model::rest::BdbUpdate {
                config: [("notify-keyspace-events".to_string(), "KEA".to_string())].into(),
                ..Default::default()
            },
        ))
        .expect("REST sets notify-keyspace-events");
    assert_eq!(updated.config["notify-keyspace-events"], "KEA");
    assert!(every_engine_has(&cluster, "notify-keyspace-events", "AKE"));
}
