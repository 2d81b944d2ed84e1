//! Maintenance mode's plans, made when `flotilla node maintenance UID on|off` is asked for and
//! recorded in the action ([`MaintenanceOn`], [`MaintenanceOff`]): whether the cluster keeps
//! its quorum with the node offline (counting nodes already in maintenance as offline), where
//! each shard goes (placement as for a node removal: memory, a slot range's copies never on
//! one node, never onto a node that is leaving or in maintenance), which primaries only hand
//! their role over (`keep_slave_shards`), and, for `off`, which shards come back from the
//! snapshot. A request that cannot succeed is refused here, naming the object and the fix,
//! before anything changes.

use std::collections::BTreeMap;

use flotilla_model::rest::NodeStatus;
use flotilla_model::{
    ClusterState, MaintenanceOff, MaintenanceOn, NodeUid, Shard, ShardDemotion, ShardRole,
    SnapshotShard,
};

use crate::lifecycle::{
    check_movable, list, not_found_node, plan_moves_off, shard_move, status_word, LifecycleError,
    Rooms,
};
use crate::Observed;

/// What `on` was asked to do besides moving the node's shards away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnOptions {
    /// Keep replicas on the node; primaries hand their role to a replica elsewhere.
    pub keep_replicas: bool,
    /// Hand primary-ship away first.
    pub demote_node: bool,
    /// Replace the snapshot of an earlier activation.
    pub overwrite_snapshot: bool,
}

/// Refuses putting node `node` in maintenance when the voters that stay up and out of
/// maintenance could not form a quorum (`voters`: Raft's voting members; `statuses`: liveness
/// as the primary node sees it). Unlike Redis Software's check, nodes already in maintenance
/// count as offline: they may be restarted at the same time.
pub fn check_quorum(
    state: &ClusterState,
    node: NodeUid,
    voters: &[NodeUid],
    statuses: &BTreeMap<NodeUid, NodeStatus>,
) -> Result<(), LifecycleError> {
    let in_maintenance: Vec<NodeUid> = voters
        .iter()
        .copied()
        .filter(|v| *v != node && state.in_maintenance(*v))
        .collect();
    let down: Vec<NodeUid> = voters
        .iter()
        .copied()
        .filter(|v| *v != node && !in_maintenance.contains(v))
        .filter(|v| statuses.get(v) != Some(&NodeStatus::Up))
        .collect();
    let online: Vec<NodeUid> = voters
        .iter()
        .copied()
        .filter(|v| *v != node && !in_maintenance.contains(v) && !down.contains(v))
        .collect();
    let needed = voters.len() / 2 + 1;
    if online.len() >= needed {
        return Ok(());
    }
    let mut fixes = Vec::new();
    if let Some(first) = in_maintenance.first() {
        fixes.push(format!(
            "node(s) {} are in maintenance: turn it off on one first (`flotilla node maintenance {first} off`)",
            list(&in_maintenance)
        ));
    }
    if !down.is_empty() {
        fixes.push(format!(
            "node(s) {} are down: bring them back up (`flotilla status` shows them)",
            list(&down)
        ));
    }
    if fixes.is_empty() {
        fixes.push("join more nodes first (`flotilla cluster join`)".into());
    }
    Err(LifecycleError::Quorum(format!(
        "putting node {node} in maintenance would lose quorum: {needed} of the {} voting nodes must agree on every change, and only {} would stay up and out of maintenance ({}); {}; nothing was changed",
        voters.len(),
        online.len(),
        list(&online),
        fixes.join("; ")
    )))
}

/// The plan of `on` for node `node`: every shard moves away, or with `keep_replicas` each
/// primary hands its role to a replica on another node that is up and out of maintenance (a
/// primary without one moves) and replicas stay.
pub fn plan_on(
    state: &ClusterState,
    node: NodeUid,
    options: OnOptions,
    observed: &Observed,
) -> Result<MaintenanceOn, LifecycleError> {
    if !state.nodes.contains_key(&node) {
        return Err(not_found_node(node));
    }
    let mut demotions = Vec::new();
    let mut leaving: Vec<&Shard> = Vec::new();
    for shard in state.shards_on(node) {
        check_movable(shard)?;
        if !options.keep_replicas {
            leaving.push(shard);
        } else if shard.role == ShardRole::Primary {
            match takeover_replica(state, shard, &observed.nodes) {
                Some(_) => demotions.push(ShardDemotion {
                    shard_uid: shard.uid,
                    bdb_uid: shard.bdb_uid,
                    assigned_slots: shard.assigned_slots,
                }),
                None => leaving.push(shard),
            }
        }
    }
    let moves = plan_moves_off(state, node, leaving.into_iter(), observed)?;
    Ok(MaintenanceOn {
        node_uid: node,
        keep_replicas: options.keep_replicas,
        demote_node: options.demote_node,
        overwrite_snapshot: options.overwrite_snapshot,
        demotions,
        moves,
    })
}

