//! The action runner: drives every running action on the primary node, one step at a time.
//!
//! After each step the next step is recorded in the store (`UpdateAction`); a step is safe to
//! run again, so when the primary node dies the next primary's runner picks the action up at
//! the recorded step. A failing step is retried a few times before the action is marked failed
//! with the error. Cancellation is honoured only at a plan's safe boundaries. The plan itself
//! comes from the model ([`flotilla_model::plan`]), the one place that derives it.

pub mod db_upgrade;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_model::{
    now_secs, plan, Action, ActionKind, ActionStatus, ActionUid, ActionUpdate, Command, StepRecord,
};
use flotilla_store::Wakes;
use tokio::sync::watch;

use crate::Observer;

/// How often the runner looks for actions to drive when the store does not change (it also
/// looks on every change, so a new action starts at once).
const SCAN_EVERY: Duration = Duration::from_millis(300);
/// Attempts of one step before the action fails.
const STEP_ATTEMPTS: u32 = 3;

/// Drives running actions while this node is the primary node, until `shutdown` fires.
pub async fn run_actions(observer: Observer, shutdown: watch::Receiver<bool>) {
    let driving: Arc<Mutex<HashSet<ActionUid>>> = Arc::default();
    let changes = observer.store.subscribe();
    let mut wakes = Wakes::on_change_or_every(changes, SCAN_EVERY, shutdown);
    while wakes.next().await.is_some() {
        if !observer.store.is_leader() {
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
            tokio::spawn(async move {
                drive(&observer, uid).await;
                driving.lock().expect("runner lock").remove(&uid);
            });
        }
    }
}

async fn drive(observer: &Observer, uid: ActionUid) {
    loop {
        if !observer.store.is_leader() {
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
        failpoint(&name).await;
        let started = std::time::Instant::now();
        match run_step_with_retries(observer, &action, index).await {
            Ok(()) => {
                let next = steps
                    .get(index + 1)
                    .map(|s| s.name())
                    .unwrap_or_else(|| "done".into());
                let status = if index + 1 >= steps.len() {
                    ActionStatus::Completed
                } else {
                    ActionStatus::Running
                };
                let finished = StepRecord {
                    step: name,
                    duration_ms: started.elapsed().as_millis() as u64,
                };
                record_step(observer, &action, status, index + 1, &next, finished).await;
            }
            Err(_) if !observer.store.is_leader() => {
                // Leadership moved: the new primary node resumes from the recorded step.
                return;
            }
            Err(e) => {
                tracing::error!(action = uid, step = %name, error = %e, "action failed");
                record(
                    observer,
                    &action,
                    ActionStatus::Failed,
                    index,
                    &name,
                    Some(e),
                )
                .await;
                return;
            }
        }
    }
}

async fn run_step_with_retries(
    observer: &Observer,
    action: &Action,
    index: usize,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 1..=STEP_ATTEMPTS {
        if !observer.store.is_leader() {
            return Err("this node stopped being the primary node".into());
        }
        let result = match &action.kind {
            ActionKind::DbUpgrade { .. } => db_upgrade::run_step(observer, action, index).await,
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(action = action.uid, attempt, error = %e, "action step failed; retrying");
                last = e;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Err(last)
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
    if let Err(e) = observer.store.propose(command).await {
        tracing::error!(action = action.uid, error = %e, "could not record the action's progress; it will be resumed from its last recorded step");
    }
}

/// Test hook (fault injection at named steps, also `switchover:fenced` inside a switchover):
/// when `FLOTILLA_FAILPOINT_PAUSE_STEP` names the step or its operation, the step waits `FLOTILLA_FAILPOINT_PAUSE_MS` (default 3000) before it
/// runs, so a test can kill -9 the primary node while the action is in that step.
pub(crate) async fn failpoint(step: &str) {
    let Ok(wanted) = std::env::var("FLOTILLA_FAILPOINT_PAUSE_STEP") else {
        return;
    };
    // The whole step name or its operation (`switchover` matches `switchover 0-16383`, not
    // `switchover:fenced`).
    let matches = step == wanted || step.starts_with(&format!("{wanted} "));
    if wanted.is_empty() || !matches {
        return;
    }
    let ms = std::env::var("FLOTILLA_FAILPOINT_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    tracing::warn!(step, ms, "failpoint: pausing before the step");
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
