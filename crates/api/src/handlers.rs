//! The REST handlers: parse and validate, call the store, answer Redis Software-shaped JSON.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use flotilla_model::rest::{
    BootstrapRequest, BootstrapResult, ClusterInfo, ClusterUpdate, Health, NodeInfo, NodeRole,
    NodeStatus, NodeStatusEntry, NodesStatus,
};
use flotilla_model::{ClusterChange, ClusterState, Command, CommandResult, NodeUid};
use serde::de::DeserializeOwned;

use crate::propose::{propose, Change};
use crate::{ApiContext, ApiError};

/// Longest cluster name accepted.
const MAX_NAME_LEN: usize = 128;

/// Parses a JSON body, naming the field (with its path) that does not fit.
pub(crate) fn parse<T: DeserializeOwned>(what: &str, body: &Bytes) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            what.to_string()
        } else {
            format!("{what}.{path}")
        };
        ApiError::invalid(&field, e.inner())
    })
}

fn require_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    Ok(())
}

fn validate_name(field: &str, name: &str) -> Result<(), ApiError> {
    require_text(field, name)?;
    if name.len() > MAX_NAME_LEN || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::invalid(
            field,
            format!(
                "'{name}' must be 1-{MAX_NAME_LEN} characters without spaces, e.g. cluster.local"
            ),
        ));
    }
    Ok(())
}

/// `GET /v1/health`.
pub(crate) async fn health(State(context): State<ApiContext>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        node_uid: context.store.uid(),
        primary_node: context.store.primary_node(),
        software_version: context.node.software_version.clone(),
        handover_protocol: context.local.handover_protocol,
        pid: std::process::id(),
    })
}

