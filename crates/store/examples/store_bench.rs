//! The store's cost per configuration change and its snapshot size at a given number of
//! databases, run by `bench/store` once per size (one JSON line on stdout).
//!
//! Three store members (openraft, redb files with fsync, the internal RPC over HTTP) in this
//! process on `127.0.65.B..B+2`, each with a state feed held open as a daemon holds one (so
//! applying a change pays the copy-on-write a daemon pays). The databases are created through
//! the store (state only: no engines, no endpoints); once every member applied them, 50 untimed
//! and then `--changes` timed database updates (`UpdateBdb`, a new memory limit) are proposed
//! one after the other on the primary node, each timed until committed by a quorum and applied
//! there.
//!
//! Usage: store_bench --databases N --base B [--changes 200]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{fill, state_bytes, Member, Routes};
use flotilla_model::{BdbChange, Command};

/// Changes made before the timed ones, so the members settled after the databases' creation.
const WARM_UP: usize = 50;

struct Args {
    databases: u16,
    base: u8,
    changes: usize,
}

fn args() -> Args {
    let mut parsed = Args {
        databases: 10,
        base: 11,
        changes: 200,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--databases" => parsed.databases = value.parse().expect("--databases N"),
            "--base" => parsed.base = value.parse().expect("--base B"),
            "--changes" => parsed.changes = value.parse().expect("--changes N"),
            other => panic!("unknown argument {other}"),
        }
    }
    parsed
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path.join("store.redb"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = args();
    let addr = |i: u8| format!("127.0.65.{}", args.base + i);
    let one = Member::start(&addr(0), Routes::Current).await;
    let two = Member::start(&addr(1), Routes::Current).await;
    let three = Member::start(&addr(2), Routes::Current).await;
    one.create_cluster().await;
    two.join(&one).await;
    three.join(&one).await;
    let _feeds: Vec<_> = [&one, &two, &three]
        .iter()
        .map(|m| m.store.state_feed())
        .collect();
    let started = Instant::now();
    fill(&one.store, 0, args.databases, 64).await;
    let fill_s = started.elapsed().as_secs_f64();
    // Every member applied the databases, and the snapshot their creation set off is done.
    let filled = one.store.applied_index();
    for member in [&two, &three] {
        assert!(
            member
                .store
                .wait_applied(filled, Duration::from_secs(120))
                .await
        );
    }
    let mut times = Vec::with_capacity(args.changes);
    for i in 0..WARM_UP + args.changes {
        let change = Command::UpdateBdb(BdbChange {
            uid: 1 + (i as u64 % u64::from(args.databases)),
            memory_size: Some((200 + i as u64) << 20),
            authentication_redis_pass: None,
            remove_authentication_redis_pass: false,
            authentication_redis_pass_sha256: None,
            limits: Default::default(),
            tls_mode: Default::default(),
            config: Default::default(),
        });
        let started = Instant::now();
        one.store.propose(change).await.expect("changed");
        if i >= WARM_UP {
            times.push(millis(started.elapsed()));
        }
    }
    let index = one.store.applied_index();
    for member in [&two, &three] {
        assert!(
            member
                .store
                .wait_applied(index, Duration::from_secs(30))
                .await
        );
        assert_eq!(*member.store.state(), *one.store.state());
    }
    let state = state_bytes(&one.store);
    let objects = {
        let s = one.store.state();
        s.bdbs.len() + s.shards.len()
    };
    let snapshot_started = Instant::now();
    let raft = one.store.raft().expect("raft");
    raft.trigger().snapshot().await.expect("snapshot");
    let mut metrics = raft.metrics();
    let built = metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= index));
    tokio::time::timeout(Duration::from_secs(60), built)
        .await
        .expect("snapshot within 60 s")
        .expect("metrics");
    let snapshot_ms = millis(snapshot_started.elapsed());
    let p90 = {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() * 9 / 10]
    };
    let line = serde_json::json!({
        "databases": args.databases,
        "objects": objects,
        "changes": args.changes,
        "change_ms_median": median(times.clone()),
        "change_ms_p90": p90,
        "snapshot_bytes": state,
        "snapshot_build_ms": snapshot_ms,
        "fill_s": fill_s,
        "redb_bytes": dir_bytes(one.data_dir()),
    });
    println!("{line}");
    for member in [&one, &two, &three] {
        member.store.shutdown().await;
    }
}
