//! The HTTP side: `GET /metrics` calls the daemon's source and renders what it returns.
//!
//! With a token (the node's `--metrics-token-file`), a scrape must carry
//! `Authorization: Bearer TOKEN` (Prometheus: `authorization: {credentials_file: ...}`);
//! without one, metrics stay open, as before.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::{render, MetricsError, Sample, CONTENT_TYPE};

/// The path Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";

/// The daemon's sample source, shared by every request.
type Source = Arc<dyn Fn() -> Sample + Send + Sync>;

/// A router serving `GET /metrics`. `source` is called once per scrape, on the request's task, so
/// it should read state already in memory rather than block on I/O.
pub fn router<F>(source: F) -> Router
where
    F: Fn() -> Sample + Send + Sync + 'static,
{
    let source: Source = Arc::new(source);
    Router::new()
        .route(METRICS_PATH, get(scrape))
        .with_state(source)
}

/// [`router`], answering 401 to a scrape without `Authorization: Bearer TOKEN` when `token` is
/// set.
pub fn router_with_token<F>(source: F, token: Option<String>) -> Router
where
    F: Fn() -> Sample + Send + Sync + 'static,
{
    match token {
        None => router(source),
        Some(token) => router(source).layer(middleware::from_fn_with_state(
            Arc::<str>::from(token),
            require_token,
        )),
    }
}

/// Serves [`router_with_token`] on `listener` until `shutdown` completes, then drains open
/// requests.
pub async fn serve<F, S>(
    listener: TcpListener,
    source: F,
    token: Option<String>,
    shutdown: S,
) -> Result<(), MetricsError>
where
    F: Fn() -> Sample + Send + Sync + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    axum::serve(listener, router_with_token(source, token))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Lets a scrape through only with `Authorization: Bearer TOKEN` (compared in constant time).
async fn require_token(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|given| bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())));
    if ok {
        return next.run(request).await;
    }
    let description = match given {
        None => "metrics need a bearer token: send Authorization: Bearer TOKEN (Prometheus: authorization: {credentials_file: FILE}) with the token of the node's --metrics-token-file",
        Some(_) => "wrong metrics token",
    };
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Bearer realm=\"flotilla metrics\"",
        )],
        description,
    )
        .into_response()
}

async fn scrape(State(source): State<Source>) -> Response {
    match render(source()) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    }
}
