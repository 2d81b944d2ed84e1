//! Identities and clocks: who wrote an operation, which operations it had seen, and when.
//!
//! Every clock here is *per key*: an instance numbers its own writes to one key 1, 2, 3, ...
//! (the [`Dot`] of each write), and a key's [`VectorClock`] counts, per instance, how many of that
//! instance's writes to the key a replica has applied. The syncer delivers each origin's operations
//! in order, so "applied `n` of instance `i`'s writes" means exactly "applied writes 1..=n", and a
//! vector clock names precisely the set of writes it has observed. That is what lets a remove carry
//! only a vector clock ("everything I had seen") instead of a list of element ids.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The id of one instance of an Active-Active database (Redis Software's `REPL-ID`).
///
/// Ids are small integers given at creation; where every other rule ties, the *lower* id wins
/// (reference section 2: "equal timestamp -> lower instance id").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(pub u16);

/// The identity of one write: the instance that made it and its per-key sequence number there.
///
/// A dot is unique across all instances and lets an operation be recognised when it is delivered
/// twice (idempotence) and be named by later removes.
///
/// Serialized as `[instance, seq]` (it is repeated throughout the metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "(InstanceId, u64)", into = "(InstanceId, u64)")]
pub struct Dot {
    /// The instance where the write happened.
    pub instance: InstanceId,
    /// The write's number among that instance's writes to the key, starting at 1.
    pub seq: u64,
}

/// Wall-clock milliseconds since the Unix epoch, read on the origin instance.
///
/// Decides only between concurrent last-writer-wins values (reference: "OS wall-clock time decides
/// only LWW register values, and only when causality cannot order them").
pub type Millis = u64;

/// How two vector clocks (two writes' causal pasts) relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Identical histories.
    Equal,
    /// The left clock happened before the right one (the right had seen everything the left had).
    Before,
    /// The left clock happened after the right one.
    After,
    /// Neither had seen all of the other: a conflict the data type's rule must resolve.
    Concurrent,
}

/// Per instance, how many of its writes to one key have been observed (applied).
///
/// Absent entries are zero; the map never stores a zero so that equal histories compare and
/// serialize equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VectorClock(BTreeMap<InstanceId, u64>);

impl VectorClock {
    /// The empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many of `instance`'s writes this clock has observed.
    pub fn get(&self, instance: InstanceId) -> u64 {
        self.0.get(&instance).copied().unwrap_or(0)
    }

    /// Records that `instance`'s writes up to `seq` are observed (never moves backwards).
    pub fn observe(&mut self, instance: InstanceId, seq: u64) {
        if seq > self.get(instance) {
            self.0.insert(instance, seq);
        }
    }

    /// Whether the write `dot` is part of this history.
    pub fn covers(&self, dot: Dot) -> bool {
        dot.seq <= self.get(dot.instance)
    }

    /// Merges another history into this one (pointwise maximum).
    pub fn join(&mut self, other: &VectorClock) {
        for (&instance, &seq) in &other.0 {
            self.observe(instance, seq);
        }
    }

    /// The sum of all entries: a Lamport clock, strictly larger for a causally later write.
    pub fn lamport(&self) -> u64 {
        self.0.values().sum()
    }

    /// The instances and counts this clock holds, lowest instance first.
    pub fn entries(&self) -> impl Iterator<Item = (InstanceId, u64)> + '_ {
        self.0.iter().map(|(&i, &s)| (i, s))
    }

    /// Whether the history is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How this history relates to `other`: before, after, equal or concurrent.
    pub fn compare(&self, other: &VectorClock) -> Causality {
        let mut less = false;
        let mut greater = false;
        let instances = self.0.keys().chain(other.0.keys());
        for &instance in instances {
            match self.get(instance).cmp(&other.get(instance)) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }
}

/// The order of concurrent last-writer-wins values: later wall clock first, then the lower
/// instance id. Larger wins.
///
/// Serialized as `[ts, instance, seq]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "(Millis, InstanceId, u64)", into = "(Millis, InstanceId, u64)")]
pub struct Stamp {
    /// The origin's wall clock.
    pub ts: Millis,
    /// The origin, reversed so that the lower id compares larger (wins a tie).
    pub instance: std::cmp::Reverse<InstanceId>,
    /// The write's sequence number, only to make the order total between one instance's writes.
    pub seq: u64,
}

impl Stamp {
    /// The write this stamp is of.
    pub fn dot(&self) -> Dot {
        Dot {
            instance: self.instance.0,
            seq: self.seq,
        }
    }

    /// The stamp of the write `dot` made at wall-clock time `ts`.
    pub fn new(dot: Dot, ts: Millis) -> Self {
        Stamp {
            ts,
            instance: std::cmp::Reverse(dot.instance),
            seq: dot.seq,
        }
    }
}

impl From<(InstanceId, u64)> for Dot {
    fn from((instance, seq): (InstanceId, u64)) -> Self {
        Dot { instance, seq }
    }
}

impl From<Dot> for (InstanceId, u64) {
    fn from(dot: Dot) -> Self {
        (dot.instance, dot.seq)
    }
}

impl From<(Millis, InstanceId, u64)> for Stamp {
    fn from((ts, instance, seq): (Millis, InstanceId, u64)) -> Self {
        Stamp::new(Dot { instance, seq }, ts)
    }
}

impl From<Stamp> for (Millis, InstanceId, u64) {
    fn from(stamp: Stamp) -> Self {
        (stamp.ts, stamp.instance.0, stamp.seq)
    }
}
