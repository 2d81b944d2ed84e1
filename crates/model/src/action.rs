//! Actions: long operations kept in the store as state machines with named steps.
//!
//! The primary node drives every running action; after each step it records the next step in
//! the store, and every step is safe to run again, so when the primary node dies mid-action
//! the next one resumes where the record says (DESIGN.md, Actions).

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bdb::{BdbUid, ShardUid, SlotRange};
use crate::engine_version::EngineVersion;
use crate::state::NodeUid;

/// An action's uid.
pub type ActionUid = u64;

/// Finished actions always kept, the most recently ended first, whatever their age: what
/// `flotilla action list` shows of the past.
pub const FINISHED_ACTIONS_KEPT: usize = 100;
/// Finished actions that ended less than this long ago are kept too (up to
/// [`FINISHED_ACTIONS_MAX`]), so a busy week's history survives.
pub const FINISHED_ACTIONS_KEPT_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most finished actions kept, however young: the state (and every snapshot) stays bounded
/// however many actions run.
pub const FINISHED_ACTIONS_MAX: usize = 1000;

/// What an action does, with everything needed to resume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActionKind {
    /// Moves a database to another engine version (Redis Software's `SMUpgradeBDB`).
    DbUpgrade {
        /// The database.
        bdb_uid: BdbUid,
        /// The engine it moves to.
        redis_version: EngineVersion,
        /// Switch back so that each slot range's primary is where it was.
        preserve_roles: bool,
        /// Slot ranges upgraded at the same time.
        parallel_shards: u16,
        /// Restart every shard empty on the new engine instead of moving data.
        discard_data: bool,
        /// The primary of each slot range when the upgrade began (for `preserve_roles`).
        #[serde(rename = "original_masters")]
        original_primaries: Vec<ShardUid>,
        /// The CRDB protocol version the database's Active-Active instance moves to once its
        /// engine upgrade is done (`db upgrade` of a CRDB instance without
        /// `--keep-crdt-protocol-version`): the `finalize` step records it with the new engine,
        /// so whichever node drives the action after a restart raises it. Introduced in 0.2.0.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raise_crdt_protocol: Option<u16>,
    },
    /// Moves one shard to another node (`flotilla shard migrate`): a new copy there, caught
    /// up, the primary role moved to it when the shard held it, the old copy dropped.
    /// Introduced in 0.2.0.
    ShardMigrate(ShardMove),
    /// Drains a node (each of its shards moved as by [`ActionKind::ShardMigrate`]) and removes
    /// it from the cluster (`flotilla node remove`). Introduced in 0.2.0.
    NodeRemove {
        /// The node that leaves.
        node_uid: NodeUid,
        /// Where each of its shards goes, planned when the action was asked for (placement:
        /// memory, a slot range's copies never on one node), in the order they move.
        moves: Vec<ShardMove>,
    },
    /// Moves every node to another Flotilla package (`flotilla upgrade cluster`), one node at
    /// a time, the primary node last, then finalizes the cluster version. Introduced in 0.2.0.
    ClusterUpgrade(ClusterUpgrade),
    /// Puts a node in maintenance mode (`flotilla node maintenance UID on`): snapshot, mark,
    /// its shards moved away. Introduced in 0.2.0.
    MaintenanceOn(crate::maintenance::MaintenanceOn),
    /// Takes a node out of maintenance mode (`flotilla node maintenance UID off`): its shards
    /// moved back as the snapshot says, the mark cleared. Introduced in 0.2.0.
    MaintenanceOff(crate::maintenance::MaintenanceOff),
}

/// What `flotilla upgrade cluster` asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterUpgrade {
    /// The package, as a path every node can read (the same path on every machine).
    pub package: String,
    /// The package's version: every node ends on it.
    pub version: String,
    /// How each node moves.
    pub method: UpgradeMethod,
    /// The nodes in the order they move (the primary node when asked, last).
    pub nodes: Vec<NodeUid>,
    /// Rolling methods: for each old node whose drain began, the node that took its place
    /// (add-node) and where its shards go, recorded once by [`crate::Command::RecordDrain`] (the
    /// targets are known only once the new node joined), so that a resumed drain moves each
    /// shard where it was headed. A list, not a map: inside the internally tagged
    /// [`ActionKind`] serde cannot read a map's integer keys back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drains: Vec<NodeDrain>,
    /// An operating system upgrade (`flotilla upgrade os`): the OS (`debian-13`) every node
    /// ends on; the package is then the cluster's current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_os: Option<String>,
}

impl ClusterUpgrade {
    /// Whether `node` is where the upgrade takes every node: on the version, and on the
    /// target OS when there is one.
    pub fn is_done_on(&self, node: &crate::Node) -> bool {
        node.software_version == self.version
            && self
                .target_os
                .as_ref()
                .is_none_or(|os| node.host.os_id == *os)
    }

    /// The recorded drain of old node `node`.
    pub fn drain_of(&self, node: NodeUid) -> Option<&NodeDrain> {
        self.drains.iter().find(|d| d.node_uid == node)
    }
}

