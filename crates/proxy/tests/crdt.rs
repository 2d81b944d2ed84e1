//! An Active-Active instance's endpoint (issue 15) on real redis-7.0 shards: the same scripted
//! commands through a CRDB endpoint and a plain one give the same replies; unsupported writes are
//! refused by name; the hidden metadata never shows; pipelines keep their order; the op log gets
//! one entry per effective write. Addresses: 127.0.234.1 - 127.0.234.9 (endpoint port 12000,
//! shards 20001+).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Setup;
use flotilla_proxy::CrdtInstance;
use redis::Value;

/// Starts `shards` engines with an endpoint serving instance 1 of a CRDB.
async fn crdb_setup(ip: &str, shards: usize) -> Setup {
    let setup = Setup::start(ip, shards, shards, None).await;
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