/// The replica that takes primary `shard`'s role when its node goes into maintenance: a
/// permanent one on another node that is up and not in maintenance.
pub fn takeover_replica<'a>(
    state: &'a ClusterState,
    shard: &Shard,
    statuses: &BTreeMap<NodeUid, NodeStatus>,
) -> Option<&'a Shard> {
    state.slot_group_of(shard).replicas().find(|r| {
        r.node_uid != shard.node_uid
            && !r.temporary
            && statuses.get(&r.node_uid) == Some(&NodeStatus::Up)
            && !state.in_maintenance(r.node_uid)
    })
}

/// The plan of `off` for node `node`: it ends the latest activation; when that is the last
/// one (and shards are restored), every slot range the snapshot had on the node gets a copy
/// back there, moved from the node that holds a copy it did not hold then, and each range's
/// primary is switched back to where the snapshot had it.
pub fn plan_off(
    state: &ClusterState,
    node: NodeUid,
    skip_shards_restore: bool,
    observed: &Observed,
) -> Result<MaintenanceOff, LifecycleError> {
    let record = state.nodes.get(&node).ok_or_else(|| not_found_node(node))?;
    let maintenance = record.maintenance.as_ref().ok_or_else(|| {
        LifecycleError::Invalid(format!(
            "node {node} is not in maintenance mode; nothing to turn off (`flotilla status` shows the nodes in maintenance)"
        ))
    })?;
    let activation = *maintenance
        .activations
        .last()
        .expect("a node in maintenance has an activation");
    let mut off = MaintenanceOff {
        node_uid: node,
        skip_shards_restore,
        activation,
        moves: Vec::new(),
        primaries: Vec::new(),
    };
    if skip_shards_restore || maintenance.activations.len() > 1 {
        return Ok(off);
    }
    let snapshot = &maintenance.snapshot;
    let mine: Vec<&SnapshotShard> = snapshot.iter().filter(|s| s.node_uid == node).collect();
    if !mine.is_empty() && observed.nodes.get(&node) != Some(&NodeStatus::Up) {
        return Err(LifecycleError::Invalid(format!(
            "node {node} is not up ({}), so its shards cannot come back; start it, or pass --skip-shards-restore to only clear the mark; nothing was changed",
            status_word(observed.nodes.get(&node))
        )));
    }
    let mut rooms = Rooms::new(state, &[node], observed);
    for place in mine {
        let Some(shard) = shard_to_bring_back(state, snapshot, place) else {
            continue;
        };
        rooms.place(state, shard, &[node])?;
        off.moves.push(shard_move(shard, node));
    }
    off.primaries = snapshot
        .iter()
        .filter(|s| s.role == ShardRole::Primary && state.bdbs.contains_key(&s.bdb_uid))
        .cloned()
        .collect();
    Ok(off)
}

