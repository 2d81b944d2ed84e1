//! CRDB tasks: changes to a CRDB across its clusters (`POST /v1/crdbs`, `DELETE
//! /v1/crdbs/{guid}`), run by the node that received the request, followed with
//! `GET /v1/crdb_tasks/{id}` (Redis Software's `crdb_task` object).
//!
//! A task's steps act on other clusters through their REST APIs, not on this cluster's store, so
//! a task is not a store action (those are this cluster's state machines, resumed by its next
//! primary node): it lives in this node's memory while it runs and after it ends (until the
//! daemon restarts). A create that fails part-way deletes the instances it made, in reverse
//! order; what it cannot delete is named in the task's errors with the command that deletes it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use flotilla_client::{Client, ClientError};
use flotilla_model::rest::{
    CrdbCreateRequest, CrdbInstanceRequest, CrdbLocalCreate, CrdbTask, CrdbTaskError,
    CrdbTaskStatus,
};
use flotilla_model::{Crdb, CrdbCluster, CrdbInstance, CrdtReplicaId, ENDPOINT_PORTS, MAX_SHARDS};

use crate::handlers::parse;
use crate::{ApiContext, ApiError};

/// The REST port peers reach a cluster's nodes on (HTTPS, checked against its CA).
const PEER_REST_PORT: u16 = 9443;

/// The tasks this node ran or runs, by id.
#[derive(Default)]
pub(crate) struct Tasks {
    next_id: u64,
    tasks: BTreeMap<u64, CrdbTask>,
}

/// The shared task table of an [`ApiContext`].
pub(crate) type TaskTable = Arc<Mutex<Tasks>>;

/// One running task's handle: updates its record in the table.
struct Running {
    table: TaskTable,
    id: u64,
    steps: usize,
    done: usize,
}

impl Running {
    fn start(table: &TaskTable, operation: &str, guid: &str, steps: usize) -> (Running, CrdbTask) {
        let mut tasks = table.lock().expect("task table");
        tasks.next_id += 1;
        let id = tasks.next_id;
        let task = CrdbTask {
            id: id.to_string(),
            crdb_guid: guid.to_string(),
            operation: operation.to_string(),
            status: CrdbTaskStatus::Queued,
            errors: vec![],
            progress: 0.0,
            step: String::new(),
        };
        tasks.tasks.insert(id, task.clone());
        let running = Running {
            table: table.clone(),
            id,
            steps: steps.max(1),
            done: 0,
        };
        (running, task)
    }

    fn update(&self, change: impl FnOnce(&mut CrdbTask)) {
        let mut tasks = self.table.lock().expect("task table");
        if let Some(task) = tasks.tasks.get_mut(&self.id) {
            change(task);
        }
    }

    /// Starts the next step, named `step`.
    fn step(&mut self, step: String) {
        let progress = self.done as f64 / self.steps as f64;
        self.done += 1;
        self.update(|task| {
            task.status = CrdbTaskStatus::Started;
            task.step = step;
            task.progress = progress;
        });
    }

    fn error(&self, cluster_name: &str, error_code: &str, description: String) {
        tracing::warn!(task = self.id, cluster = cluster_name, %description, "crdb task error");
        self.update(|task| {
            task.errors.push(CrdbTaskError {
                cluster_name: cluster_name.to_string(),
                error_code: error_code.to_string(),
                description,
            })
        });
    }

    fn snapshot(&self) -> CrdbTask {
        let tasks = self.table.lock().expect("task table");
        tasks.tasks[&self.id].clone()
    }

    fn end(&self, status: CrdbTaskStatus) {
        self.update(|task| {
            task.status = status;
            if status == CrdbTaskStatus::Finished {
                task.progress = 1.0;
            }
        });
    }
}

/// `GET /v1/crdb_tasks/{id}`.
pub(crate) async fn get_task(
    State(context): State<ApiContext>,
    Path(id): Path<String>,
) -> Result<Json<CrdbTask>, ApiError> {
    let tasks = context.crdb_tasks.lock().expect("task table");
    id.parse::<u64>()
        .ok()
        .and_then(|id| tasks.tasks.get(&id))
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "CRDB task {id} is not known to this node (tasks live on the node that ran them, until it restarts); `flotilla crdb task list` lists them"
            ))
        })
}

