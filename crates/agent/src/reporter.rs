//! The report loop: tells the primary node this node is alive and what it runs, and renews
//! the node's master lease with every report the primary node acknowledges.

use flotilla_model::rest::NodeReport;
use flotilla_model::timing::REPORT_INTERVAL;
use flotilla_model::{Command, NodeChange, NodeSpec};
use flotilla_store::{Store, StoreError};

use crate::shards::ObservedShards;

/// The longest one report waits for its answer: past it the next report is due, and a primary
/// node that does not answer (cut off, or replaced by a new one elected meanwhile) must not
/// hold up the reports that reach the new one, nor the lease they renew.
const REPORT_TIMEOUT: std::time::Duration = REPORT_INTERVAL.saturating_mul(2);

/// Reports to the primary node every [`REPORT_INTERVAL`] until `shutdown` fires, and proposes
/// an `UpdateNode` when the store's record of this node (software version, OS, host facts:
/// `node`) is out of date. Reports no shards; see [`run_reporter_with_shards`].
pub async fn run_reporter(
    store: Store,
    node: NodeSpec,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let no_shards = ObservedShards::default();
    run_reporter_with_shards(store, node, no_shards, shutdown).await
}

/// [`run_reporter`] whose reports carry what the [`crate::ShardAgent`] observes of this node's
/// shards.
pub async fn run_reporter_with_shards(
    store: Store,
    node: NodeSpec,
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
        report_once(&store, &node, &shards).await;
    }
}

async fn report_once(store: &Store, node: &NodeSpec, shards: &ObservedShards) {
    let Some(uid) = store.uid() else { return };
    let report = NodeReport {
        uid,
        software_version: node.software_version.clone(),
        os: node.os.clone(),
        shards: shards.snapshot(),
        total_memory: crate::host::total_memory(),
        problems: node_problems(store, node),
    };
    let sending = std::time::Instant::now();
    let call = store.call_primary_node("/internal/report", &report);
    let Ok(sent) = tokio::time::timeout(REPORT_TIMEOUT, call).await else {
        // A primary node cut off from this node never answers: the next report may reach the
        // one elected meanwhile.
        tracing::debug!("report to the primary node unanswered; reporting again");
        return;
    };
    let sent: Result<(), StoreError> = sent;
    match sent {
        Ok(()) => shards.lease().renew(sending),
        // No primary node to report to, nor to record this node's version through.
        Err(StoreError::NoPrimaryNode(_)) => return,
        Err(e) => tracing::debug!(error = %e, "report to the primary node failed"),
    }
    refresh_own_record(store, uid, node).await;
}

/// Below this many free bytes in the data dir, the node reports it as full: the store's next
/// log entry or a shard's next AOF write may fail.
const DATA_DIR_FULL_BELOW: u64 = 1 << 20;

/// What is wrong on this node itself: its store stopped after a failed write, its data dir is
/// (nearly) full. Each names the file or dir and the fix.
fn node_problems(store: &Store, node: &NodeSpec) -> Vec<String> {
    let mut problems: Vec<String> = store.failure().into_iter().collect();
    let dir = std::path::Path::new(&node.host.data_dir);
    if let Some(free) = flotilla_engine::available_bytes(dir) {
        if free < DATA_DIR_FULL_BELOW {
            problems.push(format!(
                "data dir {} is full ({free} bytes free): the store and persistent shards on this node cannot write; free space on that file system",
                dir.display()
            ));
        }
    }
    problems
}

async fn refresh_own_record(store: &Store, uid: u64, node: &NodeSpec) {
    let state = store.state();
    let Some(record) = state.nodes.get(&uid) else {
        return;
    };
    let same = record.software_version == node.software_version
        && record.os == node.os
        && record.host == node.host;
    if same {
        return;
    }
    let command = Command::UpdateNode(NodeChange {
        uid,
        software_version: node.software_version.clone(),
        os: node.os.clone(),
        host: node.host.clone(),
    });
    if let Err(e) = store.propose(command).await {
        tracing::warn!(error = %e, "could not record this node's software version and OS");
    }
}
