//! Maintenance mode routes, in Redis Software's shape: `POST
//! /v1/nodes/{uid}/actions/maintenance_on` and `.../maintenance_off` (`flotilla node
//! maintenance UID on|off`), with Redis Software's body fields.
//!
//! Each request is planned here ([`flotilla_orchestrator::maintenance`]: quorum counting nodes
//! already in maintenance, memory, a slot range's copies never on one node, no other action on
//! what it touches) and refused with the reason and the fix before anything changes; the plan
//! is recorded in the action (`SMMaintenanceOn`, `SMMaintenanceOff`) the primary node runs.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use flotilla_model::rest::ActionInfo;
use flotilla_model::{ActionKind, MaintenanceOffRequest, MaintenanceOnRequest, NodeUid};
use flotilla_orchestrator::lifecycle;
use flotilla_orchestrator::maintenance::{self, OnOptions};

use crate::actions::{parse_uid, start};
use crate::handlers::parse;
use crate::{ApiContext, ApiError};

/// `POST /v1/nodes/{uid}/actions/maintenance_on` (an action).
pub(crate) async fn maintenance_on(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Json<ActionInfo>, ApiError> {
    let node = parse_uid("node", &uid)?;
    let request: MaintenanceOnRequest = parse_or_default("maintenance_on", &body)?;
    let keep_replicas = request
        .keep_replicas()
        .map_err(|e| ApiError::invalid("maintenance_on.keep_slave_shards", e))?;
    let options = OnOptions {
        keep_replicas,
        demote_node: request.demote_node,
        overwrite_snapshot: request.overwrite_snapshot,
    };
    let state = context.store.state();
    check_node(&context, node)?;
    lifecycle::check_not_busy(&state, &lifecycle::bdbs_on(&state, node), &[node])?;
    let observed = lifecycle::observed_settled(&context.observer).await;
    maintenance::check_quorum(&state, node, &context.store.voter_uids(), &observed.nodes)?;
    let on = maintenance::plan_on(&state, node, options, &observed)?;
    let targets: Vec<NodeUid> = on.moves.iter().map(|m| m.to_node).collect();
    lifecycle::check_not_busy(&state, &[], &targets)?;
    start(context, ActionKind::MaintenanceOn(on)).await
}

/// `POST /v1/nodes/{uid}/actions/maintenance_off` (an action).
pub(crate) async fn maintenance_off(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Json<ActionInfo>, ApiError> {
    let node = parse_uid("node", &uid)?;
    let request: MaintenanceOffRequest = parse_or_default("maintenance_off", &body)?;
    let state = context.store.state();
    check_node(&context, node)?;
    lifecycle::check_not_busy(&state, &[], &[node])?;
    let observed = lifecycle::observed_settled(&context.observer).await;
    let off = maintenance::plan_off(&state, node, request.skip_shards_restore, &observed)?;
    let kind = ActionKind::MaintenanceOff(off);
    lifecycle::check_not_busy(&state, &kind.bdb_uids(), &kind.node_uids())?;
    start(context, kind).await
}

/// The body as `T`, or `T`'s defaults when it is empty (Redis Software's fields are optional).
fn parse_or_default<T: serde::de::DeserializeOwned + Default>(
    what: &str,
    body: &Bytes,
) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    parse(what, body)
}

fn check_node(context: &ApiContext, node: NodeUid) -> Result<(), ApiError> {
    if context.store.state().nodes.contains_key(&node) {
        return Ok(());
    }
    Err(ApiError::not_found(format!(
        "node {node} is not in the cluster; `flotilla status` lists the nodes"
    )))
}
