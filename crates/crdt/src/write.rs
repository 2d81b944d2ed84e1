//! The origin side: turn a client's write into an [`Op`] against the local state of its key.
//!
//! This is what the proxy-side layer (and its Lua scripts) does on the instance a client wrote
//! to: check the write as the engine would (`WRONGTYPE`, not an integer, overflow), resolve
//! positions into element ids (`LPOP` names the elements it removes), record which counters the
//! write resets, then apply the op locally and append it to the op log.

use std::collections::BTreeMap;

use crate::blob::Blob;
use crate::clock::{Dot, InstanceId, Millis};
use crate::error::WriteError;
use crate::op::{CounterRef, CounterReset, Effect, ElemId, Op, CRDT_PROTOCOL_VERSION};
use crate::state::{KeyState, TypeTag, Value};

/// The largest counter value: Active-Active counters are 59-bit signed (reference section 2).
pub const COUNTER_MAX: i128 = (1 << 58) - 1;
/// The smallest counter value.
pub const COUNTER_MIN: i128 = -(1 << 58);

/// Which end of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The head (`LPUSH`, `LPOP`).
    Left,
    /// The tail (`RPUSH`, `RPOP`).
    Right,
}

/// A client's write to one key, after the proxy parsed the command (one Redis command may give
/// several: `MSET` one per key, `RENAME` a `Del` of the source and a `Set`-like write of the
/// destination).
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// `SET` (and `APPEND`/`SETRANGE`/`GETSET`, with the resulting value).
    Set {
        /// The new value.
        value: Blob,
        /// `KEEPTTL`.
        keep_ttl: bool,
    },
    /// `INCRBY` and friends.
    IncrBy(i64),
    /// `INCRBYFLOAT`.
    IncrByFloat(f64),
    /// `HSET`.
    HSet(Vec<(Blob, Blob)>),
    /// `HDEL`.
    HDel(Vec<Blob>),
    /// `HINCRBY`.
    HIncrBy(Blob, i64),
    /// `HINCRBYFLOAT`.
    HIncrByFloat(Blob, f64),
    /// `SADD`.
    SAdd(Vec<Blob>),
    /// `SREM`.
    SRem(Vec<Blob>),
    /// `ZADD`.
    ZAdd(Vec<(Blob, f64)>),
    /// `ZINCRBY`.
    ZIncrBy(Blob, f64),
    /// `ZREM`.
    ZRem(Vec<Blob>),
    /// `LPUSH`/`RPUSH` (values in command order).
    Push(End, Vec<Blob>),
    /// `LINSERT key BEFORE|AFTER pivot value`.
    LInsert {
        /// `BEFORE` the pivot (else after).
        before: bool,
        /// The pivot value.
        pivot: Blob,
        /// The new value.
        value: Blob,
    },
    /// `LPOP`/`RPOP key count`.
    Pop(End, usize),
    /// `LREM key count value`.
    LRem(i64, Blob),
    /// `LSET key index value`.
    LSet(i64, Blob),
    /// `LTRIM key start stop`.
    LTrim(i64, i64),
    /// `DEL`.
    Del,
    /// `PEXPIREAT` (every expire form, as an absolute deadline).
    ExpireAt(Millis),
    /// `PERSIST`.
    Persist,
}

impl Write {
    fn type_tag(&self) -> Option<TypeTag> {
        Some(match self {
            Write::Set { .. } | Write::IncrBy(_) | Write::IncrByFloat(_) => TypeTag::String,
            Write::HSet(_) | Write::HDel(_) | Write::HIncrBy(..) | Write::HIncrByFloat(..) => {
                TypeTag::Hash
            }
            Write::SAdd(_) | Write::SRem(_) => TypeTag::Set,
            Write::ZAdd(_) | Write::ZIncrBy(..) | Write::ZRem(_) => TypeTag::Zset,
            Write::Push(..)
            | Write::LInsert { .. }
            | Write::Pop(..)
            | Write::LRem(..)
            | Write::LSet(..)
            | Write::LTrim(..) => TypeTag::List,
            Write::Del | Write::ExpireAt(_) | Write::Persist => return None,
        })
    }
}