/// One old node's drain in a rolling upgrade, as recorded when it began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDrain {
    /// The old node.
    pub node_uid: NodeUid,
    /// The node's address: a replaced node's machine is reinstalled at it (its record is gone
    /// meanwhile).
    pub addr: IpAddr,
    /// The new node that joined for it (add-node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_node: Option<NodeUid>,
    /// Where each of its shards goes, in order.
    pub moves: Vec<ShardMove>,
}

/// How `upgrade cluster` moves a node to the new package (Redis Software's upgrade methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMethod {
    /// Each node's daemon hands over to the new binary on the same machine (no shard moves).
    InPlace,
    /// For each old node a new node with the package joins, the old node is drained (its
    /// shards move) and leaves: the rolling upgrade with spare machines.
    AddNode,
    /// Each old node is drained and leaves, its machine is reinstalled with the package and
    /// joins back under its uid (`cluster join --replace-node`): the rolling upgrade without
    /// spare machines.
    ReplaceNode,
}

impl UpgradeMethod {
    /// The method's name as `--method` takes it.
    pub fn name(self) -> &'static str {
        match self {
            UpgradeMethod::InPlace => "in-place",
            UpgradeMethod::AddNode => "add-node",
            UpgradeMethod::ReplaceNode => "replace-node",
        }
    }

    /// The method named `name` as `--method` takes it.
    pub fn parse(name: &str) -> Option<UpgradeMethod> {
        [
            UpgradeMethod::InPlace,
            UpgradeMethod::AddNode,
            UpgradeMethod::ReplaceNode,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

/// One shard's move to another node, as planned when its action was asked for. The shard
/// keeps its slot range and database; its new copy gets a new shard uid on the target node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMove {
    /// The shard that moves (gone once the move is done).
    pub shard_uid: ShardUid,
    /// Its database.
    pub bdb_uid: BdbUid,
    /// Its slot range (how the new copy is found once the old one is gone).
    pub assigned_slots: SlotRange,
    /// The node it leaves.
    pub from_node: NodeUid,
    /// The node its new copy runs on.
    pub to_node: NodeUid,
}

impl ActionKind {
    /// The databases the action works on: another action on one of them is refused while
    /// this one runs.
    pub fn bdb_uids(&self) -> Vec<BdbUid> {
        let mut uids: Vec<BdbUid> = match self {
            ActionKind::DbUpgrade { bdb_uid, .. } => vec![*bdb_uid],
            ActionKind::ShardMigrate(shard_move) => vec![shard_move.bdb_uid],
            ActionKind::NodeRemove { moves, .. } => moves.iter().map(|m| m.bdb_uid).collect(),
            ActionKind::ClusterUpgrade(_) => Vec::new(),
            ActionKind::MaintenanceOn(on) => on
                .moves
                .iter()
                .map(|m| m.bdb_uid)
                .chain(on.demotions.iter().map(|d| d.bdb_uid))
                .collect(),
            ActionKind::MaintenanceOff(off) => off
                .moves
                .iter()
                .map(|m| m.bdb_uid)
                .chain(off.primaries.iter().map(|p| p.bdb_uid))
                .collect(),
        };
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    /// The nodes the action moves shards off or onto (or removes): another action on one of
    /// them is refused while this one runs. A database upgrade keeps every shard on its node.
    pub fn node_uids(&self) -> Vec<NodeUid> {
        let mut uids: Vec<NodeUid> = match self {
            ActionKind::DbUpgrade { .. } => Vec::new(),
            ActionKind::ShardMigrate(m) => vec![m.from_node, m.to_node],
            ActionKind::NodeRemove { node_uid, moves } => std::iter::once(*node_uid)
                .chain(moves.iter().map(|m| m.to_node))
                .collect(),
            ActionKind::ClusterUpgrade(upgrade) => upgrade
                .nodes
                .iter()
                .copied()
                .chain(upgrade.drains.iter().flat_map(|d| d.added_node))
                .collect(),
            ActionKind::MaintenanceOn(on) => std::iter::once(on.node_uid)
                .chain(on.moves.iter().map(|m| m.to_node))
                .collect(),
            ActionKind::MaintenanceOff(off) => std::iter::once(off.node_uid)
                .chain(off.moves.iter().map(|m| m.from_node))
                .chain(off.primaries.iter().map(|p| p.node_uid))
                .collect(),
        };
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    /// What the action works on, as listings show it: `bdb:1`, `shard:5`, `node:3`.
    pub fn object(&self) -> String {
        match self {
            ActionKind::DbUpgrade { bdb_uid, .. } => format!("bdb:{bdb_uid}"),
            ActionKind::ShardMigrate(m) => format!("shard:{}", m.shard_uid),
            ActionKind::NodeRemove { node_uid, .. } => format!("node:{node_uid}"),
            ActionKind::ClusterUpgrade(_) => "cluster".into(),
            ActionKind::MaintenanceOn(on) => format!("node:{}", on.node_uid),
            ActionKind::MaintenanceOff(off) => format!("node:{}", off.node_uid),
        }
    }

    /// The state machine's name as listings show it (Redis Software's `SMUpgradeBDB` for a
    /// database upgrade, names in its style for the others).
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::DbUpgrade { .. } => "SMUpgradeBDB",
            ActionKind::ShardMigrate(_) => "SMMigrateShard",
            ActionKind::NodeRemove { .. } => "SMRemoveNode",
            ActionKind::ClusterUpgrade(upgrade) if upgrade.target_os.is_some() => "SMUpgradeOS",
            ActionKind::ClusterUpgrade(_) => "SMUpgradeCluster",
            ActionKind::MaintenanceOn(_) => "SMMaintenanceOn",
            ActionKind::MaintenanceOff(_) => "SMMaintenanceOff",
        }
    }

    /// Whether a node of the first release could decode this kind (only database upgrades).
    pub fn known_to_first_release(&self) -> bool {
        matches!(
            self,
            ActionKind::DbUpgrade {
                raise_crdt_protocol: None,
                ..
            }
        )
    }
}

/// Where an action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Being driven by the primary node.
    Running,
    /// Done.
    Completed,
    /// Stopped on an error it could not get past (the error says which and the fix).
    Failed,
    /// Stopped by an operator at a step boundary.
    Cancelled,
    /// Waiting for an operator to act on a machine (the error says what: install a new node,
    /// reinstall one); `flotilla action resume` continues it at the same step. Not driven, but
    /// not finished: it still holds its databases and nodes. Only rolling cluster upgrades
    /// pause (introduced in 0.2.0).
    Paused,
}

