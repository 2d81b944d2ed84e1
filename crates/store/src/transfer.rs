//! How a snapshot of the cluster state travels from the primary node to a node that is too far
//! behind for the log (a joining node, one that was down while the log was purged).
//!
//! openraft 0.9 sends a snapshot through `RaftNetwork::full_snapshot` and installs it on the
//! receiver with `Raft::install_full_snapshot`; its chunked `install_snapshot` RPC is kept for
//! compatibility. Flotilla uses both:
//! - between nodes of this release, the whole snapshot in one binary request
//!   ([`FULL_SNAPSHOT_PATH`], `application/octet-stream`): the vote and the snapshot's meta as a
//!   small JSON head, then the snapshot's bytes as they are ([`encode`], [`decode`]), so any
//!   size of state up to [`MAX_SNAPSHOT_BYTES`] passes in one request;
//! - to a node that does not serve that route (release 0.1.0 answers 404 to the probe), the
//!   chunked JSON RPC on `/raft/snapshot` in chunks of [`LEGACY_CHUNK_BYTES`], small enough
//!   that their JSON (bytes as an array of numbers) fits 0.1.0's 2 MB request limit;
//! - from a 0.1.0 primary node, which sends 3 MiB chunks as JSON (up to ~12 MB each), this
//!   release accepts `/raft/snapshot` bodies up to [`MAX_LEGACY_CHUNK_REQUEST`].

use openraft::{SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, RaftNode};

/// The route a whole snapshot is sent to, in one binary request (`POST`); `GET` on it is the
/// probe that tells whether a node serves it.
pub(crate) const FULL_SNAPSHOT_PATH: &str = "/raft/full_snapshot";

/// The largest snapshot a node accepts in one request on [`FULL_SNAPSHOT_PATH`].
pub(crate) const MAX_SNAPSHOT_BYTES: usize = 1 << 30;

/// Chunk size for the chunked JSON RPC, used only towards nodes without
/// [`FULL_SNAPSHOT_PATH`]: its JSON takes at most 4 characters per byte (`255,`), 1 MiB, well
/// within the 2 MB request limit of release 0.1.0.
pub(crate) const LEGACY_CHUNK_BYTES: u64 = 256 * 1024;

/// The largest chunked-JSON request this release accepts on `/raft/snapshot`: a 0.1.0 primary
/// node sends chunks of openraft's default 3 MiB, at most 4 characters per byte as JSON, plus
/// its meta.
pub(crate) const MAX_LEGACY_CHUNK_REQUEST: usize = 16 << 20;

/// What travels before the snapshot's bytes: the sender's vote (the receiver installs only from
/// a current primary node) and the snapshot's meta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotHead {
    /// The primary node's vote.
    pub vote: Vote<NodeId>,
    /// The snapshot's last log id, membership and id.
    pub meta: SnapshotMeta<NodeId, RaftNode>,
}

/// Bytes of the big-endian length that precedes the JSON head.
const HEAD_LEN_BYTES: usize = 4;

/// The body of a [`FULL_SNAPSHOT_PATH`] request: the head's length (4 bytes, big-endian), the
/// head as JSON, then the snapshot's bytes.
pub(crate) fn encode(head: &SnapshotHead, data: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(head).expect("a snapshot head always encodes");
    let mut body = Vec::with_capacity(HEAD_LEN_BYTES + head.len() + data.len());
    body.extend_from_slice(&(head.len() as u32).to_be_bytes());
    body.extend_from_slice(&head);
    body.extend_from_slice(data);
    body
}

/// Splits a [`FULL_SNAPSHOT_PATH`] body into its head and the snapshot's bytes.
pub(crate) fn decode(body: &[u8]) -> Result<(SnapshotHead, &[u8]), String> {
    let (len, rest) = body
        .split_first_chunk::<HEAD_LEN_BYTES>()
        .ok_or("a snapshot body starts with the length of its head")?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(format!(
            "the snapshot head is {len} bytes but the body has {} after it",
            rest.len()
        ));
    }
    let (head, data) = rest.split_at(len);
    let head = serde_json::from_slice(head).map_err(|e| format!("the snapshot head: {e}"))?;
    Ok((head, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TypeConfig;
    use openraft::raft::InstallSnapshotRequest;
    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};
    use std::collections::{BTreeMap, BTreeSet};

    fn head() -> SnapshotHead {
        let log_id = LogId::new(CommittedLeaderId::new(3, 1), 1200);
        let nodes: BTreeMap<NodeId, RaftNode> = (1..=5)
            .map(|uid| (uid, RaftNode::new(format!("127.0.0.{}:3333", 10 + uid))))
            .collect();
        let voters = BTreeSet::from_iter(1..=5);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(
                Some(log_id),
                Membership::new(vec![voters], nodes),
            ),
            snapshot_id: "3-1-1200".into(),
        };
        SnapshotHead {
            vote: Vote::new_committed(3, 1),
            meta,
        }
    }

    #[test]
    fn a_body_carries_the_head_and_the_bytes_as_they_are() {
        let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let body = encode(&head(), &data);
        assert!(body.len() < data.len() + 1024, "no re-encoding of the data");
        let (decoded, bytes) = decode(&body).expect("decodes");
        assert_eq!(decoded, head());
        assert_eq!(bytes, data.as_slice());
    }

    #[test]
    fn a_cut_body_is_refused() {
        let body = encode(&head(), b"data");
        assert!(decode(&body[..2]).is_err());
        assert!(decode(&body[..10]).is_err());
    }

    /// A chunk sent to a 0.1.0 node, with the bytes that take the most JSON, stays within that
    /// release's 2 MB request limit (axum's default).
    #[test]
    fn a_legacy_chunk_fits_the_request_limit_of_0_1_0() {
        let request = InstallSnapshotRequest::<TypeConfig> {
            vote: head().vote,
            meta: head().meta,
            offset: 40 << 20,
            data: vec![255; LEGACY_CHUNK_BYTES as usize],
            done: false,
        };
        let json = serde_json::to_vec(&request).expect("encodes");
        assert!(json.len() < 2 * 1024 * 1024, "{} bytes", json.len());
        let from_0_1_0 = InstallSnapshotRequest::<TypeConfig> {
            data: vec![255; 3 << 20],
            ..request
        };
        let json = serde_json::to_vec(&from_0_1_0).expect("encodes");
        assert!(
            json.len() < MAX_LEGACY_CHUNK_REQUEST,
            "{} bytes",
            json.len()
        );
    }
}
