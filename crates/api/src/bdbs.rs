//! `/v1/bdbs` and `/v1/shards`: databases and their shards.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_model::rest::{
    BdbCreate, BdbInfo, BdbUpdate, EndpointInfo, NodeStatus, ReplicaLink, ShardInfo,
};
use flotilla_model::{
    now_secs, Bdb, BdbChange, BdbCreation, BdbDeletion, BdbSpec, BdbUid, ClusterState, Command,
    CommandResult, EngineVersion, ShardPlan, ShardRole, ENDPOINT_PORTS, MAX_SHARDS,
};
use flotilla_orchestrator::switchover::{self, SwitchoverError, SwitchoverReport};
use flotilla_orchestrator::{placement, Observed};

use crate::handlers::parse;
use crate::propose::{propose, Change};
use crate::{ApiContext, ApiError};

/// The engine a database gets when `redis_version` is omitted: the newest one bundled.
pub(crate) const DEFAULT_ENGINE: EngineVersion = EngineVersion::Valkey91;

/// Refuses a database name that is not 1-63 letters, digits or hyphens (`db create`, `crdb create`).
pub(crate) fn validate_db_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-');
    if ok {
        return Ok(());
    }
    Err(ApiError::invalid(
        "name",
        format!("'{name}' must be 1-63 letters, digits or hyphens, not starting with a hyphen"),
    ))
}

fn validate_port(port: u16, addr: IpAddr) -> Result<(), ApiError> {
    if !ENDPOINT_PORTS.contains(&port) {
        return Err(ApiError::invalid(
            "port",
            format!("{port} is outside the database port range 10000-19999"),
        ));
    }
    // Another process holding the port on this node would keep the endpoint from serving here.
    if std::net::TcpListener::bind((addr, port)).is_err() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            error_code: "port_in_use",
            description: format!(
                "port: {port} is already in use on {addr} by another process; choose another port"
            ),
        });
    }
    Ok(())
}

/// The database an operator asked for, each field checked (name, port free on this node,
/// memory, shards, engine, limits); shared by `POST /v1/bdbs` and a CRDB instance's creation.
pub(crate) fn spec_from(request: BdbCreate, addr: IpAddr) -> Result<BdbSpec, ApiError> {
    validate_db_name(&request.name)?;
    validate_port(request.port, addr)?;
    if request.memory_size == 0 {
        return Err(ApiError::invalid(
            "memory_size",
            "must be more than 0 bytes, e.g. 104857600 for 100 MB",
        ));
    }
    if request.shards_count == 0 || request.shards_count > MAX_SHARDS {
        return Err(ApiError::invalid(
            "shards_count",
            format!("{} is outside 1-{MAX_SHARDS}", request.shards_count),
        ));
    }
    let asked_limits = request.limits();
    let redis_version = match request.redis_version {
        Some(text) => text
            .parse()
            .map_err(|e| ApiError::invalid("redis_version", e))?,
        None => DEFAULT_ENGINE,
    };
    let authentication_redis_pass = request.authentication_redis_pass.filter(|p| !p.is_empty());
    let mut limits = flotilla_model::ClientLimits::default();
    limits.apply(&asked_limits);
    limits
        .check()
        .map_err(|e| ApiError::invalid("client_query_buffer_limit", e))?;
    Ok(BdbSpec {
        name: request.name,
        port: request.port,
        memory_size: request.memory_size,
        shards_count: request.shards_count,
        replication: request.replication,
        data_persistence: request.data_persistence,
        redis_version,
        authentication_redis_pass,
        authentication_redis_pass_sha256: None,
        limits,
        tls_mode: request.tls_mode.unwrap_or_default(),
        config: Default::default(),
        crdt: None,
    })
}

fn shard_status(observed: &Observed, uid: u64, role: ShardRole, node_uid: u64) -> &'static str {
    match observed.shards.get(&uid) {
        // A replica is active once its link to the primary is up: until then it holds no copy
        // of the data, and a failover could not promote it.
        Some(report) if report.serves_in(role, ReplicaLink::Required) => "active",
        Some(report) if report.serves_in(role, ReplicaLink::NotRequired) => "syncing",
        Some(_) => "down",
        None if observed.nodes.get(&node_uid) == Some(&NodeStatus::Down) => "down",
        None => "unknown",
    }
}

