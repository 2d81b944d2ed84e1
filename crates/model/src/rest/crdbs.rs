//! The REST objects of Active-Active databases (`/v1/crdbs...`), in Redis Software's field
//! names (its `crdb` object): what the coordinator sends each cluster and what every cluster
//! shows. Passwords go in, never out.

use serde::{Deserialize, Serialize};

use crate::crdb::{CrdbInstance, CrdtReplicaId};

/// The database settings every instance of a CRDB gets (Redis Software's `default_db_config`).
/// The same type is read at creation and shown by `GET /v1/crdbs`, without the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrdbDbConfig {
    /// Endpoint port, 10000-19999, free on every node of every participating cluster.
    pub port: u16,
    /// Memory limit in bytes of each instance.
    pub memory_size: u64,
    /// Primary shards of each instance, 1-64; the same everywhere (local shard `i` pulls peer
    /// shard `i`).
    #[serde(default = "one")]
    pub shards_count: u16,
    /// A replica for every primary shard, on another node of the same cluster.
    #[serde(default)]
    pub replication: bool,
    /// `disabled`, `aof` or `snapshot`.
    #[serde(default)]
    pub data_persistence: crate::DataPersistence,
    /// Engine version, e.g. `valkey-9.1` (default: the cluster's newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_version: Option<String>,
    /// Password clients AUTH with on every instance; accepted at creation, never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_redis_pass: Option<String>,
}

fn one() -> u16 {
    1
}

/// `POST /v1/crdbs/local`: make this cluster's instance of a CRDB, as the coordinator asks each
/// participating cluster (the CRDB whole, which instance this cluster is, the database settings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrdbLocalCreate {
    /// The CRDB's GUID (8-4-4-4-12 hex digits), the same on every cluster.
    pub guid: String,
    /// Its name: the local database's name on every cluster.
    pub name: String,
    /// Every instance, this cluster's included, with how to reach its cluster.
    pub instances: Vec<CrdbInstance>,
    /// Which of the instances this cluster is.
    pub local_instance_id: CrdtReplicaId,
    /// The CRDB's feature set version (default: the newest this cluster's software knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub featureset_version: Option<u16>,
    /// The protocol version the local instance starts with (default: the newest this
    /// cluster's software speaks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u16>,
    /// The database settings.
    pub default_db_config: CrdbDbConfig,
}

/// How to reach an instance's cluster, as shown (no password, no CA certificate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbClusterInfo {
    /// The cluster's name.
    pub name: String,
    /// Its first REST URL (Redis Software's field).
    pub url: String,
    /// Every node's REST URL.
    pub urls: Vec<String>,
    /// The operator user the peers use on it (its password is never shown).
    pub credentials: CrdbCredentialsInfo,
}

/// [`CrdbClusterInfo::credentials`]: the user name only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbCredentialsInfo {
    /// The user.
    pub username: String,
}

/// One instance of a CRDB, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbInstanceInfo {
    /// Its id (`REPL-ID`).
    pub id: CrdtReplicaId,
    /// Its database's uid on its cluster: known for this cluster's instance only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_uid: Option<u64>,
    /// Its cluster.
    pub cluster: CrdbClusterInfo,
}

/// One of [`CrdbInfo::local_databases`]: this cluster's database that is an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbLocalDatabase {
    /// The database's uid.
    pub bdb_uid: u64,
    /// The instance id it is.
    pub id: CrdtReplicaId,
}

/// `GET /v1/crdbs`, `GET /v1/crdbs/{guid}`: a CRDB as this cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbInfo {
    /// Its GUID.
    pub guid: String,
    /// Its name.
    pub name: String,
    /// The protocol version of this cluster's instance (`crdt_protocol_version`).
    pub protocol_version: u16,
    /// The CRDB's feature set version.
    pub featureset_version: u16,
    /// The database settings of every instance (this cluster's database as it is).
    pub default_db_config: CrdbDbConfig,
    /// Every current instance.
    pub instances: Vec<CrdbInstanceInfo>,
    /// This cluster's instance id.
    pub local_instance_id: CrdtReplicaId,
    /// This cluster's database that is its instance.
    pub local_databases: Vec<CrdbLocalDatabase>,
    /// Removed instances (`crdt_ghost_replica_ids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ghost_instance_ids: Vec<CrdtReplicaId>,
}

