//! One reconcile step for one shard: make its engine run (adopt or start), make its role match
//! the store, and observe it. Each shard's step runs in its own task, so a slow or failing
//! shard never holds up the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_engine::{
    adopt, set_aside_data_files, start, ClientOptions, EngineCatalog, EngineClient, EngineError,
    LinkStatus, Persistence, ReplicaOf, ReplicationInfo, Role, ServerInfo, ShardProcess, ShardSpec,
    StopOptions,
};
use flotilla_model::rest::{ReplicaLink, ShardReport};
use flotilla_model::timing::PRIMARY_RESTART_GRACE;
use flotilla_model::{ShardRole, ShardUid};
use flotilla_store::failpoint::{hit, Phase};

use super::desired::DesiredShard;
use super::local::{record_spec, recorded_spec};
use super::ShardError;

/// Short timeouts: the agent would rather retry next round than wait on one engine.
const CLIENT_OPTIONS: ClientOptions = ClientOptions {
    connect_timeout: Duration::from_secs(1),
    response_timeout: Some(Duration::from_secs(2)),
};

/// Deadlines for stopping an engine left behind at a shard's old address or binary.
const REPLACE_STOP: StopOptions = StopOptions {
    shutdown_timeout: Duration::from_secs(10),
    signal_timeout: Duration::from_secs(5),
};

/// When the agent first found each dead, memory-only primary down (see [`PRIMARY_RESTART_GRACE`]),
/// and which shards' damaged data files it set aside (reported until the shard serves again).
#[derive(Debug, Clone, Default)]
pub(crate) struct DownSince(
    Arc<Mutex<HashMap<ShardUid, Instant>>>,
    Arc<Mutex<HashMap<ShardUid, String>>>,
);

impl DownSince {
    /// Records that shard `uid`'s damaged data files were set aside, and where (`note`).
    fn note_set_aside(&self, uid: ShardUid, note: String) {
        let mut notes = self.1.lock().unwrap_or_else(|e| e.into_inner());
        notes.insert(uid, note);
    }

    /// The set-aside note of shard `uid`, if any.
    fn set_aside_note(&self, uid: ShardUid) -> Option<String> {
        let notes = self.1.lock().unwrap_or_else(|e| e.into_inner());
        notes.get(&uid).cloned()
    }

    /// Forgets the set-aside note of shard `uid` (it serves in its role again).
    pub(crate) fn resolved(&self, uid: ShardUid) {
        let mut notes = self.1.lock().unwrap_or_else(|e| e.into_inner());
        notes.remove(&uid);
    }

    /// How long shard `uid` has been seen down, counting from now on the first call.
    fn elapsed(&self, uid: ShardUid) -> Duration {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(uid).or_insert_with(Instant::now).elapsed()
    }

    /// Forgets every shard `keep` says no.
    pub(crate) fn retain(&self, keep: impl Fn(ShardUid) -> bool) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|uid, _| keep(*uid));
        let mut notes = self.1.lock().unwrap_or_else(|e| e.into_inner());
        notes.retain(|uid, _| keep(*uid));
    }

    /// Forgets shard `uid` (it runs again).
    fn clear(&self, uid: ShardUid) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&uid);
    }
}

/// The replica shards whose primary listed them `online`, each with the sync it was seen for
/// and the primary's offset then (see [`EngineClient::request_ack`]): a replica counts as
/// linked only once its current sync is in here and it has applied the stream up to that
/// offset, which proves the stream flows and the writes piled up during the sync arrived.
#[derive(Debug, Clone, Default)]
pub(crate) struct Streaming(Arc<Mutex<HashMap<ShardUid, (SyncKey, i64)>>>);

/// What tells one replica's sync from the next: the engine process (a restarted replica syncs
/// afresh) and the primary it follows (address and replication id: a new primary, or a new
/// engine at the same address, syncs afresh).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SyncKey {
    run_id: String,
    primary: (Option<String>, Option<u16>),
    replid: String,
}

