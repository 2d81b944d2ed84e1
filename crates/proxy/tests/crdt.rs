//! An Active-Active instance's endpoint (issue 15) on real redis-7.0 shards: the same scripted
//! commands through a CRDB endpoint and a plain one give the same replies; unsupported writes are
//! refused by name; the hidden metadata never shows; pipelines keep their order; the op log gets
//! one entry per effective write; two instances converge; a write a demoted primary refused runs
//! on the next one. Addresses: 127.0.234.1 - 127.0.234.10 (endpoint port 12000, shards 20001+).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Setup;
use flotilla_proxy::CrdtInstance;
use redis::Value;

/// Starts `shards` engines with an endpoint serving instance 1 of a CRDB.
async fn crdb_setup(ip: &str, shards: usize) -> Setup {
    crdb_setup_engines(ip, shards, shards).await
}

/// Starts `engines` engines, the first `shards` serving instance 1 of a CRDB.
async fn crdb_setup_engines(ip: &str, engines: usize, shards: usize) -> Setup {
    let setup = Setup::start(ip, engines, shards, None).await;
    let next = setup
        .topology
        .borrow()
        .clone()
        .with_crdt(Some(CrdtInstance {
            replica_id: 1,
            protocol_version: 1,
        }));
    setup.topology.send(next).unwrap();
    setup
}

/// Sends one command; an error reply becomes its text.
async fn run(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> Result<Value, String> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async::<Value>(conn).await.map_err(|e| {
        // The error's code and message, without the client library's wording around it.
        match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            _ => e.to_string(),
        }
    })
}

/// Replies whose order the engine does not define (sets, hashes, key listings) are sorted.
fn normalize(command: &str, reply: Result<Value, String>) -> Result<Value, String> {
    let unordered = matches!(
        command,
        "SMEMBERS" | "HGETALL" | "HKEYS" | "HVALS" | "KEYS" | "SINTER" | "SUNION"
    );
    match reply {
        Ok(Value::Set(items)) if unordered => {
            let mut items: Vec<String> = items.iter().map(|v| format!("{v:?}")).collect();
            items.sort();
            Ok(Value::Set(
                items.into_iter().map(Value::SimpleString).collect(),
            ))
        }
        Ok(Value::Array(items)) if unordered => {
            let mut items: Vec<String> = items.iter().map(|v| format!("{v:?}")).collect();
            if command == "HGETALL" {
                let mut pairs: Vec<String> = items.chunks(2).map(|p| p.join("=")).collect();
                pairs.sort();
                items = pairs;
            } else {
                items.sort();
            }
            Ok(Value::Array(
                items.into_iter().map(Value::SimpleString).collect(),
            ))
        }
        Ok(Value::Map(pairs)) if unordered => {
            let mut items: Vec<String> = pairs.iter().map(|p| format!("{p:?}")).collect();
            items.sort();
            Ok(Value::Array(
                items.into_iter().map(Value::SimpleString).collect(),
            ))
        }
        other => other,
    }
}

