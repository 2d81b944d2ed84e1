//! Key-level writes through the layer (`DEL`/`UNLINK` across shards, expiry, `RENAME`, `COPY`),
//! with the engine's replies.

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_crdb::Conn;
use flotilla_crdt::{Blob, Millis, Write, WriteError};
use flotilla_resp::{Request, Value};

use super::support::*;
use super::{unsupported, Ctx};
use crate::slot::ShardIndex;

/// The single-shard commands [`write`] runs.
pub(super) const COMMANDS: &[&str] = &[
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
    "RENAME",
    "RENAMENX",
    "COPY",
];

/// `EXPIRE`..., `PERSIST`, `RENAME`, `RENAMENX`, `COPY` (one slot).
pub(super) async fn write(
    ctx: &Ctx<'_>,
    conn: &mut Conn,
    request: &Request,
) -> Result<Value, Failure> {
    let (name, args, key) = keyed(request)?;
    let need = |n: usize| need(name, args, n);
    let now = ctx.now;
    match name {
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

/// The shard of `key`.
pub(super) fn shard_of(ctx: &Ctx, key: &[u8]) -> ShardIndex {
    ctx.topology.slots().shard_of_key(key)
}

/// The distinct keys of `keys` grouped by shard, in shard order.
pub(super) fn by_shard<'k>(
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
pub(super) async fn del(ctx: &Ctx<'_>, request: &Request) -> Value {
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
