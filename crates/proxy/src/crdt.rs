//! The Active-Active layer on an endpoint (issue 15): for a database that is an instance of a
//! CRDB ([`Topology::crdt`]), what each client command becomes.
//!
//! - Supported writes (see [`screen`]) go through `flotilla-crdb` on the key's shard: the key's
//!   CRDT state is loaded, the write applied by `flotilla-crdt`'s rules, and one script commits
//!   the new metadata, the engine's value and the op-log entry. The client gets the reply the
//!   engine would have given, computed from the key before and after.
//! - Every other write is refused, naming the command (so nothing reaches the engine without
//!   being replicated), as are commands naming the layer's hidden keys (`__crdt__...`),
//!   transactions and scripts.
//! - `KEYS`, `SCAN`, `RANDOMKEY` and `DBSIZE` run here, leaving the hidden keys out.
//! - Reads go to the engine unchanged.
//!
//! Commands run here use one multiplexed engine connection per shard primary and login, shared
//! by the whole process ([`connection`]); the session runs each at the start of a batch, after
//! every earlier command of the client was answered, and before any later one is sent, so a
//! client's order holds.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flotilla_crdb::{is_hidden, transact, Conn, CrdbError, KeyState};
use flotilla_crdt::{
    Blob, End, InstanceId, Millis, Op, TypeTag, Value as CValue, Write, WriteError,
};
use flotilla_resp::{Protocol, Request, Value};

use crate::command::Class;
use crate::route::{request_keys, Decision, Route};
use crate::slot::ShardIndex;
use crate::topology::{CrdtInstance, ShardLogin, Topology};

/// The reply of a refused command: what it is, and that the database is Active-Active.
fn unsupported(name: &str) -> String {
    format!("ERR {name} is not supported on an Active-Active database")
}

/// What the endpoint of an Active-Active instance does with a request.
#[derive(Debug)]
pub(crate) enum Screen {
    /// Not the layer's business: the ordinary data path.
    Pass,
    /// Refused with this error.
    Refuse(String),
    /// Run here (a write through the layer, or a listing that hides the hidden keys).
    Run,
}

/// Supported writes: each goes through the layer.
const WRITES: &[&str] = &[
    "SET",
    "SETNX",
    "SETEX",
    "PSETEX",
    "GETSET",
    "GETDEL",
    "MSET",
    "MSETNX",
    "APPEND",
    "SETRANGE",
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "INCRBYFLOAT",
    "HSET",
    "HMSET",
    "HSETNX",
    "HDEL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "SADD",
    "SREM",
    "SPOP",
    "SMOVE",
    "ZADD",
    "ZINCRBY",
    "ZREM",
    "LPUSH",
    "RPUSH",
    "LPUSHX",
    "RPUSHX",
    "LINSERT",
    "LPOP",
    "RPOP",
    "LREM",
    "LSET",
    "LTRIM",
    "DEL",
    "UNLINK",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
    "RENAME",
    "RENAMENX",
    "COPY",
];

/// Listings run here so that the hidden keys stay hidden.
const LISTINGS: &[&str] = &["KEYS", "SCAN", "RANDOMKEY", "DBSIZE"];

/// Decides what the endpoint of an Active-Active instance does with `request`.
pub(crate) fn screen(request: &Request, decision: &Decision) -> Screen {
    let name = request.name();
    if let Ok(keys) = request_keys(request) {
        if keys.iter().any(|k| is_hidden(k)) {
            return Screen::Refuse(
                "ERR keys starting with __crdt__ are reserved on an Active-Active database".into(),
            );
        }
    }
    match name {
        "FLUSHALL" | "FLUSHDB" => {
            return Screen::Refuse(format!(
                "{}; use `flotilla crdb flush`, which flushes every instance",
                unsupported(name)
            ))
        }
        "MULTI" | "WATCH" => {
            return Screen::Refuse(format!(
                "{} (transactions are not replicated as one)",
                unsupported(name)
            ))
        }
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
            return Screen::Refuse(format!(
                "{} (scripts are not replicated)",
                unsupported(name)
            ))
        }
        "OBJECT"
            if request
                .arg(1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"ENCODING")) =>
        {
            return Screen::Refuse(unsupported("OBJECT ENCODING"))
        }
        "SORT"
            if request
                .args()
                .iter()
                .any(|a| a.eq_ignore_ascii_case(b"STORE")) =>
        {
            return Screen::Refuse(unsupported("SORT ... STORE"))
        }
        _ => {}
    }
    if matches!(
        decision.route,
        Route::Unknown | Route::Invalid(_) | Route::CrossSlot | Route::Refused(_)
    ) {
        // The proxy's own answer (unknown command, wrong arity, CROSSSLOT...).
        return Screen::Pass;
    }
    if WRITES.contains(&name) || LISTINGS.contains(&name) {
        return Screen::Run;
    }
    let Some(spec) = decision.spec else {
        return Screen::Pass;
    };
    let data = matches!(
        spec.class,
        Class::Keyed | Class::Split(_) | Class::AllShards(_) | Class::Scan
    );
    if data && spec.write {
        return Screen::Refuse(unsupported(name));
    }
    Screen::Pass
}

/// Engine connections by primary address and login user.
type Pool = tokio::sync::Mutex<HashMap<(SocketAddr, Option<String>), Conn>>;