/// Every supported write form, with reads after them, as one script.
fn script() -> Vec<Vec<&'static str>> {
    let lines: &[&str] = &[
        // Strings
        "SET s hello",
        "GET s",
        "SET s world NX",
        "SET s2 v XX",
        "SET s again XX GET",
        "SET s2 first NX GET",
        "SET s3 x EX 100",
        "TTL s3",
        "SET s3 y KEEPTTL",
        "TTL s3",
        "SET s3 z",
        "TTL s3",
        "SET s4 v PX 0",
        "SET s4 v EX abc",
        "SET s4 v NX XX",
        "SETNX s5 a",
        "SETNX s5 b",
        "GET s5",
        "SETEX s6 100 v",
        "TTL s6",
        "SETEX s6 0 v",
        "PSETEX s7 100000 v",
        "TTL s7",
        "GETSET s5 c",
        "GETSET nothere c",
        "GETDEL s5",
        "GETDEL s5",
        "EXISTS s5",
        "MSET {m}a 1 {m}b 2 {m}a 3",
        "MGET {m}a {m}b",
        "MSETNX {m}c 1 {m}a 2",
        "MSETNX {m}c 1 {m}d 2",
        "APPEND ap abc",
        "APPEND ap def",
        "GET ap",
        "SETRANGE ap 1 XY",
        "SETRANGE sr 3 hi",
        "GET sr",
        "SETRANGE sr 0 \"\"",
        "SETRANGE sr -1 x",
        "INCR c",
        "INCRBY c 10",
        "DECR c",
        "DECRBY c 3",
        "GET c",
        "INCRBY c notanumber",
        "INCR s",
        "INCRBYFLOAT f 1.5",
        "INCRBYFLOAT f 2",
        "INCRBYFLOAT f x",
        "GET f",
        "TYPE c",
        // Hashes
        "HSET h a 1 b 2",
        "HSET h a 10 c 3",
        "HMSET h d 4",
        "HSETNX h a 100",
        "HSETNX h e 5",
        "HDEL h a zz",
        "HDEL h zz",
        "HINCRBY h n 5",
        "HINCRBY h n -2",
        "HINCRBY h b 1",
        "HINCRBY h e x",
        "HINCRBYFLOAT h fl 0.5",
        "HGETALL h",
        "HLEN h",
        "HSET h odd",
        "HSET s f v",
        // Sets
        "SADD set a b c",
        "SADD set a d",
        "SREM set a zz",
        "SREM set zz",
        "SMEMBERS set",
        "SCARD set",
        "SMOVE set {set}other b",
        "SMOVE set set c",
        "SMOVE set set zz",
        "SADD s x",
        // Sorted sets
        "ZADD z 1 a 2 b",
        "ZADD z NX 5 a 3 c",
        "ZADD z XX 7 a 9 d",
        "ZADD z XX CH 8 a 2 b",
        "ZADD z GT CH 1 a 10 b",
        "ZADD z LT CH 0 c",
        "ZADD z INCR 2 a",
        "ZADD z NX INCR 2 a",
        "ZADD z NX XX 1 a",
        "ZADD z GT LT 1 a",
        "ZADD z INCR 1 a 2 b",
        "ZADD z 1",
        "ZADD z x a",
        "ZINCRBY z 1.5 b",
        "ZINCRBY z 3 newm",
        "ZREM z c zz",
        "ZRANGE z 0 -1 WITHSCORES",
        "ZSCORE z a",
        // Lists
        "RPUSH l a b c",
        "LPUSH l x y",
        "LPUSHX l p",
        "LPUSHX nolist p",
        "RPUSHX l q",
        "LRANGE l 0 -1",
        "LINSERT l BEFORE a ins",
        "LINSERT l AFTER zz ins",
        "LINSERT nolist AFTER a ins",
        "LINSERT l MIDDLE a ins",
        "LPOP l",
        "RPOP l",
        "LPOP l 2",
        "RPOP l 0",
        "LPOP nolist",
        "LPOP nolist 2",
        "RPUSH l a a b a",
        "LREM l 2 a",
        "LREM l -1 a",
        "LRANGE l 0 -1",
        "LSET l 0 first",
        "LSET l 100 x",
        "LSET nolist 0 x",
        "LTRIM l 1 -1",
        "LRANGE l 0 -1",
        "LPUSH s x",
        // Keys
        "EXPIRE set 100",
        "TTL set",
        "EXPIRE set 50 GT",
        "EXPIRE set 200 GT",
        "EXPIRE set 10 NX",
        "EXPIRE h 10 XX",
        "TTL set",
        "PEXPIRE set 300000",
        "TTL set",
        "PERSIST set",
        "PERSIST set",
        "TTL set",
        "EXPIRE nothing 10",
        "EXPIREAT h 4102444800",
        "TTL h",
        "PEXPIREAT h 1",
        "EXISTS h",
        "EXPIRE z -1",
        "EXISTS z",
        "SET {r}a 1",
        "RENAME {r}a {r}b",
        "GET {r}b",
        "RENAME {r}a {r}b",
        "SET {r}c 2",
        "RENAMENX {r}b {r}c",
        "RENAMENX {r}b {r}d",
        "RENAME {r}d {r}d",
        "COPY {r}d {r}e",
        "COPY {r}d {r}e",
        "COPY {r}c {r}e REPLACE",
        "GET {r}e",
        "COPY {r}d {r}d",
        "DEL s s2 nothing l",
        "UNLINK ap",
        "DEL ap",
        "SET h replaces-a-hash",
        "TYPE h",
        "GET h",
        // Repeated fields, members and keys in one command.
        "HSET dup a 1 a 2",
        "HGET dup a",
        "HDEL dup a a",
        "SADD dups x x y",
        "SREM dups x x",
        "ZADD dupz 1 m 2 m",
        "ZSCORE dupz m",
        "ZREM dupz m m",
        "SET {d}k v",
        "DEL {d}k {d}k",
        "RPUSH dupl a a",
        "LREM dupl 0 a",
        "DBSIZE",
        "KEYS *",
    ];
    lines
        .iter()
        .map(|l| {
            l.split(' ')
                .map(|a| if a == "\"\"" { "" } else { a })
                .collect()
        })
        .collect()
}

