//! Pruning finished actions, so the state (and every snapshot) stays bounded however many
//! actions run.
//!
//! Pruning is a command ([`Command::PruneActions`], listing the actions to drop) that the
//! primary node proposes, not a rule each member applies by itself: a 0.1.0 member would not
//! apply a rule it does not know, so its state would drift from the others' (and so would the
//! snapshots it sends and the state comparison of mixed clusters). A command is applied alike by
//! every member; it is gated to cluster version 0.2.0, so while a 0.1.0 node is a member
//! nothing is pruned and every member keeps every action, as 0.1.0 does.

use std::time::Duration;

use flotilla_model::{now_secs, ActionPruning, Command};
use tokio::sync::watch;

use crate::{Store, StoreError, Wakes};

/// How often the primary node looks for finished actions to prune.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// The most actions one pruning command lists (the first pruning of a long history takes a few).
const PRUNE_BATCH: usize = 500;

impl Store {
    /// Drops the finished actions beyond what the model keeps
    /// ([`flotilla_model::ClusterState::prunable_actions`]); returns how many. Refused while
    /// the cluster version is below 0.2.0.
    pub async fn prune_finished_actions(&self) -> Result<usize, StoreError> {
        let mut pruned = 0;
        loop {
            let doomed = self.state().prunable_actions(now_secs());
            if doomed.is_empty() {
                return Ok(pruned);
            }
            let uids: Vec<_> = doomed.into_iter().take(PRUNE_BATCH).collect();
            let count = uids.len();
            self.propose(Command::PruneActions(ActionPruning { uids }))
                .await?;
            pruned += count;
        }
    }
}

/// Prunes finished actions every [`PRUNE_EVERY`] while this node is the primary node and the
/// cluster version allows it, until `shutdown`.
pub async fn run_pruning(store: Store, shutdown: watch::Receiver<bool>) {
    let mut wakes = Wakes::every(PRUNE_EVERY, shutdown);
    let probe = Command::PruneActions(ActionPruning { uids: Vec::new() });
    while wakes.next().await.is_some() {
        if !store.is_primary_node() || store.state().check_proposable(&probe).is_err() {
            continue;
        }
        match store.prune_finished_actions().await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned finished actions"),
            Err(e) => tracing::warn!(error = %e, "pruning finished actions"),
        }
    }
}
