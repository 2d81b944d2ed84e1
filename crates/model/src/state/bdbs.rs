//! Databases: their creation (with the shards placement planned), settings, engine version and
//! deletion.

use super::table::IndexKey;
use super::ClusterState;
use crate::bdb::{Bdb, BdbSpec, BdbUid, ShardPlan, ShardUid};
use crate::command::{BdbChange, BdbCreation, BdbVersionChange, CommandResult};
use crate::error::ModelError;

impl ClusterState {
    /// The database named `name`, if any.
    pub fn bdb_by_name(&self, name: &str) -> Option<&Bdb> {
        let mut named = self
            .bdbs
            .lookup(|uid| IndexKey::BdbName(name.to_string(), uid));
        named.next()
    }

    /// The database whose endpoint listens on `port`, if any.
    fn bdb_on_port(&self, port: u16) -> Option<&Bdb> {
        let mut on_port = self.bdbs.lookup(|uid| IndexKey::BdbPort(port, uid));
        on_port.next()
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
        if let Some(existing) = self.bdb_on_port(bdb.port) {
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
            let taken = self.shard_port_taken(plan.node_uid, plan.port);
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

    pub(super) fn update_bdb(&mut self, change: BdbChange) -> Result<CommandResult, ModelError> {
        self.bdbs.change("database", change.uid, |bdb| {
            if let Some(memory_size) = change.memory_size {
                bdb.spec.memory_size = memory_size;
            }
            if let Some(password) = change.authentication_redis_pass {
                bdb.spec.authentication_redis_pass = password;
            }
            if change.remove_authentication_redis_pass {
                bdb.spec.authentication_redis_pass = None;
            }
        })
    }

    pub(super) fn delete_bdb(&mut self, uid: BdbUid) -> Result<CommandResult, ModelError> {
        if self.bdbs.remove(&uid).is_none() {
            return Err(ModelError::NotFound(format!(
                "database {uid} does not exist"
            )));
        }
        let shards: Vec<ShardUid> = self.shards_of(uid).map(|s| s.uid).collect();
        for shard in shards {
            self.shards.remove(&shard);
        }
        Ok(CommandResult::Ok)
    }

    pub(super) fn set_bdb_version(
        &mut self,
        change: BdbVersionChange,
    ) -> Result<CommandResult, ModelError> {
        self.bdbs.change("database", change.uid, |bdb| {
            bdb.spec.redis_version = change.redis_version
        })
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