impl Streaming {
    /// The primary's offset when it listed shard `uid` online in sync `key`, if it did.
    fn target(&self, uid: ShardUid, key: &SyncKey) -> Option<i64> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&uid)
            .filter(|(seen, _)| seen == key)
            .map(|(_, target)| *target)
    }

    fn set(&self, uid: ShardUid, seen: Option<(SyncKey, i64)>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match seen {
            Some(seen) => map.insert(uid, seen),
            None => map.remove(&uid),
        };
    }

    /// Forgets every shard `keep` says no.
    pub(crate) fn retain(&self, keep: impl Fn(ShardUid) -> bool) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|uid, _| keep(*uid));
    }
}

/// Runs one reconcile step for `desired` and returns what it then observes. Errors are logged
/// with the shard uid; the report then says what could still be seen (or that it is down).
pub(crate) async fn reconcile_and_observe(
    catalog: &EngineCatalog,
    down: &DownSince,
    streaming: &Streaming,
    desired: &DesiredShard,
) -> ShardReport {
    let uid = desired.spec.shard_id;
    let mut problem = match reconcile(catalog, down, desired).await {
        Ok(()) => None,
        Err(ShardError::NotReady(why)) => {
            tracing::info!("shard waits: {why}");
            None
        }
        Err(err) => {
            tracing::warn!(error = %err, "shard not reconciled; retrying next round");
            Some(err.to_string())
        }
    };
    let mut report = match observe(&desired.spec, streaming).await {
        Ok(report) => report,
        Err(err) => {
            tracing::debug!(error = %err, "shard not observed");
            down_report(uid)
        }
    };
    if report.serves_in(desired.role, ReplicaLink::Required) {
        down.resolved(uid);
    }
    if let Some(note) = down.set_aside_note(uid) {
        problem = Some(problem.map_or(note.clone(), |p| format!("{p}; {note}")));
    }
    report.problem = problem.or(report.problem);
    report
}

/// The report for a shard that does not answer.
pub(crate) fn down_report(uid: ShardUid) -> ShardReport {
    ShardReport {
        uid,
        up: false,
        role: None,
        offset: 0,
        primary_link_up: false,
        sync_in_progress: false,
        used_memory: 0,
        engine_version: None,
        pid: None,
        problem: None,
    }
}

async fn reconcile(
    catalog: &EngineCatalog,
    down: &DownSince,
    desired: &DesiredShard,
) -> Result<(), ShardError> {
    let process = ensure_running(catalog, down, desired).await?;
    let client = connect(process.spec()).await?;
    align_access(&client, &desired.spec).await?;
    align_config(&client, desired).await?;
    align_role(&client, desired).await
}

/// Makes the engine run with the database's settings (`CONFIG SET` of each one whose value
/// differs), so a started, restarted, promoted or upgraded engine has them as every other
/// shard of the database does.
async fn align_config(client: &EngineClient, desired: &DesiredShard) -> Result<(), ShardError> {
    for (name, value) in &desired.config {
        let current = client.config_get(name).await?;
        if current
            .as_deref()
            .is_some_and(|current| flotilla_model::same_setting_value(name, current, value))
        {
            continue;
        }
        tracing::info!(setting = %name, %value, "applying the database's setting: CONFIG SET");
        client.config_set(name, value).await?;
    }
    Ok(())
}

