//! The CRDT state of one key and the replica side: `apply` an op, `materialize` the Redis value.
//!
//! A [`KeyState`] holds one part per data type (string, hash, set, sorted set, list), a key-level
//! expiry register, and the key's [`VectorClock`]. Each part is a state-based CRDT whose merge is a
//! union filtered by "removed" vector clocks, so applying concurrent ops in any order gives the same
//! state; the clock makes a redelivered op a no-op.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::blob::Blob;
use crate::clock::{Dot, InstanceId, Millis, Stamp, VectorClock};
use crate::error::CrdtError;
use crate::op::{CounterMark, CounterRef, CounterReset, Effect, ElemId, Op};

/// Serializes a map whose keys are not strings (dots, element ids) as a JSON array of pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

/// The prefix of every hidden key the Active-Active layer keeps in the engine (per-key metadata,
/// op logs): the proxy hides keys starting with it from `KEYS`, `SCAN`, `DBSIZE`, `TYPE` and
/// `RANDOMKEY`, and refuses client commands naming one.
pub const META_PREFIX: &[u8] = b"__crdt__";

/// Whether `key` is one of the layer's hidden keys.
pub fn is_meta_key(key: &[u8]) -> bool {
    key.starts_with(META_PREFIX)
}

/// The Redis data types a key can hold through Active-Active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeTag {
    /// Strings and counters (`TYPE` says `string` for both).
    String,
    /// Hashes.
    Hash,
    /// Sets.
    Set,
    /// Sorted sets.
    Zset,
    /// Lists.
    List,
}

impl TypeTag {
    /// Every type, in a fixed order.
    pub const ALL: [TypeTag; 5] = [
        TypeTag::String,
        TypeTag::Hash,
        TypeTag::Set,
        TypeTag::Zset,
        TypeTag::List,
    ];

    /// The name `TYPE` answers.
    pub fn redis_name(self) -> &'static str {
        match self {
            TypeTag::String => "string",
            TypeTag::Hash => "hash",
            TypeTag::Set => "set",
            TypeTag::Zset => "zset",
            TypeTag::List => "list",
        }
    }
}

/// One value written by one write, kept while no later write has observed it. Serialized as
/// `[ts, value]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    from = "(Millis, V)",
    into = "(Millis, V)",
    bound(
        serialize = "V: Serialize + Clone",
        deserialize = "V: Deserialize<'de>"
    )
)]
pub struct Entry<V> {
    /// The origin's wall clock.
    pub ts: Millis,
    /// The value.
    pub value: V,
}

impl<V> From<(Millis, V)> for Entry<V> {
    fn from((ts, value): (Millis, V)) -> Self {
        Entry { ts, value }
    }
}

impl<V> From<Entry<V>> for (Millis, V) {
    fn from(e: Entry<V>) -> Self {
        (e.ts, e.value)
    }
}

/// A multi-value register resolved last-writer-wins: causality first (a write removes every entry
/// it observed), then the wall clock, then the lower instance id between concurrent survivors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "V: Serialize + Clone",
    deserialize = "V: Deserialize<'de>"
))]
pub struct Register<V> {
    /// The entries no write has observed yet (concurrent with each other).
    #[serde(with = "pairs", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub entries: BTreeMap<Dot, Entry<V>>,
    /// Every entry covered by this clock was overwritten or removed.
    #[serde(default, skip_serializing_if = "VectorClock::is_empty")]
    pub removed: VectorClock,
}

impl<V> Default for Register<V> {
    fn default() -> Self {
        Register {
            entries: BTreeMap::new(),
            removed: VectorClock::new(),
        }
    }
}

impl<V: Clone> Register<V> {
    /// Removes every entry the history `ctx` had observed.
    pub fn clear(&mut self, ctx: &VectorClock) {
        self.removed.join(ctx);
        self.prune(&VectorClock::new());
    }

    /// Drops the entries removed here or by the key-level clock `dead`.
    fn prune(&mut self, dead: &VectorClock) {
        let removed = &self.removed;
        self.entries
            .retain(|&dot, _| !removed.covers(dot) && !dead.covers(dot));
    }

    /// Writes `value` as the write `dot` that had observed `ctx`.
    pub fn write(&mut self, dot: Dot, ts: Millis, value: V, ctx: &VectorClock, dead: &VectorClock) {
        self.clear(ctx);
        if !self.removed.covers(dot) && !dead.covers(dot) {
            self.entries.insert(dot, Entry { ts, value });
        }
    }

    /// The winning entry: the latest wall clock, then the lower instance id.
    pub fn winner(&self) -> Option<(Dot, &Entry<V>)> {
        self.entries
            .iter()
            .max_by_key(|(&dot, entry)| Stamp::new(dot, entry.ts))
            .map(|(&dot, entry)| (dot, entry))
    }

    /// Whether any entry survives.
    pub fn is_live(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Whether the register was never written nor cleared (nothing to store).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.removed.is_empty()
    }
}

