//! Shards: where they run, the slot group each belongs to (a slot range's primary and
//! replicas), their engine addresses, and the commands that move roles and add or remove
//! copies during failovers, switchovers and upgrades.

use std::net::SocketAddr;

use super::table::IndexKey;
use super::{ClusterState, NodeUid};
use crate::bdb::{BdbUid, Shard, ShardPlan, ShardRole, ShardUid, SlotRange};
use crate::command::{
    CommandResult, ReplacementAddition, ShardHold, ShardMigration, ShardPromotion,
    ShardVersionChange, TemporaryReplicaAddition,
};
use crate::engine_version::EngineVersion;
use crate::error::ModelError;

/// The shards that hold one slot range of a database: its primary and its replicas. During an
/// upgrade the group also holds that range's temporary shards (a temporary replica on another
/// node, or the replacement of the primary on the primary's node), which may be primary or
/// replica like any other member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotGroup<'a> {
    /// The database.
    pub bdb_uid: BdbUid,
    /// The slot range every member holds.
    pub range: SlotRange,
    /// Every member, in uid order.
    pub shards: Vec<&'a Shard>,
}

impl<'a> SlotGroup<'a> {
    /// The range's primary (the lowest uid should the state ever hold two), if it has one.
    pub fn primary(&self) -> Option<&'a Shard> {
        self.shards
            .iter()
            .copied()
            .find(|s| s.role == ShardRole::Primary)
    }

    /// The range's replicas, in uid order.
    pub fn replicas(&self) -> impl Iterator<Item = &'a Shard> + '_ {
        self.shards
            .iter()
            .copied()
            .filter(|s| s.role == ShardRole::Replica)
    }

    /// The range's temporary shards (added by an upgrade), whatever their role, in uid order.
    pub fn temporary(&self) -> impl Iterator<Item = &'a Shard> + '_ {
        self.shards.iter().copied().filter(|s| s.temporary)
    }
}

impl ClusterState {
    /// The shards of database `uid`, in uid order.
    pub fn shards_of(&self, uid: BdbUid) -> impl Iterator<Item = &Shard> {
        self.shards
            .lookup(move |shard| IndexKey::ShardOf(uid, shard))
    }

    /// The shards placed on node `uid`, in uid order.
    pub fn shards_on(&self, uid: NodeUid) -> impl Iterator<Item = &Shard> {
        self.shards
            .lookup(move |shard| IndexKey::ShardOn(uid, shard))
    }

    /// Whether some shard on node `node` uses `port`.
    pub(super) fn shard_port_taken(&self, node: NodeUid, port: u16) -> bool {
        let mut on_port = self
            .shards
            .lookup(|shard| IndexKey::ShardPort(node, port, shard));
        on_port.next().is_some()
    }

