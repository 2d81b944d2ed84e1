//! The reference's data rules (section 6, T1-T9 and T15) and the choices where Redis documents
//! none: each test has two or three instances write concurrently (nobody has seen the other's
//! op: the link is "cut"), then delivers every op to every replica in every interleaving that
//! keeps each origin's order, with duplicates, and checks all replicas show the same value.

use std::collections::{BTreeMap, BTreeSet};

use crate::blob::Blob;
use crate::clock::{Causality, InstanceId, VectorClock};
use crate::error::{CrdtError, WriteError};
use crate::op::Op;
use crate::state::{Expiry, KeyState, Value};
use crate::write::{End, Write, COUNTER_MAX};

const A: InstanceId = InstanceId(1);
const B: InstanceId = InstanceId(2);
const C: InstanceId = InstanceId(3);
const T0: u64 = 1_700_000_000_000;

fn b(s: &str) -> Blob {
    Blob::from(s)
}

fn key() -> Blob {
    b("k")
}

/// `SET k v` (no `KEEPTTL`).
fn set_to(v: &str) -> Write {
    Write::Set {
        value: b(v),
        keep_ttl: false,
    }
}

/// One instance's copy of the key, writing at a given wall clock.
struct Site {
    id: InstanceId,
    state: KeyState,
    log: Vec<Op>,
}

impl Site {
    fn new(id: InstanceId, state: &KeyState) -> Self {
        Site {
            id,
            state: state.clone(),
            log: Vec::new(),
        }
    }

    fn write(&mut self, now: u64, write: Write) -> Result<(), WriteError> {
        if let Some(op) = self.state.write(&key(), self.id, now, write)? {
            self.log.push(op);
        }
        Ok(())
    }

    fn ok(&mut self, now: u64, write: Write) -> &mut Self {
        self.write(now, write).expect("write accepted");
        self
    }
}

/// Every merge of the streams that keeps each stream's order.
fn interleavings(streams: &[Vec<Op>]) -> Vec<Vec<Op>> {
    fn go(streams: &[Vec<Op>], pos: &mut Vec<usize>, cur: &mut Vec<Op>, out: &mut Vec<Vec<Op>>) {
        if out.len() >= 2000 {
            return;
        }
        let mut done = true;
        for s in 0..streams.len() {
            if pos[s] < streams[s].len() {
                done = false;
                cur.push(streams[s][pos[s]].clone());
                pos[s] += 1;
                go(streams, pos, cur, out);
                pos[s] -= 1;
                cur.pop();
            }
        }
        if done {
            out.push(cur.clone());
        }
    }
    let mut out = Vec::new();
    go(
        streams,
        &mut vec![0; streams.len()],
        &mut Vec::new(),
        &mut out,
    );
    out
}

/// Delivers the sites' logs to the base state in every interleaving (each op twice) and to every
/// site (which already holds its own ops); asserts they all end equal and returns the state.
fn heal(base: &KeyState, sites: &mut [&mut Site]) -> KeyState {
    let streams: Vec<Vec<Op>> = sites.iter().map(|s| s.log.clone()).collect();
    let mut results = Vec::new();
    for order in interleavings(&streams) {
        let mut state = base.clone();
        for op in &order {
            assert_eq!(state.apply(op), Ok(crate::state::Applied::New));
            assert_eq!(state.apply(op), Ok(crate::state::Applied::Duplicate));
        }
        results.push(state);
    }
    for site in sites.iter_mut() {
        for op in streams.iter().flatten() {
            site.state.apply(op).expect("in order");
        }
        results.push(site.state.clone());
    }
    let first = results[0].clone();
    for r in &results {
        assert_eq!(r.materialize(), first.materialize());
        assert_eq!(r.expiry(), first.expiry());
        assert_eq!(r, &first, "states differ");
    }
    for site in sites.iter_mut() {
        site.log.clear();
    }
    first
}

fn string(state: &KeyState) -> String {
    match state.materialize() {
        Some(Value::String(s)) => String::from_utf8(s.0).unwrap(),
        other => panic!("not a string: {other:?}"),
    }
}

