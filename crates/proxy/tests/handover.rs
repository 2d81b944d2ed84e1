//! The proxy's side of the in-place handover against real redis-7.0 shards: two endpoint
//! instances serve one listening socket (the second gets a duplicate, as the new daemon gets
//! the passed descriptor); the first stops accepting and detaches every session at a command
//! boundary, the second adopts each one, and every client keeps its TCP connection, its id and
//! its state: a pipelined writer, an authenticated RESP3 client with a name, a subscriber, a
//! client inside MULTI, clients with a WATCH, a client blocked in BLPOP; new connections are
//! accepted throughout. Also: an aborted handover (the first endpoint takes its sessions back
//! and accepts again) and closing sessions at a command boundary. Addresses: 127.0.41.1 -
//! 127.0.41.9 (endpoint port 12000, shards 20001+).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{wait_until, Resp, Setup};
use flotilla_proxy::{EndpointControl, SlotMap};
use flotilla_resp::Value;
use redis::AsyncCommands;

const PASSWORD: &str = "secret";
/// Requests in each pipeline of the writer load.
const PIPELINE: usize = 16;

/// Moves every session of `from` to `to` as the new daemon takes them: `from` stops
/// accepting, asks each session to detach at its next command boundary, and `to` adopts each
/// one as it comes. Returns how many moved.
async fn hand_over(from: &EndpointControl, to: &EndpointControl) -> usize {
    from.stop_accepting().await;
    let mut detaching = from.detach_all().await;
    let mut moved = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), detaching.next()).await;
        let Some(session) = next.expect("every session reaches a boundary within 10 s") else {
            return moved;
        };
        to.adopt(session).await.expect("the session is adopted");
        moved += 1;
    }
}

/// A RESP client through the endpoint, authenticated.
async fn client(setup: &Setup) -> Resp {
    let mut client = Resp::connect(setup.endpoint).await;
    assert_eq!(client.call(&["AUTH", PASSWORD]).await, Value::simple("OK"));
    client
}

/// The client's id as the endpoint reports it, after checking the endpoint sees the client's
/// own address (the connection is the one this client holds).
async fn identity(client: &mut Resp) -> i64 {
    let Value::Integer(id) = client.call(&["CLIENT", "ID"]).await else {
        panic!("CLIENT ID is an integer");
    };
    let info = text(&client.call(&["CLIENT", "INFO"]).await);
    let addr = format!("addr={} ", client.local_addr());
    assert!(info.contains(&addr), "{info} names {addr}");
    id
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(b) | Value::SimpleString(b) | Value::Error(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        Value::VerbatimString { text, .. } => String::from_utf8_lossy(text).into_owned(),
        other => panic!("not text: {other:?}"),
    }
}

fn bulk(s: &str) -> Value {
    Value::BulkString(Bytes::from(s.to_owned()))
}

/// A redis-crate client through the endpoint that waits up to 5 s for each reply and never
/// reconnects on its own.
async fn redis_client(setup: &Setup) -> redis::aio::MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(format!("redis://:{PASSWORD}@{}/", setup.endpoint))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect through the proxy")
}

/// CLIENT ID over a redis-crate connection.
async fn redis_client_id(client: &mut redis::aio::MultiplexedConnection) -> i64 {
    let id = redis::cmd("CLIENT").arg("ID").query_async(client).await;
    id.expect("CLIENT ID")
}

/// Pipelines RPUSHes of 0, 1, 2... to `key` over `client` until `stop` or the first error,
/// counting the acknowledged ones in `acked`; returns how many were pushed and the error.
async fn push_until(
    mut client: redis::aio::MultiplexedConnection,
    key: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> (u64, Vec<String>) {
    let mut next = 0u64;
    let mut errors = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut pipe = redis::pipe();
        for i in 0..PIPELINE as u64 {
            pipe.rpush(&key, next + i);
        }
        match pipe.query_async::<Vec<u64>>(&mut client).await {
            Ok(lengths) => {
                let expected: Vec<u64> = (1..=PIPELINE as u64).map(|i| next + i).collect();
                assert_eq!(
                    lengths, expected,
                    "{key}: every push acknowledged once, in order"
                );
                next += PIPELINE as u64;
                acked.fetch_add(PIPELINE as u64, Ordering::Relaxed);
            }
            Err(e) => {
                errors.push(e.to_string());
                break;
            }
        }
    }
    (next, errors)
}

/// Publishes `m0`, `m1`... on `channel` until `stop`, then `end`; returns how many `m`s.
async fn publish_until(
    mut client: redis::aio::MultiplexedConnection,
    channel: &'static str,
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let receivers: u64 = client.publish(channel, format!("m{n}")).await.unwrap();
        assert_eq!(receivers, 1, "the subscriber is subscribed throughout");
        n += 1;
        published.store(n, Ordering::Relaxed);
    }
    let _: u64 = client.publish(channel, "end").await.unwrap();
    n
}

