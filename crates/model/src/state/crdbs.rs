//! Active-Active databases (CRDBs): this cluster's instance of each, created, changed and
//! deleted together with the local database that is that instance.

use super::ClusterState;
use crate::bdb::BdbUid;
use crate::command::{BdbCreation, CommandResult, CrdbChange, CrdbCreation};
use crate::crdb::Crdb;
use crate::error::ModelError;

impl ClusterState {
    /// The CRDB with GUID `guid`, or an error naming it and how to list the others.
    pub fn crdb(&self, guid: &str) -> Result<&Crdb, ModelError> {
        self.crdbs.get(guid).ok_or_else(|| {
            ModelError::NotFound(format!(
                "CRDB {guid} has no instance on this cluster; `flotilla crdb list` lists them"
            ))
        })
    }

    /// The CRDB whose local instance is database `uid`, if it is one.
    pub fn crdb_of_bdb(&self, uid: BdbUid) -> Option<&Crdb> {
        let guid = &self.bdbs.get(&uid)?.spec.crdt.as_ref()?.crdt_guid;
        self.crdbs.get(guid)
    }

    /// Refuses a CRDB instance this cluster cannot create: an invalid CRDB, one that already
    /// has an instance here, a local database that does not say it is this instance, or one
    /// that clashes with an existing database (name, port, shard ports). Also used by the API
    /// before proposing.
    pub fn check_new_crdb(&self, creation: &CrdbCreation) -> Result<(), ModelError> {
        self.cluster()?;
        let crdb = &creation.crdb;
        crdb.check()?;
        if let Ok(existing) = self.crdb(&crdb.guid) {
            return Err(ModelError::AlreadyExists(format!(
                "guid: CRDB {} already has an instance on this cluster (instance {}, db:{}); delete it first or use another GUID",
                crdb.guid, existing.local_instance_id, existing.local_bdb_uid
            )));
        }
        crdb.check_local_bdb(&creation.bdb)?;
        self.check_new_bdb(&creation.bdb, &creation.shards)
    }

    pub(super) fn create_crdb(
        &mut self,
        creation: CrdbCreation,
    ) -> Result<CommandResult, ModelError> {
        self.check_new_crdb(&creation)?;
        let CrdbCreation {
            mut crdb,
            bdb,
            created_at,
            shards,
        } = creation;
        let created = self.create_bdb(BdbCreation {
            bdb,
            created_at,
            shards,
        })?;
        let CommandResult::BdbCreated { uid } = created else {
            unreachable!("create_bdb answers BdbCreated or an error");
        };
        crdb.local_bdb_uid = uid;
        self.crdbs.insert(crdb.guid.clone(), crdb);
        Ok(CommandResult::BdbCreated { uid })
    }

    pub(super) fn update_crdb(&mut self, change: CrdbChange) -> Result<CommandResult, ModelError> {
        let mut crdb = self.crdb(&change.guid)?.clone();
        if let Some(instances) = change.instances {
            crdb.instances = instances;
        }
        for id in change.ghost_instance_ids {
            if !crdb.ghost_instance_ids.contains(&id) {
                crdb.ghost_instance_ids.push(id);
            }
        }
        if let Some(version) = change.featureset_version {
            if version < crdb.featureset_version {
                return Err(ModelError::InvalidValue(format!(
                    "featureset_version: CRDB {} runs feature set {}; it only moves forward (asked {version})",
                    crdb.guid, crdb.featureset_version
                )));
            }
            crdb.featureset_version = version;
        }
        crdb.check()?;
        let uid = crdb.local_bdb_uid;
        let bdb = self.bdbs.get(&uid).ok_or_else(|| {
            ModelError::NotFound(format!(
                "database {uid}, CRDB {}'s local instance, does not exist",
                crdb.guid
            ))
        })?;
        let mut crdt = bdb.spec.crdt.clone().ok_or_else(|| {
            ModelError::InvalidValue(format!(
                "crdt: database {uid} is not marked as an instance of CRDB {}",
                crdb.guid
            ))
        })?;
        if let Some(version) = change.crdt_protocol_version {
            if version < crdt.crdt_protocol_version {
                return Err(ModelError::InvalidValue(format!(
                    "crdt_protocol_version: instance {} of CRDB {} speaks protocol {}; it only moves forward (asked {version})",
                    crdb.local_instance_id, crdb.guid, crdt.crdt_protocol_version
                )));
            }
            crdt.crdt_protocol_version = version;
        }
        crdt.crdt_featureset_version = crdb.featureset_version;
        self.bdbs.update(uid, |bdb| bdb.spec.crdt = Some(crdt));
        self.crdbs.insert(crdb.guid.clone(), crdb);
        Ok(CommandResult::Ok)
    }

