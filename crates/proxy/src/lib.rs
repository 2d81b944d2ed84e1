//! Flotilla's proxy: the per-database endpoint that clients connect to. It routes each command
//! by hash slot to the shard owning it, splits or fans out multi-shard commands and merges
//! their replies, answers connection commands itself, and refuses administrative ones.
//!
//! This crate holds the pure routing logic so far: [`slot`] (CRC16 hash slots, hashtags and
//! the slot map), [`command`] (the command table, also rendered as `COMMANDS.md`), [`route`]
//! (the decision for one request), [`merge`] (combining shard replies) and [`scan`] (SCAN
//! cursors across shards). Networking, shard connections and hold/release come later and use
//! these types directly.

pub mod command;
pub mod merge;
pub mod route;
pub mod scan;
pub mod slot;

pub use command::{lookup, lookup_request, Class, CommandSpec, KeySpec, LocalCommand, Merge};
pub use merge::merge_replies;
pub use route::{
    route, Decision, InvalidRequest, PubSubTarget, Rejection, Route, ScanStep, Split, SplitPart,
};
pub use slot::{key_slot, ShardIndex, SlotMap, SLOT_COUNT};
