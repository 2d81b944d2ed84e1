//! Pub/sub through the proxy against real redis-7.0 shards: classic channels and patterns on
//! shard 0, sharded channels by slot, subscribed mode in RESP2 and RESP3 (push frames), the
//! return to normal mode, RESET, and disconnecting subscribers when their shard's primary
//! moves, confirmations and messages under CLIENT REPLY OFF. Addresses: 127.0.14.1 - 127.0.14.19
//! and 127.0.163.1 (endpoint port 12000, shards 20001+).

mod common;

use std::time::Duration;

use common::{Raw, Setup};
use flotilla_proxy::SlotMap;
use futures_util::StreamExt;
use redis::{AsyncCommands, PushKind, Value};

/// The RESP encoding of an aggregate (`*` array or `>` push) of bulk strings and integers
/// (`:n` items are integers, `-` a null).
fn frame(marker: char, items: &[&str]) -> String {
    let mut out = format!("{marker}{}\r\n", items.len());
    for item in items {
        match item.strip_prefix(':') {
            Some(n) => out.push_str(&format!(":{n}\r\n")),
            None if *item == "-" => out.push_str(if marker == '>' { "_\r\n" } else { "$-1\r\n" }),
            None => out.push_str(&format!("${}\r\n{item}\r\n", item.len())),
        }
    }
    out
}

/// Reads exactly `expected` from `raw` and compares it as text.
async fn expect(raw: &mut Raw, expected: &str) {
    let got = raw.read_at_least(expected.len()).await;
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

/// A channel name whose slot belongs to `shard` of an even 2-shard map.
fn channel_on(shard: u16, prefix: &str) -> String {
    let map = SlotMap::even(2).unwrap();
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| map.shard_of_key(c.as_bytes()).0 == shard)
        .expect("a channel on each shard")
}

#[tokio::test]
async fn redis_crate_subscribers_get_messages_and_patterns_published_through_the_proxy() {
    let setup = Setup::start("127.0.14.1", 2, 2, None).await;
    let client = redis::Client::open(format!("redis://{}/", setup.endpoint)).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe("news").await.unwrap();
    sub.psubscribe("events.*").await.unwrap();
    let pong: Vec<String> = sub.ping().await.unwrap();
    assert_eq!(pong, ["pong", ""], "PING in RESP2 subscribed mode");

    let mut publisher = setup.client(None).await;
    let receivers: usize = publisher.publish("news", "hello").await.unwrap();
    assert_eq!(receivers, 1);
    let receivers: usize = publisher.publish("events.login", "alice").await.unwrap();
    assert_eq!(receivers, 1);
    let receivers: usize = publisher.publish("elsewhere", "nobody").await.unwrap();
    assert_eq!(receivers, 0);

    let mut messages = sub.on_message();
    let next = |m: Option<redis::Msg>| {
        let m = m.expect("a message");
        let pattern: Option<String> = m.get_pattern().ok();
        (
            m.get_channel_name().to_owned(),
            m.get_payload::<String>().unwrap(),
            pattern,
        )
    };
    let wait = Duration::from_secs(5);
    let first = tokio::time::timeout(wait, messages.next()).await.unwrap();
    assert_eq!(next(first), ("news".into(), "hello".into(), None));
    let second = tokio::time::timeout(wait, messages.next()).await.unwrap();
    assert_eq!(
        next(second),
        (
            "events.login".into(),
            "alice".into(),
            Some("events.*".into())
        )
    );
    drop(messages);

    sub.unsubscribe("news").await.unwrap();
    let receivers: usize = publisher.publish("news", "gone").await.unwrap();
    assert_eq!(receivers, 0, "unsubscribed on the engine");
    let patterns: usize = redis::cmd("PUBSUB")
        .arg("NUMPAT")
        .query_async(&mut publisher)
        .await
        .unwrap();
    assert_eq!(patterns, 1);
}

