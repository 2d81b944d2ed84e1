//! Hash slots and the slot map: which of a database's primary shards owns a key.
//!
//! The slot of a key is computed exactly as Redis Cluster does (CRC16/XMODEM of the key, or of
//! its `{hashtag}`, modulo 16384), so keys that a client groups with hashtags for multi-key
//! commands land on one shard here too.

pub use flotilla_resp::slot::{crc16, hash_tag, key_slot, SLOT_COUNT};

/// Largest number of primary shards one database may have; bounded so a SCAN cursor can carry
/// the shard index in its low bits (see [`crate::scan`]).
pub const MAX_SHARDS: u16 = 1024;

/// Index of a primary shard within one database's slot map (0-based, in slot order).
///
/// Exists so routing decisions can name a shard without knowing shard ids or addresses: the
/// proxy keeps, per database, the list of primary shards this index points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardIndex(pub u16);

/// Why a slot map could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotMapError {
    /// Zero shards, or more than [`MAX_SHARDS`].
    #[error("a database needs 1 to {MAX_SHARDS} shards, not {0}")]
    ShardCount(usize),
    /// An owner table that does not have exactly one entry per slot.
    #[error("a slot map needs {SLOT_COUNT} owners, got {0}")]
    SlotCount(usize),
}

/// Which primary shard owns each of the 16384 slots of one database.
///
/// Exists as the one input routing needs from the cluster store: the proxy rebuilds it when the
/// store publishes a new placement and routes every command against the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    owners: Box<[u16]>,
    shard_count: u16,
}

impl SlotMap {
    /// Slots split into `shards` contiguous, near-equal ranges in shard order, the layout Redis
    /// Software gives a new sharded database.
    pub fn even(shards: usize) -> Result<Self, SlotMapError> {
        if shards == 0 || shards > usize::from(MAX_SHARDS) {
            return Err(SlotMapError::ShardCount(shards));
        }
        let slots = usize::from(SLOT_COUNT);
        let owners = (0..slots)
            .map(|slot| (slot * shards / slots) as u16)
            .collect();
        Ok(SlotMap {
            owners,
            shard_count: shards as u16,
        })
    }

    /// A map from an explicit owner per slot (e.g. during a resharding); the shard count is the
    /// largest index plus one.
    pub fn from_owners(owners: Vec<u16>) -> Result<Self, SlotMapError> {
        if owners.len() != usize::from(SLOT_COUNT) {
            return Err(SlotMapError::SlotCount(owners.len()));
        }
        let count = owners
            .iter()
            .map(|&o| usize::from(o) + 1)
            .max()
            .unwrap_or(0);
        if count > usize::from(MAX_SHARDS) {
            return Err(SlotMapError::ShardCount(count));
        }
        Ok(SlotMap {
            owners: owners.into_boxed_slice(),
            shard_count: count as u16,
        })
    }

    /// The shard owning `slot` (slots are taken modulo 16384).
    pub fn shard_of(&self, slot: u16) -> ShardIndex {
        ShardIndex(self.owners[usize::from(slot & (SLOT_COUNT - 1))])
    }

    /// The shard owning `key`.
    pub fn shard_of_key(&self, key: &[u8]) -> ShardIndex {
        self.shard_of(key_slot(key))
    }

    /// How many primary shards the database has.
    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// The slot ranges (inclusive) `shard` owns, in slot order; for messages, not the data path.
    pub fn ranges_of(&self, shard: ShardIndex) -> Vec<(u16, u16)> {
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for (slot, &owner) in self.owners.iter().enumerate() {
            if owner != shard.0 {
                continue;
            }
            let slot = slot as u16;
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == slot => *end = slot,
                _ => ranges.push((slot, slot)),
            }
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_maps_cover_every_slot_in_order() {
        let map = SlotMap::even(3).unwrap();
        assert_eq!(map.shard_count(), 3);
        assert_eq!(map.shard_of(0), ShardIndex(0));
        assert_eq!(map.shard_of(5461), ShardIndex(0));
        assert_eq!(map.shard_of(5462), ShardIndex(1));
        assert_eq!(map.shard_of(16383), ShardIndex(2));
        let single = SlotMap::even(1).unwrap();
        assert_eq!(single.shard_of_key(b"foo"), ShardIndex(0));
        assert_eq!(SlotMap::even(0), Err(SlotMapError::ShardCount(0)));
        assert_eq!(SlotMap::even(1025), Err(SlotMapError::ShardCount(1025)));
    }

    #[test]
    fn explicit_maps_are_validated() {
        assert_eq!(
            SlotMap::from_owners(vec![0; 10]),
            Err(SlotMapError::SlotCount(10))
        );
        let mut owners = vec![0; 16384];
        owners[12182] = 4;
        let map = SlotMap::from_owners(owners).unwrap();
        assert_eq!(map.shard_count(), 5);
        assert_eq!(map.shard_of_key(b"foo"), ShardIndex(4));
        assert_eq!(map.shard_of_key(b"bar"), ShardIndex(0));
        assert_eq!(map.ranges_of(ShardIndex(4)), vec![(12182, 12182)]);
        assert_eq!(
            map.ranges_of(ShardIndex(0)),
            vec![(0, 12181), (12183, 16383)]
        );
        assert_eq!(map.ranges_of(ShardIndex(1)), vec![]);
        let even = SlotMap::even(2).unwrap();
        assert_eq!(even.ranges_of(ShardIndex(1)), vec![(8192, 16383)]);
    }
}
