//! The store scales with the cluster (issue 11): a node joins a cluster whose state holds 2,000
//! databases (more than a snapshot could carry before), as whole binary snapshots between nodes
//! of this release and in chunks a 0.1.0 node accepts, and one whose state passes 20 MB; a
//! member restarted from its files comes back with every committed change; finished actions are
//! pruned, the newest kept.
//!
//! Real store members (openraft, redb files, the internal RPC over HTTP) in this process, on
//! 127.0.110.x-111.x; no engines (the databases are state only).

mod common;

use std::time::Duration;

use common::{fill, state_bytes, Member, Routes};

use flotilla_model::{
    ActionCreation, ActionKind, ActionStatus, ActionUpdate, BdbChange, Command, CommandResult,
    EngineVersion,
};

const DATABASES: u16 = 2000;
/// Databases whose state passes 20 MiB (about 900 bytes of JSON each).
const DATABASES_OVER_20_MB: u16 = 24_000;

/// Nodes 1 and 2 with `databases` databases; the log behind them is purged, so a node that
/// joins now needs a snapshot.
async fn cluster_with_databases(subnet: u8, databases: u16) -> (Member, Member) {
    let one = Member::start(&format!("127.0.{subnet}.11"), Routes::Current).await;
    let two = Member::start(&format!("127.0.{subnet}.12"), Routes::Current).await;
    one.create_cluster().await;
    assert_eq!(two.join(&one).await, 2);
    fill(&one.store, 0, databases, 32).await;
    (one, two)
}

/// `member` joins; checks that it installed a snapshot and holds the same state as `one`, with
/// its `databases` databases.
async fn join_and_compare(one: &Member, member: &Member, databases: u16) {
    let started = std::time::Instant::now();
    assert_eq!(member.join(one).await, 3);
    let applied = one.store.applied_index();
    assert!(
        member
            .store
            .wait_applied(applied, Duration::from_secs(60))
            .await,
        "the new node applied everything"
    );
    eprintln!(
        "joined with a {} byte state in {:?}",
        state_bytes(&one.store),
        started.elapsed()
    );
    let raft = member.store.raft().expect("raft runs");
    let snapshot = raft.metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "the node caught up through a snapshot");
    assert_eq!(member.store.state().bdbs.len(), usize::from(databases));
    assert_eq!(*member.store.state(), *one.store.state());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_cluster_whose_state_holds_2000_databases_and_keeps_it_over_a_restart() {
    let (one, _two) = cluster_with_databases(110, DATABASES).await;
    // Release 0.1.0 sent a snapshot as JSON, its bytes an array of numbers, against a 2 MB
    // request limit: this one could not pass.
    let state = serde_json::to_vec(&*one.store.state()).expect("encodes");
    let as_0_1_0 = serde_json::to_vec(&state).expect("encodes").len();
    assert!(
        as_0_1_0 > 2 << 20,
        "{} bytes, {as_0_1_0} as 0.1.0 sent them: over its 2 MB limit",
        state.len()
    );
    let three = Member::start("127.0.110.13", Routes::Current).await;
    join_and_compare(&one, &three, DATABASES).await;

    // A change after the snapshot, then a restart: the log after the snapshot is applied again.
    let change = Command::UpdateBdb(BdbChange {
        uid: 7,
        memory_size: Some(300 << 20),
        authentication_redis_pass: None,
        remove_authentication_redis_pass: false,
        authentication_redis_pass_sha256: None,
        limits: Default::default(),
        tls_mode: Default::default(),
        config: Default::default(),
    });
    let (_, index) = one.store.propose_indexed(change).await.expect("changed");
    assert!(
        three
            .store
            .wait_applied(index, Duration::from_secs(10))
            .await
    );
    let three = three.restart().await;
    assert!(
        three
            .store
            .wait_applied(index, Duration::from_secs(10))
            .await,
        "every committed change is back after the restart"
    );
    assert_eq!(three.store.state().bdbs[&7].spec.memory_size, 300 << 20);
    assert_eq!(*three.store.state(), *one.store.state());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_binary_snapshots_gets_chunks_within_the_limit_of_0_1_0() {
    let (one, _two) = cluster_with_databases(111, DATABASES).await;
    let three = Member::start("127.0.111.13", Routes::Like0_1_0).await;
    join_and_compare(&one, &three, DATABASES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_cluster_whose_state_passes_20_mb_and_sees_all_of_it() {
    let started = std::time::Instant::now();
    let (one, _two) = cluster_with_databases(112, DATABASES_OVER_20_MB).await;
    eprintln!("filled in {:?}", started.elapsed());
    let bytes = state_bytes(&one.store);
    assert!(bytes >= 20 << 20, "{bytes} bytes: under 20 MiB");
    let three = Member::start("127.0.112.13", Routes::Current).await;
    join_and_compare(&one, &three, DATABASES_OVER_20_MB).await;
    let last = one.store.state().bdb_by_name("db-23999").map(|b| b.uid);
    assert!(last.is_some(), "db-23999 was created");
    assert_eq!(
        three.store.state().bdb_by_name("db-23999").map(|b| b.uid),
        last,
        "the joined node finds the last database by name (its index was built)"
    );
}

/// Creates an action on database 1 and ends it at `ended` (seconds since the epoch).
async fn finished_action(one: &Member, ended: u64) -> u64 {
    let creation = Command::CreateAction(ActionCreation {
        action: ActionKind::DbUpgrade {
            bdb_uid: 1,
            redis_version: EngineVersion::Valkey81,
            preserve_roles: false,
            parallel_shards: 1,
            discard_data: false,
            original_primaries: vec![],
            raise_crdt_protocol: None,
        },
        steps_total: 1,
        first_step: "upgrade".into(),
        created_at: ended,
    });
    let CommandResult::ActionCreated { uid } = one.store.propose(creation).await.expect("created")
    else {
        panic!("no action created");
    };
    let done = Command::UpdateAction(ActionUpdate {
        uid,
        status: ActionStatus::Completed,
        step_index: 1,
        step: "done".into(),
        error: None,
        updated_at: ended,
        finished: None,
        expected_step: Some(0),
    });
    one.store.propose(done).await.expect("completed");
    uid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_the_newest_finished_actions_on_every_member() {
    let one = Member::start("127.0.110.21", Routes::Current).await;
    let two = Member::start("127.0.110.22", Routes::Current).await;
    one.create_cluster().await;
    two.join(&one).await;
    fill(&one.store, 0, 1, 1).await;
    let mut uids = Vec::new();
    for i in 0..130 {
        // Ended long ago (2001), one minute apart.
        uids.push(finished_action(&one, 1_000_000_000 + i * 60).await);
    }
    let pruned = one.store.prune_finished_actions().await.expect("pruned");
    assert_eq!(pruned, 30);
    let kept: Vec<u64> = one.store.state().actions.keys().copied().collect();
    assert_eq!(kept, uids[30..], "the 100 that ended last are kept");
    let index = one.store.applied_index();
    assert!(two.store.wait_applied(index, Duration::from_secs(10)).await);
    assert_eq!(*two.store.state(), *one.store.state());
    assert_eq!(
        one.store.prune_finished_actions().await.expect("nothing"),
        0
    );
}