/// The process's engine connections for the layer.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// A connection to the engine at `addr` logged in with `login` (shared; opened on first use).
async fn connection(addr: SocketAddr, login: &ShardLogin) -> Result<Conn, String> {
    let mut pool = pool().lock().await;
    let id = (addr, login.user.clone());
    if let Some(conn) = pool.get(&id) {
        return Ok(conn.clone());
    }
    let mut settings = redis::RedisConnectionInfo::default().set_skip_set_lib_name();
    if !login.password.is_empty() {
        settings = settings.set_password(login.password.clone());
        if let Some(user) = &login.user {
            settings = settings.set_username(user.clone());
        }
    }
    let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
        addr.ip().to_string(),
        addr.port(),
    ))
    .map_err(|e| e.to_string())?
    .set_redis_settings(settings);
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let conn = redis::Client::open(info)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("cannot reach shard at {addr}: {e}"))?;
    pool.insert(id, conn.clone());
    Ok(conn)
}

/// Forgets a connection that failed, so the next command opens a new one.
async fn forget(addr: SocketAddr, login: &ShardLogin) {
    pool().lock().await.remove(&(addr, login.user.clone()));
}

/// What a command run here needs.
struct Ctx<'a> {
    topology: &'a Topology,
    instance: InstanceId,
    protocol: u16,
    resp3: bool,
    now: Millis,
}

impl Ctx<'_> {
    fn nil(&self) -> Value {
        if self.resp3 {
            Value::Null
        } else {
            Value::NullBulkString
        }
    }

    fn nil_array(&self) -> Value {
        if self.resp3 {
            Value::Null
        } else {
            Value::NullArray
        }
    }

    fn score(&self, score: f64) -> Value {
        if self.resp3 {
            Value::Double(score)
        } else {
            Value::bulk(format_score(score))
        }
    }

    /// The connection to `shard`'s primary.
    async fn conn(&self, shard: ShardIndex) -> Result<(Conn, SocketAddr), Value> {
        let addr = self
            .topology
            .primary(shard)
            .ok_or_else(|| Value::error("ERR no such shard"))?;
        let conn = connection(addr, self.topology.shard_login())
            .await
            .map_err(|e| Value::error(format!("ERR {e}")))?;
        Ok((conn, addr))
    }
}

/// Runs a request [`screen`] said to run here, for a client speaking `protocol`.
pub(crate) async fn run(
    topology: &Topology,
    crdt: CrdtInstance,
    request: &Request,
    decision: &Decision,
    protocol: Protocol,
) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0);
    let ctx = Ctx {
        topology,
        instance: InstanceId(crdt.replica_id),
        protocol: crdt.protocol_version,
        resp3: protocol == Protocol::Resp3,
        now,
    };
    match request.name() {
        "KEYS" => keys(&ctx, request).await,
        "SCAN" => scan(&ctx, request).await,
        "RANDOMKEY" => randomkey(&ctx).await,
        "DBSIZE" => dbsize(&ctx).await,
        "DEL" | "UNLINK" => del(&ctx, request).await,
        "MSET" => mset(&ctx, request).await,
        _ => {
            let shard = match &decision.route {
                Route::Slot(slot) => topology.slots().shard_of(*slot),
                _ => ShardIndex(0),
            };
            let (mut conn, addr) = match ctx.conn(shard).await {
                Ok(c) => c,
                Err(e) => return e,
            };
            let reply = write(&ctx, &mut conn, request).await;
            if let Err(e) = &reply {
                if e.is_io_error() || e.is_connection_dropped() {
                    forget(addr, topology.shard_login()).await;
                }
            }
            reply.unwrap_or_else(|e| Value::error(e.to_string()))
        }
    }
}

/// What a write's closure gives: the ops to log and the client's reply.
type Done = Result<(Vec<Op>, Value), CrdbError>;

/// A failed write as the client sees it.
#[derive(Debug)]
enum Failure {
    Reply(Value),
    Engine(redis::RedisError),
}

impl Failure {
    fn is_io_error(&self) -> bool {
        matches!(self, Failure::Engine(e) if e.is_io_error())
    }

    fn is_connection_dropped(&self) -> bool {
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

fn error_of(e: CrdbError) -> Value {
    match e {
        CrdbError::Write(w) => Value::error(w.to_string()),
        CrdbError::Contended(_) => Value::error(e.to_string()),
        other => Value::error(format!("ERR Active-Active: {other}")),
    }
}

fn syntax() -> Failure {
    Failure::Reply(Value::error("ERR syntax error"))
}

fn not_integer() -> Failure {
    Failure::Reply(Value::error("ERR value is not an integer or out of range"))
}

fn not_float() -> Failure {
    Failure::Reply(Value::error("ERR value is not a valid float"))
}

fn arity(name: &str) -> Failure {
    Failure::Reply(Value::error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )))
}

fn int(arg: &[u8]) -> Result<i64, Failure> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(not_integer)
}

