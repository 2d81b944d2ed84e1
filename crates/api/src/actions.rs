//! `/v1/bdbs/{uid}/upgrade` and `/v1/actions`: starting, following, cancelling and resuming
//! actions.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use flotilla_model::rest::{ActionInfo, BdbUpgrade, PlanStepInfo};
use flotilla_model::{
    now_secs, plan, Action, ActionCancellation, ActionCreation, ActionKind, ActionResumption,
    ActionStatus, ActionUid, ClusterState, Command, CommandResult, DataPersistence, EngineVersion,
    StepState,
};

use crate::bdbs::DEFAULT_ENGINE;
use crate::handlers::parse;
use crate::propose::{propose, Change};
use crate::{ApiContext, ApiError};

fn info(state: &ClusterState, action: &Action) -> ActionInfo {
    let steps: Vec<PlanStepInfo> = plan(&action.kind, state)
        .iter()
        .enumerate()
        .map(|(i, step)| PlanStepInfo {
            name: step.name(),
            op: step.op.name().to_string(),
            cancel_point: step.cancel_point,
            state: StepState::at(i, action.step_index, action.status),
        })
        .collect();
    ActionInfo {
        action_uid: action.uid,
        name: action.kind.name().to_string(),
        object: action.kind.object(),
        status: action.status,
        pending_ops: action.step.clone(),
        step_index: action.step_index,
        steps_total: action.steps_total,
        progress: 100.0 * f64::from(action.step_index) / f64::from(action.steps_total.max(1)),
        steps: steps.iter().map(|s| s.name.clone()).collect(),
        error: action.error.clone(),
        cancel_requested: action.cancel_requested,
        history: action.history.clone(),
        kind: action.kind.clone(),
        plan: steps,
    }
}

/// Parses a uid from a route, naming what it should be.
pub(crate) fn parse_uid(what: &str, text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::invalid(
            "uid",
            format!("'{text}' is not a {what} uid (a positive integer)"),
        )
    })
}

