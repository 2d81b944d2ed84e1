//! The action runner: drives every running action on the primary node, one step at a time.
//!
//! After each step the next step is recorded in the store (`UpdateAction`); a step is safe to
//! run again, so when the primary node dies the next primary's runner picks the action up at
//! the recorded step. A failing step's [`StepError`] says whether to run it again at once, after
//! a pause, or never ([`retry_after`]); once retries are used up the action is marked failed
//! with the error. Cancellation is honoured only at a plan's safe boundaries. The plan itself
//! comes from the model ([`flotilla_model::plan`]), the one place that derives it.

pub mod cluster_upgrade;
pub mod db_upgrade;
mod error;
pub mod maintenance;
pub mod migrate;
pub mod node_remove;
mod rolling;

pub use error::{Retry, StepError};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_model::{
    now_secs, plan, Action, ActionKind, ActionStatus, ActionUid, ActionUpdate, Command, StepRecord,
};
use flotilla_store::{StoreError, Wakes};
use tokio::sync::watch;
use tracing::Instrument;

use crate::Observer;

/// How often the runner looks for actions to drive when the store does not change (it also
/// looks on every change, so a new action starts at once).
const SCAN_EVERY: Duration = Duration::from_millis(300);
/// Runs of a step whose error says [`Retry::Now`] before the action fails.
const NOW_ATTEMPTS: u32 = 3;
/// Pause before a step runs again at once: a lost request is sent again, without spinning.
const NOW_PAUSE: Duration = Duration::from_millis(100);
/// Runs of a step whose error says [`Retry::Later`] before the action fails.
const LATER_ATTEMPTS: u32 = 5;
/// First pause before a step runs again later; it doubles with each run (1, 2, 4, 8 s: the
/// cluster gets 15 s to settle, e.g. to see its nodes up again after a primary node change).
const LATER_PAUSE: Duration = Duration::from_secs(1);

/// Drives running actions while this node is the primary node, until `shutdown` fires.
pub async fn run_actions(observer: Observer, shutdown: watch::Receiver<bool>) {
    let driving: Arc<Mutex<HashSet<ActionUid>>> = Arc::default();
    let changes = observer.store.subscribe();
    let mut wakes = Wakes::on_change_or_every(changes, SCAN_EVERY, shutdown);
    while wakes.next().await.is_some() {
        if !observer.store.is_primary_node() {
            continue;
        }
        let state = observer.store.state();
        for action in state.actions.values().filter(|a| a.is_running()) {
            if !driving.lock().expect("runner lock").insert(action.uid) {
                continue;
            }
            let observer = observer.clone();
            let driving = driving.clone();
            let uid = action.uid;
            tokio::spawn(
                async move {
                    drive(&observer, uid).await;
                    driving.lock().expect("runner lock").remove(&uid);
                }
                .in_current_span(),
            );
        }
    }
}

async fn drive(observer: &Observer, uid: ActionUid) {
    loop {
        if !observer.store.is_primary_node() {
            return;
        }
        let state = observer.store.state();
        let Some(action) = state.actions.get(&uid).cloned() else {
            return;
        };
        if !action.is_running() {
            return;
        }
        // Recomputed from the persisted kind: the same on every primary node.
        let steps = plan(&action.kind, &state);
        let index = action.step_index as usize;
        let Some(step) = steps.get(index) else {
            record(
                observer,
                &action,
                ActionStatus::Completed,
                index,
                "done",
                None,
            )
            .await;
            return;
        };
        let name = step.name();
        if action.cancel_requested && step.cancel_point {
            record(
                observer,
                &action,
                ActionStatus::Cancelled,
                index,
                &name,
                None,
            )
            .await;
            return;
        }
        let span = tracing::info_span!(
            "action_step",
            action = uid,
            kind = action.kind.name(),
            object = %action.kind.object(),
            step = %name,
        );
        let next = steps.get(index + 1).map(|s| s.name());
        if !run_step(observer, &action, index, name, next)
            .instrument(span)
            .await
        {
            return;
        }
    }
}

