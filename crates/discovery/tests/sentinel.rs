//! The Sentinel subset against a served listener, with the `redis` crate (raw commands) and raw
//! TCP for byte-level behaviour.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use common::{Raw, Served};
use flotilla_discovery::{run_id, Databases};
use redis::Value;

/// A snapshot of a node at `ip` serving `dbs`, with two peer discovery services.
fn snapshot(ip: &str, dbs: &[(&str, u16)], peers: &[&str]) -> Databases {
    let ip: IpAddr = ip.parse().unwrap();
    Databases::on_node(
        ip,
        dbs.iter().map(|&(n, p)| (n.to_owned(), p)),
        peers.iter().map(|p| p.parse::<SocketAddr>().unwrap()),
    )
}

async fn query<T: redis::FromRedisValue>(
    con: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(con).await
}

/// A field/value list as a map.
fn field_map(list: Vec<String>) -> HashMap<String, String> {
    assert_eq!(list.len() % 2, 0, "field list has pairs: {list:?}");
    list.chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

#[tokio::test]
async fn get_master_addr_by_name_names_the_node_and_database_port() {
    let served = Served::start(
        "127.0.13.1",
        snapshot("127.0.13.1", &[("mydb", 12000), ("other", 12001)], &[]),
    )
    .await;
    let mut con = served.client().await;
    let addr: Vec<String> = query(&mut con, &["SENTINEL", "get-master-addr-by-name", "mydb"])
        .await
        .unwrap();
    assert_eq!(addr, ["127.0.13.1", "12000"]);
    let addr: Vec<String> = query(&mut con, &["sentinel", "GET-MASTER-ADDR-BY-NAME", "other"])
        .await
        .unwrap();
    assert_eq!(addr, ["127.0.13.1", "12001"]);
    let unknown: Value = query(&mut con, &["SENTINEL", "get-master-addr-by-name", "nope"])
        .await
        .unwrap();
    assert_eq!(unknown, Value::Nil);
}

#[tokio::test]
async fn masters_and_master_report_sentinel_field_lists() {
    let dbs = snapshot(
        "127.0.13.2",
        &[("a", 12000), ("b", 12005)],
        &["127.0.13.3:8001", "127.0.13.4:8001"],
    );
    let served = Served::start("127.0.13.2", dbs).await;
    let mut con = served.client().await;
    let masters: Vec<Vec<String>> = query(&mut con, &["SENTINEL", "masters"]).await.unwrap();
    let masters: Vec<_> = masters.into_iter().map(field_map).collect();
    assert_eq!(masters.len(), 2);
    assert_eq!(masters[0]["name"], "a");
    assert_eq!(masters[1]["name"], "b");
    assert_eq!(masters[1]["ip"], "127.0.13.2");
    assert_eq!(masters[1]["port"], "12005");
    let master = field_map(query(&mut con, &["SENTINEL", "master", "b"]).await.unwrap());
    assert_eq!(master, masters[1]);
    assert_eq!(master["flags"], "master");
    assert_eq!(master["num-slaves"], "0");
    assert_eq!(master["num-other-sentinels"], "2");
    assert_eq!(master["quorum"], "2");
    assert_eq!(master["runid"], run_id("127.0.13.2:12005".parse().unwrap()));
    let err = query::<Value>(&mut con, &["SENTINEL", "master", "nope"])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("No such master with that name"),
        "{err}"
    );
    let err = query::<Value>(&mut con, &["SENTINEL", "master"])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("wrong number of arguments"),
        "{err}"
    );
}

