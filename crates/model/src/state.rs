//! The replicated cluster state: what every node agrees on once a command is committed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::action::{Action, ActionKind, ActionStatus, ActionUid};
use crate::bdb::{Bdb, BdbSpec, BdbUid, Shard, ShardPlan, ShardRole, ShardUid};
use crate::command::{Command, CommandResult, NodeSpec};
use crate::engine_version::EngineVersion;
use crate::error::ModelError;

/// A node's numeric id, given by the cluster when the node joins (Redis Software's `uid`).
pub type NodeUid = u64;

/// The whole replicated configuration: the state machine the Raft log drives.
///
/// Fields added in later versions must carry `#[serde(default)]` (see the crate docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Cluster-wide settings; `None` until `cluster create` has been applied.
    #[serde(default)]
    pub cluster: Option<Cluster>,
    /// Every member node by uid.
    #[serde(default)]
    pub nodes: BTreeMap<NodeUid, Node>,
    /// Counters that hand out uids for nodes, databases, shards and actions.
    #[serde(default)]
    pub next_ids: IdCounters,
    /// Databases by uid.
    #[serde(default)]
    pub bdbs: BTreeMap<BdbUid, Bdb>,
    /// Shards by uid.
    #[serde(default)]
    pub shards: BTreeMap<ShardUid, Shard>,
    /// Actions by uid (finished ones are kept for `flotilla action list`).
    #[serde(default)]
    pub actions: BTreeMap<ActionUid, Action>,
}

/// Cluster-wide settings and the secrets that guard the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// The cluster's name, as given to `cluster create` (Redis Software's FQDN-like name).
    pub name: String,
    /// The operator's login for the REST API and CLI.
    pub credentials: Credentials,
    /// Shared secret that authenticates internal RPC (Raft, node reports) between nodes.
    pub secret: String,
    /// When the cluster was created, in seconds since the Unix epoch (set by the proposer, so
    /// applying the command stays deterministic).
    pub created_at: u64,
}

/// The operator's user name and a password hash (PHC string) — never the password itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// User name for basic auth.
    pub username: String,
    /// Password hash in PHC string format (argon2id), produced by the API layer.
    pub password_hash: String,
}

/// One member machine running the flotilla daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The node's uid.
    pub uid: NodeUid,
    /// The address the node binds for every service (its own IP, e.g. 127.0.0.11).
    pub addr: String,
    /// Version of the Flotilla package installed on the node.
    pub software_version: String,
    /// The node's operating system as `/etc/os-release` names it (PRETTY_NAME).
    pub os: String,
}

/// Monotonic counters for uids; a uid is never handed out twice, even after a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdCounters {
    /// The uid the next joining node receives.
    pub next_node_uid: u64,
    /// The uid the next database receives.
    #[serde(default = "first_uid")]
    pub next_bdb_uid: u64,
    /// The uid the next shard receives.
    #[serde(default = "first_uid")]
    pub next_shard_uid: u64,
    /// The uid the next action receives.
    #[serde(default = "first_uid")]
    pub next_action_uid: u64,
}

fn first_uid() -> u64 {
    1
}

impl Default for IdCounters {
    fn default() -> Self {
        Self {
            next_node_uid: 1,
            next_bdb_uid: 1,
            next_shard_uid: 1,
            next_action_uid: 1,
        }
    }
}