fn float(arg: &[u8]) -> Result<f64, Failure> {
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

fn blob(b: &Bytes) -> Blob {
    Blob(b.to_vec())
}

fn bulk(b: &Blob) -> Value {
    Value::bulk(Bytes::copy_from_slice(b.as_bytes()))
}

/// A score as the engines print it in RESP2.
fn format_score(f: f64) -> String {
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    format!("{f}")
}

fn wrong_type() -> CrdbError {
    WriteError::WrongType.into()
}

/// Applies a write to `state`, adding its op (if any) to `ops`.
fn put(
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
fn set_value(
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

fn string_of(state: &KeyState, now: Millis) -> Result<Option<Blob>, CrdbError> {
    match state.visible(now) {
        None => Ok(None),
        Some(CValue::String(b)) => Ok(Some(b)),
        Some(_) => Err(wrong_type()),
    }
}

fn check_type(state: &KeyState, now: Millis, tag: TypeTag) -> Result<bool, CrdbError> {
    match state.visible_type(now) {
        None => Ok(false),
        Some(t) if t == tag => Ok(true),
        Some(_) => Err(wrong_type()),
    }
}

fn hash_of(state: &KeyState, now: Millis) -> BTreeMap<Blob, Blob> {
    match state.visible(now) {
        Some(CValue::Hash(h)) => h,
        _ => BTreeMap::new(),
    }
}

fn set_of(state: &KeyState, now: Millis) -> BTreeSet<Blob> {
    match state.visible(now) {
        Some(CValue::Set(s)) => s,
        _ => BTreeSet::new(),
    }
}

fn zset_of(state: &KeyState, now: Millis) -> Vec<(Blob, f64)> {
    match state.visible(now) {
        Some(CValue::Zset(z)) => z,
        _ => Vec::new(),
    }
}

fn list_of(state: &KeyState, now: Millis) -> Vec<Blob> {
    match state.visible(now) {
        Some(CValue::List(l)) => l,
        _ => Vec::new(),
    }
}

/// Runs one transaction over `keys` (one shard) with `f` deciding the writes and the reply.
async fn on_keys(
    ctx: &Ctx<'_>,
    conn: &mut Conn,
    keys: Vec<Vec<u8>>,
    mut f: impl FnMut(&mut [KeyState]) -> Done,
) -> Result<Value, Failure> {
    let done = transact(conn, ctx.protocol, ctx.now, &keys, |states| f(states)).await?;
    Ok(done.value)
}

/// Runs a write on one key.
async fn on_key(
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
fn deadline(ctx: &Ctx, arg: &[u8], unit: i64, absolute: bool, name: &str) -> Result<i64, Failure> {
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

/// A random number (for `SPOP`).
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A single-shard write command.
async fn write(ctx: &Ctx<'_>, conn: &mut Conn, request: &Request) -> Result<Value, Failure> {
    let name = request.name();
    let args = &request.argv()[1..];
    let need = |n: usize| {
        if args.len() < n {
            Err(arity(name))
        } else {
            Ok(())
        }
    };
    need(1)?;
    let key = &args[0];
    let now = ctx.now;
    match name {
        "SET" => {
            need(2)?;
            let value = blob(&args[1]);
            let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
            let mut at: Option<i64> = None;
            let mut i = 2;
            while i < args.len() {
                let opt = args[i].to_ascii_uppercase();
                match &opt[..] {
                    b"NX" if !xx => nx = true,
                    b"XX" if !nx => xx = true,
                    b"GET" => get = true,
                    b"KEEPTTL" if at.is_none() => keep_ttl = true,
                    b"EX" | b"PX" | b"EXAT" | b"PXAT" if at.is_none() && !keep_ttl => {
                        let arg = args.get(i + 1).ok_or_else(syntax)?;
                        let n = int(arg)?;
                        if n <= 0 {
                            return Err(Failure::Reply(Value::error(
                                "ERR invalid expire time in 'set' command",
                            )));
                        }
                        let (unit, absolute) = match &opt[..] {
                            b"EX" => (1000, false),
                            b"PX" => (1, false),
                            b"EXAT" => (1000, true),
                            _ => (1, true),
                        };
                        at = Some(deadline(ctx, arg, unit, absolute, "set")?);
                        i += 1;
                    }
                    _ => return Err(syntax()),
                }
                i += 1;
            }
            on_key(ctx, conn, key, |s, k| {
                let old = if get { string_of(s, now)? } else { None };
                let exists = s.visible_type(now).is_some();
                let old_reply = || old.as_ref().map_or(ctx.nil(), bulk);
                if (nx && exists) || (xx && !exists) {
                    return Ok((Vec::new(), if get { old_reply() } else { ctx.nil() }));
                }
                let mut ops = Vec::new();
                set_value(&mut ops, s, k, ctx, value.clone(), keep_ttl)?;
                if let Some(at) = at {
                    put(&mut ops, s, k, ctx, Write::ExpireAt(at.max(0) as Millis))?;
                }
                Ok((
                    ops,
                    if get {
                        old_reply()
                    } else {
                        Value::simple("OK")
                    },
                ))
            })
            .await
        }
        "SETNX" => {
            need(2)?;
            on_key(ctx, conn, key, |s, k| {
                if s.visible_type(now).is_some() {
                    return Ok((Vec::new(), Value::Integer(0)));
                }
                let mut ops = Vec::new();
                set_value(&mut ops, s, k, ctx, blob(&args[1]), false)?;
                Ok((ops, Value::Integer(1)))
            })
            .await
        }
        "SETEX" | "PSETEX" => {
            need(3)?;
            let n = int(&args[1])?;
            if n <= 0 {
                return Err(Failure::Reply(Value::error(format!(
                    "ERR invalid expire time in '{}' command",
                    name.to_ascii_lowercase()
                ))));
            }
            let unit = if name == "SETEX" { 1000 } else { 1 };
            let at = deadline(ctx, &args[1], unit, false, name)?;
            on_key(ctx, conn, key, |s, k| {
                let mut ops = Vec::new();
                set_value(&mut ops, s, k, ctx, blob(&args[2]), false)?;
                put(&mut ops, s, k, ctx, Write::ExpireAt(at as Millis))?;
                Ok((ops, Value::simple("OK")))
            })
            .await
        }
        "GETSET" => {
            need(2)?;
            on_key(ctx, conn, key, |s, k| {
                let old = string_of(s, now)?;
                let mut ops = Vec::new();
                set_value(&mut ops, s, k, ctx, blob(&args[1]), false)?;
                Ok((ops, old.as_ref().map_or(ctx.nil(), bulk)))
            })
            .await
        }
        "GETDEL" => {
            on_key(ctx, conn, key, |s, k| {
                let Some(old) = string_of(s, now)? else {
                    return Ok((Vec::new(), ctx.nil()));
                };
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::Del)?;
                Ok((ops, bulk(&old)))
            })
            .await
        }
        "MSETNX" => {
            if args.len() % 2 != 0 {
                return Err(arity(name));
            }
            let (keys, values) = pairs(args);
            on_keys(ctx, conn, keys.clone(), |states| {
                if states.iter().any(|s| s.visible_type(now).is_some()) {
                    return Ok((Vec::new(), Value::Integer(0)));
                }
                let mut ops = Vec::new();
                for (key, value) in values.iter() {
                    let i = keys.iter().position(|k| k == key).expect("listed");
                    set_value(
                        &mut ops,
                        &mut states[i],
                        &Blob(key.clone()),
                        ctx,
                        value.clone(),
                        false,
                    )?;
                }
                Ok((ops, Value::Integer(1)))
            })
            .await
        }
        "APPEND" => {
            need(2)?;
            on_key(ctx, conn, key, |s, k| {
                let mut value = string_of(s, now)?.unwrap_or_default();
                value.0.extend_from_slice(&args[1]);
                let len = value.0.len() as i64;
                let mut ops = Vec::new();
                set_value(&mut ops, s, k, ctx, value, true)?;
                Ok((ops, Value::Integer(len)))
            })
            .await
        }
        "SETRANGE" => {
            need(3)?;
            let offset = int(&args[1])?;
            if offset < 0 {
                return Err(Failure::Reply(Value::error("ERR offset is out of range")));
            }
            let offset = offset as usize;
            if offset + args[2].len() > 512 << 20 {
                return Err(Failure::Reply(Value::error(
                    "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                )));
            }
            on_key(ctx, conn, key, |s, k| {
                let old = string_of(s, now)?;
                if args[2].is_empty() {
                    let len = old.map_or(0, |o| o.0.len()) as i64;
                    return Ok((Vec::new(), Value::Integer(len)));
                }
                let mut value = old.unwrap_or_default().0;
                if value.len() < offset + args[2].len() {
                    value.resize(offset + args[2].len(), 0);
                }
                value[offset..offset + args[2].len()].copy_from_slice(&args[2]);
                let len = value.len() as i64;
                let mut ops = Vec::new();
                set_value(&mut ops, s, k, ctx, Blob(value), true)?;
                Ok((ops, Value::Integer(len)))
            })
            .await
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = match name {
                "INCR" => 1,
                "DECR" => -1,
                _ => {
                    need(2)?;
                    let n = int(&args[1])?;
                    if name == "DECRBY" {
                        n.checked_neg().ok_or_else(|| {
                            Failure::Reply(Value::error("ERR decrement would overflow"))
                        })?
                    } else {
                        n
                    }
                }
            };
            on_key(ctx, conn, key, |s, k| {
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::IncrBy(by))?;
                let value = string_of(s, now)?.unwrap_or_default();
                let n = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or(WriteError::NotInteger)?;
                Ok((ops, Value::Integer(n)))
            })
            .await
        }
        "INCRBYFLOAT" => {
            need(2)?;
            let by = float(&args[1])?;
            on_key(ctx, conn, key, |s, k| {
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::IncrByFloat(by))?;
                let value = string_of(s, now)?.unwrap_or_default();
                Ok((ops, bulk(&value)))
            })
            .await
        }
        "HSET" | "HMSET" => {
            if args.len() < 3 || args.len() % 2 == 0 {
                return Err(arity(name));
            }
            let fields: Vec<(Blob, Blob)> = args[1..]
                .chunks(2)
                .map(|p| (blob(&p[0]), blob(&p[1])))
                .collect();
            on_key(ctx, conn, key, |s, k| {
                check_type(s, now, TypeTag::Hash)?;
                let hash = hash_of(s, now);
                let new: BTreeSet<&Blob> = fields
                    .iter()
                    .map(|(f, _)| f)
                    .filter(|f| !hash.contains_key(*f))
                    .collect();
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::HSet(fields.clone()))?;
                let reply = if name == "HSET" {
                    Value::Integer(new.len() as i64)
                } else {
                    Value::simple("OK")
                };
                Ok((ops, reply))
            })
            .await
        }
        "HSETNX" => {
            need(3)?;
            on_key(ctx, conn, key, |s, k| {
                check_type(s, now, TypeTag::Hash)?;
                if hash_of(s, now).contains_key(&blob(&args[1])) {
                    return Ok((Vec::new(), Value::Integer(0)));
                }
                let mut ops = Vec::new();
                put(
                    &mut ops,
                    s,
                    k,
                    ctx,
                    Write::HSet(vec![(blob(&args[1]), blob(&args[2]))]),
                )?;
                Ok((ops, Value::Integer(1)))
            })
            .await
        }
        "HDEL" => {
            need(2)?;
            let fields: Vec<Blob> = args[1..].iter().map(blob).collect();
            on_key(ctx, conn, key, |s, k| {
                check_type(s, now, TypeTag::Hash)?;
                let hash = hash_of(s, now);
                let gone: BTreeSet<&Blob> =
                    fields.iter().filter(|f| hash.contains_key(*f)).collect();
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::HDel(fields.clone()))?;
                Ok((ops, Value::Integer(gone.len() as i64)))
            })
            .await
        }
        "HINCRBY" | "HINCRBYFLOAT" => {
            need(3)?;
            let field = blob(&args[1]);
            let write = if name == "HINCRBY" {
                Write::HIncrBy(field.clone(), int(&args[2])?)
            } else {
                Write::HIncrByFloat(field.clone(), float(&args[2])?)
            };
            on_key(ctx, conn, key, |s, k| {
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, write.clone())?;
                let value = hash_of(s, now).remove(&field).unwrap_or_default();
                if name == "HINCRBYFLOAT" {
                    return Ok((ops, bulk(&value)));
                }
                let n = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or(WriteError::NotInteger)?;
                Ok((ops, Value::Integer(n)))
            })
            .await
        }
        "SADD" | "SREM" => {
            need(2)?;
            let members: Vec<Blob> = args[1..].iter().map(blob).collect();
            on_key(ctx, conn, key, |s, k| {
                check_type(s, now, TypeTag::Set)?;
                let set = set_of(s, now);
                let adding = name == "SADD";
                let count = members
                    .iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|m| set.contains(*m) != adding)
                    .count();
                let write = if adding {
                    Write::SAdd(members.clone())
                } else {
                    Write::SRem(members.clone())
                };
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, write)?;
                Ok((ops, Value::Integer(count as i64)))
            })
            .await
        }
        "SPOP" => {
            let count = match args.get(1) {
                None => None,
                Some(c) => {
                    let n = int(c)?;
                    if n < 0 {
                        return Err(Failure::Reply(Value::error(
                            "ERR value is out of range, must be positive",
                        )));
                    }
                    Some(n as usize)
                }
            };
            if args.len() > 2 {
                return Err(syntax());
            }
            on_key(ctx, conn, key, |s, k| {
                check_type(s, now, TypeTag::Set)?;
                let mut members: Vec<Blob> = set_of(s, now).into_iter().collect();
                let want = count.unwrap_or(1).min(members.len());
                let mut picked = Vec::with_capacity(want);
                let mut seed = random();
                for _ in 0..want {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let at = (seed >> 33) as usize % members.len();
                    picked.push(members.swap_remove(at));
                }
                let mut ops = Vec::new();
                if !picked.is_empty() {
                    put(&mut ops, s, k, ctx, Write::SRem(picked.clone()))?;
                }
                let reply = match count {
                    None => picked.first().map_or(ctx.nil(), bulk),
                    Some(_) => Value::Array(picked.iter().map(bulk).collect()),
                };
                Ok((ops, reply))
            })
            .await
        }
        "SMOVE" => {
            need(3)?;
            let member = blob(&args[2]);
            if args[0] == args[1] {
                return on_key(ctx, conn, key, |s, _| {
                    check_type(s, now, TypeTag::Set)?;
                    Ok((
                        Vec::new(),
                        Value::Integer(i64::from(set_of(s, now).contains(&member))),
                    ))
                })
                .await;
            }
            let (src, dst) = (blob(&args[0]), blob(&args[1]));
            on_keys(
                ctx,
                conn,
                vec![args[0].to_vec(), args[1].to_vec()],
                |states| {
                    let (a, b) = states.split_at_mut(1);
                    check_type(&a[0], now, TypeTag::Set)?;
                    check_type(&b[0], now, TypeTag::Set)?;
                    if !set_of(&a[0], now).contains(&member) {
                        return Ok((Vec::new(), Value::Integer(0)));
                    }
                    let mut ops = Vec::new();
                    put(
                        &mut ops,
                        &mut a[0],
                        &src,
                        ctx,
                        Write::SRem(vec![member.clone()]),
                    )?;
                    put(
                        &mut ops,
                        &mut b[0],
                        &dst,
                        ctx,
                        Write::SAdd(vec![member.clone()]),
                    )?;
                    Ok((ops, Value::Integer(1)))
                },
            )
            .await
        }
        "ZADD" => zadd(ctx, conn, request).await,
        "ZINCRBY" => {
            need(3)?;
            let by = float(&args[1])?;
            let member = blob(&args[2]);
            on_key(ctx, conn, key, |s, k| {
                check_type(s, now, TypeTag::Zset)?;
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::ZIncrBy(member.clone(), by))?;
                let score = zset_of(s, now)
                    .into_iter()
                    .find(|(m, _)| *m == member)
                    .map_or(0.0, |(_, sc)| sc);
                Ok((ops, ctx.score(score)))
            })
            .await
        }
        "ZREM" => {
            need(2)?;
            let members: Vec<Blob> = args[1..].iter().map(blob).collect();
            on_key(ctx, conn, key, |s, k| {
                check_type(s, now, TypeTag::Zset)?;
                let z = zset_of(s, now);
                let count = members
                    .iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|m| z.iter().any(|(x, _)| x == *m))
                    .count();
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::ZRem(members.clone()))?;
                Ok((ops, Value::Integer(count as i64)))
            })
            .await
        }
        "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" => {
            need(2)?;
            let end = if name.starts_with('L') {
                End::Left
            } else {
                End::Right
            };
            let values: Vec<Blob> = args[1..].iter().map(blob).collect();
            let only_existing = name.ends_with('X');
            on_key(ctx, conn, key, |s, k| {
                let exists = check_type(s, now, TypeTag::List)?;
                if only_existing && !exists {
                    return Ok((Vec::new(), Value::Integer(0)));
                }
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::Push(end, values.clone()))?;
                Ok((ops, Value::Integer(list_of(s, now).len() as i64)))
            })
            .await
        }
        "LINSERT" => {
            need(4)?;
            let before = match &args[1].to_ascii_uppercase()[..] {
                b"BEFORE" => true,
                b"AFTER" => false,
                _ => return Err(syntax()),
            };
            let (pivot, value) = (blob(&args[2]), blob(&args[3]));
            on_key(ctx, conn, key, |s, k| {
                if !check_type(s, now, TypeTag::List)? {
                    return Ok((Vec::new(), Value::Integer(0)));
                }
                if !list_of(s, now).contains(&pivot) {
                    return Ok((Vec::new(), Value::Integer(-1)));
                }
                let mut ops = Vec::new();
                let write = Write::LInsert {
                    before,
                    pivot: pivot.clone(),
                    value: value.clone(),
                };
                put(&mut ops, s, k, ctx, write)?;
                Ok((ops, Value::Integer(list_of(s, now).len() as i64)))
            })
            .await
        }
        "LPOP" | "RPOP" => {
            let count = match args.get(1) {
                None => None,
                Some(c) => {
                    let n = int(c)?;
                    if n < 0 {
                        return Err(Failure::Reply(Value::error(
                            "ERR value is out of range, must be positive",
                        )));
                    }
                    Some(n as usize)
                }
            };
            if args.len() > 2 {
                return Err(arity(name));
            }
            let end = if name == "LPOP" {
                End::Left
            } else {
                End::Right
            };
            on_key(ctx, conn, key, |s, k| {
                if !check_type(s, now, TypeTag::List)? {
                    let reply = if count.is_some() {
                        ctx.nil_array()
                    } else {
                        ctx.nil()
                    };
                    return Ok((Vec::new(), reply));
                }
                let list = list_of(s, now);
                let n = count.unwrap_or(1).min(list.len());
                let popped: Vec<Blob> = match end {
                    End::Left => list[..n].to_vec(),
                    End::Right => list[list.len() - n..].iter().rev().cloned().collect(),
                };
                let mut ops = Vec::new();
                if n > 0 {
                    put(&mut ops, s, k, ctx, Write::Pop(end, n))?;
                }
                let reply = match count {
                    None => popped.first().map_or(ctx.nil(), bulk),
                    Some(_) => Value::Array(popped.iter().map(bulk).collect()),
                };
                Ok((ops, reply))
            })
            .await
        }
        "LREM" => {
            need(3)?;
            let count = int(&args[1])?;
            let value = blob(&args[2]);
            on_key(ctx, conn, key, |s, k| {
                check_type(s, now, TypeTag::List)?;
                let matching = list_of(s, now).iter().filter(|v| **v == value).count();
                let removed = if count == 0 {
                    matching
                } else {
                    matching.min(count.unsigned_abs() as usize)
                };
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::LRem(count, value.clone()))?;
                Ok((ops, Value::Integer(removed as i64)))
            })
            .await
        }
        "LSET" => {
            need(3)?;
            let index = int(&args[1])?;
            on_key(ctx, conn, key, |s, k| {
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::LSet(index, blob(&args[2])))?;
                Ok((ops, Value::simple("OK")))
            })
            .await
        }
        "LTRIM" => {
            need(3)?;
            let (start, stop) = (int(&args[1])?, int(&args[2])?);
            on_key(ctx, conn, key, |s, k| {
                check_type(s, now, TypeTag::List)?;
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::LTrim(start, stop))?;
                Ok((ops, Value::simple("OK")))
            })
            .await
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
            need(2)?;
            let unit = if name.starts_with('P') { 1 } else { 1000 };
            let at = deadline(ctx, &args[1], unit, name.ends_with("AT"), name)?;
            let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
            for opt in &args[2..] {
                match &opt.to_ascii_uppercase()[..] {
                    b"NX" => nx = true,
                    b"XX" => xx = true,
                    b"GT" => gt = true,
                    b"LT" => lt = true,
                    _ => {
                        return Err(Failure::Reply(Value::error(format!(
                            "ERR Unsupported option {}",
                            String::from_utf8_lossy(opt)
                        ))))
                    }
                }
            }
            if nx && (xx || gt || lt) {
                return Err(Failure::Reply(Value::error(
                    "ERR NX and XX, GT or LT options at the same time are not compatible",
                )));
            }
            if gt && lt {
                return Err(Failure::Reply(Value::error(
                    "ERR GT and LT options at the same time are not compatible",
                )));
            }
            on_key(ctx, conn, key, |s, k| {
                if s.visible_type(now).is_none() {
                    return Ok((Vec::new(), Value::Integer(0)));
                }
                let current = s.view().expire_at.map(|t| t as i64);
                let refused = match current {
                    None => xx || gt,
                    Some(cur) => nx || (gt && at <= cur) || (lt && at >= cur),
                };
                if refused {
                    return Ok((Vec::new(), Value::Integer(0)));
                }
                let mut ops = Vec::new();
                put(&mut ops, s, k, ctx, Write::ExpireAt(at.max(0) as Millis))?;
                Ok((ops, Value::Integer(1)))
            })
            .await
        }
        "PERSIST" => {
            on_key(ctx, conn, key, |s, k| {
                let mut ops = Vec::new();
                let done = put(&mut ops, s, k, ctx, Write::Persist)?;
                Ok((ops, Value::Integer(i64::from(done))))
            })
            .await
        }
        "RENAME" | "RENAMENX" => {
            need(2)?;
            let nx = name == "RENAMENX";
            if args[0] == args[1] {
                return on_key(ctx, conn, key, |s, _| {
                    if s.visible_type(now).is_none() {
                        return Err(WriteError::NoSuchKey.into());
                    }
                    Ok((
                        Vec::new(),
                        if nx {
                            Value::Integer(0)
                        } else {
                            Value::simple("OK")
                        },
                    ))
                })
                .await;
            }
            let done = flotilla_crdb::rename(
                conn,
                ctx.instance,
                ctx.protocol,
                now,
                &args[0],
                &args[1],
                nx,
            )
            .await?;
            Ok(if nx {
                Value::Integer(i64::from(done))
            } else {
                Value::simple("OK")
            })
        }
        "COPY" => {
            need(2)?;
            let mut replace = false;
            let mut i = 2;
            while i < args.len() {
                match &args[i].to_ascii_uppercase()[..] {
                    b"REPLACE" => replace = true,
                    b"DB" => {
                        let db = args.get(i + 1).ok_or_else(syntax)?;
                        if int(db)? != 0 {
                            return Err(Failure::Reply(Value::error(
                                "ERR a flotilla database has only database 0",
                            )));
                        }
                        i += 1;
                    }
                    _ => return Err(syntax()),
                }
                i += 1;
            }
            if args[0] == args[1] {
                return Err(Failure::Reply(Value::error(
                    "ERR source and destination objects are the same",
                )));
            }
            let done = flotilla_crdb::copy(
                conn,
                ctx.instance,
                ctx.protocol,
                now,
                &args[0],
                &args[1],
                replace,
            )
            .await?;
            Ok(Value::Integer(i64::from(done)))
        }
        other => Err(Failure::Reply(Value::error(unsupported(other)))),
    }
}

