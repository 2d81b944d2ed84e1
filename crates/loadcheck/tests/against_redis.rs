//! The load check against a real redis-server from the engine cache: a clean run is clean, and
//! lost writes, stalls, timeouts and reconnects each show up in the report when caused.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_loadcheck::{start, Config, LoadHandle};

const HOST: &str = "127.0.4.1";
const ENGINE: &str = "redis-7.0";

/// The redis-server binary from the engine cache; panics naming the command that fetches it.
fn engine_bin() -> PathBuf {
    let dir = std::env::var_os("FLOTILLA_ENGINES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/engines"));
    let bin = dir.join(ENGINE).join("bin/redis-server");
    assert!(
        bin.is_file(),
        "engine {ENGINE} missing at {}: run scripts/fetch-engines first",
        bin.display()
    );
    bin
}

/// A redis-server this test started; killed by pid on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    async fn start(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    async fn start_with(port: u16, extra: &[&str]) -> Self {
        let child = Command::new(engine_bin())
            .args(["--bind", HOST, "--port", &port.to_string()])
            .args(extra)
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let server = Self { child, port };
        server.wait_ready().await;
        server
    }

    fn endpoint(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    async fn admin(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(format!("redis://{}", self.endpoint())).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    /// Polls PING until the server answers (NOAUTH counts: it is up and asking for a password).
    async fn wait_ready(&self) {
        let client = redis::Client::open(format!("redis://{}", self.endpoint())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() || pong.is_err_and(|e| e.code() == Some("NOAUTH")) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} not ready",
                self.endpoint()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(server: &Server) -> Config {
    Config {
        rate_per_client: Some(400),
        ..Config::for_endpoint(server.endpoint())
    }
}

/// Waits for `more` operations beyond the current count, failing the test after 10 s.
async fn progress_by(load: &LoadHandle, more: u64) {
    let target = load.progress().ops + more;
    assert!(
        load.wait_for_ops(target, Duration::from_secs(10)).await,
        "load made no progress: {:?}",
        load.progress()
    );
}

#[tokio::test]
async fn clean_run_is_clean_and_verified() {
    let server = Server::start(24101).await;
    let load = start(config(&server)).unwrap();
    progress_by(&load, 600).await;
    let report = load.stop().await.unwrap();
    println!("{report}");
    assert!(report.is_clean(), "{report}");
    assert!(report.ops >= 600);
    assert!(report.reads_ok > 0 && report.writes_acknowledged > 0);
    assert_eq!(report.counters_verified, 2);
    assert!(report.keys_verified > 0);
    assert!(
        report.ops_per_sec < 4.0 * 400.0 * 1.25,
        "rate limit ignored: {report}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["lost_writes"], 0);
    assert!(report.to_string().contains("CLEAN"));
}

#[tokio::test]
async fn deleted_acknowledged_keys_are_lost_writes() {
    let server = Server::start(24102).await;
    let load = start(config(&server)).unwrap();
    progress_by(&load, 300).await;
    let record = load.stop_load().await.unwrap();
    let acked = record.acknowledged_writes();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut server.admin().await)
        .await
        .unwrap();
    let report = record.verify().await.unwrap();
    println!("{report}");
    assert!(!report.is_clean());
    assert_eq!(report.client_errors_total, 0);
    // Every SET key is missing and every counter is back to zero: all acknowledged writes lost.
    assert_eq!(report.lost_writes, acked, "{report}");
    assert!(report.lost_write_examples[0].contains(record.key_prefix()));
}

/// A counter that moves by two between a writer's INCRs, with nothing failed in between, is
/// an increment applied twice (what resending a write that had run would do): a lost write.
#[tokio::test]
async fn an_increment_applied_twice_is_a_lost_write() {
    let server = Server::start(24108).await;
    let load = start(config(&server)).unwrap();
    progress_by(&load, 300).await;
    let counter = format!("{}:c0", load.key_prefix());
    let _: i64 = redis::cmd("INCR")
        .arg(&counter)
        .query_async(&mut server.admin().await)
        .await
        .unwrap();
    progress_by(&load, 300).await;
    let report = load.stop().await.unwrap();
    println!("{report}");
    assert_eq!(report.client_errors_total, 0, "{report}");
    assert_eq!(report.lost_writes, 1, "{report}");
    assert!(
        report.lost_write_examples[0].contains("applied twice"),
        "{report}"
    );
}

#[tokio::test]
async fn stopped_server_shows_as_stall() {
    let server = Server::start(24103).await;
    let load = start(config(&server)).unwrap();
    progress_by(&load, 200).await;
    server.signal("-STOP");
    // The fault itself lasts 1.5 s; this is not a readiness wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("-CONT");
    progress_by(&load, 200).await;
    let report = load.stop().await.unwrap();
    println!("{report}");
    assert!(report.longest_stall_ms >= 1400.0, "{report}");
    assert!(report.latency_ms.max >= 1400.0, "{report}");
    assert_eq!(report.lost_writes, 0, "{report}");
}

#[tokio::test]
async fn client_pause_write_is_a_stall_without_errors() {
    let server = Server::start(24104).await;
    let load = start(config(&server)).unwrap();
    progress_by(&load, 200).await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "500", "WRITE"][..])
        .query_async(&mut server.admin().await)
        .await
        .unwrap();
    progress_by(&load, 400).await;
    let report = load.stop().await.unwrap();
    println!("{report}");
    assert!(report.is_clean(), "{report}");
    assert!(
        (400.0..1500.0).contains(&report.longest_stall_ms),
        "stall should be about 500 ms: {report}"
    );
}

#[tokio::test]
async fn timeouts_are_errors_with_unknown_outcome_not_lost_writes() {
    let server = Server::start(24105).await;
    let load = start(Config {
        op_timeout_ms: 300,
        ..config(&server)
    })
    .unwrap();
    progress_by(&load, 200).await;
    server.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.signal("-CONT");
    progress_by(&load, 200).await;
    let report = load.stop().await.unwrap();
    println!("{report}");
    assert!(report.client_errors.timeout > 0, "{report}");
    assert!(report.writes_outcome_unknown > 0, "{report}");
    assert!(!report.is_clean());
    assert_eq!(report.lost_writes, 0, "{report}");
}

#[tokio::test]
async fn killed_connections_are_reconnected() {
    let server = Server::start(24106).await;
    let load = start(config(&server)).unwrap();
    progress_by(&load, 200).await;
    let _: redis::Value = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query_async(&mut server.admin().await)
        .await
        .unwrap();
    progress_by(&load, 400).await;
    let report = load.stop().await.unwrap();
    println!("{report}");
    assert!(report.reconnects >= 4, "every client reconnects: {report}");
    assert_eq!(report.lost_writes, 0, "{report}");
}

#[tokio::test]
async fn unreachable_endpoint_counts_connect_errors() {
    // Nothing listens here (no server is started on this port).
    let report = flotilla_loadcheck::run(Config {
        duration_ms: Some(700),
        op_timeout_ms: 200,
        ..Config::for_endpoint(format!("{HOST}:24199"))
    })
    .await
    .unwrap();
    println!("{report}");
    assert_eq!(report.ops, 0);
    assert!(report.client_errors.connect > 0, "{report}");
    assert!(!report.is_clean());
}

#[tokio::test]
async fn password_is_sent() {
    let server = Server::start_with(24107, &["--requirepass", "s3cret pass"]).await;
    let unauthenticated = start(config(&server)).unwrap();
    progress_by_errors(&unauthenticated).await;
    let refused = unauthenticated.stop().await.unwrap();
    assert!(refused.client_errors.error_reply > 0, "{refused}");
    assert_eq!(refused.writes_acknowledged, 0);
    let load = start(Config {
        password: Some("s3cret pass".into()),
        ..config(&server)
    })
    .unwrap();
    progress_by(&load, 200).await;
    let report = load.stop().await.unwrap();
    assert!(report.is_clean(), "{report}");
}

/// Waits until the load has seen at least one client error, failing the test after 10 s.
async fn progress_by_errors(load: &LoadHandle) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while load.progress().client_errors == 0 {
        assert!(
            Instant::now() < deadline,
            "no client error: {:?}",
            load.progress()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
