//! The proxy's data path against real redis-7.0 shards: routing by slot, split and fanned-out
//! commands, pipelining order, AUTH, protocol errors, topology changes, transactions and
//! blocking commands, shared shard connections, QUIT. Addresses: 127.0.7.1 - 127.0.7.19, 127.0.153.1, 127.0.163.2
//! (endpoint port 12000, shards 20001+).

mod common;

use std::time::Duration;

use common::{Raw, Resp, Setup};
use flotilla_proxy::{ProxyOptions, SlotMap};
use flotilla_resp::Value as RespValue;
use redis::{AsyncCommands, Value};

/// Keys `prefix0..prefixN` and the shard (of an even 2-shard map) each one belongs to.
fn keys_by_shard(prefix: &str, count: usize) -> Vec<(String, u16)> {
    let map = SlotMap::even(2).unwrap();
    (0..count)
        .map(|i| {
            let key = format!("{prefix}{i}");
            let shard = map.shard_of_key(key.as_bytes()).0;
            (key, shard)
        })
        .collect()
}

#[tokio::test]
async fn keys_land_on_the_shard_owning_their_slot() {
    let setup = Setup::start("127.0.7.1", 2, 2, None).await;
    let mut client = setup.client(None).await;
    let keys = keys_by_shard("key:", 200);
    for (key, _) in &keys {
        let () = client.set(key, format!("v-{key}")).await.unwrap();
    }
    let mut shards = [setup.direct(0).await, setup.direct(1).await];
    for (key, shard) in &keys {
        let other = 1 - *shard as usize;
        let here: Option<String> = shards[*shard as usize].get(key).await.unwrap();
        let there: Option<String> = shards[other].get(key).await.unwrap();
        assert_eq!(here.as_deref(), Some(format!("v-{key}").as_str()), "{key}");
        assert_eq!(there, None, "{key} also on shard {other}");
    }
    let on_zero = keys.iter().filter(|(_, s)| *s == 0).count();
    assert!(
        on_zero > 50 && on_zero < 150,
        "{on_zero} of 200 keys on shard 0"
    );
    for (key, _) in &keys {
        let value: String = client.get(key).await.unwrap();
        assert_eq!(value, format!("v-{key}"));
    }
}

#[tokio::test]
async fn multi_key_and_all_shard_commands_span_shards() {
    let setup = Setup::start("127.0.7.2", 2, 2, None).await;
    let mut client = setup.client(None).await;
    let keys = keys_by_shard("m", 20);
    assert!(keys.iter().any(|(_, s)| *s == 0) && keys.iter().any(|(_, s)| *s == 1));
    let pairs: Vec<(String, String)> = keys
        .iter()
        .map(|(k, _)| (k.clone(), format!("x{k}")))
        .collect();
    let () = client.mset(&pairs).await.unwrap();

    let mut asked: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    asked.insert(3, "missing".into());
    let values: Vec<Option<String>> = client.mget(&asked).await.unwrap();
    for (key, value) in asked.iter().zip(&values) {
        let expected = (key != "missing").then(|| format!("x{key}"));
        assert_eq!(value, &expected, "MGET {key}");
    }
    let dbsize: usize = redis::cmd("DBSIZE").query_async(&mut client).await.unwrap();
    assert_eq!(dbsize, 20);
    let exists: usize = client.exists(&asked).await.unwrap();
    assert_eq!(exists, 20);
    let mut all: Vec<String> = client.keys("*").await.unwrap();
    all.sort();
    let mut expected: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    expected.sort();
    assert_eq!(all, expected);

    let mut scanned = Vec::new();
    let mut cursor = 0u64;
    for _ in 0..1000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(3)
            .query_async(&mut client)
            .await
            .unwrap();
        scanned.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    scanned.sort();
    scanned.dedup();
    assert_eq!(scanned, expected, "SCAN walks every shard");

    let err = redis::cmd("RENAME")
        .arg(&keys[0].0)
        .arg("elsewhere")
        .query_async::<()>(&mut client)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("don't hash to the same slot"),
        "{err}"
    );
    // CONFIG GET/SET reach the database's settings (a cluster's endpoint); REWRITE is refused.
    let err = redis::cmd("CONFIG")
        .arg("REWRITE")
        .query_async::<()>(&mut client)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not allowed through the proxy"),
        "{err}"
    );

    let deleted: usize = client.del(&asked).await.unwrap();
    assert_eq!(deleted, 20);
    let () = client.set("a", 1).await.unwrap();
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut client)
        .await
        .unwrap();
    let dbsize: usize = redis::cmd("DBSIZE").query_async(&mut client).await.unwrap();
    assert_eq!(dbsize, 0);
}