/// `GET /v1/crdb_tasks`.
pub(crate) async fn list_tasks(State(context): State<ApiContext>) -> Json<Vec<CrdbTask>> {
    let tasks = context.crdb_tasks.lock().expect("task table");
    Json(tasks.tasks.values().cloned().collect())
}

/// Refuses a creation request that cannot work, naming the field, before any cluster is asked.
fn check_create(request: &CrdbCreateRequest) -> Result<(), ApiError> {
    crate::bdbs::validate_db_name(&request.name)?;
    let config = &request.default_db_config;
    if !ENDPOINT_PORTS.contains(&config.port) {
        return Err(ApiError::invalid(
            "default_db_config.port",
            format!(
                "{} is outside the database port range 10000-19999",
                config.port
            ),
        ));
    }
    if config.memory_size == 0 {
        return Err(ApiError::invalid(
            "default_db_config.memory_size",
            "must be more than 0 bytes, e.g. 104857600 for 100 MB",
        ));
    }
    if config.shards_count == 0 || config.shards_count > MAX_SHARDS {
        return Err(ApiError::invalid(
            "default_db_config.shards_count",
            format!("{} is outside 1-{MAX_SHARDS}", config.shards_count),
        ));
    }
    if request.instances.len() < 2 {
        return Err(ApiError::invalid(
            "instances",
            format!(
                "a CRDB needs at least 2 clusters; {} given (one --instance URL per cluster)",
                request.instances.len()
            ),
        ));
    }
    for (index, instance) in request.instances.iter().enumerate() {
        let field = format!("instances[{index}].url");
        if !(instance.url.starts_with("https://") || instance.url.starts_with("http://")) {
            return Err(ApiError::invalid(
                &field,
                format!(
                    "'{}' is not a REST URL like https://10.0.0.1:9443",
                    instance.url
                ),
            ));
        }
        if request.instances[..index]
            .iter()
            .any(|i| i.url == instance.url)
        {
            return Err(ApiError::invalid(
                &field,
                format!(
                    "'{}' is given twice; give one URL per cluster",
                    instance.url
                ),
            ));
        }
        if instance.username.is_empty() || instance.password.is_empty() {
            return Err(ApiError::invalid(
                &format!("instances[{index}]"),
                format!("{}: needs a username and a password", instance.url),
            ));
        }
    }
    Ok(())
}

/// A random GUID (version 4 layout), from the kernel's random source.
fn new_guid() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// `POST /v1/crdbs`: checks the request, answers a queued `create` task and runs it.
pub(crate) async fn create(
    State(context): State<ApiContext>,
    body: Bytes,
) -> Result<Json<CrdbTask>, ApiError> {
    let request: CrdbCreateRequest = parse("crdb", &body)?;
    check_create(&request)?;
    let guid = new_guid().map_err(|e| ApiError {
        status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        error_code: "internal_error",
        description: format!("making a GUID: {e}"),
    })?;
    // Reading each cluster, creating each instance, and a last step.
    let steps = request.instances.len() * 2 + 1;
    let (mut running, task) = Running::start(&context.crdb_tasks, "create", &guid, steps);
    tokio::spawn(async move {
        let status = match run_create(&context, &mut running, &guid, request).await {
            Ok(()) => CrdbTaskStatus::Finished,
            Err(()) => CrdbTaskStatus::Failed,
        };
        running.end(status);
    });
    Ok(Json(task))
}

/// A client for a cluster's REST API at `url` with `username`/`password`, trusting `ca` for
/// HTTPS.
fn peer_client(url: &str, username: &str, password: &str, ca: &str) -> Result<Client, String> {
    let client = Client::new(url, Some(username.into()), Some(password.into()));
    match url.starts_with("https://") {
        true => client.trusting(ca),
        false => Ok(client),
    }
}

