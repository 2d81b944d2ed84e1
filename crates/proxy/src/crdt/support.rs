//! What the layer's commands share: failures as replies, argument parsing, the visible value of
//! a key's state, and running a change on one shard.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flotilla_crdb::{transact, Conn, CrdbError, KeyState};
use flotilla_crdt::{Blob, Millis, Op, TypeTag, Value as CValue, Write, WriteError};
use flotilla_resp::Value;

use super::Ctx;

/// What a write's closure gives: the ops to log and the client's reply.
pub(super) type Done = Result<(Vec<Op>, Value), CrdbError>;

/// A failed write as the client sees it.
#[derive(Debug)]
pub(super) enum Failure {
    /// An error reply to give the client.
    Reply(Value),
    /// The engine connection failed (it is reopened next time).
    Engine(redis::RedisError),
}

impl Failure {
    pub(super) fn is_io_error(&self) -> bool {
        matches!(self, Failure::Engine(e) if e.is_io_error())
    }

    pub(super) fn is_connection_dropped(&self) -> bool {
        matches!(self, Failure::Engine(e) if e.is_connection_dropped())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Reply(Value::Error(e)) => write!(f, "{}", String::from_utf8_lossy(e)),
            Failure::Reply(other) => write!(f, "ERR {other:?}"),
            Failure::Engine(e) => write!(f, "ERR Active-Active write failed: {e}"),
        }
    }
}

impl From<CrdbError> for Failure {
    fn from(e: CrdbError) -> Self {
        match e {
            CrdbError::Engine(e) => Failure::Engine(e),
            other => Failure::Reply(error_of(other)),
        }
    }
}

pub(super) fn error_of(e: CrdbError) -> Value {
    match e {
        CrdbError::Write(w) => Value::error(w.to_string()),
        CrdbError::Contended(_) => Value::error(e.to_string()),
        other => Value::error(format!("ERR Active-Active: {other}")),
    }
}

pub(super) fn syntax() -> Failure {
    Failure::Reply(Value::error("ERR syntax error"))
}

pub(super) fn not_integer() -> Failure {
    Failure::Reply(Value::error("ERR value is not an integer or out of range"))
}

pub(super) fn not_float() -> Failure {
    Failure::Reply(Value::error("ERR value is not a valid float"))
}

pub(super) fn arity(name: &str) -> Failure {
    Failure::Reply(Value::error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )))
}

pub(super) fn int(arg: &[u8]) -> Result<i64, Failure> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(not_integer)
}

pub(super) fn float(arg: &[u8]) -> Result<f64, Failure> {
    let text = std::str::from_utf8(arg).map_err(|_| not_float())?;
    let value: f64 = match text.to_ascii_lowercase().as_str() {
        "inf" | "+inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        t => t.parse().map_err(|_| not_float())?,
    };
    if value.is_nan() {
        return Err(not_float());
    }
    Ok(value)
}

pub(super) fn blob(b: &Bytes) -> Blob {
    Blob(b.to_vec())
}

pub(super) fn bulk(b: &Blob) -> Value {
    Value::bulk(Bytes::copy_from_slice(b.as_bytes()))
}

/// A score as the engines print it in RESP2.
pub(super) fn format_score(f: f64) -> String {
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    format!("{f}")
}

pub(super) fn wrong_type() -> CrdbError {
    WriteError::WrongType.into()
}

/// Applies a write to `state`, adding its op (if any) to `ops`.
pub(super) fn put(
    ops: &mut Vec<Op>,
    state: &mut KeyState,
    key: &Blob,
    ctx: &Ctx,
    write: Write,
) -> Result<bool, CrdbError> {
    let op = state.write(key, ctx.instance, ctx.now, write)?;
    let wrote = op.is_some();
    ops.extend(op);
    Ok(wrote)
}

/// `SET` semantics: replaces a value of any type (a `DEL` of another type first).
pub(super) fn set_value(
    ops: &mut Vec<Op>,
    state: &mut KeyState,
    key: &Blob,
    ctx: &Ctx,
    value: Blob,
    keep_ttl: bool,
) -> Result<(), CrdbError> {
    if state
        .visible_type(ctx.now)
        .is_some_and(|t| t != TypeTag::String)
    {
        put(ops, state, key, ctx, Write::Del)?;
    }
    put(ops, state, key, ctx, Write::Set { value, keep_ttl })?;
    Ok(())
}