fn bdb_info(state: &ClusterState, observed: &Observed, bdb: &Bdb) -> BdbInfo {
    let shards: Vec<_> = state.shards_of(bdb.uid).collect();
    let active = shards
        .iter()
        .all(|s| shard_status(observed, s.uid, s.role, s.node_uid) == "active");
    BdbInfo {
        uid: bdb.uid,
        name: bdb.spec.name.clone(),
        port: bdb.spec.port,
        memory_size: bdb.spec.memory_size,
        shards_count: bdb.spec.shards_count,
        replication: bdb.spec.replication,
        data_persistence: bdb.spec.data_persistence,
        redis_version: bdb.spec.redis_version.to_string(),
        status: if active { "active" } else { "pending" }.into(),
        password_protected: bdb.spec.has_password(),
        password_storage: password_storage(&bdb.spec).map(str::to_owned),
        limits: bdb.spec.limits,
        tls_mode: bdb.spec.tls_mode,
        config: bdb.spec.config.clone(),
        endpoints: vec![EndpointInfo {
            addr: state.nodes.values().map(|n| n.addr.to_string()).collect(),
            port: bdb.spec.port,
        }],
        shard_list: shards.iter().map(|s| s.uid).collect(),
        crdt: bdb.spec.crdt.clone(),
    }
}

/// How the store keeps a database's password, as [`BdbInfo::password_storage`] says it.
fn password_storage(spec: &BdbSpec) -> Option<&'static str> {
    if spec.authentication_redis_pass_sha256.is_some() {
        Some("sha256")
    } else if spec.authentication_redis_pass.is_some() {
        Some("plaintext")
    } else {
        None
    }
}

fn parse_uid(text: &str) -> Result<BdbUid, ApiError> {
    text.parse().map_err(|_| {
        ApiError::invalid(
            "uid",
            format!("'{text}' is not a database uid (a positive integer)"),
        )
    })
}

fn find_bdb(state: &ClusterState, uid: BdbUid) -> Result<&Bdb, ApiError> {
    state.bdbs.get(&uid).ok_or_else(|| {
        ApiError::not_found(format!(
            "database {uid} does not exist; `flotilla db list` lists them"
        ))
    })
}

/// `GET /v1/bdbs`.
pub(crate) async fn list(State(context): State<ApiContext>) -> Json<Vec<BdbInfo>> {
    let state = context.store.state();
    let observed = context.observer.observed().await;
    Json(
        state
            .bdbs
            .values()
            .map(|b| bdb_info(&state, &observed, b))
            .collect(),
    )
}