/// The host part of a URL (`https://10.0.0.1:9443` -> `10.0.0.1`).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// What the coordinator read of one participating cluster.
struct Peer {
    client: Client,
    cluster: CrdbCluster,
    /// The newest CRDB protocol its software speaks.
    newest_protocol: u16,
}

/// Reads a cluster's name, CA (checked against the fingerprint its REST API names) and node
/// URLs.
async fn read_peer(context: &ApiContext, instance: &CrdbInstanceRequest) -> Result<Peer, String> {
    let host = url_host(&instance.url);
    let seed = format!("{host}:{}", context.local.ports.rpc);
    let ca = context.store.seed_ca(&seed).await.ok_or_else(|| {
        format!("{seed} serves no cluster CA: is it a node of a cluster at cluster version 0.2.0 or later?")
    })?;
    let client = peer_client(&instance.url, &instance.username, &instance.password, &ca)?;
    let info = client.cluster().await.map_err(|e| e.to_string())?;
    let fingerprint = flotilla_store::tls::fingerprint(&ca).map_err(|e| e.to_string())?;
    if info.ca_fingerprint.as_deref() != Some(fingerprint.as_str()) {
        return Err(format!(
            "the CA {seed} serves ({fingerprint}) is not the one cluster '{}' names ({}); check that the URL and the node belong to one cluster",
            info.name,
            info.ca_fingerprint.as_deref().unwrap_or("none")
        ));
    }
    let nodes = client.nodes().await.map_err(|e| e.to_string())?;
    let urls = nodes
        .iter()
        .map(|n| format!("https://{}:{PEER_REST_PORT}", n.addr))
        .collect();
    let newest_protocol = info
        .crdt_supported_protocol_versions
        .iter()
        .copied()
        .max()
        .unwrap_or(1);
    Ok(Peer {
        client,
        newest_protocol,
        cluster: CrdbCluster {
            name: info.name,
            urls,
            ca_cert: ca,
            username: instance.username.clone(),
            password: instance.password.clone(),
        },
    })
}

/// The error code and text of a failed call to a peer.
fn describe(error: &ClientError) -> (String, String) {
    match error {
        ClientError::Api { body, .. } => (body.error_code.clone(), body.description.clone()),
        ClientError::Transport { .. } => ("cluster_unreachable".into(), error.to_string()),
    }
}

async fn run_create(
    context: &ApiContext,
    running: &mut Running,
    guid: &str,
    request: CrdbCreateRequest,
) -> Result<(), ()> {
    let mut peers = Vec::new();
    for (index, instance) in request.instances.iter().enumerate() {
        running.step(format!("read cluster {}", instance.url));
        match read_peer(context, instance).await {
            Ok(peer) => peers.push(peer),
            Err(e) => {
                running.error(
                    "",
                    "cluster_unreachable",
                    format!(
                        "instances[{index}] ({}): {e}; nothing was created",
                        instance.url
                    ),
                );
                return Err(());
            }
        }
    }
    let instances: Vec<CrdbInstance> = peers
        .iter()
        .zip(1..)
        .map(|(peer, id)| CrdbInstance {
            id,
            cluster: peer.cluster.clone(),
        })
        .collect();
    let probe = Crdb {
        guid: guid.to_string(),
        name: request.name.clone(),
        instances: instances.clone(),
        local_instance_id: 1,
        local_bdb_uid: 0,
        featureset_version: crate::crdbs::CRDT_FEATURESET_VERSION,
        shards_count: request.default_db_config.shards_count,
        ghost_instance_ids: vec![],
    };
    if let Err(e) = probe.check() {
        running.error("", "invalid_schema", format!("{e}; nothing was created"));
        return Err(());
    }
    // Every instance starts on a protocol every one of them speaks; a cluster whose software
    // speaks a newer one shows OLD CRDB PROTOCOL VERSION until `db upgrade` raises it.
    let protocol_version = peers.iter().map(|p| p.newest_protocol).min();
    let mut made: Vec<(CrdtReplicaId, &Peer)> = Vec::new();
    for (peer, id) in peers.iter().zip(1..) {
        let name = &peer.cluster.name;
        running.step(format!("create instance {id} on cluster {name}"));
        let local = CrdbLocalCreate {
            guid: guid.to_string(),
            name: request.name.clone(),
            instances: instances.clone(),
            local_instance_id: id,
            featureset_version: Some(probe.featureset_version),
            protocol_version,
            default_db_config: request.default_db_config.clone(),
        };
        match peer.client.create_local_crdb(&local).await {
            Ok(_) => made.push((id, peer)),
            Err(e) => {
                let (code, description) = describe(&e);
                running.error(
                    name,
                    &code,
                    format!("instance {id} on cluster '{name}': {description}"),
                );
                // An answer lost in transport may hide a creation: delete it too (a 404 is fine).
                if matches!(e, ClientError::Transport { .. }) {
                    made.push((id, peer));
                }
                undo(running, guid, &made).await;
                return Err(());
            }
        }
    }
    running.step("done".into());
    Ok(())
}