#[tokio::test]
async fn replicas_are_empty_and_sentinels_are_the_peers() {
    let dbs = snapshot("127.0.13.5", &[("a", 12000)], &["127.0.13.6:8001"]);
    let served = Served::start("127.0.13.5", dbs).await;
    let mut con = served.client().await;
    for sub in ["replicas", "slaves"] {
        let replicas: Vec<Value> = query(&mut con, &["SENTINEL", sub, "a"]).await.unwrap();
        assert!(replicas.is_empty(), "{sub}: {replicas:?}");
        let err = query::<Value>(&mut con, &["SENTINEL", sub, "nope"])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("No such master"), "{err}");
    }
    let peers: Vec<Vec<String>> = query(&mut con, &["SENTINEL", "sentinels", "a"])
        .await
        .unwrap();
    let peers: Vec<_> = peers.into_iter().map(field_map).collect();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["ip"], "127.0.13.6");
    assert_eq!(peers[0]["port"], "8001");
    assert_eq!(peers[0]["flags"], "sentinel");
    let myid: String = query(&mut con, &["SENTINEL", "myid"]).await.unwrap();
    assert_eq!(myid, run_id(served.addr));
    let err = query::<Value>(&mut con, &["SENTINEL", "failover", "a"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown subcommand"), "{err}");
}

#[tokio::test]
async fn published_snapshots_are_answered_at_once() {
    let served = Served::start("127.0.13.7", snapshot("127.0.13.7", &[], &[])).await;
    let mut con = served.client().await;
    let none: Value = query(&mut con, &["SENTINEL", "get-master-addr-by-name", "late"])
        .await
        .unwrap();
    assert_eq!(none, Value::Nil);
    served
        .snapshot
        .send(snapshot("127.0.13.7", &[("late", 13000)], &[]))
        .unwrap();
    let addr: Vec<String> = query(&mut con, &["SENTINEL", "get-master-addr-by-name", "late"])
        .await
        .unwrap();
    assert_eq!(addr, ["127.0.13.7", "13000"]);
    served
        .snapshot
        .send(snapshot("127.0.13.7", &[], &[]))
        .unwrap();
    let masters: Vec<Value> = query(&mut con, &["SENTINEL", "masters"]).await.unwrap();
    assert!(masters.is_empty());
}

#[tokio::test]
async fn connection_commands_answer_like_sentinel() {
    let served = Served::start(
        "127.0.13.8",
        snapshot("127.0.13.8", &[("a", 12000), ("b", 12001)], &[]),
    )
    .await;
    let mut con = served.client().await;
    let pong: String = query(&mut con, &["PING"]).await.unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = query(&mut con, &["PING", "hi"]).await.unwrap();
    assert_eq!(echo, "hi");
    let ok: String = query(&mut con, &["AUTH", "anything"]).await.unwrap();
    assert_eq!(ok, "OK");
    let ok: String = query(&mut con, &["CLIENT", "SETNAME", "finder"])
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    let name: String = query(&mut con, &["CLIENT", "GETNAME"]).await.unwrap();
    assert_eq!(name, "finder");
    let role: (String, Vec<String>) = query(&mut con, &["ROLE"]).await.unwrap();
    assert_eq!(
        role,
        ("sentinel".to_owned(), vec!["a".to_owned(), "b".to_owned()])
    );
    let info: String = query(&mut con, &["INFO", "sentinel"]).await.unwrap();
    assert!(
        info.starts_with("# Sentinel\r\nsentinel_masters:2\r\n"),
        "{info}"
    );
    assert!(
        info.contains("master1:name=b,status=ok,address=127.0.13.8:12001,"),
        "{info}"
    );
    assert!(!info.contains("# Server"), "{info}");
    let hello: Vec<Value> = query(&mut con, &["HELLO", "2"]).await.unwrap();
    assert!(
        hello.contains(&Value::BulkString(b"sentinel".to_vec())),
        "{hello:?}"
    );
    let err = query::<Value>(&mut con, &["FLUSHALL"]).await.unwrap_err();
    assert!(
        err.to_string().contains("unknown command 'FLUSHALL'"),
        "{err}"
    );
    let err = query::<Value>(&mut con, &["HELLO", "4"]).await.unwrap_err();
    assert!(err.to_string().contains("NOPROTO"), "{err}");
}

#[tokio::test]
async fn hello_3_switches_to_resp3_and_inline_commands_pipeline() {
    let served = Served::start("127.0.13.9", snapshot("127.0.13.9", &[("a", 12000)], &[])).await;
    let mut raw = Raw::connect(served.addr).await;
    raw.send(
        b"PING\r\nSENTINEL get-master-addr-by-name a\r\nSENTINEL get-master-addr-by-name zz\r\n",
    )
    .await;
    raw.expect(b"+PONG\r\n*2\r\n$10\r\n127.0.13.9\r\n$5\r\n12000\r\n*-1\r\n")
        .await;
    raw.send(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n").await;
    raw.expect(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:3\r\n").await;
    raw.send(b"*1\r\n$4\r\nQUIT\r\n").await;
    let rest = raw.read_to_close().await;
    assert!(
        rest.ends_with(b"+OK\r\n"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    let mut raw = Raw::connect(served.addr).await;
    raw.send(b"HELLO 3\r\nSENTINEL get-master-addr-by-name zz\r\nSENTINEL master a\r\nQUIT\r\n")
        .await;
    let text = String::from_utf8(raw.read_to_close().await).unwrap();
    assert!(text.starts_with("%7\r\n"), "{text}");
    let after_hello = text.find("_\r\n").expect("RESP3 null for an unknown name");
    let tail = &text[after_hello..];
    assert!(
        tail.starts_with("_\r\n%20\r\n$4\r\nname\r\n$1\r\na\r\n"),
        "{text}"
    );
    assert!(tail.ends_with("+OK\r\n"), "{text}");
}

#[tokio::test]
async fn malformed_input_closes_only_that_connection() {
    let served = Served::start("127.0.13.10", snapshot("127.0.13.10", &[("a", 12000)], &[])).await;
    let mut good = served.client().await;
    let mut bad = Raw::connect(served.addr).await;
    bad.send(b"*1\r\n$x\r\nPING\r\n").await;
    let reply = bad.read_to_close().await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    let addr: Vec<String> = query(&mut good, &["SENTINEL", "get-master-addr-by-name", "a"])
        .await
        .unwrap();
    assert_eq!(addr, ["127.0.13.10", "12000"]);
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_connections() {
    let served = Served::start("127.0.13.11", snapshot("127.0.13.11", &[("a", 12000)], &[])).await;
    let addr = served.addr;
    let mut open = Raw::connect(addr).await;
    open.send(b"PING\r\n").await;
    open.expect(b"+PONG\r\n").await;
    served.shutdown().await;
    assert!(open.read_to_close().await.is_empty());
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "listener still accepts after shutdown");
}

/// A snapshot at `ip` with database `open` (no password, port 12000) and `locked` (password
/// `pw-locked`, port 12001).
fn open_and_locked(ip: &str) -> Databases {
    let mut dbs = snapshot(ip, &[("open", 12000), ("locked", 12001)], &[]);
    dbs.endpoints[1].password = Some(flotilla_model::DatabasePassword::Plain("pw-locked".into()));
    dbs
}

#[tokio::test]
async fn a_database_with_a_password_is_named_only_to_a_client_that_authenticated_with_it() {
    let served = Served::start("127.0.187.1", open_and_locked("127.0.187.1")).await;
    let mut raw = Raw::connect(served.addr).await;
    // Not authenticated: the locked database does not exist; the open one does.
    raw.send(b"SENTINEL get-master-addr-by-name locked\r\nSENTINEL get-master-addr-by-name open\r\nROLE\r\n")
        .await;
    raw.expect(b"*-1\r\n*2\r\n$11\r\n127.0.187.1\r\n$5\r\n12000\r\n*2\r\n$8\r\nsentinel\r\n*1\r\n$4\r\nopen\r\n")
        .await;
    // A wrong password changes nothing.
    raw.send(
        b"AUTH wrong\r\nSENTINEL get-master-addr-by-name locked\r\nSENTINEL master locked\r\n",
    )
    .await;
    raw.expect(b"+OK\r\n*-1\r\n-ERR No such master with that name\r\n")
        .await;
    // The database's password names it.
    raw.send(b"AUTH default pw-locked\r\nSENTINEL get-master-addr-by-name locked\r\n")
        .await;
    raw.expect(b"+OK\r\n*2\r\n$11\r\n127.0.187.1\r\n$5\r\n12001\r\n")
        .await;

    // HELLO 3 AUTH, as RESP3 clients send it; INFO and masters list it too.
    let mut hello = Raw::connect(served.addr).await;
    hello
        .send(b"HELLO 3 AUTH default pw-locked\r\nSENTINEL get-master-addr-by-name locked\r\nQUIT\r\n")
        .await;
    let text = String::from_utf8(hello.read_to_close().await).unwrap();
    assert!(
        text.contains("$11\r\n127.0.187.1\r\n$5\r\n12001\r\n"),
        "{text}"
    );

    let mut con = served.client().await;
    let masters: Vec<Vec<String>> = query(&mut con, &["SENTINEL", "masters"]).await.unwrap();
    let names: Vec<String> = masters
        .into_iter()
        .map(|m| field_map(m)["name"].clone())
        .collect();
    assert_eq!(names, ["open"], "unauthenticated: only the open database");
    let info: String = query(&mut con, &["INFO", "sentinel"]).await.unwrap();
    assert!(info.contains("sentinel_masters:1"), "{info}");
    assert!(!info.contains("locked"), "{info}");
    let _: String = query(&mut con, &["AUTH", "pw-locked"]).await.unwrap();
    let masters: Vec<Vec<String>> = query(&mut con, &["SENTINEL", "masters"]).await.unwrap();
    assert_eq!(masters.len(), 2, "with the password: both");
}

#[tokio::test]
async fn requests_are_bounded_like_an_unauthenticated_redis_client() {
    let served = Served::start("127.0.170.1", snapshot("127.0.170.1", &[("a", 12000)], &[])).await;
    let mut good = served.client().await;
    // A 500 MB bulk is refused at its header: only its first bytes are sent.
    let mut huge = Raw::connect(served.addr).await;
    huge.send(b"*3\r\n$8\r\nSENTINEL\r\n$4\r\nPING\r\n$500000000\r\nxxxx")
        .await;
    assert_eq!(
        String::from_utf8_lossy(&huge.read_to_close().await),
        "-ERR Protocol error: unauthenticated bulk length\r\n"
    );
    let mut many = Raw::connect(served.addr).await;
    many.send(b"*11\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&many.read_to_close().await),
        "-ERR Protocol error: unauthenticated multibulk length\r\n"
    );
    // Other clients are untouched.
    let addr: Vec<String> = query(&mut good, &["SENTINEL", "get-master-addr-by-name", "a"])
        .await
        .unwrap();
    assert_eq!(addr, ["127.0.170.1", "12000"]);
}