#[test]
fn vector_clock_compare() {
    let mut x = VectorClock::new();
    let mut y = VectorClock::new();
    assert_eq!(x.compare(&y), Causality::Equal);
    x.observe(A, 1);
    assert_eq!(x.compare(&y), Causality::After);
    assert_eq!(y.compare(&x), Causality::Before);
    y.observe(B, 1);
    assert_eq!(x.compare(&y), Causality::Concurrent);
    y.join(&x);
    assert_eq!(x.compare(&y), Causality::Before);
    assert_eq!(y.lamport(), 2);
}

#[test]
fn t1_counters_sum_and_overflow_is_refused() {
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::IncrBy(7));
    bb.ok(T0, Write::IncrBy(3));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    assert_eq!(string(&healed), "10");
    assert_eq!(
        a.write(T0, Write::IncrBy(i64::MAX)),
        Err(WriteError::Overflow)
    );
    assert_eq!(
        a.write(T0, Write::IncrBy((COUNTER_MAX - 10) as i64)),
        Ok(())
    );
    assert_eq!(a.write(T0, Write::IncrBy(1)), Err(WriteError::Overflow));
    assert_eq!(string(&a.state), COUNTER_MAX.to_string());
    let mut low = KeyState::new();
    let min = crate::write::COUNTER_MIN as i64;
    assert!(low.write(&key(), A, T0, Write::IncrBy(min)).is_ok());
    assert_eq!(
        low.write(&key(), A, T0, Write::IncrBy(-1)),
        Err(WriteError::Overflow)
    );
}

#[test]
fn t1_float_counters_sum() {
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::IncrBy(1)).ok(T0, Write::IncrByFloat(1.5));
    bb.ok(T0, Write::IncrByFloat(2.25));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    assert_eq!(string(&healed), "4.75");
    assert_eq!(a.write(T0, Write::IncrBy(1)), Err(WriteError::NotInteger));
}

#[test]
fn t2_strings_last_writer_wins_by_wall_clock_then_lower_instance() {
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, set_to("a"));
    bb.ok(T0 + 1000, set_to("b"));
    assert_eq!(string(&heal(&base, &mut [&mut a, &mut bb])), "b");

    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, set_to("a"));
    bb.ok(T0, set_to("b"));
    assert_eq!(string(&heal(&base, &mut [&mut a, &mut bb])), "a");
}

#[test]
fn t2_causality_beats_the_wall_clock() {
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0 + 5000, set_to("first"));
    heal(&base, &mut [&mut a, &mut bb]);
    let synced = bb.state.clone();
    // B saw A's write; its clock is behind, but its write is causally later.
    bb.ok(T0, set_to("second"));
    assert_eq!(string(&heal(&synced, &mut [&mut a, &mut bb])), "second");
}

#[test]
fn t3_sets_add_wins_and_remove_only_what_was_seen() {
    let mut base = KeyState::new();
    base.write(&key(), C, T0, Write::SAdd(vec![b("a"), b("b")]))
        .unwrap();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::SRem(vec![b("a")]))
        .ok(T0, Write::SRem(vec![b("c")]));
    bb.ok(T0, Write::SAdd(vec![b("c")]));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    let want: BTreeSet<Blob> = [b("b"), b("c")].into();
    assert_eq!(healed.materialize(), Some(Value::Set(want)));
}

#[test]
fn t3_concurrent_add_survives_a_remove_of_the_same_member() {
    let mut base = KeyState::new();
    base.write(&key(), C, T0, Write::SAdd(vec![b("a"), b("b")]))
        .unwrap();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::SRem(vec![b("a")]));
    bb.ok(T0, Write::SRem(vec![b("a")]))
        .ok(T0, Write::SAdd(vec![b("a")]));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    let want: BTreeSet<Blob> = [b("a"), b("b")].into();
    assert_eq!(healed.materialize(), Some(Value::Set(want)));
}

#[test]
fn t4_hash_fields_add_wins_over_hdel_and_hincrby_sums() {
    let mut base = KeyState::new();
    base.write(
        &key(),
        C,
        T0,
        Write::HSet(vec![(b("f3"), b("old")), (b("g"), b("1"))]),
    )
    .unwrap();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::HDel(vec![b("f3")]))
        .ok(T0, Write::HIncrBy(b("n"), 5));
    bb.ok(T0, Write::HSet(vec![(b("f3"), b("x"))]))
        .ok(T0, Write::HIncrBy(b("n"), 2));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    let want: BTreeMap<Blob, Blob> = [(b("f3"), b("x")), (b("g"), b("1")), (b("n"), b("7"))].into();
    assert_eq!(healed.materialize(), Some(Value::Hash(want)));
}

