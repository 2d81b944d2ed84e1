//! The state's large collections (databases, shards): objects by uid in a persistent map, with
//! the secondary keys the state's queries look up (a database's name and port, a shard's
//! database, node and port), so that neither a change nor a lookup walks every object.
//!
//! Both the map and the index are persistent B-trees ([`imbl`]): a copy shares their nodes, and
//! a change copies only the few nodes on its path. The index is derived: it is not encoded, and
//! it is built again when a table is decoded.

use std::fmt;
use std::ops::{Deref, RangeInclusive};

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::NodeUid;
use crate::bdb::{Bdb, BdbUid, Shard};
use crate::command::CommandResult;
use crate::error::ModelError;

/// A secondary key of an object, with the object's uid last (several objects may share a key;
/// those sharing one come out in uid order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum IndexKey {
    /// A database's name.
    BdbName(String, u64),
    /// A database's endpoint port.
    BdbPort(u16, u64),
    /// The database a shard belongs to.
    ShardOf(BdbUid, u64),
    /// The node a shard is placed on.
    ShardOn(NodeUid, u64),
    /// The node a shard is placed on and its port there.
    ShardPort(NodeUid, u16, u64),
}

impl IndexKey {
    /// The uid of the object the key belongs to.
    fn uid(&self) -> u64 {
        match self {
            IndexKey::BdbName(_, uid)
            | IndexKey::BdbPort(_, uid)
            | IndexKey::ShardOf(_, uid)
            | IndexKey::ShardOn(_, uid)
            | IndexKey::ShardPort(_, _, uid) => *uid,
        }
    }
}

/// An object a [`Table`] holds: the secondary keys it is found by.
pub trait Indexed: Clone {
    /// The object's keys, given its uid.
    fn index_keys(&self, uid: u64) -> Vec<IndexKey>;
}

impl Indexed for Bdb {
    fn index_keys(&self, uid: u64) -> Vec<IndexKey> {
        vec![
            IndexKey::BdbName(self.spec.name.clone(), uid),
            IndexKey::BdbPort(self.spec.port, uid),
        ]
    }
}

impl Indexed for Shard {
    fn index_keys(&self, uid: u64) -> Vec<IndexKey> {
        vec![
            IndexKey::ShardOf(self.bdb_uid, uid),
            IndexKey::ShardOn(self.node_uid, uid),
            IndexKey::ShardPort(self.node_uid, self.port, uid),
        ]
    }
}

/// Objects by uid and by their secondary keys. Reads go to the map (`Deref`); changes go
/// through [`Table::insert`], [`Table::remove`] and [`Table::update`], which keep the index in
/// step. Encoded as the bare map (a JSON object keyed by uid, as a `BTreeMap` is).
#[derive(Clone)]
pub struct Table<V> {
    rows: OrdMap<u64, V>,
    index: OrdSet<IndexKey>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            rows: OrdMap::new(),
            index: OrdSet::new(),
        }
    }
}

impl<V> Deref for Table<V> {
    type Target = OrdMap<u64, V>;

    fn deref(&self) -> &Self::Target {
        &self.rows
    }
}

impl<V: Indexed> Table<V> {
    /// Puts `row` under `uid`, replacing what was there.
    pub(crate) fn insert(&mut self, uid: u64, row: V) {
        self.remove(&uid);
        for key in row.index_keys(uid) {
            self.index.insert(key);
        }
        self.rows.insert(uid, row);
    }

    /// Takes the object `uid` out, if it is there.
    pub(crate) fn remove(&mut self, uid: &u64) -> Option<V> {
        let row = self.rows.remove(uid)?;
        for key in row.index_keys(*uid) {
            self.index.remove(&key);
        }
        Some(row)
    }

    /// Changes the object `uid` with `change` (and its keys with it); `None` when it is not
    /// there.
    pub(crate) fn update<R>(&mut self, uid: u64, change: impl FnOnce(&mut V) -> R) -> Option<R> {
        let row = self.rows.get_mut(&uid)?;
        let before = row.index_keys(uid);
        let result = change(row);
        let after = row.index_keys(uid);
        if before != after {
            for key in before {
                self.index.remove(&key);
            }
            for key in after {
                self.index.insert(key);
            }
        }
        Some(result)
    }