/// Adopts the shard's running engine, or starts it. An engine still running from an older
/// spec at another port or with another binary is stopped first, so it cannot linger. A dead
/// memory-only primary with a replica waits [`PRIMARY_RESTART_GRACE`] first.
async fn ensure_running(
    catalog: &EngineCatalog,
    down: &DownSince,
    desired: &DesiredShard,
) -> Result<ShardProcess, ShardError> {
    let spec = &desired.spec;
    // A new engine version (an upgrade step) restarts the engine even when the binary keeps its
    // name (redis-6.2 -> redis-7.0), so adopting by name is not enough.
    if recorded_spec(&spec.dir)?.is_some_and(|previous| previous.version != spec.version) {
        tracing::info!(version = %spec.version, "engine version changed: restarting the shard on the new engine");
        let point = point("agent:restart_engine", spec.shard_id);
        hit(&point, Phase::Before).await?;
        stop_previous(spec).await?;
        hit(&point, Phase::After).await?;
    }
    if let Some(process) = adopt(spec)? {
        down.clear(spec.shard_id);
        record_spec(spec)?;
        return Ok(process);
    }
    if waits_for_failover(desired)? {
        let elapsed = down.elapsed(spec.shard_id);
        if elapsed < PRIMARY_RESTART_GRACE {
            return Err(ShardError::NotReady(format!(
                "primary shard's engine down for {} ms without persistence; leaving {} ms for its replica to be promoted before restarting it empty",
                elapsed.as_millis(),
                PRIMARY_RESTART_GRACE.as_millis()
            )));
        }
    }
    stop_previous(spec).await?;
    record_spec(spec)?;
    tracing::info!(addr = %spec.addr(), version = %spec.version, "starting shard engine");
    let point = point("agent:start_engine", spec.shard_id);
    hit(&point, Phase::Before).await?;
    let process = match start(catalog, spec).await {
        Err(e @ EngineError::DataUnreadable { .. }) if desired.role == ShardRole::Replica => {
            // A replica's data comes from its primary: its damaged files are set aside (never
            // deleted) and it starts empty and syncs again.
            let aside = set_aside_data_files(spec)?;
            tracing::warn!(error = %e, aside = %aside.display(), "the replica's data files do not load: moved them aside; starting it empty to sync from its primary");
            down.note_set_aside(spec.shard_id, format!("{e}. Moved them to {} (kept for the operator: delete them once the shard is active again); the replica starts empty and syncs from its primary", aside.display()));
            start(catalog, spec).await?
        }
        started => started?,
    };
    hit(&point, Phase::After).await?;
    down.clear(spec.shard_id);
    Ok(process)
}

/// True for a primary that ran here before (it has a record), keeps no data on disk, and has a
/// replica that holds its data.
fn waits_for_failover(desired: &DesiredShard) -> Result<bool, ShardError> {
    let memory_only_primary = desired.role == ShardRole::Primary
        && desired.spec.persistence == Persistence::None
        && desired.has_replica;
    Ok(memory_only_primary && recorded_spec(&desired.spec.dir)?.is_some())
}

/// Stops the engine recorded for this shard when it runs under a different spec.
async fn stop_previous(spec: &ShardSpec) -> Result<(), ShardError> {
    let Some(previous) = recorded_spec(&spec.dir)? else {
        return Ok(());
    };
    if previous == *spec {
        return Ok(());
    }
    if let Some(process) = adopt(&previous)? {
        tracing::info!(pid = process.pid(), old_addr = %previous.addr(), "stopping the shard's engine started from an older spec");
        process.stop_with(true, REPLACE_STOP).await?;
    }
    Ok(())
}

/// The name of the agent's failpoint `what` for shard `uid` (`agent:start_engine shard:4`; the
/// first word alone names it for every shard; see [`flotilla_store::failpoint`]).
fn point(what: &str, uid: ShardUid) -> String {
    format!("{what} shard:{uid}")
}

async fn connect(spec: &ShardSpec) -> Result<EngineClient, ShardError> {
    let login = spec.admin_login();
    Ok(EngineClient::connect_with(spec.bind, spec.port, &login, CLIENT_OPTIONS).await?)
}

/// Once no 0.1.0 node is left (the spec is no longer legacy), moves an engine started the old
/// way (no Flotilla users: the login fell back to the secret) or under a 0.1.0 cluster version
/// (its default user is on with the secret) to the users, without restarting it; see
/// [`EngineClient::move_to_users`]. A default user an operator turned on with a password of
/// their own is left alone: the cluster secret is what must stop logging in.
async fn align_access(client: &EngineClient, spec: &ShardSpec) -> Result<(), ShardError> {
    let Some(users) = spec.users.as_ref().filter(|_| !spec.legacy) else {
        return Ok(());
    };
    if client.fell_back() || client.default_user_takes(&spec.password).await? {
        tracing::info!("moving the engine to the Flotilla users; the default user goes off");
        client.move_to_users(users, spec.version).await?;
    }
    Ok(())
}

