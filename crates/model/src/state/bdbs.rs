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
        let mut spec = spec;
        if self.keeps_hashed_passwords() {
            spec.hash_password();
        }
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
        let hashed = self.keeps_hashed_passwords();
        self.bdbs.change("database", change.uid, |bdb| {
            let spec = &mut bdb.spec;
            if let Some(memory_size) = change.memory_size {
                spec.memory_size = memory_size;
            }
            if let Some(password) = change.authentication_redis_pass {
                spec.authentication_redis_pass = password;
                if spec.authentication_redis_pass.is_some() {
                    spec.authentication_redis_pass_sha256 = None;
                }
            }
            if let Some(hash) = change.authentication_redis_pass_sha256 {
                spec.authentication_redis_pass = None;
                spec.authentication_redis_pass_sha256 = Some(hash);
            }
            if change.remove_authentication_redis_pass {
                spec.authentication_redis_pass = None;
                spec.authentication_redis_pass_sha256 = None;
            }
            spec.limits.apply(&change.limits);
            if let Some(mode) = change.tls_mode {
                spec.tls_mode = mode;
            }
            spec.config.extend(change.config.clone());
            if hashed {
                spec.hash_password();
            }
        })
    }

    /// Whether database passwords are kept hashed: from cluster version 0.2.0 on (no node of
    /// the first release, which reads only the plaintext, is left).
    pub fn keeps_hashed_passwords(&self) -> bool {
        crate::version::at_least(self.cluster_version(), crate::version::VERSIONED_RELEASE)
    }

    /// Replaces every plaintext database password by its hash (at finalization to 0.2.0).
    pub(super) fn hash_bdb_passwords(&mut self) {
        let plain: Vec<BdbUid> = self
            .bdbs
            .values()
            .filter(|b| b.spec.authentication_redis_pass.is_some())
            .map(|b| b.uid)
            .collect();
        for uid in plain {
            self.bdbs.update(uid, |bdb| bdb.spec.hash_password());
        }
    }

    pub(super) fn delete_bdb(&mut self, uid: BdbUid) -> Result<CommandResult, ModelError> {
        let Some(bdb) = self.bdbs.get(&uid) else {
            return Err(ModelError::NotFound(format!(
                "database {uid} does not exist"
            )));
        };
        // Deleting one instance alone would leave the CRDB naming a database that is gone.
        if let Some(crdt) = &bdb.spec.crdt {
            return Err(ModelError::InvalidValue(format!(
                "database '{}' (db:{uid}) is instance {} of CRDB {}: delete the CRDB with `flotilla crdb delete --crdb-guid {}`",
                bdb.spec.name, crdt.crdt_replica_id, crdt.crdt_guid, crdt.crdt_guid
            )));
        }
        self.remove_bdb(uid);
        Ok(CommandResult::Ok)
    }

    /// Removes database `uid` (which exists) and its shards.
    pub(super) fn remove_bdb(&mut self, uid: BdbUid) {
        self.bdbs.remove(&uid);
        let shards: Vec<ShardUid> = self.shards_of(uid).map(|s| s.uid).collect();
        for shard in shards {
            self.shards.remove(&shard);
        }
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

    /// Moves every node of `state` to 0.2.0 and finalizes the cluster version.
    fn finalize_0_2_0(state: &mut ClusterState) {
        for uid in [1, 2] {
            state.apply(Command::UpdateNode(crate::command::NodeChange {
                uid,
                software_version: "0.2.0".into(),
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                host: Default::default(),
            }));
        }
        let finalize =
            Command::FinalizeClusterVersion(crate::command::ClusterVersionFinalization {
                version: "0.2.0".into(),
            });
        assert_eq!(state.apply(finalize), CommandResult::Ok);
        assert_eq!(state.cluster_version(), "0.2.0");
    }

    #[test]
    fn plaintext_passwords_are_replaced_by_hashes_at_finalization_and_still_match() {
        let mut spec = bdb_spec("db1", 12000);
        spec.authentication_redis_pass = Some("pw".into());
        let mut state = with_db(spec, vec![plan(1, ShardRole::Primary, 20001)]);
        let stored = &state.bdbs[&1].spec;
        assert_eq!(stored.authentication_redis_pass.as_deref(), Some("pw"));
        assert!(stored.password_matches(b"pw") && !stored.password_matches(b"px"));

        finalize_0_2_0(&mut state);
        let stored = &state.bdbs[&1].spec;
        assert_eq!(stored.authentication_redis_pass, None);
        assert_eq!(
            stored.authentication_redis_pass_sha256.as_deref(),
            Some(crate::bdb::sha256_hex(b"pw").as_str())
        );
        assert!(stored.password_matches(b"pw"));
        assert!(!stored.password_matches(b"pw2") && !stored.password_matches(b""));
        let json = serde_json::to_string(&state).unwrap();
        assert!(!json.contains("\"pw\""), "no plaintext left: {json}");

        // After finalization, a password set in plaintext (a proposer that did not hash it) is
        // stored hashed too; one set as a hash replaces the old one.
        let plain = BdbChange {
            uid: 1,
            memory_size: None,
            authentication_redis_pass: Some(Some("new".into())),
            remove_authentication_redis_pass: false,
            authentication_redis_pass_sha256: None,
            limits: Default::default(),
            tls_mode: Default::default(),
            config: Default::default(),
        };
        state.apply(Command::UpdateBdb(plain));
        let stored = &state.bdbs[&1].spec;
        assert_eq!(stored.authentication_redis_pass, None);
        assert!(stored.password_matches(b"new") && !stored.password_matches(b"pw"));
    }

    #[test]
    fn a_database_without_password_matches_nothing_and_limits_change_field_by_field() {
        let mut state = with_db(
            bdb_spec("db1", 12000),
            vec![plan(1, ShardRole::Primary, 20001)],
        );
        assert!(!state.bdbs[&1].spec.has_password());
        assert!(!state.bdbs[&1].spec.password_matches(b""));
        let change = BdbChange {
            uid: 1,
            memory_size: None,
            authentication_redis_pass: None,
            remove_authentication_redis_pass: false,
            authentication_redis_pass_sha256: None,
            limits: crate::bdb::ClientLimitsChange {
                max_connections: Some(5),
                client_timeout: Some(30),
                ..Default::default()
            },
            tls_mode: Some(crate::bdb::TlsMode::Enabled),
            config: [("slowlog-max-len".to_string(), "200".to_string())].into(),
        };
        state.apply(Command::UpdateBdb(change.clone()));
        assert!(state.bdbs[&1].spec.tls_mode.is_enabled());
        // Settings merge: a later change keeps the earlier ones.
        let more = BdbChange {
            config: [("activerehashing".to_string(), "no".to_string())].into(),
            tls_mode: None,
            limits: Default::default(),
            ..change
        };
        state.apply(Command::UpdateBdb(more));
        let config = &state.bdbs[&1].spec.config;
        assert_eq!(config.len(), 2);
        assert_eq!(config["slowlog-max-len"], "200");
        let limits = state.bdbs[&1].spec.limits;
        assert_eq!((limits.max_connections, limits.client_timeout), (5, 30));
        assert_eq!(
            limits.client_query_buffer_limit,
            crate::bdb::DEFAULT_CLIENT_QUERY_BUFFER_LIMIT
        );
        let json = serde_json::to_value(&state.bdbs[&1]).unwrap();
        assert_eq!(json["max_connections"], 5);
        assert!(
            json.get("client_query_buffer_limit").is_none(),
            "defaults stay absent"
        );
    }

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