/// The same script through a CRDB endpoint and a plain one: every reply equal (sets, hashes
/// and listings compared as sets), then DBSIZE, KEYS, SCAN and RANDOMKEY show no hidden key.
#[tokio::test]
async fn a_crdb_endpoint_answers_every_supported_write_as_a_plain_one() {
    let crdb = crdb_setup("127.0.234.1", 2).await;
    let plain = Setup::start("127.0.234.2", 2, 2, None).await;
    let mut c = crdb.patient_client(Duration::from_secs(5)).await;
    let mut p = plain.patient_client(Duration::from_secs(5)).await;
    for line in script() {
        let got = normalize(line[0], run(&mut c, &line).await);
        let want = normalize(line[0], run(&mut p, &line).await);
        assert_eq!(got, want, "{}", line.join(" "));
    }
    // Again in RESP3 (doubles, nulls and maps), on the keys the first pass left.
    let resp3 = |setup: &Setup| {
        let url = format!("redis://{}/?protocol=resp3", setup.endpoint);
        async move {
            redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        }
    };
    let (mut c3, mut p3) = (resp3(&crdb).await, resp3(&plain).await);
    for line in script() {
        let got = normalize(line[0], run(&mut c3, &line).await);
        let want = normalize(line[0], run(&mut p3, &line).await);
        assert_eq!(got, want, "RESP3: {}", line.join(" "));
    }
    for conn in [&mut c3, &mut p3] {
        assert_eq!(
            run(conn, &["ZINCRBY", "z3", "1.5", "m"]).await,
            Ok(Value::Double(1.5)),
            "a RESP3 score is a double"
        );
    }
    // The metadata stays hidden.
    let mut all = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(3)
            .query_async(&mut c)
            .await
            .unwrap();
        all.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let scanned: BTreeSet<String> = all.into_iter().collect();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    let keys: BTreeSet<String> = keys.into_iter().collect();
    let plain_keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut p)
        .await
        .unwrap();
    assert_eq!(keys, plain_keys.into_iter().collect());
    assert_eq!(scanned, keys);
    assert!(keys.iter().all(|k| !k.starts_with("__crdt__")));
    let dbsize: usize = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(dbsize, keys.len());
    let typed: (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("TYPE")
        .arg("hash")
        .arg("COUNT")
        .arg(1000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(typed.1.iter().all(|k| !k.starts_with("__crdt__")));
    for _ in 0..40 {
        let key: Option<String> = redis::cmd("RANDOMKEY").query_async(&mut c).await.unwrap();
        let key = key.expect("the database has keys");
        assert!(keys.contains(&key), "RANDOMKEY gave {key}");
    }
    // INFO keyspace counts the client's keys only.
    let keyspace = |text: String| {
        text.lines()
            .find(|l| l.starts_with("db0:"))
            .and_then(|l| l.split(',').next().map(str::to_owned))
    };
    let info_c: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut c)
        .await
        .unwrap();
    let info_p: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut p)
        .await
        .unwrap();
    assert_eq!(keyspace(info_c), Some(format!("db0:keys={}", keys.len())));
    assert_eq!(keyspace(info_p), Some(format!("db0:keys={}", keys.len())));
    // The engines do hold the metadata.
    let mut direct = crdb.direct(0).await;
    let engine_keys: Vec<String> = redis::cmd("KEYS")
        .arg("__crdt__*")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(!engine_keys.is_empty());
}

