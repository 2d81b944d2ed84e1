//! Cluster software upgrades through the API: `upgrade check`, a node's in-place upgrade, and
//! finalization of the cluster version.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_checks::{upgrade_check, UpgradeCheckReport, UpgradeCheckRequest, UpgradeFacts};
use flotilla_model::rest::{ClusterInfo, NodeUpgradeRequest, NodeUpgradeStatus};
use flotilla_model::{ClusterState, ClusterVersionFinalization, Command, CommandResult, NodeUid};

use crate::handlers::parse;
use crate::local::UpgradeOrder;
use crate::propose::{propose, Change};
use crate::{ApiContext, ApiError};

/// `POST /v1/cluster/upgrade_check`: may the cluster move to the package described? Judged
/// on this API's own views of nodes, shards, databases and actions.
pub(crate) async fn check(
    State(context): State<ApiContext>,
    body: Bytes,
) -> Result<Json<UpgradeCheckReport>, ApiError> {
    let request: UpgradeCheckRequest = parse("package", &body)?;
    let package = request
        .package_facts()
        .map_err(|e| ApiError::invalid("package", e))?;
    let nodes = crate::handlers::get_nodes(State(context.clone())).await.0;
    let shards = crate::bdbs::shards(State(context.clone())).await.0;
    let bdbs = crate::bdbs::list(State(context.clone())).await.0;
    let actions = crate::actions::list(State(context)).await.0;
    let facts = UpgradeFacts::from_rest(&nodes, &shards, &bdbs, &actions, package);
    Ok(Json(UpgradeCheckReport {
        package_version: request.version,
        refusals: upgrade_check(&facts),
    }))
}

/// `POST /v1/cluster/finalize`: moves the cluster version to the version every node runs.
pub(crate) async fn finalize(
    State(context): State<ApiContext>,
) -> Result<Json<ClusterInfo>, ApiError> {
    let state = context.store.state();
    let Some(version) = state.pending_finalization().map(str::to_owned) else {
        return Err(nothing_to_finalize(&state));
    };
    let wanted = version.clone();
    let change = Change {
        command: Command::FinalizeClusterVersion(ClusterVersionFinalization { version }),
        applied: move |state: &ClusterState| {
            (state.cluster_version() == wanted).then_some(CommandResult::Ok)
        },
        check: "flotilla status".into(),
    };
    propose(&context, change).await?;
    crate::handlers::get_cluster(State(context)).await
}

fn nothing_to_finalize(state: &ClusterState) -> ApiError {
    let lowest = state.lowest_node_version().unwrap_or("unknown");
    ApiError {
        status: StatusCode::CONFLICT,
        error_code: "nothing_to_finalize",
        description: format!(
            "the cluster version is {} and the oldest node runs {lowest}: finalization needs every node on a newer version first (`flotilla upgrade node UID --package P` for each)",
            state.cluster_version()
        ),
    }
}

/// Refuses a request about another node: node-local operations are answered by that node.
pub(crate) fn require_this_node(context: &ApiContext, uid: &str) -> Result<(), ApiError> {
    let uid: NodeUid = uid.parse().map_err(|_| {
        ApiError::invalid(
            "uid",
            format!("'{uid}' is not a node uid (a positive integer)"),
        )
    })?;
    if context.store.uid() == Some(uid) {
        return Ok(());
    }
    let state = context.store.state();
    let Some(node) = state.nodes.get(&uid) else {
        return Err(ApiError::not_found(format!(
            "node {uid} is not in the cluster; `flotilla status` lists the nodes"
        )));
    };
    Err(ApiError {
        status: StatusCode::CONFLICT,
        error_code: "other_node",
        description: format!(
            "node {uid} answers this itself: send it to http://{}:{} (the CLI does so when given the node's uid)",
            node.addr, context.local.ports.rest
        ),
    })
}

/// `POST /v1/nodes/{uid}/upgrade`: upgrade this node in place to a package on its disk.
/// Answered once the new daemon has started and greeted this one (or the fallback began);
/// follow it with `GET /v1/nodes/{uid}/upgrade`.
pub(crate) async fn start_node_upgrade(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<NodeUpgradeStatus>), ApiError> {
    require_this_node(&context, &uid)?;
    let request: NodeUpgradeRequest = parse("upgrade", &body)?;
    let Some(upgrades) = context.local.upgrades.clone() else {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error_code: "upgrade_unavailable",
            description: "this daemon runs without an upgrade driver".into(),
        });
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    upgrades
        .send(UpgradeOrder { request, reply })
        .await
        .map_err(|_| upgrade_failed("the daemon is stopping".into()))?;
    let status = answer
        .await
        .map_err(|_| upgrade_failed("the upgrade driver stopped".into()))?
        .map_err(upgrade_failed)?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

fn upgrade_failed(description: String) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        error_code: "upgrade_refused",
        description,
    }
}

/// `GET /v1/nodes/{uid}/upgrade`: the status of this node's latest in-place upgrade.
pub(crate) async fn node_upgrade_status(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<NodeUpgradeStatus>, ApiError> {
    require_this_node(&context, &uid)?;
    let path = context.local.upgrade_status_path();
    let text = std::fs::read_to_string(&path).map_err(|_| {
        ApiError::not_found(format!(
            "node {uid} has not been upgraded in place (no {})",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map(Json).map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        error_code: "internal",
        description: format!("{}: {e}", path.display()),
    })
}
