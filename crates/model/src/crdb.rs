//! Active-Active databases (CRDBs) as a cluster's store keeps them.
//!
//! A CRDB is one database with an instance on each of two or more clusters (Redis Software's
//! model, `../shared/reference/active-active.md`). Each participating cluster keeps the whole
//! [`Crdb`] (its instances and how to reach their clusters), and its local instance is an
//! ordinary database whose [`BdbSpec::crdt`](crate::BdbSpec::crdt) says it is one: the proxy
//! then turns client writes into CRDT operations ([`flotilla-crdt`]) and the syncer pulls every
//! peer instance's operations. Field names follow Redis Software's `crdb` and `bdb` objects.

use serde::{Deserialize, Serialize};

use crate::bdb::{BdbSpec, BdbUid, MAX_SHARDS};
use crate::error::ModelError;

/// An instance id inside one CRDB (Redis Software's `REPL-ID`, `crdt_replica_id`): 1, 2, ...
/// It breaks ties between concurrent writes (the lower id wins) and is never reused.
pub type CrdtReplicaId = u16;

/// What makes a database one instance of a CRDB (Redis Software's `crdt_*` bdb fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BdbCrdt {
    /// The CRDB's GUID, the same on every instance.
    pub crdt_guid: String,
    /// This instance's id.
    pub crdt_replica_id: CrdtReplicaId,
    /// The CRDB protocol version this instance writes its operations in; raised by
    /// `db upgrade` unless `--keep-crdt-protocol-version`.
    pub crdt_protocol_version: u16,
    /// The CRDB's feature set version as this instance knows it (moved for every instance
    /// together by `crdb update --featureset-version`).
    pub crdt_featureset_version: u16,
}

/// How one cluster's syncer reaches another cluster: its REST API (HTTPS, checked against that
/// cluster's CA) and the operator credentials given at `crdb create` (Redis Software keeps the
/// same in its `crdb` object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbCluster {
    /// The cluster's name.
    pub name: String,
    /// Every node's REST URL (`https://ADDR:9443`): the syncer tries them in turn.
    pub urls: Vec<String>,
    /// The cluster CA's certificate (PEM): the only root trusted for this cluster's REST.
    pub ca_cert: String,
    /// Operator user on that cluster.
    pub username: String,
    /// Its password.
    pub password: String,
}

/// One instance of a CRDB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbInstance {
    /// Its id (`crdt_replica_id` on its cluster).
    pub id: CrdtReplicaId,
    /// The cluster that hosts it.
    pub cluster: CrdbCluster,
}

/// A CRDB as every participating cluster keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crdb {
    /// Its GUID.
    pub guid: String,
    /// Its name (the local database's name on every cluster).
    pub name: String,
    /// Every current instance, this cluster's included.
    pub instances: Vec<CrdbInstance>,
    /// This cluster's instance id.
    pub local_instance_id: CrdtReplicaId,
    /// The local database that is this cluster's instance.
    pub local_bdb_uid: BdbUid,
    /// The feature set version every instance runs.
    pub featureset_version: u16,
    /// The number of primary shards of every instance, fixed at creation: local shard `i` pulls
    /// peer shard `i`, so every instance must split the slots alike (Redis Software's rule).
    #[serde(default)]
    pub shards_count: u16,
    /// Removed instances (`crdt_ghost_replica_ids`): their ops are refused from then on.
    #[serde(default)]
    pub ghost_instance_ids: Vec<CrdtReplicaId>,
}

impl Crdb {
    /// The instances other than this cluster's: whom the syncer pulls from.
    pub fn peers(&self) -> impl Iterator<Item = &CrdbInstance> {
        self.instances
            .iter()
            .filter(move |i| i.id != self.local_instance_id)
    }

    /// The instance with id `id`, if it is a current one.
    pub fn instance(&self, id: CrdtReplicaId) -> Option<&CrdbInstance> {
        self.instances.iter().find(|i| i.id == id)
    }