/// Every unsupported write is refused with an error naming it, and nothing reaches the engine.
#[tokio::test]
async fn unsupported_commands_are_refused_by_name() {
    let crdb = crdb_setup("127.0.234.3", 2).await;
    let mut c = crdb.patient_client(Duration::from_secs(5)).await;
    run(&mut c, &["SET", "k", "v"]).await.unwrap();
    run(&mut c, &["RPUSH", "list", "a"]).await.unwrap();
    let refused: &[(&[&str], &str)] = &[
        (&["FLUSHALL"], "FLUSHALL"),
        (&["FLUSHDB"], "FLUSHDB"),
        (&["XADD", "st", "*", "f", "v"], "XADD"),
        (&["XGROUP", "CREATE", "st", "g", "$", "MKSTREAM"], "XGROUP"),
        (&["PFADD", "hll", "a"], "PFADD"),
        (&["PFMERGE", "{h}ll", "{h}ll2"], "PFMERGE"),
        (&["SETBIT", "b", "1", "1"], "SETBIT"),
        (&["BITFIELD", "b", "SET", "u8", "0", "1"], "BITFIELD"),
        (&["BITOP", "AND", "{k}dst", "k"], "BITOP"),
        (&["OBJECT", "ENCODING", "k"], "OBJECT ENCODING"),
        (&["RESTORE", "r", "0", "x"], "RESTORE"),
        (
            &["SORT", "list", "ALPHA", "STORE", "{list}dst"],
            "SORT ... STORE",
        ),
        (&["SINTERSTORE", "{a}dst", "a"], "SINTERSTORE"),
        (&["SUNIONSTORE", "{a}dst", "a"], "SUNIONSTORE"),
        (&["ZUNIONSTORE", "{a}dst", "1", "a"], "ZUNIONSTORE"),
        (
            &["ZRANGESTORE", "{src}dst", "src", "0", "-1"],
            "ZRANGESTORE",
        ),
        (&["LMOVE", "list", "list", "LEFT", "RIGHT"], "LMOVE"),
        (&["RPOPLPUSH", "list", "list"], "RPOPLPUSH"),
        (&["BLMOVE", "list", "list", "LEFT", "RIGHT", "0"], "BLMOVE"),
        (&["BLPOP", "list", "0"], "BLPOP"),
        (&["ZPOPMIN", "z"], "ZPOPMIN"),
        (&["GETEX", "k", "EX", "10"], "GETEX"),
        (&["EVAL", "return 1", "0"], "EVAL"),
        (
            &["EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"],
            "EVALSHA",
        ),
        (&["FCALL", "f", "0"], "FCALL"),
        (&["MULTI"], "MULTI"),
        (&["WATCH", "k"], "WATCH"),
        (&["MSET", "a", "1", "b", "2", "c", "3", "d", "4"], "MSET"),
    ];
    for (args, name) in refused {
        let err = run(&mut c, args).await.expect_err(name);
        assert!(
            err.contains(&format!(
                "{name} is not supported on an Active-Active database"
            )) || (*name == "MSET"
                && err
                    .contains("MSET across shards is not supported on an Active-Active database")),
            "{name}: {err}"
        );
    }
    let flush = run(&mut c, &["FLUSHALL"]).await.unwrap_err();
    assert!(flush.contains("flotilla crdb flush"), "{flush}");
    for args in [
        &["GET", "__crdt__oplog"][..],
        &["EXISTS", "__crdt__positions"],
        &["TYPE", "__crdt__{x}k"],
        &["TTL", "__crdt__oplog"],
        &["SET", "__crdt__x", "1"],
        &["DEL", "k", "__crdt__oplog"],
    ] {
        let err = run(&mut c, args).await.expect_err(args[0]);
        assert!(
            err.contains("reserved on an Active-Active database"),
            "{args:?}: {err}"
        );
    }
    // Nothing of the refused writes reached the engines, and the data is intact.
    assert_eq!(
        run(&mut c, &["GET", "k"]).await,
        Ok(Value::BulkString(b"v".to_vec()))
    );
    assert_eq!(run(&mut c, &["DBSIZE"]).await, Ok(Value::Int(2)));
}

