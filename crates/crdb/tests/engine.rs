//! The engine-side Active-Active layer on real engines: two engines stand for two instances of a
//! CRDB (one shard each); writes go in with `write_local` and friends, travel through the op log
//! (`read_log`) and arrive with `apply_remote` or, past the backlog, as states (`scan_states`,
//! `merge_remote`). Every test compares every key of both engines (values, deadlines, metadata)
//! and each engine with its own metadata.
//!
//! Addresses: 127.0.233.1 - 127.0.233.9.

mod common;

use common::{assert_same, now, raw_meta, ship, Engines, Shipped, A, B};
use flotilla_crdb::{
    apply_remote_batch, copy, entry_dot, log_end, merge_remote, position, read_log, rename,
    repl_backlog, scan_states, set_repl_backlog, write_local, write_many, Conn, CrdbError,
    KeyState, Position, DEFAULT_REPL_BACKLOG,
};
use flotilla_crdt::{Blob, End, Value, Write, WriteError};
use flotilla_engine::EngineVersion;

fn blob(s: &str) -> Blob {
    Blob::from(s)
}

fn set(value: &str) -> Write {
    Write::Set {
        value: blob(value),
        keep_ttl: false,
    }
}

async fn get(conn: &mut Conn, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

/// A scripted sequence of every write form on instance A; returns how many ops it logged.
async fn write_everything(a: &mut Conn) -> usize {
    let mut ops = 0;
    let w = |key: &str, write: Write| (key.to_string(), write);
    let writes = vec![
        w("s1", set("hello")),
        w("s1", set("hello again")),
        w("c", Write::IncrBy(5)),
        w("c", Write::IncrBy(-2)),
        w("f", Write::IncrByFloat(1.5)),
        w(
            "h",
            Write::HSet(vec![(blob("a"), blob("1")), (blob("b"), blob("2"))]),
        ),
        w("h", Write::HDel(vec![blob("a")])),
        w("h", Write::HIncrBy(blob("n"), 3)),
        w("set", Write::SAdd(vec![blob("x"), blob("y"), blob("z")])),
        w("set", Write::SRem(vec![blob("y")])),
        w("z", Write::ZAdd(vec![(blob("m1"), 1.0), (blob("m2"), 2.0)])),
        w("z", Write::ZIncrBy(blob("m1"), 2.5)),
        w("z", Write::ZRem(vec![blob("m2")])),
        w(
            "l",
            Write::Push(End::Right, vec![blob("a"), blob("b"), blob("c")]),
        ),
        w("l", Write::Push(End::Left, vec![blob("z")])),
        w(
            "l",
            Write::LInsert {
                before: true,
                pivot: blob("b"),
                value: blob("ins"),
            },
        ),
        w("l", Write::Pop(End::Left, 1)),
        w("l", Write::LSet(0, blob("set0"))),
        w("l", Write::LRem(0, blob("c"))),
        w("l", Write::LTrim(0, 5)),
        w("exp", set("goes in a minute")),
        w("exp", Write::ExpireAt(now() + 60_000)),
        w("kept", set("was to expire")),
        w("kept", Write::ExpireAt(now() + 60_000)),
        w("kept", Write::Persist),
        w("gone", set("deleted")),
        w("gone", Write::Del),
        w("{tag}x", set("hash-tagged")),
        w("br{ace", set("a brace")),
    ];
    for (key, write) in writes {
        let out = write_local(a, A, 1, now(), key.as_bytes(), write)
            .await
            .unwrap();
        ops += usize::from(out.op.is_some());
    }
    // Writes that change nothing log nothing.
    for (key, write) in [
        ("set", Write::SRem(vec![blob("absent")])),
        ("set", Write::SAdd(vec![blob("x")])),
        ("h", Write::HDel(vec![blob("absent")])),
        ("never", Write::Del),
        ("never", Write::ExpireAt(now() + 1000)),
    ] {
        let out = write_local(a, A, 1, now(), key.as_bytes(), write)
            .await
            .unwrap();
        assert_eq!(out.op, None, "{key}: no op");
        assert_eq!(out.before, out.after);
    }
    // Refusals are the engine's own errors, and change nothing.
    let refused = write_local(a, A, 1, now(), b"h", Write::IncrBy(1)).await;
    assert!(
        matches!(refused, Err(CrdbError::Write(WriteError::WrongType))),
        "{refused:?}"
    );
    let refused = write_local(a, A, 1, now(), b"s1", Write::IncrBy(1)).await;
    assert_eq!(
        refused.unwrap_err().to_string(),
        "ERR value is not an integer or out of range"
    );
    // Binary keys and values.
    let out = write_local(a, A, 1, now(), b"bin\xff\x00", set_bytes(b"\x00\xfe\xff"))
        .await
        .unwrap();
    ops += usize::from(out.op.is_some());
    // MSET (a key twice: the last value stays) and DEL of two keys, each one script.
    let outs = write_many(
        a,
        A,
        1,
        now(),
        vec![
            (b"m1".to_vec(), set("one")),
            (b"m2".to_vec(), set("two")),
            (b"m1".to_vec(), set("uno")),
        ],
    )
    .await
    .unwrap();
    assert_eq!(outs.len(), 3);
    ops += outs.iter().filter(|o| o.op.is_some()).count();
    assert_eq!(get(a, "m1").await.as_deref(), Some(&b"uno"[..]));
    let outs = write_many(
        a,
        A,
        1,
        now(),
        vec![
            (b"m2".to_vec(), Write::Del),
            (b"missing".to_vec(), Write::Del),
        ],
    )
    .await
    .unwrap();
    assert_eq!(outs.iter().filter(|o| o.op.is_some()).count(), 1);
    ops += 1;
    // RENAME and COPY.
    let before = log_len(a).await;
    assert!(rename(a, A, 1, now(), b"s1", b"s1r", false).await.unwrap());
    assert!(!rename(a, A, 1, now(), b"c", b"s1r", true).await.unwrap());
    assert!(matches!(
        rename(a, A, 1, now(), b"nothing", b"x", false).await,
        Err(CrdbError::Write(WriteError::NoSuchKey))
    ));
    assert!(copy(a, A, 1, now(), b"h", b"hcopy", false).await.unwrap());
    assert!(!copy(a, A, 1, now(), b"z", b"hcopy", false).await.unwrap());
    assert!(!copy(a, A, 1, now(), b"nothing", b"y", false).await.unwrap());
    assert!(copy(a, A, 1, now(), b"z", b"hcopy", true).await.unwrap());
    ops += (log_len(a).await - before) as usize;
    // Collections long enough that their rewrite is split into several engine commands.
    let fields: Vec<(Blob, Blob)> = (0..700)
        .map(|i| (Blob::from(format!("f{i}")), Blob::from(format!("v{i}"))))
        .collect();
    let bulk = vec![
        ("bighash", Write::HSet(fields)),
        (
            "biglist",
            Write::Push(
                End::Right,
                (0..1500).map(|i| Blob::from(format!("e{i}"))).collect(),
            ),
        ),
        (
            "biglist",
            Write::LInsert {
                before: false,
                pivot: blob("e700"),
                value: blob("middle"),
            },
        ),
    ];
    for (key, write) in bulk {
        write_local(a, A, 1, now(), key.as_bytes(), write)
            .await
            .unwrap();
        ops += 1;
    }
    // The client's view before and after, from which the proxy builds replies.
    let out = write_local(a, A, 1, now(), b"c", Write::IncrBy(10))
        .await
        .unwrap();
    assert_eq!(out.before.value, Some(Value::String(blob("3"))));
    assert_eq!(out.after.value, Some(Value::String(blob("13"))));
    ops += 1;
    ops
}

fn set_bytes(value: &[u8]) -> Write {
    Write::Set {
        value: Blob(value.to_vec()),
        keep_ttl: false,
    }
}

async fn log_len(conn: &mut Conn) -> u64 {
    read_log(conn, 0, 0).await.unwrap().last
}

/// Everything written on A reaches B through the log with every key equal; delivering it all
/// again changes nothing; B's own concurrent writes flow back and both converge.
async fn replicates_every_key_through_the_log(ip: &str, version: EngineVersion) {
    let engines = Engines::start(ip, version, 2).await;
    let (mut a, mut b) = (engines.conn(0).await, engines.conn(1).await);
    let ops = write_everything(&mut a).await;
    let page = read_log(&mut a, 0, 1_000_000).await.unwrap();
    assert_eq!(page.entries.len(), ops, "one log entry per effective write");
    assert_eq!(page.first, Some(1));
    assert_eq!(page.last, ops as u64);
    assert_eq!(
        entry_dot(&mut a, 3).await.unwrap(),
        Some(page.entries[2].dot)
    );
    assert_eq!(entry_dot(&mut a, ops as u64 + 1).await.unwrap(), None);
    assert_eq!(position(&mut b, A).await.unwrap(), None);

    let shipped = ship(&mut a, &mut b, A, None).await;
    assert_eq!(
        shipped,
        Shipped {
            new: ops,
            duplicate: 0
        }
    );
    assert_same(&mut a, &mut b).await;
    assert_eq!(get(&mut b, "c").await.as_deref(), Some(&b"13"[..]));
    assert_eq!(
        read_log(&mut b, 0, 10).await.unwrap().last,
        0,
        "B logs none of A's ops"
    );

    // Duplicate delivery: everything again from the start changes nothing.
    let metas: Vec<Option<String>> = {
        let mut v = Vec::new();
        for key in ["c", "l", "h", "biglist"] {
            v.push(raw_meta(&mut b, key.as_bytes()).await);
        }
        v
    };
    let again = ship(&mut a, &mut b, A, Some(Position::START)).await;
    assert_eq!(
        again,
        Shipped {
            new: 0,
            duplicate: ops
        }
    );
    for (key, meta) in ["c", "l", "h", "biglist"].iter().zip(metas) {
        assert_eq!(
            raw_meta(&mut b, key.as_bytes()).await,
            meta,
            "{key} unchanged"
        );
    }
    assert_same(&mut a, &mut b).await;

    // Concurrent writes on both sides, then each side's log to the other.
    for (key, write) in [
        ("c", Write::IncrBy(100)),
        ("set", Write::SAdd(vec![blob("from-a")])),
        ("h", Write::HSet(vec![(blob("b"), blob("A"))])),
    ] {
        write_local(&mut a, A, 1, now(), key.as_bytes(), write)
            .await
            .unwrap();
    }
    for (key, write) in [
        ("c", Write::IncrBy(1000)),
        ("set", Write::SRem(vec![blob("x")])),
        ("h", Write::HSet(vec![(blob("b"), blob("B"))])),
        ("new-on-b", Write::Push(End::Left, vec![blob("q")])),
    ] {
        write_local(&mut b, B, 1, now(), key.as_bytes(), write)
            .await
            .unwrap();
    }
    assert_eq!(ship(&mut a, &mut b, A, None).await.new, 3);
    assert_eq!(ship(&mut b, &mut a, B, None).await.new, 4);
    assert_same(&mut a, &mut b).await;
    assert_eq!(get(&mut a, "c").await.as_deref(), Some(&b"1113"[..]));
}

#[tokio::test]
async fn redis70_replicates_every_key_through_the_log() {
    replicates_every_key_through_the_log("127.0.233.1", EngineVersion::Redis70).await;
}

#[tokio::test]
async fn valkey91_replicates_every_key_through_the_log() {
    replicates_every_key_through_the_log("127.0.233.2", EngineVersion::Valkey91).await;
}

#[tokio::test]
async fn redis62_replicates_every_key_through_the_log() {
    replicates_every_key_through_the_log("127.0.233.5", EngineVersion::Redis62).await;
}

#[tokio::test]
async fn valkey81_replicates_every_key_through_the_log() {
    replicates_every_key_through_the_log("127.0.233.6", EngineVersion::Valkey81).await;
}

/// Past the backlog the log no longer starts where the puller is; the state transfer
/// (`scan_states` + `merge_remote`) brings B level, with B's own unshipped writes kept, and
/// shipping resumes from the log position taken before the scan.
#[tokio::test]
async fn merges_states_after_the_log_is_trimmed() {
    let engines = Engines::start("127.0.233.3", EngineVersion::Valkey91, 2).await;
    let (mut a, mut b) = (engines.conn(0).await, engines.conn(1).await);
    assert_eq!(repl_backlog(&mut a).await.unwrap(), DEFAULT_REPL_BACKLOG);
    set_repl_backlog(&mut a, 10).await.unwrap();
    assert_eq!(repl_backlog(&mut a).await.unwrap(), 10);
    // B has some of A's ops and writes of its own A has not seen.
    for i in 0..5 {
        write_local(&mut a, A, 1, now(), b"ctr", Write::IncrBy(i))
            .await
            .unwrap();
    }
    ship(&mut a, &mut b, A, None).await;
    for (key, write) in [
        ("ctr", Write::IncrBy(1000)),
        ("s", Write::SAdd(vec![blob("b-only")])),
    ] {
        write_local(&mut b, B, 1, now(), key.as_bytes(), write)
            .await
            .unwrap();
    }
    // A writes far more than its backlog.
    for i in 0..600u64 {
        let key = format!("k{}", i % 50);
        let write = match i % 4 {
            0 => set(&format!("v{i}")),
            1 => Write::IncrBy(i as i64),
            2 => Write::SAdd(vec![Blob::from(format!("m{i}"))]),
            _ => Write::HSet(vec![(blob("f"), Blob::from(format!("{i}")))]),
        };
        let key = if i % 4 == 1 {
            "ctr".to_string()
        } else {
            format!("{key}-{}", i % 4)
        };
        write_local(&mut a, A, 1, now(), key.as_bytes(), write)
            .await
            .unwrap();
    }
    write_local(&mut a, A, 1, now(), b"s", Write::SAdd(vec![blob("a-only")]))
        .await
        .unwrap();
    let at = position(&mut b, A).await.unwrap().unwrap();
    assert_eq!(at.n, 5);
    let page = read_log(&mut a, at.n, 100).await.unwrap();
    let first = page.first.unwrap();
    assert!(first > at.n + 1, "the log was trimmed (first {first})");
    assert!(
        page.last - first < 300,
        "about the backlog is kept: {first}..{}",
        page.last
    );
    assert!(page.entries.first().unwrap().n >= first);

    // The state transfer: the position first, then every key's state.
    let last = read_log(&mut a, 0, 0).await.unwrap().last;
    let resume = log_end(&mut a).await.unwrap();
    assert_eq!(resume.n, last);
    assert_eq!(resume.dot, entry_dot(&mut a, last).await.unwrap());
    assert!(resume.dot.is_some());
    assert_eq!(
        log_end(&mut b).await.unwrap().n,
        2,
        "B logged its own two writes"
    );
    let mut cursor = 0;
    let mut merged = std::collections::BTreeSet::new();
    loop {
        let (next, page) = scan_states(&mut a, cursor, 20).await.unwrap();
        for (key, json) in page {
            merge_remote(&mut b, &key, &KeyState::from_meta(&json).unwrap())
                .await
                .unwrap();
            merged.insert(key);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(merged.len(), 77, "every key of A merged");
    assert_eq!(
        merged.into_iter().collect::<Vec<_>>(),
        common::user_keys(&mut a).await
    );
    // Merging again is harmless.
    let before = raw_meta(&mut b, b"ctr").await;
    let json = raw_meta(&mut a, b"ctr").await.unwrap();
    merge_remote(&mut b, b"ctr", &KeyState::from_meta(&json).unwrap())
        .await
        .unwrap();
    assert_eq!(raw_meta(&mut b, b"ctr").await, before);
    // A gets B's writes the usual way; then both sides are level.
    ship(&mut b, &mut a, B, None).await;
    let after = ship(&mut a, &mut b, A, Some(resume)).await;
    assert_eq!(
        after,
        Shipped::default(),
        "nothing after the transfer's position"
    );
    assert_same(&mut a, &mut b).await;
    let sum: i64 = (0..5).sum::<i64>() + 1000 + (0..600).filter(|i| i % 4 == 1).sum::<i64>();
    assert_eq!(
        get(&mut a, "ctr").await.as_deref(),
        Some(sum.to_string().as_bytes())
    );
    let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
        .arg("s")
        .query_async(&mut b)
        .await
        .unwrap();
    assert_eq!(members.len(), 2, "both sides' members kept");
}

/// Several writers on one key at once (each its own connection): every attempt that lost the
/// race is retried from fresh metadata, so nothing acknowledged is lost and each op has its own
/// dot; the other instance ends up equal.
#[tokio::test]
async fn concurrent_writers_on_one_key_lose_nothing() {
    let engines = Engines::start("127.0.233.4", EngineVersion::Redis70, 2).await;
    const WRITERS: i64 = 4;
    const EACH: i64 = 60;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut conn = engines.conn(0).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                write_local(&mut conn, A, 1, now(), b"hot", Write::IncrBy(w + 1))
                    .await
                    .unwrap();
                let field = Blob::from(format!("w{w}-{i}"));
                write_local(
                    &mut conn,
                    A,
                    1,
                    now(),
                    b"hothash",
                    Write::HSet(vec![(field, blob("x"))]),
                )
                .await
                .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (mut a, mut b) = (engines.conn(0).await, engines.conn(1).await);
    let expected: i64 = (1..=WRITERS).map(|w| w * EACH).sum();
    assert_eq!(
        get(&mut a, "hot").await.as_deref(),
        Some(expected.to_string().as_bytes())
    );
    let hlen: i64 = redis::cmd("HLEN")
        .arg("hothash")
        .query_async(&mut a)
        .await
        .unwrap();
    assert_eq!(hlen, WRITERS * EACH);
    let page = read_log(&mut a, 0, 100_000).await.unwrap();
    assert_eq!(page.entries.len() as i64, 2 * WRITERS * EACH);
    let mut dots: Vec<_> = page
        .entries
        .iter()
        .map(|e| (e.json.contains("\"hot\""), e.dot))
        .collect();
    dots.sort();
    dots.dedup();
    assert_eq!(
        dots.len() as i64,
        2 * WRITERS * EACH,
        "every op its own dot"
    );
    ship(&mut a, &mut b, A, None).await;
    assert_same(&mut a, &mut b).await;
}

/// Keys the engines expired themselves: the next write starts a fresh key (any type), on the
/// origin and on the peer, whose engine no longer holds the old value either (the script's
/// commands for an absent key).
#[tokio::test]
async fn writes_after_the_engine_expired_a_key_start_fresh() {
    let engines = Engines::start("127.0.233.7", EngineVersion::Redis70, 2).await;
    let (mut a, mut b) = (engines.conn(0).await, engines.conn(1).await);
    let soon = now() + 300;
    for (key, write) in [
        ("k", set("old")),
        ("k", Write::ExpireAt(soon)),
        ("l", Write::Push(End::Right, vec![blob("a"), blob("b")])),
        ("l", Write::ExpireAt(soon)),
    ] {
        write_local(&mut a, A, 1, now(), key.as_bytes(), write)
            .await
            .unwrap();
    }
    ship(&mut a, &mut b, A, None).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut left = 0;
        for conn in [&mut a, &mut b] {
            let n: u64 = redis::cmd("EXISTS")
                .arg("k")
                .arg("l")
                .query_async(conn)
                .await
                .unwrap();
            left += n;
        }
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the engines never expired the keys"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out = write_local(
        &mut a,
        A,
        1,
        now(),
        b"k",
        Write::HSet(vec![(blob("f"), blob("v"))]),
    )
    .await
    .unwrap();
    assert_eq!(out.before.value, None, "an expired key is absent");
    write_local(
        &mut a,
        A,
        1,
        now(),
        b"l",
        Write::Push(End::Right, vec![blob("c")]),
    )
    .await
    .unwrap();
    ship(&mut a, &mut b, A, None).await;
    assert_same(&mut a, &mut b).await;
    for conn in [&mut a, &mut b] {
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg("l")
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await
            .unwrap();
        assert_eq!(list, ["c"]);
        let kind: String = redis::cmd("TYPE").arg("k").query_async(conn).await.unwrap();
        assert_eq!(kind, "hash");
        assert_eq!(
            common::pttl(conn, b"k").await,
            -1,
            "the fresh key has no deadline"
        );
    }
}

/// A page of the log applied in one script: the same result as one op at a time, the position
/// of the page's last entry recorded, and the page again changes nothing.
#[tokio::test]
async fn a_page_of_ops_applies_in_one_script() {
    let engines = Engines::start("127.0.233.8", EngineVersion::Valkey91, 2).await;
    let (mut a, mut b) = (engines.conn(0).await, engines.conn(1).await);
    for i in 0..120i64 {
        let key = format!("k{}", i % 7);
        let write = match i % 3 {
            0 => Write::IncrBy(i),
            1 => Write::HIncrBy(blob("n"), i),
            _ => Write::SAdd(vec![Blob::from(format!("m{i}"))]),
        };
        let key = format!("{key}-{}", i % 3);
        write_local(&mut a, A, 1, now(), key.as_bytes(), write)
            .await
            .unwrap();
    }
    let mut after = 0;
    loop {
        let page = read_log(&mut a, after, 50).await.unwrap();
        if page.entries.is_empty() {
            break;
        }
        let entries: Vec<(Position, flotilla_crdt::Op)> = page
            .entries
            .iter()
            .map(|e| {
                let op = flotilla_crdt::Op::from_json(&e.json, 1).unwrap();
                let at = e.position();
                (at, op)
            })
            .collect();
        let applied = apply_remote_batch(&mut b, A, &entries).await.unwrap();
        assert!(applied.iter().all(|a| *a == flotilla_crdb::Applied::New));
        let again = apply_remote_batch(&mut b, A, &entries).await.unwrap();
        assert!(again
            .iter()
            .all(|a| *a == flotilla_crdb::Applied::Duplicate));
        after = entries.last().unwrap().0.n;
        assert_eq!(
            position(&mut b, A).await.unwrap(),
            Some(entries.last().unwrap().0)
        );
    }
    assert_eq!(after, 120);
    assert_same(&mut a, &mut b).await;
}

/// Rates on this machine (debug build): `write_local` one at a time, then the same ops applied
/// on a peer one at a time (`apply_remote`) and in pages of 100 (`apply_remote_batch`). A
/// measurement, not a check: `cargo test -p flotilla-crdb --test engine rates -- --ignored
/// --nocapture`.
#[tokio::test]
#[ignore]
async fn rates_of_writes_and_remote_applies() {
    let engines = Engines::start("127.0.233.9", EngineVersion::Redis70, 3).await;
    let (mut a, mut b, mut c) = (
        engines.conn(0).await,
        engines.conn(1).await,
        engines.conn(2).await,
    );
    const OPS: u64 = 3000;
    let started = std::time::Instant::now();
    for i in 0..OPS {
        let key = format!("key:{}", i % 500);
        write_local(&mut a, A, 1, now(), key.as_bytes(), Write::IncrBy(1))
            .await
            .unwrap();
    }
    let rate = |t: std::time::Instant| OPS as f64 / t.elapsed().as_secs_f64();
    println!("write_local: {:.0} ops/s", rate(started));
    let started = std::time::Instant::now();
    ship(&mut a, &mut b, A, None).await;
    println!(
        "apply_remote one by one (pages of 7): {:.0} ops/s",
        rate(started)
    );
    let started = std::time::Instant::now();
    let mut after = 0;
    loop {
        let page = read_log(&mut a, after, 100).await.unwrap();
        let Some(last) = page.entries.last() else {
            break;
        };
        after = last.n;
        let entries: Vec<(Position, flotilla_crdt::Op)> = page
            .entries
            .iter()
            .map(|e| {
                let at = e.position();
                (at, flotilla_crdt::Op::from_json(&e.json, 1).unwrap())
            })
            .collect();
        apply_remote_batch(&mut c, A, &entries).await.unwrap();
    }
    println!(
        "apply_remote_batch, pages of 100: {:.0} ops/s",
        rate(started)
    );
    assert_same(&mut b, &mut c).await;
}
