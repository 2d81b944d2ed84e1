//! INFO, COMMAND and the introspection commands through a database endpoint, held against
//! what the engines behind it answer directly. Each test owns a loopback subnet (127.0.S.x).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use flotilla_testkit::{endpoint_connection, flotilla_bin, poll_until, DevCluster};
use serde_json::Value;

fn bin() -> std::path::PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

/// Admin connections to the primary shards of database `bdb_uid`, in slot order.
fn primaries(cluster: &DevCluster, bdb_uid: u64) -> Vec<redis::Connection> {
    let admin = cluster.engine_admin();
    let mut shards: Vec<(Value, String)> = cluster
        .shard_addrs_at(1)
        .into_iter()
        .filter(|(s, _)| s["bdb_uid"] == bdb_uid && s["role"] == "master")
        .collect();
    // `assigned_slots` is written `start-end`.
    let first_slot = |s: &Value| -> u16 {
        let range = s["assigned_slots"].as_str().unwrap();
        range.split('-').next().unwrap().parse().unwrap()
    };
    shards.sort_by_key(|(s, _)| first_slot(s));
    shards
        .iter()
        .map(|(_, addr)| {
            redis::Client::open(format!("redis://{admin}@{addr}/"))
                .unwrap()
                .get_connection_with_timeout(Duration::from_secs(2))
                .expect("admin connection to a shard")
        })
        .collect()
}

/// `INFO` text as `field -> value` (sections dropped).
fn fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn info(conn: &mut redis::Connection, section: &[&str]) -> BTreeMap<String, String> {
    let text: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    fields(&text)
}