/// A counter summed across instances (a PN-counter kept as per-instance running totals), with
/// observed-reset: a reset removes the totals it had observed, increments it had not seen stay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    /// Per instance, the running total of its increments.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub total: BTreeMap<InstanceId, CounterMark>,
    /// Per instance, the largest total some reset had observed (removed from the value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub base: BTreeMap<InstanceId, CounterMark>,
}

/// The live sum of a counter.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CounterSum {
    /// Sum of the live integer increments.
    pub int: i128,
    /// Sum of the live floating-point increments.
    pub float: f64,
    /// Whether any live increment was a floating-point one.
    pub is_float: bool,
}

impl CounterSum {
    /// The sum as one float.
    pub fn as_f64(&self) -> f64 {
        self.int as f64 + self.float
    }
}

impl Counter {
    /// Adds the increment of write `dot` (the syncer delivers each origin's writes in order).
    fn add(&mut self, dot: Dot, int: i128, float: Option<f64>) {
        let mark = self.total.entry(dot.instance).or_default();
        mark.seq = dot.seq;
        mark.int += int;
        if let Some(f) = float {
            mark.float += f;
            mark.floats += 1;
        }
    }

    /// Removes the totals a reset had observed.
    fn reset(&mut self, observed: &BTreeMap<InstanceId, CounterMark>) {
        for (&instance, mark) in observed {
            let base = self.base.entry(instance).or_default();
            if mark.seq > base.seq {
                *base = *mark;
            }
        }
    }

    /// Per instance, the increments no reset has observed.
    fn live(&self) -> impl Iterator<Item = (InstanceId, CounterMark)> + '_ {
        self.total.iter().filter_map(|(&instance, total)| {
            let base = self.base.get(&instance).copied().unwrap_or_default();
            (total.seq > base.seq).then(|| {
                (
                    instance,
                    CounterMark {
                        seq: total.seq,
                        int: total.int - base.int,
                        float: total.float - base.float,
                        floats: total.floats - base.floats,
                    },
                )
            })
        })
    }

    /// Whether no increment or reset was ever recorded (nothing to store).
    pub fn is_empty(&self) -> bool {
        self.total.is_empty() && self.base.is_empty()
    }

    /// Whether some increment is live (the counter exists, possibly with value 0).
    pub fn is_live(&self) -> bool {
        self.live().next().is_some()
    }

    /// The live sum, added up in instance order (the same float rounding everywhere).
    pub fn sum(&self) -> CounterSum {
        self.live()
            .fold(CounterSum::default(), |acc, (_, mark)| CounterSum {
                int: acc.int + mark.int,
                float: acc.float + mark.float,
                is_float: acc.is_float || mark.floats > 0,
            })
    }

    /// The totals a reset issued now would remove.
    pub fn observed(&self) -> BTreeMap<InstanceId, CounterMark> {
        self.live()
            .map(|(instance, _)| (instance, self.total[&instance]))
            .collect()
    }
}

/// A string value, a hash field: a last-writer-wins register plus a counter ("SET racing INCR":
/// the value is the register's winner plus the increments it had not observed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// `SET`/`HSET` values.
    #[serde(default, skip_serializing_if = "Register::is_empty")]
    pub reg: Register<Blob>,
    /// `INCRBY`/`HINCRBY` increments.
    #[serde(default, skip_serializing_if = "Counter::is_empty")]
    pub ctr: Counter,
}

impl Field {
    /// Whether nothing was ever written (nothing to store).
    pub fn is_empty(&self) -> bool {
        self.reg.is_empty() && self.ctr.total.is_empty() && self.ctr.base.is_empty()
    }

    /// Whether the field exists.
    pub fn is_live(&self) -> bool {
        self.reg.is_live() || self.ctr.is_live()
    }

    /// The value a client reads: the register's winner, plus the live increments when it is a
    /// number (a non-numeric winner hides concurrent increments), formatted as Redis does.
    pub fn value(&self) -> Option<Blob> {
        let base = self.reg.winner().map(|(_, e)| e.value.clone());
        if !self.ctr.is_live() {
            return base;
        }
        let sum = self.ctr.sum();
        let base_text = base
            .as_ref()
            .map(|b| String::from_utf8_lossy(b.as_bytes()).into_owned());
        let base_int = match &base_text {
            None => Some(0),
            Some(t) => t.parse::<i128>().ok(),
        };
        if let (Some(base_int), false) = (base_int, sum.is_float) {
            return Some(Blob::from((base_int + sum.int).to_string()));
        }
        match base_text.as_deref().map(str::parse::<f64>) {
            None => Some(format_float(sum.as_f64())),
            Some(Ok(b)) => Some(format_float(b + sum.as_f64())),
            Some(Err(_)) => base,
        }
    }

    fn prune(&mut self, dead: &VectorClock) {
        self.reg.prune(dead);
    }
}

/// Formats a float as `INCRBYFLOAT` answers it (no exponent, no trailing zeros).
pub fn format_float(f: f64) -> Blob {
    Blob::from(format!("{f}"))
}

/// Membership in an observed-remove set (sets, sorted sets): the adds nobody has removed yet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Adds not observed by any remove (concurrent with each other).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub adds: BTreeSet<Dot>,
    /// Every add covered by this clock was removed (or superseded by a later add).
    #[serde(default, skip_serializing_if = "VectorClock::is_empty")]
    pub removed: VectorClock,
}