    /// The shards that hold slot range `range` of database `bdb`.
    pub fn slot_group(&self, bdb: BdbUid, range: SlotRange) -> SlotGroup<'_> {
        SlotGroup {
            bdb_uid: bdb,
            range,
            shards: self
                .shards_of(bdb)
                .filter(|s| s.assigned_slots == range)
                .collect(),
        }
    }

    /// The slot group `shard` belongs to (`shard` included).
    pub fn slot_group_of(&self, shard: &Shard) -> SlotGroup<'_> {
        self.slot_group(shard.bdb_uid, shard.assigned_slots)
    }

    /// The primary shard holding `slots` of database `bdb`, if any.
    pub fn primary_of(&self, bdb: BdbUid, slots: SlotRange) -> Option<&Shard> {
        self.slot_group(bdb, slots).primary()
    }

    /// The primary shards of database `bdb` in slot order (the first holds slot 0 when every
    /// slot has a primary): what a proxy routes to.
    pub fn primaries_of(&self, bdb: BdbUid) -> Vec<&Shard> {
        let mut primaries: Vec<&Shard> = self
            .shards_of(bdb)
            .filter(|s| s.role == ShardRole::Primary)
            .collect();
        primaries.sort_by_key(|s| s.assigned_slots.start);
        primaries
    }

    /// The slot ranges of database `bdb`, in slot order, each once.
    pub fn slot_ranges(&self, bdb: BdbUid) -> Vec<SlotRange> {
        let mut ranges: Vec<SlotRange> = self.shards_of(bdb).map(|s| s.assigned_slots).collect();
        ranges.sort();
        ranges.dedup();
        ranges
    }

    /// Where `shard`'s engine listens: its node's address and its port.
    pub fn shard_addr(&self, shard: &Shard) -> Result<SocketAddr, ModelError> {
        let node = self.nodes.get(&shard.node_uid).ok_or_else(|| {
            ModelError::NotFound(format!(
                "shard {} is placed on node {}, which is not in the cluster",
                shard.uid, shard.node_uid
            ))
        })?;
        Ok(SocketAddr::new(node.addr, shard.port))
    }

    /// Makes shard `uid` the primary of its slot range; the previous primary becomes its replica.
    pub(super) fn promote_shard(
        &mut self,
        promotion: ShardPromotion,
    ) -> Result<CommandResult, ModelError> {
        let ShardPromotion { uid, require_held } = promotion;
        let shard = self
            .shards
            .get(&uid)
            .ok_or_else(|| ModelError::NotFound(format!("shard {uid} does not exist")))?;
        if shard.role == ShardRole::Primary {
            return Ok(CommandResult::Ok);
        }
        let group = self.slot_group_of(shard);
        let held = group.primary().is_some_and(|m| m.held);
        if require_held && !held {
            return Err(ModelError::InvalidValue(format!(
                "shard {uid}: the switchover's hold was released (repaired by a new primary node); not promoting"
            )));
        }
        let members: Vec<ShardUid> = group.shards.iter().map(|s| s.uid).collect();
        for member in members {
            self.shards.update(member, |other| {
                if other.role == ShardRole::Primary {
                    other.role = ShardRole::Replica;
                }
                other.held = false;
            });
        }
        self.shards
            .update(uid, |promoted| promoted.role = ShardRole::Primary);
        Ok(CommandResult::Ok)
    }

    pub(super) fn hold_shard(&mut self, hold: ShardHold) -> Result<CommandResult, ModelError> {
        let ShardHold { uid, held } = hold;
        let replica = self
            .shards
            .get(&uid)
            .is_some_and(|s| s.role != ShardRole::Primary);
        if held && replica {
            return Err(ModelError::InvalidValue(format!(
                "shard {uid} is a replica; only a primary shard's slots can be held"
            )));
        }
        self.shards.change("shard", uid, |shard| shard.held = held)
    }

    pub(super) fn set_shard_version(
        &mut self,
        change: ShardVersionChange,
    ) -> Result<CommandResult, ModelError> {
        self.shards.change("shard", change.uid, |shard| {
            shard.redis_version = change.redis_version;
        })
    }

    pub(super) fn add_temporary_replica(
        &mut self,
        addition: TemporaryReplicaAddition,
    ) -> Result<CommandResult, ModelError> {
        let TemporaryReplicaAddition {
            bdb_uid,
            plan,
            redis_version,
        } = addition;
        if !self.bdbs.contains_key(&bdb_uid) {
            return Err(ModelError::NotFound(format!(
                "database {bdb_uid} does not exist"
            )));
        }
        let group = self.slot_group(bdb_uid, plan.assigned_slots);
        if let Some(existing) = group.temporary().next() {
            return Ok(CommandResult::ShardAdded { uid: existing.uid });
        }
        let primary = group.primary().ok_or_else(|| {
            ModelError::NotFound(format!(
                "slot range {} of database {bdb_uid} has no primary shard",
                plan.assigned_slots
            ))
        })?;
        if primary.node_uid == plan.node_uid {
            return Err(ModelError::InvalidValue(format!(
                "a replica shard must not share node {} with its primary shard",
                plan.node_uid
            )));
        }
        if !self.nodes.contains_key(&plan.node_uid)
            || self.shard_port_taken(plan.node_uid, plan.port)
        {
            return Err(ModelError::InvalidValue(format!(
                "node {} or its port {} is not available for a replica",
                plan.node_uid, plan.port
            )));
        }
        let plan = ShardPlan {
            role: ShardRole::Replica,
            ..plan
        };
        let uid = self.insert_shard(bdb_uid, plan, redis_version, true);
        Ok(CommandResult::ShardAdded { uid })
    }

    /// Adds a shard as planned under the next shard uid, which it returns.
    pub(super) fn insert_shard(
        &mut self,
        bdb_uid: BdbUid,
        plan: ShardPlan,
        redis_version: EngineVersion,
        temporary: bool,
    ) -> ShardUid {
        let uid = self.next_ids.next_shard_uid;
        self.next_ids.next_shard_uid += 1;
        let shard = Shard {
            uid,
            bdb_uid,
            node_uid: plan.node_uid,
            role: plan.role,
            assigned_slots: plan.assigned_slots,
            port: plan.port,
            redis_version,
            held: false,
            temporary,
        };
        self.shards.insert(uid, shard);
        uid
    }

    pub(super) fn add_replacement(
        &mut self,
        addition: ReplacementAddition,
    ) -> Result<CommandResult, ModelError> {
        let ReplacementAddition {
            bdb_uid,
            replaces,
            port,
            redis_version,
        } = addition;
        let replaced = self
            .shards
            .get(&replaces)
            .filter(|s| s.bdb_uid == bdb_uid)
            .ok_or_else(|| {
                ModelError::NotFound(format!(
                    "shard {replaces} of database {bdb_uid} does not exist"
                ))
            })?;
        if let Some(existing) = self.replacement_of(replaced) {
            return Ok(CommandResult::ShardAdded { uid: existing.uid });
        }
        if self.shard_port_taken(replaced.node_uid, port) {
            return Err(ModelError::InvalidValue(format!(
                "port {port} of node {} is taken; pick a free shard port",
                replaced.node_uid
            )));
        }
        let plan = ShardPlan {
            node_uid: replaced.node_uid,
            role: ShardRole::Replica,
            assigned_slots: replaced.assigned_slots,
            port,
        };
        let uid = self.insert_shard(bdb_uid, plan, redis_version, true);
        Ok(CommandResult::ShardAdded { uid })
    }

    /// The temporary shard beside `shard`: same slot group and node.
    fn replacement_of(&self, shard: &Shard) -> Option<&Shard> {
        self.slot_group_of(shard)
            .temporary()
            .find(|s| s.uid != shard.uid && s.node_uid == shard.node_uid)
    }

    pub(super) fn replace_shard(
        &mut self,
        replacement: ShardUid,
    ) -> Result<CommandResult, ModelError> {
        let new = self
            .shards
            .get(&replacement)
            .ok_or_else(|| ModelError::NotFound(format!("shard {replacement} does not exist")))?;
        if !new.temporary {
            return Ok(CommandResult::Ok);
        }
        let replaced: Vec<&Shard> = self
            .slot_group_of(new)
            .shards
            .into_iter()
            .filter(|s| !s.temporary && s.node_uid == new.node_uid)
            .collect();
        if let Some(primary) = replaced.iter().find(|s| s.role == ShardRole::Primary) {
            return Err(ModelError::InvalidValue(format!(
                "shard {} is a primary shard; switch it over before replacing it",
                primary.uid
            )));
        }
        let replaced: Vec<ShardUid> = replaced.iter().map(|s| s.uid).collect();
        for old in replaced {
            self.shards.remove(&old);
        }
        self.shards.update(replacement, |new| new.temporary = false);
        Ok(CommandResult::Ok)
    }

    /// The new copy of a migrated shard takes the old one's place. Safe to apply again: once
    /// the old copy is gone only the new one's mark is checked.
    pub(super) fn complete_migration(
        &mut self,
        migration: ShardMigration,
    ) -> Result<CommandResult, ModelError> {
        let ShardMigration { old, new } = migration;
        let copy = self.shards.get(&new).ok_or_else(|| {
            ModelError::NotFound(format!(
                "shard {new} (the new copy of shard {old}) does not exist"
            ))
        })?;
        if let Some(moved) = self.shards.get(&old) {
            if (moved.bdb_uid, moved.assigned_slots) != (copy.bdb_uid, copy.assigned_slots) {
                return Err(ModelError::InvalidValue(format!(
                    "shard {new} is not a copy of shard {old}'s slot range"
                )));
            }
            if moved.role == ShardRole::Primary {
                return Err(ModelError::InvalidValue(format!(
                    "shard {old} is a primary shard; switch it over to shard {new} before dropping it"
                )));
            }
            self.shards.remove(&old);
        }
        self.shards.update(new, |copy| copy.temporary = false);
        Ok(CommandResult::Ok)
    }

    pub(super) fn remove_shard(&mut self, uid: ShardUid) -> Result<CommandResult, ModelError> {
        match self.shards.get(&uid) {
            None => Ok(CommandResult::Ok),
            Some(shard) if shard.role == ShardRole::Primary => Err(ModelError::InvalidValue(
                format!("shard {uid} is a primary shard; switch it over before removing it"),
            )),
            Some(_) => {
                self.shards.remove(&uid);
                Ok(CommandResult::Ok)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bdb_spec, plan, plan_on, with_db};
    use super::*;
    use crate::command::{Command, ShardReplacement};

    /// Nodes 1 and 2 and database 1: primary 1 on node 1, replica 2 on node 2, both at 20000.
    fn replicated() -> ClusterState {
        let shards = vec![
            plan(1, ShardRole::Primary, 20000),
            plan(2, ShardRole::Replica, 20000),
        ];
        with_db(bdb_spec("db1", 12000), shards)
    }

    fn promote(uid: ShardUid, require_held: bool) -> Command {
        Command::PromoteShard(ShardPromotion { uid, require_held })
    }

    fn uids<'a>(shards: impl Iterator<Item = &'a Shard>) -> Vec<ShardUid> {
        shards.map(|s| s.uid).collect()
    }

    #[test]
    fn promoting_a_replica_demotes_the_primary_and_releases_the_hold() {
        let mut state = replicated();
        let hold = Command::HoldShard(ShardHold { uid: 1, held: true });
        assert_eq!(state.apply(hold), CommandResult::Ok);
        assert_eq!(state.apply(promote(2, true)), CommandResult::Ok);
        assert_eq!(state.shards[&2].role, ShardRole::Primary);
        assert_eq!(state.shards[&1].role, ShardRole::Replica);
        assert!(state.shards.values().all(|s| !s.held));
        let before = state.clone();
        assert!(
            matches!(state.apply(promote(1, true)), CommandResult::Refused(_)),
            "a switchover whose hold was released does not complete"
        );
        assert_eq!(state, before);
        assert_eq!(state.apply(promote(1, false)), CommandResult::Ok);
        assert_eq!(state.primary_of(1, SlotRange::even(0, 1)).unwrap().uid, 1);
    }

    #[test]
    fn a_slot_group_has_its_primary_replicas_and_temporary_shards() {
        let mut state = replicated();
        let added = state.apply(Command::AddReplacement(ReplacementAddition {
            bdb_uid: 1,
            replaces: 1,
            port: 20001,
            redis_version: EngineVersion::Valkey81,
        }));
        assert_eq!(added, CommandResult::ShardAdded { uid: 3 });
        let group = state.slot_group(1, SlotRange::even(0, 1));
        assert_eq!(group.primary().map(|s| s.uid), Some(1));
        assert_eq!(uids(group.replicas()), [2, 3]);
        assert_eq!(uids(group.temporary()), [3]);
        assert_eq!(group, state.slot_group_of(&state.shards[&3]));
        assert!(state.slot_group(1, SlotRange::even(0, 2)).shards.is_empty());
        assert!(state.slot_group(2, SlotRange::even(0, 1)).shards.is_empty());
    }

    #[test]
    fn primaries_come_in_slot_order_and_ranges_once_each() {
        let (low, high) = (SlotRange::even(0, 2), SlotRange::even(1, 2));
        let mut spec = bdb_spec("db1", 12000);
        spec.shards_count = 2;
        let state = with_db(
            spec,
            vec![
                plan_on(1, ShardRole::Primary, high, 20000),
                plan_on(2, ShardRole::Replica, high, 20000),
                plan_on(2, ShardRole::Primary, low, 20001),
                plan_on(1, ShardRole::Replica, low, 20001),
            ],
        );
        assert_eq!(uids(state.primaries_of(1).into_iter()), [3, 1]);
        assert_eq!(state.slot_ranges(1), [low, high]);
        assert!(state.primaries_of(9).is_empty() && state.slot_ranges(9).is_empty());
    }

    #[test]
    fn a_shard_listens_on_its_nodes_address_at_its_port() {
        let mut state = replicated();
        let replica = state.shards[&2].clone();
        assert_eq!(
            state.shard_addr(&replica),
            Ok("127.0.0.12:20000".parse().unwrap())
        );
        state.nodes.remove(&2);
        assert!(matches!(
            state.shard_addr(&replica),
            Err(ModelError::NotFound(_))
        ));
    }

    #[test]
    fn a_replacement_takes_the_place_of_its_old_primary_only_once_that_is_a_replica() {
        let mut state = replicated();
        let add = Command::AddReplacement(ReplacementAddition {
            bdb_uid: 1,
            replaces: 1,
            port: 20001,
            redis_version: EngineVersion::Valkey81,
        });
        assert_eq!(
            state.apply(add.clone()),
            CommandResult::ShardAdded { uid: 3 }
        );
        assert_eq!(
            state.apply(add),
            CommandResult::ShardAdded { uid: 3 },
            "adding it again finds the same replacement"
        );
        let replacement = &state.shards[&3];
        assert!(replacement.temporary && replacement.role == ShardRole::Replica);
        assert_eq!(replacement.node_uid, 1, "on the replaced primary's node");
        let before = state.clone();
        let replace = Command::ReplaceShard(ShardReplacement { replacement: 3 });
        assert!(
            matches!(state.apply(replace.clone()), CommandResult::Refused(_)),
            "a primary is never replaced"
        );
        assert_eq!(state, before);
        state.apply(promote(2, false));
        assert_eq!(state.apply(replace.clone()), CommandResult::Ok);
        assert_eq!(state.apply(replace), CommandResult::Ok, "idempotent");
        let mut left: Vec<(u64, u64, bool)> = state
            .shards
            .values()
            .map(|s| (s.uid, s.node_uid, s.temporary))
            .collect();
        left.sort();
        assert_eq!(left, vec![(2, 2, false), (3, 1, false)]);
    }

    #[test]
    fn a_migrated_shard_leaves_its_place_to_its_new_copy_once_it_is_a_replica() {
        let mut state = replicated();
        state.apply(crate::command::Command::AddNode(
            crate::command::NodeAddition {
                node: super::super::testing::spec("127.0.0.13"),
            },
        ));
        let add = Command::AddTemporaryReplica(TemporaryReplicaAddition {
            bdb_uid: 1,
            plan: plan(3, ShardRole::Replica, 20000),
            redis_version: EngineVersion::Redis62,
        });
        assert_eq!(state.apply(add), CommandResult::ShardAdded { uid: 3 });
        let complete = Command::CompleteMigration(ShardMigration { old: 1, new: 3 });
        let before = state.clone();
        let CommandResult::Refused(e) = state.apply(complete.clone()) else {
            panic!("a primary is never dropped")
        };
        assert!(e.to_string().contains("switch it over to shard 3"), "{e}");
        assert_eq!(state, before);
        state.apply(promote(3, false));
        assert_eq!(state.apply(complete.clone()), CommandResult::Ok);
        assert_eq!(state.apply(complete), CommandResult::Ok, "idempotent");
        let left: Vec<(u64, u64, ShardRole, bool)> = state
            .shards
            .values()
            .map(|s| (s.uid, s.node_uid, s.role, s.temporary))
            .collect();
        assert_eq!(
            left,
            vec![
                (2, 2, ShardRole::Replica, false),
                (3, 3, ShardRole::Primary, false)
            ]
        );
        let other = Command::CompleteMigration(ShardMigration { old: 2, new: 9 });
        assert!(matches!(state.apply(other), CommandResult::Refused(_)));
    }

    #[test]
    fn a_temporary_replica_goes_beside_the_primary_once_and_leaves_as_a_replica() {
        let mut spec = bdb_spec("solo", 12000);
        spec.replication = false;
        let mut state = with_db(spec, vec![plan(1, ShardRole::Primary, 20000)]);
        let add = |node| {
            Command::AddTemporaryReplica(TemporaryReplicaAddition {
                bdb_uid: 1,
                plan: plan(node, ShardRole::Primary, 20005),
                redis_version: EngineVersion::Valkey91,
            })
        };
        assert!(
            matches!(state.apply(add(1)), CommandResult::Refused(_)),
            "not on the primary's node"
        );
        assert_eq!(state.apply(add(2)), CommandResult::ShardAdded { uid: 2 });
        assert_eq!(state.apply(add(2)), CommandResult::ShardAdded { uid: 2 });
        assert_eq!(state.shards[&2].role, ShardRole::Replica);
        let remove = |uid| Command::RemoveShard(crate::command::ShardRemoval { uid });
        assert!(matches!(state.apply(remove(1)), CommandResult::Refused(_)));
        assert_eq!(state.apply(remove(2)), CommandResult::Ok);
        assert_eq!(state.apply(remove(2)), CommandResult::Ok, "idempotent");
    }
}
