//! Reading what a shard holds for its peers: the op log (the syncer's server side ships it), the
//! key states (a full state transfer's pages) and the positions of the peers it pulls.

use flotilla_crdt::{Dot, InstanceId};
use redis::Value;

use crate::keys::{
    user_key, DEFAULT_REPL_BACKLOG, META_PATTERN, OPLOG_KEY, OPSEQ_KEY, POSITIONS_KEY, SETTINGS_KEY,
};
use crate::position::{entry_check, parse_dot, Position};
use crate::{Conn, CrdbError};

/// One op of the log, as the syncer ships it (the JSON is not decoded here: the receiver decodes
/// it with its own protocol version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Its sequence number in the shard's log.
    pub n: u64,
    /// The op's dot.
    pub dot: Dot,
    /// The CRDB protocol version the op was written in (the server holds ops newer than its
    /// puller's version without decoding them).
    pub protocol: u16,
    /// [`Op::to_json`](flotilla_crdt::Op::to_json).
    pub json: String,
}

impl LogEntry {
    /// The position of a puller that applied this entry (its `n`, dot and check).
    pub fn position(&self) -> Position {
        Position {
            n: self.n,
            dot: Some(self.dot),
            check: Some(entry_check(&self.json)),
        }
    }
}

/// A page of the op log after a position, and the log's bounds at the time of the read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPage {
    /// Entries `after + 1`, ... in order (at most the count asked for). Entries missing at the
    /// start (trimmed) are simply absent: compare with `first`.
    pub entries: Vec<LogEntry>,
    /// The oldest retained entry's `n` (`None`: the log is empty).
    pub first: Option<u64>,
    /// The last `n` ever appended (0: none yet), retained or not.
    pub last: u64,
}

/// Reads up to `count` entries after entry `after`, with the log's bounds, in one atomic read.
pub async fn read_log(conn: &mut Conn, after: u64, count: usize) -> Result<LogPage, CrdbError> {
    let start = format!("{}-0", after + 1);
    let (entries, oldest, last): (Value, Value, Option<u64>) = redis::pipe()
        .atomic()
        .cmd("XRANGE")
        .arg(OPLOG_KEY)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count.max(1))
        .cmd("XRANGE")
        .arg(OPLOG_KEY)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .cmd("GET")
        .arg(OPSEQ_KEY)
        .query_async(conn)
        .await?;
    let mut entries = parse_entries(entries)?;
    if count == 0 {
        entries.clear();
    }
    let first = parse_entries(oldest)?.first().map(|e| e.n);
    Ok(LogPage {
        entries,
        first,
        last: last.unwrap_or(0),
    })
}

/// Where the log ends now: the last `n` appended, its dot and check (`Position::START` for an empty
/// log), read atomically. A state transfer takes it before scanning the states, and the puller
/// resumes from it afterwards.
pub async fn log_end(conn: &mut Conn) -> Result<Position, CrdbError> {
    let (last, newest): (Option<u64>, Value) = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg(OPSEQ_KEY)
        .cmd("XREVRANGE")
        .arg(OPLOG_KEY)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let n = last.unwrap_or(0);
    let newest = parse_entries(newest)?.into_iter().find(|e| e.n == n);
    Ok(newest.map_or(
        Position {
            n,
            ..Position::START
        },
        |e| e.position(),
    ))
}

/// The dot of entry `n`, if the log still holds it (the syncer's server compares it with the
/// puller's position to detect a log that lost entries in a failover).
pub async fn entry_dot(conn: &mut Conn, n: u64) -> Result<Option<Dot>, CrdbError> {
    let id = format!("{n}-0");
    let entries: Value = redis::cmd("XRANGE")
        .arg(OPLOG_KEY)
        .arg(&id)
        .arg(&id)
        .query_async(conn)
        .await?;
    Ok(parse_entries(entries)?.first().map(|e| e.dot))
}