impl KeyState {
    /// Turns a client's write at instance `instance`, wall clock `now`, into the op to ship, or
    /// `None` when the write changes nothing (`SREM` of a missing member, `DEL` of a missing key),
    /// as the engine would not propagate it either. The caller applies the op locally too.
    pub fn prepare(
        &self,
        key: &Blob,
        instance: InstanceId,
        now: Millis,
        write: Write,
    ) -> Result<Option<Op>, WriteError> {
        let current = self.visible_type(now);
        let wanted = write.type_tag();
        if let (Some(wanted), Some(current)) = (wanted, current) {
            if current != wanted {
                return Err(WriteError::WrongType);
            }
        }
        let fresh = current.is_none() && wanted.is_some();
        let current = Current {
            state: self,
            tag: current,
        };
        let Some((effect, own_resets)) = self.effect(current, write, now)? else {
            return Ok(None);
        };
        // The counters the op resets: its own, and every counter of the parts it clears.
        let mut resets: BTreeMap<CounterRef, CounterReset> = own_resets
            .into_iter()
            .map(|r| (r.counter.clone(), r))
            .collect();
        let clears_all = fresh || matches!(effect, Effect::Del);
        for tag in TypeTag::ALL {
            if clears_all || wanted.is_some_and(|w| w != tag) {
                for reset in self.counters_of(tag) {
                    resets.entry(reset.counter.clone()).or_insert(reset);
                }
            }
        }
        let resets = resets.into_values().collect();
        Ok(Some(Op {
            v: CRDT_PROTOCOL_VERSION,
            key: key.clone(),
            id: Dot {
                instance,
                seq: self.clock.get(instance) + 1,
            },
            ts: now,
            ctx: self.clock.clone(),
            fresh,
            resets,
            effect,
        }))
    }

    /// Prepares and applies a write locally; the op returned is what the syncer ships.
    pub fn write(
        &mut self,
        key: &Blob,
        instance: InstanceId,
        now: Millis,
        write: Write,
    ) -> Result<Option<Op>, WriteError> {
        let op = self.prepare(key, instance, now, write)?;
        if let Some(op) = &op {
            self.apply(op).expect("an op prepared here applies here");
        }
        Ok(op)
    }