#[tokio::test]
async fn a_pipeline_of_1000_commands_keeps_its_order_across_shards() {
    let setup = Setup::start("127.0.7.3", 2, 2, None).await;
    let mut client = setup.client(None).await;
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
    }
    let () = pipe.query_async(&mut client).await.unwrap();

    let mut pipe = redis::pipe();
    for i in 0..1000 {
        match i % 3 {
            0 => pipe.cmd("GET").arg(format!("p{i}")),
            1 => pipe.cmd("ECHO").arg(format!("echo{i}")),
            _ => pipe.cmd("INCR").arg(format!("p{i}")),
        };
    }
    let replies: Vec<Value> = pipe.query_async(&mut client).await.unwrap();
    assert_eq!(replies.len(), 1000);
    for (i, reply) in replies.iter().enumerate() {
        let expected = match i % 3 {
            0 => Value::BulkString(i.to_string().into_bytes()),
            1 => Value::BulkString(format!("echo{i}").into_bytes()),
            _ => Value::Int(i as i64 + 1),
        };
        assert_eq!(reply, &expected, "reply {i}");
    }

    // The same at the byte level: one write of 3000 requests, replies in request order.
    let mut raw = Raw::connect(setup.endpoint).await;
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..1000 {
        request.extend(format!("SET r{i} {i}\r\nPING\r\nINCR r{i}\r\n").bytes());
        expected.extend(format!("+OK\r\n+PONG\r\n:{}\r\n", i + 1).bytes());
    }
    raw.send(&request).await;
    let got = raw.read_at_least(expected.len()).await;
    let first_difference = got.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "replies differ");
    assert_eq!(got.len(), expected.len());
}

