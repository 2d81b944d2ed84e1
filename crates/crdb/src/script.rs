//! The one Lua script every change goes through, and how its arguments are laid out.
//!
//! `KEYS`: the op log, the op sequence, the positions hash, the settings hash, then per changed key
//! its metadata key and the key itself. `ARGV`: the default backlog (`MAXLEN ~`; the settings'
//! `backlog` field overrides it), the peer's positions field and its new
//! value (empty: none), the number of keys, each key's expected metadata version (empty: no
//! metadata yet), then per key its new state JSON and two command lists (each a count, then per
//! command its argument count and arguments): one for when the engine holds the key, one for when
//! it does not (it expired there, or never existed; a count of -1 means "the same list"), then
//! the ops to append (count, then dot, protocol, JSON each).
//!
//! The script first checks every version (a mismatch returns `{0, k}`, nothing written), then per
//! key runs its engine commands and writes its metadata with the version bumped, then appends the
//! ops (returning `{1, n...}`, their sequence numbers) and sets the position. Engine commands run
//! before the metadata so that an engine error (a key changed behind the layer's back) leaves the
//! metadata of that key unchanged.

use std::sync::Mutex;

use flotilla_crdt::engine::Command;

use crate::Conn;

/// The script's text.
pub const SOURCE: &str = include_str!("script.lua");

/// The most arguments one engine command of a list gets: longer ones (a rewrite of a big
/// collection) are split, so Lua's `unpack` never meets its stack limit.
pub const MAX_COMMAND_ARGS: usize = 1000;

/// The script's SHA1 as the engines report it (the same everywhere): loaded once, then every call
/// is an `EVALSHA`; an engine that does not know it (restarted, or never asked) gets it again.
static SHA: Mutex<Option<String>> = Mutex::new(None);

/// The arguments of one run of the script, built by [`crate::transact`] and friends.
#[derive(Default)]
pub(crate) struct Call {
    pub(crate) keys: Vec<Vec<u8>>,
    pub(crate) versions: Vec<Vec<u8>>,
    pub(crate) body: Vec<Vec<u8>>,
    pub(crate) ops: Vec<[Vec<u8>; 3]>,
    pub(crate) position: Option<(Vec<u8>, Vec<u8>)>,
}

/// What a run answered.
pub(crate) enum Outcome {
    /// Every change is committed; the sequence numbers of the appended ops.
    Done(Vec<u64>),
    /// A key's metadata changed since it was read: nothing was written.
    Stale,
}

impl Call {
    /// Adds one key: its expected metadata version, new state, and the engine commands for when
    /// the engine holds the key and for when it does not.
    pub(crate) fn key(
        &mut self,
        meta: Vec<u8>,
        key: Vec<u8>,
        version: Option<Vec<u8>>,
        state: String,
        if_held: &[Command],
        if_absent: &[Command],
    ) {
        self.keys.push(meta);
        self.keys.push(key);
        self.versions.push(version.unwrap_or_default());
        self.body.push(state.into_bytes());
        push_commands(&mut self.body, if_held);
        if if_held == if_absent {
            self.body.push(b"-1".to_vec());
        } else {
            push_commands(&mut self.body, if_absent);
        }
    }

    /// Runs the script on `conn`.
    pub(crate) async fn run(self, conn: &mut Conn, backlog: usize) -> redis::RedisResult<Outcome> {
        let nkeys = self.versions.len();
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(5 + nkeys + self.body.len());
        args.push(backlog.to_string().into_bytes());
        let (field, value) = self.position.unwrap_or_default();
        args.push(field);
        args.push(value);
        args.push(nkeys.to_string().into_bytes());
        args.extend(self.versions);
        args.extend(self.body);
        args.push(self.ops.len().to_string().into_bytes());
        args.extend(self.ops.into_iter().flatten());
        let mut keys = vec![
            crate::OPLOG_KEY.to_vec(),
            crate::OPSEQ_KEY.to_vec(),
            crate::POSITIONS_KEY.to_vec(),
            crate::SETTINGS_KEY.to_vec(),
        ];
        keys.extend(self.keys);
        let reply: Vec<u64> = eval(conn, &keys, &args).await?;
        match reply.split_first() {
            Some((1, ns)) => Ok(Outcome::Done(ns.to_vec())),
            Some((0, [_])) => Ok(Outcome::Stale),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply of the Active-Active script",
            ))),
        }
    }
}

