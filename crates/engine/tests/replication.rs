//! Replication between real engines: cross-version full sync with 20k keys, CLIENT PAUSE WRITE
//! on every engine, and the switchover sequence with partial resync.
//! Addresses: 127.0.3.20 - 127.0.3.39, ports 22xxx.

mod common;

use std::time::Duration;

use common::{assert_keys, client, load_keys, replica_of, Harness};
use flotilla_engine::{start, wait_for_sync, EngineVersion, LinkStatus, Role};

const KEYS: usize = 20_000;
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `primary_version` on `ip_a`, loads 20k keys, starts `replica_version` on `ip_b` as
/// its replica, waits for sync and checks every key and the announced address.
async fn full_sync(
    primary_version: EngineVersion,
    replica_version: EngineVersion,
    ip_a: &str,
    ip_b: &str,
) {
    let h = Harness::new();
    let primary_spec = h.spec(1, primary_version, ip_a, 22001);
    let primary = start(&h.catalog, &primary_spec).await.unwrap();
    let pc = primary.client().await.unwrap();
    load_keys(&pc, KEYS).await;

    let replica_spec = replica_of(h.spec(2, replica_version, ip_b, 22002), &primary_spec);
    let replica = start(&h.catalog, &replica_spec).await.unwrap();
    let rc = replica.client().await.unwrap();
    let info = wait_for_sync(&pc, &rc, SYNC_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{primary_version} -> {replica_version}: {e}"));
    assert_eq!(info.role, Role::Replica);
    assert_eq!(info.master_host.as_deref(), Some(ip_a));
    assert_eq!(info.master_port, Some(22001));
    assert_keys(&rc, KEYS).await;

    // The primary names the replica by the replica's own address (replica-announce-ip).
    let primary_view = pc.replication().await.unwrap();
    let entry = primary_view.replica(ip_b, 22002).unwrap_or_else(|| {
        panic!(
            "primary lists {:?}, not {ip_b}:22002",
            primary_view.replicas
        )
    });
    assert!(entry.is_online(), "{entry:?}");
    assert_eq!(pc.stats().await.unwrap().sync_full, 1);

    replica.stop(false).await.unwrap();
    primary.stop(false).await.unwrap();
}

#[tokio::test]
async fn redis62_primary_feeds_valkey91_replica() {
    full_sync(
        EngineVersion::Redis62,
        EngineVersion::Valkey91,
        "127.0.3.20",
        "127.0.3.21",
    )
    .await;
}

#[tokio::test]
async fn redis70_primary_feeds_valkey81_replica() {
    full_sync(
        EngineVersion::Redis70,
        EngineVersion::Valkey81,
        "127.0.3.22",
        "127.0.3.23",
    )
    .await;
}

#[tokio::test]
async fn valkey91_primary_feeds_valkey81_replica() {
    full_sync(
        EngineVersion::Valkey91,
        EngineVersion::Valkey81,
        "127.0.3.24",
        "127.0.3.25",
    )
    .await;
}

/// An older replica cannot load a newer primary's RDB: the replica logs the refusal and its
/// link never comes up. This is why database upgrades go replicas first.
#[tokio::test]
async fn newer_primary_cannot_feed_older_replica() {
    let h = Harness::new();
    let primary_spec = h.spec(1, EngineVersion::Valkey81, "127.0.3.26", 22201);
    let primary = start(&h.catalog, &primary_spec).await.unwrap();
    load_keys(&primary.client().await.unwrap(), 100).await;
    let replica_spec = replica_of(
        h.spec(2, EngineVersion::Redis70, "127.0.3.27", 22202),
        &primary_spec,
    );
    let replica = start(&h.catalog, &replica_spec).await.unwrap();

    let refused = poll_log(
        &replica_spec.log_path(),
        "Can't handle RDB format version 11",
        SYNC_TIMEOUT,
    )
    .await;
    assert!(refused, "redis-7.0 replica should refuse valkey-8.1's RDB");
    let rc = replica.client().await.unwrap();
    let info = rc.replication().await.unwrap();
    assert_ne!(info.master_link_status, Some(LinkStatus::Up), "{info:?}");
    let size: usize = rc.command(&redis::cmd("DBSIZE")).await.unwrap();
    assert_eq!(
        size, 0,
        "the older replica holds none of the primary's data"
    );
    assert!(!EngineVersion::Valkey81.can_feed(EngineVersion::Redis70));
    replica.stop(false).await.unwrap();
    primary.stop(false).await.unwrap();
}

/// Polls a log file (bounded) until it contains `needle`.
async fn poll_log(path: &std::path::Path, needle: &str, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// CLIENT PAUSE ... WRITE: a write from another client waits, reads answer, nothing is written
/// until CLIENT UNPAUSE, then the waiting write completes.
#[tokio::test]
async fn client_pause_write_blocks_writes_not_reads_on_every_engine() {
    let h = Harness::new();
    for (i, version) in EngineVersion::ALL.into_iter().enumerate() {
        let spec = h.spec(i as u64 + 1, version, "127.0.3.28", 22301 + i as u16);
        let process = start(&h.catalog, &spec).await.unwrap();
        let admin = process.client().await.unwrap();
        let writer = client(&spec).await;
        let reader = client(&spec).await;

        admin
            .client_pause_write(30_000)
            .await
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        let mut set = redis::cmd("SET");
        set.arg("fenced").arg("1");
        let mut write = Box::pin(writer.command::<()>(&set));
        let early = tokio::time::timeout(Duration::from_millis(500), &mut write).await;
        assert!(
            early.is_err(),
            "{version}: a write completed during CLIENT PAUSE WRITE"
        );
        reader.ping().await.unwrap();
        let seen: Option<String> = reader
            .command(redis::cmd("GET").arg("fenced"))
            .await
            .unwrap();
        assert_eq!(
            seen, None,
            "{version}: the paused write must not have executed"
        );

        admin.client_unpause().await.unwrap();
        write
            .await
            .unwrap_or_else(|e| panic!("{version}: write after unpause: {e}"));
        let seen: Option<String> = reader
            .command(redis::cmd("GET").arg("fenced"))
            .await
            .unwrap();
        assert_eq!(seen.as_deref(), Some("1"), "{version}");
        process.stop(false).await.unwrap();
    }
}

/// The switchover the upgrades rely on: fence M, wait for R to reach M's offset, promote R,
/// make M R's replica; M must continue by partial resync (no full sync) and see R's writes.
async fn switchover(m_version: EngineVersion, r_version: EngineVersion, ip_m: &str, ip_r: &str) {
    let h = Harness::new();
    let m_spec = h.spec(1, m_version, ip_m, 22401);
    let m = start(&h.catalog, &m_spec).await.unwrap();
    let mc = m.client().await.unwrap();
    load_keys(&mc, 5_000).await;
    let r_spec = replica_of(h.spec(2, r_version, ip_r, 22402), &m_spec);
    let r = start(&h.catalog, &r_spec).await.unwrap();
    let rc = r.client().await.unwrap();
    wait_for_sync(&mc, &rc, SYNC_TIMEOUT).await.unwrap();
    // Writes that reach R through the stream, not the snapshot.
    mc.command::<()>(redis::cmd("SET").arg("before").arg("m"))
        .await
        .unwrap();

    mc.client_pause_write(10_000).await.unwrap();
    let m_offset = mc.replication().await.unwrap().master_repl_offset;
    rc.wait_offset(m_offset, Duration::from_secs(10))
        .await
        .unwrap();
    rc.replicaof_no_one().await.unwrap();
    assert_eq!(rc.replication().await.unwrap().role, Role::Primary);
    mc.replicaof(r_spec.bind, r_spec.port).await.unwrap();
    mc.client_unpause().await.unwrap();

    let info = wait_for_sync(&rc, &mc, SYNC_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{m_version} rejoining {r_version}: {e}"));
    assert_eq!(info.master_host.as_deref(), Some(ip_r));
    let stats = rc.stats().await.unwrap();
    assert_eq!(
        stats.sync_partial_ok, 1,
        "{m_version} -> {r_version}: {stats:?}"
    );
    assert_eq!(stats.sync_full, 0, "{m_version} -> {r_version}: {stats:?}");

    let err = mc
        .command::<()>(redis::cmd("SET").arg("late").arg("m"))
        .await
        .unwrap_err();
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("read only"),
        "old primary must refuse writes as a replica: {err}"
    );
    rc.command::<()>(redis::cmd("SET").arg("after").arg("r"))
        .await
        .unwrap();
    wait_for_sync(&rc, &mc, SYNC_TIMEOUT).await.unwrap();
    let after: Option<String> = mc.command(redis::cmd("GET").arg("after")).await.unwrap();
    assert_eq!(after.as_deref(), Some("r"));
    let before: Option<String> = rc.command(redis::cmd("GET").arg("before")).await.unwrap();
    assert_eq!(before.as_deref(), Some("m"));
    let size: usize = mc.command(&redis::cmd("DBSIZE")).await.unwrap();
    assert_eq!(size, 5_002);
    r.stop(false).await.unwrap();
    m.stop(false).await.unwrap();
}

#[tokio::test]
async fn switchover_redis70_to_valkey81_partial_resync() {
    switchover(
        EngineVersion::Redis70,
        EngineVersion::Valkey81,
        "127.0.3.32",
        "127.0.3.33",
    )
    .await;
}

#[tokio::test]
async fn switchover_redis62_to_valkey91_partial_resync() {
    switchover(
        EngineVersion::Redis62,
        EngineVersion::Valkey91,
        "127.0.3.34",
        "127.0.3.35",
    )
    .await;
}

#[tokio::test]
async fn switchover_same_version_partial_resync() {
    switchover(
        EngineVersion::Valkey91,
        EngineVersion::Valkey91,
        "127.0.3.36",
        "127.0.3.37",
    )
    .await;
}