#[test]
fn t5_zrem_removes_only_the_seen_score_and_zincrby_sums() {
    let mut base = KeyState::new();
    base.write(&key(), C, T0, Write::ZAdd(vec![(b("x"), 4.1)]))
        .unwrap();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::ZRem(vec![b("x")]));
    bb.ok(T0, Write::ZIncrBy(b("x"), 2.0));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    assert_eq!(healed.materialize(), Some(Value::Zset(vec![(b("x"), 2.0)])));
}

#[test]
fn t5_concurrent_zadd_later_score_wins_and_a_tie_goes_to_instance_1() {
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0 + 1, Write::ZAdd(vec![(b("x"), 1.0)]));
    bb.ok(T0, Write::ZAdd(vec![(b("x"), 2.0)]));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    assert_eq!(healed.materialize(), Some(Value::Zset(vec![(b("x"), 1.0)])));

    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::ZAdd(vec![(b("x"), 1.0)]))
        .ok(T0, Write::ZIncrBy(b("x"), 3.0));
    bb.ok(T0, Write::ZAdd(vec![(b("x"), 2.0)]))
        .ok(T0, Write::ZIncrBy(b("x"), 1.0));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    // A's ZADD wins the tie (1.0); neither ZADD saw the other's ZINCRBY: both increments stay.
    assert_eq!(healed.materialize(), Some(Value::Zset(vec![(b("x"), 5.0)])));
}

fn list(state: &KeyState) -> Vec<String> {
    match state.materialize() {
        Some(Value::List(l)) => l
            .into_iter()
            .map(|v| String::from_utf8(v.0).unwrap())
            .collect(),
        None => vec![],
        other => panic!("not a list: {other:?}"),
    }
}

#[test]
fn t6_concurrent_inserts_keep_one_order_and_del_removes_only_what_it_saw() {
    let mut base = KeyState::new();
    base.write(&key(), C, T0, Write::Push(End::Right, vec![b("x")]))
        .unwrap();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    let after_x = |v: &str| Write::LInsert {
        before: false,
        pivot: b("x"),
        value: b(v),
    };
    a.ok(T0, after_x("y1"));
    bb.ok(T0, after_x("y2"));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    let order = list(&healed);
    assert_eq!(order.len(), 3);
    assert_eq!(order[0], "x");

    a.ok(T0, Write::Push(End::Left, vec![b("z")]));
    bb.ok(T0, Write::Del);
    let healed = heal(&healed, &mut [&mut a, &mut bb]);
    assert_eq!(list(&healed), vec!["z"]);
}

#[test]
fn t6_concurrent_pushes_at_both_ends_are_all_kept_and_pops_are_at_least_once() {
    let mut base = KeyState::new();
    base.write(&key(), C, T0, Write::Push(End::Right, vec![b("m")]))
        .unwrap();
    let (mut a, mut bb, mut c) = (
        Site::new(A, &base),
        Site::new(B, &base),
        Site::new(C, &base),
    );
    a.ok(T0, Write::Push(End::Right, vec![b("a1"), b("a2")]))
        .ok(T0, Write::Push(End::Left, vec![b("a0")]));
    bb.ok(T0, Write::Push(End::Right, vec![b("b1")]))
        .ok(T0, Write::Pop(End::Left, 1));
    c.ok(T0, Write::Pop(End::Left, 1))
        .ok(T0, Write::Push(End::Left, vec![b("c1"), b("c2")]));
    let healed = heal(&base, &mut [&mut a, &mut bb, &mut c]);
    let got = list(&healed);
    // m popped on two sites (at least once); every push kept; A's two values stay adjacent.
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(!got.contains(&"m".to_string()));
    let a1 = got.iter().position(|v| v == "a1").unwrap();
    assert_eq!(got[a1 + 1], "a2");
    let c2 = got.iter().position(|v| v == "c2").unwrap();
    assert_eq!(got[c2 + 1], "c1");
}