    /// The effect of a write on the current value, and the counters it resets by itself.
    fn effect(
        &self,
        current: Current,
        write: Write,
        now: Millis,
    ) -> Result<Option<(Effect, Vec<CounterReset>)>, WriteError> {
        let none = Vec::new;
        Ok(Some(match write {
            Write::Set { value, keep_ttl } => {
                let resets = self.resets([CounterRef::String]);
                (Effect::Set { value, keep_ttl }, resets)
            }
            Write::IncrBy(by) => {
                check_int(current.string().as_ref(), by)?;
                (Effect::Incr { by }, none())
            }
            Write::IncrByFloat(by) => {
                check_float(current.string().as_ref(), by)?;
                (Effect::IncrFloat { by }, none())
            }
            Write::HSet(fields) => {
                let resets = self.resets(fields.iter().map(|(f, _)| field_ref(f)));
                (Effect::HashSet { fields }, resets)
            }
            Write::HDel(fields) => {
                let Some(fields) = keep(fields, |f| current.hash_value(f).is_some()) else {
                    return Ok(None);
                };
                let resets = self.resets(fields.iter().map(field_ref));
                (Effect::HashDel { fields }, resets)
            }
            Write::HIncrBy(field, by) => {
                check_int(current.hash_value(&field).as_ref(), by)?;
                (Effect::HashIncr { field, by }, none())
            }
            Write::HIncrByFloat(field, by) => {
                check_float(current.hash_value(&field).as_ref(), by)?;
                (Effect::HashIncrFloat { field, by }, none())
            }
            Write::SAdd(members) => {
                let Some(members) = keep(members, |m| !current.set_has(m)) else {
                    return Ok(None);
                };
                (Effect::SetAdd { members }, none())
            }
            Write::SRem(members) => {
                let Some(members) = keep(members, |m| current.set_has(m)) else {
                    return Ok(None);
                };
                (Effect::SetRem { members }, none())
            }
            Write::ZAdd(members) => {
                let resets = self.resets(members.iter().map(|(m, _)| member_ref(m)));
                (Effect::ZAdd { members }, resets)
            }
            Write::ZIncrBy(member, by) => {
                let score = current.zscore(&member).unwrap_or(0.0);
                if !(score + by).is_finite() {
                    return Err(WriteError::NotFinite);
                }
                (Effect::ZIncr { member, by }, none())
            }
            Write::ZRem(members) => {
                let Some(members) = keep(members, |m| current.zscore(m).is_some()) else {
                    return Ok(None);
                };
                let resets = self.resets(members.iter().map(member_ref));
                (Effect::ZRem { members }, resets)
            }
            Write::Push(end, values) => {
                let (after, values) = match end {
                    End::Left => (None, values.into_iter().rev().collect()),
                    End::Right => (self.list.order().last().copied(), values),
                };
                (Effect::ListInsert { after, values }, none())
            }
            Write::LInsert {
                before,
                pivot,
                value,
            } => {
                let visible = self.list.visible();
                let Some(&(pivot_id, _)) = visible.iter().find(|(_, v)| *v == pivot) else {
                    return Ok(None);
                };
                let after = if before {
                    let order = self.list.order();
                    let at = order
                        .iter()
                        .position(|&id| id == pivot_id)
                        .expect("visible");
                    at.checked_sub(1).map(|i| order[i])
                } else {
                    Some(pivot_id)
                };
                (
                    Effect::ListInsert {
                        after,
                        values: vec![value],
                    },
                    none(),
                )
            }
            Write::Pop(end, count) => {
                let visible = self.list.visible();
                let elems: Vec<ElemId> = match end {
                    End::Left => visible.iter().take(count).map(|e| e.0).collect(),
                    End::Right => visible.iter().rev().take(count).map(|e| e.0).collect(),
                };
                return Ok(list_rem(elems));
            }
            Write::LRem(count, value) => {
                let visible = self.list.visible();
                let matching = visible.iter().filter(|(_, v)| *v == value).map(|e| e.0);
                let elems: Vec<ElemId> = match count {
                    0 => matching.collect(),
                    n if n > 0 => matching.take(n as usize).collect(),
                    n => {
                        let all: Vec<ElemId> = matching.collect();
                        all.into_iter()
                            .rev()
                            .take(n.unsigned_abs() as usize)
                            .collect()
                    }
                };
                return Ok(list_rem(elems));
            }
            Write::LSet(index, value) => {
                if current.tag.is_none() {
                    return Err(WriteError::NoSuchKey);
                }
                let visible = self.list.visible();
                let at = resolve_index(index, visible.len()).ok_or(WriteError::IndexOutOfRange)?;
                let elem = visible[at].0;
                (Effect::ListSet { elem, value }, none())
            }
            Write::LTrim(start, stop) => {
                let visible = self.list.visible();
                let len = visible.len() as i64;
                let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i };
                let (start, stop) = (norm(start), norm(stop).min(len - 1));
                let elems = visible
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| (*i as i64) < start || (*i as i64) > stop)
                    .map(|(_, e)| e.0)
                    .collect();
                return Ok(list_rem(elems));
            }
            Write::Del => {
                if current.tag.is_none() {
                    return Ok(None);
                }
                (Effect::Del, none())
            }
            Write::ExpireAt(at) => {
                if current.tag.is_none() {
                    return Ok(None);
                }
                // A deadline already passed deletes the key, as the engine does.
                let effect = if at <= now {
                    Effect::Del
                } else {
                    Effect::Expire { at }
                };
                (effect, none())
            }
            Write::Persist => {
                if current.tag.is_none()
                    || !matches!(self.expiry(), crate::state::Expiry::At { .. })
                {
                    return Ok(None);
                }
                (Effect::Persist, none())
            }
        }))
    }

    /// The resets of the named counters (those with live increments).
    fn resets(&self, refs: impl IntoIterator<Item = CounterRef>) -> Vec<CounterReset> {
        refs.into_iter()
            .filter_map(|r| self.counter_reset(r))
            .collect()
    }
}

fn field_ref(field: &Blob) -> CounterRef {
    CounterRef::Field {
        field: field.clone(),
    }
}

fn member_ref(member: &Blob) -> CounterRef {
    CounterRef::Member {
        member: member.clone(),
    }
}

fn list_rem(elems: Vec<ElemId>) -> Option<(Effect, Vec<CounterReset>)> {
    (!elems.is_empty()).then(|| (Effect::ListRem { elems }, Vec::new()))
}

/// The distinct items that pass `pred`, or `None` when none does (the write changes nothing).
fn keep(items: Vec<Blob>, pred: impl Fn(&Blob) -> bool) -> Option<Vec<Blob>> {
    let mut seen = std::collections::BTreeSet::new();
    let kept: Vec<Blob> = items
        .into_iter()
        .filter(|m| pred(m) && seen.insert(m.clone()))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// What a write needs of its key at the origin, looked up element by element (a write to a big
/// key does not materialize all of it).
#[derive(Clone, Copy)]
struct Current<'a> {
    state: &'a KeyState,
    /// The visible type; `None`: the key does not exist (or has expired).
    tag: Option<TypeTag>,
}

