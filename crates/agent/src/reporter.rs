//! The report loop: tells the primary node this node is alive and what it runs.

use flotilla_model::rest::NodeReport;
use flotilla_model::timing::REPORT_INTERVAL;
use flotilla_model::{Command, NodeChange};
use flotilla_store::{Store, StoreError};

use crate::shards::ObservedShards;

/// Reports to the primary node every [`REPORT_INTERVAL`] until `shutdown` fires, and proposes
/// an `UpdateNode` when the store's record of this node (software version, OS) is out of date.
/// Reports no shards; see [`run_reporter_with_shards`].
pub async fn run_reporter(
    store: Store,
    software_version: String,
    os: String,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let no_shards = ObservedShards::default();
    run_reporter_with_shards(store, software_version, os, no_shards, shutdown).await
}

/// [`run_reporter`] whose reports carry what the [`crate::ShardAgent`] observes of this node's
/// shards.
pub async fn run_reporter_with_shards(
    store: Store,
    software_version: String,
    os: String,
    shards: ObservedShards,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A shard that came up, went down, changed role or linked to its primary is told at
            // once: failover, switchovers and upgrade steps wait on what the primary node knows.
            _ = shards.changed() => {}
            _ = shutdown.changed() => return,
        }
        report_once(&store, &software_version, &os, &shards).await;
    }
}

async fn report_once(store: &Store, software_version: &str, os: &str, shards: &ObservedShards) {
    let Some(uid) = store.uid() else { return };
    let report = NodeReport {
        uid,
        software_version: software_version.to_string(),
        os: os.to_string(),
        shards: shards.snapshot(),
        total_memory: crate::host::total_memory(),
    };
    let sent: Result<(), StoreError> = store.call_primary_node("/internal/report", &report).await;
    match sent {
        Ok(()) => {}
        // No primary node to report to, nor to record this node's version through.
        Err(StoreError::NoPrimaryNode(_)) => return,
        Err(e) => tracing::debug!(error = %e, "report to the primary node failed"),
    }
    refresh_own_record(store, uid, software_version, os).await;
}

async fn refresh_own_record(store: &Store, uid: u64, software_version: &str, os: &str) {
    let state = store.state();
    let Some(node) = state.nodes.get(&uid) else {
        return;
    };
    if node.software_version == software_version && node.os == os {
        return;
    }
    let command = Command::UpdateNode(NodeChange {
        uid,
        software_version: software_version.to_string(),
        os: os.to_string(),
    });
    if let Err(e) = store.propose(command).await {
        tracing::warn!(error = %e, "could not record this node's software version and OS");
    }
}
