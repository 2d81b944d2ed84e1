//! `/v1/crdbs`: Active-Active databases (CRDBs) as this cluster takes part in them.
//!
//! `POST /v1/crdbs/local` is what a coordinating cluster sends each participating cluster to make
//! that cluster's instance (the whole CRDB, which instance it is, the database settings); the
//! store creates the local database and the CRDB record in one command
//! ([`Command::CreateCrdb`]). `DELETE /v1/crdbs/{guid}/local` takes this cluster's instance away
//! (how a coordinator undoes a half-made CRDB). `GET /v1/crdbs[/{guid}]` shows them in Redis
//! Software's `crdb` shape, never with a password.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use flotilla_model::rest::{
    BdbCreate, CrdbClusterInfo, CrdbCredentialsInfo, CrdbDbConfig, CrdbInfo, CrdbInstanceInfo,
    CrdbLocalCreate, CrdbLocalDatabase, CrdbLocalUpdate,
};
use flotilla_model::{
    check_guid, now_secs, BdbCrdt, ClusterState, Command, CommandResult, Crdb, CrdbChange,
    CrdbCreation, CrdbDeletion,
};

use crate::bdbs::{place_shards, spec_from};
use crate::handlers::parse;
use crate::propose::{propose, Change};
use crate::{ApiContext, ApiError};

/// Set in a daemon's environment, the CRDB protocol version its software claims as its newest
/// instead of [`flotilla_crdt::CRDT_PROTOCOL_VERSION`]: how tests run a cluster "of a newer
/// release" beside one of this release (mixed protocol versions) with one binary.
pub(crate) const CRDT_PROTOCOL_ENV: &str = "FLOTILLA_TEST_CRDT_PROTOCOL_VERSION";