/// `GET /v1/bdbs/{uid}`.
pub(crate) async fn get(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<BdbInfo>, ApiError> {
    let uid = parse_uid(&uid)?;
    let observed = context.observer.observed().await;
    let state = context.store.state();
    Ok(Json(bdb_info(&state, &observed, find_bdb(&state, uid)?)))
}

/// `POST /v1/bdbs`: validates, places the shards, proposes `CreateBdb`.
pub(crate) async fn create(
    State(context): State<ApiContext>,
    body: Bytes,
) -> Result<(StatusCode, Json<BdbInfo>), ApiError> {
    let request: BdbCreate = parse("bdb", &body)?;
    let mut spec = spec_from(request, context.store.config().addr)?;
    let observed = context.observer.observed().await;
    let state = context.store.state();
    // From cluster version 0.2.0 on the password is hashed here, so the plaintext never
    // reaches the Raft log; before, every node (the first release too) reads the plaintext.
    if state.keeps_hashed_passwords() {
        spec.hash_password();
    }
    let shards = place_shards(&state, &observed, &spec)?;
    state
        .check_new_bdb(&spec, &shards)
        .map_err(flotilla_store::StoreError::from)?;
    let name = spec.name.clone();
    let asked = spec.clone();
    let change = Change {
        command: Command::CreateBdb(BdbCreation {
            bdb: spec,
            created_at: now_secs(),
            shards,
        }),
        // A database of this name and spec did not exist before (checked above): it is this one.
        applied: |state: &ClusterState| {
            let bdb = state.bdb_by_name(&name).filter(|b| b.spec == asked)?;
            Some(CommandResult::BdbCreated { uid: bdb.uid })
        },
        check: format!("flotilla db show {name}"),
    };
    let outcome = propose(&context, change).await?;
    let CommandResult::BdbCreated { uid } = outcome else {
        return Err(ApiError::from(flotilla_store::StoreError::Internal(
            format!("unexpected outcome {outcome:?}"),
        )));
    };
    context
        .store
        .wait_until(crate::actions::APPLY_WAIT, |s| s.bdbs.contains_key(&uid))
        .await;
    let state = context.store.state();
    Ok((
        StatusCode::OK,
        Json(bdb_info(&state, &observed, find_bdb(&state, uid)?)),
    ))
}

/// Where a new database's shards go: on nodes that are up, neither being removed nor in
/// maintenance (`db create` and a CRDB instance's creation place alike).
pub(crate) fn place_shards(
    state: &ClusterState,
    observed: &Observed,
    spec: &BdbSpec,
) -> Result<Vec<ShardPlan>, ApiError> {
    let eligible: Vec<u64> = observed
        .nodes
        .iter()
        .filter(|(uid, status)| **status == NodeStatus::Up && !state.takes_no_shards(**uid))
        .map(|(uid, _)| *uid)
        .collect();
    placement::place(state, spec, &eligible).map_err(|e| ApiError {
        status: StatusCode::CONFLICT,
        error_code: "placement_failed",
        description: e.to_string(),
    })
}

/// `PUT /v1/bdbs/{uid}`.
pub(crate) async fn update(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Json<BdbInfo>, ApiError> {
    let uid = parse_uid(&uid)?;
    let update: BdbUpdate = parse("bdb", &body)?;
    if update == BdbUpdate::default() {
        return Err(ApiError::invalid(
            "bdb",
            "no change given: pass memory_size, authentication_redis_pass, tls_mode, config or a client limit",
        ));
    }
    if update.memory_size == Some(0) {
        return Err(ApiError::invalid(
            "memory_size",
            "must be more than 0 bytes",
        ));
    }
    let config = checked_config(&update.config)?;
    let state = context.store.state();
    let mut limits = find_bdb(&state, uid)?.spec.limits;
    limits.apply(&update.limits());
    limits
        .check()
        .map_err(|e| ApiError::invalid("client_query_buffer_limit", e))?;
    let password = update
        .authentication_redis_pass
        .clone()
        .map(|p| Some(p).filter(|p| !p.is_empty()));
    let (memory_size, asked_password) = (update.memory_size, password.clone());
    let tls_mode = update.tls_mode;
    // The first release's encoding of "remove the password" decodes as "keep it"; the
    // removal has a field of its own, proposed once every node knows it (cluster version).
    let remove = password == Some(None);
    let mut new_password = password.flatten();
    // From cluster version 0.2.0 on a new password travels hashed (see `create`).
    let hashed = new_password
        .take_if(|_| state.keeps_hashed_passwords())
        .map(|p| flotilla_model::sha256_hex(p.as_bytes()));
    let change = Change {
        command: Command::UpdateBdb(BdbChange {
            uid,
            memory_size: update.memory_size,
            authentication_redis_pass: new_password.map(Some),
            remove_authentication_redis_pass: remove,
            authentication_redis_pass_sha256: hashed,
            limits: update.limits(),
            tls_mode: update.tls_mode,
            config: config.clone(),
        }),
        applied: move |state: &ClusterState| {
            let spec = &state.bdbs.get(&uid)?.spec;
            let memory = memory_size.is_none_or(|m| spec.memory_size == m);
            let password = asked_password.as_ref().is_none_or(|p| match p {
                Some(p) => spec.password_matches(p.as_bytes()),
                None => !spec.has_password(),
            });
            let tls = tls_mode.is_none_or(|mode| spec.tls_mode == mode);
            let settings = config.iter().all(|(k, v)| spec.config.get(k) == Some(v));
            (memory && password && tls && settings && spec.limits == limits)
                .then_some(CommandResult::Ok)
        },
        check: format!("flotilla db show {uid}"),
    };
    propose(&context, change).await?;
    get(State(context), Path(uid.to_string())).await
}

/// The settings of an update under their canonical names, each checked as `CONFIG SET` checks
/// it through the endpoint.
fn checked_config(
    asked: &std::collections::BTreeMap<String, String>,
) -> Result<flotilla_model::DatabaseConfig, ApiError> {
    asked
        .iter()
        .map(|(name, value)| {
            flotilla_model::check_setting(name, value)
                .map_err(|e| ApiError::invalid("config", e.to_string()))
        })
        .collect()
}

/// `DELETE /v1/bdbs/{uid}`.
pub(crate) async fn delete(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let uid = parse_uid(&uid)?;
    find_bdb(&context.store.state(), uid)?;
    let change = Change {
        command: Command::DeleteBdb(BdbDeletion { uid }),
        applied: |state: &ClusterState| {
            (!state.bdbs.contains_key(&uid)).then_some(CommandResult::Ok)
        },
        check: "flotilla db list".into(),
    };
    propose(&context, change).await?;
    Ok(Json(serde_json::json!({ "uid": uid, "status": "deleted" })))
}

/// `GET /v1/shards`.
pub(crate) async fn shards(State(context): State<ApiContext>) -> Json<Vec<ShardInfo>> {
    let state = context.store.state();
    let observed = context.observer.observed().await;
    let infos = state
        .shards
        .values()
        .map(|s| {
            let report = observed.shards.get(&s.uid);
            ShardInfo {
                uid: s.uid,
                bdb_uid: s.bdb_uid,
                node_uid: s.node_uid,
                role: s.role,
                assigned_slots: s.assigned_slots,
                port: s.port,
                redis_version: s.redis_version.to_string(),
                status: shard_status(&observed, s.uid, s.role, s.node_uid).into(),
                offset: report.map(|r| r.offset).unwrap_or(0),
                used_memory: report.map(|r| r.used_memory).unwrap_or(0),
                held: s.held,
                problem: report.and_then(|r| r.problem.clone()),
            }
        })
        .collect();
    Json(infos)
}

/// `POST /v1/shards/{uid}/actions/failover`: a planned switchover of the shard's slot range
/// (to its replica when `uid` is a primary, to `uid` when it is a replica).
pub(crate) async fn failover(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<SwitchoverReport>, ApiError> {
    let uid: u64 = uid.parse().map_err(|_| {
        ApiError::invalid(
            "uid",
            format!("'{uid}' is not a shard uid (a positive integer)"),
        )
    })?;
    let state = context.store.state();
    if let Some(action) = state
        .shards
        .get(&uid)
        .and_then(|shard| state.running_action_on(shard.bdb_uid))
    {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            error_code: "action_running",
            description: format!(
                "action {} ({}) is running on database {} (step '{}'); wait for it \
                 (`flotilla action wait {}`) or cancel it (`flotilla action cancel {}`)",
                action.uid,
                action.kind.name(),
                state.shards[&uid].bdb_uid,
                action.step,
                action.uid,
                action.uid
            ),
        });
    }
    switchover::switchover(&context.observer, uid)
        .await
        .map(Json)
        .map_err(|e| {
            let (status, error_code) = match &e {
                SwitchoverError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                SwitchoverError::NoReplica(_) => (StatusCode::CONFLICT, "no_replica"),
                SwitchoverError::NotCaughtUp { .. } | SwitchoverError::HoldNotSpread { .. } => {
                    (StatusCode::CONFLICT, "switchover_aborted")
                }
                SwitchoverError::Engine { .. } => (StatusCode::BAD_GATEWAY, "shard_unreachable"),
                SwitchoverError::Store(inner) => return ApiError::from(inner.clone()),
            };
            ApiError {
                status,
                error_code,
                description: e.to_string(),
            }
        })
}