/// Deletes the instances a failed create made, last first; names each one it cannot delete.
async fn undo(running: &Running, guid: &str, made: &[(CrdtReplicaId, &Peer)]) {
    for (id, peer) in made.iter().rev() {
        match peer.client.delete_local_crdb(guid).await {
            Ok(()) => {}
            Err(e) if e.status() == Some(axum::http::StatusCode::NOT_FOUND) => {}
            Err(e) => running.error(
                &peer.cluster.name,
                "left_behind",
                format!(
                    "instance {id} of CRDB {guid} is left on cluster '{}' ({}): delete it there with `flotilla --url {} crdb delete --crdb-guid {guid} --local-only` ({e})",
                    peer.cluster.name,
                    peer.client.base(),
                    peer.client.base()
                ),
            ),
        }
    }
}

/// `DELETE /v1/crdbs/{guid}`: answers a `delete` task that deletes every instance (each peer's
/// through its REST API, this cluster's last).
pub(crate) async fn delete(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
) -> Result<Json<CrdbTask>, ApiError> {
    let crdb = crate::crdbs::known_crdb(&context, &guid)?;
    let steps = crdb.instances.len();
    let (mut running, task) = Running::start(&context.crdb_tasks, "delete", &guid, steps);
    tokio::spawn(async move {
        let status = match run_delete(&context, &mut running, &crdb).await {
            Ok(()) => CrdbTaskStatus::Finished,
            Err(()) => CrdbTaskStatus::Failed,
        };
        running.end(status);
    });
    Ok(Json(task))
}

/// A client for instance `instance`'s cluster from what the CRDB keeps (its first URL that
/// answers is tried by the caller in turn).
fn instance_clients(instance: &CrdbInstance) -> Vec<Result<Client, String>> {
    let cluster = &instance.cluster;
    cluster
        .urls
        .iter()
        .map(|url| peer_client(url, &cluster.username, &cluster.password, &cluster.ca_cert))
        .collect()
}

/// Runs `call` against instance `instance`'s cluster, trying each of its nodes until one
/// answers (an API error is an answer).
async fn on_instance<T, F, Fut>(instance: &CrdbInstance, call: F) -> Result<T, ClientError>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut last = ClientError::Transport {
        url: String::new(),
        reason: format!("cluster '{}' has no URL", instance.cluster.name),
    };
    for client in instance_clients(instance) {
        let client = match client {
            Ok(client) => client,
            Err(reason) => {
                last = ClientError::Transport {
                    url: String::new(),
                    reason,
                };
                continue;
            }
        };
        match call(client).await {
            Err(e @ ClientError::Transport { .. }) => last = e,
            answered => return answered,
        }
    }
    Err(last)
}

