//! The HTTP side: `GET /metrics` calls the daemon's source and renders what it returns.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
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

/// Serves [`router`] on `listener` until `shutdown` completes, then drains open requests.
pub async fn serve<F, S>(listener: TcpListener, source: F, shutdown: S) -> Result<(), MetricsError>
where
    F: Fn() -> Sample + Send + Sync + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    axum::serve(listener, router(source))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
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