/// `keys=10,expires=4,avg_ttl=0` as numbers.
fn keyspace(line: &str) -> BTreeMap<String, i64> {
    line.split(',')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

fn create(cluster: &DevCluster, name: &str, port: u16, shards: u8, engine: &str) -> u64 {
    let port = port.to_string();
    let shards = shards.to_string();
    let bdb = cluster.create_db(&[
        "--name",
        name,
        "--port",
        &port,
        "--memory",
        "200mb",
        "--shards",
        &shards,
        "--replication",
        "--redis-version",
        engine,
    ]);
    bdb["uid"].as_u64().unwrap()
}

#[test]
fn info_and_command_answer_like_the_engine_over_every_shard() {
    let cluster = DevCluster::up(&bin(), 156, 2);
    let r7 = create(&cluster, "r7", 12000, 3, "redis-7.0");
    let vk = create(&cluster, "vk", 12001, 2, "valkey-8.1");
    let addr: Ipv4Addr = cluster.addr(1);

    let mut client = endpoint_connection(addr, 12000);
    let mut pipe = redis::pipe();
    for i in 0..300 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
    }
    for i in 0..90 {
        pipe.cmd("SET")
            .arg(format!("ttl:{i}"))
            .arg(i)
            .arg("EX")
            .arg(1000)
            .ignore();
    }
    let () = pipe.query(&mut client).unwrap();

    // INFO keyspace: the sum over the 3 primaries, equal to DBSIZE.
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut client).unwrap();
    assert_eq!(dbsize, 390);
    let merged = keyspace(&info(&mut client, &["keyspace"])["db0"]);
    let mut shards = primaries(&cluster, r7);
    assert_eq!(shards.len(), 3);
    let per_shard: Vec<BTreeMap<String, i64>> = shards
        .iter_mut()
        .map(|s| keyspace(&info(s, &["keyspace"])["db0"]))
        .collect();
    eprintln!("INFO keyspace through the endpoint: {merged:?}; per shard: {per_shard:?}");
    assert_eq!(merged["keys"], dbsize, "INFO keyspace keys equal DBSIZE");
    assert_eq!(merged["expires"], 90);
    for shard in &per_shard {
        assert!(shard["keys"] < dbsize, "every shard holds part of the keys");
    }
    assert_eq!(per_shard.iter().map(|s| s["keys"]).sum::<i64>(), dbsize);
    // avg_ttl is each engine's running estimate (0 until it sampled); combined, it is weighted
    // by the keys with an expiry, so it stays within the TTL written (1000 s).
    let mut avg_ttl = 0;
    let sampled = poll_until(Duration::from_secs(20), || {
        avg_ttl = keyspace(&info(&mut client, &["keyspace"])["db0"])["avg_ttl"];
        avg_ttl > 0
    });
    eprintln!("combined avg_ttl: {avg_ttl} ms");
    assert!(sampled, "avg_ttl stayed 0");
    assert!((900_000..=1_000_000).contains(&avg_ttl), "{avg_ttl}");

    // INFO (default): the engine's server fields, the endpoint's clients and port, the
    // database as one master, and the Flotilla section.
    let _others: Vec<redis::Connection> =
        (0..3).map(|_| endpoint_connection(addr, 12000)).collect();
    let all = info(&mut client, &[]);
    let engine = info(&mut shards[0], &["server"]);
    for field in [
        "redis_version",
        "redis_git_sha1",
        "redis_mode",
        "os",
        "arch_bits",
    ] {
        assert_eq!(all.get(field), engine.get(field), "{field}");
    }
    assert_eq!(all["redis_version"], "7.0.15");
    assert_eq!(all["tcp_port"], "12000");
    assert!(
        !all.contains_key("executable"),
        "engine paths stay internal"
    );
    let clients: u64 = all["connected_clients"].parse().unwrap();
    assert!(clients >= 4, "the endpoint's own clients: {clients}");
    assert_eq!(all["role"], "master");
    assert_eq!(all["connected_slaves"], "1");
    assert_eq!(all["shards"], "3");
    assert_eq!(all["bdb_uid"], r7.to_string());
    assert!(all.contains_key("flotilla_proxy_version"));
    for field in ["used_memory", "total_commands_processed", "used_cpu_sys"] {
        assert!(all.contains_key(field), "{field} missing");
    }
    let used: u64 = all["used_memory"].parse().unwrap();
    let first: u64 = info(&mut shards[0], &["memory"])["used_memory"]
        .parse()
        .unwrap();
    assert!(
        used > first,
        "used_memory is summed: {used} vs shard 0's {first}"
    );

    // COMMAND from the engine's own table.
    let count: i64 = redis::cmd("COMMAND")
        .arg("COUNT")
        .query(&mut client)
        .unwrap();
    let engine_count: i64 = redis::cmd("COMMAND")
        .arg("COUNT")
        .query(&mut shards[0])
        .unwrap();
    eprintln!("COMMAND COUNT: endpoint {count}, engine {engine_count}");
    assert_eq!(count, engine_count);
    let docs: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("GET")
        .query(&mut client)
        .unwrap();
    let engine_docs: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("GET")
        .query(&mut shards[0])
        .unwrap();
    assert_eq!(docs, engine_docs);
    assert_getkeys_match_the_routing(&mut client);

    let whoami: String = redis::cmd("ACL").arg("WHOAMI").query(&mut client).unwrap();
    assert_eq!(whoami, "default");
    let categories: Vec<String> = redis::cmd("ACL").arg("CAT").query(&mut client).unwrap();
    assert!(categories.iter().any(|c| c == "keyspace"), "{categories:?}");

    assert_slowlog_reads_every_shard(&mut client);

    // Valkey: INFO server is valkey's own.
    let mut valkey = endpoint_connection(addr, 12001);
    let all = info(&mut valkey, &["server"]);
    let engine = info(&mut primaries(&cluster, vk)[0], &["server"]);
    eprintln!(
        "valkey endpoint: server_name={:?} valkey_version={:?} redis_version={:?}",
        all.get("server_name"),
        all.get("valkey_version"),
        all.get("redis_version")
    );
    for field in [
        "redis_version",
        "valkey_version",
        "server_name",
        "redis_git_sha1",
    ] {
        assert!(engine.contains_key(field), "valkey answers {field}");
        assert_eq!(all.get(field), engine.get(field), "{field}");
    }
    assert_eq!(all["server_name"], "valkey");
    assert!(
        !all.contains_key("bdb_uid"),
        "INFO server has no Flotilla section"
    );
    cluster.dev_down();
}