/// A pipeline mixing layer writes and plain reads keeps its order, and the op log gets exactly
/// one entry per write that changed something.
#[tokio::test]
async fn pipelines_keep_order_and_the_log_has_one_entry_per_effective_write() {
    let crdb = crdb_setup("127.0.234.4", 1).await;
    let mut c = crdb.patient_client(Duration::from_secs(5)).await;
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg("p")
        .arg("1")
        .cmd("GET")
        .arg("p")
        .cmd("INCR")
        .arg("p")
        .cmd("GET")
        .arg("p")
        .cmd("SET")
        .arg("p")
        .arg("x")
        .cmd("APPEND")
        .arg("p")
        .arg("y")
        .cmd("GET")
        .arg("p")
        .cmd("STRLEN")
        .arg("p");
    let replies: Vec<Value> = pipe.query_async(&mut c).await.unwrap();
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    assert_eq!(
        replies,
        vec![
            Value::Okay,
            bulk("1"),
            Value::Int(2),
            bulk("2"),
            Value::Okay,
            Value::Int(2),
            bulk("xy"),
            Value::Int(2),
        ]
    );
    let mut direct = crdb.direct(0).await;
    let before = flotilla_crdb::read_log(&mut direct, 0, 0)
        .await
        .unwrap()
        .last;
    assert_eq!(before, 4, "SET, INCR, SET, APPEND");
    let effective: &[&[&str]] = &[
        &["SADD", "s", "x"],
        &["HSET", "h", "f", "v"],
        &["INCR", "c"],
        &["RPUSH", "l", "a"],
        &["DEL", "p"],
    ];
    let without_effect: &[&[&str]] = &[
        &["SADD", "s", "x"],
        &["SREM", "s", "nope"],
        &["HDEL", "h", "nope"],
        &["DEL", "missing"],
        &["EXPIRE", "missing", "10"],
        &["PERSIST", "c"],
        &["SET", "c", "9", "NX"],
        &["LREM", "l", "0", "nope"],
        &["ZREM", "z", "nope"],
    ];
    for args in effective.iter().chain(without_effect) {
        run(&mut c, args).await.unwrap();
    }
    let page = flotilla_crdb::read_log(&mut direct, 0, 100).await.unwrap();
    assert_eq!(page.last, before + effective.len() as u64);
    assert_eq!(page.entries.len() as u64, page.last);
}

/// `redis-benchmark -t set,get,incr` through a CRDB endpoint and a plain one (each one shard,
/// redis-7.0, in this process), printing requests per second and the CRDB/plain ratio. A
/// measurement, not a check: run with
/// `cargo test -p flotilla-proxy --test crdt -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn benchmark_crdb_endpoint_against_plain() {
    let crdb = crdb_setup("127.0.234.5", 1).await;
    let plain = Setup::start("127.0.234.6", 1, 1, None).await;
    let bench = |addr: std::net::SocketAddr| async move {
        let out = tokio::process::Command::new("redis-benchmark")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args([
                "-t",
                "set,get,incr",
                "-n",
                "20000",
                "-c",
                "20",
                "-r",
                "1000",
                "--csv",
            ])
            .output()
            .await
            .expect("redis-benchmark on PATH");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split(',').map(|c| c.trim_matches('"')).collect();
                Some((cols.first()?.to_string(), cols.get(1)?.parse::<f64>().ok()?))
            })
            .collect::<Vec<(String, f64)>>()
    };
    // Each once before measuring (connections, script load).
    let _ = bench(crdb.endpoint).await;
    let c = bench(crdb.endpoint).await;
    let p = bench(plain.endpoint).await;
    assert_eq!(c.len(), 3, "{c:?}");
    for ((test, crdb_rps), (_, plain_rps)) in c.iter().zip(&p) {
        println!(
            "{test}: crdb {crdb_rps:.0} rps, plain {plain_rps:.0} rps, ratio {:.2}",
            crdb_rps / plain_rps
        );
    }
}