/// Makes the engine's replication role match the store: a primary that replicates is promoted;
/// a replica follows its primary, once that primary acts as a primary (pointing at a primary that
/// still replicates would chain the two, or loop them during a promotion).
async fn align_role(client: &EngineClient, desired: &DesiredShard) -> Result<(), ShardError> {
    let uid = desired.spec.shard_id;
    if desired.switching {
        return Ok(());
    }
    let info = client.replication().await?;
    match (desired.role, desired.spec.replica_of) {
        (ShardRole::Primary, _) => {
            if info.role == Role::Replica {
                tracing::info!("promoting the engine: REPLICAOF NO ONE");
                let point = point("agent:promote", uid);
                hit(&point, Phase::Before).await?;
                client.replicaof_no_one().await?;
                hit(&point, Phase::After).await?;
            }
        }
        (ShardRole::Replica, Some(primary)) => {
            let follows = info.role == Role::Replica
                && info.master_host.as_deref() == Some(primary.host.to_string().as_str())
                && info.master_port == Some(primary.port);
            if !follows {
                ensure_acts_as_primary(&desired.spec, primary).await?;
                tracing::info!(primary = %format!("{}:{}", primary.host, primary.port), "pointing the engine at its primary shard: REPLICAOF");
                let point = point("agent:replicaof", uid);
                hit(&point, Phase::Before).await?;
                client.replicaof(primary.host, primary.port).await?;
                hit(&point, Phase::After).await?;
            }
        }
        (ShardRole::Replica, None) => {
            return Err(ShardError::Inconsistent(format!(
                "replica shard {uid} has no primary shard to follow"
            )))
        }
    }
    Ok(())
}

async fn ensure_acts_as_primary(spec: &ShardSpec, primary: ReplicaOf) -> Result<(), ShardError> {
    let login = spec.admin_login();
    let client =
        EngineClient::connect_with(primary.host, primary.port, &login, CLIENT_OPTIONS).await?;
    let info = client.replication().await?;
    if info.role != Role::Primary {
        return Err(ShardError::NotReady(format!(
            "primary shard {}:{} still acts as a replica; following it after its promotion",
            primary.host, primary.port
        )));
    }
    Ok(())
}

/// What the shard's engine says about itself: PING, `INFO replication`, `INFO memory`,
/// `INFO server`. A replica whose link is up counts as linked once its primary streams to it
/// ([`primary_streams`]).
pub(crate) async fn observe(
    spec: &ShardSpec,
    streaming: &Streaming,
) -> Result<ShardReport, ShardError> {
    let client = connect(spec).await?;
    match client.ping().await {
        Ok(()) => {}
        // A primary that cannot write its data files refuses writes, and PING, with MISCONF:
        // reported down (so a replica elsewhere is promoted, as when it dies), with why.
        Err(EngineError::Redis { source, .. }) if source.code() == Some("MISCONF") => {
            let why = persistence_problem(&client, spec)
                .await
                .unwrap_or_else(|| format!("shard {} answers MISCONF: {source}", spec.shard_id));
            return Ok(ShardReport {
                problem: Some(format!("{why} (it answers PING with MISCONF, so it counts as down: a replica elsewhere is promoted)")),
                ..down_report(spec.shard_id)
            });
        }
        Err(e) => return Err(e.into()),
    }
    let replication = client.replication().await?;
    let memory = client.memory().await?;
    let server = client.server().await?;
    let linked = replication.master_link_status == Some(LinkStatus::Up);
    let linked = linked && primary_streams(&client, spec, &replication, &server, streaming).await;
    Ok(ShardReport {
        uid: spec.shard_id,
        up: true,
        role: Some(match replication.role {
            Role::Primary => ShardRole::Primary,
            Role::Replica => ShardRole::Replica,
        }),
        offset: replication.offset(),
        primary_link_up: linked,
        sync_in_progress: replication.master_sync_in_progress,
        used_memory: memory.used_memory,
        engine_version: Some(server.engine_version().to_string()),
        pid: Some(server.process_id),
        problem: persistence_problem(&client, spec).await,
    })
}

