//! Databases (bdbs) and their shards: what the cluster runs for its users.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine_version::EngineVersion;
use crate::state::NodeUid;

/// A database's uid (Redis Software's `bdb` uid).
pub type BdbUid = u64;
/// A shard's uid (Redis Software names shards `redis:N`).
pub type ShardUid = u64;

/// Number of hash slots, as in Redis Cluster.
pub const SLOT_COUNT: u32 = 16384;
/// Database endpoint ports (one listener per database on every node).
pub const ENDPOINT_PORTS: std::ops::RangeInclusive<u16> = 10000..=19999;
/// Shard ports (one engine process per shard, on its node's address).
pub const SHARD_PORTS: std::ops::RangeInclusive<u16> = 20000..=29999;
/// Most primary shards a database may have.
pub const MAX_SHARDS: u16 = 64;

/// How a database keeps its data across engine restarts (Redis Software's `data_persistence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPersistence {
    /// Memory only.
    #[default]
    Disabled,
    /// Append-only file.
    Aof,
    /// RDB snapshots.
    Snapshot,
}

/// A shard's role. Flotilla says primary and replica; the JSON (store, Raft log, REST) keeps
/// Redis Software's values, `master` and `slave`, which 0.1.0 nodes and REST clients read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardRole {
    /// Serves the slot range's reads and writes.
    #[serde(rename = "master")]
    Primary,
    /// Replicates the primary of the same slot range.
    #[serde(rename = "slave")]
    Replica,
}

/// An inclusive range of hash slots, written `start-end` in JSON as Redis Software does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotRange {
    /// First slot.
    pub start: u16,
    /// Last slot (inclusive).
    pub end: u16,
}

impl SlotRange {
    /// The `index`-th of `count` near-equal contiguous ranges: slot `s` belongs to range
    /// `s * count / 16384`, the same split the proxy's `SlotMap::even` uses.
    pub fn even(index: u16, count: u16) -> SlotRange {
        let first = |i: u32| (i * SLOT_COUNT).div_ceil(u32::from(count));
        let start = first(u32::from(index));
        let end = first(u32::from(index) + 1) - 1;
        SlotRange {
            start: start as u16,
            end: end as u16,
        }
    }

    /// Whether `slot` is in the range.
    pub fn contains(&self, slot: u16) -> bool {
        (self.start..=self.end).contains(&slot)
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl FromStr for SlotRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{s}' is not a slot range like 0-8191");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let start: u16 = a.trim().parse().map_err(|_| bad())?;
        let end: u16 = b.trim().parse().map_err(|_| bad())?;
        if start > end || u32::from(end) >= SLOT_COUNT {
            return Err(bad());
        }
        Ok(SlotRange { start, end })
    }
}

impl Serialize for SlotRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SlotRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What an operator asks for when creating a database (Redis Software's field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BdbSpec {
    /// Unique database name.
    pub name: String,
    /// Endpoint port, in [`ENDPOINT_PORTS`], the same on every node.
    pub port: u16,
    /// Memory limit in bytes for the whole database (split across its primary shards).
    pub memory_size: u64,
    /// Number of primary shards.
    pub shards_count: u16,
    /// Whether every primary shard has a replica on another node.
    pub replication: bool,
    /// Persistence mode.
    #[serde(default)]
    pub data_persistence: DataPersistence,
    /// Engine version.
    pub redis_version: EngineVersion,
    /// Password clients must AUTH with; none means no AUTH.
    #[serde(default)]
    pub authentication_redis_pass: Option<String>,
}

/// A database as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bdb {
    /// Database uid.
    pub uid: BdbUid,
    /// What was asked for (and later changed).
    #[serde(flatten)]
    pub spec: BdbSpec,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
}

/// Where one shard goes, decided by placement before the command is proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// The node that runs it.
    pub node_uid: NodeUid,
    /// Primary or replica.
    pub role: ShardRole,
    /// Its slots.
    pub assigned_slots: SlotRange,
    /// Its port on that node.
    pub port: u16,
}

/// One shard: a real engine process on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Shard uid.
    pub uid: ShardUid,
    /// Its database.
    pub bdb_uid: BdbUid,
    /// Its node.
    pub node_uid: NodeUid,
    /// Primary or replica.
    pub role: ShardRole,
    /// Its slots (a primary and its replica share the range).
    pub assigned_slots: SlotRange,
    /// Its port on its node.
    pub port: u16,
    /// The engine this shard runs (differs from the database's during an upgrade).
    pub redis_version: EngineVersion,
    /// A planned switchover is under way for this primary's slots: proxies queue its commands
    /// instead of sending them (design step 1) until the new primary is published.
    #[serde(default)]
    pub held: bool,
    /// A replica added only for the time of an upgrade: for a database without replication
    /// (the upgrade removes it again), or the replacement of a replicated database's primary
    /// (the upgrade makes it permanent in the old primary's place).
    #[serde(default)]
    pub temporary: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_ranges_cover_every_slot_once() {
        for count in [1u16, 2, 3, 5, 7, 64] {
            let ranges: Vec<SlotRange> = (0..count).map(|i| SlotRange::even(i, count)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(u32::from(ranges.last().unwrap().end), SLOT_COUNT - 1);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end + 1, pair[1].start, "{count}: {pair:?}");
            }
            for (i, range) in ranges.iter().enumerate() {
                for slot in [range.start, range.end] {
                    assert_eq!(u32::from(slot) * u32::from(count) / SLOT_COUNT, i as u32);
                }
            }
        }
    }

    #[test]
    fn shard_roles_keep_redis_softwares_json_values() {
        for (role, json) in [
            (ShardRole::Primary, "\"master\""),
            (ShardRole::Replica, "\"slave\""),
        ] {
            assert_eq!(serde_json::to_string(&role).unwrap(), json);
            assert_eq!(serde_json::from_str::<ShardRole>(json).unwrap(), role);
        }
        assert!(serde_json::from_str::<ShardRole>("\"primary\"").is_err());
    }

    #[test]
    fn slot_ranges_are_written_like_redis_software() {
        let range = SlotRange::even(1, 2);
        assert_eq!(serde_json::to_string(&range).unwrap(), "\"8192-16383\"");
        assert_eq!(
            "0-8191".parse::<SlotRange>().unwrap(),
            SlotRange::even(0, 2)
        );
        assert!("9-3".parse::<SlotRange>().is_err());
        assert!("0-16384".parse::<SlotRange>().is_err());
    }
}
