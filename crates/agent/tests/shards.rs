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

/// Waits until the agent reports `uid` up in `role` (a slave also with its link up).
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
        let client = EngineClient::connect(node.addr, replica_port, &node.secret())
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
    let (master_port, slave_port) = (21111, 21112);
    let agent = RunningAgent::start(&node);
    let (bdb, master, slave) = node.create_bdb("db1", master_port, slave_port).await;

    // Both engines come up; the slave replicates the master; the reports say so.
    let m = wait_report(&agent, master, ShardRole::Master).await;
    let s = wait_report(&agent, slave, ShardRole::Slave).await;
    assert!(
        m.engine_version.as_deref().unwrap().starts_with("7.0"),
        "{m:?}"
    );
    assert!(
        m.used_memory > 0 && m.pid.is_some() && s.pid.is_some(),
        "{m:?} {s:?}"
    );
    assert_ne!(m.pid, s.pid);
    let on_master = node.client(master_port).await;
    let delay = on_master
        .config_get("repl-diskless-sync-delay")
        .await
        .unwrap();
    assert_eq!(delay.as_deref(), Some("0"));
    let maxmemory = on_master.config_get("maxmemory").await.unwrap();
    assert_eq!(
        maxmemory.as_deref(),
        Some((64u64 << 20).to_string().as_str())
    );
    set(&on_master, "k1", "v1").await;
    wait_value(&node.client(slave_port).await, "k1", "v1").await;

    // A killed slave is restarted and resyncs its data from the master.
    let old_slave_pid = kill_shard(&node, slave);
    wait_restarted(&agent, slave, old_slave_pid).await;
    wait_report(&agent, slave, ShardRole::Slave).await;
    wait_value(&node.client(slave_port).await, "k1", "v1").await;

    // Promotion in the store swaps the roles on the engines.
    node.propose_ok(Command::PromoteShard(ShardPromotion {
        uid: slave,
        require_held: false,
    }))
    .await;
    wait_follows(&node, master_port, slave_port).await;
    wait_report(&agent, slave, ShardRole::Master).await;
    wait_report(&agent, master, ShardRole::Slave).await;
    let on_new_master = node.client(slave_port).await;
    assert_eq!(
        on_new_master.replication().await.unwrap().role,
        Role::Primary
    );
    set(&on_new_master, "k2", "v2").await;
    wait_value(&node.client(master_port).await, "k2", "v2").await;

    // kill -9 of the master engine: it is restarted, and its slave follows it again.
    let old_pid = kill_shard(&node, slave);
    let restarted = wait_restarted(&agent, slave, old_pid).await;
    assert_eq!(restarted.role, Some(ShardRole::Master));
    wait_follows(&node, master_port, slave_port).await;

    // Deleting the database stops both engines and removes their folders.
    let pids: Vec<u32> = [master, slave]
        .iter()
        .map(|uid| agent.report(*uid).unwrap().pid.unwrap())
        .collect();
    node.propose_ok(Command::DeleteBdb(BdbDeletion { uid: bdb }))
        .await;
    eventually("engines stopped and folders removed", CONVERGE, || async {
        let left: Vec<String> = [master, slave]
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
    let (master_port, slave_port) = (21211, 21212);
    let (bdb, master, slave) = node.create_bdb("db2", master_port, slave_port).await;
    let first = RunningAgent::start(&node);
    let m = wait_report(&first, master, ShardRole::Master).await;
    let s = wait_report(&first, slave, ShardRole::Slave).await;
    first.stop().await;

    // The engines outlive the agent; the next agent adopts the same processes.
    let (master_pid, slave_pid) = (m.pid.unwrap(), s.pid.unwrap());
    assert!(pid_running(master_pid) && pid_running(slave_pid));
    let second = RunningAgent::start(&node);
    let m = wait_report(&second, master, ShardRole::Master).await;
    let s = wait_report(&second, slave, ShardRole::Slave).await;
    assert_eq!((m.pid, s.pid), (Some(master_pid), Some(slave_pid)));
    set(&node.client(master_port).await, "k", "v").await;
    wait_value(&node.client(slave_port).await, "k", "v").await;
    second.stop().await;

    // A database deleted while no agent runs: the next agent finds its shards by their folders.
    node.propose_ok(Command::DeleteBdb(BdbDeletion { uid: bdb }))
        .await;
    assert!(pid_running(master_pid) && pid_running(slave_pid));
    let third = RunningAgent::start(&node);
    eventually(
        "shards of the deleted database removed",
        CONVERGE,
        || async {
            let dirs_left = [master, slave]
                .iter()
                .filter(|uid| node.shard_dir(**uid).exists())
                .count();
            let pids_left = [master_pid, slave_pid]
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
async fn a_killed_memory_only_master_waits_for_its_replica_to_be_promoted() {
    let node = TestNode::create("127.0.9.13").await;
    let (master_port, slave_port) = (21311, 21312);
    let agent = RunningAgent::start(&node);
    let (_bdb, master, slave) = node.create_bdb("db3", master_port, slave_port).await;
    wait_report(&agent, master, ShardRole::Master).await;
    wait_report(&agent, slave, ShardRole::Slave).await;
    set(&node.client(master_port).await, "kept", "yes").await;
    wait_value(&node.client(slave_port).await, "kept", "yes").await;

    // Restarted at once, the master would come back empty: the agent reports it down instead.
    kill_shard(&node, master);
    eventually("the killed master reported down", CONVERGE, || async {
        match agent.report(master) {
            Some(r) if !r.up => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The orchestrator promotes the replica; the old master comes back as its replica, with
    // the data.
    node.propose_ok(Command::PromoteShard(ShardPromotion {
        uid: slave,
        require_held: false,
    }))
    .await;
    wait_follows(&node, master_port, slave_port).await;
    wait_report(&agent, master, ShardRole::Slave).await;
    wait_value(&node.client(master_port).await, "kept", "yes").await;
    wait_value(&node.client(slave_port).await, "kept", "yes").await;
    agent.stop().await;
}