impl Current<'_> {
    fn string(&self) -> Option<Blob> {
        (self.tag == Some(TypeTag::String))
            .then(|| self.state.string.value())
            .flatten()
    }

    fn hash_value(&self, field: &Blob) -> Option<Blob> {
        (self.tag == Some(TypeTag::Hash))
            .then(|| {
                self.state
                    .hash
                    .get(field)
                    .and_then(crate::state::Field::value)
            })
            .flatten()
    }

    fn set_has(&self, member: &Blob) -> bool {
        self.tag == Some(TypeTag::Set) && self.state.set.get(member).is_some_and(|m| m.is_live())
    }

    fn zscore(&self, member: &Blob) -> Option<f64> {
        (self.tag == Some(TypeTag::Zset))
            .then(|| self.state.zset.get(member))
            .flatten()
            .filter(|z| z.member.is_live())
            .map(|z| z.score())
    }
}

fn resolve_index(index: i64, len: usize) -> Option<usize> {
    let len = len as i64;
    let at = if index < 0 { len + index } else { index };
    (0..len).contains(&at).then_some(at as usize)
}

/// Checks `INCRBY by` on the current value: an integer, and a result inside the 59-bit range.
fn check_int(current: Option<&Blob>, by: i64) -> Result<(), WriteError> {
    let base = match current {
        None => 0,
        Some(b) => std::str::from_utf8(b.as_bytes())
            .ok()
            .and_then(|s| s.parse::<i128>().ok())
            .ok_or(WriteError::NotInteger)?,
    };
    let result = base + i128::from(by);
    if !(COUNTER_MIN..=COUNTER_MAX).contains(&result) {
        return Err(WriteError::Overflow);
    }
    Ok(())
}

/// Checks `INCRBYFLOAT by` on the current value: a number, and a finite result.
fn check_float(current: Option<&Blob>, by: f64) -> Result<(), WriteError> {
    let base = match current {
        None => 0.0,
        Some(b) => std::str::from_utf8(b.as_bytes())
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or(WriteError::NotFloat)?,
    };
    if !(base + by).is_finite() {
        return Err(WriteError::NotFinite);
    }
    Ok(())
}

/// `RENAME`/`COPY` as per-key effects: the destination is rebuilt from the source's visible value
/// (a `Del` of what the destination held, then writes that recreate the value and its deadline),
/// and for `RENAME` the source gets a `Del`. Each op is an ordinary op of one key, so concurrent
/// writes elsewhere merge by that key's rules: a write to the source that the rename had not seen
/// survives in the source; a concurrent write to the destination merges with the copy.
///
/// Counters arrive at the destination as plain values (their sum); a later increment anywhere
/// adds to it.
pub fn copy_key(
    src: &KeyState,
    dst: &mut KeyState,
    dst_key: &Blob,
    instance: InstanceId,
    now: Millis,
    replace: bool,
) -> Result<Vec<Op>, WriteError> {
    let value = src.visible(now).ok_or(WriteError::NoSuchKey)?;
    if dst.visible(now).is_some() && !replace {
        return Ok(Vec::new());
    }
    let mut writes = vec![Write::Del];
    writes.push(match value {
        Value::String(value) => Write::Set {
            value,
            keep_ttl: false,
        },
        Value::Hash(h) => Write::HSet(h.into_iter().collect()),
        Value::Set(s) => Write::SAdd(s.into_iter().collect()),
        Value::Zset(z) => Write::ZAdd(z),
        Value::List(l) => Write::Push(End::Right, l),
    });
    if let crate::state::Expiry::At { at, .. } = src.expiry() {
        writes.push(Write::ExpireAt(at));
    }
    let mut ops = Vec::new();
    for write in writes {
        ops.extend(dst.write(dst_key, instance, now, write)?);
    }
    Ok(ops)
}

/// `RENAME src dst`: [`copy_key`] with replace, then a `Del` of the source; returns the ops of
/// both keys in the order to log them. The keys must share a slot (as Redis Software requires),
/// so one script applies all of them atomically.
pub fn rename_key(
    src: &mut KeyState,
    src_key: &Blob,
    dst: &mut KeyState,
    dst_key: &Blob,
    instance: InstanceId,
    now: Millis,
) -> Result<Vec<Op>, WriteError> {
    let mut ops = copy_key(src, dst, dst_key, instance, now, true)?;
    ops.extend(src.write(src_key, instance, now, Write::Del)?);
    Ok(ops)
}