/// Reads published messages until `end`, counting them in `received`; returns them and the
/// client.
async fn receive_until_end(mut subscriber: Resp, received: Arc<AtomicU64>) -> (Vec<String>, Resp) {
    let mut messages = Vec::new();
    loop {
        let Value::Array(items) = subscriber.reply().await else {
            panic!("a RESP2 message is an array");
        };
        assert_eq!(items[0], bulk("message"));
        let payload = text(&items[2]);
        if payload == "end" {
            return (messages, subscriber);
        }
        messages.push(payload);
        received.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens new connections (AUTH, PING, close) one after another until `stop`; returns how many
/// were answered and the failures.
async fn connect_until(
    endpoint: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Vec<String> {
    let mut failures = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let attempt = async {
            let mut client = Resp::connect(endpoint).await;
            client.send(&["AUTH", PASSWORD]).await;
            client.send(&["PING"]).await;
            let auth = client.read_value().await;
            let ping = client.read_value().await;
            (auth, ping)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok((Some(auth), Some(ping)))
                if auth == Value::simple("OK") && ping == Value::simple("PONG") =>
            {
                answered.fetch_add(1, Ordering::Relaxed);
            }
            other => failures.push(format!("{other:?}")),
        }
    }
    failures
}

/// The index of the engine serving `key` (an even 2-shard map over engines 0 and 1).
fn engine_of(key: &str) -> usize {
    usize::from(SlotMap::even(2).unwrap().shard_of_key(key.as_bytes()).0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_client_keeps_its_connection_and_state_through_a_handover() {
    let setup = Setup::start("127.0.41.1", 2, 2, Some(PASSWORD)).await;
    let limit = Duration::from_secs(10);

    // A pipelined writer load: four writers pipelining over one connection.
    let mut writer = redis_client(&setup).await;
    let writer_id = redis_client_id(&mut writer).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let load = push_until(
                writer.clone(),
                format!("log:{w}"),
                stop.clone(),
                acked.clone(),
            );
            tokio::spawn(load)
        })
        .collect();

    // An authenticated RESP3 client with a name.
    let mut named = Resp::connect(setup.endpoint).await;
    let hello = named
        .call(&["HELLO", "3", "AUTH", "default", PASSWORD, "SETNAME", "app3"])
        .await;
    assert!(matches!(hello, Value::Map(_)), "{hello:?}");
    let named_id = identity(&mut named).await;

    // A subscriber, and a publisher through the endpoint before, during and after.
    let mut subscriber = client(&setup).await;
    let confirmed = subscriber.call(&["SUBSCRIBE", "feed"]).await;
    assert_eq!(
        confirmed,
        Value::Array(vec![bulk("subscribe"), bulk("feed"), Value::Integer(1)])
    );
    let published = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish_until(
        redis_client(&setup).await,
        "feed",
        stop.clone(),
        published.clone(),
    ));
    let receiver = tokio::spawn(receive_until_end(subscriber, received.clone()));

    // A client inside MULTI with queued commands.
    let mut multi = client(&setup).await;
    let multi_id = identity(&mut multi).await;
    assert_eq!(multi.call(&["MULTI"]).await, Value::simple("OK"));
    assert_eq!(
        multi.call(&["SET", "{tx}a", "1"]).await,
        Value::simple("QUEUED")
    );
    assert_eq!(
        multi.call(&["INCR", "{tx}n"]).await,
        Value::simple("QUEUED")
    );

    // Clients with a WATCH: one whose key changes after the move, one whose key does not,
    // one that also queued its transaction before the move.
    let mut watch_changed = client(&setup).await;
    let watch_changed_id = identity(&mut watch_changed).await;
    assert_eq!(
        watch_changed.call(&["WATCH", "wa"]).await,
        Value::simple("OK")
    );
    let mut watch_kept = client(&setup).await;
    assert_eq!(watch_kept.call(&["WATCH", "wb"]).await, Value::simple("OK"));
    let mut watch_queued = client(&setup).await;
    assert_eq!(
        watch_queued.call(&["WATCH", "wc"]).await,
        Value::simple("OK")
    );
    assert_eq!(watch_queued.call(&["MULTI"]).await, Value::simple("OK"));
    assert_eq!(
        watch_queued.call(&["SET", "wc", "mine"]).await,
        Value::simple("QUEUED")
    );

    // A client blocked in BLPOP with no timeout.
    let mut blocked = client(&setup).await;
    let blocked_id = identity(&mut blocked).await;
    blocked.send(&["BLPOP", "jobs", "0"]).await;
    setup.wait_blocked(engine_of("jobs")).await;

    // New connections, one after another, throughout.
    let answered = Arc::new(AtomicU64::new(0));
    let connector = tokio::spawn(connect_until(
        setup.endpoint,
        stop.clone(),
        answered.clone(),
    ));

    wait_until("the loads to run", limit, || {
        acked.load(Ordering::Relaxed) > 500
            && received.load(Ordering::Relaxed) > 50
            && answered.load(Ordering::Relaxed) > 5
    })
    .await;

    let successor = setup.successor();
    let started = Instant::now();
    let moved = hand_over(&setup.control, &successor.control).await;
    let took = started.elapsed();
    // The nine clients above, and the connector's connection of the moment, if any.
    assert!(moved >= 9, "{moved} sessions moved");
    assert_eq!(successor.control.counts().adopted, moved as u64);
    // A session's end is counted once its task is reaped, just after it handed itself over.
    wait_until("the detached sessions to be counted", limit, || {
        setup.control.counts().detached == moved as u64
    })
    .await;
    let first = setup.control.counts();
    assert_eq!(
        (first.closed_at_boundary, first.sessions),
        (0, 0),
        "{first:?}"
    );
    println!("{moved} sessions moved in {took:?}");

    // The loads go on through the second endpoint; new connections reach it.
    let (acked_then, received_then, answered_then) = (
        acked.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
    );
    wait_until("the loads to go on after the move", limit, || {
        acked.load(Ordering::Relaxed) > acked_then + 500
            && received.load(Ordering::Relaxed) > received_then + 50
            && answered.load(Ordering::Relaxed) > answered_then + 5
    })
    .await;
    assert!(
        successor.stats.snapshot().connections_total > moved as u64,
        "new connections were accepted by the second endpoint"
    );

    // The blocked client gets the element pushed after the move.
    let mut other = redis_client(&setup).await;
    let _: u64 = other.lpush("jobs", "j1").await.unwrap();
    assert_eq!(
        blocked.reply().await,
        Value::Array(vec![bulk("jobs"), bulk("j1")])
    );
    assert_eq!(identity(&mut blocked).await, blocked_id);

    // The transaction queued before the move runs after it.
    assert_eq!(
        multi.call(&["EXEC"]).await,
        Value::Array(vec![Value::simple("OK"), Value::Integer(1)])
    );
    assert_eq!(identity(&mut multi).await, multi_id);

    // WATCH still guards: a key changed after the move aborts, an unchanged one runs.
    let _: () = other.set("wa", "changed").await.unwrap();
    assert_eq!(watch_changed.call(&["MULTI"]).await, Value::simple("OK"));
    assert_eq!(
        watch_changed.call(&["SET", "wa", "mine"]).await,
        Value::simple("QUEUED")
    );
    assert_eq!(watch_changed.call(&["EXEC"]).await, Value::NullArray);
    assert_eq!(watch_changed.call(&["GET", "wa"]).await, bulk("changed"));
    assert_eq!(identity(&mut watch_changed).await, watch_changed_id);
    assert_eq!(watch_kept.call(&["MULTI"]).await, Value::simple("OK"));
    assert_eq!(
        watch_kept.call(&["SET", "wb", "mine"]).await,
        Value::simple("QUEUED")
    );
    assert_eq!(
        watch_kept.call(&["EXEC"]).await,
        Value::Array(vec![Value::simple("OK")])
    );
    assert_eq!(
        watch_queued.call(&["EXEC"]).await,
        Value::Array(vec![Value::simple("OK")])
    );
    assert_eq!(watch_queued.call(&["GET", "wc"]).await, bulk("mine"));

    // The RESP3 client keeps its authentication, protocol and name.
    assert_eq!(named.call(&["CLIENT", "GETNAME"]).await, bulk("app3"));
    assert_eq!(identity(&mut named).await, named_id);
    assert_eq!(
        named.call(&["HSET", "h", "f", "v"]).await,
        Value::Integer(1)
    );
    assert_eq!(
        named.call(&["HGETALL", "h"]).await,
        Value::Map(vec![(bulk("f"), bulk("v"))])
    );

    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    let (messages, mut subscriber) = receiver.await.unwrap();
    let expected: Vec<String> = (0..published).map(|n| format!("m{n}")).collect();
    assert!(
        messages == expected,
        "the subscriber got every message once, in order: {} of {published}",
        messages.len()
    );
    assert_eq!(
        subscriber.call(&["PING"]).await,
        Value::Array(vec![bulk("pong"), bulk("")])
    );

    let mut total = 0;
    for (w, load) in writers.into_iter().enumerate() {
        let (pushed, errors) = load.await.unwrap();
        assert!(errors.is_empty(), "writer {w}: {errors:?}");
        let log: Vec<u64> = other.lrange(format!("log:{w}"), 0, -1).await.unwrap();
        assert_eq!(
            log,
            (0..pushed).collect::<Vec<_>>(),
            "writer {w} lost no write"
        );
        total += pushed;
    }
    assert_eq!(
        redis_client_id(&mut writer).await,
        writer_id,
        "the writer's connection is the same"
    );
    let failures = connector.await.unwrap();
    assert!(failures.is_empty(), "new connections failed: {failures:?}");
    println!(
        "{total} writes, {published} messages, {} new connections",
        answered.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn an_aborted_handover_gives_the_sessions_back_and_accepts_again() {
    let setup = Setup::start("127.0.41.2", 1, 1, Some(PASSWORD)).await;
    let mut kept = client(&setup).await;
    let kept_id = identity(&mut kept).await;
    assert_eq!(kept.call(&["SET", "k", "v"]).await, Value::simple("OK"));
    let mut subscriber = client(&setup).await;
    subscriber.call(&["SUBSCRIBE", "news"]).await;

    setup.control.stop_accepting().await;
    // The listening socket stays open: a new connection waits in its backlog, unanswered.
    let mut waiting = Resp::connect(setup.endpoint).await;
    waiting.send(&["AUTH", PASSWORD]).await;
    let unanswered = tokio::time::timeout(Duration::from_millis(300), waiting.read_value());
    assert!(unanswered.await.is_err(), "nothing accepts while stopped");

    // The handover fails after the sessions detached: the first endpoint takes them back.
    let mut detaching = setup.control.detach_all().await;
    assert_eq!(detaching.asked(), 2);
    let mut back = 0;
    while let Some(session) = detaching.next().await {
        setup.control.adopt(session).await.expect("adopted back");
        back += 1;
    }
    assert_eq!(back, 2);
    setup.control.resume_accepting();

    assert_eq!(waiting.reply().await, Value::simple("OK"));
    assert_eq!(waiting.call(&["GET", "k"]).await, bulk("v"));
    assert_eq!(identity(&mut kept).await, kept_id);
    assert_eq!(kept.call(&["GET", "k"]).await, bulk("v"));
    assert_eq!(
        kept.call(&["PUBLISH", "news", "hi"]).await,
        Value::Integer(1)
    );
    assert_eq!(
        subscriber.reply().await,
        Value::Array(vec![bulk("message"), bulk("news"), bulk("hi")])
    );
    let counts = setup.control.counts();
    assert_eq!((counts.detached, counts.adopted), (2, 2), "{counts:?}");
    assert_eq!(counts.sessions, 3, "{counts:?}");

    // A request withdrawn before a busy session acted on it leaves it serving.
    drop((kept, waiting, subscriber));
    wait_until("the clients to leave", Duration::from_secs(5), || {
        setup.control.counts().sessions == 0
    })
    .await;
    let mut busy = client(&setup).await;
    busy.send_all(&[&["BLPOP", "never", "0.3"], &["PING"]])
        .await;
    setup.wait_blocked(0).await;
    let mut detaching = setup.control.detach_all().await;
    assert_eq!(setup.control.keep_serving().await, 1);
    assert_eq!(busy.reply().await, Value::NullArray);
    assert_eq!(busy.reply().await, Value::simple("PONG"));
    assert!(detaching.next().await.is_none(), "nothing detached");
    assert_eq!(busy.call(&["GET", "k"]).await, bulk("v"));
}

#[tokio::test]
async fn closing_at_a_command_boundary_never_cuts_a_reply() {
    let setup = Setup::start("127.0.41.3", 1, 1, Some(PASSWORD)).await;
    let mut idle = client(&setup).await;
    let mut busy = client(&setup).await;
    // A batch whose first request blocks for a while, then two more: the client is closed
    // only once all three are answered.
    busy.send_all(&[
        &["BLPOP", "never", "0.5"],
        &["SET", "a", "1"],
        &["GET", "a"],
    ])
    .await;
    setup.wait_blocked(0).await;

    assert_eq!(setup.control.close_at_boundary().await, 2);
    assert!(
        idle.closed().await,
        "an idle client is closed at once, with nothing sent"
    );
    assert_eq!(busy.reply().await, Value::NullArray);
    assert_eq!(busy.reply().await, Value::simple("OK"));
    assert_eq!(busy.reply().await, bulk("1"));
    assert!(busy.closed().await, "then closed, between replies");
    wait_until("both closes to be counted", Duration::from_secs(5), || {
        setup.control.counts().closed_at_boundary == 2
    })
    .await;

    // New clients are served as before.
    let mut fresh = client(&setup).await;
    assert_eq!(fresh.call(&["GET", "a"]).await, bulk("1"));
}