/// Ships every shard's op log of `from` (instance `origin`) to the same shard of `to`, as the
/// syncer does (shard i pulls peer shard i); returns how many ops were applied.
async fn ship(from: &Setup, to: &Setup, origin: u16, shards: usize) -> usize {
    let mut applied = 0;
    for shard in 0..shards {
        let (mut src, mut dst) = (from.direct(shard).await, to.direct(shard).await);
        let peer = flotilla_crdt::InstanceId(origin);
        let mut at = flotilla_crdb::position(&mut dst, peer)
            .await
            .unwrap()
            .unwrap_or(flotilla_crdb::Position::START);
        loop {
            let page = flotilla_crdb::read_log(&mut src, at.n, 50).await.unwrap();
            if page.entries.is_empty() {
                break;
            }
            for entry in page.entries {
                let op = flotilla_crdt::Op::from_json(&entry.json, 1).unwrap();
                at = entry.position();
                flotilla_crdb::apply_remote(&mut dst, peer, at, &op)
                    .await
                    .unwrap();
                applied += 1;
            }
        }
    }
    applied
}

/// Two instances, each behind its own endpoint (two shards each): concurrent writes through
/// both endpoints, the op logs shipped both ways, then every key reads the same through both
/// endpoints, with the reference's rules (counters summed, add-wins sets and hash fields,
/// concurrent list inserts both kept).
#[tokio::test]
async fn two_instances_converge_through_their_endpoints() {
    let a = crdb_setup("127.0.234.7", 2).await;
    let b = Setup::start("127.0.234.8", 2, 2, None).await;
    let next = b.topology.borrow().clone().with_crdt(Some(CrdtInstance {
        replica_id: 2,
        protocol_version: 1,
    }));
    b.topology.send(next).unwrap();
    let mut ca = a.patient_client(Duration::from_secs(5)).await;
    let mut cb = b.patient_client(Duration::from_secs(5)).await;
    // A shared start.
    for args in [
        &["SADD", "set", "a", "b"][..],
        &["HSET", "h", "f3", "old"],
        &["RPUSH", "L", "x"],
        &["SET", "reg", "start"],
    ] {
        run(&mut ca, args).await.unwrap();
    }
    assert!(ship(&a, &b, 1, 2).await > 0);
    // Concurrent writes on both sides (reference section 6, T1 T3 T4 T6).
    for args in [
        &["INCRBY", "c", "7"][..],
        &["SREM", "set", "a"],
        &["SREM", "set", "c"],
        &["HDEL", "h", "f3"],
        &["HINCRBY", "h", "n", "5"],
        &["LINSERT", "L", "AFTER", "x", "y1"],
    ] {
        run(&mut ca, args).await.unwrap();
    }
    for args in [
        &["INCRBY", "c", "3"][..],
        &["SADD", "set", "c"],
        &["HSET", "h", "f3", "x"],
        &["HINCRBY", "h", "n", "2"],
        &["LINSERT", "L", "AFTER", "x", "y2"],
        &["SET", "reg", "from-b"],
    ] {
        run(&mut cb, args).await.unwrap();
    }
    ship(&a, &b, 1, 2).await;
    ship(&b, &a, 2, 2).await;
    for (conn, side) in [(&mut ca, "A"), (&mut cb, "B")] {
        assert_eq!(
            run(conn, &["GET", "c"]).await,
            Ok(Value::BulkString(b"10".to_vec())),
            "{side}"
        );
        let mut set: Vec<String> = redis::cmd("SMEMBERS")
            .arg("set")
            .query_async(conn)
            .await
            .unwrap();
        set.sort();
        assert_eq!(set, ["b", "c"], "{side}");
        assert_eq!(
            run(conn, &["HGET", "h", "f3"]).await,
            Ok(Value::BulkString(b"x".to_vec())),
            "{side}"
        );
        assert_eq!(
            run(conn, &["HGET", "h", "n"]).await,
            Ok(Value::BulkString(b"7".to_vec())),
            "{side}"
        );
        assert_eq!(
            run(conn, &["GET", "reg"]).await,
            Ok(Value::BulkString(b"from-b".to_vec())),
            "{side}"
        );
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg("L")
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await
            .unwrap();
        assert_eq!(list.len(), 3, "{side}: {list:?}");
    }
    let la: Vec<String> = redis::cmd("LRANGE")
        .arg("L")
        .arg(0)
        .arg(-1)
        .query_async(&mut ca)
        .await
        .unwrap();
    let lb: Vec<String> = redis::cmd("LRANGE")
        .arg("L")
        .arg(0)
        .arg(-1)
        .query_async(&mut cb)
        .await
        .unwrap();
    assert_eq!(la, lb, "one order on both");
    let keys = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            let mut k: Vec<String> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut c)
                .await
                .unwrap();
            k.sort();
            k
        }
    };
    assert_eq!(keys(&mut ca).await, keys(&mut cb).await);
}