/// Key and value pairs, in request order.
type KeyValues = Vec<(Vec<u8>, Blob)>;

/// Keys and values of `MSET`-style arguments, keys distinct (first appearance order) and each
/// value paired with its key in request order.
fn pairs(args: &[Bytes]) -> (Vec<Vec<u8>>, KeyValues) {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut values = Vec::new();
    for p in args.chunks(2) {
        if !keys.iter().any(|k| k[..] == p[0][..]) {
            keys.push(p[0].to_vec());
        }
        values.push((p[0].to_vec(), blob(&p[1])));
    }
    (keys, values)
}

/// `ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member ...`.
async fn zadd(ctx: &Ctx<'_>, conn: &mut Conn, request: &Request) -> Result<Value, Failure> {
    let args = &request.argv()[1..];
    if args.len() < 3 {
        return Err(arity("ZADD"));
    }
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) =
        (false, false, false, false, false, false);
    let mut i = 1;
    while i < args.len() {
        match &args[i].to_ascii_uppercase()[..] {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            b"CH" => ch = true,
            b"INCR" => incr = true,
            _ => break,
        }
        i += 1;
    }
    let rest = &args[i..];
    if rest.is_empty() || rest.len() % 2 != 0 {
        return Err(syntax());
    }
    if nx && xx {
        return Err(Failure::Reply(Value::error(
            "ERR XX and NX options at the same time are not compatible",
        )));
    }
    if (gt && lt) || (nx && (gt || lt)) {
        return Err(Failure::Reply(Value::error(
            "ERR GT, LT, and/or NX options at the same time are not compatible",
        )));
    }
    if incr && rest.len() != 2 {
        return Err(Failure::Reply(Value::error(
            "ERR INCR option supports a single increment-element pair",
        )));
    }
    let mut pairs = Vec::new();
    for p in rest.chunks(2) {
        pairs.push((float(&p[0])?, blob(&p[1])));
    }
    let now = ctx.now;
    on_key(ctx, conn, &args[0], |s, k| {
        check_type(s, now, TypeTag::Zset)?;
        let mut scores: BTreeMap<Blob, f64> = zset_of(s, now).into_iter().collect();
        let mut ops = Vec::new();
        if incr {
            let (by, member) = &pairs[0];
            let cur = scores.get(member).copied();
            let new = cur.unwrap_or(0.0) + by;
            if new.is_nan() {
                return Err(WriteError::NotFinite.into());
            }
            let skip = match cur {
                None => xx,
                Some(c) => nx || (gt && new <= c) || (lt && new >= c),
            };
            if skip {
                return Ok((ops, ctx.nil()));
            }
            put(&mut ops, s, k, ctx, Write::ZIncrBy(member.clone(), *by))?;
            return Ok((ops, ctx.score(new)));
        }
        let (mut added, mut changed) = (0, 0);
        let mut writes: Vec<(Blob, f64)> = Vec::new();
        for (score, member) in &pairs {
            let cur = scores.get(member).copied();
            match cur {
                None if xx => continue,
                None => added += 1,
                Some(_) if nx => continue,
                Some(c) if (gt && *score <= c) || (lt && *score >= c) => continue,
                Some(c) if c == *score => continue,
                Some(_) => changed += 1,
            }
            scores.insert(member.clone(), *score);
            writes.retain(|(m, _)| m != member);
            writes.push((member.clone(), *score));
        }
        if !writes.is_empty() {
            put(&mut ops, s, k, ctx, Write::ZAdd(writes))?;
        }
        let n = if ch { added + changed } else { added };
        Ok((ops, Value::Integer(n)))
    })
    .await
}

