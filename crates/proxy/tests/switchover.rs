//! Switchovers through the proxy against real redis-7.0 engines: hold and release, the hold
//! timeout, and writes refused `-READONLY` by a demoted primary being resent to the new one.
//! Addresses: 127.0.11.1 - 127.0.11.9 (endpoint port 12000, engines 20001+, 20100 for a gone one).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, Raw, Setup};
use flotilla_engine::{wait_for_sync, EngineClient};
use flotilla_proxy::ProxyOptions;
use redis::AsyncCommands;

/// INCRs per pipelined round of the writers.
const PIPELINE: usize = 10;

/// What one writer saw.
#[derive(Debug, Default)]
struct Tally {
    acked: u64,
    errors: Vec<String>,
    longest: Duration,
}

/// Pipelines INCRs on `key` until `stop`, counting acknowledged ones in `acked` as they come.
/// Each reply must be above the previous one this writer saw.
async fn write_until(
    mut client: redis::aio::MultiplexedConnection,
    key: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::default();
    let mut last = 0i64;
    for _ in 0..1_000_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut pipe = redis::pipe();
        for _ in 0..PIPELINE {
            pipe.incr(key, 1);
        }
        let started = Instant::now();
        match pipe.query_async::<Vec<i64>>(&mut client).await {
            Ok(values) => {
                for value in values {
                    assert!(value > last, "INCR went from {last} to {value}");
                    last = value;
                }
                tally.acked += PIPELINE as u64;
                acked.fetch_add(PIPELINE as u64, Ordering::Relaxed);
            }
            Err(e) => tally.errors.push(e.to_string()),
        }
        tally.longest = tally.longest.max(started.elapsed());
    }
    tally
}

/// INFO commandstats' `rejected_calls` for SET on `engine`.
async fn rejected_sets(engine: &EngineClient) -> u64 {
    rejected_calls(engine, "set").await
}

