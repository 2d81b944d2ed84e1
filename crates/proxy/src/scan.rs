//! SCAN across shards: the cursor the client sees carries the shard index in its low
//! [`SHARD_BITS`] bits and that shard's own cursor above them, so the proxy stays stateless and
//! a client walks shard 0, then shard 1, ... with ordinary SCAN calls.

use crate::slot::ShardIndex;

/// Bits of the client cursor holding the shard index; 10 bits fit [`crate::slot::MAX_SHARDS`].
pub const SHARD_BITS: u32 = 10;

/// The client cursor for `shard_cursor` on `shard`; `None` when the shard's cursor is too large
/// to carry (above 2^54, far beyond any real hash table).
pub fn encode_cursor(shard: ShardIndex, shard_cursor: u64) -> Option<u64> {
    if shard_cursor >> (64 - SHARD_BITS) != 0 {
        return None;
    }
    Some((shard_cursor << SHARD_BITS) | u64::from(shard.0))
}

/// The shard and shard cursor a client cursor stands for.
pub fn decode_cursor(cursor: u64) -> (ShardIndex, u64) {
    let shard = (cursor & ((1 << SHARD_BITS) - 1)) as u16;
    (ShardIndex(shard), cursor >> SHARD_BITS)
}

/// The cursor to give the client after `shard` replied `shard_cursor`: continue on that shard,
/// else start the next shard, else 0 (the iteration is over). `None` if it cannot be encoded.
pub fn next_cursor(shard: ShardIndex, shard_cursor: u64, shard_count: u16) -> Option<u64> {
    if shard_cursor != 0 {
        encode_cursor(shard, shard_cursor)
    } else if shard.0 + 1 < shard_count {
        encode_cursor(ShardIndex(shard.0 + 1), 0)
    } else {
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_walk_every_shard() {
        assert_eq!(encode_cursor(ShardIndex(0), 0), Some(0));
        let c = encode_cursor(ShardIndex(3), 17).unwrap();
        assert_eq!(decode_cursor(c), (ShardIndex(3), 17));
        assert_eq!(encode_cursor(ShardIndex(1), 1 << 54), None);
        assert_eq!(next_cursor(ShardIndex(0), 0, 3), Some(1));
        assert_eq!(next_cursor(ShardIndex(1), 5, 3), Some((5 << 10) | 1));
        assert_eq!(next_cursor(ShardIndex(2), 0, 3), Some(0));
    }
}