/// Deletes instance `instance` of `guid` through its cluster's REST API (already gone: done).
pub(crate) async fn delete_remote(instance: &CrdbInstance, guid: &str) -> Result<(), String> {
    let deleted = on_instance(instance, |client| async move {
        client.delete_local_crdb(guid).await
    })
    .await;
    match deleted {
        Err(e) if e.status() != Some(axum::http::StatusCode::NOT_FOUND) => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// What one instance runs, as its cluster answers.
struct InstanceVersions {
    id: CrdtReplicaId,
    cluster: String,
    protocol_version: u16,
    supported_featureset: u16,
}

/// Every instance's protocol version and its cluster's newest feature set (this cluster's from
/// its own state); an instance that does not answer is an error naming it.
async fn survey(context: &ApiContext, crdb: &Crdb) -> Result<Vec<InstanceVersions>, ApiError> {
    let mut found = Vec::new();
    for instance in &crdb.instances {
        let cluster = instance.cluster.name.clone();
        if instance.id == crdb.local_instance_id {
            let state = context.store.state();
            let protocol_version = state
                .bdbs
                .get(&crdb.local_bdb_uid)
                .and_then(|b| b.spec.crdt.as_ref())
                .map_or(0, |c| c.crdt_protocol_version);
            found.push(InstanceVersions {
                id: instance.id,
                cluster,
                protocol_version,
                supported_featureset: crate::crdbs::CRDT_FEATURESET_VERSION,
            });
            continue;
        }
        let guid = crdb.guid.as_str();
        let answered = on_instance(instance, |client| async move {
            let info = client.crdb(guid).await?;
            let cluster = client.cluster().await?;
            Ok((info, cluster))
        })
        .await;
        let (info, cluster_info) = answered.map_err(|e| ApiError {
            status: axum::http::StatusCode::BAD_GATEWAY,
            error_code: "cluster_unreachable",
            description: format!(
                "instance {} on cluster '{cluster}' did not answer ({e}); every instance must answer for this change",
                instance.id
            ),
        })?;
        found.push(InstanceVersions {
            id: instance.id,
            cluster,
            protocol_version: info.protocol_version,
            supported_featureset: cluster_info.crdt_supported_featureset_version,
        });
    }
    Ok(found)
}

/// Refuses `what` while the instances run different protocol versions, naming each laggard
/// and the fix; answers the protocol they all run.
fn same_protocol(found: &[InstanceVersions], what: &str) -> Result<u16, ApiError> {
    let newest = found.iter().map(|i| i.protocol_version).max().unwrap_or(0);
    let laggards: Vec<String> = found
        .iter()
        .filter(|i| i.protocol_version < newest)
        .map(|i| {
            format!(
                "instance {} (cluster '{}') runs CRDB protocol {} (newest {newest}): upgrade it first (`flotilla db upgrade DB` on cluster '{}')",
                i.id, i.cluster, i.protocol_version, i.cluster
            )
        })
        .collect();
    if laggards.is_empty() {
        return Ok(newest);
    }
    Err(ApiError {
        status: axum::http::StatusCode::CONFLICT,
        error_code: "crdt_protocol_versions_mixed",
        description: format!(
            "{what} is refused while protocol versions are mixed: {}",
            laggards.join("; ")
        ),
    })
}

/// `PATCH /v1/crdbs/{guid}` (`crdb update --featureset-version`): moves every instance to the
/// newest feature set all clusters know, once every instance runs the same (newest) protocol;
/// answers the finished task.
pub(crate) async fn update(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
    body: Bytes,
) -> Result<Json<CrdbTask>, ApiError> {
    let request: flotilla_model::rest::CrdbUpdateRequest = parse("crdb", &body)?;
    if !request.featureset_version {
        return Err(ApiError::invalid(
            "crdb",
            "no change given: pass featureset_version: true (`crdb update --featureset-version true`)",
        ));
    }
    let crdb = crate::crdbs::known_crdb(&context, &guid)?;
    let found = survey(&context, &crdb).await?;
    same_protocol(&found, "a feature set version change")?;
    let target = found
        .iter()
        .map(|i| i.supported_featureset)
        .min()
        .unwrap_or(crdb.featureset_version)
        .max(crdb.featureset_version);
    let (mut running, _) = Running::start(&context.crdb_tasks, "update", &guid, found.len());
    let update = flotilla_model::rest::CrdbLocalUpdate {
        featureset_version: Some(target),
        ..Default::default()
    };
    let mut failed = false;
    for instance in crdb.peers() {
        running.step(format!("feature set {target} on instance {}", instance.id));
        let moved = on_instance(instance, |client| {
            let update = update.clone();
            let guid = guid.clone();
            async move { client.update_local_crdb(&guid, &update).await }
        })
        .await;
        if let Err(e) = moved {
            failed = true;
            running.error(
                &instance.cluster.name,
                "cluster_unreachable",
                format!(
                    "instance {} was not moved to feature set {target}: {e}; run `crdb update --featureset-version true` again",
                    instance.id
                ),
            );
        }
    }
    running.step(format!("feature set {target} on this cluster's instance"));
    let change = flotilla_model::CrdbChange {
        guid: guid.clone(),
        instances: None,
        ghost_instance_ids: vec![],
        featureset_version: Some(target),
        crdt_protocol_version: None,
    };
    if let Err(e) = crate::crdbs::propose_crdb_change(&context, change).await {
        failed = true;
        running.error("", e.error_code, e.description);
    }
    running.end(match failed {
        true => CrdbTaskStatus::Failed,
        false => CrdbTaskStatus::Finished,
    });
    let task = running.snapshot();
    Ok(Json(task))
}

async fn run_delete(context: &ApiContext, running: &mut Running, crdb: &Crdb) -> Result<(), ()> {
    let mut failed = false;
    for instance in crdb.peers() {
        let name = &instance.cluster.name;
        running.step(format!("delete instance {} on cluster {name}", instance.id));
        if let Err(e) = delete_remote(instance, &crdb.guid).await {
            failed = true;
            running.error(
                name,
                "left_behind",
                format!(
                    "instance {} on cluster '{name}' was not deleted: {e}; run `crdb delete` again, or delete it there",
                    instance.id
                ),
            );
        }
    }
    running.step(format!(
        "delete instance {} on this cluster",
        crdb.local_instance_id
    ));
    if let Err(e) = crate::crdbs::delete_here(context, &crdb.guid).await {
        running.error("", e.error_code, e.description);
        return Err(());
    }
    if failed {
        return Err(());
    }
    Ok(())
}

/// `POST /v1/crdbs/{guid}/updates`: adds instances (each new cluster gets its instance, every
/// current instance the new list) or removes them (each removed one is deleted on its cluster
/// unless `force_remove`; the others record it as removed). Refused while protocol versions are
/// mixed, naming the laggard; answers the finished task.
pub(crate) async fn updates(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
    body: Bytes,
) -> Result<Json<CrdbTask>, ApiError> {
    let request: flotilla_model::rest::CrdbUpdates = parse("crdb", &body)?;
    if request.add_instances.is_empty() && request.remove_instances.is_empty() {
        return Err(ApiError::invalid(
            "crdb",
            "no change given: pass add_instances or remove_instances",
        ));
    }
    let crdb = crate::crdbs::known_crdb(&context, &guid)?;
    for id in &request.remove_instances {
        if crdb.instance(*id).is_none() {
            return Err(ApiError::invalid(
                "remove_instances",
                format!(
                    "{id} is not an instance of CRDB {guid} (instances {})",
                    crdb.instance_ids()
                ),
            ));
        }
        if *id == crdb.local_instance_id {
            return Err(ApiError::invalid(
                "remove_instances",
                format!(
                    "{id} is this cluster's instance: ask another instance's cluster to remove it"
                ),
            ));
        }
    }
    let what = match request.add_instances.is_empty() {
        true => "removing an instance",
        false => "adding an instance",
    };
    let found = survey(&context, &crdb).await?;
    let protocol = same_protocol(&found, what)?;
    let (mut running, _) = Running::start(&context.crdb_tasks, "update", &guid, 4);
    let outcome = run_updates(&context, &mut running, &crdb, request, protocol).await;
    running.end(match outcome {
        Ok(()) => CrdbTaskStatus::Finished,
        Err(()) => CrdbTaskStatus::Failed,
    });
    Ok(Json(running.snapshot()))
}

async fn run_updates(
    context: &ApiContext,
    running: &mut Running,
    crdb: &Crdb,
    request: flotilla_model::rest::CrdbUpdates,
    protocol: u16,
) -> Result<(), ()> {
    let mut instances: Vec<CrdbInstance> = crdb
        .instances
        .iter()
        .filter(|i| !request.remove_instances.contains(&i.id))
        .cloned()
        .collect();
    let first_new_id = crdb
        .instances
        .iter()
        .map(|i| i.id)
        .chain(crdb.ghost_instance_ids.iter().copied())
        .max()
        .unwrap_or(0)
        + 1;
    let mut added = Vec::new();
    for ((index, asked), id) in request.add_instances.iter().enumerate().zip(first_new_id..) {
        running.step(format!("read cluster {}", asked.url));
        let peer = read_peer(context, asked).await.map_err(|e| {
            running.error(
                "",
                "cluster_unreachable",
                format!(
                    "add_instances[{index}] ({}): {e}; nothing was changed",
                    asked.url
                ),
            );
        })?;
        instances.push(CrdbInstance {
            id,
            cluster: peer.cluster.clone(),
        });
        added.push((id, peer));
    }
    let spec = context
        .store
        .state()
        .bdbs
        .get(&crdb.local_bdb_uid)
        .map(|b| b.spec.clone());
    let Some(spec) = spec else {
        running.error(
            "",
            "not_found",
            format!("CRDB {}'s local database is gone", crdb.guid),
        );
        return Err(());
    };
    let config = flotilla_model::rest::CrdbDbConfig {
        port: spec.port,
        memory_size: spec.memory_size,
        shards_count: spec.shards_count,
        replication: spec.replication,
        data_persistence: spec.data_persistence,
        redis_version: Some(spec.redis_version.to_string()),
        authentication_redis_pass: None,
    };
    let mut made: Vec<(CrdtReplicaId, &Peer)> = Vec::new();
    for (id, peer) in &added {
        running.step(format!(
            "create instance {id} on cluster {}",
            peer.cluster.name
        ));
        let local = CrdbLocalCreate {
            guid: crdb.guid.clone(),
            name: crdb.name.clone(),
            instances: instances.clone(),
            local_instance_id: *id,
            featureset_version: Some(crdb.featureset_version),
            protocol_version: Some(protocol),
            default_db_config: config.clone(),
        };
        if let Err(e) = peer.client.create_local_crdb(&local).await {
            let (code, description) = describe(&e);
            running.error(
                &peer.cluster.name,
                &code,
                format!("instance {id}: {description}"),
            );
            undo(running, &crdb.guid, &made).await;
            return Err(());
        }
        made.push((*id, peer));
    }
    if !request.force_remove {
        for id in &request.remove_instances {
            let instance = crdb.instance(*id).expect("checked");
            running.step(format!(
                "delete instance {id} on cluster {}",
                instance.cluster.name
            ));
            if let Err(e) = delete_remote(instance, &crdb.guid).await {
                running.error(&instance.cluster.name, "cluster_unreachable", format!("instance {id} could not be deleted ({e}); nothing else was changed: retry, or remove it with force_remove (`--force`) and purge it on its cluster later"));
                undo(running, &crdb.guid, &made).await;
                return Err(());
            }
        }
    }
    running.step("record the instances on every instance".into());
    let update = flotilla_model::rest::CrdbLocalUpdate {
        instances: Some(instances.clone()),
        ghost_instance_ids: request.remove_instances.clone(),
        ..Default::default()
    };
    let mut failed = false;
    for instance in crdb
        .peers()
        .filter(|i| !request.remove_instances.contains(&i.id))
    {
        let recorded = on_instance(instance, |client| {
            let update = update.clone();
            let guid = crdb.guid.clone();
            async move { client.update_local_crdb(&guid, &update).await }
        })
        .await;
        if let Err(e) = recorded {
            failed = true;
            running.error(
                &instance.cluster.name,
                "left_behind",
                format!(
                    "instance {} still lists the old instances ({e}); run the same change again",
                    instance.id
                ),
            );
        }
    }
    let change = flotilla_model::CrdbChange {
        guid: crdb.guid.clone(),
        instances: Some(instances),
        ghost_instance_ids: request.remove_instances,
        featureset_version: None,
        crdt_protocol_version: None,
    };
    if let Err(e) = crate::crdbs::propose_crdb_change(context, change).await {
        failed = true;
        running.error("", e.error_code, e.description);
    }
    match failed {
        true => Err(()),
        false => Ok(()),
    }
}

/// `GET /v1/crdbs/{guid}/health_report`: asks every instance's cluster for its instance.
pub(crate) async fn health_report(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
) -> Result<Json<flotilla_model::rest::CrdbHealthReport>, ApiError> {
    use flotilla_model::rest::CrdbInstanceHealth;
    let state = context.store.state();
    let crdb = crate::crdbs::known_crdb(&context, &guid)?;
    let local = crate::crdbs::get_crdb(&state, &guid)?;
    let mut configurations = Vec::new();
    for instance in &crdb.instances {
        let answered = match instance.id == crdb.local_instance_id {
            true => Ok(local.clone()),
            false => {
                let guid = guid.as_str();
                on_instance(instance, |client| async move { client.crdb(guid).await }).await
            }
        };
        let health = match answered {
            Ok(info) => CrdbInstanceHealth {
                id: instance.id,
                cluster_name: instance.cluster.name.clone(),
                status: match info.local_instance_id == instance.id {
                    true => "ok".into(),
                    false => "missing".into(),
                },
                protocol_version: info.protocol_version,
                featureset_version: info.featureset_version,
                instances: info.instances.iter().map(|i| i.id).collect(),
                error: String::new(),
            },
            Err(e) => CrdbInstanceHealth {
                id: instance.id,
                cluster_name: instance.cluster.name.clone(),
                status: match e.status() {
                    Some(axum::http::StatusCode::NOT_FOUND) => "missing".into(),
                    _ => "unreachable".into(),
                },
                protocol_version: 0,
                featureset_version: 0,
                instances: vec![],
                error: e.to_string(),
            },
        };
        configurations.push(health);
    }
    let first = configurations.first().cloned();
    let consistent = configurations.iter().all(|c| {
        c.status == "ok"
            && first.as_ref().is_some_and(|f| {
                (f.protocol_version, f.featureset_version, &f.instances)
                    == (c.protocol_version, c.featureset_version, &c.instances)
            })
    });
    Ok(Json(flotilla_model::rest::CrdbHealthReport {
        crdb_guid: guid,
        consistent,
        configurations,
    }))
}

/// `PUT /v1/crdbs/{guid}/flush`: flushes every instance (each cluster flushes its local
/// database's primary shards, this one last); answers the finished task.
pub(crate) async fn flush(
    State(context): State<ApiContext>,
    Path(guid): Path<String>,
) -> Result<Json<CrdbTask>, ApiError> {
    let crdb = crate::crdbs::known_crdb(&context, &guid)?;
    let (mut running, _) =
        Running::start(&context.crdb_tasks, "flush", &guid, crdb.instances.len());
    let mut failed = false;
    for instance in crdb.peers() {
        running.step(format!(
            "flush instance {} on cluster {}",
            instance.id, instance.cluster.name
        ));
        let flushed = on_instance(instance, |client| {
            let guid = guid.clone();
            async move { client.flush_local_crdb(&guid).await }
        })
        .await;
        if let Err(e) = flushed {
            failed = true;
            running.error(
                &instance.cluster.name,
                "cluster_unreachable",
                format!(
                    "instance {} was not flushed: {e}; run `crdb flush` again",
                    instance.id
                ),
            );
        }
    }
    running.step(format!(
        "flush instance {} on this cluster",
        crdb.local_instance_id
    ));
    if let Err(e) = crate::crdbs::flush_here(&context, &guid).await {
        failed = true;
        running.error("", e.error_code, e.description);
    }
    running.end(match failed {
        true => CrdbTaskStatus::Failed,
        false => CrdbTaskStatus::Finished,
    });
    Ok(Json(running.snapshot()))
}
