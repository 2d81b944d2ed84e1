//! Active-Active databases (CRDBs) as a cluster's store keeps them.
//!
//! A CRDB is one database with an instance on each of two or more clusters (Redis Software's
//! model, `../shared/reference/active-active.md`). Each participating cluster keeps the whole
//! [`Crdb`] (its instances and how to reach their clusters), and its local instance is an
//! ordinary database whose [`BdbSpec::crdt`](crate::BdbSpec::crdt) says it is one: the proxy
//! then turns client writes into CRDT operations ([`flotilla-crdt`]) and the syncer pulls every
//! peer instance's operations. Field names follow Redis Software's `crdb` and `bdb` objects.

use serde::{Deserialize, Serialize};

use crate::bdb::BdbUid;

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
}