impl Member {
    /// Removes the adds the history `ctx` had observed.
    fn remove(&mut self, ctx: &VectorClock) {
        self.removed.join(ctx);
        self.prune(&VectorClock::new());
    }

    /// Adds as write `dot`. An instance's newer add supersedes its older ones (any remove that
    /// covers the newer covers the older), so at most one add per instance is kept.
    fn add(&mut self, dot: Dot, dead: &VectorClock) {
        if !self.removed.covers(dot) && !dead.covers(dot) {
            self.adds.insert(dot);
            self.normalize();
        }
    }

    /// Keeps only the newest add of each instance.
    fn normalize(&mut self) {
        let mut newest: BTreeMap<InstanceId, u64> = BTreeMap::new();
        for d in &self.adds {
            let seq = newest.entry(d.instance).or_default();
            *seq = (*seq).max(d.seq);
        }
        self.adds.retain(|d| newest[&d.instance] == d.seq);
    }

    fn prune(&mut self, dead: &VectorClock) {
        let removed = &self.removed;
        self.adds.retain(|&d| !removed.covers(d) && !dead.covers(d));
    }

    /// Whether the member is in the set.
    pub fn is_live(&self) -> bool {
        !self.adds.is_empty()
    }
}

/// A sorted-set member: membership, a last-writer-wins score (`ZADD`) and summed increments
/// (`ZINCRBY`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZMember {
    /// Membership (observed-remove, add-wins).
    #[serde(default)]
    pub member: Member,
    /// `ZADD` scores.
    #[serde(default, skip_serializing_if = "Register::is_empty")]
    pub score: Register<f64>,
    /// `ZINCRBY` increments.
    #[serde(default, skip_serializing_if = "Counter::is_empty")]
    pub incr: Counter,
}

impl ZMember {
    /// The score a client reads: the `ZADD` winner (0 if none survives) plus live increments.
    pub fn score(&self) -> f64 {
        let base = self.score.winner().map(|(_, e)| e.value).unwrap_or(0.0);
        base + self.incr.sum().as_f64()
    }

    fn prune(&mut self, dead: &VectorClock) {
        self.member.prune(dead);
        self.score.prune(dead);
    }
}

/// Where a list element was inserted: after which element (RGA tree), and its Lamport clock that
/// orders it among elements inserted after the same one. Serialized as `[after, lamport]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(Option<ElemId>, u64)", into = "(Option<ElemId>, u64)")]
pub struct ListNode {
    /// The element it follows; `None` is the head.
    pub after: Option<ElemId>,
    /// The inserting write's Lamport clock (sum of its observed history, plus one).
    pub lamport: u64,
}

impl From<(Option<ElemId>, u64)> for ListNode {
    fn from((after, lamport): (Option<ElemId>, u64)) -> Self {
        ListNode { after, lamport }
    }
}

impl From<ListNode> for (Option<ElemId>, u64) {
    fn from(n: ListNode) -> Self {
        (n.after, n.lamport)
    }
}

/// A list as a replicated growable array: elements are never moved, only marked removed, so every
/// replica derives one order from the same insertions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct List {
    /// Every insertion, removed or not (removed ones keep the order of the others).
    #[serde(with = "pairs", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<ElemId, ListNode>,
    /// Element values (`LSET` writes them last-writer-wins).
    #[serde(with = "pairs", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<ElemId, Register<Blob>>,
    /// Elements removed by pops, `LREM`, `LTRIM` (known even before their insertion arrives).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed: BTreeSet<ElemId>,
}

impl List {
    /// Every element in list order, removed ones included (what a new insertion anchors to).
    pub fn order(&self) -> Vec<ElemId> {
        let mut children: BTreeMap<Option<ElemId>, Vec<(u64, ElemId)>> = BTreeMap::new();
        for (&id, node) in &self.nodes {
            children
                .entry(node.after)
                .or_default()
                .push((node.lamport, id));
        }
        // Later insertions after the same element come first (they had seen the earlier ones);
        // between concurrent ones, the lower instance first.
        for siblings in children.values_mut() {
            siblings.sort_by(|a, b| {
                b.0.cmp(&a.0)
                    .then(a.1.instance.cmp(&b.1.instance))
                    .then(a.1.cmp(&b.1))
            });
        }
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<ElemId> = children
            .get(&None)
            .map(|c| c.iter().rev().map(|&(_, id)| id).collect())
            .unwrap_or_default();
        while let Some(id) = stack.pop() {
            out.push(id);
            if let Some(c) = children.get(&Some(id)) {
                stack.extend(c.iter().rev().map(|&(_, id)| id));
            }
        }
        out
    }

    /// The visible elements in order, with their values.
    pub fn visible(&self) -> Vec<(ElemId, Blob)> {
        self.order()
            .into_iter()
            .filter_map(|id| self.value(id).map(|v| (id, v)))
            .collect()
    }