#[tokio::test]
async fn auth_is_required_when_the_database_has_a_password() {
    let setup = Setup::start("127.0.7.4", 2, 2, Some("db-secret")).await;
    let mut raw = Raw::connect(setup.endpoint).await;
    raw.send(b"GET k\r\nPING\r\nAUTH wrong\r\nHELLO 3\r\nAUTH db-secret\r\nSET k v\r\nGET k\r\n")
        .await;
    let expected = "-NOAUTH Authentication required.\r\n-NOAUTH Authentication required.\r\n\
        -WRONGPASS invalid username-password pair or user is disabled.\r\n\
        -NOAUTH HELLO must be called with the client already authenticated, otherwise the \
        HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
        select the RESP protocol version at the same time\r\n+OK\r\n+OK\r\n$1\r\nv\r\n";
    let got = raw.read_at_least(expected.len()).await;
    assert_eq!(String::from_utf8_lossy(&got), expected);

    // HELLO 3 with AUTH switches to RESP3: a hash comes back as a map.
    let mut raw = Raw::connect(setup.endpoint).await;
    raw.send(b"HELLO 3 AUTH default db-secret\r\n").await;
    let hello = raw.read_at_least(1).await;
    assert!(
        hello.starts_with(b"%7\r\n"),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    raw.send(b"DEL h\r\nHSET h f v\r\nHGETALL h\r\n").await;
    let expected = ":0\r\n:1\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n";
    let got = raw.read_at_least(expected.len()).await;
    assert_eq!(String::from_utf8_lossy(&got), expected);

    let mut client = setup.client(Some("db-secret")).await;
    let () = client.set("k2", "v2").await.unwrap();
    let v: String = client.get("k2").await.unwrap();
    assert_eq!(v, "v2");
}

#[tokio::test]
async fn malformed_input_closes_only_that_connection() {
    let setup = Setup::start("127.0.7.5", 2, 2, None).await;
    let mut good = setup.client(None).await;
    let () = good.set("before", 1).await.unwrap();
    let cases: [(&[u8], &str); 5] = [
        (
            b"*2\r\n$3\r\nGET\r\n:12\r\n",
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"*1x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"PING\r\n*1\r\n$-5\r\n",
            "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n$1\r\nkey-truncated\r\n",
            "-ERR Protocol error: expected CRLF\r\n",
        ),
        (
            b"*\x93\xf1\x07\x00garbage\xff\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
    ];
    for (bytes, expected) in cases {
        let mut bad = Raw::connect(setup.endpoint).await;
        bad.send(bytes).await;
        let got = bad.read_to_close().await;
        assert_eq!(String::from_utf8_lossy(&got), expected, "for {bytes:?}");
        let () = good.set("during", expected.len()).await.unwrap();
        let n: usize = good.get("during").await.unwrap();
        assert_eq!(n, expected.len());
    }
    // A truncated frame is waited for, then completed, like Redis does.
    let mut slow = Raw::connect(setup.endpoint).await;
    slow.send(b"*2\r\n$3\r\nGET\r\n$6\r\nbef").await;
    slow.send(b"ore\r\n").await;
    assert_eq!(slow.read_at_least(4).await, b"$1\r\n1\r\n");
}

#[tokio::test]
async fn a_new_primary_is_used_without_reconnecting_the_client() {
    // A hold bound shorter than the client's response timeout, so the client hears the error
    // given past it.
    let options = ProxyOptions {
        hold_timeout: Duration::from_millis(500),
        ..ProxyOptions::default()
    };
    let setup = Setup::start_with("127.0.7.6", 3, 2, None, options).await;
    let mut client = setup.patient_client(Duration::from_secs(3)).await;
    let keys = keys_by_shard("t", 40);
    let (key0, _) = keys.iter().find(|(_, s)| *s == 0).unwrap();
    let (key1, _) = keys.iter().find(|(_, s)| *s == 1).unwrap();
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut client)
        .await
        .unwrap();
    let () = client.set(key0, "on-engine-0").await.unwrap();
    let () = client.set(key1, "on-engine-1").await.unwrap();

    setup.move_shard(0, setup.engine_addr(2));
    let moved: Option<String> = client.get(key0).await.unwrap();
    assert_eq!(moved, None, "shard 0 now reads from the empty engine 2");
    let () = client.set(key0, "on-engine-2").await.unwrap();
    let mut engine2 = setup.direct(2).await;
    let direct: Option<String> = engine2.get(key0).await.unwrap();
    assert_eq!(direct.as_deref(), Some("on-engine-2"));
    let other: String = client.get(key1).await.unwrap();
    assert_eq!(other, "on-engine-1", "shard 1 is unchanged");

    // A primary that is not there: the request is held for the hold bound, then the client is
    // told the command was not executed.
    let nowhere = std::net::SocketAddr::from(([127, 0, 7, 6], 20999));
    setup.move_shard(0, nowhere);
    let asked = std::time::Instant::now();
    let err = client.get::<_, Option<String>>(key0).await.unwrap_err();
    assert!(err.to_string().contains("was not executed"), "{err}");
    assert!(asked.elapsed() >= Duration::from_millis(500), "held first");
    setup.move_shard(0, setup.engine_addr(0));
    let back: String = client.get(key0).await.unwrap();
    assert_eq!(back, "on-engine-0");

    let same: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(same, id, "the client connection was kept");
}

#[tokio::test]
async fn transactions_run_on_one_slot_and_blocking_commands_wait() {
    let setup = Setup::start("127.0.7.7", 2, 2, None).await;
    let mut raw = Raw::connect(setup.endpoint).await;
    raw.send(b"MULTI\r\nSET {u}a 1\r\nINCR {u}a\r\nGET {u}a\r\nEXEC\r\n")
        .await;
    let expected = "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n:2\r\n$1\r\n2\r\n";
    assert_eq!(
        String::from_utf8_lossy(&raw.read_at_least(expected.len()).await),
        expected
    );

    raw.send(b"MULTI\r\nSET {u}a 5\r\nSET {v}b 1\r\nEXEC\r\nGET {u}a\r\n")
        .await;
    let got = String::from_utf8_lossy(&raw.read_at_least(60).await).into_owned();
    assert!(got.starts_with("+OK\r\n+QUEUED\r\n-CROSSSLOT"), "{got}");
    assert!(
        got.contains("-EXECABORT") && got.ends_with("$1\r\n2\r\n"),
        "{got}"
    );

    // WATCH: a change by another client aborts the transaction.
    let mut other = setup.client(None).await;
    raw.send(b"WATCH {u}a\r\nMULTI\r\nINCR {u}a\r\n").await;
    let expected = "+OK\r\n+OK\r\n+QUEUED\r\n";
    assert_eq!(
        String::from_utf8_lossy(&raw.read_at_least(expected.len()).await),
        expected
    );
    let () = other.set("{u}a", 100).await.unwrap();
    raw.send(b"EXEC\r\nGET {u}a\r\n").await;
    let expected = "*-1\r\n$3\r\n100\r\n";
    assert_eq!(
        String::from_utf8_lossy(&raw.read_at_least(expected.len()).await),
        expected
    );

    // BLPOP waits on its own shard connection until another client pushes.
    let mut blocked = Raw::connect(setup.endpoint).await;
    blocked.send(b"BLPOP queue 10\r\n").await;
    let waiter = tokio::spawn(async move { blocked.read_at_least(20).await });
    setup
        .wait_blocked(usize::from(
            SlotMap::even(2).unwrap().shard_of_key(b"queue").0,
        ))
        .await;
    let _: usize = other.rpush("queue", "job").await.unwrap();
    let got = waiter.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        "*2\r\n$5\r\nqueue\r\n$3\r\njob\r\n"
    );
}