    /// [`Table::update`] as a command's outcome: `Ok`, or `NotFound` naming the object
    /// (`what` is "database", "shard").
    pub(crate) fn change(
        &mut self,
        what: &str,
        uid: u64,
        change: impl FnOnce(&mut V),
    ) -> Result<CommandResult, ModelError> {
        self.update(uid, change)
            .map(|()| CommandResult::Ok)
            .ok_or_else(|| ModelError::NotFound(format!("{what} {uid} does not exist")))
    }

    /// The objects found by `key` (`key(uid)` is the key of the object `uid`), in uid order:
    /// `shards.lookup(|uid| IndexKey::ShardOf(bdb, uid))` are the shards of `bdb`.
    pub(crate) fn lookup(&self, key: impl Fn(u64) -> IndexKey) -> impl Iterator<Item = &V> {
        let keys: RangeInclusive<IndexKey> = key(0)..=key(u64::MAX);
        self.index
            .range(keys)
            .filter_map(|key| self.rows.get(&key.uid()))
    }
}

#[cfg(test)]
impl<V: Indexed> Table<V> {
    /// Empties the table (tests set up states with it).
    pub(crate) fn clear(&mut self) {
        *self = Table::default();
    }
}

impl<V: Indexed> From<OrdMap<u64, V>> for Table<V> {
    fn from(rows: OrdMap<u64, V>) -> Self {
        let index = rows
            .iter()
            .flat_map(|(uid, row)| row.index_keys(*uid))
            .collect();
        Table { rows, index }
    }
}

impl<V: PartialEq> PartialEq for Table<V> {
    fn eq(&self, other: &Self) -> bool {
        self.rows == other.rows
    }
}

impl<V: fmt::Debug> fmt::Debug for Table<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.rows.fmt(f)
    }
}

impl<V: Serialize> Serialize for Table<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.rows.serialize(serializer)
    }
}

impl<'de, V: Deserialize<'de> + Indexed> Deserialize<'de> for Table<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        OrdMap::deserialize(deserializer).map(Table::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdb::{ShardRole, SlotRange};
    use crate::EngineVersion;

    /// Shards as release 0.1.0 wrote them (a `BTreeMap` by uid): keys as strings, in numeric
    /// order (2 before 10).
    const SHARDS_0_1_0: &str = r#"{"2":{"uid":2,"bdb_uid":1,"node_uid":1,"role":"master","assigned_slots":"0-16383","port":20000,"redis_version":"redis-7.0","held":false,"temporary":false},"10":{"uid":10,"bdb_uid":3,"node_uid":2,"role":"slave","assigned_slots":"0-16383","port":20001,"redis_version":"redis-7.0","held":false,"temporary":false}}"#;

    fn on_node(shards: &Table<Shard>, node: NodeUid) -> Vec<u64> {
        shards
            .lookup(|uid| IndexKey::ShardOn(node, uid))
            .map(|s| s.uid)
            .collect()
    }

    #[test]
    fn a_table_encodes_like_the_map_of_0_1_0_and_is_indexed_once_decoded() {
        let shards: Table<Shard> = serde_json::from_str(SHARDS_0_1_0).unwrap();
        assert_eq!(serde_json::to_string(&shards).unwrap(), SHARDS_0_1_0);
        assert_eq!(shards.keys().copied().collect::<Vec<_>>(), [2, 10]);
        assert_eq!(on_node(&shards, 2), [10], "the index is built on decoding");
        let of_3: Vec<u64> = shards
            .lookup(|uid| IndexKey::ShardOf(3, uid))
            .map(|s| s.uid)
            .collect();
        assert_eq!(of_3, [10]);
    }

    #[test]
    fn a_copy_keeps_its_objects_and_keys_while_the_original_changes() {
        let mut shards: Table<Shard> = serde_json::from_str(SHARDS_0_1_0).unwrap();
        let copy = shards.clone();
        shards.update(2, |s| s.node_uid = 2);
        shards.insert(
            11,
            Shard {
                uid: 11,
                bdb_uid: 3,
                node_uid: 1,
                role: ShardRole::Replica,
                assigned_slots: SlotRange::even(0, 1),
                port: 20002,
                redis_version: EngineVersion::Redis70,
                held: false,
                temporary: true,
            },
        );
        shards.remove(&10);
        assert_eq!(
            on_node(&shards, 2),
            [2],
            "an update moves the object's keys"
        );
        assert_eq!(on_node(&shards, 1), [11]);
        assert_eq!(on_node(&copy, 1), [2], "the copy is untouched");
        assert_eq!(on_node(&copy, 2), [10]);
        assert_eq!(copy, serde_json::from_str(SHARDS_0_1_0).unwrap());
    }
}
