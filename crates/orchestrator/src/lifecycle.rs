//! Node lifecycle: where the shards of a node that leaves go (the drain plan of
//! `flotilla node remove`), whether one shard may move to a node (`flotilla shard migrate`),
//! whether the cluster keeps its quorum without a node, and moving primary-ship to a node
//! (`flotilla cluster promote`).
//!
//! The plans are made when the action is asked for, from the state and what the primary node
//! observes, and recorded in the action ([`ShardMove`]), so an action that cannot succeed is
//! refused before anything changes, and a resumed action moves exactly what was planned. The
//! rules: a slot range's copies (its primary and replicas) never share a node; a node takes
//! shards only while the memory placed on it (each shard counted at its database's memory
//! limit per shard, as for a new database) stays within the memory it reports; among the
//! nodes that fit, the least loaded (memory, then primaries, then uid) takes the shard.

use std::collections::BTreeMap;

use flotilla_model::rest::NodeStatus;
use flotilla_model::{ClusterState, NodeUid, Shard, ShardMove, ShardRole, ShardUid};
use flotilla_store::StoreError;

use crate::placement::{memory_by_node, primaries_by_node, shard_memory};
use crate::{Observed, Observer};

/// Why a node cannot be removed or a shard cannot move; nothing was changed. Each message
/// names the object and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// The node or shard does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be done as asked (the last node, a shard onto its own node, ...).
    #[error("{0}")]
    Invalid(String),
    /// Without the node the remaining voters could not agree (Raft quorum).
    #[error("{0}")]
    Quorum(String),
    /// The nodes that could take a shard lack the memory.
    #[error("{0}")]
    Capacity(String),
    /// Every node that could take a shard already holds a copy of its slot range.
    #[error("{0}")]
    AntiAffinity(String),
    /// Another action runs on a database or node the request touches.
    #[error("{0}")]
    Busy(String),
}

impl LifecycleError {
    /// A stable code for the REST error body.
    pub fn code(&self) -> &'static str {
        match self {
            LifecycleError::NotFound(_) => "not_found",
            LifecycleError::Invalid(_) => "invalid_request",
            LifecycleError::Quorum(_) => "quorum_lost",
            LifecycleError::Capacity(_) => "insufficient_memory",
            LifecycleError::AntiAffinity(_) => "anti_affinity",
            LifecycleError::Busy(_) => "action_running",
        }
    }
}

/// Refuses a request touching databases `bdbs` or nodes `nodes` while another action runs on
/// one of them (the store refuses it too; this names it before anything is planned).
pub fn check_not_busy(
    state: &ClusterState,
    bdbs: &[flotilla_model::BdbUid],
    nodes: &[NodeUid],
) -> Result<(), LifecycleError> {
    let on_bdb = bdbs
        .iter()
        .find_map(|b| Some((format!("database {b}"), state.running_action_on(*b)?)));
    let on_node = || {
        nodes
            .iter()
            .find_map(|n| Some((format!("node {n}"), state.running_action_on_node(*n)?)))
    };
    let Some((object, running)) = on_bdb.or_else(on_node) else {
        return Ok(());
    };
    Err(LifecycleError::Busy(format!(
        "action {} ({}) is running on {object} (step '{}'); wait for it (`flotilla action wait {}`) or cancel it (`flotilla action cancel {}`); nothing was changed",
        running.uid,
        running.kind.name(),
        running.step,
        running.uid,
        running.uid
    )))
}

/// The databases with a shard on node `node`.
pub fn bdbs_on(state: &ClusterState, node: NodeUid) -> Vec<flotilla_model::BdbUid> {
    let mut bdbs: Vec<_> = state.shards_on(node).map(|s| s.bdb_uid).collect();
    bdbs.sort_unstable();
    bdbs.dedup();
    bdbs
}