/// COMMAND GETKEYS through the endpoint (the engine's answer) names the keys the proxy routes
/// by, for commands of each key-position kind.
fn assert_getkeys_match_the_routing(client: &mut redis::Connection) {
    let commands: &[&[&str]] = &[
        &["SET", "a", "1", "EX", "10"],
        &["MSET", "a", "1", "b", "2"],
        &["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
        &["EVAL", "return 1", "2", "a", "b", "x"],
        &["XREAD", "COUNT", "1", "STREAMS", "a", "b", "0", "0"],
        &["SORT", "a", "BY", "w", "STORE", "d"],
        &["BLPOP", "a", "b", "0"],
        &["LMPOP", "2", "a", "b", "LEFT"],
        &["GEORADIUS", "a", "0", "0", "1", "km", "STORE", "d"],
        &["OBJECT", "ENCODING", "a"],
        &["MEMORY", "USAGE", "a"],
    ];
    for words in commands {
        let keys: Vec<String> = redis::cmd("COMMAND")
            .arg("GETKEYS")
            .arg(*words)
            .query(client)
            .unwrap_or_else(|e| panic!("COMMAND GETKEYS {words:?}: {e}"));
        let request =
            flotilla_resp::Request::from_argv(words.iter().map(|w| w.to_string().into()).collect())
                .unwrap();
        let mut routed: Vec<String> = flotilla_proxy::request_keys(&request)
            .unwrap()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        let mut engine = keys.clone();
        engine.sort();
        routed.sort();
        assert_eq!(routed, engine, "{words:?}: routing vs the engine's GETKEYS");
    }
    let flags: redis::Value = redis::cmd("COMMAND")
        .arg("GETKEYSANDFLAGS")
        .arg("LMOVE")
        .arg("a")
        .arg("b")
        .arg("LEFT")
        .arg("RIGHT")
        .query(client)
        .unwrap();
    assert!(format!("{flags:?}").contains("RW"), "{flags:?}");
}

/// A command slower than the engines' threshold (10 ms) shows in SLOWLOG through the
/// endpoint, whichever shard ran it; RESET clears every shard; scripts still cannot read it.
fn assert_slowlog_reads_every_shard(client: &mut redis::Connection) {
    // A busy loop: far above 10 ms even on an idle machine.
    let script = "local n = 0 for i = 1, 10000000 do n = n + 1 end return n";
    for key in ["slow-a", "slow-b", "slow-c"] {
        let started = std::time::Instant::now();
        let _: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg(key)
            .query(client)
            .unwrap();
        eprintln!("slow EVAL on {key}: {:?}", started.elapsed());
    }
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(client)
        .unwrap();
    let text = format!("{entries:?}");
    for key in ["slow-a", "slow-b", "slow-c"] {
        assert!(
            text.contains(key),
            "SLOWLOG GET has the EVAL on {key}: {text}"
        );
    }
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(client).unwrap();
    eprintln!("SLOWLOG LEN through the endpoint: {len}");
    assert!(len >= 3, "{len}");
    let newest: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1)
        .query(client)
        .unwrap();
    assert_eq!(newest.len(), 1, "GET 1: one entry of all shards'");
    let () = redis::cmd("SLOWLOG").arg("RESET").query(client).unwrap();
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(client)
        .unwrap();
    assert!(!format!("{entries:?}").contains("slow-"), "{entries:?}");
    let err = redis::cmd("EVAL")
        .arg("return redis.call('SLOWLOG', 'GET')")
        .arg(0)
        .query::<redis::Value>(client)
        .unwrap_err();
    assert!(
        err.to_string().contains("can't run this command") || err.to_string().contains("NOPERM"),
        "a script reached SLOWLOG: {err}"
    );
}

#[test]
fn functions_load_on_every_shard_and_fcall_routes_by_key() {
    let cluster = DevCluster::up(&bin(), 157, 2);
    let uid = create(&cluster, "fn", 12000, 3, "redis-7.0");
    let mut client = endpoint_connection(cluster.addr(1), 12000);
    let library = "#!lua name=flib\n\
        redis.register_function('setget', function(keys, args) \
          redis.call('SET', keys[1], args[1]) return redis.call('GET', keys[1]) end)";
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(library)
        .query(&mut client)
        .unwrap();
    assert_eq!(name, "flib");
    // Keys of all three shards (slots 0-5460, 5461-10922, 10923-16383).
    let keys = ["a", "b", "c"];
    let slots: Vec<u16> = keys
        .iter()
        .map(|k| flotilla_proxy::key_slot(k.as_bytes()))
        .collect();
    assert!(slots.iter().any(|&s| s < 5461) && slots.iter().any(|&s| s >= 10923));
    for key in keys {
        let got: String = redis::cmd("FCALL")
            .arg("setget")
            .arg(1)
            .arg(key)
            .arg(format!("v-{key}"))
            .query(&mut client)
            .unwrap_or_else(|e| panic!("FCALL on {key}: {e}"));
        assert_eq!(got, format!("v-{key}"));
    }
    for (i, shard) in primaries(&cluster, uid).iter_mut().enumerate() {
        let list: redis::Value = redis::cmd("FUNCTION").arg("LIST").query(shard).unwrap();
        assert!(
            format!("{list:?}").contains("flib"),
            "shard {i} has the library"
        );
    }
    let stats: redis::Value = redis::cmd("FUNCTION")
        .arg("STATS")
        .query(&mut client)
        .unwrap();
    assert!(format!("{stats:?}").contains("LUA"), "{stats:?}");
    let () = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("flib")
        .query(&mut client)
        .unwrap();
    let err = redis::cmd("FCALL")
        .arg("setget")
        .arg(1)
        .arg("a")
        .arg("x")
        .query::<String>(&mut client)
        .unwrap_err();
    assert!(err.to_string().contains("Function not found"), "{err}");
    cluster.dev_down();
}