    fn value(&self, id: ElemId) -> Option<Blob> {
        if self.removed.contains(&id) {
            return None;
        }
        self.values
            .get(&id)
            .and_then(|r| r.winner().map(|(_, e)| e.value.clone()))
    }

    fn prune(&mut self, dead: &VectorClock) {
        // Elements a key-level remove covers become explicit removals, so the remove's clock can
        // be compacted away while a late `LSET` still finds them removed.
        let covered = self.nodes.keys().filter(|id| dead.covers(id.dot()));
        self.removed.extend(covered.copied().collect::<Vec<_>>());
        // A value register emptied by a remove keeps its clock: the element's own first value
        // may still arrive, and is dead if the remove had seen it.
        let removed = &self.removed;
        self.values.retain(|id, reg| {
            reg.prune(dead);
            !removed.contains(id) && !reg.is_empty()
        });
    }

    fn is_live(&self) -> bool {
        self.values
            .iter()
            .any(|(id, reg)| reg.is_live() && !self.removed.contains(id))
    }

    /// Whether nothing was ever inserted (nothing to store).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.values.is_empty() && self.removed.is_empty()
    }
}

/// How the key expires, as resolved from its concurrent `EXPIRE`/`PERSIST` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// No deadline (never set, or a `PERSIST` beat every concurrent deadline).
    Persist,
    /// The longest concurrent deadline and the instance that set it (the only one that sends the
    /// `DEL` when it passes; the others hide the key).
    At {
        /// Wall-clock milliseconds.
        at: Millis,
        /// The instance that owns the deadline.
        owner: InstanceId,
    },
}

/// The value a client sees for a key.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string (or counter).
    String(Blob),
    /// A hash.
    Hash(BTreeMap<Blob, Blob>),
    /// A set.
    Set(BTreeSet<Blob>),
    /// A sorted set, by score then member.
    Zset(Vec<(Blob, f64)>),
    /// A list, head first.
    List(Vec<Blob>),
}

impl Value {
    /// The value's type.
    pub fn type_tag(&self) -> TypeTag {
        match self {
            Value::String(_) => TypeTag::String,
            Value::Hash(_) => TypeTag::Hash,
            Value::Set(_) => TypeTag::Set,
            Value::Zset(_) => TypeTag::Zset,
            Value::List(_) => TypeTag::List,
        }
    }
}

/// Whether an op changed the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The op was new and is now part of the state.
    New,
    /// The op had been applied before: nothing changed (ops are idempotent by their dot).
    Duplicate,
}

/// The complete CRDT state of one key: what a Lua script keeps next to the key (see the crate
/// comment for how) and what `apply` and `materialize` work on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    /// The key's history applied here, per origin.
    #[serde(default)]
    pub clock: VectorClock,
    /// Per type, the writes whose content of that type was removed (`DEL`, a write of another type
    /// that had observed it, a fresh write).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cleared: BTreeMap<TypeTag, VectorClock>,
    /// Per type and instance, the stamp of that instance's newest write of that type that no
    /// remove of the type has observed: between two types written concurrently, the one with the
    /// later stamp (wall clock, then the lower instance) is the key's type. Writes of a deleted
    /// incarnation are pruned with it, so they do not weigh on a later conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub marks: BTreeMap<TypeTag, BTreeMap<InstanceId, Stamp>>,
    /// The string part.
    #[serde(default, skip_serializing_if = "Field::is_empty")]
    pub string: Field,
    /// The hash part.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hash: BTreeMap<Blob, Field>,
    /// The set part.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<Blob, Member>,
    /// The sorted-set part.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zset: BTreeMap<Blob, ZMember>,
    /// The list part.
    #[serde(default, skip_serializing_if = "List::is_empty")]
    pub list: List,
    /// `EXPIRE` deadlines (`Some`) and `PERSIST`s (`None`).
    #[serde(default, skip_serializing_if = "Register::is_empty")]
    pub ttl: Register<Option<Millis>>,
}

impl Effect {
    /// The data type the effect writes; `None` for key-level effects.
    pub fn type_tag(&self) -> Option<TypeTag> {
        Some(match self {
            Effect::Set { .. } | Effect::Incr { .. } | Effect::IncrFloat { .. } => TypeTag::String,
            Effect::HashSet { .. }
            | Effect::HashDel { .. }
            | Effect::HashIncr { .. }
            | Effect::HashIncrFloat { .. } => TypeTag::Hash,
            Effect::SetAdd { .. } | Effect::SetRem { .. } => TypeTag::Set,
            Effect::ZAdd { .. } | Effect::ZIncr { .. } | Effect::ZRem { .. } => TypeTag::Zset,
            Effect::ListInsert { .. } | Effect::ListRem { .. } | Effect::ListSet { .. } => {
                TypeTag::List
            }
            Effect::Del | Effect::Expire { .. } | Effect::Persist => return None,
        })
    }
}

impl KeyState {
    /// An empty key.
    pub fn new() -> Self {
        Self::default()
    }

    /// The metadata a Lua script stores next to the key (JSON), compacted ([`KeyState::compact`]).
    pub fn to_meta(&self) -> String {
        let mut compacted = self.clone();
        compacted.compact();
        serde_json::to_string(&compacted).expect("a key state always serializes")
    }