/// Runs step `index` of `action` (named `name`, followed by `next`) and records its outcome:
/// true when the runner goes on with the next step.
async fn run_step(
    observer: &Observer,
    action: &Action,
    index: usize,
    name: String,
    next: Option<String>,
) -> bool {
    let started = std::time::Instant::now();
    match run_step_with_retries(observer, action, index, &name).await {
        Ok(()) => {
            let status = match next {
                Some(_) => ActionStatus::Running,
                None => ActionStatus::Completed,
            };
            let next = next.unwrap_or_else(|| "done".into());
            let finished = StepRecord {
                step: name,
                duration_ms: started.elapsed().as_millis() as u64,
            };
            record_step(observer, action, status, index + 1, &next, finished).await;
            true
        }
        // Leadership moved: the new primary node resumes from the recorded step.
        Err(_) if !observer.store.is_primary_node() => false,
        Err(e) => {
            let status = if e.retry == Retry::Operator {
                tracing::warn!(reason = %e, "action paused for the operator");
                ActionStatus::Paused
            } else {
                tracing::error!(error = %e, retry = ?e.retry, "action failed");
                ActionStatus::Failed
            };
            record(observer, action, status, index, &name, Some(e.message)).await;
            false
        }
    }
}

/// The runner's retry rule: after `runs` failed runs of a step, the last one failing with
/// `error`, the pause before running it again, or `None` when the action fails now.
pub(crate) fn retry_after(error: &StepError, runs: u32) -> Option<Duration> {
    match error.retry {
        Retry::Now if runs < NOW_ATTEMPTS => Some(NOW_PAUSE),
        Retry::Later if runs < LATER_ATTEMPTS => {
            Some(LATER_PAUSE * 2u32.pow(runs.saturating_sub(1)))
        }
        Retry::Now | Retry::Later | Retry::Never | Retry::Operator => None,
    }
}

/// Runs step `index` (named `name`) until it succeeds or [`retry_after`] gives up. It reaches
/// the step's failpoints (`name@before` as its first run starts, `name@after` once a run's side
/// effect is done, before the runner records it), so every step of every plan can be paused,
/// failed or crashed in ([`flotilla_store::failpoint`]).
async fn run_step_with_retries(
    observer: &Observer,
    action: &Action,
    index: usize,
    name: &str,
) -> Result<(), StepError> {
    let mut runs = 0;
    loop {
        if !observer.store.is_primary_node() {
            return Err(StepError::now("this node stopped being the primary node"));
        }
        let result = run_step_once(observer, action, index, name, runs == 0).await;
        runs += 1;
        let Err(e) = result else {
            return Ok(());
        };
        let Some(pause) = retry_after(&e, runs) else {
            return Err(e);
        };
        tracing::warn!(runs, retry = ?e.retry, error = %e, "action step failed; running it again in {pause:?}");
        tokio::time::sleep(pause).await;
    }
}

/// One run of step `index` between its failpoints (the `before` one on the `first` run only,
/// so a pause is not repeated by the step's retries).
async fn run_step_once(
    observer: &Observer,
    action: &Action,
    index: usize,
    name: &str,
    first: bool,
) -> Result<(), StepError> {
    use flotilla_store::failpoint::{hit, Phase};
    let injected = |e: flotilla_store::failpoint::FailpointError| StepError::now(e.to_string());
    if first {
        hit(name, Phase::Before).await.map_err(injected)?;
    }
    run_kind_step(observer, action, index).await?;
    hit(name, Phase::After).await.map_err(injected)
}

/// Runs step `index` of `action` by its kind's step runner.
async fn run_kind_step(
    observer: &Observer,
    action: &Action,
    index: usize,
) -> Result<(), StepError> {
    match &action.kind {
        ActionKind::DbUpgrade { .. } => db_upgrade::run_step(observer, action, index).await,
        ActionKind::ShardMigrate(shard_move) => {
            migrate_step(observer, action, shard_move, index).await
        }
        ActionKind::NodeRemove { .. } => node_remove::run_step(observer, action, index).await,
        ActionKind::ClusterUpgrade(_) => cluster_upgrade::run_step(observer, action, index).await,
        ActionKind::MaintenanceOn(_) | ActionKind::MaintenanceOff(_) => {
            maintenance::run_step(observer, action, index).await
        }
    }
}