/// The shard of `key`.
fn shard_of(ctx: &Ctx, key: &[u8]) -> ShardIndex {
    ctx.topology.slots().shard_of_key(key)
}

/// The distinct keys of `keys` grouped by shard, in shard order.
fn by_shard<'k>(
    ctx: &Ctx,
    keys: impl IntoIterator<Item = &'k Bytes>,
) -> BTreeMap<ShardIndex, Vec<Vec<u8>>> {
    let mut out: BTreeMap<ShardIndex, Vec<Vec<u8>>> = BTreeMap::new();
    for key in keys {
        let list = out.entry(shard_of(ctx, key)).or_default();
        if !list.iter().any(|k| k[..] == key[..]) {
            list.push(key.to_vec());
        }
    }
    out
}

/// `DEL`/`UNLINK`: per shard, one transaction deleting that shard's keys; the count summed.
async fn del(ctx: &Ctx<'_>, request: &Request) -> Value {
    let args = &request.argv()[1..];
    if args.is_empty() {
        return Value::error(format!(
            "ERR wrong number of arguments for '{}' command",
            request.name().to_ascii_lowercase()
        ));
    }
    let mut total = 0;
    for (shard, keys) in by_shard(ctx, args) {
        let (mut conn, _) = match ctx.conn(shard).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let done = on_keys(ctx, &mut conn, keys.clone(), |states| {
            let mut ops = Vec::new();
            let mut count = 0;
            for (state, key) in states.iter_mut().zip(&keys) {
                if put(&mut ops, state, &Blob(key.clone()), ctx, Write::Del)? {
                    count += 1;
                }
            }
            Ok((ops, Value::Integer(count)))
        })
        .await;
        match done {
            Ok(Value::Integer(n)) => total += n,
            Ok(other) => return other,
            Err(e) => return Value::error(e.to_string()),
        }
    }
    Value::Integer(total)
}

