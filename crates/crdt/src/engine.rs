//! What the engine must be told after an op: the Redis commands that turn the value it holds
//! (the key's previous materialization) into the new one.
//!
//! The engine keeps the plain value under the client's key, so reads (`GET`, `HGETALL`,
//! `LRANGE`, `SCAN`, `TYPE`...) run natively; the layer that applies an op (a Lua script, or the
//! proxy) sends these commands in the same script as the metadata update. They are minimal for the
//! usual cases (one field, one member, a push or pop at either end) and rewrite the key otherwise.

use crate::blob::Blob;
use crate::clock::Millis;
use crate::state::{Expiry, KeyState, Value};

/// What a client sees of a key: its value and, when it has one, its deadline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// The value (`None`: the key does not exist).
    pub value: Option<Value>,
    /// The deadline the engine key carries (every instance sets it, so every instance hides the
    /// key on time; only the owner ships the `DEL`).
    pub expire_at: Option<Millis>,
}

impl KeyState {
    /// The key as the engine should hold it (expiry not applied: the engine applies it).
    pub fn view(&self) -> View {
        let value = self.materialize();
        let expire_at = match (self.expiry(), &value) {
            (Expiry::At { at, .. }, Some(_)) => Some(at),
            _ => None,
        };
        View { value, expire_at }
    }
}

/// A Redis command, as its arguments.
pub type Command = Vec<Blob>;

fn cmd(name: &str, key: &Blob, args: impl IntoIterator<Item = Blob>) -> Command {
    let mut c = vec![Blob::from(name), key.clone()];
    c.extend(args);
    c
}

fn score(f: f64) -> Blob {
    Blob::from(format!("{f}"))
}

/// The commands that turn the engine's `before` into `after` for `key`.
pub fn engine_commands(key: &Blob, before: &View, after: &View) -> Vec<Command> {
    let mut out = Vec::new();
    let rewritten = value_commands(key, before.value.as_ref(), after.value.as_ref(), &mut out);
    if after.value.is_some() {
        let had = if rewritten { None } else { before.expire_at };
        match (had, after.expire_at) {
            (Some(b), Some(a)) if a == b => {}
            (_, Some(a)) => out.push(cmd("PEXPIREAT", key, [Blob::from(a.to_string())])),
            (Some(_), None) => out.push(cmd("PERSIST", key, [])),
            (None, None) => {}
        }
    }
    out
}

/// Pushes the value commands; returns whether the key was recreated (its deadline lost).
/// Additions go before removals so that a collection never empties on the way (the engine would
/// delete it, and its deadline with it).
fn value_commands(
    key: &Blob,
    before: Option<&Value>,
    after: Option<&Value>,
    out: &mut Vec<Command>,
) -> bool {
    let Some(after) = after else {
        if before.is_some() {
            out.push(cmd("DEL", key, []));
        }
        return false;
    };
    match (before, after) {
        (Some(Value::String(b)), Value::String(a)) => {
            if a != b {
                out.push(cmd("SET", key, [a.clone(), Blob::from("KEEPTTL")]));
            }
            false
        }
        (Some(Value::Hash(b)), Value::Hash(a)) => {
            let set: Vec<Blob> = a
                .iter()
                .filter(|(f, v)| b.get(*f) != Some(*v))
                .flat_map(|(f, v)| [f.clone(), v.clone()])
                .collect();
            if !set.is_empty() {
                out.push(cmd("HSET", key, set));
            }
            let gone: Vec<Blob> = b.keys().filter(|f| !a.contains_key(*f)).cloned().collect();
            if !gone.is_empty() {
                out.push(cmd("HDEL", key, gone));
            }
            false
        }
        (Some(Value::Set(b)), Value::Set(a)) => {
            let new: Vec<Blob> = a.difference(b).cloned().collect();
            if !new.is_empty() {
                out.push(cmd("SADD", key, new));
            }
            let gone: Vec<Blob> = b.difference(a).cloned().collect();
            if !gone.is_empty() {
                out.push(cmd("SREM", key, gone));
            }
            false
        }
        (Some(Value::Zset(b)), Value::Zset(a)) => {
            let set: Vec<Blob> = a
                .iter()
                .filter(|(m, s)| !b.iter().any(|(x, y)| x == m && y.to_bits() == s.to_bits()))
                .flat_map(|(m, s)| [score(*s), m.clone()])
                .collect();
            if !set.is_empty() {
                out.push(cmd("ZADD", key, set));
            }
            let gone: Vec<Blob> = b
                .iter()
                .filter(|(m, _)| !a.iter().any(|(x, _)| x == m))
                .map(|(m, _)| m.clone())
                .collect();
            if !gone.is_empty() {
                out.push(cmd("ZREM", key, gone));
            }
            false
        }
        (Some(Value::List(b)), Value::List(a)) => list_commands(key, b, a, out),
        (before, after) => {
            if before.is_some() {
                out.push(cmd("DEL", key, []));
            }
            out.push(create(key, after));
            true
        }
    }
}

fn create(key: &Blob, value: &Value) -> Command {
    match value {
        Value::String(v) => cmd("SET", key, [v.clone()]),
        Value::Hash(h) => cmd(
            "HSET",
            key,
            h.iter().flat_map(|(f, v)| [f.clone(), v.clone()]),
        ),
        Value::Set(s) => cmd("SADD", key, s.iter().cloned()),
        Value::Zset(z) => cmd(
            "ZADD",
            key,
            z.iter().flat_map(|(m, s)| [score(*s), m.clone()]),
        ),
        Value::List(l) => cmd("RPUSH", key, l.iter().cloned()),
    }
}

/// Lists: pushes and pops at either end and in-place changes are sent as such; anything else
/// (an insertion or removal in the middle) rewrites the list.
fn list_commands(key: &Blob, b: &[Blob], a: &[Blob], out: &mut Vec<Command>) -> bool {
    let prefix = b.iter().zip(a).take_while(|(x, y)| x == y).count();
    let max_suffix = b.len().min(a.len()) - prefix;
    let suffix = b
        .iter()
        .rev()
        .zip(a.iter().rev())
        .take(max_suffix)
        .take_while(|(x, y)| x == y)
        .count();
    let (old, new) = (&b[prefix..b.len() - suffix], &a[prefix..a.len() - suffix]);
    let count = |n: usize| Blob::from(n.to_string());
    match (old.is_empty(), new.is_empty()) {
        (true, true) => false,
        (true, false) if prefix == 0 => {
            out.push(cmd("LPUSH", key, new.iter().rev().cloned()));
            false
        }
        (true, false) if suffix == 0 => {
            out.push(cmd("RPUSH", key, new.iter().cloned()));
            false
        }
        (false, true) if prefix == 0 => {
            out.push(cmd("LPOP", key, [count(old.len())]));
            false
        }
        (false, true) if suffix == 0 => {
            out.push(cmd("RPOP", key, [count(old.len())]));
            false
        }
        _ if old.len() == new.len() => {
            for (i, v) in new.iter().enumerate() {
                out.push(cmd("LSET", key, [count(prefix + i), v.clone()]));
            }
            false
        }
        _ => {
            out.push(cmd("DEL", key, []));
            out.push(create(key, &Value::List(a.to_vec())));
            true
        }
    }
}