#[test]
fn t9_expire_longest_wins_and_persist_beats_every_ttl() {
    let mut base = KeyState::new();
    base.write(&key(), C, T0, set_to("v")).unwrap();
    base.write(&key(), C, T0, Write::ExpireAt(T0 + 100_000))
        .unwrap();
    let (mut a, mut bb, mut c) = (
        Site::new(A, &base),
        Site::new(B, &base),
        Site::new(C, &base),
    );
    a.ok(T0, Write::ExpireAt(T0 + 10_000));
    bb.ok(T0, Write::ExpireAt(T0 + 50_000));
    c.ok(T0, Write::Persist);
    let healed = heal(&base, &mut [&mut a, &mut bb, &mut c]);
    assert_eq!(healed.expiry(), Expiry::Persist);

    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::ExpireAt(T0 + 10_000));
    bb.ok(T0, Write::ExpireAt(T0 + 50_000));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    assert_eq!(
        healed.expiry(),
        Expiry::At {
            at: T0 + 50_000,
            owner: B
        }
    );
    assert!(healed.visible(T0 + 49_999).is_some());
    assert!(healed.visible(T0 + 50_000).is_none());
}

#[test]
fn t9_a_causally_later_expire_replaces_a_longer_one() {
    let mut s = KeyState::new();
    s.write(&key(), A, T0, set_to("v")).unwrap();
    s.write(&key(), A, T0, Write::ExpireAt(T0 + 50_000))
        .unwrap();
    s.write(&key(), A, T0, Write::ExpireAt(T0 + 10_000))
        .unwrap();
    assert_eq!(
        s.expiry(),
        Expiry::At {
            at: T0 + 10_000,
            owner: A
        }
    );
    // SET without KEEPTTL clears the expiry it saw.
    s.write(&key(), A, T0, set_to("w")).unwrap();
    assert_eq!(s.expiry(), Expiry::Persist);
}

#[test]
fn a_write_to_an_expired_key_starts_a_new_key() {
    let mut s = KeyState::new();
    s.write(&key(), A, T0, Write::SAdd(vec![b("old")])).unwrap();
    s.write(&key(), A, T0, Write::ExpireAt(T0 + 10)).unwrap();
    s.write(&key(), A, T0 + 20, Write::SAdd(vec![b("new")]))
        .unwrap();
    let want: BTreeSet<Blob> = [b("new")].into();
    assert_eq!(s.visible(T0 + 30), Some(Value::Set(want)));
    assert_eq!(s.expiry(), Expiry::Persist);
}

#[test]
fn t15_a_key_written_as_two_types_converges_to_the_later_write() {
    for (ts_a, ts_b, want_string) in [(T0 + 1, T0, true), (T0, T0 + 1, false), (T0, T0, true)] {
        let base = KeyState::new();
        let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
        a.ok(ts_a, set_to("1"));
        bb.ok(ts_b, Write::SAdd(vec![b("m")]));
        let healed = heal(&base, &mut [&mut a, &mut bb]);
        let got = healed.materialize().unwrap();
        if want_string {
            assert_eq!(got, Value::String(b("1")));
            // The next write, having seen both, drops the losing set for good.
            a.ok(T0 + 2, Write::Del);
            let healed = heal(&healed, &mut [&mut a, &mut bb]);
            assert_eq!(healed.materialize(), None);
        } else {
            assert_eq!(got, Value::Set([b("m")].into()));
            bb.ok(T0 + 2, Write::SRem(vec![b("m")]));
            let healed = heal(&healed, &mut [&mut a, &mut bb]);
            assert_eq!(
                healed.materialize(),
                None,
                "the losing string does not come back"
            );
        }
    }
}

#[test]
fn choice_set_racing_incr_is_observed_reset() {
    let mut base = KeyState::new();
    base.write(&key(), C, T0, Write::IncrBy(10)).unwrap();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, set_to("100"));
    bb.ok(T0, Write::IncrBy(5));
    assert_eq!(string(&heal(&base, &mut [&mut a, &mut bb])), "105");

    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::Del);
    bb.ok(T0, Write::IncrBy(5));
    assert_eq!(string(&heal(&base, &mut [&mut a, &mut bb])), "5");
}

