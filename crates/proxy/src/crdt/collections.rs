//! Hash, set, sorted-set and list writes through the layer, with the engine's replies.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_crdb::Conn;
use flotilla_crdt::{Blob, End, TypeTag, Write, WriteError};
use flotilla_resp::{Request, Value};

use super::support::*;
use super::{unsupported, Ctx};

/// The commands [`write`] runs.
pub(super) const COMMANDS: &[&str] = &[
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
];

/// `HSET`... `SADD`... `ZINCRBY`, `ZREM`, `LPUSH`... one key (or `SMOVE`'s two in one slot).
pub(super) async fn write(
    ctx: &Ctx<'_>,
    conn: &mut Conn,
    request: &Request,
) -> Result<Value, Failure> {
    let (name, args, key) = keyed(request)?;
    let need = |n: usize| need(name, args, n);
    let now = ctx.now;
    match name {
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
            let count = args.get(1).map(|c| count_arg(c)).transpose()?;
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
            let count = args.get(1).map(|c| count_arg(c)).transpose()?;
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
        other => Err(Failure::Reply(Value::error(unsupported(other)))),
    }
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
