//! Flotilla's proxy: the per-database endpoint that clients connect to. It routes each command
//! by hash slot to the shard owning it, splits or fans out multi-shard commands and merges
//! their replies, answers connection commands itself, and refuses administrative ones.
//! Introspection answers like the engine of the whole database: INFO is the shards' INFO
//! combined (`info.rs`), COMMAND the engine's own table, and SLOWLOG/LATENCY every shard's log
//! read over a connection as the engines' admin user, never the data path's (`admin.rs`).
//! CLIENT INFO/LIST give the engine's own field list with the endpoint's values
//! (`client_line.rs`); CLIENT LIST and KILL reach the endpoint's clients (`directory.rs`).
//!
//! Pure routing logic: [`slot`] (CRC16 hash slots, hashtags and the slot map), [`command`]
//! (the command table, also rendered as `COMMANDS.md`), [`route`] (the decision for one
//! request), [`merge`] (combining shard replies) and [`scan`] (SCAN cursors across shards).
//!
//! The data path: [`serve`] runs one endpoint (one listener, one database) against a
//! [`Topology`] published through a `watch` channel. Each client connection is a task that
//! reads a batch of pipelined requests, routes each one, writes every shard's share of the
//! batch at once, then reads the replies back in the client's order (see `session/`).
//!
//! Bounds on clients (the database's [`flotilla_model::ClientLimits`], carried by the
//! [`Topology`]): before a client has authenticated its requests are bounded at each header
//! (10 arguments, 16 KB per bulk, as Redis); a request not yet decoded may hold at most the
//! query buffer limit; an authenticated client's read goes on while its socket has more, up to
//! 256 KB, so a pipeline a little over one 16 KB read is one batch; replies are written once
//! 64 KB are pending, the session reads nothing
//! more while a client does not take them, and a batch's size follows its replies' bytes, so a
//! client that does not read pins about one 4 MB batch; such a client is closed past the
//! output timeout or the output buffer limit; past `max_connections` a client is answered
//! `-ERR max number of clients reached` and closed; an idle client is closed past the idle
//! timeout. An idle connection holds no buffer.
//!
//! Shard connections (see `shared.rs`): a RESP2 client's plain commands for a shard travel
//! over one engine connection per shard primary that all the endpoint's clients share, so many
//! clients' requests reach the engine in one write and their replies come back in one read (a
//! client sending one command per round trip otherwise costs the engine two system calls per
//! command). A client's pipeline still reaches each shard as one job, in order. Transactions,
//! WATCH, blocking commands (BLPOP, XREAD BLOCK, WAIT), scripts (EVAL, FCALL: one may loop
//! until SCRIPT KILL), RESP3 and tracking clients use dedicated connections instead, opened on
//! first use, one per shard the client touches: they hold
//! engine-side connection state (or would stall other clients), and a dedicated connection
//! keeps them correct with no bookkeeping. A client moves to dedicated connections for good at
//! its first such command, after its earlier commands are answered.
//!
//! Switchovers (DESIGN.md, "Data path"): a shard held in the [`Topology`]
//! ([`Topology::with_hold`]) makes each client connection park its next command for that shard
//! and everything after it, bounded by [`ProxyOptions`] (5 s and 16 MiB per client by default);
//! the topology that releases the hold sends them, in order, to the primary it names, and a
//! hold that times out answers them `-TRYAGAIN ... not executed` without sending them. A write
//! the old primary refuses with `-READONLY` (fenced, then demoted: not executed) is resent to
//! the next primary the topology names, within the same bound. A write lost in flight on a
//! shared connection when its master died is resent to the promoted replica only when that
//! one's replication offsets prove it never got it (see `outcome.rs`); nothing else is retried:
//! a connection lost after sending answers an error saying the command may have executed. Which
//! is which is one [`Verdict`] (executed, not executed and why, outcome unknown), which the
//! endpoint's counters report too. Client errors name shards by uid with their slots
//! (`TRYAGAIN shard 7 (slots 0-8191) is held ...`).
//!
//! Pub/sub (see `pubsub.rs`): a client's subscriptions ride on dedicated engine connections,
//! one per shard it subscribed on (shard 0 for classic channels and patterns, the channel's
//! slot's shard for SSUBSCRIBE); messages are pushed to the client as they arrive, in RESP2 or
//! RESP3. When such a shard's primary moves, the subscribed client is disconnected (its
//! subscriptions live on the old engine; clients resubscribe when they reconnect).
//!
//! Client-side caching (see `tracking.rs`): a client that sends CLIENT TRACKING moves to
//! connections of its own, on which the engines track for it with its options, redirecting
//! their invalidations to an inbox connection per shard that the session owns; the session
//! passes them on between batches as RESP3 pushes, or to the endpoint client named by
//! REDIRECT. Keys changed anywhere (any node's endpoint, expiry, eviction) invalidate.
//!
//! In-place handover (see `control.rs`, `handover.rs`, `session/detach.rs`): under an
//! [`EndpointControl`] ([`serve_controlled`]), the endpoint's owner stops accepting without
//! closing the listening socket, has every session stop at its next command boundary and hand
//! itself over as a [`DetachedSession`] (client socket, [`SessionState`], pinned engine
//! sockets), or close there instead, and another endpoint instance adopts each one: the client
//! keeps its TCP connection, id, authentication, protocol, name, subscriptions, MULTI, WATCH,
//! and a BLPOP it is blocked in.
//!
//! A client blocked in BLPOP that disconnects is noticed at once: its engine connection is
//! closed, so the engine frees its blocked client as it frees a direct one.
//!
//! Known limits: shutdown closes client
//! connections without draining them at command boundaries (the in-place handover detaches or
//! closes them at boundaries first); a
//! transaction whose WATCHed shard moved to a new primary returns a null EXEC (aborted) rather
//! than risk running unwatched (also when a demoted primary refused it: a MULTI/EXEC without
//! WATCH refused `READONLY` ran nothing and is resent whole to the new primary); a hold parks
//! the whole client connection, not
//! only its commands for the held shard, so one client's order is kept across shards.