#[test]
fn choice_string_del_racing_set_keeps_the_set() {
    let mut base = KeyState::new();
    base.write(&key(), C, T0, set_to("v")).unwrap();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0 + 10, Write::Del);
    bb.ok(T0, set_to("w"));
    assert_eq!(string(&heal(&base, &mut [&mut a, &mut bb])), "w");
}

#[test]
fn wrong_type_is_refused_at_the_origin() {
    let mut s = KeyState::new();
    s.write(&key(), A, T0, Write::SAdd(vec![b("m")])).unwrap();
    assert_eq!(
        s.prepare(&key(), A, T0, set_to("x")),
        Err(WriteError::WrongType)
    );
    assert_eq!(
        s.prepare(&key(), A, T0, Write::IncrBy(1)),
        Err(WriteError::WrongType)
    );
}

#[test]
fn an_op_from_a_newer_protocol_is_refused_and_a_gap_is_reported() {
    let mut s = KeyState::new();
    let op = s.prepare(&key(), A, T0, set_to("x")).unwrap().unwrap();
    let mut newer = op.clone();
    newer.v = crate::op::CRDT_PROTOCOL_VERSION + 1;
    assert!(matches!(
        s.apply(&newer),
        Err(CrdtError::NewerProtocol { .. })
    ));
    let text = r#"{"v":2,"key":"k","id":{"instance":1,"seq":1},"future":"shape"}"#;
    assert_eq!(
        Op::from_json(text, 1),
        Err(CrdtError::NewerProtocol { op: 2, local: 1 })
    );
    let mut ahead = op.clone();
    ahead.id.seq = 2;
    assert!(matches!(
        s.apply(&ahead),
        Err(CrdtError::Gap { expected: 1, .. })
    ));
    assert_eq!(Op::from_json(&op.to_json(), 1), Ok(op));
}

#[test]
fn del_of_a_counter_removes_the_key_everywhere() {
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::IncrBy(4));
    bb.ok(T0, Write::IncrBy(6));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    assert_eq!(string(&healed), "10");
    bb.ok(T0, Write::Del);
    let healed = heal(&healed, &mut [&mut a, &mut bb]);
    assert_eq!(healed.materialize(), None);
}

#[test]
fn choice_rename_moves_what_it_saw_and_concurrent_writes_stay_in_the_source() {
    let (src_key, dst_key) = (b("src"), b("dst"));
    let mut src = KeyState::new();
    src.write(&src_key, C, T0, Write::SAdd(vec![b("x")]))
        .unwrap();
    src.write(&src_key, C, T0, Write::ExpireAt(T0 + 60_000))
        .unwrap();
    let mut dst = KeyState::new();
    dst.write(&dst_key, C, T0, set_to("old")).unwrap();
    let (src0, dst0) = (src.clone(), dst.clone());

    // A renames; B, not having seen it, adds y to the source.
    let (mut a_src, mut a_dst) = (src0.clone(), dst0.clone());
    let ops_a =
        crate::write::rename_key(&mut a_src, &src_key, &mut a_dst, &dst_key, A, T0).unwrap();
    let mut b_src = src0.clone();
    let op_b = b_src
        .write(&src_key, B, T0, Write::SAdd(vec![b("y")]))
        .unwrap()
        .unwrap();

    let (mut src_final, mut dst_final) = (src0, dst0);
    for op in ops_a.iter().chain([&op_b]) {
        let target = if op.key == src_key {
            &mut src_final
        } else {
            &mut dst_final
        };
        target.apply(op).unwrap();
    }
    assert_eq!(dst_final.materialize(), Some(Value::Set([b("x")].into())));
    assert_eq!(
        dst_final.expiry(),
        Expiry::At {
            at: T0 + 60_000,
            owner: A
        }
    );
    assert_eq!(src_final.materialize(), Some(Value::Set([b("y")].into())));
    assert_eq!(
        crate::write::rename_key(
            &mut KeyState::new(),
            &src_key,
            &mut dst_final,
            &dst_key,
            A,
            T0
        ),
        Err(WriteError::NoSuchKey)
    );
}