/// The newest CRDB protocol this node's software speaks: a new instance starts on it, and an
/// upgraded instance moves to it (unless `--keep-crdt-protocol-version`).
pub(crate) fn newest_protocol() -> u16 {
    static NEWEST: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *NEWEST.get_or_init(|| {
        std::env::var(CRDT_PROTOCOL_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(flotilla_crdt::CRDT_PROTOCOL_VERSION)
    })
}

/// The protocol versions this node's software speaks, oldest first.
pub(crate) fn supported_protocols() -> Vec<u16> {
    (flotilla_crdt::op::CRDT_PROTOCOL_MIN..=newest_protocol()).collect()
}

/// The newest CRDB feature set this node's software knows.
pub(crate) const CRDT_FEATURESET_VERSION: u16 = flotilla_crdt::op::CRDT_FEATURESET_VERSION;

/// A version asked for `field`, refused above what this software knows (`newest`).
fn supported_version(field: &str, asked: Option<u16>, newest: u16) -> Result<u16, ApiError> {
    match asked {
        None => Ok(newest),
        Some(0) => Err(ApiError::invalid(field, "versions start at 1")),
        Some(version) if version > newest => Err(ApiError::invalid(
            field,
            format!(
                "{version} is newer than this cluster's software knows ({newest}); upgrade this cluster first"
            ),
        )),
        Some(version) => Ok(version),
    }
}

/// The CRDB and the local database a creation request asks for, each field checked.
fn creation_from(
    request: CrdbLocalCreate,
    addr: std::net::IpAddr,
) -> Result<CrdbCreation, ApiError> {
    check_guid(&request.guid).map_err(|e| ApiError::invalid("guid", strip(&e, "guid")))?;
    let featureset_version = supported_version(
        "featureset_version",
        request.featureset_version,
        CRDT_FEATURESET_VERSION,
    )?;
    let protocol_version = supported_version(
        "protocol_version",
        request.protocol_version,
        newest_protocol(),
    )?;
    let config = request.default_db_config;
    let crdb = Crdb {
        guid: request.guid,
        name: request.name,
        instances: request.instances,
        local_instance_id: request.local_instance_id,
        local_bdb_uid: 0,
        featureset_version,
        shards_count: config.shards_count,
        ghost_instance_ids: vec![],
    };
    crdb.check().map_err(invalid_value)?;
    let mut bdb = spec_from(bdb_request(&crdb.name, config), addr)?;
    bdb.crdt = Some(BdbCrdt {
        crdt_guid: crdb.guid.clone(),
        crdt_replica_id: crdb.local_instance_id,
        crdt_protocol_version: protocol_version,
        crdt_featureset_version: featureset_version,
    });
    Ok(CrdbCreation {
        crdb,
        bdb,
        created_at: now_secs(),
        shards: vec![],
    })
}

/// `db create`'s request for a CRDB's database settings (checked the same way).
fn bdb_request(name: &str, config: CrdbDbConfig) -> BdbCreate {
    BdbCreate {
        name: name.to_string(),
        port: config.port,
        memory_size: config.memory_size,
        shards_count: config.shards_count,
        replication: config.replication,
        data_persistence: config.data_persistence,
        redis_version: config.redis_version,
        authentication_redis_pass: config.authentication_redis_pass,
        max_connections: None,
        client_query_buffer_limit: None,
        client_output_buffer_limit: None,
        client_output_timeout: None,
        client_timeout: None,
        tls_mode: None,
    }
}

/// The CRDB `guid` as this cluster keeps it, or a 404 naming it.
pub(crate) fn known_crdb(context: &ApiContext, guid: &str) -> Result<Crdb, ApiError> {
    let state = context.store.state();
    Ok(state.crdb(guid).map_err(invalid_value)?.clone())
}

/// A model refusal as a 400 whose description starts with the field the model named.
fn invalid_value(e: flotilla_model::ModelError) -> ApiError {
    ApiError::from(flotilla_store::StoreError::Refused(e))
}

/// `e`'s message without its leading `field: `.
fn strip(e: &flotilla_model::ModelError, field: &str) -> String {
    let text = e.to_string();
    text.strip_prefix(&format!("{field}: "))
        .map(str::to_owned)
        .unwrap_or(text)
}

/// `POST /v1/crdbs/local`: validates, places the local database's shards as `db create` does,
/// proposes `CreateCrdb`, answers the CRDB as `GET /v1/crdbs/{guid}` shows it.
pub(crate) async fn create_local(
    State(context): State<ApiContext>,
    body: Bytes,
) -> Result<Json<CrdbInfo>, ApiError> {
    let request: CrdbLocalCreate = parse("crdb", &body)?;
    let mut creation = creation_from(request, context.store.config().addr)?;
    let observed = context.observer.observed().await;
    let state = context.store.state();
    // Refused before anything else while some node could not apply it (cluster version).
    state
        .check_proposable(&Command::CreateCrdb(creation.clone()))
        .map_err(invalid_value)?;
    if state.keeps_hashed_passwords() {
        creation.bdb.hash_password();
    }
    creation.shards = place_shards(&state, &observed, &creation.bdb)?;
    state
        .check_new_crdb(&creation)
        .map_err(flotilla_store::StoreError::from)?;
    let guid = creation.crdb.guid.clone();
    let asked = creation.bdb.clone();
    let change = Change {
        command: Command::CreateCrdb(creation),
        // A CRDB of this GUID did not exist before (checked above): it is this one.
        applied: |state: &ClusterState| {
            let crdb = state.crdbs.get(&guid)?;
            let bdb = state.bdbs.get(&crdb.local_bdb_uid)?;
            (bdb.spec == asked).then_some(CommandResult::BdbCreated { uid: bdb.uid })
        },
        check: format!("flotilla crdb show --crdb-guid {guid}"),
    };
    propose(&context, change).await?;
    context
        .store
        .wait_until(crate::actions::APPLY_WAIT, |s| s.crdbs.contains_key(&guid))
        .await;
    get_crdb(&context.store.state(), &guid).map(Json)
}

/// `DELETE /v1/crdbs/{guid}/local`: deletes this cluster's instance (the CRDB record, the local
/// database and its shards); the other clusters' instances stay.
pub(crate) async fn delete_local(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let uid = delete_here(&context, &guid).await?;
    Ok(Json(
        serde_json::json!({ "guid": guid, "bdb_uid": uid, "status": "deleted" }),
    ))
}

/// Deletes this cluster's instance of `guid`; answers its database's uid.
pub(crate) async fn delete_here(context: &ApiContext, guid: &str) -> Result<u64, ApiError> {
    let state = context.store.state();
    let uid = state.crdb(guid).map_err(invalid_value)?.local_bdb_uid;
    let change = Change {
        command: Command::DeleteCrdb(CrdbDeletion {
            guid: guid.to_string(),
        }),
        applied: |state: &ClusterState| {
            (!state.crdbs.contains_key(guid)).then_some(CommandResult::Ok)
        },
        check: "flotilla crdb list".into(),
    };
    propose(context, change).await?;
    Ok(uid)
}

/// `GET /v1/crdbs`.
pub(crate) async fn list(State(context): State<ApiContext>) -> Json<Vec<CrdbInfo>> {
    let state = context.store.state();
    Json(
        state
            .crdbs
            .values()
            .map(|crdb| crdb_info(&state, crdb))
            .collect(),
    )
}

/// `GET /v1/crdbs/{guid}`.
pub(crate) async fn get(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
) -> Result<Json<CrdbInfo>, ApiError> {
    get_crdb(&context.store.state(), &guid).map(Json)
}

pub(crate) fn get_crdb(state: &ClusterState, guid: &str) -> Result<CrdbInfo, ApiError> {
    let crdb = state.crdb(guid).map_err(invalid_value)?;
    Ok(crdb_info(state, crdb))
}

/// A CRDB in Redis Software's shape: versions and database settings from the local database.
fn crdb_info(state: &ClusterState, crdb: &Crdb) -> CrdbInfo {
    let bdb = state.bdbs.get(&crdb.local_bdb_uid);
    let spec = bdb.map(|b| &b.spec);
    let protocol_version = spec
        .and_then(|s| s.crdt.as_ref())
        .map(|c| c.crdt_protocol_version)
        .unwrap_or_default();
    let default_db_config = CrdbDbConfig {
        port: spec.map(|s| s.port).unwrap_or_default(),
        memory_size: spec.map(|s| s.memory_size).unwrap_or_default(),
        shards_count: crdb.shards_count,
        replication: spec.is_some_and(|s| s.replication),
        data_persistence: spec.map(|s| s.data_persistence).unwrap_or_default(),
        redis_version: spec.map(|s| s.redis_version.to_string()),
        authentication_redis_pass: None,
    };
    let instances = crdb
        .instances
        .iter()
        .map(|instance| CrdbInstanceInfo {
            id: instance.id,
            db_uid: (instance.id == crdb.local_instance_id).then_some(crdb.local_bdb_uid),
            cluster: CrdbClusterInfo {
                name: instance.cluster.name.clone(),
                url: instance.cluster.urls.first().cloned().unwrap_or_default(),
                urls: instance.cluster.urls.clone(),
                credentials: CrdbCredentialsInfo {
                    username: instance.cluster.username.clone(),
                },
            },
        })
        .collect();
    CrdbInfo {
        guid: crdb.guid.clone(),
        name: crdb.name.clone(),
        protocol_version,
        featureset_version: crdb.featureset_version,
        default_db_config,
        instances,
        local_instance_id: crdb.local_instance_id,
        local_databases: vec![CrdbLocalDatabase {
            bdb_uid: crdb.local_bdb_uid,
            id: crdb.local_instance_id,
        }],
        ghost_instance_ids: crdb.ghost_instance_ids.clone(),
    }
}

/// `PATCH /v1/crdbs/{guid}/local`: changes this cluster's instance (feature set, the local
/// protocol version, instances, removed instances); answers the CRDB as it is then.
pub(crate) async fn update_local(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
    body: Bytes,
) -> Result<Json<CrdbInfo>, ApiError> {
    let update: CrdbLocalUpdate = parse("crdb", &body)?;
    if update == CrdbLocalUpdate::default() {
        return Err(ApiError::invalid(
            "crdb",
            "no change given: pass featureset_version, protocol_version, instances or ghost_instance_ids",
        ));
    }
    if let Some(asked) = update.featureset_version {
        supported_version("featureset_version", Some(asked), CRDT_FEATURESET_VERSION)?;
    }
    if let Some(asked) = update.protocol_version {
        supported_version("protocol_version", Some(asked), newest_protocol())?;
    }
    context.store.state().crdb(&guid).map_err(invalid_value)?;
    let change = CrdbChange {
        guid: guid.clone(),
        instances: update.instances.clone(),
        ghost_instance_ids: update.ghost_instance_ids.clone(),
        featureset_version: update.featureset_version,
        crdt_protocol_version: update.protocol_version,
    };
    propose_crdb_change(&context, change).await?;
    get_crdb(&context.store.state(), &guid).map(Json)
}

/// Proposes `change`; answers once this node's state shows it.
pub(crate) async fn propose_crdb_change(
    context: &ApiContext,
    change: CrdbChange,
) -> Result<(), ApiError> {
    let wanted = change.clone();
    let guid = change.guid.clone();
    let shown = move |state: &ClusterState| {
        let crdb = state.crdbs.get(&wanted.guid)?;
        let crdt = state.bdbs.get(&crdb.local_bdb_uid)?.spec.crdt.as_ref()?;
        let featureset = wanted
            .featureset_version
            .is_none_or(|v| crdb.featureset_version == v);
        let protocol = wanted
            .crdt_protocol_version
            .is_none_or(|v| crdt.crdt_protocol_version == v);
        let instances = wanted
            .instances
            .as_ref()
            .is_none_or(|i| crdb.instances == *i);
        let ghosts = wanted
            .ghost_instance_ids
            .iter()
            .all(|id| crdb.ghost_instance_ids.contains(id));
        (featureset && protocol && instances && ghosts).then_some(CommandResult::Ok)
    };
    let change = Change {
        command: Command::UpdateCrdb(change),
        applied: shown,
        check: format!("flotilla crdb show --crdb-guid {guid}"),
    };
    propose(context, change).await?;
    Ok(())
}

/// `PUT /v1/crdbs/{guid}/flush/local`: `FLUSHALL` on every primary shard of this cluster's
/// instance (its replicas follow); the client-facing FLUSHALL is refused on an instance, this
/// is how `crdb flush` empties each one.
pub(crate) async fn flush_local(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let shards = flush_here(&context, &guid).await?;
    Ok(Json(
        serde_json::json!({ "guid": guid, "flushed_shards": shards, "status": "flushed" }),
    ))
}

/// Flushes every primary shard of this cluster's instance of `guid`; answers how many.
pub(crate) async fn flush_here(context: &ApiContext, guid: &str) -> Result<usize, ApiError> {
    let state = context.store.state();
    let uid = state.crdb(guid).map_err(invalid_value)?.local_bdb_uid;
    let credentials = state
        .engine_credentials()
        .map_err(flotilla_store::StoreError::from)?;
    let login = flotilla_engine::EngineLogin::cluster_admin(&credentials);
    let primaries = state.primaries_of(uid);
    for shard in &primaries {
        let unreachable = |e: String| {
            ApiError {
            status: axum::http::StatusCode::BAD_GATEWAY,
            error_code: "shard_unreachable",
            description: format!(
                "shard {} of CRDB {guid}'s database: {e}; nothing after it was flushed, run `crdb flush` again",
                shard.uid
            ),
        }
        };
        let addr = state
            .shard_addr(shard)
            .map_err(|e| unreachable(e.to_string()))?;
        let client = flotilla_engine::EngineClient::connect(addr.ip(), addr.port(), &login)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        client
            .command::<()>(&redis::cmd("FLUSHALL"))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
    }
    Ok(primaries.len())
}
