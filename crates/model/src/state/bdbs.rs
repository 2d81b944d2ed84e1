//! Databases: their creation (with the shards placement planned), settings, engine version and
//! deletion.

use super::ClusterState;
use crate::bdb::{Bdb, BdbSpec, BdbUid, ShardPlan};
use crate::command::{BdbChange, BdbCreation, BdbVersionChange, CommandResult};
use crate::error::ModelError;

impl ClusterState {
    /// The database named `name`, if any.
    pub fn bdb_by_name(&self, name: &str) -> Option<&Bdb> {
        self.bdbs.values().find(|b| b.spec.name == name)
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

    pub(super) fn create_bdb(
        &mut self,
        creation: BdbCreation,
    ) -> Result<CommandResult, ModelError> {
        let BdbCreation {
            bdb: spec,
            created_at,
            shards,
        } = creation;
        self.check_new_bdb(&spec, &shards)?;
        let uid = self.next_ids.next_bdb_uid;
        self.next_ids.next_bdb_uid += 1;
        for plan in shards {
            self.insert_shard(uid, plan, spec.redis_version, false);
        }
        self.bdbs_mut().insert(
            uid,
            Bdb {
                uid,
                spec,
                created_at,
            },
        );
        Ok(CommandResult::BdbCreated { uid })
    }

    pub(super) fn update_bdb(&mut self, change: BdbChange) -> Result<CommandResult, ModelError> {
        let bdb = self.bdb_mut(change.uid)?;
        if let Some(memory_size) = change.memory_size {
            bdb.spec.memory_size = memory_size;
        }
        if let Some(password) = change.authentication_redis_pass {
            bdb.spec.authentication_redis_pass = password;
        }
        if change.remove_authentication_redis_pass {
            bdb.spec.authentication_redis_pass = None;
        }
        Ok(CommandResult::Ok)
    }

    pub(super) fn delete_bdb(&mut self, uid: BdbUid) -> Result<CommandResult, ModelError> {
        if self.bdbs_mut().remove(&uid).is_none() {
            return Err(ModelError::NotFound(format!(
                "database {uid} does not exist"
            )));
        }
        self.shards_mut().retain(|_, s| s.bdb_uid != uid);
        Ok(CommandResult::Ok)
    }

    pub(super) fn set_bdb_version(
        &mut self,
        change: BdbVersionChange,
    ) -> Result<CommandResult, ModelError> {
        self.bdb_mut(change.uid)?.spec.redis_version = change.redis_version;
        Ok(CommandResult::Ok)
    }

    fn bdb_mut(&mut self, uid: BdbUid) -> Result<&mut Bdb, ModelError> {
        self.bdbs_mut()
            .get_mut(&uid)
            .ok_or_else(|| ModelError::NotFound(format!("database {uid} does not exist")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bdb_spec, cluster_with_two_nodes, plan, with_db};
    use super::*;
    use crate::bdb::ShardRole;
    use crate::command::{BdbDeletion, Command};

    fn create(name: &str, port: u16, shards: Vec<ShardPlan>) -> Command {
        Command::CreateBdb(BdbCreation {
            bdb: bdb_spec(name, port),
            created_at: 5,
            shards,
        })
    }

    #[test]
    fn a_database_gets_its_shards_and_clashes_are_refused_without_change() {
        let mut state = cluster_with_two_nodes();
        let shards = vec![
            plan(1, ShardRole::Primary, 20000),
            plan(2, ShardRole::Replica, 20000),
        ];
        let created = state.apply(create("db1", 12000, shards));
        assert_eq!(created, CommandResult::BdbCreated { uid: 1 });
        assert_eq!(state.shards_of(1).count(), 2);
        let before = state.clone();
        for (name, port, shards) in [
            ("db1", 12001, vec![plan(1, ShardRole::Primary, 20001)]),
            ("db2", 12000, vec![plan(1, ShardRole::Primary, 20001)]),
            ("db2", 12001, vec![plan(1, ShardRole::Primary, 20000)]),
            ("db2", 12001, vec![plan(9, ShardRole::Primary, 20001)]),
        ] {
            let result = state.apply(create(name, port, shards));
            assert!(
                matches!(result, CommandResult::Refused(_)),
                "{name}:{port}: {result:?}"
            );
            assert_eq!(state, before, "a refused create changes nothing");
        }
    }

    #[test]
    fn delete_removes_the_database_with_its_shards() {
        let shards = vec![
            plan(1, ShardRole::Primary, 20000),
            plan(2, ShardRole::Replica, 20000),
        ];
        let mut state = with_db(bdb_spec("db1", 12000), shards);
        assert_eq!(
            state.apply(Command::DeleteBdb(BdbDeletion { uid: 1 })),
            CommandResult::Ok
        );
        assert!(state.shards.is_empty() && state.bdbs.is_empty());
        assert!(matches!(
            state.apply(Command::DeleteBdb(BdbDeletion { uid: 1 })),
            CommandResult::Refused(ModelError::NotFound(_))
        ));
    }
}
