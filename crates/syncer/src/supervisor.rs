//! Which pullers run on this node: one per (CRDB, peer instance, shard) whose local master is
//! on this node, started and stopped as the cluster state changes (a CRDB created or deleted,
//! an instance added or removed, a master moved by failover or migration, a protocol upgrade).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use flotilla_model::ClusterState;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::puller::{self, PullerSpec};
use crate::server::ShardMaster;
use crate::sources::{SourceKey, SyncSources};

/// The pullers node `addr` must run in `state`.
pub fn wanted_pullers(state: &ClusterState, addr: IpAddr) -> BTreeMap<SourceKey, PullerSpec> {
    let mut wanted = BTreeMap::new();
    for crdb in state.crdbs.values() {
        let Some(bdb) = state.bdbs.get(&crdb.local_bdb_uid) else {
            continue;
        };
        let Some(crdt) = &bdb.spec.crdt else {
            continue;
        };
        for (index, range) in state.slot_ranges(bdb.uid).into_iter().enumerate() {
            let Some(master) = state.primary_of(bdb.uid, range) else {
                continue;
            };
            let on_this_node = state
                .nodes
                .get(&master.node_uid)
                .is_some_and(|node| node.addr == addr);
            if !on_this_node {
                continue;
            }
            let shard = index as u16;
            let Ok(master) = ShardMaster::find(state, &crdb.guid, shard) else {
                continue;
            };
            for peer in crdb.peers() {
                if crdb.ghost_instance_ids.contains(&peer.id) {
                    continue;
                }
                let key = SourceKey {
                    crdb_guid: crdb.guid.clone(),
                    peer_instance_id: peer.id,
                    shard,
                };
                let spec = PullerSpec {
                    key: key.clone(),
                    master: master.clone(),
                    protocol: crdt.crdt_protocol_version,
                    peer: peer.clone(),
                };
                wanted.insert(key, spec);
            }
        }
    }
    wanted
}

/// Runs this node's pullers until `stop`: follows `feed` (the cluster state) and keeps the
/// running pullers equal to [`wanted_pullers`]; a puller whose spec changed is restarted (it
/// resumes from the position stored in the engine).
pub async fn run(
    mut feed: watch::Receiver<Arc<ClusterState>>,
    addr: IpAddr,
    sources: SyncSources,
    mut stop: watch::Receiver<bool>,
) {
    let mut running: BTreeMap<SourceKey, (PullerSpec, JoinHandle<()>)> = BTreeMap::new();
    loop {
        let state = feed.borrow_and_update().clone();
        let wanted = wanted_pullers(&state, addr);
        running.retain(|key, (spec, task)| {
            let keep = wanted.get(key) == Some(spec) && !task.is_finished();
            if !keep {
                task.abort();
                sources.remove(key);
                tracing::info!(crdb = %key.crdb_guid, peer = key.peer_instance_id, shard = key.shard, "syncer: puller stopped");
            }
            keep
        });
        for (key, spec) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            tracing::info!(crdb = %key.crdb_guid, peer = key.peer_instance_id, shard = key.shard, master = %spec.master.addr, "syncer: puller started");
            let task = tokio::spawn(puller::run(spec.clone(), sources.clone()));
            running.insert(key, (spec, task));
        }
        tokio::select! {
            changed = feed.changed() => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (key, (_, task)) in running {
        task.abort();
        sources.remove(&key);
    }
}
