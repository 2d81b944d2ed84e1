//! Serving on a loopback address and scraping with a plain HTTP GET, as Prometheus does.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flotilla_metrics::{serve, DbSample, NodeSample, Sample, CONTENT_TYPE};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A source whose request counter the test moves between scrapes.
fn source(requests: Arc<AtomicU64>) -> impl Fn() -> Sample + Send + Sync + 'static {
    move || Sample {
        node: NodeSample { node_uid: 1 },
        dbs: vec![DbSample {
            bdb_uid: 1,
            name: "cache".into(),
            commands_total: requests.load(Ordering::SeqCst),
            ..DbSample::default()
        }],
        shards: vec![],
        syncers: vec![],
    }
}

async fn scrape(url: &str) -> (String, common::Exposition) {
    let response = get(url).await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    let text = response.text().await.unwrap();
    (content_type, common::parse(&text))
}

#[tokio::test]
async fn a_counter_moves_between_scrapes_when_the_source_changes() {
    // Bound before serving, so the first GET cannot race the listener.
    let listener = TcpListener::bind("127.0.16.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicU64::new(10));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, source(requests.clone()), None, async {
        let _ = stopped.await;
    }));

    let db = [("bdb", "1"), ("name", "cache")];
    let (content_type, first) = scrape(&url).await;
    assert_eq!(content_type, CONTENT_TYPE);
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert_eq!(first.value("flotilla_bdb_requests_total", &db), 10.0);

    requests.fetch_add(25, Ordering::SeqCst);
    let (_, second) = scrape(&url).await;
    assert_eq!(second.value("flotilla_bdb_requests_total", &db), 35.0);

    stop.send(()).unwrap();
    server
        .await
        .unwrap()
        .expect("server stops cleanly on shutdown");
}

#[tokio::test]
async fn other_paths_are_not_found() {
    let listener = TcpListener::bind("127.0.16.2:0").await.unwrap();
    let url = format!("http://{}/nope", listener.local_addr().unwrap());
    let app = flotilla_metrics::router(source(Arc::new(AtomicU64::new(0))));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let response = get(&url).await.unwrap();
    assert_eq!(response.status(), 404);
    server.abort();
}

/// `reqwest::get` once the process has a rustls provider (reqwest is built with rustls but no
/// provider of its own in the workspace).
async fn get(url: &str) -> reqwest::Result<reqwest::Response> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(url).await
}

#[tokio::test]
async fn with_a_token_a_scrape_needs_it_as_a_bearer_token() {
    let listener = TcpListener::bind("127.0.188.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let token = Some("metrics-s3cret".to_string());
    let server = tokio::spawn(serve(
        listener,
        source(Arc::new(AtomicU64::new(7))),
        token,
        async {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let status = |bearer: Option<&'static str>| {
        let mut request = http.get(&url);
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        async move { request.send().await.expect("scrape").status().as_u16() }
    };
    assert_eq!(status(None).await, 401, "no token");
    assert_eq!(status(Some("wrong")).await, 401, "a wrong token");
    assert_eq!(status(Some("metrics-s3cret")).await, 200, "the token");
    let text = http
        .get(&url)
        .bearer_auth("metrics-s3cret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let db = [("bdb", "1"), ("name", "cache")];
    assert_eq!(
        common::parse(&text).value("flotilla_bdb_requests_total", &db),
        7.0
    );
    stop.send(()).unwrap();
    server
        .await
        .unwrap()
        .expect("server stops cleanly on shutdown");
}