fn push_commands(body: &mut Vec<Vec<u8>>, commands: &[Command]) {
    let split: Vec<Vec<&[u8]>> = commands.iter().flat_map(split_command).collect();
    body.push(split.len().to_string().into_bytes());
    for command in split {
        body.push(command.len().to_string().into_bytes());
        body.extend(command.into_iter().map(<[u8]>::to_vec));
    }
}

/// Splits a long variadic engine command (`HSET`, `SADD`, `ZADD`, `RPUSH`, `LPUSH`, `HDEL`,
/// `SREM`, `ZREM`: the only long ones `engine_commands` produces) into several with the same
/// effect, each at most [`MAX_COMMAND_ARGS`] arguments long.
fn split_command(command: &Command) -> Vec<Vec<&[u8]>> {
    let all: Vec<&[u8]> = command.iter().map(|b| b.as_bytes()).collect();
    if all.len() <= MAX_COMMAND_ARGS {
        return vec![all];
    }
    let (head, rest) = all.split_at(2);
    let pairs = matches!(&head[0].to_ascii_uppercase()[..], b"HSET" | b"ZADD");
    let chunk = if pairs {
        (MAX_COMMAND_ARGS - 2) & !1
    } else {
        MAX_COMMAND_ARGS - 2
    };
    rest.chunks(chunk)
        .map(|part| head.iter().chain(part).copied().collect())
        .collect()
}

/// `EVALSHA`, loading the script first when the engine does not have it.
async fn eval<T: redis::FromRedisValue>(
    conn: &mut Conn,
    keys: &[Vec<u8>],
    args: &[Vec<u8>],
) -> redis::RedisResult<T> {
    let known = SHA.lock().expect("sha lock").clone();
    let sha = match known {
        Some(sha) => sha,
        None => load(conn).await?,
    };
    match evalsha(conn, &sha, keys, args).await {
        Err(e) if e.code() == Some("NOSCRIPT") => {
            let sha = load(conn).await?;
            evalsha(conn, &sha, keys, args).await
        }
        other => other,
    }
}

async fn load(conn: &mut Conn) -> redis::RedisResult<String> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SOURCE)
        .query_async(conn)
        .await?;
    *SHA.lock().expect("sha lock") = Some(sha.clone());
    Ok(sha)
}

async fn evalsha<T: redis::FromRedisValue>(
    conn: &mut Conn,
    sha: &str,
    keys: &[Vec<u8>],
    args: &[Vec<u8>],
) -> redis::RedisResult<T> {
    redis::cmd("EVALSHA")
        .arg(sha)
        .arg(keys.len())
        .arg(keys)
        .arg(args)
        .query_async(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_crdt::Blob;

    #[test]
    fn long_commands_split_into_equivalent_ones() {
        let mut hset = vec![Blob::from("HSET"), Blob::from("h")];
        for i in 0..1500 {
            hset.push(Blob::from(format!("f{i}")));
            hset.push(Blob::from(format!("v{i}")));
        }
        let parts = split_command(&hset);
        assert_eq!(parts.len(), 4);
        let mut fields = Vec::new();
        for part in &parts {
            assert!(part.len() <= MAX_COMMAND_ARGS);
            assert_eq!(part[0], b"HSET");
            assert_eq!(part[1], b"h");
            assert_eq!(part.len() % 2, 0, "whole field/value pairs");
            fields.extend(part[2..].iter().copied());
        }
        let all: Vec<&[u8]> = hset[2..].iter().map(|b| b.as_bytes()).collect();
        assert_eq!(fields, all);
        let short = vec![Blob::from("SET"), Blob::from("k"), Blob::from("v")];
        assert_eq!(split_command(&short).len(), 1);
    }
}