pub mod command;
pub mod merge;
pub mod route;
pub mod scan;
pub mod slot;
pub mod topology;

mod admin;
mod client;
mod client_line;
mod config;
mod control;
mod crdt;
mod directory;
mod frame;
mod handover;
mod info;
mod monitor;
mod outcome;
mod pubsub;
mod server;
mod session;
mod shard;
mod shared;
mod stats;
mod tls;
mod tracking;
mod verdict;

pub use command::{lookup, lookup_request, Class, CommandSpec, KeySpec, LocalCommand, Merge};
pub use config::{AdminFuture, AdminHandle, DatabaseAdmin};
pub use control::{
    endpoint_control, AdoptError, Detaching, EndpointControl, EndpointInbox, HandoverCounts,
};
pub use handover::{
    BlockedState, DetachedSession, PinnedConnection, PinnedPurpose, SessionState,
    ShardSubscriptions, TransactionState, WatchState,
};
pub use merge::merge_replies;
pub use outcome::StreamPosition;
pub use route::{
    request_keys, route, Decision, InvalidRequest, PubSubTarget, Rejection, Route, ScanStep, Split,
    SplitPart,
};
pub use server::{
    next_client_id, serve, serve_controlled, serve_with, serve_with_stats, set_next_client_id,
    ProxyOptions, DEFAULT_HOLD_MAX_BYTES, DEFAULT_HOLD_TIMEOUT,
};
pub use shard::ShardError;
pub use slot::{key_slot, ShardIndex, SlotMap, SLOT_COUNT};
pub use stats::{EndpointStats, LatencySnapshot, StatsSnapshot, LATENCY_BUCKETS_US};
pub use tls::EndpointTls;
/// The TLS library the endpoints use, for their [`EndpointTls`] configuration.
pub use tokio_rustls::rustls;
pub use topology::{CrdtInstance, ShardLogin, ShardName, Topology, TopologyError};
pub use verdict::{Reason, Side, Verdict};
