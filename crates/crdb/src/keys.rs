//! The names of the hidden keys: per-key metadata next to its key (same hash slot), the shard's
//! op log, op sequence and syncer positions.

use std::sync::OnceLock;

use flotilla_crdt::META_PREFIX;
use flotilla_resp::slot::{key_slot, SLOT_COUNT};

/// The shard's op log: a stream of the ops written on this instance, entry `<n>-0` for the
/// shard's `n`-th op (see the crate comment for its fields).
pub const OPLOG_KEY: &[u8] = b"__crdt__oplog";

/// The shard's op sequence: the `n` of the last op appended to [`OPLOG_KEY`] (kept apart from
/// the stream so it survives the stream's trimming and never goes back).
pub const OPSEQ_KEY: &[u8] = b"__crdt__opseq";

/// The syncer's positions: a hash, field = peer instance id (decimal), value = the
/// [`Position`](crate::Position) of the last op of that peer applied on this shard.
pub const POSITIONS_KEY: &[u8] = b"__crdt__positions";

/// The shard's Active-Active settings and counts: a hash; field `backlog` overrides
/// [`DEFAULT_REPL_BACKLOG`] (see [`set_repl_backlog`](crate::set_repl_backlog)), field `metas`
/// counts the metadata keys (so [`dbsize`](crate::dbsize) can leave them out).
pub const SETTINGS_KEY: &[u8] = b"__crdt__settings";

/// A `SCAN MATCH` pattern that finds every metadata key and nothing else of the layer's.
pub const META_PATTERN: &[u8] = b"__crdt__{*";

/// How many op-log entries a shard keeps (Redis Software's `crdt_repl_backlog`, counted in
/// entries here): a peer further behind gets a full state transfer instead. Trimming is
/// approximate (`MAXLEN ~`), so a few more may stay.
pub const DEFAULT_REPL_BACKLOG: usize = 100_000;

/// Characters a slot tag is made of (no braces, so the tag is exactly the hash tag).
const TAG_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// For each slot, the shortest string (from [`TAG_ALPHABET`]) hashing to it.
fn tags() -> &'static [Vec<u8>] {
    static TAGS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags: Vec<Option<Vec<u8>>> = vec![None; usize::from(SLOT_COUNT)];
        let base = TAG_ALPHABET.len();
        let mut len = 1u32;
        while tags.iter().any(Option::is_none) {
            for mut index in 0..base.pow(len) {
                let mut tag = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    tag.push(TAG_ALPHABET[index % base]);
                    index /= base;
                }
                tags[usize::from(key_slot(&tag))].get_or_insert(tag);
            }
            len += 1;
        }
        tags.into_iter()
            .map(|t| t.expect("every slot has a tag"))
            .collect()
    })
}

/// A short string whose hash slot is `slot` (the hash tag of metadata keys of that slot).
pub fn slot_tag(slot: u16) -> &'static [u8] {
    &tags()[usize::from(slot & (SLOT_COUNT - 1))]
}

/// The hidden key holding `key`'s CRDT state: `__crdt__{<tag>}<key>`, where `<tag>` hashes to
/// `key`'s slot, so the proxy routes both to the same shard whatever `key` looks like.
pub fn meta_key(key: &[u8]) -> Vec<u8> {
    let tag = slot_tag(key_slot(key));
    let mut out = Vec::with_capacity(META_PREFIX.len() + tag.len() + 2 + key.len());
    out.extend_from_slice(META_PREFIX);
    out.push(b'{');
    out.extend_from_slice(tag);
    out.push(b'}');
    out.extend_from_slice(key);
    out
}

/// The client's key a metadata key is about, or `None` when `meta` is not a metadata key.
pub fn user_key(meta: &[u8]) -> Option<&[u8]> {
    let rest = meta.strip_prefix(META_PREFIX)?.strip_prefix(b"{")?;
    let close = rest.iter().position(|&b| b == b'}')?;
    Some(&rest[close + 1..])
}

/// Whether clients must never see or name `key` (metadata, op log, positions).
pub fn is_hidden(key: &[u8]) -> bool {
    flotilla_crdt::is_meta_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_a_short_tag_of_that_slot() {
        for slot in 0..SLOT_COUNT {
            let tag = slot_tag(slot);
            assert_eq!(key_slot(tag), slot);
            assert!(tag.len() <= 3, "slot {slot}: {tag:?}");
            assert!(!tag.contains(&b'{') && !tag.contains(&b'}'));
        }
    }

    #[test]
    fn meta_keys_share_their_keys_slot_and_name_them_back() {
        for key in [
            &b"foo"[..],
            b"",
            b"{user1}.x",
            b"a{}b",
            b"}{",
            b"__crdt__x",
            b"\xff\x00",
        ] {
            let meta = meta_key(key);
            assert_eq!(key_slot(&meta), key_slot(key), "{key:?}");
            assert_eq!(user_key(&meta), Some(key));
            assert!(is_hidden(&meta));
        }
        assert_eq!(user_key(OPLOG_KEY), None);
        assert_eq!(user_key(b"foo"), None);
        assert_eq!(
            meta_key(b"foo"),
            b"__crdt__{"
                .iter()
                .chain(slot_tag(12182))
                .chain(b"}foo")
                .copied()
                .collect::<Vec<u8>>()
        );
    }
}