/// The shard of `place`'s slot range that moves back to `place`'s node: none when the node
/// still holds a copy (a kept replica) or the range is gone (its database deleted); else the
/// copy on a node that did not hold the range when the snapshot was taken (where it went),
/// then one in the role the node had, then the lowest uid.
fn shard_to_bring_back<'a>(
    state: &'a ClusterState,
    snapshot: &[SnapshotShard],
    place: &SnapshotShard,
) -> Option<&'a Shard> {
    let group = state.slot_group(place.bdb_uid, place.assigned_slots);
    if group.shards.iter().any(|s| s.node_uid == place.node_uid) {
        return None;
    }
    let held_then = |node: NodeUid| {
        snapshot.iter().any(|s| {
            s.bdb_uid == place.bdb_uid
                && s.assigned_slots == place.assigned_slots
                && s.node_uid == node
        })
    };
    group
        .shards
        .iter()
        .copied()
        .filter(|s| !s.temporary)
        .min_by_key(|s| (held_then(s.node_uid), s.role != place.role, s.uid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_model::{
        BdbCreation, BdbSpec, Command, DataPersistence, EngineVersion, MaintenanceEntry, ShardPlan,
        SlotRange,
    };

    const GB: u64 = 1 << 30;

    /// Three nodes and a one-shard replicated database with its primary on node 1 and its
    /// replica on node 2.
    fn cluster() -> ClusterState {
        let mut state = crate::placement::tests::state_with_nodes(3);
        let spec = BdbSpec {
            name: "db".into(),
            port: 12000,
            memory_size: GB,
            shards_count: 1,
            replication: true,
            data_persistence: DataPersistence::Disabled,
            redis_version: EngineVersion::Valkey91,
            authentication_redis_pass: None,
            authentication_redis_pass_sha256: None,
            limits: Default::default(),
            tls_mode: Default::default(),
            config: Default::default(),
            crdt: None,
        };
        let plan = |node_uid, role| ShardPlan {
            node_uid,
            role,
            assigned_slots: SlotRange::even(0, 1),
            port: 20000,
        };
        state.apply(Command::CreateBdb(BdbCreation {
            bdb: spec,
            created_at: 0,
            shards: vec![plan(1, ShardRole::Primary), plan(2, ShardRole::Replica)],
        }));
        state
    }

    fn observed(state: &ClusterState) -> Observed {
        Observed {
            nodes: state.nodes.keys().map(|n| (*n, NodeStatus::Up)).collect(),
            shards: BTreeMap::new(),
            node_memory: state.nodes.keys().map(|n| (*n, 8 * GB)).collect(),
            node_problems: BTreeMap::new(),
        }
    }

    fn enter(state: &mut ClusterState, node: NodeUid, activation: u64) {
        let snapshot = Some(state.placement_snapshot(node));
        state.apply(Command::EnterMaintenance(MaintenanceEntry {
            node_uid: node,
            activation,
            snapshot,
        }));
    }

    #[test]
    fn quorum_counts_nodes_already_in_maintenance_as_offline() {
        let mut state = cluster();
        let seen = observed(&state);
        assert!(check_quorum(&state, 1, &[1, 2, 3], &seen.nodes).is_ok());
        enter(&mut state, 2, 9);
        let e = check_quorum(&state, 1, &[1, 2, 3], &seen.nodes).unwrap_err();
        assert_eq!(e.code(), "quorum_lost");
        let text = e.to_string();
        assert!(text.contains("putting node 1 in maintenance"), "{text}");
        assert!(text.contains("flotilla node maintenance 2 off"), "{text}");
        assert!(
            check_quorum(&state, 2, &[1, 2, 3], &seen.nodes).is_ok(),
            "a node already in maintenance may be put in it again"
        );
    }

    #[test]
    fn on_moves_every_shard_off_or_with_keep_replicas_only_demotes_primaries() {
        let state = cluster();
        let seen = observed(&state);
        let on = plan_on(&state, 1, OnOptions::default(), &seen).unwrap();
        assert_eq!(on.moves.len(), 1);
        assert_eq!(
            on.moves[0].to_node, 3,
            "not onto node 2, which holds the replica"
        );
        let keep = OnOptions {
            keep_replicas: true,
            ..OnOptions::default()
        };
        let on = plan_on(&state, 1, keep, &seen).unwrap();
        assert!(on.moves.is_empty());
        assert_eq!(on.demotions.len(), 1);
        let on = plan_on(&state, 2, keep, &seen).unwrap();
        assert!(
            on.moves.is_empty() && on.demotions.is_empty(),
            "a replica stays"
        );
    }

    #[test]
    fn on_refuses_when_no_node_may_take_a_shard_and_never_places_on_a_node_in_maintenance() {
        let mut state = cluster();
        enter(&mut state, 3, 9);
        let e = plan_on(&state, 1, OnOptions::default(), &observed(&state)).unwrap_err();
        assert_eq!(e.code(), "anti_affinity", "{e}");
        let mut small = observed(&state);
        small.node_memory.insert(3, GB / 2);
        let state = cluster();
        let e = plan_on(&state, 1, OnOptions::default(), &small).unwrap_err();
        assert_eq!(e.code(), "insufficient_memory", "{e}");
    }

    #[test]
    fn off_brings_back_the_copy_that_moved_and_the_primary_roles() {
        let mut state = cluster();
        enter(&mut state, 1, 9);
        // As `on` left it: the primary moved to node 3 (shard 3), node 2 still holds a replica.
        let moved = ShardPlan {
            node_uid: 3,
            role: ShardRole::Replica,
            assigned_slots: SlotRange::even(0, 1),
            port: 20001,
        };
        let added = state.apply(Command::AddTemporaryReplica(
            flotilla_model::TemporaryReplicaAddition {
                bdb_uid: 1,
                plan: moved,
                redis_version: EngineVersion::Valkey91,
            },
        ));
        assert!(matches!(
            added,
            flotilla_model::CommandResult::ShardAdded { uid: 3 }
        ));
        state.apply(Command::PromoteShard(flotilla_model::ShardPromotion {
            uid: 3,
            require_held: false,
        }));
        state.apply(Command::CompleteMigration(flotilla_model::ShardMigration {
            old: 1,
            new: 3,
        }));
        let off = plan_off(&state, 1, false, &observed(&state)).unwrap();
        let moves: Vec<(u64, u64, u64)> = off
            .moves
            .iter()
            .map(|m| (m.shard_uid, m.from_node, m.to_node))
            .collect();
        assert_eq!(moves, [(3, 3, 1)], "the copy on node 3 comes back");
        assert_eq!(off.primaries.len(), 1);
        assert_eq!(off.primaries[0].node_uid, 1);
        let skip = plan_off(&state, 1, true, &observed(&state)).unwrap();
        assert!(skip.moves.is_empty() && skip.primaries.is_empty());
        assert_eq!(
            plan_off(&state, 2, false, &observed(&state))
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }

    #[test]
    fn off_of_a_stacked_activation_restores_nothing() {
        let mut state = cluster();
        enter(&mut state, 1, 9);
        enter(&mut state, 1, 11);
        let off = plan_off(&state, 1, false, &observed(&state)).unwrap();
        assert_eq!(off.activation, 11);
        assert!(off.moves.is_empty() && off.primaries.is_empty());
    }
}
