//! The syncer's REST routes: `GET /v1/crdbs/{guid}/ops` and `GET /v1/crdbs/{guid}/state`,
//! which a peer cluster's pullers call (behind the operator credentials the CRDB holds for
//! this cluster), and `GET /v1/crdt_sources` / `GET /v1/crdbs/{guid}/crdt_sources`, the sync
//! state of the pullers running on this node. The logic is `flotilla-syncer`'s.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_model::crdb_sync::SourceReport;
use flotilla_model::now_millis;
use flotilla_syncer::wire::{OpsPage, OpsQuery, StatePage, StateQuery};
use flotilla_syncer::SyncerError;

use crate::{ApiContext, ApiError};

fn syncer_error(e: SyncerError) -> ApiError {
    ApiError {
        status: StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        error_code: e.error_code(),
        description: e.to_string(),
    }
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::invalid("query", e.body_text()))
}

/// `GET /v1/crdbs/{guid}/ops?shard=i&after=n&after_dot=..&count=..&protocol=v&wait_ms=..`.
pub(crate) async fn ops(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
    q: Result<Query<OpsQuery>, QueryRejection>,
) -> Result<Json<OpsPage>, ApiError> {
    let q = query(q)?;
    let state = context.store.state();
    let page = flotilla_syncer::server::ops(&state, &guid, &q)
        .await
        .map_err(syncer_error)?;
    Ok(Json(page))
}

/// `GET /v1/crdbs/{guid}/state?shard=i&cursor=c&count=k`.
pub(crate) async fn state(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Json<StatePage>, ApiError> {
    let q = query(q)?;
    let state = context.store.state();
    let page = flotilla_syncer::server::state_page(&state, &guid, &q)
        .await
        .map_err(syncer_error)?;
    Ok(Json(page))
}

/// `GET /v1/crdt_sources`: every puller on this node (ask each node for the whole cluster:
/// a shard's pullers run on the node of its master).
pub(crate) async fn sources(State(context): State<ApiContext>) -> Json<Vec<SourceReport>> {
    Json(context.sync_sources.reports(now_millis()))
}

/// `GET /v1/crdbs/{guid}/crdt_sources`: this node's pullers of one CRDB.
pub(crate) async fn crdb_sources(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
) -> Json<Vec<SourceReport>> {
    Json(context.sync_sources.reports_of(&guid, now_millis()))
}
