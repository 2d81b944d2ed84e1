//! The node lifecycle routes, in Redis Software's shape: `POST /v1/nodes/{uid}/actions/remove`
//! (`flotilla node remove`), `POST /v1/shards/{uid}/actions/migrate` (`flotilla shard
//! migrate`) and `POST /v1/cluster/actions/change_master` (`flotilla cluster promote`).
//!
//! A removal or a migration is planned here (quorum, memory, a slot range's copies never on
//! one node, no other action on what it touches) and refused with the reason and the fix
//! before anything changes; the plan is recorded in the action the primary node then runs.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_model::rest::{ActionInfo, ClusterInfo, PrimaryNodeChange, ShardMigrateRequest};
use flotilla_model::ActionKind;
use flotilla_orchestrator::lifecycle::{self, LifecycleError};

use crate::actions::{parse_uid, start};
use crate::handlers::parse;
use crate::{ApiContext, ApiError};

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let status = match &e {
            LifecycleError::NotFound(_) => StatusCode::NOT_FOUND,
            LifecycleError::Invalid(_) => StatusCode::BAD_REQUEST,
            LifecycleError::Quorum(_)
            | LifecycleError::Capacity(_)
            | LifecycleError::AntiAffinity(_)
            | LifecycleError::Busy(_) => StatusCode::CONFLICT,
        };
        ApiError {
            status,
            error_code: e.code(),
            description: e.to_string(),
        }
    }
}

/// `POST /v1/nodes/{uid}/actions/remove`: drains the node and removes it (an action).
pub(crate) async fn remove_node(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<ActionInfo>, ApiError> {
    let node = parse_uid("node", &uid)?;
    let state = context.store.state();
    if !state.nodes.contains_key(&node) {
        return Err(ApiError::not_found(format!(
            "node {node} is not in the cluster; `flotilla status` lists the nodes"
        )));
    }
    lifecycle::check_not_busy(&state, &lifecycle::bdbs_on(&state, node), &[node])?;
    let observed = lifecycle::observed_settled(&context.observer).await;
    lifecycle::check_quorum(node, &context.store.voter_uids(), &observed.nodes)?;
    let moves = lifecycle::plan_drain(&state, node, &observed)?;
    let targets: Vec<u64> = moves.iter().map(|m| m.to_node).collect();
    lifecycle::check_not_busy(&state, &[], &targets)?;
    let kind = ActionKind::NodeRemove {
        node_uid: node,
        moves,
    };
    start(context, kind).await
}

/// `POST /v1/shards/{uid}/actions/migrate` with `{"target_node_uid": N}` (an action).
pub(crate) async fn migrate_shard(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Json<ActionInfo>, ApiError> {
    let shard = parse_uid("shard", &uid)?;
    let request: ShardMigrateRequest = parse("migrate", &body)?;
    let to_node = request.target_node_uid;
    let state = context.store.state();
    if let Some(found) = state.shards.get(&shard) {
        let nodes = [found.node_uid, to_node];
        lifecycle::check_not_busy(&state, &[found.bdb_uid], &nodes)?;
    }
    let observed = lifecycle::observed_settled(&context.observer).await;
    let shard_move = lifecycle::plan_migration(&state, shard, to_node, &observed)?;
    start(context, ActionKind::ShardMigrate(shard_move)).await
}

/// `POST /v1/cluster/actions/change_master` with `{"node_uid": N}`: N becomes the primary
/// node, without waiting for an election timeout.
pub(crate) async fn change_master(
    State(context): State<ApiContext>,
    body: Bytes,
) -> Result<Json<ClusterInfo>, ApiError> {
    let request: PrimaryNodeChange = parse("change_master", &body)?;
    let node = request.node_uid;
    if !context.store.state().nodes.contains_key(&node) {
        return Err(ApiError::not_found(format!(
            "node {node} is not in the cluster; `flotilla status` lists the nodes"
        )));
    }
    lifecycle::promote(&context.observer, node).await?;
    crate::handlers::get_cluster(State(context)).await
}
