//! Randomized convergence: three instances write a random mix of every supported write to a few
//! shared keys while the ops travel in random interleavings that keep each origin's order, with
//! duplicates; once every op reached every replica, all replicas hold the same state and the
//! counter key equals the sum of every acknowledged increment.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::blob::Blob;
use crate::clock::InstanceId;
use crate::engine::{engine_commands, View};
use crate::engine_model;
use crate::op::Op;
use crate::state::{Applied, KeyState};
use crate::write::{End, Write};

const SITES: usize = 3;
/// Keys 0..KEYS: each mostly written with one type's commands (so that ops meet concurrently on
/// the same elements), sometimes with any command (type conflicts).
const KEYS: u8 = 5;
/// Per key, the write kinds it mostly receives (see `write_of`); 18-20 are key-level.
const FAMILIES: [&[u8]; KEYS as usize] = [
    &[0, 1, 1, 2, 0, 18, 19, 20],
    &[3, 3, 4, 5, 5, 18, 19],
    &[6, 6, 6, 7, 7, 18, 20],
    &[8, 8, 9, 9, 10, 18, 19],
    &[11, 12, 12, 13, 14, 15, 16, 17, 18],
];
/// A key that only ever receives `INCRBY`: its value must be the sum of all of them.
const COUNTER_KEY: u8 = KEYS;
const T0: u64 = 1_700_000_000_000;

#[derive(Clone, Debug)]
enum Step {
    Write {
        site: usize,
        key: u8,
        kind: u8,
        a: u8,
        n: i8,
        skew: u8,
    },
    Deliver {
        to: usize,
        from: usize,
        count: u8,
    },
    Duplicate {
        to: usize,
        from: usize,
    },
    /// A full state transfer (past the backlog): `to` merges every key of `from` and resumes
    /// reading `from`'s log at its end.
    FullSync {
        to: usize,
        from: usize,
    },
    /// `site` compacts every key (drops the tombstones its clock covers).
    Compact {
        site: usize,
    },
    /// `RENAME` (or `COPY` when `copy`) between two of the shared keys.
    Rename {
        site: usize,
        src: u8,
        dst: u8,
        copy: bool,
        skew: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..SITES, 0..=KEYS, any::<u8>(), any::<u8>(), any::<i8>(), 0u8..4).prop_map(
            |(site, key, pick, a, n, skew)| {
                let kind = match FAMILIES.get(usize::from(key)) {
                    Some(family) if pick >= 24 => family[usize::from(pick) % family.len()],
                    _ => pick % 21,
                };
                Step::Write { site, key, kind, a, n, skew }
            }
        ),
        2 => (0..SITES, 0..SITES, 1u8..4).prop_map(|(to, from, count)| Step::Deliver { to, from, count }),
        1 => (0..SITES, 0..SITES).prop_map(|(to, from)| Step::Duplicate { to, from }),
        1 => prop_oneof![
            1 => (0..SITES, 0..SITES).prop_map(|(to, from)| Step::FullSync { to, from }),
            1 => (0..SITES).prop_map(|site| Step::Compact { site }),
            3 => (0..SITES, 0..KEYS, 0..KEYS, any::<bool>(), 0u8..4).prop_map(
                |(site, src, dst, copy, skew)| Step::Rename { site, src, dst, copy, skew }
            ),
        ],
    ]
}

fn word(a: u8) -> Blob {
    Blob::from(["a", "b", "c"][usize::from(a % 3)])
}

fn write_of(kind: u8, a: u8, n: i8, now: u64) -> Write {
    let (w, f, n64) = (word(a), word(a / 3), i64::from(n));
    match kind {
        0 => Write::Set {
            value: w,
            keep_ttl: a.is_multiple_of(2),
        },
        1 => Write::IncrBy(n64),
        2 => Write::IncrByFloat(f64::from(n) / 4.0),
        3 => Write::HSet(vec![(f, w)]),
        4 => Write::HDel(vec![f]),
        5 => Write::HIncrBy(f, n64),
        6 => Write::SAdd(vec![w, f]),
        7 => Write::SRem(vec![w]),
        8 => Write::ZAdd(vec![(w, f64::from(n))]),
        9 => Write::ZIncrBy(w, f64::from(n)),
        10 => Write::ZRem(vec![w]),
        11 => Write::Push(End::Left, vec![w, f]),
        12 => Write::Push(End::Right, vec![w]),
        13 => Write::LInsert {
            before: n < 0,
            pivot: f,
            value: w,
        },
        14 => Write::Pop(
            if n < 0 { End::Left } else { End::Right },
            usize::from(a % 3),
        ),
        15 => Write::LRem(i64::from(n % 3), w),
        16 => Write::LSet(i64::from(n % 4), w),
        17 => Write::LTrim(i64::from(a % 3), i64::from(n % 3)),
        18 => Write::Del,
        19 => Write::ExpireAt(now + 1000 * u64::from(a % 5) + 60_000),
        _ => Write::Persist,
    }
}

/// One instance: a replica of every key, its op log, and how far it has read each peer's log.
struct Site {
    id: InstanceId,
    keys: BTreeMap<Blob, KeyState>,
    log: Vec<Op>,
    read: [usize; SITES],
}

impl Site {
    fn receive(&mut self, op: &Op) -> Applied {
        let state = self.keys.entry(op.key.clone()).or_default();
        let before = state.view();
        let applied = state.apply(op).expect("per-origin order kept");
        check_engine(&op.key, &before, state);
        applied
    }
}