    /// Reads the metadata back.
    pub fn from_meta(text: &str) -> Result<Self, CrdtError> {
        serde_json::from_str(text).map_err(|e| CrdtError::Decode(e.to_string()))
    }

    /// Applies one op. Idempotent (a known dot is a [`Applied::Duplicate`]); ops of different
    /// origins commute; ops of one origin must come in that origin's order ([`CrdtError::Gap`]).
    pub fn apply(&mut self, op: &Op) -> Result<Applied, CrdtError> {
        op.check_protocol(crate::op::CRDT_PROTOCOL_VERSION)?;
        let expected = self.clock.get(op.id.instance) + 1;
        if op.id.seq < expected {
            return Ok(Applied::Duplicate);
        }
        if op.id.seq > expected {
            return Err(CrdtError::Gap {
                instance: op.id.instance,
                expected,
                got: op.id,
            });
        }
        self.clock.observe(op.id.instance, op.id.seq);
        self.apply_clears(op);
        for reset in &op.resets {
            self.reset_counter(reset);
        }
        if let Some(tag) = op.effect.type_tag() {
            if !self.dead(tag).covers(op.id) {
                let marks = self.marks.entry(tag).or_default();
                marks.insert(op.id.instance, Stamp::new(op.id, op.ts));
            }
        }
        self.apply_effect(op);
        Ok(Applied::New)
    }

    /// The key-level removes an op implies: a `DEL` or a fresh write removes everything observed,
    /// a write of one type removes what was observed of the other types.
    fn apply_clears(&mut self, op: &Op) {
        let whole_key = op.fresh || matches!(op.effect, Effect::Del);
        let own = op.effect.type_tag();
        let mut grown = Vec::new();
        for tag in TypeTag::ALL {
            if (whole_key || own.is_some_and(|own| own != tag)) && !op.ctx.is_empty() {
                let cleared = self.cleared.entry(tag).or_default();
                let before = cleared.clone();
                cleared.join(&op.ctx);
                if *cleared != before {
                    grown.push(tag);
                }
            }
        }
        if whole_key
            || matches!(
                op.effect,
                Effect::Set {
                    keep_ttl: false,
                    ..
                }
            )
        {
            self.ttl.clear(&op.ctx);
        }
        // Only the parts whose remove clock grew are walked: a write to a big hash does not visit
        // its fields to clear the (usually empty) other types.
        self.prune_types(&grown);
    }

    /// Drops every content whose write a key-level remove covers.
    fn prune(&mut self) {
        self.prune_types(&TypeTag::ALL);
    }

    fn prune_types(&mut self, tags: &[TypeTag]) {
        for &tag in tags {
            let dead = self.dead(tag);
            if let Some(marks) = self.marks.get_mut(&tag) {
                marks.retain(|_, m| !dead.covers(m.dot()));
                if marks.is_empty() {
                    self.marks.remove(&tag);
                }
            }
            match tag {
                TypeTag::String => self.string.prune(&dead),
                TypeTag::Hash => self.hash.values_mut().for_each(|f| f.prune(&dead)),
                TypeTag::Set => self.set.values_mut().for_each(|m| m.prune(&dead)),
                TypeTag::Zset => self.zset.values_mut().for_each(|m| m.prune(&dead)),
                TypeTag::List => self.list.prune(&dead),
            }
        }
    }

    fn reset_counter(&mut self, reset: &CounterReset) {
        let counter = match &reset.counter {
            CounterRef::String => &mut self.string.ctr,
            CounterRef::Field { field } => &mut self.hash.entry(field.clone()).or_default().ctr,
            CounterRef::Member { member } => &mut self.zset.entry(member.clone()).or_default().incr,
        };
        counter.reset(&reset.observed);
    }

    fn dead(&self, tag: TypeTag) -> VectorClock {
        self.cleared.get(&tag).cloned().unwrap_or_default()
    }

