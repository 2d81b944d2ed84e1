//! The shard agent against a real store and real engines: it starts a database's shards,
//! wires replication, follows a promotion, restarts killed engines, adopts engines after an
//! agent restart, and removes the shards of a deleted database.

mod common;

use std::time::Duration;

use common::{eventually, kill_shard, pid_running, RunningAgent, TestNode};
use flotilla_engine::{EngineClient, LinkStatus, Role};
use flotilla_model::rest::{ReplicaLink, ShardReport};
use flotilla_model::{BdbDeletion, Command, ShardPromotion, ShardRole, ShardUid};

/// Time allowed for the agent to bring engines to the wanted state.
const CONVERGE: Duration = Duration::from_secs(30);

/// Waits until the agent reports `uid` up in `role` (a replica also with its link up).
async fn wait_report(agent: &RunningAgent, uid: ShardUid, role: ShardRole) -> ShardReport {
    let what = format!("shard {uid} reported up as {role:?}");
    eventually(&what, CONVERGE, || async {
        match agent.report(uid) {
            Some(r) if r.serves_in(role, ReplicaLink::Required) => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Waits until the agent reports `uid` up again under a pid other than `old_pid`.
async fn wait_restarted(agent: &RunningAgent, uid: ShardUid, old_pid: u32) -> ShardReport {
    let what = format!("shard {uid} restarted (was pid {old_pid})");
    eventually(&what, CONVERGE, || async {
        match agent.report(uid) {
            Some(r) if r.up && r.pid.is_some() && r.pid != Some(old_pid) => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Waits until `key` reads `value` on `client`.
async fn wait_value(client: &EngineClient, key: &str, value: &str) {
    let what = format!("{key}={value} on {}", client.addr());
    eventually(&what, CONVERGE, || async {
        let got: Option<String> = client
            .command(redis::cmd("GET").arg(key))
            .await
            .map_err(|e| e.to_string())?;
        if got.as_deref() == Some(value) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
}

async fn set(client: &EngineClient, key: &str, value: &str) {
    let _: () = client
        .command(redis::cmd("SET").arg(key).arg(value))
        .await
        .unwrap();
}

/// Waits until the engine on `replica_port` replicates the one on `primary_port` with its link up.
async fn wait_follows(node: &TestNode, replica_port: u16, primary_port: u16) {
    let what = format!("engine {replica_port} replicating {primary_port}");
    eventually(&what, CONVERGE, || async {
        let client = EngineClient::connect(node.addr, replica_port, &node.login())
            .await
            .map_err(|e| e.to_string())?;
        let info = client.replication().await.map_err(|e| e.to_string())?;
        let ok = info.role == Role::Replica
            && info.master_port == Some(primary_port)
            && info.master_host.as_deref() == Some(node.addr.to_string().as_str())
            && info.master_link_status == Some(LinkStatus::Up);
        if ok {
            Ok(())
        } else {
            Err(format!("{info:?}"))
        }
    })
    .await
}

#[tokio::test]
async fn shards_follow_the_store() {
    let node = TestNode::create("127.0.9.11").await;
    let (primary_port, replica_port) = (21111, 21112);
    let agent = RunningAgent::start(&node);
    let (bdb, primary, replica) = node.create_bdb("db1", primary_port, replica_port).await;

    // Both engines come up; the replica replicates the primary; the reports say so.
    let m = wait_report(&agent, primary, ShardRole::Primary).await;
    let s = wait_report(&agent, replica, ShardRole::Replica).await;
    assert!(
        m.engine_version.as_deref().unwrap().starts_with("7.0"),
        "{m:?}"
    );
    assert!(
        m.used_memory > 0 && m.pid.is_some() && s.pid.is_some(),
        "{m:?} {s:?}"
    );
    assert_ne!(m.pid, s.pid);
    let on_primary = node.client(primary_port).await;
    let delay = on_primary
        .config_get("repl-diskless-sync-delay")
        .await
        .unwrap();
    assert_eq!(delay.as_deref(), Some("0"));
    let maxmemory = on_primary.config_get("maxmemory").await.unwrap();
    assert_eq!(
        maxmemory.as_deref(),
        Some((64u64 << 20).to_string().as_str())
    );
    set(&on_primary, "k1", "v1").await;
    wait_value(&node.client(replica_port).await, "k1", "v1").await;

    // A killed replica is restarted and resyncs its data from the primary.
    let old_replica_pid = kill_shard(&node, replica);
    wait_restarted(&agent, replica, old_replica_pid).await;
    wait_report(&agent, replica, ShardRole::Replica).await;
    wait_value(&node.client(replica_port).await, "k1", "v1").await;

    // Promotion in the store swaps the roles on the engines.
    node.propose_ok(Command::PromoteShard(ShardPromotion {
        uid: replica,
        require_held: false,
    }))
    .await;
    wait_follows(&node, primary_port, replica_port).await;
    wait_report(&agent, replica, ShardRole::Primary).await;
    wait_report(&agent, primary, ShardRole::Replica).await;
    let on_new_primary = node.client(replica_port).await;
    assert_eq!(
        on_new_primary.replication().await.unwrap().role,
        Role::Primary
    );
    set(&on_new_primary, "k2", "v2").await;
    wait_value(&node.client(primary_port).await, "k2", "v2").await;

    // kill -9 of the primary engine: it is restarted, and its replica follows it again.
    let old_pid = kill_shard(&node, replica);
    let restarted = wait_restarted(&agent, replica, old_pid).await;
    assert_eq!(restarted.role, Some(ShardRole::Primary));
    wait_follows(&node, primary_port, replica_port).await;

    // Deleting the database stops both engines and removes their folders.
    let pids: Vec<u32> = [primary, replica]
        .iter()
        .map(|uid| agent.report(*uid).unwrap().pid.unwrap())
        .collect();
    node.propose_ok(Command::DeleteBdb(BdbDeletion { uid: bdb }))
        .await;
    eventually("engines stopped and folders removed", CONVERGE, || async {
        let left: Vec<String> = [primary, replica]
            .iter()
            .filter(|uid| node.shard_dir(**uid).exists())
            .map(|uid| format!("dir {uid}"))
            .chain(
                pids.iter()
                    .filter(|p| pid_running(**p))
                    .map(|p| format!("pid {p}")),
            )
            .collect();
        if left.is_empty() && agent.observed.snapshot().is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}, reports {:?}", agent.observed.snapshot()))
        }
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn a_new_agent_adopts_running_engines_and_cleans_up_after_a_delete() {
    let node = TestNode::create("127.0.9.12").await;
    let (primary_port, replica_port) = (21211, 21212);
    let (bdb, primary, replica) = node.create_bdb("db2", primary_port, replica_port).await;
    let first = RunningAgent::start(&node);
    let m = wait_report(&first, primary, ShardRole::Primary).await;
    let s = wait_report(&first, replica, ShardRole::Replica).await;
    first.stop().await;

    // The engines outlive the agent; the next agent adopts the same processes.
    let (primary_pid, replica_pid) = (m.pid.unwrap(), s.pid.unwrap());
    assert!(pid_running(primary_pid) && pid_running(replica_pid));
    let second = RunningAgent::start(&node);
    let m = wait_report(&second, primary, ShardRole::Primary).await;
    let s = wait_report(&second, replica, ShardRole::Replica).await;
    assert_eq!((m.pid, s.pid), (Some(primary_pid), Some(replica_pid)));
    set(&node.client(primary_port).await, "k", "v").await;
    wait_value(&node.client(replica_port).await, "k", "v").await;
    second.stop().await;

    // A database deleted while no agent runs: the next agent finds its shards by their folders.
    node.propose_ok(Command::DeleteBdb(BdbDeletion { uid: bdb }))
        .await;
    assert!(pid_running(primary_pid) && pid_running(replica_pid));
    let third = RunningAgent::start(&node);
    eventually(
        "shards of the deleted database removed",
        CONVERGE,
        || async {
            let dirs_left = [primary, replica]
                .iter()
                .filter(|uid| node.shard_dir(**uid).exists())
                .count();
            let pids_left = [primary_pid, replica_pid]
                .iter()
                .filter(|p| pid_running(**p))
                .count();
            if dirs_left == 0 && pids_left == 0 {
                Ok(())
            } else {
                Err(format!("{dirs_left} folders and {pids_left} engines left"))
            }
        },
    )
    .await;
    third.stop().await;
}

#[tokio::test]
async fn a_killed_memory_only_primary_waits_for_its_replica_to_be_promoted() {
    let node = TestNode::create("127.0.9.13").await;
    let (primary_port, replica_port) = (21311, 21312);
    let agent = RunningAgent::start(&node);
    let (_bdb, primary, replica) = node.create_bdb("db3", primary_port, replica_port).await;
    wait_report(&agent, primary, ShardRole::Primary).await;
    wait_report(&agent, replica, ShardRole::Replica).await;
    set(&node.client(primary_port).await, "kept", "yes").await;
    wait_value(&node.client(replica_port).await, "kept", "yes").await;

    // Restarted at once, the primary would come back empty: the agent reports it down instead.
    kill_shard(&node, primary);
    eventually("the killed primary reported down", CONVERGE, || async {
        match agent.report(primary) {
            Some(r) if !r.up => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The orchestrator promotes the replica; the old primary comes back as its replica, with
    // the data.
    node.propose_ok(Command::PromoteShard(ShardPromotion {
        uid: replica,
        require_held: false,
    }))
    .await;
    wait_follows(&node, primary_port, replica_port).await;
    wait_report(&agent, primary, ShardRole::Replica).await;
    wait_value(&node.client(primary_port).await, "kept", "yes").await;
    wait_value(&node.client(replica_port).await, "kept", "yes").await;
    agent.stop().await;
}