/// INFO commandstats' `rejected_calls` for `command` (lower case) on `engine`.
async fn rejected_calls(engine: &EngineClient, command: &str) -> u64 {
    let stats = engine.info("commandstats").await.unwrap();
    let Some(line) = stats.get(&format!("cmdstat_{command}")) else {
        return 0;
    };
    line.split(',')
        .find_map(|field| field.strip_prefix("rejected_calls="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Polls until engine `engine` has rejected at least `count` SETs (refused as READONLY).
async fn wait_rejected(engine: &EngineClient, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while rejected_sets(engine).await < count {
        assert!(
            Instant::now() < deadline,
            "SET was not refused by the replica"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_under_load_has_no_client_error_and_no_lost_write() {
    let setup = Setup::start("127.0.11.1", 2, 1, None).await;
    let (m, r) = setup.replicate().await;
    let r_addr = setup.engine_addr(1);

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..2 {
        let client = setup.patient_client(Duration::from_secs(5)).await;
        let (stop, acked) = (stop.clone(), acked.clone());
        writers.push(tokio::spawn(write_until(client, "counter", stop, acked)));
    }
    wait_until(
        "writes before the switchover",
        Duration::from_secs(10),
        || acked.load(Ordering::Relaxed) >= 2000,
    )
    .await;

    let held_at = Instant::now();
    setup.hold(0, true);
    m.client_pause_write(5000).await.unwrap();
    wait_for_sync(&m, &r, Duration::from_secs(3)).await.unwrap();
    r.replicaof_no_one().await.unwrap();
    setup.release_to(0, r_addr);
    let hold = held_at.elapsed();
    m.replicaof(r_addr.ip(), r_addr.port()).await.unwrap();
    m.client_unpause().await.unwrap();

    let after = acked.load(Ordering::Relaxed) + 2000;
    wait_until(
        "writes after the switchover",
        Duration::from_secs(10),
        || acked.load(Ordering::Relaxed) >= after,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut longest = Duration::ZERO;
    for writer in writers {
        let tally = writer.await.unwrap();
        assert!(tally.errors.is_empty(), "client errors: {:?}", tally.errors);
        total += tally.acked;
        longest = longest.max(tally.longest);
    }
    let mut client = setup.client(None).await;
    let through_proxy: u64 = client.get("counter").await.unwrap();
    let mut direct = setup.direct(1).await;
    let on_new_primary: u64 = direct.get("counter").await.unwrap();
    let refused = rejected_calls(&m, "incr").await;
    println!(
        "switchover: {total} acknowledged INCRs, counter {on_new_primary}, hold published for {hold:?}, longest client stall {longest:?}, INCRs refused READONLY by the old primary and resent {refused}"
    );
    assert_eq!(through_proxy, total, "acknowledged INCRs lost or doubled");
    assert_eq!(on_new_primary, total);
    assert!(longest < Duration::from_secs(2), "stall of {longest:?}");
}

#[tokio::test]
async fn a_hold_that_times_out_answers_not_executed_and_writes_nothing() {
    let options = ProxyOptions {
        hold_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    };
    let setup = Setup::start_with("127.0.11.2", 1, 1, None, options).await;
    setup.hold(0, true);
    let mut raw = Raw::connect(setup.endpoint).await;
    let started = Instant::now();
    raw.send(b"*3\r\n$3\r\nSET\r\n$6\r\nheld:a\r\n$1\r\n1\r\n*3\r\n$3\r\nSET\r\n$6\r\nheld:b\r\n$1\r\n2\r\n*1\r\n$4\r\nPING\r\n")
        .await;
    let not_executed = "-TRYAGAIN shard 0 (slots 0-16383) is held for a switchover for more than 300 ms; the command was not executed\r\n";
    let expected = format!("{not_executed}{not_executed}+PONG\r\n");
    let got = raw.read_at_least(expected.len()).await;
    let waited = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&got), expected);
    assert!(
        waited >= Duration::from_millis(300),
        "answered after {waited:?}"
    );
    let mut direct = setup.direct(0).await;
    let written: usize = direct.exists(&["held:a", "held:b"]).await.unwrap();
    assert_eq!(written, 0, "a command answered as not executed was written");

    setup.hold(0, false);
    raw.send(b"*3\r\n$3\r\nSET\r\n$6\r\nheld:a\r\n$1\r\n3\r\n")
        .await;
    assert_eq!(raw.read_at_least(5).await, b"+OK\r\n");
    let value: String = direct.get("held:a").await.unwrap();
    assert_eq!(value, "3");
}

#[tokio::test]
async fn held_commands_are_released_to_the_new_primary_in_order() {
    let setup = Setup::start("127.0.11.3", 2, 1, None).await;
    setup.hold(0, true);
    let mut client = setup.patient_client(Duration::from_secs(5)).await;
    let queued = tokio::spawn(async move {
        let mut pipe = redis::pipe();
        pipe.rpush("queue", "a")
            .rpush("queue", "b")
            .lrange("queue", 0, -1);
        pipe.query_async::<(u64, u64, Vec<String>)>(&mut client)
            .await
    });
    let early = tokio::time::timeout(Duration::from_millis(200), async {
        while !queued.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(early.await.is_err(), "a held command was answered");
    let mut old = setup.direct(0).await;
    let on_old: usize = old.exists("queue").await.unwrap();
    assert_eq!(on_old, 0, "a held command reached the old primary");

    setup.release_to(0, setup.engine_addr(1));
    let (first, second, list) = queued.await.unwrap().unwrap();
    assert_eq!((first, second), (1, 2));
    assert_eq!(list, ["a", "b"]);
    let mut new = setup.direct(1).await;
    let on_new: Vec<String> = new.lrange("queue", 0, -1).await.unwrap();
    assert_eq!(on_new, ["a", "b"]);
    let on_old: usize = old.exists("queue").await.unwrap();
    assert_eq!(on_old, 0);
}

/// An endpoint (hold timeout 1 s) whose shard 0 still points at engine 0 after engine 0 was
/// made a replica of engine 1, as a demoted primary is before the new one is published;
/// returns engine 0's client and engine 1's address.
async fn demoted_primary(ip: &str) -> (Setup, EngineClient, std::net::SocketAddr) {
    let options = ProxyOptions {
        hold_timeout: Duration::from_secs(1),
        ..ProxyOptions::default()
    };
    let setup = Setup::start_with(ip, 2, 1, None, options).await;
    let (m, r_addr) = (setup.engine(0).await, setup.engine_addr(1));
    m.replicaof(r_addr.ip(), r_addr.port()).await.unwrap();
    m.wait_link_up(Duration::from_secs(10)).await.unwrap();
    (setup, m, r_addr)
}

#[tokio::test]
async fn a_write_refused_as_readonly_is_resent_to_the_new_primary() {
    let (setup, m, r_addr) = demoted_primary("127.0.11.4").await;
    let mut client = setup.patient_client(Duration::from_secs(5)).await;

    let err = client.set::<_, _, ()>("moved", "1").await.unwrap_err();
    let text = err.to_string();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{text}");
    assert!(text.contains("not executed"), "{text}");
    assert_eq!(rejected_sets(&m).await, 1);

    let retried = tokio::spawn(async move { client.set::<_, _, ()>("moved", "2").await });
    wait_rejected(&m, 2).await;
    setup.move_shard(0, r_addr);
    retried.await.unwrap().unwrap();
    let mut new = setup.direct(1).await;
    let value: String = new.get("moved").await.unwrap();
    assert_eq!(value, "2");
}

#[tokio::test]
async fn a_transaction_refused_by_a_demoted_primary_is_resent_whole_to_the_new_primary() {
    let (setup, m, r_addr) = demoted_primary("127.0.11.5").await;
    let mut client = setup.patient_client(Duration::from_secs(5)).await;

    let transaction = tokio::spawn(async move {
        redis::pipe()
            .atomic()
            .set("{tx}a", "1")
            .incr("{tx}n", 1)
            .query_async::<(String, i64)>(&mut client)
            .await
    });
    // The demoted primary refuses the queued SET (READONLY), so EXEC runs nothing there.
    wait_rejected(&m, 1).await;
    setup.move_shard(0, r_addr);
    let (set, n) = transaction
        .await
        .unwrap()
        .expect("the transaction ran on the new primary, not an EXECABORT");
    assert_eq!((set.as_str(), n), ("OK", 1));
    let mut new = setup.direct(1).await;
    let value: String = new.get("{tx}a").await.unwrap();
    assert_eq!(value, "1");
}

#[tokio::test]
async fn a_blpop_unblocked_by_the_demotion_of_its_primary_waits_on_the_new_one() {
    let options = ProxyOptions {
        hold_timeout: Duration::from_secs(5),
        ..ProxyOptions::default()
    };
    let setup = Setup::start_with("127.0.11.6", 2, 1, None, options).await;
    let m = setup.engine(0).await;
    let r_addr = setup.engine_addr(1);
    let mut client = setup.patient_client(Duration::from_secs(20)).await;
    let popped = tokio::spawn(async move {
        redis::cmd("BLPOP")
            .arg("jobs")
            .arg(10)
            .query_async::<Option<(String, String)>>(&mut client)
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.info("clients").await.unwrap().get("blocked_clients") != Some("1") {
        assert!(
            Instant::now() < deadline,
            "BLPOP never blocked on the primary"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The primary is demoted (it unblocks BLPOP with -UNBLOCKED: nothing was popped), then
    // the new primary is published and gets the job.
    m.replicaof(r_addr.ip(), r_addr.port()).await.unwrap();
    setup.move_shard(0, r_addr);
    let mut new = setup.direct(1).await;
    let () = new.lpush("jobs", "job-1").await.unwrap();
    let popped = popped
        .await
        .unwrap()
        .expect("BLPOP answered, not UNBLOCKED");
    assert_eq!(popped, Some(("jobs".to_string(), "job-1".to_string())));
    let left: i64 = new.llen("jobs").await.unwrap();
    assert_eq!(left, 0, "the job was popped exactly once");
}

/// A write sent under a topology a moment old, to a primary whose engine is gone (it stopped
/// right after a switchover), is resent to the primary published meanwhile instead of being
/// answered "unavailable". The gone engine is a socket that accepts and then closes without
/// a reply once the new primary is published.
#[tokio::test]
async fn a_write_that_cannot_reach_a_primary_replaced_meanwhile_goes_to_the_new_one() {
    let setup = Setup::start("127.0.11.7", 1, 1, None).await;
    let gone = tokio::net::TcpListener::bind("127.0.11.7:20100")
        .await
        .unwrap();
    let engine = setup.engine_addr(0);
    setup.move_shard(0, gone.local_addr().unwrap());
    let mut client = setup.patient_client(Duration::from_secs(5)).await;

    let write = tokio::spawn(async move { client.set::<_, _, ()>("late", "1").await });
    let (socket, _) = tokio::time::timeout(Duration::from_secs(5), gone.accept())
        .await
        .expect("the proxy connects to the published primary")
        .unwrap();
    setup.move_shard(0, engine);
    drop(socket);

    write
        .await
        .unwrap()
        .expect("the write reaches the new primary");
    let mut direct = setup.direct(0).await;
    let value: String = direct.get("late").await.unwrap();
    assert_eq!(value, "1");
}

/// A pipelined `SET k new; GET k` whose SET the demoted primary refused (so it runs on the new
/// primary) reads `new`: the GET's answer from the demoted primary (`old`) is dropped and the
/// GET asked again of the new primary, after the resent SET.
#[tokio::test]
async fn a_read_pipelined_after_a_resent_write_reads_that_write() {
    let (setup, m, r_addr) = demoted_primary("127.0.11.8").await;
    let mut new = setup.direct(1).await;
    new.set::<_, _, ()>("ryw", "old").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let get = redis::cmd("GET").arg("ryw").clone();
    while m.command::<Option<String>>(&get).await.unwrap().as_deref() != Some("old") {
        assert!(
            Instant::now() < deadline,
            "the demoted primary got the old value"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut client = setup.patient_client(Duration::from_secs(5)).await;

    let pipeline = tokio::spawn(async move {
        redis::pipe()
            .set("ryw", "new")
            .get("ryw")
            .query_async::<(String, String)>(&mut client)
            .await
    });
    wait_rejected(&m, 1).await;
    setup.move_shard(0, r_addr);
    let (set, get) = pipeline.await.unwrap().unwrap();
    assert_eq!(set, "OK");
    assert_eq!(get, "new", "the read after the resent write sees it");
}