/// Refuses removing node `node` when the voters left could not form a quorum with the nodes
/// that are up now (`voters`: Raft's voting members; `statuses`: liveness as the primary node
/// sees it).
pub fn check_quorum(
    node: NodeUid,
    voters: &[NodeUid],
    statuses: &BTreeMap<NodeUid, NodeStatus>,
) -> Result<(), LifecycleError> {
    let remaining: Vec<NodeUid> = voters.iter().copied().filter(|v| *v != node).collect();
    if remaining.is_empty() {
        return Err(LifecycleError::Invalid(format!(
            "node {node} is the cluster's only voting node; a cluster keeps at least one (join another node first: `flotilla cluster join`)"
        )));
    }
    let is_up = |uid: &NodeUid| statuses.get(uid) == Some(&NodeStatus::Up);
    let (up, down): (Vec<NodeUid>, Vec<NodeUid>) = remaining.iter().partition(|v| is_up(v));
    let needed = remaining.len() / 2 + 1;
    if up.len() >= needed {
        return Ok(());
    }
    Err(LifecycleError::Quorum(format!(
        "removing node {node} would lose quorum: {} voting nodes would remain ({}), of which {} {} up ({}), and {needed} must agree on every change; bring node(s) {} back up first (`flotilla status` shows which nodes are down); nothing was changed",
        remaining.len(),
        list(&remaining),
        up.len(),
        if up.len() == 1 { "is" } else { "are" },
        list(&up),
        list(&down),
    )))
}

/// Where each shard of node `node` goes when it leaves: a move per shard, in shard uid order.
/// `observed` gives liveness and each node's memory.
pub fn plan_drain(
    state: &ClusterState,
    node: NodeUid,
    observed: &Observed,
) -> Result<Vec<ShardMove>, LifecycleError> {
    if !state.nodes.contains_key(&node) {
        return Err(not_found_node(node));
    }
    plan_moves_off(state, node, state.shards_on(node), observed)
}

/// Where each of `shards` (on node `node`) goes: to the nodes that are up and take shards (not
/// leaving, not in maintenance), as [`plan_drain`] places them.
pub(crate) fn plan_moves_off<'a>(
    state: &ClusterState,
    node: NodeUid,
    shards: impl Iterator<Item = &'a Shard>,
    observed: &Observed,
) -> Result<Vec<ShardMove>, LifecycleError> {
    let candidates: Vec<NodeUid> = state
        .nodes
        .keys()
        .copied()
        .filter(|n| *n != node && !state.takes_no_shards(*n))
        .filter(|n| observed.nodes.get(n) == Some(&NodeStatus::Up))
        .collect();
    let mut rooms = Rooms::new(state, &candidates, observed);
    let mut moves = Vec::new();
    for shard in shards {
        check_movable(shard)?;
        let to_node = rooms.place(state, shard, &candidates)?;
        moves.push(shard_move(shard, to_node));
    }
    Ok(moves)
}

/// The move of shard `uid` to node `to_node`, if the rules allow it (`flotilla shard migrate`).
pub fn plan_migration(
    state: &ClusterState,
    uid: ShardUid,
    to_node: NodeUid,
    observed: &Observed,
) -> Result<ShardMove, LifecycleError> {
    let shard = state.shards.get(&uid).ok_or_else(|| {
        LifecycleError::NotFound(format!(
            "shard {uid} does not exist; `flotilla db show DB` lists a database's shards"
        ))
    })?;
    if !state.nodes.contains_key(&to_node) {
        return Err(not_found_node(to_node));
    }
    if shard.node_uid == to_node {
        return Err(LifecycleError::Invalid(format!(
            "shard {uid} already runs on node {to_node}; name another node"
        )));
    }
    check_movable(shard)?;
    if state.is_leaving(to_node) {
        return Err(LifecycleError::Invalid(format!(
            "node {to_node} is being removed; name another node"
        )));
    }
    if state.in_maintenance(to_node) {
        return Err(LifecycleError::Invalid(format!(
            "node {to_node} is in maintenance mode and takes no shard; name another node or turn maintenance off (`flotilla node maintenance {to_node} off`)"
        )));
    }
    if observed.nodes.get(&to_node) != Some(&NodeStatus::Up) {
        return Err(LifecycleError::Invalid(format!(
            "node {to_node} is not up ({}); start it or name another node",
            status_word(observed.nodes.get(&to_node))
        )));
    }
    let mut rooms = Rooms::new(state, &[to_node], observed);
    rooms.place(state, shard, &[to_node])?;
    Ok(shard_move(shard, to_node))
}