/// Runs step `index` of a shard migration.
async fn migrate_step(
    observer: &Observer,
    action: &Action,
    shard_move: &flotilla_model::ShardMove,
    index: usize,
) -> Result<(), StepError> {
    let step = planned_step(observer, action, index)?;
    migrate::run_op(observer, shard_move, step.op).await
}

/// Step `index` of the action's plan as the state stands now; an error that is never retried
/// when the plan has no such step.
pub(super) fn planned_step(
    observer: &Observer,
    action: &Action,
    index: usize,
) -> Result<flotilla_model::Step, StepError> {
    let mut steps = plan(&action.kind, &observer.store.state());
    if index >= steps.len() {
        return Err(StepError::never(format!(
            "action {}: step {index} is not in its plan ({} steps)",
            action.uid,
            steps.len()
        )));
    }
    Ok(steps.swap_remove(index))
}

async fn record_step(
    observer: &Observer,
    action: &Action,
    status: ActionStatus,
    step_index: usize,
    step: &str,
    finished: StepRecord,
) {
    propose_update(
        observer,
        action,
        status,
        step_index,
        step,
        None,
        Some(finished),
    )
    .await
}

async fn record(
    observer: &Observer,
    action: &Action,
    status: ActionStatus,
    step_index: usize,
    step: &str,
    error: Option<String>,
) {
    propose_update(observer, action, status, step_index, step, error, None).await
}

#[allow(clippy::too_many_arguments)]
async fn propose_update(
    observer: &Observer,
    action: &Action,
    status: ActionStatus,
    step_index: usize,
    step: &str,
    error: Option<String>,
    finished: Option<StepRecord>,
) {
    let command = Command::UpdateAction(ActionUpdate {
        uid: action.uid,
        status,
        step_index: step_index as u32,
        step: step.to_string(),
        error,
        updated_at: now_secs(),
        finished,
        expected_step: Some(action.step_index),
    });
    match observer.store.propose(command).await {
        Ok(_) => {}
        // Another runner (a former primary node) recorded this step first: the state says where
        // the action is, and the runner goes on from there.
        Err(e @ StoreError::Refused(_)) => {
            tracing::warn!(action = action.uid, error = %e, "the action's progress was not recorded: refused")
        }
        Err(e) => {
            tracing::error!(action = action.uid, error = %e, "could not record the action's progress; it will be resumed from its last recorded step")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pause after each of the first `runs` failed runs of a step failing with `e`.
    fn pauses(e: &StepError, runs: u32) -> Vec<Option<Duration>> {
        (1..=runs).map(|run| retry_after(e, run)).collect()
    }

    #[test]
    fn a_step_that_cannot_succeed_fails_the_action_at_once() {
        let e = StepError::never("database 1 has no replication");
        assert_eq!(retry_after(&e, 1), None);
    }

    #[test]
    fn a_lost_request_is_sent_again_at_once_a_bounded_number_of_times() {
        let e = StepError::now("node 127.0.0.12:3333 did not answer");
        assert_eq!(
            pauses(&e, NOW_ATTEMPTS),
            [Some(NOW_PAUSE), Some(NOW_PAUSE), None]
        );
        assert!(
            NOW_PAUSE < Duration::from_secs(1),
            "at once, not after a pause"
        );
    }

    #[test]
    fn a_cluster_not_ready_yet_gets_growing_pauses_then_the_action_fails() {
        let e = StepError::later("slot range 0-16383 of database 1 has no primary shard");
        let s = Duration::from_secs;
        assert_eq!(
            pauses(&e, LATER_ATTEMPTS),
            [Some(s(1)), Some(s(2)), Some(s(4)), Some(s(8)), None]
        );
    }

    #[test]
    fn runs_count_together_whatever_each_error_said() {
        // A step that failed later twice and then lost a request has used up its quick runs.
        let now = StepError::now("lost");
        assert_eq!(retry_after(&now, NOW_ATTEMPTS), None);
        let later = StepError::later("not ready");
        assert!(retry_after(&later, NOW_ATTEMPTS).is_some());
    }
}
