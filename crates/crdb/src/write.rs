//! Changing keys: a client's writes on this instance ([`transact`], [`write_local`],
//! [`write_many`], [`rename`], [`copy`]), a peer's op ([`apply_remote`]) and a peer's whole state
//! of a key ([`merge_remote`]), all committed by the one script (compare-and-set on each key's
//! metadata version, retried when another writer got there first).

use flotilla_crdt::engine::{engine_commands, View};
use flotilla_crdt::write::{copy_key, rename_key};
use flotilla_crdt::{Applied, Blob, InstanceId, KeyState, Millis, Op, Write};

use crate::keys::{meta_key, DEFAULT_REPL_BACKLOG};
use crate::position::{dot_text, Position};
use crate::script::{Call, Outcome};
use crate::{Conn, CrdbError};

/// How many times a change is attempted before [`CrdbError::Contended`]: each retry means
/// another writer changed one of the keys between the read and the script.
pub const MAX_ATTEMPTS: u32 = 64;

/// After the `attempt`-th attempt found a key changed: a random pause growing with the attempts
/// (up to about 8 ms), so writers racing on one hot key spread out instead of colliding again.
async fn back_off(attempt: u32) {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    let ceiling = 250u64 << attempt.min(5);
    let pause = hasher.finish() % ceiling;
    tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
}

/// What one client write did to its key: the op to ship (none when the write changed nothing,
/// e.g. `SREM` of a missing member) and the key as the client saw it before and sees it after,
/// from which the caller builds the engine's reply.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteOutcome {
    /// The op appended to the op log.
    pub op: Option<Op>,
    /// The key before the write (empty when absent or expired).
    pub before: View,
    /// The key after the write.
    pub after: View,
}

/// What a [`transact`] committed.
#[derive(Clone, Debug, PartialEq)]
pub struct Transaction<T> {
    /// Every op appended to the op log, in log order.
    pub ops: Vec<Op>,
    /// Their op-log sequence numbers (`n` of each entry).
    pub seqs: Vec<u64>,
    /// Per key (in the order given), the key before and after, as clients see them.
    pub views: Vec<(View, View)>,
    /// What the caller's function returned.
    pub value: T,
}

/// The key as clients see it at `now`: nothing once expired.
fn client_view(state: &KeyState, now: Millis) -> View {
    if state.is_expired(now) {
        View::default()
    } else {
        state.view()
    }
}

/// Loads the CRDT state of `key` (empty when it has none).
pub async fn load_state(conn: &mut Conn, key: &[u8]) -> Result<KeyState, CrdbError> {
    let mut states = load(conn, &[key.to_vec()]).await?;
    Ok(states.remove(0).1)
}

/// Each key's metadata version and state, in one round trip.
async fn load(
    conn: &mut Conn,
    keys: &[Vec<u8>],
) -> Result<Vec<(Option<Vec<u8>>, KeyState)>, CrdbError> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("HMGET").arg(meta_key(key)).arg("v").arg("s");
    }
    let rows: Vec<(Option<Vec<u8>>, Option<String>)> = pipe.query_async(conn).await?;
    rows.into_iter()
        .zip(keys)
        .map(|((version, state), key)| match (version, state) {
            (None, _) => Ok((None, KeyState::new())),
            (Some(v), Some(s)) => Ok((Some(v), KeyState::from_meta(&s)?)),
            (Some(_), None) => Err(CrdbError::Corrupt(format!(
                "metadata of {:?} has a version and no state",
                String::from_utf8_lossy(key)
            ))),
        })
        .collect()
}

