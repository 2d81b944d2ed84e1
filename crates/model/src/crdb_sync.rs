//! The sync state of an Active-Active database's links as REST shows it: per (peer instance,
//! shard), what the syncer on the node holding that shard's local master reports
//! (`GET /v1/crdt_sources` on each node; Redis Software's bdb `crdt_sources`).

use serde::{Deserialize, Serialize};

/// Where a puller stands with its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// Connected and caught up: every op the peer had logged at its last answer is applied.
    InSync,
    /// Connected and applying a backlog or a full state transfer.
    Syncing,
    /// Not connected (the peer unreachable, refused, or an error applying).
    OutOfSync,
}

impl SyncStatus {
    /// Redis Software's `bdb_crdt_syncer_status` value: 0 in sync, 1 syncing, 2 out of sync.
    pub fn code(self) -> u8 {
        match self {
            SyncStatus::InSync => 0,
            SyncStatus::Syncing => 1,
            SyncStatus::OutOfSync => 2,
        }
    }
}

/// One source as a report shows it (REST `crdt_sources`, `flotilla status`, metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    /// The CRDB.
    pub crdb_guid: String,
    /// The local database (the CRDB's instance on this cluster).
    pub bdb_uid: u64,
    /// The peer instance pulled from.
    pub peer_instance_id: u16,
    /// The peer's cluster name.
    pub peer_cluster: String,
    /// The shard index.
    pub shard: u16,
    /// The peer URL used last (Redis Software's `uri`).
    pub uri: String,
    /// In sync, syncing or out of sync.
    pub status: SyncStatus,
    /// [`SyncStatus::code`].
    pub status_code: u8,
    /// Lag in ms (Redis Software's `lag`): now minus the origin time of the oldest op not
    /// applied yet; 0 when caught up. While out of sync: the time since the peer last
    /// answered (nothing newer is known).
    pub lag: u64,
    /// Ops the peer had logged that are not applied yet (at its last answer).
    pub ops_lag: u64,
    /// The last entry of the peer's log applied here.
    pub applied: u64,
    /// Full state transfers done (`crdt_sync_full`).
    pub crdt_sync_full: u64,
    /// Resumptions from the stored position without a full transfer (`crdt_sync_partial_ok`).
    pub crdt_sync_partial_ok: u64,
    /// The peer holds its ops because they are of a newer protocol than this instance's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_protocol: Option<u16>,
    /// The last error, while it lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl SyncStatus {
    /// How `flotilla status` words it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::InSync => "in sync",
            SyncStatus::Syncing => "syncing",
            SyncStatus::OutOfSync => "out of sync",
        }
    }
}

impl SourceReport {
    /// One line for `flotilla status`: which link, its state and lag, its resyncs, the error
    /// while it lasts; e.g. `shard 0 <- b (instance 2): in sync, lag 0 ms (0 ops), full syncs
    /// 0, partial syncs 1`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "shard {} <- {} (instance {}): {}, lag {} ms ({} ops), full syncs {}, partial syncs {}",
            self.shard,
            self.peer_cluster,
            self.peer_instance_id,
            self.status.as_str(),
            self.lag,
            self.ops_lag,
            self.crdt_sync_full,
            self.crdt_sync_partial_ok
        );
        if let Some(v) = self.held_protocol {
            line.push_str(&format!(", ops of protocol {v} held by the peer"));
        }
        if let Some(error) = &self.last_error {
            line.push_str(&format!("; last error: {error}"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_keeps_its_json() {
        let sample = r#"{"crdb_guid":"g","bdb_uid":1,"peer_instance_id":2,"peer_cluster":"b","shard":0,"uri":"https://10.0.0.2:9443","status":"out_of_sync","status_code":2,"lag":1500,"ops_lag":3,"applied":40,"crdt_sync_full":1,"crdt_sync_partial_ok":2,"last_error":"peer b: refused"}"#;
        let source: SourceReport = serde_json::from_str(sample).unwrap();
        assert_eq!(source.status, SyncStatus::OutOfSync);
        assert_eq!(source.status.code(), 2);
        assert_eq!(serde_json::to_string(&source).unwrap(), sample);
        assert_eq!(
            source.summary(),
            "shard 0 <- b (instance 2): out of sync, lag 1500 ms (3 ops), full syncs 1, partial syncs 2; last error: peer b: refused"
        );
    }
}