#[tokio::test]
async fn redis_cli_works_through_the_proxy() {
    let setup = Setup::start("127.0.7.8", 2, 2, Some("cli-pw")).await;
    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("redis-cli");
        let port = setup.endpoint.port().to_string();
        cmd.args([
            "-h",
            "127.0.7.8",
            "-p",
            &port,
            "-a",
            "cli-pw",
            "--no-auth-warning",
        ]);
        cmd.args(args);
        cmd.output()
    };
    let out = cli(&["MSET", "a", "1", "b", "2", "c", "3"])
        .await
        .expect("redis-cli on PATH");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    let out = cli(&["MGET", "c", "b", "a"]).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n2\n1\n");
    let out = cli(&["DBSIZE"]).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
}

/// `connected_clients` of an engine, read over a direct connection (which counts itself).
async fn engine_clients(setup: &Setup, engine: usize) -> i64 {
    let mut direct = setup.direct(engine).await;
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut direct)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO clients has connected_clients")
}

/// Runs 20 clients at once, each writing and reading its own keys through the endpoint.
async fn twenty_busy_clients(setup: &Setup) -> Vec<redis::aio::MultiplexedConnection> {
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(setup.client(None).await);
    }
    let work = clients
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, mut c)| async move {
            for j in 0..50 {
                let key = format!("busy:{i}:{j}");
                let () = c.set(&key, j).await.unwrap();
                let back: i64 = c.get(&key).await.unwrap();
                assert_eq!(back, j, "each client reads back its own write");
            }
        });
    futures_util::future::join_all(work).await;
    clients
}

#[tokio::test]
async fn plain_commands_of_many_clients_share_one_engine_connection() {
    let setup = Setup::start("127.0.7.9", 1, 1, None).await;
    let _clients = twenty_busy_clients(&setup).await;
    // The shared connection, plus the direct one asking.
    assert_eq!(engine_clients(&setup, 0).await, 2);

    let options = flotilla_proxy::ProxyOptions {
        shared_connections: false,
        ..Default::default()
    };
    let own = Setup::start_with("127.0.7.10", 1, 1, None, options).await;
    let _clients = twenty_busy_clients(&own).await;
    assert_eq!(
        engine_clients(&own, 0).await,
        21,
        "without sharing, one engine connection per client"
    );
}