    fn apply_effect(&mut self, op: &Op) {
        let (dot, ts, ctx) = (op.id, op.ts, &op.ctx);
        let dead = op
            .effect
            .type_tag()
            .map(|t| self.dead(t))
            .unwrap_or_default();
        match &op.effect {
            Effect::Set { value, .. } => self.string.reg.write(dot, ts, value.clone(), ctx, &dead),
            Effect::Incr { by } => self.string.ctr.add(dot, i128::from(*by), None),
            Effect::IncrFloat { by } => self.string.ctr.add(dot, 0, Some(*by)),
            Effect::HashSet { fields } => {
                for (field, value) in fields {
                    let f = self.hash.entry(field.clone()).or_default();
                    f.reg.write(dot, ts, value.clone(), ctx, &dead);
                }
            }
            Effect::HashDel { fields } => {
                for field in fields {
                    self.hash.entry(field.clone()).or_default().reg.clear(ctx);
                }
            }
            Effect::HashIncr { field, by } => {
                let f = self.hash.entry(field.clone()).or_default();
                f.ctr.add(dot, i128::from(*by), None);
            }
            Effect::HashIncrFloat { field, by } => {
                let f = self.hash.entry(field.clone()).or_default();
                f.ctr.add(dot, 0, Some(*by));
            }
            Effect::SetAdd { members } => {
                for m in members {
                    self.set.entry(m.clone()).or_default().add(dot, &dead);
                }
            }
            Effect::SetRem { members } => {
                for m in members {
                    self.set.entry(m.clone()).or_default().remove(ctx);
                }
            }
            Effect::ZAdd { members } => {
                for (m, score) in members {
                    let z = self.zset.entry(m.clone()).or_default();
                    z.member.add(dot, &dead);
                    z.score.write(dot, ts, *score, ctx, &dead);
                }
            }
            Effect::ZIncr { member, by } => {
                let z = self.zset.entry(member.clone()).or_default();
                z.member.add(dot, &dead);
                z.incr.add(dot, 0, Some(*by));
            }
            Effect::ZRem { members } => {
                for m in members {
                    let z = self.zset.entry(m.clone()).or_default();
                    z.member.remove(ctx);
                    z.score.clear(ctx);
                }
            }
            Effect::ListInsert { after, values } => {
                self.insert_list(dot, ts, ctx, *after, values, &dead)
            }
            Effect::ListRem { elems } => {
                for &e in elems {
                    self.list.removed.insert(e);
                    self.list.values.remove(&e);
                }
            }
            Effect::ListSet { elem, value } => {
                if !self.list.removed.contains(elem) && !dead.covers(elem.dot()) {
                    let reg = self.list.values.entry(*elem).or_default();
                    reg.write(dot, ts, value.clone(), ctx, &dead);
                }
            }
            Effect::Del => {}
            Effect::Expire { at } => self.ttl.write(dot, ts, Some(*at), ctx, &VectorClock::new()),
            Effect::Persist => self.ttl.write(dot, ts, None, ctx, &VectorClock::new()),
        }
    }

    fn insert_list(
        &mut self,
        dot: Dot,
        ts: Millis,
        ctx: &VectorClock,
        after: Option<ElemId>,
        values: &[Blob],
        dead: &VectorClock,
    ) {
        let lamport = ctx.lamport() + 1;
        let mut prev = after;
        for (idx, value) in values.iter().enumerate() {
            let id = ElemId {
                instance: dot.instance,
                seq: dot.seq,
                idx: idx as u32,
            };
            self.list.nodes.insert(
                id,
                ListNode {
                    after: prev,
                    lamport,
                },
            );
            if dead.covers(dot) {
                self.list.removed.insert(id);
            } else if !self.list.removed.contains(&id) {
                let reg = self.list.values.entry(id).or_default();
                reg.write(dot, ts, value.clone(), &VectorClock::new(), dead);
            }
            prev = Some(id);
        }
    }

    /// Whether the key holds live content of type `tag`.
    pub fn has(&self, tag: TypeTag) -> bool {
        match tag {
            TypeTag::String => self.string.is_live(),
            TypeTag::Hash => self.hash.values().any(Field::is_live),
            TypeTag::Set => self.set.values().any(Member::is_live),
            TypeTag::Zset => self.zset.values().any(|z| z.member.is_live()),
            TypeTag::List => self.list.is_live(),
        }
    }

    /// The key's type: among the types with live content, the one written last (wall clock, then
    /// the lower instance id). `None`: the key does not exist (ignoring expiry).
    pub fn type_tag(&self) -> Option<TypeTag> {
        TypeTag::ALL
            .into_iter()
            .filter(|&t| self.has(t))
            .max_by_key(|t| self.marks.get(t).and_then(|m| m.values().max()).copied())
    }

    /// The key's expiry: `PERSIST` beats every concurrent deadline, else the longest deadline.
    pub fn expiry(&self) -> Expiry {
        let entries = &self.ttl.entries;
        if entries.is_empty() || entries.values().any(|e| e.value.is_none()) {
            return Expiry::Persist;
        }
        entries
            .iter()
            .filter_map(|(dot, e)| e.value.map(|at| (at, std::cmp::Reverse(dot.instance))))
            .max()
            .map(|(at, owner)| Expiry::At { at, owner: owner.0 })
            .unwrap_or(Expiry::Persist)
    }

    /// Whether the key is hidden by its expiry at wall-clock time `now`.
    pub fn is_expired(&self, now: Millis) -> bool {
        matches!(self.expiry(), Expiry::At { at, .. } if at <= now)
    }

    /// What a client reads (ignoring expiry; see [`KeyState::visible`]).
    pub fn materialize(&self) -> Option<Value> {
        Some(match self.type_tag()? {
            TypeTag::String => Value::String(self.string.value()?),
            TypeTag::Hash => Value::Hash(
                self.hash
                    .iter()
                    .filter_map(|(k, f)| f.value().map(|v| (k.clone(), v)))
                    .collect(),
            ),
            TypeTag::Set => Value::Set(
                self.set
                    .iter()
                    .filter(|(_, m)| m.is_live())
                    .map(|(k, _)| k.clone())
                    .collect(),
            ),
            TypeTag::Zset => {
                let mut members: Vec<(Blob, f64)> = self
                    .zset
                    .iter()
                    .filter(|(_, z)| z.member.is_live())
                    .map(|(k, z)| (k.clone(), z.score()))
                    .collect();
                members.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
                Value::Zset(members)
            }
            TypeTag::List => {
                // Elements whose insertion has not arrived yet (an `LSET` from a peer that saw
                // it) are not visible; a list of only those does not exist yet.
                let list: Vec<Blob> = self.list.visible().into_iter().map(|(_, v)| v).collect();
                if list.is_empty() {
                    return None;
                }
                Value::List(list)
            }
        })
    }

