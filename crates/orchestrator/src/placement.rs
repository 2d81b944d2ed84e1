//! Placement: which node runs each shard of a new database, and on which port.
//!
//! Primaries and replicas of one slot range always land on different nodes; within that rule each
//! shard goes to the node with the least memory already placed on it (ties: lowest uid), so a
//! database spreads across the cluster and nodes fill evenly. Ports are the lowest free ones in
//! the shard range on that node. The result goes into the `CreateBdb` command; the state
//! machine re-checks it, so a plan made on stale state is refused rather than applied.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_model::{
    BdbSpec, ClusterState, NodeUid, Shard, ShardPlan, ShardRole, SlotRange, SHARD_PORTS,
};

/// Why a database cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// Not enough eligible nodes (replication needs two).
    NotEnoughNodes {
        /// Nodes needed.
        needed: usize,
        /// Nodes available.
        available: usize,
    },
    /// A node has no free shard port left.
    NoFreePort(NodeUid),
}

impl std::fmt::Display for PlacementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlacementError::NotEnoughNodes { needed, available } => write!(
                f,
                "replication: needs {needed} nodes that are up, the cluster has {available}; \
                 join another node or create the database without --replication"
            ),
            PlacementError::NoFreePort(node) => {
                write!(f, "node {node} has no free shard port in 20000-29999")
            }
        }
    }
}

impl std::error::Error for PlacementError {}

/// Places every shard of `spec` on `eligible` nodes (those that are up).
pub fn place(
    state: &ClusterState,
    spec: &BdbSpec,
    eligible: &[NodeUid],
) -> Result<Vec<ShardPlan>, PlacementError> {
    let needed = if spec.replication { 2 } else { 1 };
    if eligible.len() < needed {
        return Err(PlacementError::NotEnoughNodes {
            needed,
            available: eligible.len(),
        });
    }
    let shard_memory = spec.memory_size / u64::from(spec.shards_count.max(1));
    let mut load = memory_by_node(state, eligible);
    let mut primaries = primaries_by_node(state, eligible);
    let mut used_ports = ports_by_node(state);
    let mut plans = Vec::new();
    for index in 0..spec.shards_count {
        let slots = SlotRange::even(index, spec.shards_count);
        let primary = least_loaded(&load, &primaries, None);
        plans.push(plan_on(
            primary,
            ShardRole::Primary,
            slots,
            &mut used_ports,
        )?);
        *load.entry(primary).or_default() += shard_memory;
        *primaries.entry(primary).or_default() += 1;
        if spec.replication {
            let replica = least_loaded(&load, &primaries, Some(primary));
            plans.push(plan_on(
                replica,
                ShardRole::Replica,
                slots,
                &mut used_ports,
            )?);
            *load.entry(replica).or_default() += shard_memory;
        }
    }
    Ok(plans)
}

/// Places one extra replica for slot range `slots` of a database (a temporary replica during an
/// upgrade): on the least loaded eligible node other than `primary_on` (the node of the range's
/// primary shard), at its lowest free port.
pub fn place_replica(
    state: &ClusterState,
    slots: SlotRange,
    primary_on: NodeUid,
    eligible: &[NodeUid],
) -> Result<ShardPlan, PlacementError> {
    let candidates: Vec<NodeUid> = eligible
        .iter()
        .copied()
        .filter(|n| *n != primary_on)
        .collect();
    if candidates.is_empty() {
        return Err(PlacementError::NotEnoughNodes {
            needed: 2,
            available: eligible.len(),
        });
    }
    let load = memory_by_node(state, &candidates);
    let primaries = primaries_by_node(state, &candidates);
    let node = least_loaded(&load, &primaries, None);
    plan_on(node, ShardRole::Replica, slots, &mut ports_by_node(state))
}

/// The lowest free shard port on `node` (for a shard added beside the ones it has, such as a
/// primary's replacement during an upgrade).
pub fn free_port(state: &ClusterState, node: NodeUid) -> Result<u16, PlacementError> {
    let used = ports_by_node(state).remove(&node).unwrap_or_default();
    SHARD_PORTS
        .clone()
        .find(|p| !used.contains(p))
        .ok_or(PlacementError::NoFreePort(node))
}

/// The memory a shard takes where it is placed: its database's limit split over its shards.
pub(crate) fn shard_memory(state: &ClusterState, shard: &Shard) -> u64 {
    state.bdbs.get(&shard.bdb_uid).map_or(0, |bdb| {
        bdb.spec.memory_size / u64::from(bdb.spec.shards_count.max(1))
    })
}

/// The memory placed on each eligible node.
pub(crate) fn memory_by_node(state: &ClusterState, eligible: &[NodeUid]) -> BTreeMap<NodeUid, u64> {
    let mut load: BTreeMap<NodeUid, u64> = eligible.iter().map(|uid| (*uid, 0)).collect();
    for shard in state.shards.values() {
        if let Some(total) = load.get_mut(&shard.node_uid) {
            *total += shard_memory(state, shard);
        }
    }
    load
}

fn ports_by_node(state: &ClusterState) -> BTreeMap<NodeUid, BTreeSet<u16>> {
    let mut ports: BTreeMap<NodeUid, BTreeSet<u16>> = BTreeMap::new();
    for shard in state.shards.values() {
        ports.entry(shard.node_uid).or_default().insert(shard.port);
    }
    ports
}