#[tokio::test]
async fn wait_counts_the_writes_a_client_made_over_the_shared_connection() {
    let setup = Setup::start("127.0.7.11", 2, 1, None).await;
    let primary = setup.engine_addr(0);
    let replica = setup.engine(1).await;
    replica
        .replicaof(primary.ip(), primary.port())
        .await
        .unwrap();
    replica.wait_link_up(Duration::from_secs(10)).await.unwrap();
    let mut client = setup.patient_client(Duration::from_secs(10)).await;
    let () = client.set("before", 1).await.unwrap();
    // The primary counts the replica as online once it has acknowledged a write (replicas
    // acknowledge once a second).
    let mut direct = setup.direct(0).await;
    let () = direct.set("online", 1).await.unwrap();
    let mut online = 0;
    for _ in 0..50 {
        online = redis::cmd("WAIT")
            .arg(1)
            .arg(100)
            .query_async(&mut direct)
            .await
            .unwrap();
        if online == 1 {
            break;
        }
    }
    assert_eq!(online, 1, "the replica acknowledges writes");
    let replica_pid = flotilla_engine::adopt(&setup.engines[1])
        .unwrap()
        .expect("the replica runs")
        .pid();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &replica_pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name} {replica_pid}");
    };

    // A write over the shared connection while the replica cannot acknowledge it: WAIT (sent
    // on the client's own connection) must count it as unacknowledged.
    signal("-STOP");
    let () = client.set("unacked", 1).await.unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(300)
        .query_async(&mut client)
        .await
        .unwrap();
    signal("-CONT");
    assert_eq!(
        acked, 0,
        "WAIT counted a replica that had not acknowledged the write"
    );
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the resumed replica acknowledges the write");
}

/// CLIENT subcommands of the caller's own connection (issue 16): REPLY OFF/SKIP/ON suppress
/// the caller's replies as Redis does, tracking turns on and off (see tracking.rs), LIST
/// shows the caller alone, KILL reaches only the caller (answered, then closed).
/// CLIENT LIST lists every client of the endpoint with the engine's fields, and CLIENT KILL
/// closes the ones its filters name (SKIPME yes by default), the caller last.
#[tokio::test]
async fn client_list_and_kill_reach_the_endpoints_clients() {
    let setup = Setup::start("127.0.166.1", 1, 1, None).await;
    let mut me = Resp::connect(setup.endpoint).await;
    let mut other = Resp::connect(setup.endpoint).await;
    let mut third = Resp::connect(setup.endpoint).await;
    assert_eq!(
        other.call(&["CLIENT", "SETNAME", "other"]).await,
        RespValue::simple("OK")
    );
    let RespValue::Integer(other_id) = other.call(&["CLIENT", "ID"]).await else {
        panic!("CLIENT ID is an integer")
    };
    let RespValue::BulkString(list) = me.call(&["CLIENT", "LIST"]).await else {
        panic!("CLIENT LIST is a bulk string")
    };
    let list = String::from_utf8_lossy(&list).into_owned();
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(
        list.contains(&format!("id={other_id} ")) && list.contains(" name=other "),
        "{list}"
    );
    assert!(list.contains(" cmd=client|list "), "{list}");
    let killed = me
        .call(&["CLIENT", "KILL", "ID", &other_id.to_string()])
        .await;
    assert_eq!(killed, RespValue::Integer(1));
    assert!(
        other.closed().await,
        "the killed client's connection closes"
    );
    let mut listed = 3;
    for _ in 0..100 {
        let RespValue::BulkString(list) = me.call(&["CLIENT", "LIST"]).await else {
            panic!("CLIENT LIST is a bulk string")
        };
        listed = String::from_utf8_lossy(&list).lines().count();
        if listed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed, 2, "the killed client left the endpoint's list");
    assert_eq!(
        me.call(&["CLIENT", "KILL", "SKIPME", "yes"]).await,
        RespValue::Integer(1)
    );
    assert!(third.closed().await);
    assert_eq!(
        me.call(&["PING"]).await,
        RespValue::simple("PONG"),
        "SKIPME yes spares the caller"
    );
    assert_eq!(
        me.call(&["CLIENT", "KILL", "SKIPME", "no"]).await,
        RespValue::Integer(1)
    );
    assert!(
        me.closed().await,
        "SKIPME no kills the caller too, after the reply"
    );
}

