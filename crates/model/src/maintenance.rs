//! Maintenance mode (`flotilla node maintenance UID on|off`; Redis Software's
//! `rladmin node N maintenance_mode on|off`, DESIGN.md "Upgrades -> Operating system"): what
//! the store keeps about a node in maintenance, the commands that mark and unmark it, the two
//! actions' recorded plans, their steps, and the REST bodies that ask for them.
//!
//! `on` (the action [`MaintenanceOn`], `SMMaintenanceOn`): optionally hands primary-ship away
//! (`demote_node`), then records a snapshot of the node's placement and roles and marks the node
//! ([`Command::EnterMaintenance`]; placement skips a marked node, as a leaving one), then moves
//! its shards away with the migration steps (or, with `keep_slave_shards`, only hands each
//! primary role to a replica on another node). `off` ([`MaintenanceOff`], `SMMaintenanceOff`)
//! moves shards back as the snapshot says, switches each slot range's primary back to where it
//! was, then clears the mark and deletes the snapshot ([`Command::ExitMaintenance`]).
//!
//! Activations stack as Redis Software's do: every `on` adds an activation (the `on` action's
//! uid) and keeps the first snapshot unless `overwrite_snapshot`; an `off` ends the latest
//! activation, and only the one that ends the last activation moves shards back and deletes the
//! snapshot. Recording activations by action uid keeps both commands idempotent: a step run
//! again after a primary node change adds or ends nothing twice.

use serde::{Deserialize, Serialize};

use crate::action::{ActionUid, ShardMove};
use crate::bdb::{BdbUid, ShardRole, ShardUid, SlotRange};
use crate::command::CommandResult;
use crate::error::ModelError;
use crate::plan::{Op, Step};
use crate::state::{ClusterState, NodeUid};

/// What the store keeps about a node in maintenance mode (on its node record, absent otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMaintenance {
    /// The `on` actions that put the node in maintenance, oldest first: each `off` ends the
    /// latest, and the node leaves maintenance mode once none is left.
    pub activations: Vec<ActionUid>,
    /// The node's placement and roles when maintenance began (Redis Software's maintenance
    /// snapshot): every copy of every slot range the node held then, on whatever node.
    pub snapshot: Vec<SnapshotShard>,
}

/// One shard of a maintenance snapshot: a slot range's copy, where it ran and in which role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotShard {
    /// The database.
    pub bdb_uid: BdbUid,
    /// The slot range.
    pub assigned_slots: SlotRange,
    /// The node the copy ran on.
    pub node_uid: NodeUid,
    /// Its role then.
    pub role: ShardRole,
}

/// A primary shard that hands its role to a replica on another node and stays as a replica
/// (`on` with `keep_slave_shards`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDemotion {
    /// The primary shard.
    pub shard_uid: ShardUid,
    /// Its database.
    pub bdb_uid: BdbUid,
    /// Its slot range.
    pub assigned_slots: SlotRange,
}

/// What `flotilla node maintenance UID on` asked for, with its plan recorded when it was asked
/// for (so that a resumed step moves each shard where it was headed). Introduced in 0.2.0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceOn {
    /// The node.
    pub node_uid: NodeUid,
    /// Keep replica shards on the node and only demote its primaries (Redis Software's
    /// `keep_slave_shards`).
    #[serde(rename = "keep_slave_shards", default)]
    pub keep_replicas: bool,
    /// Hand primary-ship (the primary node role) to another node first.
    #[serde(default)]
    pub demote_node: bool,
    /// Replace the snapshot of an earlier activation with a new one.
    #[serde(default)]
    pub overwrite_snapshot: bool,
    /// Primaries that hand their role to a replica elsewhere (`keep_slave_shards`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demotions: Vec<ShardDemotion>,
    /// The shards that move away and where, in order.
    pub moves: Vec<ShardMove>,
}

/// What `flotilla node maintenance UID off` asked for, with its plan. Introduced in 0.2.0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceOff {
    /// The node.
    pub node_uid: NodeUid,
    /// Only clear the mark: no shard moves back (Redis Software's `skip_shards_restore`).
    #[serde(default)]
    pub skip_shards_restore: bool,
    /// The activation (an `on` action's uid) this `off` ends: the latest.
    pub activation: ActionUid,
    /// The shards that move back to the node, as the snapshot says (empty when another
    /// activation stays or with `skip_shards_restore`).
    pub moves: Vec<ShardMove>,
    /// The snapshot's primaries, each switched back to its node once the moves are done
    /// (empty when nothing is restored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primaries: Vec<SnapshotShard>,
}

