//! Active-Active (CRDB) conflict rules as data and pure functions: the core of issue 15.
//!
//! This crate owns what every instance of an Active-Active database must agree on to converge
//! without coordination: identities and clocks ([`clock`]), the operations that travel between
//! instances ([`op`]), the CRDT state of one key with `apply` and `materialize` ([`state`]), the
//! origin side that turns a client's write into an op ([`mod@write`]), and the engine commands that
//! keep the plain value in the engine equal to the materialization ([`engine`]). No engine, no
//! network, no clock reads: callers pass wall-clock times in.
//!
//! # The design this crate serves
//!
//! CRDT state lives next to each key in the engine, managed by a proxy-side layer; operations
//! travel between instances as an op log shipped by a syncer.
//!
//! - **Value**: the client's key holds the plain Redis value, so every read command runs natively
//!   in the engine. [`engine::engine_commands`] gives the commands that bring it from the previous
//!   materialization to the new one (minimal for one field, one member, a push or pop; a rewrite
//!   otherwise; additions before removals so a collection never empties on the way).
//! - **Metadata**: the key's [`state::KeyState`] as JSON ([`state::KeyState::to_meta`]) in one
//!   hidden string key of the *same hash slot* (so one Lua script touches both atomically on any
//!   shard): `__crdt__{<tag>}<key>`, where `<tag>` is a short string chosen to hash to the slot of
//!   `<key>` (a 16384-entry table computed once from the proxy's `key_slot`; the key's own hash
//!   tag cannot be reused when the key has none and contains braces). The proxy hides the
//!   `__crdt__` prefix from `KEYS`/`SCAN`/`DBSIZE`/`TYPE`/`RANDOMKEY`. The metadata holds every
//!   value a conflict may still need (concurrent register entries, tombstones): measured with three
//!   instances (`cargo test -p flotilla-crdt metadata_sizes -- --ignored --nocapture`), about 30
//!   bytes per set member, 67 per hash field, 87 per list element, 240 for a counter. Tombstones
//!   go as soon as the key's clock covers them ([`state::KeyState::compact`], applied by
//!   `to_meta`).
//! - **Writing**: the proxy reads the metadata, calls [`state::KeyState::prepare`] (engine-exact
//!   refusals: `WRONGTYPE`, not an integer, 59-bit overflow), applies the op, and runs one script
//!   that checks the metadata is unchanged (compare-and-set on its old text or a version), writes
//!   the new metadata, runs the engine commands, and appends the op to the shard's op log (a
//!   stream; the engines run without cluster mode, so one script may touch it and the key) — or
//!   computes the same in Lua from this crate's rules; the data model is the same. Whole-key
//!   metadata costs O(key size) per write (a 20000-field hash: 1.3 MB, about 0.3 s to encode and
//!   decode in a debug build, against 19 µs for `prepare` + `apply`): big keys want the metadata
//!   split per element (a hidden hash: one field for the header, one per element) and the state
//!   loaded for the elements a write names, the next step of this layer.
//! - **Syncing**: the syncer ships each origin's op log to every peer in order, each op as
//!   [`op::Op::to_json`]; the receiver applies it with [`state::KeyState::apply`] (idempotent by
//!   the op's dot, so a resumed link may resend) through the same script. Past the backlog, a
//!   full state transfer sends key states and the receiver joins them with
//!   [`state::KeyState::merge`], which equals applying the union of the ops.
//! - **Versions**: each op carries the CRDB protocol version ([`op::CRDT_PROTOCOL_VERSION`]);
//!   [`op::Op::from_json`] refuses a newer one before reading its body, so the sender holds it.
//!
//! # Clocks
//!
//! Every write gets a [`clock::Dot`] (instance id, per-key sequence number) and carries the key's
//! [`clock::VectorClock`] as its origin had observed it. Because the syncer delivers each origin's
//! ops in order, a vector clock names exactly the set of writes it covers, so removes carry a
//! clock, not element ids ("observed-remove"). Ties between concurrent values go to the later wall
//! clock, then the lower instance id.
//!
//! # Rules (reference section 2)
//!
//! | Type / command | Rule |
//! |---|---|
//! | `SET` (and `APPEND`, `SETRANGE`, `GETSET`, `MSET` per key: the resulting value) | last-writer-wins: causality first, then wall clock, then lower instance id |
//! | `INCRBY`/`DECRBY`/`INCRBYFLOAT` | summed across instances (per-instance running totals); 59-bit range checked at the origin |
//! | Hash | per field LWW; an `HSET` beats a concurrent `HDEL` (add-wins); `HINCRBY*` summed |
//! | Set | observed-remove, add-wins |
//! | Sorted set | membership observed-remove (add-wins); concurrent `ZADD`: later wall clock, a tie to the lower instance; `ZINCRBY` summed; `ZREM` ∥ `ZINCRBY` keeps only the unseen increments (4.1, then ZREM ∥ +2 → 2) |
//! | List | replicated growable array: an element's id is (write dot, index), inserted after the element it followed; concurrent inserts after the same element ordered by Lamport clock (later first), then lower instance; pops, `LREM`, `LTRIM` remove the elements they saw (pops at least once); `LSET` is LWW per element, a concurrent removal wins |
//! | `DEL` | observed-remove over the whole key: what the `DEL` did not see survives |
//! | `EXPIRE`/`PERSIST` | LWW by causality; among concurrent ones `PERSIST` beats every deadline, else the longest deadline wins and its instance owns the expiry ([`state::Expiry`]) |
//!
//! # Choices where Redis documents none
//!
//! - **`SET` racing `INCR`** (and `DEL`, `HSET`, `HDEL`, `ZADD`, `ZREM` racing increments):
//!   observed-reset. The reset removes the increments it had seen; unseen ones are added to the
//!   winning value (`SET 100` ∥ `INCRBY 5` → 105; `DEL` ∥ `INCRBY 5` → 5). A non-numeric winning
//!   value hides concurrent increments until the next reset.
//! - **`DEL` racing `SET`** on a string: the `SET` survives (observed-remove, as for every type).
//! - **A key written as two types concurrently**: each type's content is kept apart and merged by
//!   its own rules; the key shows the type with the latest write (wall clock, then lower instance
//!   id; writes a `DEL` had seen do not count), the other is hidden. Any later write, having seen both, removes the hidden content (a
//!   write of one type removes what it observed of the others), so it never resurfaces.
//! - **`RENAME`/`COPY`**: per-key effects ([`write::rename_key`], [`write::copy_key`]): the
//!   destination gets a `DEL` then writes recreating the source's visible value and deadline, the
//!   source gets a `DEL`. A write to the source the rename had not seen survives in the source;
//!   a concurrent write to the destination merges with the copy. Counters arrive as values.
//! - **A write to an expired or absent key** starts a new key: the op is `fresh` and removes
//!   everything observed of the key first (the expiry included), as the DEL the reference has the
//!   writer send.
//! - **`SET` without `KEEPTTL`** clears the deadlines it observed; a concurrent `EXPIRE` stays.
//! - **Float formatting**: counters with a live float increment print as Rust's shortest exact
//!   form (`10.5`, `3`), which may differ from Redis's 17-digit long-double form in the last
//!   digits.
//! - **SREM/HDEL/ZREM of what the origin does not hold, SADD of present members, DEL of a missing
//!   key** produce no op (the engine propagates nothing for them either).
//!
//! Not covered here: streams, HyperLogLog, JSON, bitfields and geo commands other than through the
//! string and sorted-set rules (the proxy layer refuses them, naming the command); the tombstones
//! `compact` must keep (list elements, which later inserts may follow; counter bases, which a late
//! reset may name; a deleted key's clock) need the clock every instance has acknowledged, from the
//! syncer, to be collected.

#![warn(missing_docs)]

pub mod blob;
pub mod clock;
pub mod engine;
pub mod error;
pub mod op;
pub mod state;
pub mod write;

pub use blob::Blob;
pub use clock::{Causality, Dot, InstanceId, Millis, VectorClock};
pub use error::{CrdtError, WriteError};
pub use op::{Effect, Op, CRDT_PROTOCOL_VERSION};
pub use state::{is_meta_key, Applied, Expiry, KeyState, TypeTag, Value, META_PREFIX};
pub use write::{End, Write};

#[cfg(test)]
mod engine_model;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