#[tokio::test]
async fn client_subcommands_act_on_the_callers_own_connection() {
    let setup = Setup::start("127.0.153.1", 2, 2, None).await;
    let mut raw = Raw::connect(setup.endpoint).await;
    raw.send(
        b"CLIENT REPLY OFF\r\nSET k1 1\r\nCLIENT REPLY SKIP\r\nGET k1\r\nCLIENT REPLY ON\r\nGET k1\r\n",
    )
    .await;
    let expected = b"+OK\r\n$1\r\n1\r\n";
    assert_eq!(raw.read_at_least(expected.len()).await, expected);

    let mut client = Resp::connect(setup.endpoint).await;
    let RespValue::Integer(id) = client.call(&["CLIENT", "ID"]).await else {
        panic!("CLIENT ID is an integer")
    };
    assert_eq!(
        client.call(&["CLIENT", "GETREDIR"]).await,
        RespValue::Integer(-1)
    );
    assert_eq!(
        client.call(&["CLIENT", "TRACKING", "OFF"]).await,
        RespValue::simple("OK")
    );
    assert_eq!(
        client.call(&["CLIENT", "TRACKING", "ON"]).await,
        RespValue::simple("OK")
    );
    assert_eq!(
        client.call(&["CLIENT", "GETREDIR"]).await,
        RespValue::Integer(0)
    );
    assert_eq!(
        client.call(&["CLIENT", "TRACKING", "OFF"]).await,
        RespValue::simple("OK")
    );
    let RespValue::BulkString(list) = client.call(&["CLIENT", "LIST"]).await else {
        panic!("CLIENT LIST is a bulk string")
    };
    let list = String::from_utf8_lossy(&list).into_owned();
    // Both of the endpoint's clients (the raw one above and this one), by id.
    assert_eq!(list.lines().count(), 2, "{list}");
    let mine = list.lines().find(|l| l.starts_with(&format!("id={id} ")));
    assert!(
        mine.is_some_and(|l| l.contains(" cmd=client|list ")),
        "{list}"
    );
    assert_eq!(
        client.call(&["CLIENT", "KILL", "ID", "999999"]).await,
        RespValue::Integer(0),
        "no client of the endpoint has that id"
    );
    let RespValue::Error(refused) = client.call(&["CLIENT", "UNPAUSE"]).await else {
        panic!("CLIENT UNPAUSE is refused")
    };
    let refused = String::from_utf8_lossy(&refused).into_owned();
    assert!(refused.contains("no client pause"), "{refused}");
    let own = id.to_string();
    assert_eq!(
        client.call(&["CLIENT", "KILL", "ID", &own]).await,
        RespValue::Integer(1)
    );
    assert!(
        client.closed().await,
        "killing itself closes the connection"
    );
}

/// Redis's unit/quit: QUIT is answered +OK and the connection closes; the commands pipelined
/// after it are never run, also when they are more than one read, and the next connection
/// works.
#[tokio::test]
async fn quit_closes_the_connection_and_runs_nothing_pipelined_after_it() {
    let setup = Setup::start("127.0.163.2", 1, 1, None).await;
    let mut plain = Raw::connect(setup.endpoint).await;
    plain.send(b"QUIT\r\n").await;
    assert_eq!(plain.read_to_close().await, b"+OK\r\n");

    let big = "x".repeat(70_000);
    let pipelines = [
        "*1\r\n$4\r\nquit\r\n*3\r\n$3\r\nset\r\n$3\r\nfoo\r\n$3\r\nbar\r\n".to_owned(),
        format!(
            "*1\r\n$4\r\nquit\r\n*3\r\n$3\r\nset\r\n$3\r\nfoo\r\n${}\r\n{big}\r\n",
            big.len()
        ),
        format!("PING\r\nQUIT\r\nSET foo {}\r\n", &big[..1024]),
    ];
    for pipeline in pipelines {
        let mut raw = Raw::connect(setup.endpoint).await;
        raw.send(pipeline.as_bytes()).await;
        let expected = if pipeline.starts_with("PING") {
            "+PONG\r\n+OK\r\n"
        } else {
            "+OK\r\n"
        };
        let got = raw.read_to_close().await;
        assert_eq!(String::from_utf8_lossy(&got), expected);
        let mut after = Resp::connect(setup.endpoint).await;
        assert!(
            after.call(&["GET", "foo"]).await.is_null(),
            "SET after QUIT ran"
        );
        assert_eq!(after.call(&["PING"]).await, RespValue::simple("PONG"));
    }
}