    /// The key's type as a client sees it at `now` (what `TYPE` answers), without materializing
    /// the value: `None` once expired, or while a list holds only elements whose insertion has
    /// not arrived yet.
    pub fn visible_type(&self, now: Millis) -> Option<TypeTag> {
        if self.is_expired(now) {
            return None;
        }
        let tag = self.type_tag()?;
        if tag == TypeTag::List && self.list.visible().is_empty() {
            return None;
        }
        Some(tag)
    }

    /// What a client reads at wall-clock time `now`: nothing once the key's expiry has passed.
    pub fn visible(&self, now: Millis) -> Option<Value> {
        if self.is_expired(now) {
            return None;
        }
        self.materialize()
    }

    /// The counters of the key's parts of type `tag`, with the totals a reset issued now would
    /// remove (only those with live increments).
    pub(crate) fn counters_of(&self, tag: TypeTag) -> Vec<CounterReset> {
        let refs: Vec<CounterRef> = match tag {
            TypeTag::String => vec![CounterRef::String],
            TypeTag::Hash => self
                .hash
                .iter()
                .filter(|(_, f)| !f.ctr.is_empty())
                .map(|(field, _)| CounterRef::Field {
                    field: field.clone(),
                })
                .collect(),
            TypeTag::Zset => self
                .zset
                .iter()
                .filter(|(_, z)| !z.incr.is_empty())
                .map(|(member, _)| CounterRef::Member {
                    member: member.clone(),
                })
                .collect(),
            TypeTag::Set | TypeTag::List => Vec::new(),
        };
        refs.into_iter()
            .filter_map(|r| self.counter_reset(r))
            .collect()
    }

    /// One counter's reset, if it has live increments.
    pub(crate) fn counter_reset(&self, counter: CounterRef) -> Option<CounterReset> {
        let ctr = match &counter {
            CounterRef::String => &self.string.ctr,
            CounterRef::Field { field } => &self.hash.get(field)?.ctr,
            CounterRef::Member { member } => &self.zset.get(member)?.incr,
        };
        let observed = ctr.observed();
        (!observed.is_empty()).then_some(CounterReset { counter, observed })
    }
}

/// The two histories of a state-based merge: content one side holds and the other does not is
/// dead if the other side had applied its write (something there removed it), new otherwise.
#[derive(Clone, Copy)]
struct Sides<'a> {
    mine: &'a VectorClock,
    theirs: &'a VectorClock,
}

impl Sides<'_> {
    /// Whether a dot held on one side only survives the merge.
    fn keeps_mine(&self, dot: Dot) -> bool {
        !self.theirs.covers(dot)
    }

    fn keeps_theirs(&self, dot: Dot) -> bool {
        !self.mine.covers(dot)
    }
}

/// State-based merge (the full state transfer a syncer falls back to past its backlog): the join
/// of two replicas' states equals the state of applying the union of their ops. Works on
/// compacted states too: the key clocks, not the tombstones, decide what a missing dot means.
impl<V: Clone> Register<V> {
    fn merge(&mut self, other: &Register<V>, sides: Sides) {
        self.removed.join(&other.removed);
        self.entries
            .retain(|&dot, _| other.entries.contains_key(&dot) || sides.keeps_mine(dot));
        for (&dot, entry) in &other.entries {
            if sides.keeps_theirs(dot) {
                self.entries.entry(dot).or_insert_with(|| entry.clone());
            }
        }
        self.prune(&VectorClock::new());
    }
}

impl Counter {
    fn merge(&mut self, other: &Counter) {
        let join = |mine: &mut BTreeMap<InstanceId, CounterMark>,
                    theirs: &BTreeMap<InstanceId, CounterMark>| {
            for (&instance, mark) in theirs {
                let m = mine.entry(instance).or_default();
                if mark.seq > m.seq {
                    *m = *mark;
                }
            }
        };
        join(&mut self.total, &other.total);
        join(&mut self.base, &other.base);
    }
}

impl Field {
    fn merge(&mut self, other: &Field, sides: Sides) {
        self.reg.merge(&other.reg, sides);
        self.ctr.merge(&other.ctr);
    }
}

impl Member {
    fn merge(&mut self, other: &Member, sides: Sides) {
        self.removed.join(&other.removed);
        self.adds
            .retain(|&dot| other.adds.contains(&dot) || sides.keeps_mine(dot));
        let theirs = other.adds.iter().filter(|&&dot| sides.keeps_theirs(dot));
        self.adds.extend(theirs);
        self.normalize();
        self.prune(&VectorClock::new());
    }
}