/// `POST /v1/bootstrap/create_cluster`.
pub(crate) async fn create_cluster(
    State(context): State<ApiContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<BootstrapResult>, ApiError> {
    context.local.bootstrap.check(&headers)?;
    let request: BootstrapRequest = parse("create_cluster", &body)?;
    let name = request
        .cluster
        .name
        .ok_or_else(|| ApiError::invalid("cluster.name", "missing: name the cluster to create"))?;
    validate_name("cluster.name", &name)?;
    if request.replace_node.is_some() {
        return Err(ApiError::invalid(
            "replace_node",
            "only join_cluster takes it: a new cluster has no node to replace",
        ));
    }
    let credentials = request.credentials;
    require_text("credentials.username", &credentials.username)?;
    require_text("credentials.password", &credentials.password)?;
    let node_uid = context
        .store
        .create_cluster(
            name,
            credentials.username,
            credentials.password,
            context.node.clone(),
        )
        .await?;
    context.local.bootstrap.consume();
    Ok(Json(BootstrapResult { node_uid }))
}

/// `POST /v1/bootstrap/join_cluster`.
pub(crate) async fn join_cluster(
    State(context): State<ApiContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<BootstrapResult>, ApiError> {
    context.local.bootstrap.check(&headers)?;
    let request: BootstrapRequest = parse("join_cluster", &body)?;
    context
        .node
        .check_os()
        .map_err(|e| ApiError::invalid("os", e.to_string()))?;
    let nodes = request.cluster.nodes.ok_or_else(|| {
        ApiError::invalid(
            "cluster.nodes",
            "missing: list the address of at least one cluster member",
        )
    })?;
    if nodes.is_empty() {
        return Err(ApiError::invalid(
            "cluster.nodes",
            "must list at least one cluster member address",
        ));
    }
    let seeds = nodes
        .iter()
        .map(|addr| {
            addr.parse::<IpAddr>()
                .map(|ip| context.store.config().rpc_addr_of(ip))
                .map_err(|_| {
                    ApiError::invalid("cluster.nodes", format!("'{addr}' is not an IP address"))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let credentials = request.credentials;
    require_text("credentials.username", &credentials.username)?;
    require_text("credentials.password", &credentials.password)?;
    let node_uid = context
        .store
        .join_cluster(
            &seeds,
            credentials.username,
            credentials.password,
            context.node.clone(),
            request.replace_node,
            request.cluster.cluster_ca_fingerprint,
        )
        .await?;
    context.local.bootstrap.consume();
    Ok(Json(BootstrapResult { node_uid }))
}

/// `GET /v1/cluster`.
pub(crate) async fn get_cluster(
    State(context): State<ApiContext>,
) -> Result<Json<ClusterInfo>, ApiError> {
    let state = context.store.state();
    let cluster = state.cluster().map_err(flotilla_store::StoreError::from)?;
    Ok(Json(ClusterInfo {
        name: cluster.name.clone(),
        created_time: cluster.created_at,
        primary_node: context.store.primary_node(),
        nodes_count: state.nodes.len(),
        default_redis_version: crate::bdbs::DEFAULT_ENGINE.to_string(),
        cluster_version: state.cluster_version().to_string(),
        finalization_pending: state.pending_finalization().map(str::to_owned),
        ca_fingerprint: state
            .cluster_ca()
            .and_then(|ca| flotilla_store::tls::fingerprint(&ca.certificate).ok()),
        crdt_supported_protocol_versions: crate::crdbs::supported_protocols(),
        crdt_supported_featureset_version: crate::crdbs::CRDT_FEATURESET_VERSION,
    }))
}

/// `PUT /v1/cluster`.
pub(crate) async fn put_cluster(
    State(context): State<ApiContext>,
    body: Bytes,
) -> Result<Json<ClusterInfo>, ApiError> {
    let update: ClusterUpdate = parse("cluster", &body)?;
    if update == ClusterUpdate::default() {
        return Err(ApiError::invalid(
            "cluster",
            "no setting given: pass at least one of: name",
        ));
    }
    if let Some(name) = &update.name {
        validate_name("name", name)?;
    }
    let asked = update.name.clone();
    let change = Change {
        command: Command::UpdateCluster(ClusterChange {
            name: update.name.clone(),
        }),
        applied: |state: &ClusterState| {
            let cluster = state.cluster.as_ref()?;
            asked
                .as_ref()
                .is_none_or(|name| cluster.name == *name)
                .then_some(CommandResult::Ok)
        },
        check: "flotilla status".into(),
    };
    propose(&context, change).await?;
    if let Some(name) = update.name {
        let applied =
            |s: &flotilla_model::ClusterState| s.cluster.as_ref().is_some_and(|c| c.name == name);
        context
            .store
            .wait_until(crate::actions::APPLY_WAIT, applied)
            .await;
    }
    get_cluster(State(context)).await
}

async fn node_infos(context: &ApiContext) -> Vec<NodeInfo> {
    let state = context.store.state();
    let observed = context.observer.observed().await;
    let statuses = &observed.nodes;
    let primary_node = context.store.primary_node();
    state
        .nodes
        .values()
        .map(|node| NodeInfo {
            uid: node.uid,
            addr: node.addr.to_string(),
            role: if Some(node.uid) == primary_node {
                NodeRole::Primary
            } else {
                NodeRole::Secondary
            },
            software_version: node.software_version.clone(),
            os: node.os.clone(),
            host: node.host.clone(),
            status: statuses
                .get(&node.uid)
                .copied()
                .unwrap_or(NodeStatus::Unknown),
            maintenance: node.maintenance.is_some(),
            problems: observed
                .node_problems
                .get(&node.uid)
                .cloned()
                .unwrap_or_default(),
        })
        .collect()
}

/// `GET /v1/nodes`.
pub(crate) async fn get_nodes(State(context): State<ApiContext>) -> Json<Vec<NodeInfo>> {
    Json(node_infos(&context).await)
}

/// `GET /v1/nodes/{uid}`.
pub(crate) async fn get_node(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let uid: NodeUid = uid.parse().map_err(|_| {
        ApiError::invalid(
            "uid",
            format!("'{uid}' is not a node uid (a positive integer)"),
        )
    })?;
    node_infos(&context)
        .await
        .into_iter()
        .find(|n| n.uid == uid)
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "node {uid} is not in the cluster; `flotilla status` lists the nodes"
            ))
        })
}

/// `GET /v1/nodes/status`.
pub(crate) async fn get_nodes_status(State(context): State<ApiContext>) -> Json<NodesStatus> {
    let statuses = node_infos(&context)
        .await
        .into_iter()
        .map(|n| {
            let role = match n.role {
                NodeRole::Primary => "master",
                NodeRole::Secondary => "slave",
            };
            let entry = NodeStatusEntry {
                role: role.into(),
                status: n.status,
                software_version: n.software_version,
                addr: n.addr,
            };
            (n.uid.to_string(), entry)
        })
        .collect();
    Json(statuses)
}

/// Any other path.
pub(crate) async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        error_code: "not_found",
        description: "no such endpoint; see the README for the REST API".into(),
    }
}
