//! Start, stop, adopt and stale-pidfile behaviour against real engines of every version.
//! Addresses: 127.0.3.1 - 127.0.3.19, ports 21xxx.

mod common;

use std::time::Duration;

use common::{client, Harness};
use flotilla_engine::{
    adopt, start, EngineCatalog, EngineError, EngineVersion, Persistence, Role, StopOptions,
};

#[tokio::test]
async fn starts_and_stops_every_version() {
    let h = Harness::new();
    for (i, version) in EngineVersion::ALL.into_iter().enumerate() {
        let spec = h.spec(i as u64 + 1, version, "127.0.3.1", 21001 + i as u16);
        let process = start(&h.catalog, &spec)
            .await
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert!(process.is_alive(), "{version}");
        let c = process.client().await.unwrap();
        c.ping().await.unwrap();
        let server = c.server().await.unwrap();
        assert_eq!(server.process_id, process.pid(), "{version}");
        assert!(
            server
                .engine_version()
                .starts_with(version.reported_version_prefix()),
            "{version} reported {}",
            server.engine_version()
        );
        assert_eq!(c.replication().await.unwrap().role, Role::Primary);
        assert!(c.memory().await.unwrap().used_memory > 0);
        assert_eq!(
            c.config_get("maxmemory").await.unwrap().as_deref(),
            Some("268435456")
        );
        assert_eq!(
            c.config_get("repl-diskless-sync-delay")
                .await
                .unwrap()
                .as_deref(),
            Some("0")
        );
        assert_eq!(
            c.config_get("replica-announce-ip")
                .await
                .unwrap()
                .as_deref(),
            Some("127.0.3.1")
        );
        if version.supports_bind_source_addr() {
            assert_eq!(
                c.config_get("bind-source-addr").await.unwrap().as_deref(),
                Some("127.0.3.1")
            );
        }
        // The detached engine is not our child: it runs in its own session.
        let sid = unsafe { libc::getsid(process.pid() as libc::pid_t) };
        assert_eq!(
            sid,
            process.pid() as libc::pid_t,
            "{version} should lead its own session"
        );

        process.stop(i % 2 == 0).await.unwrap();
        assert!(!process.is_alive(), "{version} still alive after stop");
        assert!(!spec.pidfile_path().exists(), "{version} left its pidfile");
        assert!(adopt(&spec).unwrap().is_none());
    }
}

#[tokio::test]
async fn adopts_after_daemon_restart() {
    let h = Harness::new();
    let spec = h.spec(1, EngineVersion::Valkey91, "127.0.3.2", 21101);
    let pid = {
        let process = start(&h.catalog, &spec).await.unwrap();
        client(&spec)
            .await
            .command::<()>(redis::cmd("SET").arg("k").arg("v"))
            .await
            .unwrap();
        process.pid()
        // The handle is dropped here, as when the daemon exits: the engine must keep running.
    };
    let adopted = adopt(&spec)
        .unwrap()
        .expect("running engine should be adopted");
    assert_eq!(adopted.pid(), pid);
    assert!(adopted.is_alive());
    let c = adopted.client().await.unwrap();
    let value: String = c.command(redis::cmd("GET").arg("k")).await.unwrap();
    assert_eq!(value, "v", "adopted engine keeps its data");

    match start(&h.catalog, &spec).await {
        Err(EngineError::AlreadyRunning { pid: running, .. }) => assert_eq!(running, pid),
        other => panic!("starting a running shard should be refused, got {other:?}"),
    }
    adopted.stop(false).await.unwrap();
    assert!(!adopted.is_alive());
}

#[tokio::test]
async fn stale_pidfile_is_not_adopted() {
    let h = Harness::new();
    let spec = h.spec(1, EngineVersion::Redis62, "127.0.3.3", 21201);
    let process = start(&h.catalog, &spec).await.unwrap();
    let old_pid = process.pid();
    assert!(
        process.kill_now(Duration::from_secs(5)),
        "SIGKILL should end the engine"
    );
    assert!(
        spec.pidfile_path().exists(),
        "a killed engine leaves its pidfile"
    );
    assert!(
        adopt(&spec).unwrap().is_none(),
        "dead pid must not be adopted"
    );

    // A pidfile naming a live process that is not this engine (the test itself) is stale too.
    std::fs::write(spec.pidfile_path(), format!("{}\n", std::process::id())).unwrap();
    assert!(
        adopt(&spec).unwrap().is_none(),
        "foreign pid must not be adopted"
    );

    let again = start(&h.catalog, &spec)
        .await
        .expect("start over a stale pidfile");
    assert_ne!(again.pid(), old_pid);
    again.stop(false).await.unwrap();
}

#[tokio::test]
async fn start_failure_quotes_the_engine_log() {
    let h = Harness::new();
    let first = h.spec(1, EngineVersion::Redis70, "127.0.3.4", 21301);
    let process = start(&h.catalog, &first).await.unwrap();
    // Same address and port, another dir: the second engine cannot bind.
    let second = h.spec(2, EngineVersion::Valkey81, "127.0.3.4", 21301);
    let err = start(&h.catalog, &second).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, EngineError::StartFailed { .. }), "{text}");
    assert!(
        text.contains("Address already in use"),
        "log tail missing from: {text}"
    );
    assert!(process.is_alive(), "the first engine must be untouched");
    process.stop(false).await.unwrap();
}

#[tokio::test]
async fn missing_engine_names_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    let h = Harness::new();
    let spec = h.spec(1, EngineVersion::Valkey81, "127.0.3.5", 21401);
    let err = start(&EngineCatalog::new(empty.path()), &spec)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("scripts/fetch-engines"), "{text}");
    assert!(text.contains("valkey-8.1/bin/valkey-server"), "{text}");
}

#[tokio::test]
async fn persistence_keeps_data_across_a_graceful_restart() {
    let h = Harness::new();
    for (i, persistence) in [Persistence::Aof, Persistence::Snapshot]
        .into_iter()
        .enumerate()
    {
        let mut spec = h.spec(
            i as u64 + 1,
            EngineVersion::Redis70,
            "127.0.3.6",
            21501 + i as u16,
        );
        spec.persistence = persistence;
        let process = start(&h.catalog, &spec).await.unwrap();
        common::load_keys(&process.client().await.unwrap(), 500).await;
        process.stop(true).await.unwrap();
        let process = start(&h.catalog, &spec).await.unwrap();
        common::assert_keys(&process.client().await.unwrap(), 500).await;
        process.stop(false).await.unwrap();
    }
}

/// An engine that cannot answer SHUTDOWN (frozen with SIGSTOP) is escalated to signals and
/// still stopped within the deadlines; the pidfile it leaves is removed.
#[tokio::test]
async fn stop_escalates_when_the_engine_does_not_answer() {
    let h = Harness::new();
    let spec = h.spec(1, EngineVersion::Valkey81, "127.0.3.7", 21601);
    let process = start(&h.catalog, &spec).await.unwrap();
    // SAFETY: signals the engine this test started, by its pid.
    unsafe {
        libc::kill(process.pid() as libc::pid_t, libc::SIGSTOP);
    }
    let options = StopOptions {
        shutdown_timeout: Duration::from_millis(500),
        signal_timeout: Duration::from_secs(2),
    };
    process.stop_with(true, options).await.unwrap();
    assert!(!process.is_alive());
    assert!(
        !spec.pidfile_path().exists(),
        "stop should remove the pidfile a killed engine left"
    );
    assert!(adopt(&spec).unwrap().is_none());
}
