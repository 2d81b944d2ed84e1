//! Upgrading the cluster's software (`flotilla upgrade cluster`, DESIGN.md "Cluster software";
//! Redis Software's upgrade of every node in turn, the primary node last).
//!
//! `upgrade_node node:N` orders node N's daemon to move to the package in place (the handover
//! of issue 10, or a restart between versions without one) through the internal route
//! [`INTERNAL_NODE_UPGRADE_PATH`], then waits until the cluster lists N on the new version and
//! every shard on N serves again. When N is the primary node it first hands primary-ship away:
//! the new primary node resumes the action at the same step and orders N's upgrade like any
//! other. A node already on the version is done, so the step is safe to run again.
//! `finalize_cluster` records the new cluster version (a no-op once recorded).

use std::time::{Duration, Instant};

use flotilla_model::rest::{
    NodeUpgradeRequest, NodeUpgradeStatus, ReplicaLink, INTERNAL_NODE_UPGRADE_PATH,
};
use flotilla_model::{
    Action, ActionKind, ClusterUpgrade, ClusterVersionFinalization, Command, NodeUid, Op,
};
use flotilla_store::StoreError;

use super::db_upgrade::propose;
use super::node_remove::hand_primary_ship_away;
use super::{rolling, StepError};
use crate::Observer;

/// How long a node may take from the order to serving every shard on the new version.
const NODE_UPGRADE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the step looks at the node's progress.
const POLL: Duration = Duration::from_millis(100);

/// Runs step `index` of a cluster upgrade (idempotent).
pub async fn run_step(observer: &Observer, action: &Action, index: usize) -> Result<(), StepError> {
    let ActionKind::ClusterUpgrade(upgrade) = &action.kind else {
        return Err(StepError::never(format!(
            "action {} is not a cluster upgrade",
            action.uid
        )));
    };
    let step = super::planned_step(observer, action, index)?;
    match (step.op, step.node) {
        (Op::UpgradeNode, Some(node)) => upgrade_node(observer, upgrade, node).await,
        (Op::AddNode, Some(node)) => rolling::add_node(observer, action, upgrade, node).await,
        (Op::DrainNode, Some(node)) => rolling::drain_node(observer, action, upgrade, node).await,
        (Op::LeaveCluster, Some(node)) => rolling::leave(observer, node).await,
        (Op::RejoinNode, Some(node)) => rolling::rejoin_node(observer, action, upgrade, node).await,
        (Op::FinalizeCluster, _) => finalize(observer, &upgrade.version).await,
        _ => Err(StepError::never(format!(
            "'{}' is not a step of a cluster upgrade",
            step.name()
        ))),
    }
}

/// Moves node `node` to the package, then waits until it serves on it.
async fn upgrade_node(
    observer: &Observer,
    upgrade: &ClusterUpgrade,
    node: NodeUid,
) -> Result<(), StepError> {
    if runs_version(observer, node, &upgrade.version)? {
        return wait_serving(observer, node, &upgrade.version).await;
    }
    if observer.store.uid() == Some(node) {
        return hand_primary_ship_away(observer, node).await;
    }
    order_upgrade(observer, upgrade, node).await?;
    wait_serving(observer, node, &upgrade.version).await
}

/// Whether the cluster lists `node` on `version`; an error when the node is gone.
fn runs_version(observer: &Observer, node: NodeUid, version: &str) -> Result<bool, StepError> {
    let state = observer.store.state();
    let record = state.nodes.get(&node).ok_or_else(|| {
        StepError::never(format!(
            "node {node} is no longer in the cluster; start `flotilla upgrade cluster` again for the nodes it has"
        ))
    })?;
    Ok(record.software_version == version)
}

/// Asks node `node`'s daemon to upgrade itself to the package. An order whose answer was lost
/// is not repeated blindly: the step runs again later and first looks at the node's version.
async fn order_upgrade(
    observer: &Observer,
    upgrade: &ClusterUpgrade,
    node: NodeUid,
) -> Result<(), StepError> {
    let store = &observer.store;
    let addr = store.state().nodes.get(&node).map(|n| n.addr);
    let Some(addr) = addr else {
        return Err(StepError::never(format!(
            "node {node} is no longer in the cluster"
        )));
    };
    let request = NodeUpgradeRequest {
        package: upgrade.package.clone(),
    };
    let rpc = store.config().rpc_addr_of(addr);
    let answer: Result<Result<NodeUpgradeStatus, String>, StoreError> = store
        .call_internal(&rpc, INTERNAL_NODE_UPGRADE_PATH, &request)
        .await;
    match answer {
        Ok(Ok(status)) => {
            tracing::info!(node, method = %status.method, from = %status.from_version, to = %status.to_version, "node upgrade under way");
            Ok(())
        }
        Ok(Err(refusal)) => Err(StepError::never(format!(
            "node {node} refused to move to {}: {refusal}",
            upgrade.version
        ))),
        Err(e) => Err(StepError::later(format!(
            "ordering node {node}'s upgrade to {}: {e}",
            upgrade.version
        ))),
    }
}

/// Waits until the cluster lists `node` on `version` and every shard on it serves in its role
/// (replicas linked to their primaries).
async fn wait_serving(observer: &Observer, node: NodeUid, version: &str) -> Result<(), StepError> {
    let deadline = Instant::now() + NODE_UPGRADE_TIMEOUT;
    loop {
        let on_version = runs_version(observer, node, version)?;
        let waiting = shards_not_serving(observer, node);
        if on_version && waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StepError::later(format!(
                "node {node} did not serve on {version} within {NODE_UPGRADE_TIMEOUT:?} (on the version: {on_version}; shards not serving: {waiting:?}); `flotilla check --node {node}`, its flotilla.log and upgrade.json tell more"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The shards on `node` that do not report serving in their role.
fn shards_not_serving(observer: &Observer, node: NodeUid) -> Vec<u64> {
    let state = observer.store.state();
    let reports = observer.shard_reports();
    state
        .shards_on(node)
        .filter(|s| {
            !reports
                .get(&s.uid)
                .is_some_and(|r| r.serves_in(s.role, ReplicaLink::Required))
        })
        .map(|s| s.uid)
        .collect()
}

/// Records `version` as the cluster version once every node runs it.
async fn finalize(observer: &Observer, version: &str) -> Result<(), StepError> {
    let state = observer.store.state();
    if state.cluster_version() == version {
        return Ok(());
    }
    if state.pending_finalization() != Some(version) {
        let lowest = state.lowest_node_version().unwrap_or("unknown");
        return Err(StepError::later(format!(
            "not every node runs {version} yet (the oldest runs {lowest})"
        )));
    }
    propose(
        observer,
        Command::FinalizeClusterVersion(ClusterVersionFinalization {
            version: version.to_string(),
        }),
    )
    .await
}