/// Whether the primary of this linked replica streams its writes to it, starting the stream
/// when the primary waits for the replica's first acknowledgement after a full sync (see
/// [`EngineClient::request_ack`]): once the primary lists the replica `online`, asks the
/// replica for an ACK and remembers the primary's offset then in `streaming` (until the link
/// goes down or a sync starts); the replica is linked once it has applied the stream up to
/// that offset. Until then `false` (the report reads not linked, and the agent watches the
/// sync again within 50 ms), asking for an ACK again in case the first was lost. A replica
/// that reads linked before it caught up would be promoted without the writes its primary
/// acknowledged while it loaded (the hold test's lost writes). A primary that cannot be asked
/// (or does not list the replica) is taken at the replica's word, as before, and asked again
/// next round.
async fn primary_streams(
    replica: &EngineClient,
    spec: &ShardSpec,
    replication: &ReplicationInfo,
    server: &ServerInfo,
    streaming: &Streaming,
) -> bool {
    let linked = replication.role == Role::Replica
        && replication.master_link_status == Some(LinkStatus::Up)
        && !replication.master_sync_in_progress;
    if !linked {
        streaming.set(spec.shard_id, None);
        return true;
    }
    let key = SyncKey {
        run_id: server.run_id.clone(),
        primary: (replication.master_host.clone(), replication.master_port),
        replid: replication.master_replid.clone(),
    };
    let target = match streaming.target(spec.shard_id, &key) {
        Some(target) => target,
        None => match primary_lists(spec, replication).await {
            Ok(Some(Listed {
                online: true,
                offset,
            })) => {
                // Always: with no write since the sync the offsets already match, but the
                // primary still waits for an ACK before it streams the next write.
                request_ack(replica).await;
                streaming.set(spec.shard_id, Some((key, offset)));
                offset
            }
            Ok(Some(Listed { online: false, .. })) => return false,
            Ok(None) => return true,
            Err(err) => {
                tracing::debug!(error = %err, "primary not asked whether it streams to its replica");
                return true;
            }
        },
    };
    if replication.offset() >= target {
        return true;
    }
    request_ack(replica).await;
    false
}

/// Asks `replica` for an ACK to its primary (see [`EngineClient::request_ack`]); a failure
/// is logged, and the next round asks again.
async fn request_ack(replica: &EngineClient) {
    if let Err(err) = replica.request_ack().await {
        tracing::debug!(error = %err, "replica not asked for an ACK");
    }
}

/// How a primary lists one of its replicas: `online` or still syncing, and the primary's own
/// offset when it said so.
struct Listed {
    online: bool,
    offset: i64,
}

/// How the primary this replica follows lists it (`None`: it does not list it).
async fn primary_lists(
    spec: &ShardSpec,
    replication: &ReplicationInfo,
) -> Result<Option<Listed>, ShardError> {
    let (Some(host), Some(port)) = (replication.master_host.as_deref(), replication.master_port)
    else {
        return Ok(None);
    };
    let Ok(host) = host.parse::<std::net::IpAddr>() else {
        return Ok(None);
    };
    let login = spec.admin_login();
    let primary = EngineClient::connect_with(host, port, &login, CLIENT_OPTIONS).await?;
    let theirs = primary.replication().await?;
    Ok(theirs
        .replica(&spec.bind.to_string(), spec.port)
        .map(|entry| Listed {
            online: entry.is_online(),
            offset: theirs.master_repl_offset,
        }))
}

/// `INFO persistence` fields that turn `err` when the engine failed to write its data files.
const WRITE_STATUSES: [&str; 3] = [
    "rdb_last_bgsave_status",
    "aof_last_write_status",
    "aof_last_bgrewrite_status",
];

/// What the engine says went wrong writing its data files (a full disk, most often), naming
/// the dir and the fix; `None` when every write succeeded (or it cannot be asked).
async fn persistence_problem(client: &EngineClient, spec: &ShardSpec) -> Option<String> {
    let info = client.info("persistence").await.ok()?;
    let failing: Vec<String> = WRITE_STATUSES
        .iter()
        .filter(|field| info.get(field) == Some("err"))
        .map(|field| format!("{field}:err"))
        .collect();
    if failing.is_empty() {
        return None;
    }
    let free = flotilla_engine::available_bytes(&spec.dir).map_or_else(
        || "free space unknown".into(),
        |b| format!("{b} bytes free there"),
    );
    Some(format!(
        "shard {} cannot write its data files in {} ({}; {free}): while it cannot, a persistent shard refuses writes (MISCONF) and nothing unwritten is acknowledged; free space on that file system, and it resumes by itself",
        spec.shard_id,
        spec.dir.display(),
        failing.join(", ")
    ))
}
