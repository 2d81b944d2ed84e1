//! How the proxy logs in to the shards while a cluster moves to the engines' users: as the
//! proxy user, falling back to the default user on an engine that has no users yet (one a
//! 0.1.0 daemon started); its connections log in again as the proxy user, between requests
//! and without a client error, once the engine has moved. Addresses: 127.0.179.x.

mod common;

use std::time::{Duration, Instant};

use common::{users, Setup, SHARD_PASSWORD};
use flotilla_engine::EngineClient;
use flotilla_model::PROXY_USER;
use flotilla_proxy::ShardLogin;

/// The users the engine's clients are logged in as, ours (the admin's) aside.
async fn logged_in_users(engine: &EngineClient) -> Vec<String> {
    let list: String = engine
        .command(redis::cmd("CLIENT").arg("LIST"))
        .await
        .unwrap();
    list.lines()
        .filter(|line| !line.contains("cmd=client"))
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("user=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_connections_fall_back_then_log_in_as_the_proxy_user_once_the_engine_moved() {
    let setup = Setup::start("127.0.179.1", 1, 1, None).await;
    let engine = setup.engine(0).await;
    // The engine as a 0.1.0 daemon leaves it: no proxy user, the default user takes the secret.
    let _: () = engine
        .command(redis::cmd("ACL").arg("DELUSER").arg(PROXY_USER))
        .await
        .unwrap();
    let _: () = engine
        .command(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg("on")
                .arg(format!(">{SHARD_PASSWORD}"))
                .arg(&["~*", "&*", "+@all"]),
        )
        .await
        .unwrap();
    let login = ShardLogin {
        user: Some(PROXY_USER.into()),
        password: users().proxy,
        fallback: Some(SHARD_PASSWORD.into()),
    };
    let next = setup.topology.borrow().clone().with_shard_login(login);
    setup.topology.send(next).unwrap();

    let mut client = setup.client(None).await;
    let () = redis::cmd("SET")
        .arg("k")
        .arg("1")
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(logged_in_users(&engine).await, ["default"], "fell back");

    engine
        .move_to_users(&users(), flotilla_engine::EngineVersion::Redis70)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0u64;
    loop {
        i += 1;
        let n: i64 = redis::cmd("INCR")
            .arg("k")
            .query_async(&mut client)
            .await
            .unwrap();
        assert_eq!(n as u64, i + 1, "every request ran once");
        if logged_in_users(&engine).await == [PROXY_USER] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still logged in as {:?}",
            logged_in_users(&engine).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