    /// Refuses a CRDB that no cluster could take part in, naming the field: a GUID that is not
    /// one, no instance, duplicate instance ids or clusters, an instance without a cluster name
    /// or URL, this cluster's id missing from the instances, a removed id still listed, or a
    /// shard count outside 1-64. Checked by the store (create and update) and by the API before
    /// proposing, for the same message early.
    pub fn check(&self) -> Result<(), ModelError> {
        check_guid(&self.guid)?;
        if self.name.is_empty() {
            return Err(invalid("name: a CRDB needs a name (its databases' name)"));
        }
        if self.shards_count == 0 || self.shards_count > MAX_SHARDS {
            return Err(invalid(format!(
                "shards_count: {} is outside 1-{MAX_SHARDS}",
                self.shards_count
            )));
        }
        if self.instances.is_empty() {
            return Err(invalid("instances: a CRDB needs at least one instance"));
        }
        for (index, instance) in self.instances.iter().enumerate() {
            instance.check()?;
            let earlier = &self.instances[..index];
            if earlier.iter().any(|i| i.id == instance.id) {
                return Err(invalid(format!(
                    "instances: id {} is given to two instances; every instance needs its own id",
                    instance.id
                )));
            }
            if let Some(same) = earlier
                .iter()
                .find(|i| i.cluster.name == instance.cluster.name)
            {
                return Err(invalid(format!(
                    "instances: instances {} and {} are both on cluster '{}'; a CRDB has one instance per cluster",
                    same.id, instance.id, instance.cluster.name
                )));
            }
            if self.ghost_instance_ids.contains(&instance.id) {
                return Err(invalid(format!(
                    "instances: id {} belongs to a removed instance and is never reused; give the instance a new id",
                    instance.id
                )));
            }
        }
        if self.instance(self.local_instance_id).is_none() {
            return Err(invalid(format!(
                "local_instance_id: {} is not among the instances' ids ({})",
                self.local_instance_id,
                self.instance_ids()
            )));
        }
        Ok(())
    }

    /// The instances' ids, `1, 2, 3`, for messages.
    pub fn instance_ids(&self) -> String {
        let ids: Vec<String> = self.instances.iter().map(|i| i.id.to_string()).collect();
        ids.join(", ")
    }

    /// Refuses `bdb` as this cluster's instance of the CRDB unless it says so: `spec.crdt` names
    /// this CRDB's GUID, the local instance id and its feature set version, and the database has
    /// the CRDB's name and shard count.
    pub fn check_local_bdb(&self, bdb: &BdbSpec) -> Result<(), ModelError> {
        let Some(crdt) = &bdb.crdt else {
            return Err(invalid(format!(
                "crdt: database '{}' is not marked as an instance of CRDB {}",
                bdb.name, self.guid
            )));
        };
        let mismatch = [
            ("crdt_guid", crdt.crdt_guid != self.guid),
            (
                "crdt_replica_id",
                crdt.crdt_replica_id != self.local_instance_id,
            ),
            (
                "crdt_featureset_version",
                crdt.crdt_featureset_version != self.featureset_version,
            ),
            ("name", bdb.name != self.name),
            ("shards_count", bdb.shards_count != self.shards_count),
        ];
        if let Some((field, _)) = mismatch.iter().find(|(_, differs)| *differs) {
            return Err(invalid(format!(
                "{field}: the local database must have the CRDB's (GUID {}, instance {}, feature set {}, name '{}', {} shards); it has {}",
                self.guid,
                self.local_instance_id,
                self.featureset_version,
                self.name,
                self.shards_count,
                describe_local(bdb, crdt)
            )));
        }
        Ok(())
    }
}

impl CrdbInstance {
    /// Refuses an instance without a usable id or cluster.
    fn check(&self) -> Result<(), ModelError> {
        if self.id == 0 {
            return Err(invalid(
                "instances: instance ids start at 1 (0 is not an instance id)",
            ));
        }
        if self.cluster.name.is_empty() {
            return Err(invalid(format!(
                "instances: instance {} has no cluster name",
                self.id
            )));
        }
        if self.cluster.urls.is_empty() {
            return Err(invalid(format!(
                "instances: instance {} (cluster '{}') has no URL to reach its cluster's REST API",
                self.id, self.cluster.name
            )));
        }
        Ok(())
    }
}

/// What the local database says it is, for [`Crdb::check_local_bdb`]'s message.
fn describe_local(bdb: &BdbSpec, crdt: &BdbCrdt) -> String {
    format!(
        "GUID {}, instance {}, feature set {}, name '{}', {} shards",
        crdt.crdt_guid,
        crdt.crdt_replica_id,
        crdt.crdt_featureset_version,
        bdb.name,
        bdb.shards_count
    )
}

fn invalid(message: impl Into<String>) -> ModelError {
    ModelError::InvalidValue(message.into())
}