/// [`Command::EnterMaintenance`]: an activation of maintenance mode on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceEntry {
    /// The node.
    pub node_uid: NodeUid,
    /// The `on` action (an activation is recorded once, however often the step runs).
    pub activation: ActionUid,
    /// The snapshot to keep: `Some` for the first activation or with `overwrite_snapshot`,
    /// `None` to keep the earlier one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Vec<SnapshotShard>>,
}

/// [`Command::ExitMaintenance`]: the end of one activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceExit {
    /// The node.
    pub node_uid: NodeUid,
    /// The activation that ends; with the last one the mark and the snapshot go.
    pub activation: ActionUid,
}

/// `POST /v1/nodes/{uid}/actions/maintenance_on` (Redis Software's field names; every field
/// may be missing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceOnRequest {
    /// Replace the snapshot of an earlier activation.
    #[serde(default)]
    pub overwrite_snapshot: bool,
    /// Keep replica shards on the node, demote its primaries (rladmin's `keep_slave_shards`).
    #[serde(default)]
    pub keep_slave_shards: bool,
    /// Whether replica shards leave the node (REST's `evict_ha_replica`; `false` is
    /// `keep_slave_shards`). Missing: they leave unless `keep_slave_shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evict_ha_replica: Option<bool>,
    /// Hand primary-ship to another node first (rladmin's `demote_node`).
    #[serde(default)]
    pub demote_node: bool,
}

impl MaintenanceOnRequest {
    /// Whether replicas stay on the node; an error naming both fields when they contradict.
    pub fn keep_replicas(&self) -> Result<bool, String> {
        match (self.keep_slave_shards, self.evict_ha_replica) {
            (true, Some(true)) => Err(
                "keep_slave_shards keeps replicas on the node and evict_ha_replica: true moves them away; send one of them".into(),
            ),
            (keep, evict) => Ok(keep || evict == Some(false)),
        }
    }
}

/// `POST /v1/nodes/{uid}/actions/maintenance_off` (Redis Software's field name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceOffRequest {
    /// Only clear the mark; no shard moves back.
    #[serde(default)]
    pub skip_shards_restore: bool,
}

impl MaintenanceOn {
    /// The plan: `demote_node node:N` (with `demote_node`), `snapshot node:N`, a `switchover
    /// shard:S` per demotion, then each move's migration steps. A cancel request stops it
    /// before the snapshot or before a move; the node then stays in maintenance (`off` brings
    /// back what moved).
    pub fn steps(&self) -> Vec<Step> {
        let node = self.node_uid;
        let demote = self
            .demote_node
            .then(|| node_step(Op::DemoteNode, node, true));
        let demotions = self.demotions.iter().map(|d| Step {
            op: Op::Switchover,
            ranges: vec![d.assigned_slots],
            shard: Some(d.shard_uid),
            node: None,
            cancel_point: false,
        });
        demote
            .into_iter()
            .chain(std::iter::once(node_step(Op::Snapshot, node, true)))
            .chain(demotions)
            .chain(self.moves.iter().flat_map(Step::migration))
            .collect()
    }
}

impl MaintenanceOff {
    /// The plan: each move's migration steps, `switch_back node:N` when primaries go back,
    /// then `end_maintenance node:N`.
    pub fn steps(&self) -> Vec<Step> {
        let node = self.node_uid;
        let switch_back =
            (!self.primaries.is_empty()).then(|| node_step(Op::SwitchBack, node, false));
        self.moves
            .iter()
            .flat_map(Step::migration)
            .chain(switch_back)
            .chain(std::iter::once(node_step(Op::EndMaintenance, node, false)))
            .collect()
    }
}

fn node_step(op: Op, node: NodeUid, cancel_point: bool) -> Step {
    Step {
        op,
        ranges: Vec::new(),
        shard: None,
        node: Some(node),
        cancel_point,
    }
}