/// Primary shards per eligible node: ties on memory go to the node with fewer primaries, so the
/// write load spreads too.
pub(crate) fn primaries_by_node(
    state: &ClusterState,
    eligible: &[NodeUid],
) -> BTreeMap<NodeUid, u32> {
    let mut primaries: BTreeMap<NodeUid, u32> = eligible.iter().map(|uid| (*uid, 0)).collect();
    for shard in state
        .shards
        .values()
        .filter(|s| s.role == ShardRole::Primary)
    {
        if let Some(count) = primaries.get_mut(&shard.node_uid) {
            *count += 1;
        }
    }
    primaries
}

fn least_loaded(
    load: &BTreeMap<NodeUid, u64>,
    primaries: &BTreeMap<NodeUid, u32>,
    except: Option<NodeUid>,
) -> NodeUid {
    load.iter()
        .filter(|(uid, _)| Some(**uid) != except)
        .min_by_key(|(uid, memory)| (**memory, primaries.get(uid).copied().unwrap_or(0), **uid))
        .map(|(uid, _)| *uid)
        .expect("placement checked there are enough nodes")
}

fn plan_on(
    node_uid: NodeUid,
    role: ShardRole,
    assigned_slots: SlotRange,
    used_ports: &mut BTreeMap<NodeUid, BTreeSet<u16>>,
) -> Result<ShardPlan, PlacementError> {
    let used = used_ports.entry(node_uid).or_default();
    let port = SHARD_PORTS
        .clone()
        .find(|p| !used.contains(p))
        .ok_or(PlacementError::NoFreePort(node_uid))?;
    used.insert(port);
    Ok(ShardPlan {
        node_uid,
        role,
        assigned_slots,
        port,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flotilla_model::{
        BdbCreation, ClusterCreation, Command, Credentials, DataPersistence, EngineVersion,
        NodeAddition, NodeSpec,
    };

    /// A cluster of `n` nodes (127.0.0.11, .12, ...) and nothing else.
    pub(crate) fn state_with_nodes(n: u64) -> ClusterState {
        let mut state = ClusterState::default();
        let node = |i: u64| NodeSpec {
            addr: [127, 0, 0, 10 + i as u8].into(),
            software_version: "0.1.0".into(),
            os: "test".into(),
            host: Default::default(),
        };
        state.apply(Command::CreateCluster(ClusterCreation {
            name: "c".into(),
            credentials: Credentials {
                username: "a".into(),
                password_hash: "h".into(),
            },
            secret: "s".into(),
            created_at: 0,
            node: node(1),
            cluster_version: None,
        }));
        for i in 2..=n {
            state.apply(Command::AddNode(NodeAddition { node: node(i) }));
        }
        state
    }

    fn spec(name: &str, port: u16, shards: u16, replication: bool) -> BdbSpec {
        BdbSpec {
            name: name.into(),
            port,
            memory_size: 300 << 20,
            shards_count: shards,
            replication,
            data_persistence: DataPersistence::Disabled,
            redis_version: EngineVersion::Redis70,
            authentication_redis_pass: None,
            authentication_redis_pass_sha256: None,
            limits: Default::default(),
            tls_mode: Default::default(),
            config: Default::default(),
            crdt: None,
        }
    }

    #[test]
    fn replicas_never_share_a_node_with_their_primary_and_load_spreads() {
        let mut state = state_with_nodes(3);
        let plans = place(&state, &spec("a", 12000, 3, true), &[1, 2, 3]).unwrap();
        assert_eq!(plans.len(), 6);
        for pair in plans.chunks(2) {
            assert_eq!(pair[0].assigned_slots, pair[1].assigned_slots);
            assert_ne!(pair[0].node_uid, pair[1].node_uid);
        }
        let mut per_node = BTreeMap::new();
        for plan in &plans {
            *per_node.entry(plan.node_uid).or_insert(0) += 1;
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
        let created = state.apply(Command::CreateBdb(BdbCreation {
            bdb: spec("a", 12000, 3, true),
            created_at: 0,
            shards: plans,
        }));
        assert!(matches!(
            created,
            flotilla_model::CommandResult::BdbCreated { .. }
        ));
        let second = place(&state, &spec("b", 12001, 1, true), &[1, 2, 3]).unwrap();
        let ports: Vec<u16> = second.iter().map(|p| p.port).collect();
        assert_eq!(ports, [20002, 20002], "next free port on each node");
    }

    #[test]
    fn primaries_spread_over_two_nodes() {
        let state = state_with_nodes(2);
        let plans = place(&state, &spec("a", 12000, 2, true), &[1, 2]).unwrap();
        let nodes_of_primaries: Vec<u64> = plans
            .iter()
            .filter(|p| p.role == ShardRole::Primary)
            .map(|p| p.node_uid)
            .collect();
        assert_eq!(nodes_of_primaries, [1, 2], "one primary per node");
    }

    #[test]
    fn replication_needs_two_nodes() {
        let state = state_with_nodes(1);
        let err = place(&state, &spec("a", 12000, 2, true), &[1]).unwrap_err();
        assert!(err.to_string().contains("replication"), "{err}");
        assert_eq!(
            place(&state, &spec("a", 12000, 2, false), &[1])
                .unwrap()
                .len(),
            2
        );
    }
}
