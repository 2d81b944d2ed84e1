//! Endpoint statistics against real redis-7.0 shards: commands counted by outcome (ok, engine
//! error, not executed, unknown), client connections, and the latency histogram.
//! Addresses: 127.0.15.1 - 127.0.15.9 (endpoint port 12000, shards 20001+).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Raw, Setup};
use flotilla_proxy::{ProxyOptions, SlotMap, StatsSnapshot};

/// Polls the endpoint's counters until `done` holds, for at most 5 s.
async fn stats_until(setup: &Setup, done: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let snapshot = setup.stats.snapshot();
        if done(&snapshot) || tokio::time::Instant::now() > deadline {
            return snapshot;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn commands_are_counted_by_outcome_with_their_latency() {
    // A short hold bound: a request for a shard that cannot be reached is held that long, then
    // answered not executed.
    let options = ProxyOptions {
        hold_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    };
    let setup = Setup::start_with("127.0.15.1", 2, 2, None, options).await;
    let mut a = Raw::connect(setup.endpoint).await;
    let mut b = Raw::connect(setup.endpoint).await;
    // 3 ok (SET, GET, PING), 1 engine error (INCR of a non-number), 2 not executed (a refused
    // and an unknown command).
    a.send(b"SET k v\r\nGET k\r\nINCR k\r\nCONFIG GET x\r\nNOSUCH\r\nPING\r\n")
        .await;
    let got = a.read_at_least(1).await;
    let text = String::from_utf8_lossy(&got);
    let snapshot = stats_until(&setup, |s| s.commands_total >= 6).await;
    assert!(
        text.starts_with("+OK\r\n$1\r\nv\r\n-ERR value is not an integer"),
        "{text}"
    );
    assert_eq!(snapshot.commands_total, 6, "{snapshot:?}");
    assert_eq!(snapshot.ok_total, 3);
    assert_eq!(snapshot.error_replies_total, 1);
    assert_eq!(snapshot.not_executed_total, 2);
    assert_eq!(snapshot.connections_current, 2);
    assert_eq!(snapshot.connections_total, 2);
    let latency = &snapshot.latency;
    assert_eq!(latency.count, 6);
    assert_eq!(latency.counts.len(), latency.bounds_us.len() + 1);
    assert_eq!(latency.counts.iter().sum::<u64>(), 6);
    assert!(latency.sum_us > 0);
    assert_eq!(
        latency.cumulative().last().map(|c| c.1),
        Some(6),
        "under 1 s"
    );

    // A shard that cannot be reached past the hold bound: its commands are not executed.
    let shard_zero_key = (0..100)
        .map(|i| format!("k{i}"))
        .find(|k| SlotMap::even(2).unwrap().shard_of_key(k.as_bytes()).0 == 0)
        .unwrap();
    setup.move_shard(0, SocketAddr::from(([127, 0, 15, 1], 1)));
    b.send(format!("GET {shard_zero_key}\r\n").as_bytes()).await;
    let got = b.read_at_least(1).await;
    assert!(String::from_utf8_lossy(&got).contains("not executed"));
    let snapshot = stats_until(&setup, |s| s.commands_total >= 7).await;
    assert_eq!(snapshot.not_executed_total, 3, "{snapshot:?}");

    drop(a);
    let snapshot = stats_until(&setup, |s| s.connections_current == 1).await;
    assert_eq!(snapshot.connections_current, 1);
    assert_eq!(snapshot.connections_total, 2);
    let json = serde_json::to_string(&snapshot).unwrap();
    assert!(json.contains("\"not_executed_total\":3"), "{json}");
    let back: StatsSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snapshot);
}

#[tokio::test]
async fn a_command_whose_shard_connection_is_lost_after_sending_counts_as_unknown() {
    let setup = Setup::start("127.0.15.2", 1, 1, None).await;
    let mut client = Raw::connect(setup.endpoint).await;
    client.send(b"BLPOP stats:nothing 0\r\n").await;
    setup.wait_blocked(0).await;
    let mut direct = setup.direct(0).await;
    // The proxy's connection, with BLPOP sent on it, is closed by the engine.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    let got = client.read_at_least(1).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("may have executed"), "{text}");
    let snapshot = stats_until(&setup, |s| s.commands_total >= 1).await;
    assert_eq!(snapshot.unknown_outcome_total, 1, "{snapshot:?}");
    assert_eq!(snapshot.error_replies_total, 0, "{snapshot:?}");
    assert_eq!(snapshot.not_executed_total, 0, "{snapshot:?}");
}