#[tokio::test]
async fn resp2_subscribed_mode_allows_only_pubsub_commands_until_the_count_drops_to_zero() {
    let setup = Setup::start("127.0.14.2", 2, 2, None).await;
    let mut raw = Raw::connect(setup.endpoint).await;
    raw.send(b"SUBSCRIBE a b\r\nGET k\r\nPING\r\nPING hi\r\n")
        .await;
    let expected = [
        frame('*', &["subscribe", "a", ":1"]),
        frame('*', &["subscribe", "b", ":2"]),
        "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n".into(),
        frame('*', &["pong", ""]),
        frame('*', &["pong", "hi"]),
    ]
    .concat();
    expect(&mut raw, &expected).await;

    let mut publisher = setup.client(None).await;
    let receivers: usize = publisher.publish("b", "payload").await.unwrap();
    assert_eq!(receivers, 1);
    expect(&mut raw, &frame('*', &["message", "b", "payload"])).await;

    // Unsubscribing from everything returns to normal mode within the same pipeline.
    raw.send(b"PUNSUBSCRIBE\r\nUNSUBSCRIBE\r\nPING\r\nSET k v\r\nGET k\r\n")
        .await;
    let expected = [
        frame('*', &["punsubscribe", "-", ":2"]),
        frame('*', &["unsubscribe", "a", ":1"]),
        frame('*', &["unsubscribe", "b", ":0"]),
        "+PONG\r\n+OK\r\n$1\r\nv\r\n".into(),
    ];
    let got = raw.read_at_least(expected.concat().len()).await;
    let got = String::from_utf8_lossy(&got);
    // UNSUBSCRIBE without names confirms channels in the engine's order.
    let swapped = [
        expected[0].clone(),
        frame('*', &["unsubscribe", "b", ":1"]),
        frame('*', &["unsubscribe", "a", ":0"]),
        expected[3].clone(),
    ];
    assert!(got == expected.concat() || got == swapped.concat(), "{got}");
    let receivers: usize = publisher.publish("b", "late").await.unwrap();
    assert_eq!(receivers, 0);

    // Unsubscribing while not subscribed is answered as Redis does; RESET leaves the mode.
    raw.send(b"UNSUBSCRIBE x\r\nPSUBSCRIBE p*\r\nRESET\r\nGET k\r\n")
        .await;
    let expected = [
        frame('*', &["unsubscribe", "x", ":0"]),
        frame('*', &["psubscribe", "p*", ":1"]),
        "+RESET\r\n$1\r\nv\r\n".into(),
    ]
    .concat();
    expect(&mut raw, &expected).await;
    let receivers: usize = publisher.publish("pq", "after reset").await.unwrap();
    assert_eq!(receivers, 0, "RESET unsubscribed on the engine");
}

#[tokio::test]
async fn resp3_clients_get_push_frames_and_may_run_commands_while_subscribed() {
    let setup = Setup::start("127.0.14.3", 2, 2, None).await;
    let mut raw = Raw::connect(setup.endpoint).await;
    raw.send(b"HELLO 3\r\n").await;
    let hello = raw.read_at_least(1).await;
    assert!(hello.starts_with(b"%7\r\n"));
    raw.send(b"SUBSCRIBE c\r\nSET k v\r\nGET k\r\nPING\r\n")
        .await;
    let expected = [
        frame('>', &["subscribe", "c", ":1"]),
        "+OK\r\n$1\r\nv\r\n+PONG\r\n".into(),
    ]
    .concat();
    expect(&mut raw, &expected).await;

    let mut publisher = setup.client(None).await;
    let receivers: usize = publisher.publish("c", "pushed").await.unwrap();
    assert_eq!(receivers, 1);
    expect(&mut raw, &frame('>', &["message", "c", "pushed"])).await;
    raw.send(b"UNSUBSCRIBE c\r\nGET nothing\r\n").await;
    let expected = [frame('>', &["unsubscribe", "c", ":0"]), "_\r\n".into()].concat();
    expect(&mut raw, &expected).await;

    // The redis crate's RESP3 push API through the proxy.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let client =
        redis::Client::open(format!("redis://{}/?protocol=resp3", setup.endpoint)).unwrap();
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    con.subscribe("r3").await.unwrap();
    let () = con.set("k2", "v2").await.unwrap();
    let receivers: usize = publisher.publish("r3", "via push").await.unwrap();
    assert_eq!(receivers, 1);
    let mut got = None;
    for _ in 0..10 {
        let push = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if push.kind == PushKind::Message {
            got = Some(push.data);
            break;
        }
    }
    assert_eq!(
        got,
        Some(vec![
            Value::BulkString(b"r3".to_vec()),
            Value::BulkString(b"via push".to_vec())
        ])
    );
}

#[tokio::test]
async fn sharded_channels_are_served_by_their_slots_shard() {
    let setup = Setup::start("127.0.14.4", 2, 2, None).await;
    let (zero, one) = (channel_on(0, "s"), channel_on(1, "s"));
    let mut raw = Raw::connect(setup.endpoint).await;
    raw.send(format!("SSUBSCRIBE {zero}\r\nSSUBSCRIBE {one}\r\n").as_bytes())
        .await;
    let expected = [
        frame('*', &["ssubscribe", &zero, ":1"]),
        frame('*', &["ssubscribe", &one, ":2"]),
    ]
    .concat();
    expect(&mut raw, &expected).await;

    let mut publisher = setup.client(None).await;
    for (i, channel) in [&zero, &one].into_iter().enumerate() {
        let receivers: usize = redis::cmd("SPUBLISH")
            .arg(channel)
            .arg("m")
            .query_async(&mut publisher)
            .await
            .unwrap();
        assert_eq!(receivers, 1, "{channel}");
        expect(&mut raw, &frame('*', &["smessage", channel, "m"])).await;
        let mut engine = setup.direct(i).await;
        let on_engine: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .query_async(&mut engine)
            .await
            .unwrap();
        assert_eq!(on_engine, vec![channel.clone()], "shard {i}");
    }
    raw.send(b"SUNSUBSCRIBE\r\nGET k\r\n").await;
    let expected = [
        frame('*', &["sunsubscribe", &zero, ":1"]),
        frame('*', &["sunsubscribe", &one, ":0"]),
        "$-1\r\n".into(),
    ]
    .concat();
    expect(&mut raw, &expected).await;
}