/// `MSET`: every key on one shard (a cross-shard `MSET` would not be atomic on the peers).
async fn mset(ctx: &Ctx<'_>, request: &Request) -> Value {
    let args = &request.argv()[1..];
    if args.is_empty() || args.len() % 2 != 0 {
        return Value::error("ERR wrong number of arguments for 'mset' command");
    }
    let shards = by_shard(ctx, args.iter().step_by(2));
    if shards.len() > 1 {
        return Value::error(
            "ERR MSET across shards is not supported on an Active-Active database (use hash tags to keep the keys in one slot)",
        );
    }
    let shard = *shards.keys().next().expect("at least one key");
    let (mut conn, _) = match ctx.conn(shard).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let (keys, values) = pairs(args);
    let done = on_keys(ctx, &mut conn, keys.clone(), |states| {
        let mut ops = Vec::new();
        for (key, value) in &values {
            let i = keys.iter().position(|k| k == key).expect("listed");
            set_value(
                &mut ops,
                &mut states[i],
                &Blob(key.clone()),
                ctx,
                value.clone(),
                false,
            )?;
        }
        Ok((ops, Value::simple("OK")))
    })
    .await;
    done.unwrap_or_else(|e| Value::error(e.to_string()))
}

/// Every shard's connection, in shard order.
async fn all_conns(ctx: &Ctx<'_>) -> Result<Vec<Conn>, Value> {
    let mut out = Vec::new();
    for shard in 0..ctx.topology.shard_count() {
        out.push(ctx.conn(ShardIndex(shard)).await?.0);
    }
    Ok(out)
}