/// The field names of a CLIENT INFO line, in order.
fn field_names(line: &str) -> Vec<String> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, _)| k.to_string())
        .collect()
}

/// A CLIENT INFO line as `field -> value`.
fn client_fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn client_error(client: &mut redis::Connection, args: &[&str]) -> String {
    redis::cmd("CLIENT")
        .arg(args)
        .query::<redis::Value>(client)
        .expect_err("an error reply")
        .to_string()
}

/// CLIENT INFO / CLIENT LIST through an endpoint: the engine's own field list and order (Redis
/// 7.0's and Valkey 8.1's differ), with the caller's connection's values; CLIENT KILL's and
/// CLIENT LIST's arguments checked as the engine checks them; CLIENT PAUSE refused as Redis
/// Software refuses it.
#[test]
fn client_info_lists_the_engines_fields_for_the_callers_connection() {
    let cluster = DevCluster::up(&bin(), 165, 2);
    let r7 = create(&cluster, "r7", 12000, 1, "redis-7.0");
    let vk = create(&cluster, "vk", 12001, 1, "valkey-8.1");
    for (uid, port) in [(r7, 12000), (vk, 12001)] {
        let mut client = endpoint_connection(cluster.addr(1), port);
        let mut shard = primaries(&cluster, uid).remove(0);
        let direct: String = redis::cmd("CLIENT").arg("INFO").query(&mut shard).unwrap();
        let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut client).unwrap();
        let () = redis::cmd("CLIENT")
            .arg(&["SETNAME", "app"][..])
            .query(&mut client)
            .unwrap();
        let () = redis::cmd("CLIENT")
            .arg(&["NO-EVICT", "on"][..])
            .query(&mut client)
            .unwrap();
        let line: String = redis::cmd("CLIENT").arg("INFO").query(&mut client).unwrap();
        eprintln!("port {port}: direct {direct}through the endpoint {line}");
        assert_eq!(field_names(&line), field_names(&direct), "{line}");
        let fields = client_fields(&line);
        assert_eq!(fields["id"], id.to_string());
        assert_eq!(fields["name"], "app");
        assert_eq!(fields["flags"], "e");
        assert_eq!(fields["multi"], "-1");
        assert_eq!(fields["sub"], "0");
        assert_eq!(fields["cmd"], "client|info");
        assert_eq!(fields["user"], "default");
        assert_eq!(fields["db"], "0");

        let mine: String = redis::cmd("CLIENT")
            .arg(&["LIST", "ID", &id.to_string()][..])
            .query(&mut client)
            .unwrap();
        assert_eq!(mine.lines().count(), 1, "{mine}");
        assert_eq!(client_fields(&mine)["cmd"], "client|list");
        let pubsub: String = redis::cmd("CLIENT")
            .arg(&["LIST", "TYPE", "pubsub"][..])
            .query(&mut client)
            .unwrap();
        assert_eq!(pubsub, "");
        let wrong = client_error(&mut client, &["LIST", "TYPE", "wrong"]);
        assert!(wrong.contains("Unknown client type"), "{wrong}");

        for (args, expected) in [
            (&["KILL"][..], "wrong number of arguments for 'client|kill'"),
            (&["KILL", "ID", "10", "wrong_arg"], "syntax error"),
            // Valkey 8's filter parser calls an id that is not a number a syntax error.
            (
                &["KILL", "ID", "str"],
                if port == 12000 {
                    "greater than 0"
                } else {
                    "syntax error"
                },
            ),
            (&["KILL", "ID", "0"], "greater than 0"),
            (&["KILL", "TYPE", "wrong_type"], "Unknown client type"),
            (&["KILL", "USER", "wrong_user"], "No such user"),
            (&["KILL", "SKIPME", "yes_or_no"], "syntax error"),
            (&["PAUSE", "100"], "Redis Software"),
        ] {
            let err = client_error(&mut client, args);
            assert!(err.contains(expected), "CLIENT {args:?}: {err}");
        }

        // MONITOR: the database clients' commands, without the cluster's own traffic (the
        // agent's INFO, PING, CLIENT... every fraction of a second).
        let mut monitor = endpoint_connection(cluster.addr(1), port);
        let ok: String = redis::cmd("MONITOR").query(&mut monitor).unwrap();
        assert_eq!(ok, "OK");
        monitor
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let () = redis::cmd("SET")
            .arg("monitored")
            .arg(port)
            .query(&mut client)
            .unwrap();
        let line: String = redis::from_redis_value(monitor.recv_response().unwrap()).unwrap();
        // The command as the client sent it (redis-rs sends `SET`).
        assert!(
            line.contains(&format!("\"SET\" \"monitored\" \"{port}\"")),
            "{line}"
        );
    }
    cluster.dev_down();
}