/// Commits a change of `keys` (distinct): loads their states, lets `change` modify them and say
/// which ops to log, and runs the script; retries from the load when a key changed meanwhile.
/// `position` is a peer's position to record in the same script. Returns the states before and
/// after, the ops, their sequence numbers and `change`'s value.
#[allow(clippy::type_complexity)]
async fn commit<T>(
    conn: &mut Conn,
    keys: &[Vec<u8>],
    position: Option<(InstanceId, Position)>,
    mut change: impl FnMut(&mut [KeyState]) -> Result<(Vec<Op>, T), CrdbError>,
) -> Result<(Vec<KeyState>, Vec<KeyState>, Vec<Op>, Vec<u64>, T), CrdbError> {
    for (i, key) in keys.iter().enumerate() {
        if keys[..i].contains(key) {
            return Err(CrdbError::Invalid(format!(
                "key {:?} named twice in one Active-Active change",
                String::from_utf8_lossy(key)
            )));
        }
    }
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            back_off(attempt).await;
        }
        let loaded = load(conn, keys).await?;
        let (versions, before): (Vec<_>, Vec<_>) = loaded.into_iter().unzip();
        let mut after = before.clone();
        let (ops, value) = change(&mut after)?;
        let mut call = Call::default();
        for (i, key) in keys.iter().enumerate() {
            if before[i] == after[i] {
                continue;
            }
            let blob = Blob(key.clone());
            let target = after[i].view();
            call.key(
                meta_key(key),
                key.clone(),
                versions[i].clone(),
                after[i].to_meta(),
                &engine_commands(&blob, &before[i].view(), &target),
                &engine_commands(&blob, &View::default(), &target),
            );
        }
        for op in &ops {
            call.ops.push([
                dot_text(op.id).into_bytes(),
                op.v.to_string().into_bytes(),
                op.to_json().into_bytes(),
            ]);
        }
        call.position =
            position.map(|(peer, p)| (peer.0.to_string().into_bytes(), p.to_string().into_bytes()));
        if call.keys.is_empty() && call.ops.is_empty() && call.position.is_none() {
            return Ok((before, after, ops, Vec::new(), value));
        }
        match call.run(conn, DEFAULT_REPL_BACKLOG).await? {
            Outcome::Done(seqs) => return Ok((before, after, ops, seqs, value)),
            Outcome::Stale => continue,
        }
    }
    Err(CrdbError::Contended(MAX_ATTEMPTS))
}

/// A client's write to several keys of one shard, atomically: `change` gets their states (in the
/// order of `keys`, which must be distinct and share a shard) and makes the writes with
/// `flotilla_crdt`'s [`KeyState::write`], `copy_key` or `rename_key` as instance `instance` at
/// wall clock `now`, returning the ops they gave and a value for the caller. `change` may run
/// more than once (a retry after a concurrent change), each time on freshly loaded states, so it
/// must decide only from them. The ops are labelled with `protocol` (the instance's CRDB
/// protocol version) and appended to the op log.
pub async fn transact<T>(
    conn: &mut Conn,
    protocol: u16,
    now: Millis,
    keys: &[Vec<u8>],
    mut change: impl FnMut(&mut [KeyState]) -> Result<(Vec<Op>, T), CrdbError>,
) -> Result<Transaction<T>, CrdbError> {
    let (before, after, ops, seqs, value) = commit(conn, keys, None, |states| {
        let (ops, value) = change(states)?;
        let ops = ops
            .into_iter()
            .map(|op| op.for_protocol(protocol))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((ops, value))
    })
    .await?;
    let views = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (client_view(b, now), client_view(a, now)))
        .collect();
    Ok(Transaction {
        ops,
        seqs,
        views,
        value,
    })
}

/// One client write to one key on instance `instance` (wall clock `now`, CRDB protocol
/// `protocol`): the op is applied, the engine's value updated and the op logged, atomically.
pub async fn write_local(
    conn: &mut Conn,
    instance: InstanceId,
    protocol: u16,
    now: Millis,
    key: &[u8],
    write: Write,
) -> Result<WriteOutcome, CrdbError> {
    let mut outcomes =
        write_many(conn, instance, protocol, now, vec![(key.to_vec(), write)]).await?;
    Ok(outcomes.remove(0))
}

/// Several writes of one command (`MSET`, `DEL k1 k2`, `HSET`+`EXPIRE` of `SETEX`...), applied in
/// order and committed atomically; a key may repeat (`MSET a 1 a 2`). All keys must be on the
/// shard `conn` reaches. One outcome per write, in order. A refused write refuses them all.
pub async fn write_many(
    conn: &mut Conn,
    instance: InstanceId,
    protocol: u16,
    now: Millis,
    writes: Vec<(Vec<u8>, Write)>,
) -> Result<Vec<WriteOutcome>, CrdbError> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let slots: Vec<usize> = writes
        .iter()
        .map(|(key, _)| match keys.iter().position(|k| k == key) {
            Some(i) => i,
            None => {
                keys.push(key.clone());
                keys.len() - 1
            }
        })
        .collect();
    let done = transact(conn, protocol, now, &keys, |states| {
        let mut ops = Vec::new();
        let mut outcomes = Vec::new();
        for ((key, write), &i) in writes.iter().zip(&slots) {
            let before = client_view(&states[i], now);
            let op = states[i].write(&Blob(key.clone()), instance, now, write.clone())?;
            ops.extend(op.clone());
            outcomes.push((op, before, client_view(&states[i], now)));
        }
        Ok((ops, outcomes))
    })
    .await?;
    // The ops as logged (protocol label) replace the ones the closure saw.
    let mut logged = done.ops.into_iter();
    Ok(done
        .value
        .into_iter()
        .map(|(op, before, after)| WriteOutcome {
            op: op.and_then(|_| logged.next()),
            before,
            after,
        })
        .collect())
}

