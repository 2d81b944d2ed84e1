//! The engines' users on every engine family: the proxy user runs what the proxy forwards and
//! nothing that administers the engine (also not from scripts), the cluster secret no longer
//! logs in as the default user, a replica syncs as the replication user, and an engine started
//! the 0.1.0 way (default user and secret only) moves to the users without a restart while its
//! open connections keep working.

mod common;

use common::{client, load_keys, replica_of, Harness, PASSWORD};
use flotilla_engine::{start, wait_for_sync, EngineClient, EngineLogin, EngineVersion, ShardSpec};
use flotilla_model::EngineUsers;
use std::time::Duration;

const IP: &str = "127.0.175.1";

async fn as_proxy(spec: &ShardSpec) -> EngineClient {
    let login = EngineLogin::proxy(spec.users.as_ref().unwrap());
    EngineClient::connect(spec.bind, spec.port, &login)
        .await
        .unwrap_or_else(|e| panic!("proxy login to {}: {e}", spec.addr()))
}

/// Runs `words` and returns the error text, or `None` when the engine ran it.
async fn refusal(client: &EngineClient, words: &[&str]) -> Option<String> {
    let mut cmd = redis::cmd(words[0]);
    for word in &words[1..] {
        cmd.arg(*word);
    }
    client
        .command::<redis::Value>(&cmd)
        .await
        .err()
        .map(|e| e.to_string())
}

/// Commands the proxy must never run on a shard, directly or from a script.
const ADMIN_COMMANDS: &[&[&str]] = &[
    &["CONFIG", "SET", "dir", "/tmp"],
    &["CONFIG", "GET", "dir"],
    &["DEBUG", "SLEEP", "0"],
    &["MODULE", "LIST"],
    &["SWAPDB", "0", "1"],
    &["SELECT", "1"],
    &["MOVE", "k", "1"],
    &["MIGRATE", "127.0.0.1", "1", "k", "0", "10"],
    &["SHUTDOWN", "NOSAVE"],
    &["ACL", "LIST"],
    &["SLAVEOF", "127.0.0.1", "1"],
    &["REPLICAOF", "127.0.0.1", "1"],
    &["FAILOVER"],
    &["SAVE"],
    &["BGSAVE"],
    &["BGREWRITEAOF"],
    &["SLOWLOG", "GET"],
    &["MONITOR"],
    &["CLIENT", "KILL", "ID", "1"],
    &["CLIENT", "LIST"],
    &["LATENCY", "LATEST"],
    &["SYNC"],
];

async fn check_proxy_user(spec: &ShardSpec) {
    let proxy = as_proxy(spec).await;
    let version = spec.version;
    for words in ADMIN_COMMANDS {
        let refused = refusal(&proxy, words).await;
        let text = refused.unwrap_or_else(|| panic!("{version}: proxy user ran {words:?}"));
        assert!(
            text.contains("NOPERM")
                || text.contains("permission")
                || text.contains("DEBUG command not allowed"),
            "{version}: {words:?} refused for another reason: {text}"
        );
        let args: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let script = format!("return redis.call({})", args.join(","));
        let text = refusal(&proxy, &["EVAL", &script, "0"])
            .await
            .unwrap_or_else(|| panic!("{version}: proxy user ran {words:?} from EVAL"));
        assert!(
            text.contains("can't run this command")
                || text.contains("no permissions")
                || text.contains("not allowed from script"),
            "{version}: EVAL {words:?} refused for another reason: {text}"
        );
    }
    // What the proxy forwards (crates/proxy/COMMANDS.md), the `@dangerous` ones included.
    for words in [
        &["SET", "k", "v"][..],
        &["GET", "k"],
        &["RPUSH", "l", "2", "1"],
        &["SORT", "l"],
        &["KEYS", "*"],
        &["MEMORY", "USAGE", "k"],
        &["LASTSAVE"],
        &["PUBLISH", "ch", "m"],
        &["EVAL", "return redis.call('GET','k')", "0"],
        &["SCRIPT", "LOAD", "return 1"],
        &["FLUSHDB"],
        &["FLUSHALL"],
        // INFO (combined by the endpoint), the command table and ACL categories.
        &["INFO", "keyspace"],
        &["COMMAND", "COUNT"],
        &["ACL", "CAT"],
    ] {
        assert_eq!(refusal(&proxy, words).await, None, "{version}: {words:?}");
    }
}