/// `POST /v1/crdbs`: a new CRDB across clusters, sent to the cluster that coordinates it (the
/// first instance's): it makes the GUID, numbers the instances 1..n in the order given, reads
/// each cluster's name, CA certificate and node URLs, then asks each to make its instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrdbCreateRequest {
    /// The CRDB's name (its database's name on every cluster).
    pub name: String,
    /// The database settings of every instance.
    pub default_db_config: CrdbDbConfig,
    /// One participating cluster each, in instance-id order.
    pub instances: Vec<CrdbInstanceRequest>,
}

/// One cluster of [`CrdbCreateRequest::instances`]: how the coordinator (and later every peer's
/// syncer) reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrdbInstanceRequest {
    /// The REST URL of one of its nodes (`https://ADDR:9443`, or `http://ADDR:8080`).
    pub url: String,
    /// An operator user of that cluster.
    pub username: String,
    /// Its password (kept by every participating cluster's store, never shown).
    pub password: String,
}

/// Where a CRDB task is (Redis Software's `crdb_task` statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrdbTaskStatus {
    /// Accepted, not started.
    Queued,
    /// Running.
    Started,
    /// Done.
    Finished,
    /// Stopped on an error (see `errors`); what it made was undone unless an error says what
    /// is left.
    Failed,
}

/// One error of a CRDB task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbTaskError {
    /// The cluster it concerns (empty when none).
    #[serde(default)]
    pub cluster_name: String,
    /// A stable code (`invalid_schema`, `port_in_use`, `cluster_unreachable`, `left_behind`...).
    pub error_code: String,
    /// What went wrong, naming the object and the fix.
    pub description: String,
}

/// `GET /v1/crdb_tasks/{id}`: a change to a CRDB across its clusters, as Redis Software's
/// `crdb_task` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrdbTask {
    /// The task's id.
    pub id: String,
    /// The CRDB it changes (empty until the GUID is made).
    pub crdb_guid: String,
    /// `create`, `delete`...
    pub operation: String,
    /// Where it is.
    pub status: CrdbTaskStatus,
    /// What went wrong.
    #[serde(default)]
    pub errors: Vec<CrdbTaskError>,
    /// Share of its steps done, 0.0-1.0.
    pub progress: f64,
    /// The step it is at, in words (`create instance 2 on cluster c2`).
    #[serde(default)]
    pub step: String,
}

impl CrdbTask {
    /// Whether it stopped (finished or failed).
    pub fn is_done(&self) -> bool {
        matches!(
            self.status,
            CrdbTaskStatus::Finished | CrdbTaskStatus::Failed
        )
    }
}

/// `PATCH /v1/crdbs/{guid}/local`: what changes on this cluster's instance (what a coordinator
/// sends each cluster for `crdb update`, an added or removed instance, and what `db upgrade`
/// does to the local protocol version); omitted fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrdbLocalUpdate {
    /// The CRDB's new feature set version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub featureset_version: Option<u16>,
    /// The local instance's new protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u16>,
    /// Every instance from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<CrdbInstance>>,
    /// Removed instance ids to record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ghost_instance_ids: Vec<CrdtReplicaId>,
}

/// `PATCH /v1/crdbs/{guid}`: a change to every instance (`crdb update`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrdbUpdateRequest {
    /// `true`: move every instance to the newest feature set every cluster knows, refused
    /// (naming the laggard) until every instance runs the newest protocol.
    #[serde(default)]
    pub featureset_version: bool,
}