/// Refuses text that is not a GUID written as Redis Software writes one: 32 hex digits in
/// groups of 8-4-4-4-12 (`2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a`).
pub fn check_guid(guid: &str) -> Result<(), ModelError> {
    let groups: Vec<&str> = guid.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = groups
        .iter()
        .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    if lengths == [8, 4, 4, 4, 12] && hex {
        return Ok(());
    }
    Err(invalid(format!(
        "guid: '{guid}' is not a GUID (32 hex digits as 8-4-4-4-12, e.g. 2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a)"
    )))
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A GUID for tests.
    pub(crate) const GUID: &str = "2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a";

    /// Instance `id` on cluster `cN`.
    pub(crate) fn instance(id: CrdtReplicaId) -> CrdbInstance {
        CrdbInstance {
            id,
            cluster: CrdbCluster {
                name: format!("c{id}"),
                urls: vec![format!("https://127.0.{id}.11:9443")],
                ca_cert: "-----BEGIN CERTIFICATE-----".into(),
                username: "admin".into(),
                password: "pw".into(),
            },
        }
    }

    /// A two-instance CRDB `cache` seen from instance `local`.
    pub(crate) fn crdb(local: CrdtReplicaId) -> Crdb {
        Crdb {
            guid: GUID.into(),
            name: "cache".into(),
            instances: vec![instance(1), instance(2)],
            local_instance_id: local,
            local_bdb_uid: 0,
            featureset_version: 1,
            shards_count: 1,
            ghost_instance_ids: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn a_guid_is_32_hex_digits_in_five_groups() {
        assert!(check_guid(GUID).is_ok());
        assert!(check_guid(&GUID.to_uppercase()).is_ok());
        for bad in [
            "",
            "cache",
            "2f0a4c1e6b7d4e599a430c8d1f2e3b4a",
            "2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4",
            "2f0a4c1g-6b7d-4e59-9a43-0c8d1f2e3b4a",
        ] {
            let error = check_guid(bad).unwrap_err().to_string();
            assert!(error.starts_with("guid: "), "{error}");
        }
    }

    /// A change that spoils a valid sample.
    type Spoil = fn(&mut Crdb);

    #[test]
    fn each_bad_crdb_is_refused_naming_its_field() {
        assert_eq!(crdb(1).check(), Ok(()));
        let cases: Vec<(&str, Spoil)> = vec![
            ("guid:", |c| c.guid = "x".into()),
            ("name:", |c| c.name.clear()),
            ("shards_count:", |c| c.shards_count = 0),
            ("shards_count:", |c| c.shards_count = 65),
            ("instances: a CRDB", |c| c.instances.clear()),
            ("instances: id 1 is given", |c| c.instances[1].id = 1),
            (
                "instances: instances 1 and 2 are both on cluster 'c1'",
                |c| c.instances[1].cluster.name = "c1".into(),
            ),
            ("instances: instance ids", |c| c.instances[0].id = 0),
            ("instances: instance 2 has no cluster name", |c| {
                c.instances[1].cluster.name.clear()
            }),
            ("instances: instance 2 (cluster 'c2') has no URL", |c| {
                c.instances[1].cluster.urls.clear()
            }),
            (
                "local_instance_id: 3 is not among the instances' ids (1, 2)",
                |c| c.local_instance_id = 3,
            ),
            ("instances: id 2 belongs to a removed instance", |c| {
                c.ghost_instance_ids = vec![2]
            }),
        ];
        for (expected, change) in cases {
            let mut bad = crdb(1);
            change(&mut bad);
            let error = bad.check().unwrap_err().to_string();
            assert!(error.starts_with(expected), "{expected}: {error}");
        }
    }

    #[test]
    fn a_crdb_keeps_its_json() {
        let sample = r#"{"guid":"2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a","name":"cache","instances":[{"id":1,"cluster":{"name":"c1","urls":["https://127.0.1.11:9443"],"ca_cert":"-----BEGIN CERTIFICATE-----","username":"admin","password":"pw"}},{"id":2,"cluster":{"name":"c2","urls":["https://127.0.2.11:9443"],"ca_cert":"-----BEGIN CERTIFICATE-----","username":"admin","password":"pw"}}],"local_instance_id":1,"local_bdb_uid":0,"featureset_version":1,"shards_count":1,"ghost_instance_ids":[]}"#;
        let decoded: Crdb = serde_json::from_str(sample).unwrap();
        assert_eq!(decoded, crdb(1));
        assert_eq!(serde_json::to_string(&decoded).unwrap(), sample);
    }
}