/// `RENAME src dst` (`nx`: `RENAMENX`) on instance `instance`: the keys must differ and share a
/// shard. Refused with `ERR no such key` when `src` does not exist; `Ok(false)` when `nx` and
/// `dst` exists (nothing done).
pub async fn rename(
    conn: &mut Conn,
    instance: InstanceId,
    protocol: u16,
    now: Millis,
    src: &[u8],
    dst: &[u8],
    nx: bool,
) -> Result<bool, CrdbError> {
    let keys = [src.to_vec(), dst.to_vec()];
    let done = transact(conn, protocol, now, &keys, |states| {
        let (s, d) = states.split_at_mut(1);
        if s[0].visible(now).is_none() {
            return Err(flotilla_crdt::WriteError::NoSuchKey.into());
        }
        if nx && d[0].visible(now).is_some() {
            return Ok((Vec::new(), false));
        }
        let ops = rename_key(
            &mut s[0],
            &Blob(src.to_vec()),
            &mut d[0],
            &Blob(dst.to_vec()),
            instance,
            now,
        )?;
        Ok((ops, true))
    })
    .await?;
    Ok(done.value)
}

/// `COPY src dst [REPLACE]` on instance `instance`: the keys must differ and share a shard.
/// Whether it copied (`COPY`'s 1 or 0: no source, or a destination without `REPLACE`).
pub async fn copy(
    conn: &mut Conn,
    instance: InstanceId,
    protocol: u16,
    now: Millis,
    src: &[u8],
    dst: &[u8],
    replace: bool,
) -> Result<bool, CrdbError> {
    let keys = [src.to_vec(), dst.to_vec()];
    let done = transact(conn, protocol, now, &keys, |states| {
        let (s, d) = states.split_at_mut(1);
        if s[0].visible(now).is_none() {
            return Ok((Vec::new(), false));
        }
        let ops = copy_key(
            &s[0],
            &mut d[0],
            &Blob(dst.to_vec()),
            instance,
            now,
            replace,
        )?;
        let copied = !ops.is_empty();
        Ok((ops, copied))
    })
    .await?;
    Ok(done.value)
}

/// Applies `op`, entry `position` of peer `peer`'s op log, and records `position` as that peer's
/// in the same script (so the position is never ahead of what was applied). Idempotent: an op
/// applied before is [`Applied::Duplicate`] and only the position is recorded. The op is not
/// logged here (every instance pulls each origin's own log).
pub async fn apply_remote(
    conn: &mut Conn,
    peer: InstanceId,
    position: Position,
    op: &Op,
) -> Result<Applied, CrdbError> {
    let keys = [op.key.0.clone()];
    let (_, _, _, _, applied) = commit(conn, &keys, Some((peer, position)), |states| {
        Ok((Vec::new(), states[0].apply(op)?))
    })
    .await?;
    Ok(applied)
}

/// [`apply_remote`] for several consecutive entries of peer `peer`'s log at once (a page the
/// syncer pulled): one load of the keys they touch and one script, the position of the last
/// entry recorded with them. All or nothing: an op that cannot be applied (a gap, a newer
/// protocol) fails the whole batch, and the caller may apply the entries one by one to find it.
pub async fn apply_remote_batch(
    conn: &mut Conn,
    peer: InstanceId,
    entries: &[(Position, Op)],
) -> Result<Vec<Applied>, CrdbError> {
    let Some((last, _)) = entries.last() else {
        return Ok(Vec::new());
    };
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for (_, op) in entries {
        if !keys.contains(&op.key.0) {
            keys.push(op.key.0.clone());
        }
    }
    let (_, _, _, _, applied) = commit(conn, &keys, Some((peer, *last)), |states| {
        let mut applied = Vec::with_capacity(entries.len());
        for (_, op) in entries {
            let i = keys.iter().position(|k| *k == op.key.0).expect("listed");
            applied.push(states[i].apply(op)?);
        }
        Ok((Vec::new(), applied))
    })
    .await?;
    Ok(applied)
}

/// Joins a peer's whole state of `key` into the local one (full state transfer), updating the
/// engine's value to the merged materialization. Nothing is logged: the peer's ops reach every
/// other instance from the peer itself.
pub async fn merge_remote(conn: &mut Conn, key: &[u8], remote: &KeyState) -> Result<(), CrdbError> {
    commit(conn, &[key.to_vec()], None, |states| {
        states[0].merge(remote);
        Ok((Vec::new(), ()))
    })
    .await?;
    Ok(())
}
