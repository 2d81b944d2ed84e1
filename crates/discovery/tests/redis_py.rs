//! The discovery service as a real client sees it: redis-py's `Sentinel` (in the venv that
//! `scripts/python-env` creates) runs `scripts/sentinel_check.py` against a served listener,
//! and, for the write-through check, writes through `master_for(name)` to a real redis-7.0
//! engine standing in for the database's proxy endpoint.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Served;
use flotilla_discovery::Databases;
use flotilla_engine::{start, EngineCatalog, EngineVersion, Persistence, ShardProcess, ShardSpec};
use serde_json::Value as Json;
use tokio::process::Command;
use tokio::sync::OnceCell;

/// First-time venv creation downloads redis-py; later runs only check it.
const PYTHON_ENV_TIMEOUT: Duration = Duration::from_secs(300);
/// One run of the check script.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// The engine's internal password, which the script passes to `master_for`.
const DB_PASSWORD: &str = "discovery-test-pw";

/// The repository's root (two levels above this crate).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's python, created once per test run by `scripts/python-env`.
async fn python() -> &'static Path {
    static PYTHON: OnceCell<PathBuf> = OnceCell::const_new();
    PYTHON
        .get_or_init(|| async {
            let script = repo_root().join("scripts/python-env");
            let out = run(
                Command::new(&script),
                PYTHON_ENV_TIMEOUT,
                &script.display().to_string(),
            )
            .await;
            assert!(
                out.status.success(),
                "`{}` failed ({}): {}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
            assert!(
                path.is_file(),
                "`{}` printed {path:?}, not a python",
                script.display()
            );
            path
        })
        .await
}

/// Runs `command` with a bound on its duration, failing loudly with `shown` if it cannot start.
async fn run(mut command: Command, timeout: Duration, shown: &str) -> std::process::Output {
    command.kill_on_drop(true);
    tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("`{shown}` did not finish within {timeout:?}"))
        .unwrap_or_else(|e| panic!("`{shown}` could not run: {e}"))
}

/// Runs `scripts/sentinel_check.py` with `args`; returns its exit code and printed JSON.
async fn sentinel_check(args: &[&str]) -> (Option<i32>, Json) {
    let python = python().await;
    let script = repo_root().join("scripts/sentinel_check.py");
    let mut command = Command::new(python);
    command.arg(&script).args(args);
    let shown = format!(
        "{} {} {}",
        python.display(),
        script.display(),
        args.join(" ")
    );
    let out = run(command, SCRIPT_TIMEOUT, &shown).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "`{shown}` printed no JSON ({e}); status {}, stdout {stdout:?}, stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

fn one_db(ip: &str, name: &str, port: u16) -> Databases {
    let ip: IpAddr = ip.parse().unwrap();
    Databases::on_node(ip, [(name.to_owned(), port)], [])
}

#[tokio::test]
async fn redis_py_discovers_the_database_endpoint() {
    let served = Served::start("127.0.13.20", one_db("127.0.13.20", "mydb", 12000)).await;
    let sentinel = served.addr.to_string();
    let (code, json) = sentinel_check(&["--sentinel", &sentinel, "--name", "mydb"]).await;
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["ip"], "127.0.13.20");
    assert_eq!(json["port"], 12000);
    let (code, json) = sentinel_check(&["--sentinel", &sentinel, "--name", "nope"]).await;
    assert_eq!(code, Some(2), "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("No master found for 'nope'"),
        "{json}"
    );
}

/// Kills the test's engine by pid even when the test fails.
struct EngineGuard(ShardProcess);

impl Drop for EngineGuard {
    fn drop(&mut self) {
        self.0.kill_now(Duration::from_secs(5));
    }
}

#[tokio::test]
async fn redis_py_writes_through_the_discovered_endpoint() {
    let ip: IpAddr = "127.0.13.21".parse().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("flotilla-discovery-test-")
        .tempdir()
        .unwrap();
    let spec = ShardSpec {
        shard_id: 1,
        version: EngineVersion::Redis70,
        bind: ip,
        port: 20001,
        password: DB_PASSWORD.into(),
        // The engine stands for a database here: its default user takes the password.
        users: None,
        legacy: false,
        maxmemory_bytes: 64 << 20,
        eviction: Default::default(),
        persistence: Persistence::None,
        dir: dir.path().join("shard-1"),
        replica_of: None,
    };
    let catalog = EngineCatalog::dev();
    if let Err(e) = catalog.binary(EngineVersion::Redis70) {
        panic!("this test needs real engines; run scripts/fetch-engines: {e}");
    }
    let engine = EngineGuard(start(&catalog, &spec).await.expect("start redis-7.0"));
    let served = Served::start("127.0.13.21", one_db("127.0.13.21", "mydb", spec.port)).await;
    let sentinel = served.addr.to_string();
    let args = [
        "--sentinel",
        &sentinel,
        "--name",
        "mydb",
        "--write",
        "--password",
        DB_PASSWORD,
    ];
    let (code, json) = sentinel_check(&args).await;
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["port"], 20001);
    assert_eq!(json["read_back"], json["value"], "{json}");
    // The key is really in the engine the snapshot named.
    let url = format!("redis://:{DB_PASSWORD}@{}/", SocketAddr::new(ip, spec.port));
    let mut direct = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: Option<String> = redis::cmd("GET")
        .arg(json["key"].as_str().unwrap())
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), json["value"].as_str());
    drop(engine);
}

#[tokio::test]
async fn redis_py_finds_a_database_with_a_password_only_through_sentinel_kwargs() {
    let ip: IpAddr = "127.0.187.2".parse().unwrap();
    let mut dbs = one_db("127.0.187.2", "locked", 12002);
    dbs.endpoints[0].password = Some(flotilla_model::DatabasePassword::Plain("pw-locked".into()));
    let served = Served::start("127.0.187.2", dbs).await;
    let sentinel = served.addr.to_string();
    let base = ["--sentinel", sentinel.as_str(), "--name", "locked"];
    let (code, json) = sentinel_check(&base).await;
    assert_eq!(
        code,
        Some(2),
        "without the password it is not found: {json}"
    );
    let wrong = [&base[..], &["--sentinel-password", "wrong"]].concat();
    let (code, json) = sentinel_check(&wrong).await;
    assert_eq!(code, Some(2), "with a wrong password neither: {json}");
    let right = [&base[..], &["--sentinel-password", "pw-locked"]].concat();
    let (code, json) = sentinel_check(&right).await;
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["ip"], ip.to_string());
    assert_eq!(json["port"], 12002);
}
