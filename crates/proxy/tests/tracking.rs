//! Client-side caching through an endpoint against real redis-7.0 shards (2 shards, so
//! invalidations come from both): CLIENT TRACKING in default and BCAST mode, OPTIN/OPTOUT with
//! CLIENT CACHING, NOLOOP, REDIRECT to a RESP2 subscriber and pushes to a RESP3 client, keys
//! changed directly on an engine, by another endpoint client and by expiry, FLUSHALL's null
//! and the broken redirect. Addresses: 127.0.161.1 - 127.0.161.2.

mod common;

use std::time::Duration;

use common::{Resp, Setup};
use flotilla_proxy::SlotMap;
use flotilla_resp::Value;
use redis::AsyncCommands;

/// A key starting with `prefix` on shard `shard` of an even 2-shard map.
fn key_on(prefix: &str, shard: u16) -> String {
    let map = SlotMap::even(2).unwrap();
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| map.shard_of_key(k.as_bytes()).0 == shard)
        .unwrap()
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(b) | Value::SimpleString(b) | Value::Error(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        Value::Integer(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// The keys of an invalidation, as a RESP3 push (`invalidate [keys]`) or a RESP2 message on
/// `__redis__:invalidate`; `Some(None)` for a null key list (a flush).
fn invalidated(value: &Value) -> Option<Option<Vec<String>>> {
    let keys = match value {
        Value::Push(items) if items.len() == 2 && text(&items[0]) == "invalidate" => &items[1],
        Value::Array(items)
            if items.len() == 3
                && text(&items[0]) == "message"
                && text(&items[1]) == "__redis__:invalidate" =>
        {
            &items[2]
        }
        _ => return None,
    };
    Some(match keys {
        Value::Array(keys) => Some(keys.iter().map(text).collect()),
        _ => None,
    })
}

/// The next frame of `client`, which must be an invalidation of exactly `keys`.
async fn expect_invalidation(client: &mut Resp, keys: &[&str]) {
    let frame = client.reply().await;
    let got = invalidated(&frame).unwrap_or_else(|| panic!("not an invalidation: {frame:?}"));
    let want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    assert_eq!(got, Some(want), "{frame:?}");
}

fn ok() -> Value {
    Value::simple("OK")
}

#[tokio::test]
async fn a_resp3_client_gets_pushes_from_every_shard_for_any_change() {
    let setup = Setup::start("127.0.161.1", 2, 2, None).await;
    let (k0, k1) = (key_on("k", 0), key_on("k", 1));
    let mut r = Resp::connect(setup.endpoint).await;
    let Value::Map(_) = r.call(&["HELLO", "3"]).await else {
        panic!("HELLO 3 is a map")
    };
    assert_eq!(r.call(&["CLIENT", "TRACKING", "ON"]).await, ok());
    assert_eq!(
        r.call(&["CLIENT", "GETREDIR"]).await,
        Value::Integer(0),
        "tracking without redirect"
    );
    assert_eq!(r.call(&["GET", &k0]).await, Value::Null);
    assert_eq!(r.call(&["GET", &k1]).await, Value::Null);

    // A write straight to each engine (never through the proxy) invalidates.
    let mut direct0 = setup.direct(0).await;
    let mut direct1 = setup.direct(1).await;
    let () = direct0.set(&k0, "x").await.unwrap();
    expect_invalidation(&mut r, &[&k0]).await;
    let () = direct1.set(&k1, "y").await.unwrap();
    expect_invalidation(&mut r, &[&k1]).await;

    // Another client of the endpoint; then an expiry on the engine.
    let mut other = setup.client(None).await;
    assert_eq!(r.call(&["GET", &k1]).await, Value::bulk("y"));
    let () = other.set(&k1, "z").await.unwrap();
    expect_invalidation(&mut r, &[&k1]).await;
    let () = redis::cmd("SET")
        .arg(&k0)
        .arg("short")
        .arg("PX")
        .arg(1000)
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(r.call(&["GET", &k0]).await, Value::bulk("short"));
    expect_invalidation(&mut r, &[&k0]).await;

    // The client's own write: the reply, then the push (no NOLOOP).
    assert_eq!(r.call(&["GET", &k1]).await, Value::bulk("z"));
    assert_eq!(r.call(&["SET", &k1, "mine"]).await, ok());
    expect_invalidation(&mut r, &[&k1]).await;

    // FLUSHALL: a null key list from each shard it reached.
    assert_eq!(r.call(&["GET", &k1]).await, Value::bulk("mine"));
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut other)
        .await
        .unwrap();
    for _ in 0..2 {
        let frame = r.reply().await;
        assert_eq!(invalidated(&frame), Some(None), "{frame:?}");
    }

    let Value::Map(info) = r.call(&["CLIENT", "TRACKINGINFO"]).await else {
        panic!("TRACKINGINFO is a map")
    };
    let flags = info
        .iter()
        .find(|(k, _)| text(k) == "flags")
        .map(|(_, v)| v.clone());
    assert_eq!(flags, Some(Value::Array(vec![Value::bulk("on")])));
    assert_eq!(r.call(&["CLIENT", "TRACKING", "OFF"]).await, ok());
    assert_eq!(r.call(&["CLIENT", "GETREDIR"]).await, Value::Integer(-1));
}

#[tokio::test]
async fn redirect_bcast_optin_optout_noloop_and_a_broken_redirect() {
    let setup = Setup::start("127.0.161.2", 2, 2, None).await;
    // The redirect client: RESP2, subscribed to the invalidation channel.
    let mut d = Resp::connect(setup.endpoint).await;
    let id = text(&d.call(&["CLIENT", "ID"]).await);
    let Value::Array(_) = d.call(&["SUBSCRIBE", "__redis__:invalidate"]).await else {
        panic!("subscribed")
    };
    let mut r = Resp::connect(setup.endpoint).await;
    let missing = r
        .call(&["CLIENT", "TRACKING", "ON", "REDIRECT", "999999999"])
        .await;
    assert!(text(&missing).contains("does not exist"), "{missing:?}");

    // BCAST with a prefix and NOLOOP: every key under a: on both shards, none of r's own.
    let on = [
        "CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "a:", "NOLOOP",
    ];
    let on: Vec<&str> = on.iter().copied().chain(["REDIRECT", &id]).collect();
    assert_eq!(r.call(&on).await, ok());
    let (a0, a1, b0) = (key_on("a:", 0), key_on("a:", 1), key_on("b:", 0));
    let mut direct0 = setup.direct(0).await;
    let mut direct1 = setup.direct(1).await;
    let () = direct1.set(&a1, 1).await.unwrap();
    expect_invalidation(&mut d, &[&a1]).await;
    let () = direct0.set(&b0, 1).await.unwrap(); // not under a:
    assert_eq!(r.call(&["SET", &a1, "loop"]).await, ok()); // NOLOOP: r's own write
    let () = direct0.set(&a0, 1).await.unwrap();
    expect_invalidation(&mut d, &[&a0]).await;
    let overlap = r
        .call(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "a"])
        .await;
    assert!(text(&overlap).starts_with("ERR Prefix 'a' overlaps with an existing prefix 'a:'"));
    let Value::BulkString(line) = r.call(&["CLIENT", "INFO"]).await else {
        panic!("CLIENT INFO is a bulk string")
    };
    let line = String::from_utf8_lossy(&line).into_owned();
    assert!(
        line.contains(" flags=tB ") && line.contains(&format!(" redir={id} ")),
        "{line}"
    );
    assert_eq!(r.call(&["CLIENT", "TRACKING", "OFF"]).await, ok());

    // OPTIN: only the read after CLIENT CACHING YES is tracked.
    let on = ["CLIENT", "TRACKING", "ON", "OPTIN", "REDIRECT", &id];
    assert_eq!(r.call(&on).await, ok());
    let (k0, k1) = (key_on("in", 0), key_on("in", 1));
    r.call(&["GET", &k0]).await;
    assert_eq!(r.call(&["CLIENT", "CACHING", "YES"]).await, ok());
    r.call(&["GET", &k1]).await;
    let () = direct0.set(&k0, 1).await.unwrap();
    let () = direct1.set(&k1, 1).await.unwrap();
    expect_invalidation(&mut d, &[&k1]).await;
    assert_eq!(r.call(&["CLIENT", "TRACKING", "OFF"]).await, ok());

    // OPTOUT: every read but the one after CLIENT CACHING NO.
    let on = ["CLIENT", "TRACKING", "ON", "OPTOUT", "REDIRECT", &id];
    assert_eq!(r.call(&on).await, ok());
    let (k0, k1) = (key_on("out", 0), key_on("out", 1));
    assert_eq!(r.call(&["CLIENT", "CACHING", "NO"]).await, ok());
    r.call(&["GET", &k1]).await;
    r.call(&["GET", &k0]).await;
    let () = direct1.set(&k1, 1).await.unwrap();
    let () = direct0.set(&k0, 1).await.unwrap();
    expect_invalidation(&mut d, &[&k0]).await;
    assert_eq!(r.call(&["CLIENT", "TRACKING", "OFF"]).await, ok());

    // A RESP3 tracking client whose redirect client leaves: told once, and TRACKINGINFO says so.
    let Value::Map(_) = r.call(&["HELLO", "3"]).await else {
        panic!("HELLO 3 is a map")
    };
    assert_eq!(
        r.call(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id]).await,
        ok()
    );
    let k = key_on("gone", 1);
    r.call(&["GET", &k]).await;
    assert_eq!(d.call(&["QUIT"]).await, ok());
    assert!(d.closed().await);
    drop(d);
    // The redirect client's session ends just after its connection closes: write until the
    // tracking client hears that it is gone (an invalidation before that goes to the session
    // that is ending).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let () = direct1.set(&k, 2).await.unwrap();
        r.send(&["GET", &k]).await;
        // The push comes before the GET's reply, or first in the next round.
        if let Value::Push(items) = r.reply().await {
            assert_eq!(text(&items[0]), "tracking-redir-broken");
            assert_eq!(text(&items[1]), id);
            assert_eq!(r.reply().await, Value::bulk("2"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never told the redirect broke"
        );
    }
    let Value::Map(info) = r.call(&["CLIENT", "TRACKINGINFO"]).await else {
        panic!("TRACKINGINFO is a map")
    };
    assert_eq!(
        info[0].1,
        Value::Array(vec![Value::bulk("on"), Value::bulk("broken_redirect")])
    );
}