impl ZMember {
    fn merge(&mut self, other: &ZMember, sides: Sides) {
        self.member.merge(&other.member, sides);
        self.score.merge(&other.score, sides);
        self.incr.merge(&other.incr);
    }
}

impl List {
    fn merge(&mut self, other: &List, sides: Sides) {
        for (&id, node) in &other.nodes {
            self.nodes.entry(id).or_insert_with(|| node.clone());
        }
        self.removed.extend(other.removed.iter().copied());
        let empty = Register::default();
        let ids: BTreeSet<ElemId> = self
            .values
            .keys()
            .chain(other.values.keys())
            .copied()
            .collect();
        for id in ids {
            let theirs = other.values.get(&id).unwrap_or(&empty);
            self.values.entry(id).or_default().merge(theirs, sides);
        }
        self.values.retain(|_, reg| !reg.is_empty());
    }
}

/// Merges every key of `theirs` into `mine`, visiting keys missing on one side too (their
/// content may be dead on the other).
fn merge_map<K: Ord + Clone, V: Default>(
    mine: &mut BTreeMap<K, V>,
    theirs: &BTreeMap<K, V>,
    sides: Sides,
    merge: impl Fn(&mut V, &V, Sides),
) {
    let empty = V::default();
    let keys: BTreeSet<K> = mine.keys().chain(theirs.keys()).cloned().collect();
    for k in keys {
        merge(
            mine.entry(k.clone()).or_default(),
            theirs.get(&k).unwrap_or(&empty),
            sides,
        );
    }
}

impl KeyState {
    /// Joins another replica's state of the same key into this one (full state transfer).
    ///
    /// Both states must be "prefix-complete" per origin (each holds, for every origin, that
    /// origin's first `clock[origin]` ops), which every state built by `apply` is, compacted or
    /// not. Commutative, associative and idempotent; op delivery resumes afterwards from the
    /// joined clock.
    pub fn merge(&mut self, other: &KeyState) {
        let mine = self.clock.clone();
        let sides = Sides {
            mine: &mine,
            theirs: &other.clock,
        };
        for (&tag, clock) in &other.cleared {
            self.cleared.entry(tag).or_default().join(clock);
        }
        let tags: BTreeSet<TypeTag> = self
            .marks
            .keys()
            .chain(other.marks.keys())
            .copied()
            .collect();
        let none = BTreeMap::new();
        for tag in tags {
            let theirs = other.marks.get(&tag).unwrap_or(&none);
            let marks = self.marks.entry(tag).or_default();
            marks.retain(|_, m| theirs.values().any(|t| t == m) || sides.keeps_mine(m.dot()));
            for (&instance, stamp) in theirs {
                if sides.keeps_theirs(stamp.dot()) {
                    let mine = marks.entry(instance).or_insert(*stamp);
                    if stamp.seq > mine.seq {
                        *mine = *stamp;
                    }
                }
            }
        }
        self.marks.retain(|_, m| !m.is_empty());
        self.string.merge(&other.string, sides);
        merge_map(&mut self.hash, &other.hash, sides, Field::merge);
        merge_map(&mut self.set, &other.set, sides, Member::merge);
        merge_map(&mut self.zset, &other.zset, sides, ZMember::merge);
        self.list.merge(&other.list, sides);
        self.ttl.merge(&other.ttl, sides);
        self.clock.join(&other.clock);
        self.prune();
    }

    /// Drops the tombstones no future op can need: a remove's clock only matters for writes not
    /// applied yet, so once the key's clock covers it, it goes, and so does an element left with
    /// nothing (the reference keeps tombstones "until every instance has seen the delete"; this
    /// is the local half of that). Counter bases and list removals stay (a late reset or `LSET`
    /// may still name them). The meaning of the state does not change.
    pub fn compact(&mut self) {
        let clock = self.clock.clone();
        let seen = |vv: &VectorClock| vv.entries().all(|(i, s)| s <= clock.get(i));
        fn forget<V>(reg: &mut Register<V>, seen: &impl Fn(&VectorClock) -> bool) {
            if seen(&reg.removed) {
                reg.removed = VectorClock::new();
            }
        }
        self.cleared.retain(|_, vv| !seen(vv));
        forget(&mut self.string.reg, &seen);
        forget(&mut self.ttl, &seen);
        self.hash.retain(|_, f| {
            forget(&mut f.reg, &seen);
            !f.is_empty()
        });
        self.set.retain(|_, m| {
            if seen(&m.removed) {
                m.removed = VectorClock::new();
            }
            !(m.adds.is_empty() && m.removed.is_empty())
        });
        self.zset.retain(|_, z| {
            if seen(&z.member.removed) {
                z.member.removed = VectorClock::new();
            }
            forget(&mut z.score, &seen);
            !(z.member.adds.is_empty()
                && z.member.removed.is_empty()
                && z.score.is_empty()
                && z.incr.is_empty())
        });
        self.list.values.retain(|_, r| {
            forget(r, &seen);
            !r.is_empty()
        });
    }
}