/// `POST /v1/bdbs/{uid}/upgrade` (Redis Software's field names), answering the new action.
pub(crate) async fn upgrade(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Json<ActionInfo>, ApiError> {
    let bdb_uid = parse_uid("database", &uid)?;
    let request: BdbUpgrade = if body.is_empty() {
        BdbUpgrade::default()
    } else {
        parse("upgrade", &body)?
    };
    let state = context.store.state();
    let bdb = state.bdbs.get(&bdb_uid).ok_or_else(|| {
        ApiError::not_found(format!(
            "database {bdb_uid} does not exist; `flotilla db list` lists them"
        ))
    })?;
    let target: EngineVersion = match &request.redis_version {
        Some(text) => text
            .parse()
            .map_err(|e| ApiError::invalid("redis_version", e))?,
        None => DEFAULT_ENGINE,
    };
    let current = bdb.spec.redis_version;
    if target < current {
        return Err(ApiError::invalid(
            "redis_version",
            format!("database '{}' runs {current}; {target} would be a downgrade, which replication cannot do (a newer engine never feeds an older one). Pick {current} or newer", bdb.spec.name),
        ));
    }
    if target == current && !request.force_restart {
        return Err(ApiError::invalid(
            "redis_version",
            format!("database '{}' already runs {current}; pass force_restart (--force-restart) to restart its shards anyway", bdb.spec.name),
        ));
    }
    let persistent = bdb.spec.data_persistence != DataPersistence::Disabled;
    if request.may_discard_data && persistent && !request.force_discard {
        return Err(ApiError::invalid(
            "may_discard_data",
            format!("database '{}' is persistent ({:?}); discarding its data needs force_discard (--force-discard) too", bdb.spec.name, bdb.spec.data_persistence),
        ));
    }
    let parallel_shards = request.parallel_shards_upgrade.unwrap_or(1);
    if parallel_shards == 0 {
        return Err(ApiError::invalid(
            "parallel_shards_upgrade",
            "must be at least 1",
        ));
    }
    let original_primaries = state.primaries_of(bdb_uid).iter().map(|s| s.uid).collect();
    let raise_crdt_protocol = raised_protocol(&bdb.spec, request.keep_crdt_protocol_version);
    let kind = ActionKind::DbUpgrade {
        bdb_uid,
        redis_version: target,
        preserve_roles: request.preserve_roles,
        parallel_shards,
        discard_data: request.may_discard_data,
        original_primaries,
        raise_crdt_protocol,
    };
    start(context.clone(), kind).await
}

/// The protocol version a CRDB instance's upgrade moves it to (the newest this cluster speaks,
/// recorded in the action and raised by its `finalize` step); none for a plain database, with
/// `--keep-crdt-protocol-version`, or when it already runs the newest.
fn raised_protocol(spec: &flotilla_model::BdbSpec, keep: bool) -> Option<u16> {
    let crdt = spec.crdt.as_ref()?;
    tracing::info!(keep_crdt_protocol_version = keep, guid = %crdt.crdt_guid, "upgrading a CRDB instance");
    let newest = crate::crdbs::newest_protocol();
    (!keep && crdt.crdt_protocol_version < newest).then_some(newest)
}

/// Creates the action `kind` and answers it as `GET /v1/actions/{uid}` would: what every
/// route that starts an action ends with.
pub(crate) async fn start(
    context: ApiContext,
    kind: ActionKind,
) -> Result<Json<ActionInfo>, ApiError> {
    let steps = plan(&kind, &context.store.state());
    let (asked, created_at) = (kind.clone(), now_secs());
    let change = Change {
        command: Command::CreateAction(ActionCreation {
            action: kind,
            steps_total: steps.len() as u32,
            first_step: steps.first().map(|s| s.name()).unwrap_or_default(),
            created_at,
        }),
        applied: |state: &ClusterState| {
            let action = state
                .actions
                .values()
                .find(|a| a.kind == asked && a.created_at == created_at)?;
            Some(CommandResult::ActionCreated { uid: action.uid })
        },
        check: "flotilla action list".into(),
    };
    let outcome = propose(&context, change).await?;
    let CommandResult::ActionCreated { uid } = outcome else {
        return Err(ApiError::from(flotilla_store::StoreError::Internal(
            "unexpected outcome".into(),
        )));
    };
    // Proposed through the primary node: wait until this node applied it before reading.
    context
        .store
        .wait_until(APPLY_WAIT, |s| s.actions.contains_key(&uid))
        .await;
    get_action(State(context), Path(uid.to_string())).await
}

/// How long a handler waits for its own change to be applied on this node before answering.
pub(crate) const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /v1/actions`.
pub(crate) async fn list(State(context): State<ApiContext>) -> Json<Vec<ActionInfo>> {
    let state = context.store.state();
    Json(state.actions.values().map(|a| info(&state, a)).collect())
}

fn find(state: &ClusterState, uid: ActionUid) -> Result<&Action, ApiError> {
    state.actions.get(&uid).ok_or_else(|| {
        ApiError::not_found(format!(
            "action {uid} does not exist; `flotilla action list` lists them"
        ))
    })
}

/// `GET /v1/actions/{uid}`.
pub(crate) async fn get_action(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<ActionInfo>, ApiError> {
    let uid = parse_uid("action", &uid)?;
    let state = context.store.state();
    Ok(Json(info(&state, find(&state, uid)?)))
}

/// `POST /v1/actions/{uid}/cancel`: the action stops at its next safe boundary.
pub(crate) async fn cancel(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<ActionInfo>, ApiError> {
    let action_uid = parse_uid("action", &uid)?;
    find(&context.store.state(), action_uid)?;
    let change = Change {
        command: Command::CancelAction(ActionCancellation { uid: action_uid }),
        applied: |state: &ClusterState| {
            let action = state.actions.get(&action_uid)?;
            action.cancel_requested.then_some(CommandResult::Ok)
        },
        check: format!("flotilla action show {action_uid}"),
    };
    propose(&context, change).await?;
    get_action(State(context), Path(uid)).await
}

/// `POST /v1/actions/{uid}/resume`: a paused action (waiting for an operator's work on a
/// machine) or a failed one runs again from the step where it stopped.
pub(crate) async fn resume(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<ActionInfo>, ApiError> {
    let action_uid = parse_uid("action", &uid)?;
    find(&context.store.state(), action_uid)?;
    let change = Change {
        command: Command::ResumeAction(ActionResumption { uid: action_uid }),
        applied: |state: &ClusterState| {
            let action = state.actions.get(&action_uid)?;
            (action.error.is_none() && action.status != ActionStatus::Paused)
                .then_some(CommandResult::Ok)
        },
        check: format!("flotilla action show {action_uid}"),
    };
    propose(&context, change).await?;
    get_action(State(context), Path(uid)).await
}