/// Clients writing one key at once through the endpoint, in pipelines: no increment is lost
/// (the layer's compare-and-set retries the losers) and the log has one entry per increment.
#[tokio::test]
async fn concurrent_clients_lose_no_increment() {
    let crdb = crdb_setup("127.0.234.9", 1).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut conn = crdb.patient_client(Duration::from_secs(10)).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let mut pipe = redis::pipe();
                for _ in 0..10 {
                    pipe.cmd("INCR").arg("hot").cmd("SADD").arg("seen").arg("x");
                }
                let _: Vec<Value> = pipe.query_async(&mut conn).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut c = crdb.patient_client(Duration::from_secs(5)).await;
    assert_eq!(
        run(&mut c, &["GET", "hot"]).await,
        Ok(Value::BulkString(b"400".to_vec()))
    );
    let mut direct = crdb.direct(0).await;
    let page = flotilla_crdb::read_log(&mut direct, 0, 1000).await.unwrap();
    assert_eq!(page.last, 401, "400 increments and the one SADD that added");
}

/// INFO errorstats' READONLY count on `engine`.
async fn readonly_errors(engine: &flotilla_engine::EngineClient) -> u64 {
    let stats = engine.info("errorstats").await.unwrap();
    stats
        .get("errorstat_READONLY")
        .and_then(|line| line.strip_prefix("count="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A write through the layer that reaches a primary just demoted (refused `READONLY`, nothing
/// written) runs again on the primary the next topology names: the client gets its reply, and
/// the write is applied and logged once.
#[tokio::test]
async fn a_write_refused_by_a_demoted_primary_runs_on_the_next_one() {
    let crdb = crdb_setup_engines("127.0.234.10", 2, 1).await;
    let (m, r) = crdb.replicate().await;
    let mut c = crdb.patient_client(Duration::from_secs(10)).await;
    assert_eq!(run(&mut c, &["INCR", "n"]).await, Ok(Value::Int(1)));
    flotilla_engine::wait_for_sync(&m, &r, Duration::from_secs(10))
        .await
        .unwrap();
    // The switchover without a hold: engine 1 takes over, engine 0 follows it.
    r.replicaof_no_one().await.unwrap();
    let new = crdb.engine_addr(1);
    m.replicaof(new.ip(), new.port()).await.unwrap();
    let before = readonly_errors(&m).await;
    let write = tokio::spawn(async move { run(&mut c, &["INCR", "n"]).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while readonly_errors(&m).await <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the old primary never refused the write"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    crdb.move_shard(0, new);
    assert_eq!(write.await.unwrap(), Ok(Value::Int(2)));
    let mut direct = crdb.direct(1).await;
    let page = flotilla_crdb::read_log(&mut direct, 0, 10).await.unwrap();
    assert_eq!(page.last, 2, "each INCR logged once");
    let n: i64 = redis::cmd("GET")
        .arg("n")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(n, 2);
}