async fn check_default_user_is_off(spec: &ShardSpec) {
    let login = EngineLogin::default_user(PASSWORD);
    let err = EngineClient::connect(spec.bind, spec.port, &login)
        .await
        .expect_err("the cluster secret must not log in as the default user");
    assert!(
        matches!(&err, flotilla_engine::EngineError::Redis { source, .. }
            if source.kind() == redis::ErrorKind::AuthenticationFailed),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_engine_family_gives_each_role_least_privilege() {
    let h = Harness::new();
    for (i, version) in EngineVersion::ALL.into_iter().enumerate() {
        let port = 21751 + 2 * i as u16;
        let primary = h.spec(10 + 2 * i as u64, version, IP, port);
        let process = start(&h.catalog, &primary).await.unwrap();
        check_default_user_is_off(&primary).await;
        check_proxy_user(&primary).await;
        let admin = client(&primary).await;
        assert!(!admin.fell_back());
        assert!(!admin.default_user_takes(PASSWORD).await.unwrap());
        load_keys(&admin, 100).await;

        // A replica logs in to its primary as the replication user and syncs.
        let replica = replica_of(h.spec(11 + 2 * i as u64, version, IP, port + 1), &primary);
        let replica_process = start(&h.catalog, &replica).await.unwrap();
        let replica_client = client(&replica).await;
        wait_for_sync(&admin, &replica_client, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{version}: replica as the replication user: {e}"));
        replica_process.stop(false).await.unwrap();
        process.stop(false).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_started_the_0_1_0_way_moves_to_the_users_without_a_restart() {
    let h = Harness::new();
    for (i, version) in EngineVersion::ALL.into_iter().enumerate() {
        let mut spec = h.spec(30 + i as u64, version, "127.0.175.2", 21761 + i as u16);
        let users = spec.users.take().unwrap();
        let process = start(&h.catalog, &spec).await.unwrap();
        let pid = process.pid();
        // A connection as the default user, open before the move (a 0.1.0 proxy's).
        let old = EngineClient::connect(spec.bind, spec.port, &EngineLogin::default_user(PASSWORD))
            .await
            .unwrap();
        let admin = EngineLogin::admin(&users, PASSWORD);
        let legacy = EngineClient::connect(spec.bind, spec.port, &admin)
            .await
            .unwrap();
        assert!(
            legacy.fell_back(),
            "{version}: no users yet, the login falls back"
        );
        assert!(legacy.default_user_takes(PASSWORD).await.unwrap());
        legacy.move_to_users(&users, version).await.unwrap();

        let moved = EngineClient::connect(spec.bind, spec.port, &admin)
            .await
            .unwrap();
        assert!(!moved.fell_back(), "{version}");
        assert!(!moved.default_user_takes(PASSWORD).await.unwrap());
        assert_eq!(moved.server().await.unwrap().process_id, pid, "no restart");
        assert_eq!(
            moved.config_get("masteruser").await.unwrap().as_deref(),
            Some("flotilla-replication")
        );
        spec.users = Some(users.clone());
        check_default_user_is_off(&spec).await;
        check_proxy_user(&spec).await;
        // The connection opened as the default user keeps working.
        old.ping().await.unwrap();
        let _: () = old
            .command(redis::cmd("SET").arg("still").arg("here"))
            .await
            .unwrap_or_else(|e| panic!("{version}: an open default connection broke: {e}"));
        // Moving again changes nothing.
        moved.move_to_users(&users, version).await.unwrap();
        assert_eq!(users, EngineUsers::derive(PASSWORD));
        // The 0.1.0 record (no users) still stops it: its admin login derives the users.
        assert!(process.spec().users.is_none());
        let started = std::time::Instant::now();
        process.stop(false).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SHUTDOWN was refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_engine_keeps_the_default_user_and_has_the_users() {
    let h = Harness::new();
    let mut spec = h.spec(40, EngineVersion::Redis62, "127.0.175.3", 21771);
    spec.legacy = true;
    let process = start(&h.catalog, &spec).await.unwrap();
    let secret = EngineClient::connect(spec.bind, spec.port, &EngineLogin::default_user(PASSWORD))
        .await
        .expect("a 0.1.0 node logs in with the secret");
    secret.ping().await.unwrap();
    let admin = client(&spec).await;
    assert!(!admin.fell_back());
    assert!(admin.default_user_takes(PASSWORD).await.unwrap());
    assert!(!admin.default_user_takes("another").await.unwrap());
    check_proxy_user(&spec).await;
    process.stop(false).await.unwrap();
}
