//! `KEYS`, `SCAN`, `RANDOMKEY`, `DBSIZE` and `INFO` on every shard with the layer's hidden keys
//! left out.

use flotilla_crdb::{is_hidden, Conn};
use flotilla_resp::{Protocol, Request, Value};

use super::support::random;
use super::{connection, Ctx};
use crate::slot::ShardIndex;
use crate::topology::Topology;

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
pub(super) async fn keys(ctx: &Ctx<'_>, request: &Request) -> Value {
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
pub(super) async fn scan(ctx: &Ctx<'_>, request: &Request) -> Value {
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
pub(super) async fn randomkey(ctx: &Ctx<'_>) -> Value {
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

/// `INFO`: every shard's reply with its `db0` line counting only the client's keys (the
/// metadata keys never expire, so `expires` stays), combined as for any database.
pub(crate) async fn info(
    topology: &Topology,
    request: &Request,
    info: &crate::info::InfoContext,
    protocol: Protocol,
) -> Value {
    let mut replies = Vec::new();
    for shard in 0..topology.shard_count() {
        let Some(addr) = topology.primary(ShardIndex(shard)) else {
            return Value::error("ERR no such shard");
        };
        let mut conn = match connection(addr, topology.shard_login()).await {
            Ok(c) => c,
            Err(e) => return Value::error(format!("ERR {e}")),
        };
        let mut cmd = redis::cmd("INFO");
        for a in request.args() {
            cmd.arg(&a[..]);
        }
        let text: Result<String, _> = cmd.query_async(&mut conn).await;
        let text = match text {
            Ok(t) => t,
            Err(e) => return engine_error(e),
        };
        let text = if text.contains("\r\ndb0:") || text.starts_with("db0:") {
            let engine_keys = match flotilla_crdb::dbsize(&mut conn).await {
                Ok(n) => n,
                Err(e) => return Value::error(format!("ERR {e}")),
            };
            visible_keyspace(&text, engine_keys)
        } else {
            text
        };
        replies.push(if protocol == Protocol::Resp3 {
            Value::VerbatimString {
                format: *b"txt",
                text: text.into(),
            }
        } else {
            Value::bulk(text)
        });
    }
    crate::info::merge_info(replies, info)
}

/// `text` (a shard's INFO) with its `db0` line's `keys=` set to `keys` (the line dropped when
/// no key is left, as the engine leaves out an empty database).
fn visible_keyspace(text: &str, keys: u64) -> String {
    text.split("\r\n")
        .filter_map(|line| {
            let Some(fields) = line.strip_prefix("db0:") else {
                return Some(line.to_string());
            };
            if keys == 0 {
                return None;
            }
            let fields: Vec<String> = fields
                .split(',')
                .map(|f| {
                    if f.starts_with("keys=") {
                        format!("keys={keys}")
                    } else {
                        f.to_string()
                    }
                })
                .collect();
            Some(format!("db0:{}", fields.join(",")))
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// `DBSIZE`: every shard's count without the hidden keys.
pub(super) async fn dbsize(ctx: &Ctx<'_>) -> Value {
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
