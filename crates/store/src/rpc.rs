//! The server side of internal RPC: the routes other nodes call on `ADDR:3333`.
//!
//! Raft's own messages (`/raft/*`), forwarded proposals and join step 2 need a peer's
//! credential ([`require_secret`]): over TLS, a client certificate from the cluster CA; in
//! plaintext (0.1.0 peers, nodes without certificates), the cluster secret in
//! [`crate::SECRET_HEADER`], refused once every node has a certificate. Join step 1 is
//! authenticated by the operator's credentials in its body, and the cluster CA's certificate
//! is public (a joining node checks its fingerprint). Other layers add their internal routes
//! behind [`require_secret`].

use std::io::Cursor;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use flotilla_model::{Command, CommandResult};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Snapshot;

use crate::certificates::{CertificateRequest, ClusterCaAnswer, CLUSTER_CA_PATH, SIGN_PATH};
use crate::listener::Channel;
use crate::membership::{JoinRequest, JoinTicket, PromoteRequest};
use crate::transfer::{self, FULL_SNAPSHOT_PATH, MAX_LEGACY_CHUNK_REQUEST, MAX_SNAPSHOT_BYTES};
use crate::types::TypeConfig;
use crate::{PeerAddr, Store, StoreError, SECRET_HEADER};

/// The store's internal routes, to be served on the node's RPC address.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route(
            "/raft/snapshot",
            post(snapshot).layer(DefaultBodyLimit::max(MAX_LEGACY_CHUNK_REQUEST)),
        )
        .route(
            FULL_SNAPSHOT_PATH,
            post(full_snapshot)
                .get(takes_full_snapshots)
                .layer(DefaultBodyLimit::max(MAX_SNAPSHOT_BYTES)),
        )
        .route("/internal/propose", post(propose))
        .route("/internal/join/promote", post(promote))
        .route("/internal/applied", post(applied))
        .route(crate::primary::ELECT_PATH, post(elect))
        .route(SIGN_PATH, post(sign))
        .layer(middleware::from_fn_with_state(
            store.clone(),
            require_secret,
        ))
        .route("/internal/join", post(join))
        .route(CLUSTER_CA_PATH, axum::routing::get(cluster_ca))
        .route(crate::membership::JOIN_REPLACE_PATH, post(join_replace))
        .with_state(store)
}

/// Middleware that lets a request through only from a peer: one that presented a client
/// certificate from the cluster CA over TLS or, while the cluster still takes plaintext RPC,
/// one that carries this node's cluster secret.
pub async fn require_secret(State(store): State<Store>, request: Request, next: Next) -> Response {
    let Some(identity) = store.identity() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "node is not part of a cluster",
        )
            .into_response();
    };
    match request.extensions().get::<Channel>() {
        Some(Channel::Tls {
            certified: true, ..
        }) => return next.run(request).await,
        Some(Channel::Tls {
            certified: false, ..
        }) => {
            return (
                StatusCode::UNAUTHORIZED,
                "this route needs a client certificate from the cluster CA",
            )
                .into_response()
        }
        Some(Channel::Plain { .. }) | None => {}
    }
    if store.state().tls_everywhere() {
        return (
            StatusCode::UNAUTHORIZED,
            "plaintext RPC is refused: every node has a certificate, use mutual TLS",
        )
            .into_response();
    }
    let given = request
        .headers()
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok());
    if !given.is_some_and(|given| crate::secret_eq(given, &identity.secret)) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
    }
    next.run(request).await
}

async fn append(
    State(store): State<Store>,
    Json(request): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    match store.raft() {
        Ok(raft) => Json(raft.append_entries(request).await).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn vote(State(store): State<Store>, Json(request): Json<VoteRequest<u64>>) -> Response {
    match store.raft() {
        Ok(raft) => Json(raft.vote(request).await).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn snapshot(
    State(store): State<Store>,
    Json(request): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    match store.raft() {
        Ok(raft) => Json(raft.install_snapshot(request).await).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The probe a primary node sends before a snapshot: this node takes whole binary snapshots.
async fn takes_full_snapshots() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// A whole snapshot in one binary request (see [`crate::transfer`]), installed at once.
async fn full_snapshot(State(store): State<Store>, body: Bytes) -> Response {
    let raft = match store.raft() {
        Ok(raft) => raft,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let (head, data) = match transfer::decode(&body) {
        Ok(parts) => parts,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let snapshot = Snapshot {
        meta: head.meta,
        snapshot: Box::new(Cursor::new(data.to_vec())),
    };
    Json(raft.install_full_snapshot(head.vote, snapshot).await).into_response()
}

/// A proposal forwarded by another node. The answer keeps 0.1.0's form: a refused command is
/// `Ok(Refused)`, the forwarding node turns it into an error.
async fn propose(State(store): State<Store>, Json(command): Json<Command>) -> Response {
    let point = crate::failpoint::forwarded_point(&command);
    let answer: Result<CommandResult, StoreError> = store.propose_for_peer(command).await;
    if let (Some(point), true) = (point, answer.is_ok()) {
        if let Some(lost) = crate::failpoint::lost_answer(&point).await {
            return lost;
        }
    }
    Json(answer).into_response()
}

async fn elect(State(store): State<Store>) -> Json<Result<(), StoreError>> {
    Json(store.elect_now().await)
}

async fn applied(State(store): State<Store>) -> Json<u64> {
    Json(store.applied_index())
}

async fn join(
    State(store): State<Store>,
    PeerAddr(source): PeerAddr,
    Json(request): Json<JoinRequest>,
) -> Json<Result<JoinTicket, StoreError>> {
    Json(store.admit(request, source).await)
}

async fn join_replace(
    State(store): State<Store>,
    PeerAddr(source): PeerAddr,
    Json(request): Json<JoinRequest>,
) -> Json<Result<JoinTicket, StoreError>> {
    Json(store.admit_replacement(request, source).await)
}

/// The cluster CA's certificate (public): what a joining node checks before it sends the
/// operator's credentials.
async fn cluster_ca(State(store): State<Store>) -> Response {
    match store.state().cluster_ca() {
        Some(ca) => Json(ClusterCaAnswer {
            certificate: ca.certificate.clone(),
        })
        .into_response(),
        None => (StatusCode::NOT_FOUND, "the cluster has no CA yet").into_response(),
    }
}

/// A node's request for a certificate (after the CA was made, or at a rotation); the peer must
/// be the node it asks for.
async fn sign(
    State(store): State<Store>,
    axum::Extension(channel): axum::Extension<Channel>,
    Json(request): Json<CertificateRequest>,
) -> Json<Result<(String, u64), StoreError>> {
    Json(store.sign_certificate(request, Some(channel.peer().ip())))
}

async fn promote(
    State(store): State<Store>,
    Json(request): Json<PromoteRequest>,
) -> Json<Result<(), StoreError>> {
    Json(store.promote(request.uid).await)
}
