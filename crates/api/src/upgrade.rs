//! Cluster software upgrades through the API: `upgrade check`, a node's in-place upgrade, and
//! finalization of the cluster version.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_checks::{upgrade_check, UpgradeCheckReport, UpgradeCheckRequest, UpgradeFacts};
use flotilla_model::rest::{
    ActionInfo, ClusterInfo, ClusterUpgradeRequest, NodeUpgradeRequest, NodeUpgradeStatus,
};
use flotilla_model::{
    ActionKind, ClusterState, ClusterUpgrade, ClusterVersionFinalization, Command, CommandResult,
    NodeUid, UpgradeMethod,
};

use crate::handlers::parse;
use crate::local::{LocalNode, UpgradeOrder};
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
            "node {uid} answers this itself: send it to https://{}:{} (the CLI does so when given the node's uid)",
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
    let status = order_upgrade(&context.local, request)
        .await
        .map_err(upgrade_failed)?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// Hands an upgrade order to this daemon's upgrade driver; its status once the new daemon has
/// started (or the fallback began), or why it could not begin.
async fn order_upgrade(
    local: &LocalNode,
    request: NodeUpgradeRequest,
) -> Result<NodeUpgradeStatus, String> {
    let Some(upgrades) = local.upgrades.clone() else {
        return Err("this daemon runs without an upgrade driver".into());
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    upgrades
        .send(UpgradeOrder { request, reply })
        .await
        .map_err(|_| "the daemon is stopping".to_string())?;
    answer
        .await
        .map_err(|_| "the upgrade driver stopped".to_string())?
}

/// `INTERNAL_NODE_UPGRADE_PATH`: the primary node orders this node's upgrade (`upgrade
/// cluster`).
pub(crate) async fn internal_node_upgrade(
    State(local): State<LocalNode>,
    Json(request): Json<NodeUpgradeRequest>,
) -> Json<Result<NodeUpgradeStatus, String>> {
    Json(order_upgrade(&local, request).await)
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

/// `POST /v1/cluster/actions/upgrade`: starts `upgrade cluster`, an action that moves every
/// node to the package one at a time, the primary node last, then finalizes: in place, or
/// rolling (add-node, replace-node: the action pauses where an operator installs a machine). The CLI runs the
/// upgrade check first; the store refuses the action while the cluster version predates it
/// (a 0.1.0 member could not decode it: upgrade such nodes with `flotilla upgrade node`).
pub(crate) async fn start_cluster_upgrade(
    State(context): State<ApiContext>,
    body: Bytes,
) -> Result<Json<ActionInfo>, ApiError> {
    let request: ClusterUpgradeRequest = parse("upgrade", &body)?;
    let name = request.method.as_deref().unwrap_or("in-place");
    // Redis Software names the OS upgrade's add-a-node method `extra-node`.
    let name = if name == "extra-node" {
        "add-node"
    } else {
        name
    };
    let method = UpgradeMethod::parse(name).ok_or_else(|| {
        ApiError::invalid(
            "method",
            format!("'{name}' is not a method: in-place, add-node or replace-node"),
        )
    })?;
    if method == UpgradeMethod::ReplaceNode && context.store.voter_uids().len() < 2 {
        return Err(ApiError::invalid(
            "method",
            "replace-node takes each node out while its machine is reinstalled, and a cluster of one node cannot lose it: use add-node or in-place",
        ));
    }
    if request.package.trim().is_empty() || request.version.trim().is_empty() {
        return Err(ApiError::invalid(
            "package",
            "name the package and its version (`flotilla upgrade cluster --package P` reads both)",
        ));
    }
    if let Some(os) = &request.os {
        check_os_upgrade(&context, method, os).await?;
    }
    let state = context.store.state();
    let primary = context.store.primary_node();
    let mut nodes: Vec<NodeUid> = state
        .nodes
        .keys()
        .copied()
        .filter(|uid| Some(*uid) != primary)
        .collect();
    nodes.extend(primary);
    let kind = ActionKind::ClusterUpgrade(ClusterUpgrade {
        package: request.package,
        version: request.version,
        method,
        nodes,
        drains: Default::default(),
        target_os: request.os,
    });
    crate::actions::start(context, kind).await
}

/// Refuses an OS upgrade (`flotilla upgrade os`) that cannot succeed: in place (an OS is
/// changed only by adding or reinstalling machines), or one the OS check refuses (an
/// unsupported target, install directories that differ, a node down, another action).
async fn check_os_upgrade(
    context: &ApiContext,
    method: UpgradeMethod,
    os: &str,
) -> Result<(), ApiError> {
    if method == UpgradeMethod::InPlace {
        return Err(ApiError::invalid(
            "method",
            "an OS upgrade adds or reinstalls machines: use extra-node or replace-node",
        ));
    }
    let nodes = crate::handlers::get_nodes(State(context.clone())).await.0;
    let actions = crate::actions::list(State(context.clone())).await.0;
    let refusals = flotilla_checks::os_upgrade_check(&nodes, &actions, os);
    if refusals.is_empty() {
        return Ok(());
    }
    let text: String = refusals.iter().map(|r| r.to_text()).collect();
    Err(ApiError::invalid(
        "os",
        format!(
            "the cluster may not move to {os} now (`flotilla upgrade check --os {os}`):\n{text}"
        ),
    ))
}