/// Redis's unit/multi "MULTI and script timeout": a script that loops holds its engine until
/// SCRIPT KILL. Meanwhile other clients of the endpoint get `-BUSY` from the engine, as direct
/// clients do (they are not stuck behind the script on a shared engine connection), and
/// SCRIPT KILL through the endpoint stops it. (The endpoint used to send the script over the
/// connection its clients share and refused SCRIPT KILL: every later client of the database
/// hung, and the suite's next units timed out.)
#[tokio::test]
async fn a_looping_script_leaves_other_clients_busy_until_script_kill() {
    let setup = Setup::start("127.0.163.3", 1, 1, None).await;
    let mut engine = setup.direct(0).await;
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "lua-time-limit", "10"])
        .query_async(&mut engine)
        .await
        .unwrap();
    let mut other = setup.client(None).await;
    let () = other.set("xx", 1).await.unwrap();
    let mut looping = Raw::connect(setup.endpoint).await;
    looping
        .send(b"*3\r\n$4\r\nEVAL\r\n$17\r\nwhile true do end\r\n$1\r\n0\r\n")
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let get = tokio::time::timeout(Duration::from_secs(2), other.get::<_, i64>("xx"))
            .await
            .expect("a client stuck behind another client's script");
        match get {
            Err(e) if e.code() == Some("BUSY") => break,
            Ok(1) => {}
            other => panic!("GET while a script loops: {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the script never made the engine busy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed: String = redis::cmd("SCRIPT")
        .arg("KILL")
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(killed, "OK");
    let reply = String::from_utf8_lossy(&looping.read_at_least(1).await).into_owned();
    assert!(
        reply.starts_with("-ERR") && reply.contains("killed by user"),
        "{reply}"
    );
    let xx: i64 = other.get("xx").await.unwrap();
    assert_eq!(xx, 1);
    let err = redis::cmd("SCRIPT")
        .arg("KILL")
        .query_async::<String>(&mut other)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOTBUSY"), "{err}");
}

/// A client that disconnects while blocked (BLPOP, XREADGROUP BLOCK) is freed on the engine
/// as a direct one is: the endpoint closes the engine connection it blocked on, and the
/// engine's blocked count drops back. (It stayed blocked until the shard answered, so INFO's
/// `blocked_clients` counted clients long gone, and Redis's unit/type/stream-cgroups, which
/// waits for that count, ran ahead of its own blocked client.)
#[tokio::test]
async fn a_client_leaving_while_blocked_is_freed_on_the_engine() {
    let setup = Setup::start("127.0.163.4", 1, 1, None).await;
    let mut blocked = Raw::connect(setup.endpoint).await;
    blocked.send(b"PING\r\nBLPOP gone-list 0\r\n").await;
    assert_eq!(blocked.read_at_least(7).await, b"+PONG\r\n");
    setup.wait_blocked(0).await;
    drop(blocked);
    setup
        .wait_blpop(
            0,
            false,
            "the engine still holds the blocked client of a client that left",
        )
        .await;
    // A blocked client that stays gets its reply, with what it pipelined meanwhile after it.
    let mut waiting = Raw::connect(setup.endpoint).await;
    waiting.send(b"BLPOP later-list 0\r\n").await;
    setup.wait_blocked(0).await;
    waiting.send(b"PING\r\n").await;
    let mut pusher = setup.client(None).await;
    let () = pusher.rpush("later-list", "v").await.unwrap();
    let expected = b"*2\r\n$10\r\nlater-list\r\n$1\r\nv\r\n+PONG\r\n";
    assert_eq!(waiting.read_at_least(expected.len()).await, expected);
}