/// The op encoding is the CRDB protocol (version 1): these samples must decode and re-encode
/// byte for byte; changing them needs a new protocol version.
const PROTOCOL_1_SAMPLES: &[&str] = &[
    r#"{"v":1,"key":"k","id":[1,3],"ts":1700000000000,"ctx":{"1":2,"2":5},"effect":{"kind":"set","value":"vÿ"}}"#,
    r#"{"v":1,"key":"k","id":[2,1],"ts":1700000000000,"ctx":{},"fresh":true,"effect":{"kind":"incr","by":-3}}"#,
    r#"{"v":1,"key":"k","id":[1,4],"ts":1,"ctx":{"1":3},"resets":[{"counter":{"in":"field","field":"n"},"observed":{"1":{"seq":2,"int":5,"float":0.0,"floats":0}}}],"effect":{"kind":"hash_del","fields":["n"]}}"#,
    r#"{"v":1,"key":"k","id":[1,5],"ts":1,"ctx":{"1":4},"effect":{"kind":"list_insert","after":[2,1,0],"values":["a","b"]}}"#,
    r#"{"v":1,"key":"k","id":[1,6],"ts":1,"ctx":{"1":5},"effect":{"kind":"list_rem","elems":[[1,5,1]]}}"#,
    r#"{"v":1,"key":"k","id":[1,7],"ts":1,"ctx":{"1":6},"effect":{"kind":"z_add","members":[["m",1.5]]}}"#,
    r#"{"v":1,"key":"k","id":[1,8],"ts":1,"ctx":{"1":7},"effect":{"kind":"expire","at":1700000060000}}"#,
    r#"{"v":1,"key":"k","id":[1,9],"ts":1,"ctx":{"1":8},"effect":{"kind":"del"}}"#,
];

#[test]
fn op_json_is_pinned_for_protocol_1() {
    for sample in PROTOCOL_1_SAMPLES {
        let op = Op::from_json(sample, 1).expect(sample);
        assert_eq!(&op.to_json(), sample);
    }
    let set = Op::from_json(PROTOCOL_1_SAMPLES[0], 1).unwrap();
    assert_eq!(set.key, b("k"));
    assert_eq!(
        set.effect,
        crate::op::Effect::Set {
            value: Blob(vec![b'v', 0xff]),
            keep_ttl: false
        }
    );
}

#[test]
fn key_state_metadata_reads_back() {
    let mut s = KeyState::new();
    s.write(&key(), A, T0, Write::HSet(vec![(b("f"), b("1"))]))
        .unwrap();
    s.write(&key(), A, T0, Write::HIncrBy(b("n"), 2)).unwrap();
    s.write(&key(), A, T0, Write::ExpireAt(T0 + 5)).unwrap();
    let meta = s.to_meta();
    s.compact();
    assert_eq!(KeyState::from_meta(&meta), Ok(s));
}

#[test]
#[ignore = "prints metadata sizes"]
fn metadata_sizes() {
    let mut set = KeyState::new();
    let mut hash = KeyState::new();
    let mut list = KeyState::new();
    let mut counter = KeyState::new();
    for i in 0..100 {
        let site = [A, B, C][i % 3];
        let m = b(&format!("member{i:03}"));
        set.write(&key(), site, T0, Write::SAdd(vec![m.clone()]))
            .unwrap();
        hash.write(&key(), site, T0, Write::HSet(vec![(m.clone(), b("value"))]))
            .unwrap();
        list.write(&key(), site, T0, Write::Push(End::Right, vec![m]))
            .unwrap();
        counter.write(&key(), site, T0, Write::IncrBy(1)).unwrap();
    }
    for (name, s) in [
        ("set", set),
        ("hash", hash),
        ("list", list),
        ("counter", counter),
    ] {
        let value_bytes: usize = 100 * 9;
        println!(
            "{name}: {} bytes of metadata for ~{value_bytes} bytes of value",
            s.to_meta().len()
        );
    }
    let mut h = KeyState::new();
    for (i, site) in [A, B, C].into_iter().enumerate() {
        let f = b(&format!("f{i}"));
        h.write(&key(), site, T0, Write::HSet(vec![(f, b("v"))]))
            .unwrap();
    }
    let mut l = KeyState::new();
    for site in [A, B] {
        l.write(&key(), site, T0, Write::Push(End::Right, vec![b("x")]))
            .unwrap();
    }
    println!("{}\n{}", h.to_meta(), l.to_meta());
}