#[tokio::test]
async fn subscribers_are_disconnected_when_shard_zero_moves_and_can_resubscribe() {
    let setup = Setup::start("127.0.14.5", 3, 2, None).await;
    let mut subscriber = Raw::connect(setup.endpoint).await;
    subscriber.send(b"SUBSCRIBE moving\r\n").await;
    expect(&mut subscriber, &frame('*', &["subscribe", "moving", ":1"])).await;
    let mut bystander = Raw::connect(setup.endpoint).await;
    bystander.send(b"PING\r\n").await;
    expect(&mut bystander, "+PONG\r\n").await;

    setup.move_shard(0, setup.engine_addr(2));
    let rest = subscriber.read_to_close().await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    bystander.send(b"PING\r\n").await;
    expect(&mut bystander, "+PONG\r\n").await;

    let mut again = Raw::connect(setup.endpoint).await;
    again.send(b"SUBSCRIBE moving\r\n").await;
    expect(&mut again, &frame('*', &["subscribe", "moving", ":1"])).await;
    let mut on_new_primary = setup.direct(2).await;
    let receivers: usize = on_new_primary.publish("moving", "x").await.unwrap();
    assert_eq!(receivers, 1, "resubscribed on the new primary");
    expect(&mut again, &frame('*', &["message", "moving", "x"])).await;
}

/// Redis's unit/pubsub "PubSub messages with CLIENT REPLY OFF": the engine pushes
/// (un)subscribe confirmations and messages whatever the reply mode, in RESP3 and RESP2; only
/// the replies of other commands are silenced. (The proxy muted the confirmations, and the
/// suite's subscriber waited for them until its unit timed out.)
#[tokio::test]
async fn subscribe_confirmations_and_messages_arrive_under_client_reply_off() {
    let setup = Setup::start("127.0.163.1", 2, 2, None).await;
    let mut publisher = setup.client(None).await;

    let mut raw = Raw::connect(setup.endpoint).await;
    raw.send(b"HELLO 3\r\n").await;
    let hello = raw.read_at_least(1).await;
    assert!(hello.starts_with(b"%7\r\n"));
    raw.send(b"CLIENT REPLY OFF\r\nSUBSCRIBE channel\r\nPSUBSCRIBE ch*\r\nGET k\r\n")
        .await;
    let expected = [
        frame('>', &["subscribe", "channel", ":1"]),
        frame('>', &["psubscribe", "ch*", ":2"]),
    ]
    .concat();
    expect(&mut raw, &expected).await;
    let receivers: usize = publisher.publish("channel", "hello").await.unwrap();
    assert_eq!(receivers, 2);
    let expected = [
        frame('>', &["message", "channel", "hello"]),
        frame('>', &["pmessage", "ch*", "channel", "hello"]),
    ]
    .concat();
    expect(&mut raw, &expected).await;
    raw.send(b"UNSUBSCRIBE channel\r\nPUNSUBSCRIBE ch*\r\nUNSUBSCRIBE none\r\nCLIENT REPLY ON\r\nPING\r\n")
        .await;
    let expected = [
        frame('>', &["unsubscribe", "channel", ":1"]),
        frame('>', &["punsubscribe", "ch*", ":0"]),
        frame('>', &["unsubscribe", "none", ":0"]),
        "+OK\r\n+PONG\r\n".into(),
    ]
    .concat();
    expect(&mut raw, &expected).await;

    let mut resp2 = Raw::connect(setup.endpoint).await;
    resp2
        .send(b"CLIENT REPLY OFF\r\nSET k v\r\nPSUBSCRIBE *\r\n")
        .await;
    expect(&mut resp2, &frame('*', &["psubscribe", "*", ":1"])).await;
    let receivers: usize = publisher.publish("any", "x").await.unwrap();
    assert_eq!(receivers, 1);
    expect(&mut resp2, &frame('*', &["pmessage", "*", "any", "x"])).await;
}