pub(super) fn string_of(state: &KeyState, now: Millis) -> Result<Option<Blob>, CrdbError> {
    match state.visible(now) {
        None => Ok(None),
        Some(CValue::String(b)) => Ok(Some(b)),
        Some(_) => Err(wrong_type()),
    }
}

pub(super) fn check_type(state: &KeyState, now: Millis, tag: TypeTag) -> Result<bool, CrdbError> {
    match state.visible_type(now) {
        None => Ok(false),
        Some(t) if t == tag => Ok(true),
        Some(_) => Err(wrong_type()),
    }
}

pub(super) fn hash_of(state: &KeyState, now: Millis) -> BTreeMap<Blob, Blob> {
    match state.visible(now) {
        Some(CValue::Hash(h)) => h,
        _ => BTreeMap::new(),
    }
}

pub(super) fn set_of(state: &KeyState, now: Millis) -> BTreeSet<Blob> {
    match state.visible(now) {
        Some(CValue::Set(s)) => s,
        _ => BTreeSet::new(),
    }
}

pub(super) fn zset_of(state: &KeyState, now: Millis) -> Vec<(Blob, f64)> {
    match state.visible(now) {
        Some(CValue::Zset(z)) => z,
        _ => Vec::new(),
    }
}

pub(super) fn list_of(state: &KeyState, now: Millis) -> Vec<Blob> {
    match state.visible(now) {
        Some(CValue::List(l)) => l,
        _ => Vec::new(),
    }
}

/// Runs one transaction over `keys` (one shard) with `f` deciding the writes and the reply.
pub(super) async fn on_keys(
    ctx: &Ctx<'_>,
    conn: &mut Conn,
    keys: Vec<Vec<u8>>,
    mut f: impl FnMut(&mut [KeyState]) -> Done,
) -> Result<Value, Failure> {
    let done = transact(conn, ctx.protocol, ctx.now, &keys, |states| f(states)).await?;
    Ok(done.value)
}

/// Runs a write on one key.
pub(super) async fn on_key(
    ctx: &Ctx<'_>,
    conn: &mut Conn,
    key: &Bytes,
    mut f: impl FnMut(&mut KeyState, &Blob) -> Done,
) -> Result<Value, Failure> {
    let k = blob(key);
    on_keys(ctx, conn, vec![key.to_vec()], |states| {
        f(&mut states[0], &k)
    })
    .await
}

/// A deadline from an expire-style argument: `unit` ms per unit, `absolute` or from now.
pub(super) fn deadline(
    ctx: &Ctx,
    arg: &[u8],
    unit: i64,
    absolute: bool,
    name: &str,
) -> Result<i64, Failure> {
    let n = int(arg)?;
    let invalid = || {
        Failure::Reply(Value::error(format!(
            "ERR invalid expire time in '{}' command",
            name.to_ascii_lowercase()
        )))
    };
    let ms = n.checked_mul(unit).ok_or_else(invalid)?;
    if absolute {
        Ok(ms)
    } else {
        ms.checked_add(ctx.now as i64).ok_or_else(invalid)
    }
}

/// The optional count of `SPOP`/`LPOP`/`RPOP`: a non-negative integer.
pub(super) fn count_arg(arg: &[u8]) -> Result<usize, Failure> {
    let n = int(arg)?;
    usize::try_from(n)
        .map_err(|_| Failure::Reply(Value::error("ERR value is out of range, must be positive")))
}

/// A random number (for `SPOP`).
pub(super) fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A keyed command's name, arguments after the name, and key (the first argument).
pub(super) fn keyed(request: &flotilla_resp::Request) -> Result<(&str, &[Bytes], &Bytes), Failure> {
    let name = request.name();
    let args = &request.argv()[1..];
    need(name, args, 1)?;
    Ok((name, args, &args[0]))
}

/// Refuses a command given fewer than `n` arguments after its name, as the engine words it.
pub(super) fn need(name: &str, args: &[Bytes], n: usize) -> Result<(), Failure> {
    if args.len() < n {
        Err(arity(name))
    } else {
        Ok(())
    }
}
