//! The engine side of Active-Active databases (issue 15): where an instance keeps each key's CRDT
//! state, how a write, a peer's op or a full-state merge reaches the engine, the shard's op log
//! and the syncer's positions. Used by the proxy (client writes) and the syncer (ops and states
//! from peers); the conflict rules themselves are [`flotilla_crdt`]'s.
//!
//! # What lives in an engine (one shard of an instance)
//!
//! - The client's key holds the plain value, so reads run natively.
//! - Its [`flotilla_crdt::KeyState`] lives in a hidden hash [`meta_key`]`(key)` =
//!   `__crdt__{<tag>}<key>` in the same hash slot (so the proxy routes both to one shard), with
//!   two fields: `v`, a version bumped by every change (compare-and-set), and `s`, the state's
//!   JSON ([`flotilla_crdt::KeyState::to_meta`]).
//! - The op log [`OPLOG_KEY`]: a stream with one entry per local op, id `<n>-0` where `n` is the
//!   shard's op sequence ([`OPSEQ_KEY`], 1, 2, 3...), fields `d` (the op's dot,
//!   `<instance>.<seq>`), `p` (its protocol version) and `o` (its JSON); trimmed to about
//!   [`DEFAULT_REPL_BACKLOG`] entries, or the shard's setting ([`SETTINGS_KEY`],
//!   [`set_repl_backlog`]).
//! - The syncer's positions [`POSITIONS_KEY`]: per peer instance id, the [`Position`] of the
//!   last op of that peer applied here.
//!
//! All of it is ordinary engine data: replicas and failover carry it with the values, and one
//! Lua script ([`script`]) changes a key, its metadata, the op log or a position together, so
//! none is ever ahead of another.
//!
//! # Writing
//!
//! [`transact`] loads the metadata of the keys a command names, lets the caller change the states
//! (through `flotilla_crdt`'s `write`, `copy_key`, `rename_key`), and runs the script: it checks
//! every version is unchanged (else the whole attempt is retried, up to [`MAX_ATTEMPTS`]), writes
//! the new metadata, runs the engine commands that turn the engine's value into the new
//! materialization, and appends the ops to the log. [`write_local`] is the one-key form,
//! [`apply_remote`] the syncer's (no log append; the peer's position in the same script;
//! [`apply_remote_batch`] for a page of ops in one script), [`merge_remote`] the full state
//! transfer's.

#![warn(missing_docs)]

mod error;
mod keys;
mod log;
mod position;
pub mod script;
mod write;

pub use error::CrdbError;
pub use keys::{
    is_hidden, meta_key, slot_tag, user_key, DEFAULT_REPL_BACKLOG, META_PATTERN, OPLOG_KEY,
    OPSEQ_KEY, POSITIONS_KEY, SETTINGS_KEY,
};
pub use log::{
    dbsize, entry_dot, log_end, position, read_log, repl_backlog, scan_states, set_repl_backlog,
    LogEntry, LogPage,
};
pub use position::{check_text, dot_text, entry_check, parse_check, parse_dot, Position};
pub use write::{
    apply_remote, apply_remote_batch, copy, load_state, merge_remote, rename, transact,
    write_local, write_many, Transaction, WriteOutcome, MAX_ATTEMPTS,
};

pub use flotilla_crdt::engine::View;
pub use flotilla_crdt::{Applied, Dot, InstanceId, KeyState, Millis, Op, Write};

/// The connection every function here takes: what `flotilla_engine::EngineClient::connection()`
/// gives (the syncer logs in as the admin user, the proxy as its own user).
pub type Conn = redis::aio::MultiplexedConnection;