/// What the primary node observes, once it knows every node's liveness: right after a primary
/// node change every node is `unknown` for one liveness window, and a plan made then would
/// count them as not up. Bounded: after two windows the answer is taken as it is.
pub async fn observed_settled(observer: &Observer) -> Observed {
    let deadline = tokio::time::Instant::now() + 2 * flotilla_model::timing::LIVENESS_WINDOW;
    loop {
        let observed = observer.observed().await;
        let unknown = observed.nodes.values().any(|s| *s == NodeStatus::Unknown);
        if !unknown || tokio::time::Instant::now() > deadline {
            return observed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Makes node `uid` the primary node, from any node (forwarded to the primary node).
pub async fn promote(observer: &Observer, uid: NodeUid) -> Result<(), StoreError> {
    let store = &observer.store;
    if store.primary_node() == Some(uid) {
        return Ok(());
    }
    if store.is_primary_node() {
        return store.move_primary_node_to(uid).await;
    }
    store
        .call_primary_node(crate::observed::PROMOTE_PATH, &uid)
        .await?
}

/// A temporary shard belongs to an action that did not finish: it moves with that action.
pub(crate) fn check_movable(shard: &Shard) -> Result<(), LifecycleError> {
    if shard.temporary {
        return Err(LifecycleError::Invalid(format!(
            "shard {} of database {} is a temporary copy left by an upgrade that did not finish; run that database's upgrade again (`flotilla db upgrade {}`), then retry",
            shard.uid, shard.bdb_uid, shard.bdb_uid
        )));
    }
    Ok(())
}

pub(crate) fn shard_move(shard: &Shard, to_node: NodeUid) -> ShardMove {
    ShardMove {
        shard_uid: shard.uid,
        bdb_uid: shard.bdb_uid,
        assigned_slots: shard.assigned_slots,
        from_node: shard.node_uid,
        to_node,
    }
}

pub(crate) fn not_found_node(node: NodeUid) -> LifecycleError {
    LifecycleError::NotFound(format!(
        "node {node} is not in the cluster; `flotilla status` lists the nodes"
    ))
}

/// The memory placed on each candidate node and what it may hold, as moves are planned.
pub(crate) struct Rooms {
    load: BTreeMap<NodeUid, u64>,
    primaries: BTreeMap<NodeUid, u32>,
    capacity: BTreeMap<NodeUid, u64>,
}

impl Rooms {
    pub(crate) fn new(state: &ClusterState, candidates: &[NodeUid], observed: &Observed) -> Rooms {
        Rooms {
            load: memory_by_node(state, candidates),
            primaries: primaries_by_node(state, candidates),
            capacity: observed.node_memory.clone(),
        }
    }

    /// The free memory of `node`, `None` when it did not report its memory (not checked).
    fn free(&self, node: NodeUid) -> Option<u64> {
        let capacity = *self.capacity.get(&node)?;
        Some(capacity.saturating_sub(self.load.get(&node).copied().unwrap_or(0)))
    }

    /// Picks the node among `candidates` that takes `shard`, and counts it there.
    pub(crate) fn place(
        &mut self,
        state: &ClusterState,
        shard: &Shard,
        candidates: &[NodeUid],
    ) -> Result<NodeUid, LifecycleError> {
        let holders: Vec<NodeUid> = state
            .slot_group_of(shard)
            .shards
            .iter()
            .map(|s| s.node_uid)
            .collect();
        let allowed: Vec<NodeUid> = candidates
            .iter()
            .copied()
            .filter(|n| !holders.contains(n))
            .collect();
        let what = describe(shard);
        if allowed.is_empty() {
            return Err(self.no_node_for(&what, candidates, &holders));
        }
        let need = shard_memory(state, shard);
        let fits: Vec<NodeUid> = allowed
            .iter()
            .copied()
            .filter(|n| self.free(*n).is_none_or(|free| free >= need))
            .collect();
        let Some(node) = fits.into_iter().min_by_key(|n| {
            let primaries = self.primaries.get(n).copied().unwrap_or(0);
            (self.load.get(n).copied().unwrap_or(0), primaries, *n)
        }) else {
            let rooms: Vec<String> = allowed
                .iter()
                .map(|n| {
                    let capacity = self.capacity.get(n).copied().unwrap_or(0);
                    format!(
                        "node {n} has {} free of {}",
                        megabytes(self.free(*n).unwrap_or(0)),
                        megabytes(capacity)
                    )
                })
                .collect();
            return Err(LifecycleError::Capacity(format!(
                "the other nodes lack memory for {what}, which needs {}: {}; join a node with more memory (`flotilla cluster join`) or lower the database's memory (`flotilla db set {} --memory SIZE`); nothing was changed",
                megabytes(need),
                rooms.join(", "),
                shard.bdb_uid
            )));
        };
        *self.load.entry(node).or_default() += need;
        if shard.role == ShardRole::Primary {
            *self.primaries.entry(node).or_default() += 1;
        }
        Ok(node)
    }

    fn no_node_for(
        &self,
        what: &str,
        candidates: &[NodeUid],
        holders: &[NodeUid],
    ) -> LifecycleError {
        if candidates.is_empty() {
            return LifecycleError::Capacity(format!(
                "no other node is up to take {what}; start or join a node first (`flotilla cluster join`); nothing was changed"
            ));
        }
        let others: Vec<NodeUid> = holders
            .iter()
            .copied()
            .filter(|n| candidates.contains(n))
            .collect();
        LifecycleError::AntiAffinity(format!(
            "{what} has nowhere to go: node(s) {} already hold a copy of its slot range, and a primary shard and its replica never share a node; join another node first (`flotilla cluster join`); nothing was changed",
            list(&others)
        ))
    }
}

fn describe(shard: &Shard) -> String {
    let role = match shard.role {
        ShardRole::Primary => "primary",
        ShardRole::Replica => "replica",
    };
    format!(
        "{role} shard {} of database {} (slots {})",
        shard.uid, shard.bdb_uid, shard.assigned_slots
    )
}

pub(crate) fn status_word(status: Option<&NodeStatus>) -> &'static str {
    match status {
        Some(NodeStatus::Up) => "up",
        Some(NodeStatus::Down) => "down",
        Some(NodeStatus::Unknown) | None => "unknown",
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{} MB", bytes >> 20)
}

pub(crate) fn list(uids: &[NodeUid]) -> String {
    let texts: Vec<String> = uids.iter().map(|u| u.to_string()).collect();
    if texts.is_empty() {
        return "none".into();
    }
    texts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_model::{
        BdbCreation, BdbSpec, Command, DataPersistence, EngineVersion, ShardPlan, SlotRange,
    };

    const GB: u64 = 1 << 30;

    fn cluster(nodes: u64) -> ClusterState {
        crate::placement::tests::state_with_nodes(nodes)
    }

    /// A one-shard replicated database of `memory` with its primary and replica on the nodes.
    fn db(state: &mut ClusterState, port: u16, memory: u64, primary: u64, replica: u64) {
        let spec = BdbSpec {
            name: format!("db{port}"),
            port,
            memory_size: memory,
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
            port: 20000 + port - 12000,
        };
        let created = state.apply(Command::CreateBdb(BdbCreation {
            bdb: spec,
            created_at: 0,
            shards: vec![
                plan(primary, ShardRole::Primary),
                plan(replica, ShardRole::Replica),
            ],
        }));
        assert!(
            matches!(created, flotilla_model::CommandResult::BdbCreated { .. }),
            "{created:?}"
        );
    }

    fn observed(state: &ClusterState, memory: u64) -> Observed {
        Observed {
            nodes: state.nodes.keys().map(|n| (*n, NodeStatus::Up)).collect(),
            shards: BTreeMap::new(),
            node_memory: state.nodes.keys().map(|n| (*n, memory)).collect(),
            node_problems: BTreeMap::new(),
        }
    }

    #[test]
    fn a_drain_sends_each_shard_to_a_node_without_a_copy_of_its_range_least_loaded_first() {
        let mut state = cluster(4);
        db(&mut state, 12000, GB, 1, 2);
        db(&mut state, 12001, GB, 3, 1);
        let moves = plan_drain(&state, 1, &observed(&state, 8 * GB)).unwrap();
        let targets: Vec<(u64, u64)> = moves.iter().map(|m| (m.shard_uid, m.to_node)).collect();
        // Shard 1 (db 12000's primary) may not go to node 2 (its replica); node 4 is empty.
        // Shard 4 (db 12001's replica) may not go to node 3; node 4 now holds 1 GB, node 2 too:
        // the tie goes to the node with fewer primaries (node 2 holds none, node 4 one).
        assert_eq!(targets, [(1, 4), (4, 2)]);
        assert!(moves.iter().all(|m| m.from_node == 1 && m.bdb_uid >= 1));
    }

    #[test]
    fn a_drain_is_refused_when_every_other_node_holds_a_copy_naming_the_shard_and_the_fix() {
        let mut state = cluster(2);
        db(&mut state, 12000, GB, 1, 2);
        let e = plan_drain(&state, 1, &observed(&state, 8 * GB)).unwrap_err();
        assert_eq!(e.code(), "anti_affinity");
        let text = e.to_string();
        assert!(text.contains("primary shard 1 of database 1"), "{text}");
        assert!(text.contains("node(s) 2 already hold a copy"), "{text}");
        assert!(text.contains("flotilla cluster join"), "{text}");
    }

    #[test]
    fn a_drain_is_refused_when_the_other_nodes_lack_memory() {
        let mut state = cluster(3);
        db(&mut state, 12000, 6 * GB, 1, 2);
        db(&mut state, 12001, 6 * GB, 3, 1);
        let e = plan_drain(&state, 1, &observed(&state, 8 * GB)).unwrap_err();
        assert_eq!(e.code(), "insufficient_memory");
        let text = e.to_string();
        assert!(text.contains("shard 1 of database 1"), "{text}");
        assert!(
            text.contains("node 3 has 2048 MB free of 8192 MB"),
            "{text}"
        );
        assert!(text.contains("flotilla db set 1 --memory"), "{text}");
        let unreported = Observed {
            node_memory: BTreeMap::new(),
            ..observed(&state, 0)
        };
        assert!(
            plan_drain(&state, 1, &unreported).is_ok(),
            "a node that does not report its memory is not checked"
        );
    }

    #[test]
    fn nodes_down_or_leaving_take_no_shard() {
        let mut state = cluster(4);
        db(&mut state, 12000, GB, 1, 2);
        let mut seen = observed(&state, 8 * GB);
        seen.nodes.insert(4, NodeStatus::Down);
        let moves = plan_drain(&state, 1, &seen).unwrap();
        assert_eq!(moves[0].to_node, 3);
        seen.nodes.insert(3, NodeStatus::Unknown);
        let e = plan_drain(&state, 1, &seen).unwrap_err();
        assert_eq!(e.code(), "anti_affinity", "{e}");
    }

    #[test]
    fn a_migration_names_what_blocks_it() {
        let mut state = cluster(3);
        db(&mut state, 12000, GB, 1, 2);
        let seen = observed(&state, 8 * GB);
        let planned = plan_migration(&state, 1, 3, &seen).unwrap();
        assert_eq!((planned.from_node, planned.to_node), (1, 3));
        let e = plan_migration(&state, 1, 2, &seen).unwrap_err();
        assert_eq!(e.code(), "anti_affinity", "{e}");
        assert!(plan_migration(&state, 1, 1, &seen).is_err());
        assert_eq!(
            plan_migration(&state, 9, 3, &seen).unwrap_err().code(),
            "not_found"
        );
        assert_eq!(
            plan_migration(&state, 1, 9, &seen).unwrap_err().code(),
            "not_found"
        );
        let small = observed(&state, GB / 2);
        assert_eq!(
            plan_migration(&state, 1, 3, &small).unwrap_err().code(),
            "insufficient_memory"
        );
    }

    #[test]
    fn quorum_is_kept_only_when_a_majority_of_the_voters_left_is_up() {
        let up = |uids: &[u64]| -> BTreeMap<u64, NodeStatus> {
            (1..=5)
                .map(|u| {
                    let status = if uids.contains(&u) {
                        NodeStatus::Up
                    } else {
                        NodeStatus::Down
                    };
                    (u, status)
                })
                .collect()
        };
        assert!(check_quorum(3, &[1, 2, 3], &up(&[1, 2, 3])).is_ok());
        assert!(
            check_quorum(3, &[1, 2, 3], &up(&[1, 2])).is_ok(),
            "the leaving node may be down"
        );
        let e = check_quorum(2, &[1, 2, 3], &up(&[1, 2])).unwrap_err();
        assert_eq!(e.code(), "quorum_lost");
        let text = e.to_string();
        assert!(text.contains("removing node 2 would lose quorum"), "{text}");
        assert!(text.contains("bring node(s) 3 back up"), "{text}");
        assert!(
            check_quorum(1, &[1], &up(&[1])).is_err(),
            "the last voter stays"
        );
        assert!(check_quorum(5, &[1, 2, 3, 4, 5], &up(&[1, 2, 3])).is_ok());
        assert!(check_quorum(5, &[1, 2, 3, 4, 5], &up(&[1, 2])).is_err());
    }
}