fn engine_error(e: redis::RedisError) -> Value {
    Value::error(format!("ERR {e}"))
}

/// `KEYS pattern` on every shard, the hidden keys left out.
async fn keys(ctx: &Ctx<'_>, request: &Request) -> Value {
    let Some(pattern) = request.arg(1) else {
        return Value::error("ERR wrong number of arguments for 'keys' command");
    };
    let conns = match all_conns(ctx).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let mut out = Vec::new();
    for mut conn in conns {
        let found: Result<Vec<Vec<u8>>, _> = redis::cmd("KEYS")
            .arg(&pattern[..])
            .query_async(&mut conn)
            .await;
        match found {
            Ok(keys) => out.extend(keys.into_iter().filter(|k| !is_hidden(k)).map(Value::bulk)),
            Err(e) => return engine_error(e),
        }
    }
    Value::Array(out)
}

/// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]`: the shard in the cursor, the hidden keys left
/// out of its page (a page may come back empty, as `SCAN` allows).
async fn scan(ctx: &Ctx<'_>, request: &Request) -> Value {
    let args = &request.argv()[1..];
    let Some(cursor) = args.first() else {
        return Value::error("ERR wrong number of arguments for 'scan' command");
    };
    let Some(cursor) = std::str::from_utf8(cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Value::error("ERR invalid cursor");
    };
    let (shard, shard_cursor) = crate::scan::decode_cursor(cursor);
    if shard.0 >= ctx.topology.shard_count() {
        return Value::error("ERR invalid cursor");
    }
    let (mut conn, _) = match ctx.conn(shard).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(shard_cursor);
    for a in &args[1..] {
        cmd.arg(&a[..]);
    }
    let page: Result<(u64, Vec<Vec<u8>>), _> = cmd.query_async(&mut conn).await;
    match page {
        Ok((next, keys)) => {
            let Some(next) = crate::scan::next_cursor(shard, next, ctx.topology.shard_count())
            else {
                return Value::error("ERR the shard's cursor is too large for the proxy");
            };
            Value::Array(vec![
                Value::bulk(next.to_string()),
                Value::Array(
                    keys.into_iter()
                        .filter(|k| !is_hidden(k))
                        .map(Value::bulk)
                        .collect(),
                ),
            ])
        }
        Err(e) => engine_error(e),
    }
}

