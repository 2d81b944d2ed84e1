//! Sync state and lag per (CRDB, peer, shard): what the pullers on this node record and what
//! metrics, REST (`crdt_sources`) and `flotilla status` show.
//!
//! Redis Software's words: a bdb's `crdt_sources[{uri, status, lag, last_error}]`, the syncer
//! status gauge `bdb_crdt_syncer_status` (0 in sync, 1 syncing, 2 out of sync), the lag gauge
//! `database_syncer_lag_ms`, and `INFO crdt`'s `crdt_sync_full` / `crdt_sync_partial_ok`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flotilla_crdt::Millis;
pub use flotilla_model::crdb_sync::{SourceReport, SyncStatus};

/// Which link a source is: the local instance's shard `shard` pulling peer `peer_instance_id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceKey {
    /// The CRDB.
    pub crdb_guid: String,
    /// The peer instance pulled from.
    pub peer_instance_id: u16,
    /// The shard index.
    pub shard: u16,
}

/// What a puller records of its source.
#[derive(Debug, Clone)]
pub(crate) struct SourceState {
    pub bdb_uid: u64,
    pub peer_cluster: String,
    pub uri: String,
    pub status: SyncStatus,
    pub applied: u64,
    pub peer_last: u64,
    /// Origin time of the oldest op known not applied yet (an upper bound of its age).
    pub oldest_unapplied_ts: Option<Millis>,
    /// When the peer last answered.
    pub last_contact: Millis,
    pub full_syncs: u64,
    pub partial_syncs: u64,
    pub held_protocol: Option<u16>,
    pub last_error: Option<String>,
}

impl SourceState {
    pub(crate) fn new(bdb_uid: u64, peer_cluster: String, now: Millis) -> Self {
        SourceState {
            bdb_uid,
            peer_cluster,
            uri: String::new(),
            status: SyncStatus::OutOfSync,
            applied: 0,
            peer_last: 0,
            oldest_unapplied_ts: None,
            last_contact: now,
            full_syncs: 0,
            partial_syncs: 0,
            held_protocol: None,
            last_error: None,
        }
    }

    /// The lag in ms at `now` (see [`SourceReport::lag`]).
    pub(crate) fn lag_ms(&self, now: Millis) -> u64 {
        match self.status {
            SyncStatus::OutOfSync => now.saturating_sub(self.last_contact),
            _ if self.applied >= self.peer_last => 0,
            _ => self
                .oldest_unapplied_ts
                .map_or(0, |ts| now.saturating_sub(ts)),
        }
    }

    fn report(&self, key: &SourceKey, now: Millis) -> SourceReport {
        SourceReport {
            crdb_guid: key.crdb_guid.clone(),
            bdb_uid: self.bdb_uid,
            peer_instance_id: key.peer_instance_id,
            peer_cluster: self.peer_cluster.clone(),
            shard: key.shard,
            uri: self.uri.clone(),
            status: self.status,
            status_code: self.status.code(),
            lag: self.lag_ms(now),
            ops_lag: self.peer_last.saturating_sub(self.applied),
            applied: self.applied,
            crdt_sync_full: self.full_syncs,
            crdt_sync_partial_ok: self.partial_syncs,
            held_protocol: self.held_protocol,
            last_error: self.last_error.clone(),
        }
    }
}

/// The sync state of every puller running on this node. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct SyncSources {
    inner: Arc<Mutex<BTreeMap<SourceKey, SourceState>>>,
}

impl SyncSources {
    /// Every source on this node, at `now`.
    pub fn reports(&self, now: Millis) -> Vec<SourceReport> {
        let inner = self.inner.lock().expect("sync sources lock");
        inner.iter().map(|(k, s)| s.report(k, now)).collect()
    }

    /// The sources of one CRDB on this node, at `now`.
    pub fn reports_of(&self, guid: &str, now: Millis) -> Vec<SourceReport> {
        let mut reports = self.reports(now);
        reports.retain(|r| r.crdb_guid == guid);
        reports
    }

    /// Starts recording `key` (a puller starts), keeping its counters if it was recorded.
    pub(crate) fn start(&self, key: &SourceKey, bdb_uid: u64, peer_cluster: &str, now: Millis) {
        let mut inner = self.inner.lock().expect("sync sources lock");
        inner
            .entry(key.clone())
            .or_insert_with(|| SourceState::new(bdb_uid, peer_cluster.to_string(), now));
    }

    /// Stops recording `key` (its puller stopped: the shard's master moved off this node).
    pub(crate) fn remove(&self, key: &SourceKey) {
        self.inner.lock().expect("sync sources lock").remove(key);
    }

    /// Changes `key`'s record.
    pub(crate) fn update(&self, key: &SourceKey, change: impl FnOnce(&mut SourceState)) {
        let mut inner = self.inner.lock().expect("sync sources lock");
        if let Some(state) = inner.get_mut(key) {
            change(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_zero_when_caught_up_and_grows_from_the_oldest_unapplied_op() {
        let mut state = SourceState::new(1, "b".into(), 1_000);
        assert_eq!(state.lag_ms(1_500), 500, "out of sync: since last contact");
        state.status = SyncStatus::Syncing;
        state.peer_last = 10;
        state.applied = 4;
        state.oldest_unapplied_ts = Some(1_200);
        assert_eq!(state.lag_ms(1_500), 300);
        state.applied = 10;
        state.status = SyncStatus::InSync;
        assert_eq!(state.lag_ms(9_000), 0);
    }

    #[test]
    fn a_report_carries_redis_softwares_names() {
        let sources = SyncSources::default();
        let key = SourceKey {
            crdb_guid: "g".into(),
            peer_instance_id: 2,
            shard: 0,
        };
        sources.start(&key, 7, "east", 0);
        sources.update(&key, |s| {
            s.status = SyncStatus::InSync;
            s.full_syncs = 1;
        });
        let report = serde_json::to_value(&sources.reports_of("g", 0)[0]).unwrap();
        assert_eq!(report["status"], "in_sync");
        assert_eq!(report["status_code"], 0);
        assert_eq!(report["crdt_sync_full"], 1);
        assert_eq!(report["lag"], 0);
        assert!(sources.reports_of("other", 0).is_empty());
    }
}