impl ClusterState {
    /// Applies one committed command. Deterministic: the same state and command give the same
    /// result on every node, and a refused command leaves the state untouched.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        let outcome = match command {
            Command::CreateCluster {
                name,
                credentials,
                secret,
                created_at,
                node,
            } => self.create_cluster(name, credentials, secret, created_at, node),
            Command::AddNode { node } => self.add_node(node),
            Command::UpdateCluster { name } => self.update_cluster(name),
            Command::UpdateNode {
                uid,
                software_version,
                os,
            } => self.update_node(uid, software_version, os),
            Command::CreateBdb {
                bdb,
                created_at,
                shards,
            } => self.create_bdb(bdb, created_at, shards),
            Command::DeleteBdb { uid } => self.delete_bdb(uid),
            Command::UpdateBdb {
                uid,
                memory_size,
                authentication_redis_pass,
            } => self.update_bdb(uid, memory_size, authentication_redis_pass),
            Command::PromoteShard { uid, require_held } => self.promote_shard(uid, require_held),
            Command::HoldShard { uid, held } => self.hold_shard(uid, held),
            Command::AddTemporaryReplica {
                bdb_uid,
                plan,
                redis_version,
            } => self.add_temporary_replica(bdb_uid, plan, redis_version),
            Command::AddReplacement {
                bdb_uid,
                replaces,
                port,
                redis_version,
            } => self.add_replacement(bdb_uid, replaces, port, redis_version),
            Command::ReplaceShard { replacement } => self.replace_shard(replacement),
            Command::RemoveShard { uid } => self.remove_shard(uid),
            Command::CreateAction {
                action,
                steps_total,
                first_step,
                created_at,
            } => self.create_action(action, steps_total, first_step, created_at),
            Command::UpdateAction {
                uid,
                status,
                step_index,
                step,
                error,
                updated_at,
                finished,
                expected_step,
            } => {
                let update = (status, step_index, step, error, updated_at);
                self.update_action(uid, update, finished, expected_step)
            }
            Command::CancelAction { uid } => self.cancel_action(uid),
            Command::SetShardVersion { uid, redis_version } => {
                self.set_shard_version(uid, redis_version)
            }
            Command::SetBdbVersion { uid, redis_version } => {
                self.set_bdb_version(uid, redis_version)
            }
            Command::Unknown => Ok(CommandResult::Ignored),
        };
        outcome.unwrap_or_else(CommandResult::Refused)
    }

    /// The cluster settings, or the error that says the cluster is not created yet.
    pub fn cluster(&self) -> Result<&Cluster, ModelError> {
        self.cluster.as_ref().ok_or(ModelError::NotBootstrapped)
    }

    /// The node bound to `addr`, if any.
    pub fn node_by_addr(&self, addr: &str) -> Option<&Node> {
        self.nodes.values().find(|n| n.addr == addr)
    }

    /// The database named `name`, if any.
    pub fn bdb_by_name(&self, name: &str) -> Option<&Bdb> {
        self.bdbs.values().find(|b| b.spec.name == name)
    }

    /// The shards of database `uid`, in uid order.
    pub fn shards_of(&self, uid: BdbUid) -> impl Iterator<Item = &Shard> {
        self.shards.values().filter(move |s| s.bdb_uid == uid)
    }

    /// The shards placed on node `uid`.
    pub fn shards_on(&self, uid: NodeUid) -> impl Iterator<Item = &Shard> {
        self.shards.values().filter(move |s| s.node_uid == uid)
    }

    /// The master shard holding `slots` of database `bdb`, if any.
    pub fn master_of(&self, bdb: BdbUid, slots: crate::SlotRange) -> Option<&Shard> {
        self.shards_of(bdb)
            .find(|s| s.role == ShardRole::Master && s.assigned_slots == slots)
    }

    /// Refuses a database spec that clashes with what exists (name, port) or names unknown
    /// nodes; also used by the API before proposing, for early, clear errors.
    pub fn check_new_bdb(&self, bdb: &BdbSpec, shards: &[ShardPlan]) -> Result<(), ModelError> {
        self.cluster()?;
        if let Some(existing) = self.bdb_by_name(&bdb.name) {
            return Err(ModelError::AlreadyExists(format!(
                "name: a database named '{}' already exists (db:{}); choose another name",
                bdb.name, existing.uid
            )));
        }
        if let Some(existing) = self.bdbs.values().find(|b| b.spec.port == bdb.port) {
            return Err(ModelError::AlreadyExists(format!(
                "port: {} is the endpoint of database '{}' (db:{}); choose another port",
                bdb.port, existing.spec.name, existing.uid
            )));
        }
        for plan in shards {
            if !self.nodes.contains_key(&plan.node_uid) {
                return Err(ModelError::NotFound(format!(
                    "node {} named in the placement is not in the cluster",
                    plan.node_uid
                )));
            }
            let taken = self.shards_on(plan.node_uid).any(|s| s.port == plan.port);
            let twice = shards
                .iter()
                .filter(|p| p.node_uid == plan.node_uid && p.port == plan.port)
                .count()
                > 1;
            if taken || twice {
                return Err(ModelError::AlreadyExists(format!(
                    "shard port {} is already used on node {}",
                    plan.port, plan.node_uid
                )));
            }
        }
        Ok(())
    }

    fn create_bdb(
        &mut self,
        spec: BdbSpec,
        created_at: u64,
        shards: Vec<ShardPlan>,
    ) -> Result<CommandResult, ModelError> {
        self.check_new_bdb(&spec, &shards)?;
        let uid = self.next_ids.next_bdb_uid;
        self.next_ids.next_bdb_uid += 1;
        for plan in shards {
            self.insert_shard(uid, plan, spec.redis_version, false);
        }
        self.bdbs.insert(
            uid,
            Bdb {
                uid,
                spec,
                created_at,
            },
        );
        Ok(CommandResult::BdbCreated { uid })
    }

    fn update_bdb(
        &mut self,
        uid: BdbUid,
        memory_size: Option<u64>,
        password: Option<Option<String>>,
    ) -> Result<CommandResult, ModelError> {
        let bdb = self
            .bdbs
            .get_mut(&uid)
            .ok_or_else(|| ModelError::NotFound(format!("database {uid} does not exist")))?;
        if let Some(memory_size) = memory_size {
            bdb.spec.memory_size = memory_size;
        }
        if let Some(password) = password {
            bdb.spec.authentication_redis_pass = password;
        }
        Ok(CommandResult::Ok)
    }

    fn delete_bdb(&mut self, uid: BdbUid) -> Result<CommandResult, ModelError> {
        if self.bdbs.remove(&uid).is_none() {
            return Err(ModelError::NotFound(format!(
                "database {uid} does not exist"
            )));
        }
        self.shards.retain(|_, s| s.bdb_uid != uid);
        Ok(CommandResult::Ok)
    }

    /// Makes shard `uid` the master of its slot range; the previous master becomes its slave.
    fn promote_shard(
        &mut self,
        uid: ShardUid,
        require_held: bool,
    ) -> Result<CommandResult, ModelError> {
        let shard = self
            .shards
            .get(&uid)
            .cloned()
            .ok_or_else(|| ModelError::NotFound(format!("shard {uid} does not exist")))?;
        if shard.role == ShardRole::Master {
            return Ok(CommandResult::Ok);
        }
        let held = self
            .master_of(shard.bdb_uid, shard.assigned_slots)
            .is_some_and(|m| m.held);
        if require_held && !held {
            return Err(ModelError::InvalidValue(format!(
                "shard {uid}: the switchover's hold was released (repaired by a new primary node); not promoting"
            )));
        }
        for other in self.shards.values_mut() {
            if other.bdb_uid == shard.bdb_uid
                && other.assigned_slots == shard.assigned_slots
                && other.role == ShardRole::Master
            {
                other.role = ShardRole::Slave;
            }
        }
        for other in self.shards.values_mut() {
            if other.bdb_uid == shard.bdb_uid && other.assigned_slots == shard.assigned_slots {
                other.held = false;
            }
        }
        if let Some(promoted) = self.shards.get_mut(&uid) {
            promoted.role = ShardRole::Master;
        }
        Ok(CommandResult::Ok)
    }

    /// The running action that touches database `bdb`, if any.
    pub fn running_action_on(&self, bdb: BdbUid) -> Option<&Action> {
        self.actions
            .values()
            .find(|a| a.is_running() && a.kind.bdb_uid() == bdb)
    }

    fn create_action(
        &mut self,
        kind: ActionKind,
        steps_total: u32,
        first_step: String,
        created_at: u64,
    ) -> Result<CommandResult, ModelError> {
        let bdb = kind.bdb_uid();
        if !self.bdbs.contains_key(&bdb) {
            return Err(ModelError::NotFound(format!(
                "database {bdb} does not exist"
            )));
        }
        if let Some(running) = self.running_action_on(bdb) {
            return Err(ModelError::AlreadyExists(format!(
                "action {} ({}) is running on database {bdb} (step '{}'); wait for it                  (`flotilla action wait {}`) or cancel it (`flotilla action cancel {}`)",
                running.uid,
                running.kind.name(),
                running.step,
                running.uid,
                running.uid
            )));
        }
        let uid = self.next_ids.next_action_uid;
        self.next_ids.next_action_uid += 1;
        self.actions.insert(
            uid,
            Action {
                uid,
                kind,
                status: ActionStatus::Running,
                step_index: 0,
                step: first_step,
                steps_total,
                error: None,
                cancel_requested: false,
                created_at,
                updated_at: created_at,
                history: Vec::new(),
            },
        );
        Ok(CommandResult::ActionCreated { uid })
    }

    fn action_mut(&mut self, uid: ActionUid) -> Result<&mut Action, ModelError> {
        self.actions
            .get_mut(&uid)
            .ok_or_else(|| ModelError::NotFound(format!("action {uid} does not exist")))
    }

    fn update_action(
        &mut self,
        uid: ActionUid,
        (status, step_index, step, error, updated_at): (
            ActionStatus,
            u32,
            String,
            Option<String>,
            u64,
        ),
        finished: Option<crate::action::StepRecord>,
        expected_step: Option<u32>,
    ) -> Result<CommandResult, ModelError> {
        let action = self.action_mut(uid)?;
        if expected_step.is_some_and(|expected| expected != action.step_index) {
            return Err(ModelError::InvalidValue(format!(
                "action {uid} is at step {} now, not {:?}; another primary node moved it on",
                action.step_index, expected_step
            )));
        }
        if !action.is_running() {
            return Err(ModelError::InvalidValue(format!(
                "action {uid} already ended ({:?})",
                action.status
            )));
        }
        action.status = status;
        action.step_index = step_index;
        action.step = step;
        action.error = error;
        action.updated_at = updated_at;
        action.history.extend(finished);
        Ok(CommandResult::Ok)
    }

    fn cancel_action(&mut self, uid: ActionUid) -> Result<CommandResult, ModelError> {
        let action = self.action_mut(uid)?;
        if !action.is_running() {
            return Err(ModelError::InvalidValue(format!(
                "action {uid} is not running ({:?}); nothing to cancel",
                action.status
            )));
        }
        action.cancel_requested = true;
        Ok(CommandResult::Ok)
    }

    fn set_shard_version(
        &mut self,
        uid: ShardUid,
        version: EngineVersion,
    ) -> Result<CommandResult, ModelError> {
        let shard = self
            .shards
            .get_mut(&uid)
            .ok_or_else(|| ModelError::NotFound(format!("shard {uid} does not exist")))?;
        shard.redis_version = version;
        Ok(CommandResult::Ok)
    }

    fn set_bdb_version(
        &mut self,
        uid: BdbUid,
        version: EngineVersion,
    ) -> Result<CommandResult, ModelError> {
        let bdb = self
            .bdbs
            .get_mut(&uid)
            .ok_or_else(|| ModelError::NotFound(format!("database {uid} does not exist")))?;
        bdb.spec.redis_version = version;
        Ok(CommandResult::Ok)
    }

    fn add_temporary_replica(
        &mut self,
        bdb_uid: BdbUid,
        plan: ShardPlan,
        redis_version: EngineVersion,
    ) -> Result<CommandResult, ModelError> {
        if !self.bdbs.contains_key(&bdb_uid) {
            return Err(ModelError::NotFound(format!(
                "database {bdb_uid} does not exist"
            )));
        }
        if let Some(existing) = self
            .shards_of(bdb_uid)
            .find(|s| s.temporary && s.assigned_slots == plan.assigned_slots)
        {
            return Ok(CommandResult::ShardAdded { uid: existing.uid });
        }
        let master = self
            .master_of(bdb_uid, plan.assigned_slots)
            .ok_or_else(|| {
                ModelError::NotFound(format!(
                    "slot range {} of database {bdb_uid} has no master",
                    plan.assigned_slots
                ))
            })?;
        if master.node_uid == plan.node_uid {
            return Err(ModelError::InvalidValue(format!(
                "a replica must not share node {} with its master",
                plan.node_uid
            )));
        }
        if !self.nodes.contains_key(&plan.node_uid)
            || self.shards_on(plan.node_uid).any(|s| s.port == plan.port)
        {
            return Err(ModelError::InvalidValue(format!(
                "node {} or its port {} is not available for a replica",
                plan.node_uid, plan.port
            )));
        }
        let plan = ShardPlan {
            role: ShardRole::Slave,
            ..plan
        };
        let uid = self.insert_shard(bdb_uid, plan, redis_version, true);
        Ok(CommandResult::ShardAdded { uid })
    }

    /// Adds a shard as planned under the next shard uid, which it returns.
    fn insert_shard(
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

    fn add_replacement(
        &mut self,
        bdb_uid: BdbUid,
        replaces: ShardUid,
        port: u16,
        redis_version: EngineVersion,
    ) -> Result<CommandResult, ModelError> {
        let replaced = self
            .shards
            .get(&replaces)
            .filter(|s| s.bdb_uid == bdb_uid)
            .cloned()
            .ok_or_else(|| {
                ModelError::NotFound(format!(
                    "shard {replaces} of database {bdb_uid} does not exist"
                ))
            })?;
        if let Some(existing) = self.replacement_of(&replaced) {
            return Ok(CommandResult::ShardAdded { uid: existing.uid });
        }
        if self.shards_on(replaced.node_uid).any(|s| s.port == port) {
            return Err(ModelError::InvalidValue(format!(
                "port {port} of node {} is taken; pick a free shard port",
                replaced.node_uid
            )));
        }
        let plan = ShardPlan {
            node_uid: replaced.node_uid,
            role: ShardRole::Slave,
            assigned_slots: replaced.assigned_slots,
            port,
        };
        let uid = self.insert_shard(bdb_uid, plan, redis_version, true);
        Ok(CommandResult::ShardAdded { uid })
    }

    /// The temporary shard beside `shard`: same database, slot range and node.
    fn replacement_of(&self, shard: &Shard) -> Option<&Shard> {
        self.shards_of(shard.bdb_uid).find(|s| {
            s.temporary
                && s.uid != shard.uid
                && s.assigned_slots == shard.assigned_slots
                && s.node_uid == shard.node_uid
        })
    }

    fn replace_shard(&mut self, replacement: ShardUid) -> Result<CommandResult, ModelError> {
        let new =
            self.shards.get(&replacement).cloned().ok_or_else(|| {
                ModelError::NotFound(format!("shard {replacement} does not exist"))
            })?;
        if !new.temporary {
            return Ok(CommandResult::Ok);
        }
        let replaced: Vec<Shard> = self
            .shards_of(new.bdb_uid)
            .filter(|s| {
                !s.temporary && s.assigned_slots == new.assigned_slots && s.node_uid == new.node_uid
            })
            .cloned()
            .collect();
        if let Some(master) = replaced.iter().find(|s| s.role == ShardRole::Master) {
            return Err(ModelError::InvalidValue(format!(
                "shard {} is a master; switch it over before replacing it",
                master.uid
            )));
        }
        for old in replaced {
            self.shards.remove(&old.uid);
        }
        if let Some(new) = self.shards.get_mut(&replacement) {
            new.temporary = false;
        }
        Ok(CommandResult::Ok)
    }

    fn remove_shard(&mut self, uid: ShardUid) -> Result<CommandResult, ModelError> {
        match self.shards.get(&uid) {
            None => Ok(CommandResult::Ok),
            Some(shard) if shard.role == ShardRole::Master => Err(ModelError::InvalidValue(
                format!("shard {uid} is a master; switch it over before removing it"),
            )),
            Some(_) => {
                self.shards.remove(&uid);
                Ok(CommandResult::Ok)
            }
        }
    }

    fn hold_shard(&mut self, uid: ShardUid, held: bool) -> Result<CommandResult, ModelError> {
        let shard = self
            .shards
            .get_mut(&uid)
            .ok_or_else(|| ModelError::NotFound(format!("shard {uid} does not exist")))?;
        if held && shard.role != ShardRole::Master {
            return Err(ModelError::InvalidValue(format!(
                "shard {uid} is a slave; only a master shard's slots can be held"
            )));
        }
        shard.held = held;
        Ok(CommandResult::Ok)
    }

    fn create_cluster(
        &mut self,
        name: String,
        credentials: Credentials,
        secret: String,
        created_at: u64,
        node: NodeSpec,
    ) -> Result<CommandResult, ModelError> {
        if let Some(existing) = &self.cluster {
            return Err(ModelError::AlreadyExists(format!(
                "cluster '{}' already exists on this node",
                existing.name
            )));
        }
        self.cluster = Some(Cluster {
            name,
            credentials,
            secret,
            created_at,
        });
        let uid = self.insert_node(node);
        Ok(CommandResult::NodeAdded { uid })
    }

    fn add_node(&mut self, node: NodeSpec) -> Result<CommandResult, ModelError> {
        self.cluster()?;
        if let Some(existing) = self.node_by_addr(&node.addr) {
            return Ok(CommandResult::NodeExists { uid: existing.uid });
        }
        let uid = self.insert_node(node);
        Ok(CommandResult::NodeAdded { uid })
    }

    fn insert_node(&mut self, node: NodeSpec) -> NodeUid {
        let uid = self.next_ids.next_node_uid;
        self.next_ids.next_node_uid += 1;
        self.nodes.insert(
            uid,
            Node {
                uid,
                addr: node.addr,
                software_version: node.software_version,
                os: node.os,
            },
        );
        uid
    }

    fn update_cluster(&mut self, name: Option<String>) -> Result<CommandResult, ModelError> {
        let cluster = self.cluster.as_mut().ok_or(ModelError::NotBootstrapped)?;
        if let Some(name) = name {
            cluster.name = name;
        }
        Ok(CommandResult::Ok)
    }

    fn update_node(
        &mut self,
        uid: NodeUid,
        software_version: String,
        os: String,
    ) -> Result<CommandResult, ModelError> {
        let node = self
            .nodes
            .get_mut(&uid)
            .ok_or_else(|| ModelError::NotFound(format!("node {uid} is not in the cluster")))?;
        node.software_version = software_version;
        node.os = os;
        Ok(CommandResult::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str) -> NodeSpec {
        NodeSpec {
            addr: addr.into(),
            software_version: "0.1.0".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
        }
    }

    fn create() -> Command {
        Command::CreateCluster {
            name: "c1".into(),
            credentials: Credentials {
                username: "admin".into(),
                password_hash: "x".into(),
            },
            secret: "s".into(),
            created_at: 1,
            node: spec("127.0.0.11"),
        }
    }

    #[test]
    fn create_gives_uid_one_and_refuses_a_second_create() {
        let mut state = ClusterState::default();
        assert_eq!(state.apply(create()), CommandResult::NodeAdded { uid: 1 });
        let before = state.clone();
        assert!(matches!(
            state.apply(create()),
            CommandResult::Refused(ModelError::AlreadyExists(_))
        ));
        assert_eq!(state, before, "a refused command changes nothing");
    }

    #[test]
    fn nodes_get_increasing_uids_and_a_known_address_keeps_its_uid() {
        let mut state = ClusterState::default();
        state.apply(create());
        let add = |a: &str| Command::AddNode { node: spec(a) };
        assert_eq!(
            state.apply(add("127.0.0.12")),
            CommandResult::NodeAdded { uid: 2 }
        );
        assert_eq!(
            state.apply(add("127.0.0.12")),
            CommandResult::NodeExists { uid: 2 }
        );
        assert_eq!(
            state.apply(add("127.0.0.13")),
            CommandResult::NodeAdded { uid: 3 }
        );
    }

    #[test]
    fn add_node_before_create_is_refused() {
        let mut state = ClusterState::default();
        let result = state.apply(Command::AddNode {
            node: spec("127.0.0.12"),
        });
        assert_eq!(result, CommandResult::Refused(ModelError::NotBootstrapped));
        assert!(state.nodes.is_empty());
    }

    #[test]
    fn state_written_by_a_newer_version_with_extra_fields_still_decodes() {
        let json = r#"{"cluster":null,"nodes":{},"next_ids":{"next_node_uid":4,"next_bdb_uid":9},"bdbs":{}}"#;
        let state: ClusterState = serde_json::from_str(json).unwrap();
        assert_eq!(state.next_ids.next_node_uid, 4);
    }

    fn bdb_spec(name: &str, port: u16) -> BdbSpec {
        BdbSpec {
            name: name.into(),
            port,
            memory_size: 100 << 20,
            shards_count: 1,
            replication: true,
            data_persistence: crate::DataPersistence::Disabled,
            redis_version: crate::EngineVersion::Redis62,
            authentication_redis_pass: None,
        }
    }

    fn plan(node_uid: u64, role: ShardRole, port: u16) -> ShardPlan {
        ShardPlan {
            node_uid,
            role,
            assigned_slots: crate::SlotRange::even(0, 1),
            port,
        }
    }

    fn cluster_with_two_nodes() -> ClusterState {
        let mut state = ClusterState::default();
        state.apply(create());
        state.apply(Command::AddNode {
            node: spec("127.0.0.12"),
        });
        state
    }

    #[test]
    fn a_database_gets_its_shards_and_clashes_are_refused_without_change() {
        let mut state = cluster_with_two_nodes();
        let shards = vec![
            plan(1, ShardRole::Master, 20000),
            plan(2, ShardRole::Slave, 20000),
        ];
        let created = state.apply(Command::CreateBdb {
            bdb: bdb_spec("db1", 12000),
            created_at: 5,
            shards: shards.clone(),
        });
        assert_eq!(created, CommandResult::BdbCreated { uid: 1 });
        assert_eq!(state.shards_of(1).count(), 2);
        let before = state.clone();
        for (name, port, shards) in [
            ("db1", 12001, vec![plan(1, ShardRole::Master, 20001)]),
            ("db2", 12000, vec![plan(1, ShardRole::Master, 20001)]),
            ("db2", 12001, vec![plan(1, ShardRole::Master, 20000)]),
            ("db2", 12001, vec![plan(9, ShardRole::Master, 20001)]),
        ] {
            let result = state.apply(Command::CreateBdb {
                bdb: bdb_spec(name, port),
                created_at: 6,
                shards,
            });
            assert!(
                matches!(result, CommandResult::Refused(_)),
                "{name}:{port}: {result:?}"
            );
            assert_eq!(state, before, "a refused create changes nothing");
        }
    }

    #[test]
    fn promoting_a_slave_demotes_the_master_and_delete_removes_shards() {
        let mut state = cluster_with_two_nodes();
        let shards = vec![
            plan(1, ShardRole::Master, 20000),
            plan(2, ShardRole::Slave, 20000),
        ];
        state.apply(Command::CreateBdb {
            bdb: bdb_spec("db1", 12000),
            created_at: 5,
            shards,
        });
        assert_eq!(
            state.apply(Command::PromoteShard {
                uid: 2,
                require_held: false
            }),
            CommandResult::Ok
        );
        assert_eq!(state.shards[&2].role, ShardRole::Master);
        assert_eq!(state.shards[&1].role, ShardRole::Slave);
        assert_eq!(
            state.apply(Command::DeleteBdb { uid: 1 }),
            CommandResult::Ok
        );
        assert!(state.shards.is_empty() && state.bdbs.is_empty());
    }

    #[test]
    fn a_replacement_takes_its_old_masters_place_only_once_that_is_a_slave() {
        let mut state = cluster_with_two_nodes();
        state.apply(Command::CreateBdb {
            bdb: bdb_spec("db1", 12000),
            created_at: 5,
            shards: vec![
                plan(1, ShardRole::Master, 20000),
                plan(2, ShardRole::Slave, 20000),
            ],
        });
        let add = Command::AddReplacement {
            bdb_uid: 1,
            replaces: 1,
            port: 20001,
            redis_version: EngineVersion::Valkey81,
        };
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
        assert!(replacement.temporary && replacement.role == ShardRole::Slave);
        assert_eq!(replacement.node_uid, 1, "on the replaced master's node");
        let before = state.clone();
        let replace = Command::ReplaceShard { replacement: 3 };
        assert!(
            matches!(state.apply(replace.clone()), CommandResult::Refused(_)),
            "a master is never replaced"
        );
        assert_eq!(state, before);
        state.apply(Command::PromoteShard {
            uid: 2,
            require_held: false,
        });
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
}