/// `RANDOMKEY`: a random shard's random key, asked again while it is a hidden one (about half
/// the engine's keys are metadata); after a few hidden ones in a row, the shard's first visible
/// key by `SCAN`.
async fn randomkey(ctx: &Ctx<'_>) -> Value {
    let conns = match all_conns(ctx).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let start = random() as usize % conns.len().max(1);
    for offset in 0..conns.len() {
        let mut conn = conns[(start + offset) % conns.len()].clone();
        for _ in 0..16 {
            let key: Result<Option<Vec<u8>>, _> =
                redis::cmd("RANDOMKEY").query_async(&mut conn).await;
            match key {
                Ok(None) => break,
                Ok(Some(k)) if !is_hidden(&k) => return Value::bulk(k),
                Ok(Some(_)) => {}
                Err(e) => return engine_error(e),
            }
        }
        let mut cursor = 0u64;
        loop {
            let page: Result<(u64, Vec<Vec<u8>>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await;
            match page {
                Ok((next, keys)) => {
                    if let Some(k) = keys.into_iter().find(|k| !is_hidden(k)) {
                        return Value::bulk(k);
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                Err(e) => return engine_error(e),
            }
        }
    }
    ctx.nil()
}

/// `DBSIZE`: every shard's count without the hidden keys.
async fn dbsize(ctx: &Ctx<'_>) -> Value {
    let conns = match all_conns(ctx).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let mut total = 0;
    for mut conn in conns {
        match flotilla_crdb::dbsize(&mut conn).await {
            Ok(n) => total += n as i64,
            Err(e) => return Value::error(format!("ERR {e}")),
        }
    }
    Value::Integer(total)
}