/// One action as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Action uid.
    pub uid: ActionUid,
    /// What it does.
    pub kind: ActionKind,
    /// Where it stands.
    pub status: ActionStatus,
    /// Index of the step to run next (or running) in the action's plan.
    pub step_index: u32,
    /// That step's name, e.g. `upgrade_replica 0-8191` (see [`crate::plan()`]).
    pub step: String,
    /// Steps in the plan.
    pub steps_total: u32,
    /// Why it failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
    /// An operator asked to cancel; honoured at the next safe step boundary.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// Last change, seconds since the epoch.
    pub updated_at: u64,
    /// Every finished step with how long it took, in order.
    #[serde(default)]
    pub history: Vec<StepRecord>,
}

/// A finished step and its duration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name.
    pub step: String,
    /// How long it took, in milliseconds (as the primary node that ran it measured).
    pub duration_ms: u64,
}

impl Action {
    /// Whether the action still runs (the primary node drives it).
    pub fn is_running(&self) -> bool {
        self.status == ActionStatus::Running
    }

    /// Whether the action has not ended: it runs, or waits for an operator. It keeps its
    /// databases and nodes from other actions and is never pruned.
    pub fn is_active(&self) -> bool {
        matches!(self.status, ActionStatus::Running | ActionStatus::Paused)
    }
}

/// Where an action stands on one step of its plan, as `GET /v1/actions/{uid}` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Finished.
    Done,
    /// Running now, or where a failed action stopped.
    Current,
    /// Not run (yet, or ever: the action was cancelled before it).
    Pending,
}

impl StepState {
    /// The state of step `index` of a plan whose action is at step `step_index` with
    /// `status`: the steps before it are done; it is current while the action runs or once the
    /// action failed there.
    pub fn at(index: usize, step_index: u32, status: ActionStatus) -> StepState {
        let stopped_here = matches!(
            status,
            ActionStatus::Running | ActionStatus::Failed | ActionStatus::Paused
        );
        match index.cmp(&(step_index as usize)) {
            std::cmp::Ordering::Less => StepState::Done,
            std::cmp::Ordering::Equal if stopped_here => StepState::Current,
            _ => StepState::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_before_the_recorded_one_are_done_and_it_is_current_unless_the_action_ended_well() {
        let states =
            |status| -> Vec<StepState> { (0..3).map(|i| StepState::at(i, 1, status)).collect() };
        use StepState::{Current, Done, Pending};
        assert_eq!(states(ActionStatus::Running), [Done, Current, Pending]);
        assert_eq!(states(ActionStatus::Failed), [Done, Current, Pending]);
        assert_eq!(states(ActionStatus::Cancelled), [Done, Pending, Pending]);
        let completed: Vec<StepState> = (0..3)
            .map(|i| StepState::at(i, 3, ActionStatus::Completed))
            .collect();
        assert_eq!(completed, [Done, Done, Done]);
    }
}

#[cfg(test)]
mod rolling_tests {
    use super::*;

    #[test]
    fn a_rolling_upgrade_with_its_drains_encodes_and_decodes() {
        let drains = vec![NodeDrain {
            node_uid: 2,
            addr: "127.0.0.12".parse().unwrap(),
            added_node: Some(4),
            moves: vec![],
        }];
        let kind = ActionKind::ClusterUpgrade(ClusterUpgrade {
            package: "/p".into(),
            version: "0.2.1".into(),
            method: UpgradeMethod::AddNode,
            nodes: vec![2, 3, 1],
            drains,
            target_os: Some("debian-13".into()),
        });
        let json = serde_json::to_string(&kind).unwrap();
        let back: ActionKind = serde_json::from_str(&json).unwrap();
        assert_eq!(back, kind, "{json}");
    }
}