#[test]
fn an_op_newer_than_a_peer_is_held_for_it() {
    let s = KeyState::new();
    let op = s.prepare(&key(), A, T0, Write::IncrBy(1)).unwrap().unwrap();
    assert!(op.deliverable_to(crate::op::CRDT_PROTOCOL_VERSION));
    let mut newer = op.clone();
    newer.v = crate::op::CRDT_PROTOCOL_VERSION + 1;
    assert!(!newer.deliverable_to(crate::op::CRDT_PROTOCOL_VERSION));
    assert!(newer.deliverable_to(crate::op::CRDT_PROTOCOL_VERSION + 1));
    assert_eq!(op.clone().for_protocol(1).map(|o| o.v), Ok(1));
    assert!(matches!(
        op.for_protocol(0),
        Err(CrdtError::UnsupportedProtocol { v: 0, .. })
    ));
}

impl Site {
    /// Applies what `other` wrote so far (as the syncer would), without logging it again.
    fn hear(&mut self, other: &Site) -> &mut Self {
        for op in &other.log {
            self.state.apply(op).expect("in order");
        }
        self
    }
}

#[test]
fn ops_arriving_before_what_they_saw_wait_hidden_and_converge() {
    // B builds on A's ops; C (the base replica in `heal`) may get B's before A's.
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::Push(End::Right, vec![b("x")]));
    bb.hear(&a)
        .ok(T0, Write::Push(End::Right, vec![b("y")]))
        .ok(T0, Write::LSet(0, b("x2")))
        .ok(T0, Write::Pop(End::Right, 1))
        .ok(T0, Write::Push(End::Left, vec![b("w")]));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    assert_eq!(list(&healed), vec!["w", "x2"]);

    // An LSET that arrives before the element it sets shows nothing yet.
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::Push(End::Right, vec![b("z")]));
    bb.hear(&a).ok(T0, Write::LSet(-1, b("z2")));
    let mut early = base.clone();
    early.apply(&bb.log[0]).unwrap();
    assert_eq!(early.materialize(), None);
    early.apply(&a.log[0]).unwrap();
    assert_eq!(list(&early), vec!["z2"]);
}

#[test]
fn a_remove_arriving_before_the_add_it_saw_still_removes_it() {
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::SAdd(vec![b("m"), b("n")]));
    bb.hear(&a).ok(T0, Write::SRem(vec![b("m")]));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    assert_eq!(healed.materialize(), Some(Value::Set([b("n")].into())));
}

#[test]
fn concurrent_lset_is_last_writer_wins_and_loses_to_a_concurrent_pop() {
    let mut base = KeyState::new();
    base.write(&key(), C, T0, Write::Push(End::Right, vec![b("e"), b("f")]))
        .unwrap();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0 + 1, Write::LSet(0, b("a")));
    bb.ok(T0, Write::LSet(0, b("b")));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    assert_eq!(list(&healed), vec!["a", "f"]);

    a.ok(T0 + 2, Write::LSet(1, b("g")));
    bb.ok(T0, Write::Pop(End::Right, 1));
    let healed = heal(&healed, &mut [&mut a, &mut bb]);
    assert_eq!(list(&healed), vec!["a"]);
}

#[test]
fn ltrim_and_lrem_remove_only_what_they_saw() {
    let mut base = KeyState::new();
    let values = ["a", "b", "a", "c", "a"].map(b).to_vec();
    base.write(&key(), C, T0, Write::Push(End::Right, values))
        .unwrap();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::LRem(-2, b("a")));
    bb.ok(T0, Write::LTrim(0, 2))
        .ok(T0, Write::Push(End::Right, vec![b("a")]));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    // A removed the last two "a"s (indexes 2 and 4); B trimmed to a,b,a (removing c and the
    // last a) and pushed a new "a" that A had not seen.
    assert_eq!(list(&healed), vec!["a", "b", "a"]);
}