/// One `SCAN` step over the metadata keys: the next cursor (0: done) and, per key found, the
/// client's key name and its state's JSON ([`KeyState::from_meta`](flotilla_crdt::KeyState)).
/// As with `SCAN`, a key present for the whole scan is returned at least once.
pub async fn scan_states(
    conn: &mut Conn,
    cursor: u64,
    count: usize,
) -> Result<(u64, Vec<(Vec<u8>, String)>), CrdbError> {
    let (next, metas): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(META_PATTERN)
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(conn)
        .await?;
    if metas.is_empty() {
        return Ok((next, Vec::new()));
    }
    let mut pipe = redis::pipe();
    for meta in &metas {
        pipe.cmd("HGET").arg(meta).arg("s");
    }
    let states: Vec<Option<String>> = pipe.query_async(conn).await?;
    let found = metas
        .iter()
        .zip(states)
        .filter_map(|(meta, state)| Some((user_key(meta)?.to_vec(), state?)))
        .collect();
    Ok((next, found))
}

/// The position of peer `peer`'s log this shard has applied up to (`None`: never pulled).
pub async fn position(conn: &mut Conn, peer: InstanceId) -> Result<Option<Position>, CrdbError> {
    let text: Option<String> = redis::cmd("HGET")
        .arg(POSITIONS_KEY)
        .arg(peer.0)
        .query_async(conn)
        .await?;
    text.map(|t| t.parse()).transpose()
}

/// Sets how many op-log entries this shard keeps (Redis Software's `crdt_repl_backlog`, in
/// entries): kept in the engine, so it follows the shard's data to replicas and through
/// failover, and applies from the next write on.
pub async fn set_repl_backlog(conn: &mut Conn, entries: usize) -> Result<(), CrdbError> {
    let _: () = redis::cmd("HSET")
        .arg(SETTINGS_KEY)
        .arg("backlog")
        .arg(entries.max(1))
        .query_async(conn)
        .await?;
    Ok(())
}

/// How many op-log entries this shard keeps (its setting, else [`DEFAULT_REPL_BACKLOG`]).
pub async fn repl_backlog(conn: &mut Conn) -> Result<usize, CrdbError> {
    let set: Option<usize> = redis::cmd("HGET")
        .arg(SETTINGS_KEY)
        .arg("backlog")
        .query_async(conn)
        .await?;
    Ok(set.unwrap_or(DEFAULT_REPL_BACKLOG))
}

/// `DBSIZE` as clients must see it: the engine's count without the layer's hidden keys (one
/// metadata key per key ever written, the op log, its sequence, the positions, the settings).
pub async fn dbsize(conn: &mut Conn) -> Result<u64, CrdbError> {
    let (all, metas, special): (u64, Option<u64>, u64) = redis::pipe()
        .atomic()
        .cmd("DBSIZE")
        .cmd("HGET")
        .arg(SETTINGS_KEY)
        .arg("metas")
        .cmd("EXISTS")
        .arg(OPLOG_KEY)
        .arg(OPSEQ_KEY)
        .arg(POSITIONS_KEY)
        .arg(SETTINGS_KEY)
        .query_async(conn)
        .await?;
    Ok(all.saturating_sub(metas.unwrap_or(0) + special))
}

/// Decodes an `XRANGE` reply of the op log.
fn parse_entries(reply: Value) -> Result<Vec<LogEntry>, CrdbError> {
    let corrupt = |what: &str| CrdbError::Corrupt(format!("op log entry: {what}"));
    let Value::Array(items) = reply else {
        return Err(corrupt("not an array"));
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(parts) = item else {
                return Err(corrupt("not an [id, fields] pair"));
            };
            let [id, fields]: [Value; 2] = parts
                .try_into()
                .map_err(|_| corrupt("not an [id, fields] pair"))?;
            let id: String = redis::from_redis_value(id).map_err(|_| corrupt("id"))?;
            let n = id
                .strip_suffix("-0")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| corrupt(&format!("id {id}")))?;
            let fields: Vec<(String, String)> =
                redis::from_redis_value(fields).map_err(|_| corrupt("fields"))?;
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(f, _)| f == name)
                    .map(|(_, v)| v.as_str())
                    .ok_or_else(|| corrupt(&format!("{id} has no {name}")))
            };
            Ok(LogEntry {
                n,
                dot: parse_dot(field("d")?).ok_or_else(|| corrupt(&format!("{id} dot")))?,
                protocol: field("p")?
                    .parse()
                    .map_err(|_| corrupt(&format!("{id} protocol")))?,
                json: field("o")?.to_string(),
            })
        })
        .collect()
}