/// The engine, told what `engine_commands` says, holds what the state materializes.
fn check_engine(key: &Blob, before: &View, state: &KeyState) {
    let after = state.view();
    let commands = engine_commands(key, before, &after);
    assert_eq!(engine_model::run(before, &commands), after, "{commands:?}");
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut sites: Vec<Site> = (0..SITES)
        .map(|i| Site {
            id: InstanceId(i as u16 + 1),
            keys: BTreeMap::new(),
            log: Vec::new(),
            read: [0; SITES],
        })
        .collect();
    let mut acknowledged_increments: i128 = 0;
    for (n_step, step) in steps.into_iter().enumerate() {
        match step {
            Step::Write {
                site,
                key,
                kind,
                a,
                n,
                skew,
            } => {
                let now = T0 + 1000 * n_step as u64 / 4 + u64::from(skew) * 700;
                let key_name = Blob::from(format!("k{key}"));
                let write = if key == COUNTER_KEY {
                    Write::IncrBy(i64::from(n))
                } else {
                    write_of(kind, a, n, now)
                };
                let s = &mut sites[site];
                let id = s.id;
                let state = s.keys.entry(key_name.clone()).or_default();
                let before = state.view();
                let written = state.write(&key_name, id, now, write.clone());
                check_engine(&key_name, &before, state);
                if let Ok(Some(op)) = written {
                    if key == COUNTER_KEY {
                        acknowledged_increments += i128::from(n);
                    }
                    s.log.push(op);
                }
            }
            Step::Deliver { to, from, count } => {
                for _ in 0..count {
                    let Some(op) = sites[from].log.get(sites[to].read[from]).cloned() else {
                        break;
                    };
                    let applied = sites[to].receive(&op);
                    if to == from {
                        prop_assert_eq!(applied, Applied::Duplicate);
                    }
                    sites[to].read[from] += 1;
                }
            }
            Step::Duplicate { to, from } => {
                let read = sites[to].read[from];
                if read > 0 {
                    let op = sites[from].log[read - 1].clone();
                    prop_assert_eq!(sites[to].receive(&op), Applied::Duplicate);
                }
            }
            Step::FullSync { to, from } => {
                let theirs = sites[from].keys.clone();
                for (key, state) in &theirs {
                    let mine = sites[to].keys.entry(key.clone()).or_default();
                    let before = mine.view();
                    mine.merge(state);
                    check_engine(key, &before, mine);
                }
                sites[to].read[from] = sites[from].log.len();
            }
            Step::Compact { site } => {
                for state in sites[site].keys.values_mut() {
                    let before = state.clone();
                    state.compact();
                    prop_assert_eq!(state.view(), before.view());
                }
            }
            Step::Rename {
                site,
                src,
                dst,
                copy,
                skew,
            } => {
                if src == dst {
                    continue;
                }
                let now = T0 + 1000 * n_step as u64 / 4 + u64::from(skew) * 700;
                let (src, dst) = (Blob::from(format!("k{src}")), Blob::from(format!("k{dst}")));
                let s = &mut sites[site];
                let mut src_state = s.keys.remove(&src).unwrap_or_default();
                let mut dst_state = s.keys.remove(&dst).unwrap_or_default();
                let (src_before, dst_before) = (src_state.view(), dst_state.view());
                let ops = if copy {
                    crate::write::copy_key(&src_state, &mut dst_state, &dst, s.id, now, true)
                } else {
                    crate::write::rename_key(&mut src_state, &src, &mut dst_state, &dst, s.id, now)
                };
                check_engine(&src, &src_before, &src_state);
                check_engine(&dst, &dst_before, &dst_state);
                s.keys.insert(src, src_state);
                s.keys.insert(dst, dst_state);
                s.log.extend(ops.unwrap_or_default());
            }
        }
    }
    // What a full state transfer would carry: each replica's state before healing.
    let partial: Vec<BTreeMap<Blob, KeyState>> = sites.iter().map(|s| s.keys.clone()).collect();
    // Heal: every replica reads the rest of every log.
    for to in 0..SITES {
        for from in 0..SITES {
            while let Some(op) = sites[from].log.get(sites[to].read[from]).cloned() {
                sites[to].receive(&op);
                sites[to].read[from] += 1;
            }
        }
    }
    for key in 0..=KEYS {
        let name = Blob::from(format!("k{key}"));
        // Replicas that compacted at different times hold the same state once compacted.
        let compacted = |mut s: KeyState| {
            s.compact();
            s
        };
        let states: Vec<KeyState> = sites
            .iter()
            .map(|s| compacted(s.keys.get(&name).cloned().unwrap_or_default()))
            .collect();
        for s in &states[1..] {
            prop_assert_eq!(s.materialize(), states[0].materialize());
            prop_assert_eq!(s.expiry(), states[0].expiry());
            prop_assert_eq!(s, &states[0]);
        }
        // A full state transfer (merge of the partial states, compacted or not, in any order)
        // gives the same state.
        let part = |i: usize| partial[i].get(&name).cloned().unwrap_or_default();
        let mut merged = part(2);
        merged.merge(&part(0));
        merged.merge(&part(1));
        merged.merge(&part(0));
        prop_assert_eq!(&compacted(merged), &states[0]);
        let mut merged = compacted(part(1));
        merged.merge(&part(2));
        merged.merge(&compacted(part(0)));
        prop_assert_eq!(&compacted(merged), &states[0]);
        let meta = KeyState::from_meta(&states[0].to_meta()).expect("metadata reads back");
        prop_assert_eq!(&meta, &states[0]);
        if key == COUNTER_KEY {
            let value = match states[0].materialize() {
                Some(crate::state::Value::String(v)) => String::from_utf8(v.0).unwrap(),
                None => "0".into(),
                other => panic!("counter is {other:?}"),
            };
            prop_assert_eq!(value, acknowledged_increments.to_string());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_and_no_increment_is_lost(steps in prop::collection::vec(step(), 1..200)) {
        run(steps)?;
    }
}
