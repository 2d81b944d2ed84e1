//! The outcome of a write in flight when its master is killed, against real redis-7.0 engines
//! (crates/proxy/src/outcome.rs): a write the promoted replica provably never got is resent to
//! it and answered there, exactly once; a write it may have got stays "may have executed".
//!
//! The write is held in flight deterministically: the master's writes are paused (`CLIENT
//! PAUSE WRITE`), so the write and the offset probe behind it wait unanswered on the shared
//! connection, then the master is killed with SIGKILL and its replica promoted.
//! Addresses: 127.0.140.1 - 127.0.140.9 (endpoint port 12000, engines 20001+).

mod common;

use std::time::{Duration, Instant};

use common::Setup;
use flotilla_engine::{adopt, wait_for_sync, EngineClient};
use redis::AsyncCommands;

/// A master (engine 0) with a caught-up replica (engine 1), the endpoint routing to the master.
async fn replicated(ip: &str) -> (Setup, EngineClient, EngineClient) {
    let setup = Setup::start(ip, 2, 1, None).await;
    let (m, r) = setup.replicate().await;
    (setup, m, r)
}

/// Pauses the master's writes, sends `INCR n` through `client` and waits until the master holds
/// it unanswered (its connection from the endpoint shows `cmd=incr`), then kills the master
/// and promotes the replica in the topology. The INCR's answer.
async fn incr_in_flight_when_the_master_dies(
    setup: &Setup,
    m: &EngineClient,
    r: &EngineClient,
    mut client: redis::aio::MultiplexedConnection,
) -> redis::RedisResult<i64> {
    m.client_pause_write(30_000).await.unwrap();
    let incr = tokio::spawn(async move { client.incr::<_, _, i64>("n", 1).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let clients: String = m.command(redis::cmd("CLIENT").arg("LIST")).await.unwrap();
        if clients
            .lines()
            .any(|l| l.contains("user=flotilla-proxy") && l.contains("cmd=incr"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the INCR never reached the paused master: {clients}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let master = adopt(&setup.engines[0]).unwrap().expect("the master runs");
    assert!(
        master.kill_now(Duration::from_secs(5)),
        "SIGKILL of the master"
    );
    r.replicaof_no_one().await.unwrap();
    setup.move_shard(0, setup.engine_addr(1));
    incr.await.unwrap()
}

#[tokio::test]
async fn a_write_in_flight_on_a_killed_master_runs_once_on_the_promoted_replica() {
    let (setup, m, r) = replicated("127.0.140.1").await;
    let mut client = setup.patient_client(Duration::from_secs(10)).await;
    assert_eq!(client.incr::<_, _, i64>("n", 1).await.unwrap(), 1);
    wait_for_sync(&m, &r, Duration::from_secs(10))
        .await
        .unwrap();

    let started = Instant::now();
    let reply = incr_in_flight_when_the_master_dies(&setup, &m, &r, client).await;
    let took = started.elapsed();
    println!("INCR in flight when its master died: {reply:?} after {took:?}");
    assert_eq!(
        reply.expect("answered by the promoted replica, not \"may have executed\""),
        2
    );
    let mut new = setup.direct(1).await;
    let n: i64 = new.get("n").await.unwrap();
    assert_eq!(n, 2, "the INCR ran exactly once on the promoted replica");
    let stats = setup.stats.snapshot();
    assert_eq!(stats.unknown_outcome_total, 0, "{stats:?}");
}

#[tokio::test]
async fn a_write_in_flight_the_promoted_replica_may_have_got_stays_unknown() {
    let (setup, m, r) = replicated("127.0.140.2").await;
    let mut client = setup.patient_client(Duration::from_secs(10)).await;
    assert_eq!(client.incr::<_, _, i64>("n", 1).await.unwrap(), 1);
    // Another client's write after the endpoint's last offset probe reaches the replica: the
    // promoted replica then holds bytes after that offset, which could have been the INCR.
    let mut direct = setup.direct(0).await;
    let () = direct.set("other", 1).await.unwrap();
    wait_for_sync(&m, &r, Duration::from_secs(10))
        .await
        .unwrap();

    let reply = incr_in_flight_when_the_master_dies(&setup, &m, &r, client).await;
    let error = reply.expect_err("not resent: its absence cannot be proven");
    let text = error.to_string();
    println!("INCR in flight, absence unproven: {text}");
    assert!(text.contains("may have executed"), "{text}");
    let mut new = setup.direct(1).await;
    let n: i64 = new.get("n").await.unwrap();
    assert_eq!(n, 1, "the INCR was not resent");
    let stats = setup.stats.snapshot();
    assert_eq!(stats.unknown_outcome_total, 1, "{stats:?}");
}