/// `POST /v1/crdbs/{guid}/updates`: instances added or removed (Redis Software's
/// `modify_request`), refused while the instances run different protocol versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrdbUpdates {
    /// Clusters that get a new instance (ids after every id used so far).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_instances: Vec<CrdbInstanceRequest>,
    /// Instance ids to remove (their database is deleted on their cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_instances: Vec<CrdtReplicaId>,
    /// Remove without reaching the removed instances (they keep their data until `crdb
    /// purge-instance` on their cluster).
    #[serde(default)]
    pub force_remove: bool,
}

/// One instance in a [`CrdbHealthReport`]: what its cluster answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbInstanceHealth {
    /// The instance's id.
    pub id: CrdtReplicaId,
    /// Its cluster's name.
    pub cluster_name: String,
    /// `ok` when its cluster answered with its instance, else `unreachable` or `missing`.
    pub status: String,
    /// Its protocol version (0 when unknown).
    pub protocol_version: u16,
    /// The feature set version its cluster records (0 when unknown).
    pub featureset_version: u16,
    /// The instance ids its cluster lists (a differing list: an add or remove not applied
    /// everywhere).
    pub instances: Vec<CrdtReplicaId>,
    /// What went wrong reaching it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// `GET /v1/crdbs/{guid}/health_report`: every instance's configuration as its cluster
/// answers it, from this cluster (Redis Software's `crdb health-report`, per cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdbHealthReport {
    /// The CRDB.
    pub crdb_guid: String,
    /// Whether every instance answered with the same instances, feature set and protocol.
    pub consistent: bool,
    /// Each instance.
    pub configurations: Vec<CrdbInstanceHealth>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a coordinator sends each cluster (`POST /v1/crdbs/local`) and what `GET
    /// /v1/crdbs/{guid}` answers: pinned, since clusters of different builds exchange them.
    #[test]
    fn the_crdb_rest_objects_keep_their_json() {
        let create = r#"{"guid":"2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a","name":"cache","instances":[{"id":1,"cluster":{"name":"a","urls":["https://10.0.0.1:9443"],"ca_cert":"PEM","username":"admin","password":"pw"}}],"local_instance_id":1,"featureset_version":1,"protocol_version":1,"default_db_config":{"port":12000,"memory_size":104857600,"shards_count":2,"replication":true,"data_persistence":"disabled"}}"#;
        let decoded: CrdbLocalCreate = serde_json::from_str(create).unwrap();
        assert_eq!(serde_json::to_string(&decoded).unwrap(), create);
        let info = r#"{"guid":"2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a","name":"cache","protocol_version":1,"featureset_version":1,"default_db_config":{"port":12000,"memory_size":104857600,"shards_count":2,"replication":true,"data_persistence":"disabled","redis_version":"valkey-9.1"},"instances":[{"id":1,"db_uid":3,"cluster":{"name":"a","url":"https://10.0.0.1:9443","urls":["https://10.0.0.1:9443"],"credentials":{"username":"admin"}}},{"id":2,"cluster":{"name":"b","url":"https://10.0.1.1:9443","urls":["https://10.0.1.1:9443"],"credentials":{"username":"admin"}}}],"local_instance_id":1,"local_databases":[{"bdb_uid":3,"id":1}]}"#;
        let decoded: CrdbInfo = serde_json::from_str(info).unwrap();
        assert_eq!(serde_json::to_string(&decoded).unwrap(), info);
        let task = r#"{"id":"4","crdb_guid":"2f0a4c1e-6b7d-4e59-9a43-0c8d1f2e3b4a","operation":"create","status":"failed","errors":[{"cluster_name":"b","error_code":"port_in_use","description":"port: 12000 is already in use"}],"progress":0.6,"step":"create instance 2 on cluster b"}"#;
        let decoded: CrdbTask = serde_json::from_str(task).unwrap();
        assert!(decoded.is_done());
        assert_eq!(serde_json::to_string(&decoded).unwrap(), task);
    }
}