    pub(super) fn delete_crdb(&mut self, guid: &str) -> Result<CommandResult, ModelError> {
        let uid = self.crdb(guid)?.local_bdb_uid;
        self.crdbs.remove(guid);
        if self.bdbs.contains_key(&uid) {
            self.remove_bdb(uid);
        }
        Ok(CommandResult::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bdb_spec, cluster_with_two_nodes, plan};
    use super::*;
    use crate::bdb::{BdbSpec, ShardRole};
    use crate::command::{BdbDeletion, Command, CrdbDeletion};
    use crate::crdb::testing::{crdb, instance, GUID};
    use crate::crdb::BdbCrdt;

    /// The local database of instance `local` of [`crdb`].
    fn local_bdb(local: u16) -> BdbSpec {
        BdbSpec {
            crdt: Some(BdbCrdt {
                crdt_guid: GUID.into(),
                crdt_replica_id: local,
                crdt_protocol_version: 1,
                crdt_featureset_version: 1,
            }),
            ..bdb_spec("cache", 12000)
        }
    }

    fn creation(local: u16) -> CrdbCreation {
        CrdbCreation {
            crdb: crdb(local),
            bdb: local_bdb(local),
            created_at: 5,
            shards: vec![
                plan(1, ShardRole::Primary, 20000),
                plan(2, ShardRole::Replica, 20000),
            ],
        }
    }

    fn created() -> ClusterState {
        let mut state = cluster_with_two_nodes();
        let result = state.apply(Command::CreateCrdb(creation(2)));
        assert_eq!(result, CommandResult::BdbCreated { uid: 1 });
        state
    }

    #[test]
    fn creating_an_instance_makes_the_database_and_the_crdb_together() {
        let state = created();
        let crdb = state.crdb(GUID).unwrap();
        assert_eq!((crdb.local_bdb_uid, crdb.local_instance_id), (1, 2));
        assert_eq!(state.shards_of(1).count(), 2);
        assert_eq!(state.crdb_of_bdb(1).map(|c| c.guid.as_str()), Some(GUID));
        assert_eq!(
            state.bdbs[&1].spec.crdt.as_ref().unwrap().crdt_replica_id,
            2
        );
    }

    /// A change that spoils a valid sample.
    type Spoil = fn(&mut CrdbCreation);

    #[test]
    fn a_bad_instance_is_refused_naming_the_field_and_nothing_is_left() {
        let base = cluster_with_two_nodes();
        let cases: Vec<(&str, Spoil)> = vec![
            ("guid:", |c| c.crdb.guid = "nope".into()),
            ("crdt_replica_id:", |c| {
                c.bdb.crdt.as_mut().unwrap().crdt_replica_id = 1
            }),
            ("crdt_guid:", |c| {
                c.bdb.crdt.as_mut().unwrap().crdt_guid =
                    "00000000-0000-0000-0000-000000000000".into()
            }),
            ("shards_count:", |c| c.bdb.shards_count = 2),
            ("name:", |c| c.bdb.name = "other".into()),
            ("crdt:", |c| c.bdb.crdt = None),
            ("local_instance_id:", |c| c.crdb.local_instance_id = 7),
            ("shard port 20000", |c| c.shards[1].node_uid = 1),
        ];
        for (expected, change) in cases {
            let mut state = base.clone();
            let mut asked = creation(2);
            change(&mut asked);
            let CommandResult::Refused(error) = state.apply(Command::CreateCrdb(asked)) else {
                panic!("{expected}: accepted")
            };
            assert!(
                error.to_string().starts_with(expected),
                "{expected}: {error}"
            );
            assert_eq!(state, base, "{expected}: a refused create changes nothing");
        }
        // The same GUID twice, or a port another database holds.
        let mut state = created();
        let before = state.clone();
        let again = state.apply(Command::CreateCrdb(creation(2)));
        assert!(
            matches!(&again, CommandResult::Refused(ModelError::AlreadyExists(e)) if e.starts_with("guid:")),
            "{again:?}"
        );
        let mut other = creation(2);
        other.crdb.guid = "00000000-0000-0000-0000-000000000001".into();
        other.bdb.crdt.as_mut().unwrap().crdt_guid = other.crdb.guid.clone();
        other.bdb.name = "cache".into();
        let clash = state.apply(Command::CreateCrdb(other));
        assert!(matches!(clash, CommandResult::Refused(_)), "{clash:?}");
        assert_eq!(state, before);
    }

    #[test]
    fn updates_move_versions_forward_and_instances_to_ghosts() {
        let mut state = created();
        let update = |change: CrdbChange| Command::UpdateCrdb(change);
        let blank = CrdbChange {
            guid: GUID.into(),
            instances: None,
            ghost_instance_ids: vec![],
            featureset_version: None,
            crdt_protocol_version: None,
        };
        let bumped = state.apply(update(CrdbChange {
            featureset_version: Some(2),
            crdt_protocol_version: Some(3),
            ..blank.clone()
        }));
        assert_eq!(bumped, CommandResult::Ok);
        let crdt = state.bdbs[&1].spec.crdt.clone().unwrap();
        assert_eq!(
            (crdt.crdt_featureset_version, crdt.crdt_protocol_version),
            (2, 3)
        );
        assert_eq!(state.crdb(GUID).unwrap().featureset_version, 2);
        let before = state.clone();
        for (expected, change) in [
            (
                "featureset_version:",
                CrdbChange {
                    featureset_version: Some(1),
                    ..blank.clone()
                },
            ),
            (
                "crdt_protocol_version:",
                CrdbChange {
                    crdt_protocol_version: Some(2),
                    ..blank.clone()
                },
            ),
            (
                "local_instance_id:",
                CrdbChange {
                    instances: Some(vec![instance(1)]),
                    ..blank.clone()
                },
            ),
            (
                "instances: id 1 belongs to a removed instance",
                CrdbChange {
                    ghost_instance_ids: vec![1],
                    ..blank.clone()
                },
            ),
        ] {
            let CommandResult::Refused(error) = state.apply(update(change)) else {
                panic!("{expected}: accepted")
            };
            assert!(
                error.to_string().starts_with(expected),
                "{expected}: {error}"
            );
            assert_eq!(state, before);
        }
        let removed = state.apply(update(CrdbChange {
            instances: Some(vec![instance(2), instance(3)]),
            ghost_instance_ids: vec![1],
            ..blank
        }));
        assert_eq!(removed, CommandResult::Ok);
        let crdb = state.crdb(GUID).unwrap();
        assert_eq!(crdb.ghost_instance_ids, vec![1]);
        assert_eq!(crdb.instance_ids(), "2, 3");
    }

    #[test]
    fn an_instance_is_deleted_with_its_database_and_not_as_a_plain_database() {
        let mut state = created();
        let refused = state.apply(Command::DeleteBdb(BdbDeletion { uid: 1 }));
        assert!(
            matches!(&refused, CommandResult::Refused(e) if e.to_string().contains("crdb delete")),
            "{refused:?}"
        );
        let deleted = state.apply(Command::DeleteCrdb(CrdbDeletion { guid: GUID.into() }));
        assert_eq!(deleted, CommandResult::Ok);
        assert!(state.crdbs.is_empty() && state.bdbs.is_empty() && state.shards.is_empty());
        let again = state.apply(Command::DeleteCrdb(CrdbDeletion { guid: GUID.into() }));
        assert!(matches!(
            again,
            CommandResult::Refused(ModelError::NotFound(_))
        ));
    }
}