#[test]
fn hincrbyfloat_and_zadd_causally_after_zincrby_replaces_it() {
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::HIncrByFloat(b("f"), 0.5));
    bb.ok(T0, Write::HIncrByFloat(b("f"), 0.25));
    let healed = heal(&base, &mut [&mut a, &mut bb]);
    assert_eq!(
        healed.materialize(),
        Some(Value::Hash([(b("f"), b("0.75"))].into()))
    );

    let mut z = KeyState::new();
    z.write(&key(), A, T0, Write::ZIncrBy(b("m"), 5.0)).unwrap();
    z.write(&key(), B, T0, Write::ZAdd(vec![(b("m"), 1.0)]))
        .unwrap();
    assert_eq!(z.materialize(), Some(Value::Zset(vec![(b("m"), 1.0)])));
}

#[test]
fn an_expire_in_the_past_deletes_the_key() {
    let mut s = KeyState::new();
    s.write(&key(), A, T0, set_to("v")).unwrap();
    let op = s
        .write(&key(), A, T0, Write::ExpireAt(T0))
        .unwrap()
        .unwrap();
    assert_eq!(op.effect, crate::op::Effect::Del);
    assert_eq!(s.materialize(), None);
}

#[test]
fn op_clocks_tell_causal_order_from_concurrency() {
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0, Write::IncrBy(1));
    bb.ok(T0, Write::IncrBy(1));
    let (a1, b1) = (a.log[0].clock(), bb.log[0].clock());
    assert_eq!(a1.compare(&b1), Causality::Concurrent);
    bb.hear(&a).ok(T0, Write::IncrBy(1));
    let b2 = bb.log[1].clock();
    assert_eq!(a1.compare(&b2), Causality::Before);
    assert_eq!(b2.compare(&b1), Causality::After);
}

#[test]
fn hidden_keys_are_recognised() {
    assert!(crate::state::is_meta_key(b"__crdt__{a}k"));
    assert!(!crate::state::is_meta_key(b"k"));
}

#[test]
#[ignore = "prints the cost of writes to a big key"]
fn write_cost_on_a_big_key() {
    let mut h = KeyState::new();
    let started = std::time::Instant::now();
    for i in 0..20_000 {
        let site = [A, B, C][i % 3];
        let f = b(&format!("field{i}"));
        h.write(&key(), site, T0, Write::HSet(vec![(f, b("v"))]))
            .unwrap();
    }
    let per_write = started.elapsed() / 20_000;
    let mut replica = KeyState::new();
    let mut origin = KeyState::new();
    let ops: Vec<Op> = (0..20_000)
        .map(|i| {
            let f = b(&format!("field{i}"));
            origin
                .write(&key(), A, T0, Write::HSet(vec![(f, b("v"))]))
                .unwrap()
                .unwrap()
        })
        .collect();
    let started = std::time::Instant::now();
    for op in &ops {
        replica.apply(op).unwrap();
    }
    let per_apply = started.elapsed() / 20_000;
    let started = std::time::Instant::now();
    let meta = replica.to_meta();
    let back = KeyState::from_meta(&meta).unwrap();
    let meta_round_trip = started.elapsed();
    assert_eq!(back.materialize(), replica.materialize());
    println!(
        "20000-field hash: {per_write:?} per local write, {per_apply:?} per remote op, \
         {meta_round_trip:?} to encode and decode its {} bytes of metadata",
        meta.len()
    );
}

#[test]
fn blobs_carry_any_bytes_through_json() {
    let all: Blob = Blob((0..=255).collect());
    let json = serde_json::to_string(&all).unwrap();
    assert_eq!(serde_json::from_str::<Blob>(&json).unwrap(), all);
    assert_eq!(serde_json::to_string(&b("ab")).unwrap(), r#""ab""#);
    assert!(serde_json::from_str::<Blob>(r#""\u0100""#).is_err());
}

#[test]
fn t15_a_deleted_incarnation_does_not_weigh_on_a_later_type_conflict() {
    let base = KeyState::new();
    let (mut a, mut bb) = (Site::new(A, &base), Site::new(B, &base));
    a.ok(T0 + 10_000, set_to("old"));
    let synced = heal(&base, &mut [&mut a, &mut bb]);
    bb.ok(T0, Write::Del);
    let synced = heal(&synced, &mut [&mut a, &mut bb]);
    a.ok(T0 + 400, set_to("new"));
    bb.ok(T0 + 500, Write::SAdd(vec![b("m")]));
    let healed = heal(&synced, &mut [&mut a, &mut bb]);
    assert_eq!(healed.materialize(), Some(Value::Set([b("m")].into())));
}
