//! String writes (`SET` and its forms, `MSET`, `APPEND`, `SETRANGE`, counters) through the
//! layer, with the engine's replies.

use bytes::Bytes;
use flotilla_crdb::Conn;
use flotilla_crdt::{Blob, Millis, Write, WriteError};
use flotilla_resp::{Request, Value};

use super::keyspace::by_shard;
use super::support::*;
use super::{unsupported, Ctx};

/// The single-shard commands [`write`] runs.
pub(super) const COMMANDS: &[&str] = &[
    "SET",
    "SETNX",
    "SETEX",
    "PSETEX",
    "GETSET",
    "GETDEL",
    "MSETNX",
    "APPEND",
    "SETRANGE",
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "INCRBYFLOAT",
];

/// `SET`, `SETNX`, `SETEX`, `PSETEX`, `GETSET`, `GETDEL`, `MSETNX`, `APPEND`, `SETRANGE`, `INCR`...
pub(super) async fn write(
    ctx: &Ctx<'_>,
    conn: &mut Conn,
    request: &Request,
) -> Result<Value, Failure> {
    let (name, args, key) = keyed(request)?;
    let need = |n: usize| need(name, args, n);
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
                Ok((set_pairs(ctx, states, &keys, &values)?, Value::Integer(1)))
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

/// `SET`s each key of `values` (in order) in `states` (the states of `keys`); the ops.
fn set_pairs(
    ctx: &Ctx,
    states: &mut [flotilla_crdb::KeyState],
    keys: &[Vec<u8>],
    values: &KeyValues,
) -> Result<Vec<flotilla_crdt::Op>, flotilla_crdb::CrdbError> {
    let mut ops = Vec::new();
    for (key, value) in values {
        let i = keys.iter().position(|k| k == key).expect("listed");
        let state = &mut states[i];
        set_value(
            &mut ops,
            state,
            &Blob(key.clone()),
            ctx,
            value.clone(),
            false,
        )?;
    }
    Ok(ops)
}

/// `MSET`: every key on one shard (a cross-shard `MSET` would not be atomic on the peers).
pub(super) async fn mset(ctx: &Ctx<'_>, request: &Request) -> Value {
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
        Ok((set_pairs(ctx, states, &keys, &values)?, Value::simple("OK")))
    })
    .await;
    done.unwrap_or_else(|e| Value::error(e.to_string()))
}