impl ClusterState {
    /// Whether node `node` is in maintenance mode: no new shard is placed on it, and the
    /// upgrade check refuses.
    pub fn in_maintenance(&self, node: NodeUid) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| n.maintenance.is_some())
    }

    /// Whether node `node` takes no new shard: it is being removed or is in maintenance.
    pub fn takes_no_shards(&self, node: NodeUid) -> bool {
        self.is_leaving(node) || self.in_maintenance(node)
    }

    /// The node's placement and roles now, as a maintenance snapshot records it: every copy of
    /// every slot range with a (permanent) copy on `node`.
    pub fn placement_snapshot(&self, node: NodeUid) -> Vec<SnapshotShard> {
        let mut snapshot = Vec::new();
        for held in self.shards_on(node).filter(|s| !s.temporary) {
            let group = self.slot_group_of(held);
            snapshot.extend(
                group
                    .shards
                    .iter()
                    .filter(|s| !s.temporary)
                    .map(|s| SnapshotShard {
                        bdb_uid: s.bdb_uid,
                        assigned_slots: s.assigned_slots,
                        node_uid: s.node_uid,
                        role: s.role,
                    }),
            );
        }
        snapshot.sort_by_key(|s| (s.bdb_uid, s.assigned_slots, s.node_uid));
        snapshot.dedup();
        snapshot
    }

    pub(crate) fn enter_maintenance(
        &mut self,
        entry: MaintenanceEntry,
    ) -> Result<CommandResult, ModelError> {
        let node = self.nodes.get_mut(&entry.node_uid).ok_or_else(|| {
            ModelError::NotFound(format!("node {} is not in the cluster", entry.node_uid))
        })?;
        let maintenance = node.maintenance.get_or_insert_with(|| NodeMaintenance {
            activations: Vec::new(),
            snapshot: Vec::new(),
        });
        if maintenance.activations.contains(&entry.activation) {
            return Ok(CommandResult::Ok);
        }
        maintenance.activations.push(entry.activation);
        if let Some(snapshot) = entry.snapshot {
            maintenance.snapshot = snapshot;
        }
        Ok(CommandResult::Ok)
    }

    pub(crate) fn exit_maintenance(
        &mut self,
        exit: MaintenanceExit,
    ) -> Result<CommandResult, ModelError> {
        if !self.in_maintenance(exit.node_uid) {
            return Ok(CommandResult::Ok);
        }
        let node = self
            .nodes
            .get_mut(&exit.node_uid)
            .expect("a node in maintenance exists");
        let maintenance = node.maintenance.as_mut().expect("in maintenance");
        maintenance.activations.retain(|a| *a != exit.activation);
        if maintenance.activations.is_empty() {
            node.maintenance = None;
        }
        Ok(CommandResult::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::ActionKind;
    use crate::bdb::ShardRole;
    use crate::command::Command;
    use crate::plan::plan;
    use crate::state::testing::{bdb_spec, plan as shard_on, with_db};

    /// Nodes 1 and 2, database 1 with its primary on node 1 and its replica on node 2.
    fn state() -> ClusterState {
        with_db(
            bdb_spec("db1", 12000),
            vec![
                shard_on(1, ShardRole::Primary, 20000),
                shard_on(2, ShardRole::Replica, 20000),
            ],
        )
    }

    fn enter(activation: ActionUid, snapshot: Option<Vec<SnapshotShard>>) -> Command {
        Command::EnterMaintenance(MaintenanceEntry {
            node_uid: 1,
            activation,
            snapshot,
        })
    }

    fn exit(activation: ActionUid) -> Command {
        Command::ExitMaintenance(MaintenanceExit {
            node_uid: 1,
            activation,
        })
    }

    #[test]
    fn a_snapshot_holds_every_copy_of_the_nodes_slot_ranges_with_their_roles() {
        let snapshot = state().placement_snapshot(1);
        let places: Vec<(NodeUid, ShardRole)> =
            snapshot.iter().map(|s| (s.node_uid, s.role)).collect();
        assert_eq!(places, [(1, ShardRole::Primary), (2, ShardRole::Replica)]);
    }

    #[test]
    fn activations_stack_keep_the_first_snapshot_and_the_last_off_clears_the_mark() {
        let mut state = state();
        let first = state.placement_snapshot(1);
        state.apply(enter(7, Some(first.clone())));
        assert!(state.in_maintenance(1) && state.takes_no_shards(1));
        assert!(!state.in_maintenance(2));
        // The same step run again adds nothing; a second `on` keeps the snapshot.
        state.apply(enter(7, Some(Vec::new())));
        state.apply(enter(9, None));
        let kept = state.nodes[&1].maintenance.clone().unwrap();
        assert_eq!((kept.activations, kept.snapshot), (vec![7, 9], first));
        state.apply(exit(9));
        state.apply(exit(9));
        assert!(state.in_maintenance(1), "one activation is left");
        state.apply(exit(7));
        assert!(!state.in_maintenance(1));
        assert_eq!(state.nodes[&1].maintenance, None, "the snapshot is gone");
        assert_eq!(state.apply(exit(7)), CommandResult::Ok, "idempotent");
    }

    #[test]
    fn overwrite_replaces_the_snapshot() {
        let mut state = state();
        state.apply(enter(7, Some(state.placement_snapshot(1))));
        state.apply(enter(8, Some(Vec::new())));
        assert!(state.nodes[&1]
            .maintenance
            .as_ref()
            .unwrap()
            .snapshot
            .is_empty());
    }

    #[test]
    fn a_node_in_maintenance_keeps_the_node_json_of_0_1_0_otherwise() {
        let mut state = state();
        let before = serde_json::to_string(&state.nodes[&1]).unwrap();
        assert!(!before.contains("maintenance"), "{before}");
        state.apply(enter(7, Some(state.placement_snapshot(1))));
        let json = serde_json::to_string(&state.nodes[&1]).unwrap();
        assert_eq!(
            json,
            r#"{"uid":1,"addr":"127.0.0.11","software_version":"0.1.0","os":"Debian GNU/Linux 12 (bookworm)","maintenance":{"activations":[7],"snapshot":[{"bdb_uid":1,"assigned_slots":"0-16383","node_uid":1,"role":"master"},{"bdb_uid":1,"assigned_slots":"0-16383","node_uid":2,"role":"slave"}]}}"#
        );
        let back: crate::Node = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state.nodes[&1]);
    }

    fn shard_move(shard_uid: ShardUid) -> ShardMove {
        ShardMove {
            shard_uid,
            bdb_uid: 1,
            assigned_slots: SlotRange::even(0, 1),
            from_node: 1,
            to_node: 3,
        }
    }

    #[test]
    fn the_plans_name_their_steps_by_node_and_shard() {
        let on = ActionKind::MaintenanceOn(MaintenanceOn {
            node_uid: 1,
            keep_replicas: false,
            demote_node: true,
            overwrite_snapshot: false,
            demotions: Vec::new(),
            moves: vec![shard_move(4)],
        });
        let names: Vec<String> = plan(&on, &state()).iter().map(Step::name).collect();
        assert_eq!(
            names,
            [
                "demote_node node:1",
                "snapshot node:1",
                "add_copy shard:4",
                "sync_copy shard:4",
                "switchover shard:4",
                "drop_old shard:4"
            ]
        );
        let keep = ActionKind::MaintenanceOn(MaintenanceOn {
            node_uid: 1,
            keep_replicas: true,
            demote_node: false,
            overwrite_snapshot: false,
            demotions: vec![ShardDemotion {
                shard_uid: 1,
                bdb_uid: 1,
                assigned_slots: SlotRange::even(0, 1),
            }],
            moves: Vec::new(),
        });
        let names: Vec<String> = plan(&keep, &state()).iter().map(Step::name).collect();
        assert_eq!(names, ["snapshot node:1", "switchover shard:1"]);
        let off = |moves: Vec<ShardMove>, primaries: Vec<SnapshotShard>| {
            ActionKind::MaintenanceOff(MaintenanceOff {
                node_uid: 1,
                skip_shards_restore: false,
                activation: 7,
                moves,
                primaries,
            })
        };
        let primaries = state().placement_snapshot(1)[..1].to_vec();
        let names: Vec<String> = plan(&off(vec![shard_move(5)], primaries), &state())
            .iter()
            .map(Step::name)
            .collect();
        assert_eq!(names[4..], ["switch_back node:1", "end_maintenance node:1"]);
        let names: Vec<String> = plan(&off(Vec::new(), Vec::new()), &state())
            .iter()
            .map(Step::name)
            .collect();
        assert_eq!(names, ["end_maintenance node:1"]);
    }

    #[test]
    fn a_node_as_get_v1_nodes_shows_it_keeps_the_json_of_0_1_0_out_of_maintenance() {
        let json = r#"{"uid":1,"addr":"127.0.0.11","role":"primary","software_version":"0.1.0","os":"x","status":"up"}"#;
        let mut node: crate::rest::NodeInfo = serde_json::from_str(json).unwrap();
        assert!(!node.maintenance);
        assert_eq!(serde_json::to_string(&node).unwrap(), json);
        node.maintenance = true;
        let marked = serde_json::to_string(&node).unwrap();
        assert!(
            marked.ends_with(r#""status":"up","maintenance":true}"#),
            "{marked}"
        );
    }

    #[test]
    fn the_rest_bodies_take_redis_softwares_fields() {
        let on: MaintenanceOnRequest =
            serde_json::from_str(r#"{"overwrite_snapshot":true,"evict_ha_replica":false}"#)
                .unwrap();
        assert!(on.overwrite_snapshot && on.keep_replicas().unwrap());
        let on: MaintenanceOnRequest = serde_json::from_str("{}").unwrap();
        assert!(!on.keep_replicas().unwrap());
        let both: MaintenanceOnRequest =
            serde_json::from_str(r#"{"keep_slave_shards":true,"evict_ha_replica":true}"#).unwrap();
        assert!(both.keep_replicas().is_err());
        let off: MaintenanceOffRequest =
            serde_json::from_str(r#"{"skip_shards_restore":true}"#).unwrap();
        assert!(off.skip_shards_restore);
        assert!(serde_json::from_str::<MaintenanceOffRequest>(r#"{"skip":1}"#).is_err());
    }
}
