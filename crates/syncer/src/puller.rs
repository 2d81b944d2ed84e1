//! The pulling side: one task per (CRDB, peer instance, shard) on the node that holds the
//! local master of that shard. It reads its position from the engine (`__crdt__positions`),
//! long-polls the peer's op log from there, and applies each op with
//! [`flotilla_crdb::apply_remote`], which moves the position in the same script; past the
//! peer's backlog (or on a dot mismatch) it does a full state transfer and resumes from the
//! position the peer took before its scan.
//!
//! Errors (peer unreachable, engine down, a refused login) are logged once per change of cause
//! and retried with a bounded exponential backoff; the position lives in the engine, so a
//! restarted puller, on this node or on the node a failover moved the master to, resumes where
//! the applied data is.

use std::time::Duration;

use flotilla_client::Client;
use flotilla_crdt::{InstanceId, KeyState, Op};
use flotilla_engine::EngineClient;
use flotilla_model::{now_millis, CrdbInstance};
use reqwest::Method;

use crate::server::ShardMaster;
use crate::sources::{SourceKey, SyncSources, SyncStatus};
use crate::wire::{
    dot_text, entry_check, LogPosition, OpsPage, OpsQuery, OpsStatus, StatePage, StateQuery,
};
use crate::SyncerError;

/// The shortest pause after an error.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest pause after errors in a row.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long one long poll waits for new ops at the peer.
pub(crate) const LONG_POLL: Duration = Duration::from_secs(2);
/// How many of a page's ops one script applies (`flotilla_crdb::apply_remote_batch`).
const APPLY_BATCH: usize = 100;
/// How long a puller waits before asking again while the peer holds newer-protocol ops.
const HELD_RETRY: Duration = Duration::from_secs(1);

/// What a puller pulls, and into which engine: changes of any of it restart the puller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullerSpec {
    /// Which source this is.
    pub key: SourceKey,
    /// The local master of the shard, on this node.
    pub master: ShardMaster,
    /// The local instance's CRDB protocol version (ops of a newer one are held by the peer).
    pub protocol: u16,
    /// The peer instance and how to reach its cluster.
    pub peer: CrdbInstance,
}

/// One puller's connections and progress.
struct Puller {
    spec: PullerSpec,
    sources: SyncSources,
    /// A client per URL of the peer's cluster, each trusting only the peer's CA.
    peer_clients: Vec<Client>,
    /// The URL that answered last (tried first).
    current: usize,
    engine: Option<EngineClient>,
    /// True until the first answer since the puller started or last failed: that answer starts
    /// a new sync session (counted as a partial or a full sync).
    new_session: bool,
    /// Whether some session already ran: a later one resumes (partial sync) even from
    /// position 0.
    resumed_before: bool,
    /// The last error logged (so each cause is logged once).
    logged_error: Option<String>,
}

/// Runs the puller for `spec` until the task is aborted (its master moved, the CRDB changed).
pub async fn run(spec: PullerSpec, sources: SyncSources) {
    let cluster = &spec.peer.cluster;
    sources.start(&spec.key, spec.master.bdb_uid, &cluster.name, now_millis());
    let clients = match peer_clients(cluster) {
        Ok(clients) => clients,
        Err(e) => {
            tracing::error!(crdb = %spec.key.crdb_guid, peer = spec.key.peer_instance_id, error = %e, "cannot pull from this peer");
            sources.update(&spec.key, |s| s.last_error = Some(e));
            return;
        }
    };
    let mut puller = Puller {
        spec,
        sources,
        peer_clients: clients,
        current: 0,
        engine: None,
        new_session: true,
        resumed_before: false,
        logged_error: None,
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        match puller.step().await {
            Ok(pause) => {
                backoff = BACKOFF_MIN;
                puller.recovered();
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
            }
            Err(e) => {
                puller.failed(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// A REST client per URL of the peer's cluster, each trusting only that cluster's CA.
fn peer_clients(cluster: &flotilla_model::CrdbCluster) -> Result<Vec<Client>, String> {
    let clients = cluster
        .urls
        .iter()
        .map(|url| {
            Client::for_cluster(url, &cluster.username, &cluster.password, &cluster.ca_cert)
                .map_err(|e| format!("cluster {}: its CA certificate: {e}", cluster.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if clients.is_empty() {
        return Err(format!("cluster {} has no URL", cluster.name));
    }
    Ok(clients)
}

impl Puller {
    /// One round: read the position, fetch a page, apply it (or transfer the whole state).
    /// Returns how long to pause before the next round (while the peer holds newer ops).
    async fn step(&mut self) -> Result<Option<Duration>, SyncerError> {
        let engine = self.engine().await?;
        let mut conn = engine.connection();
        let peer = InstanceId(self.spec.key.peer_instance_id);
        let position = match flotilla_crdb::position(&mut conn, peer).await? {
            Some(p) => LogPosition::from(p),
            None => LogPosition::START,
        };
        let page = self.fetch_ops(&position).await?;
        if page.status == OpsStatus::BacklogExhausted {
            self.full_sync(&engine).await?;
            self.new_session = false;
            self.resumed_before = true;
            self.sources.update(&self.spec.key, |s| s.full_syncs += 1);
            return Ok(None);
        }
        // A session that continues from a stored position (or after an earlier session of this
        // puller) is a partial sync; the very first pull of a new instance is not.
        if self.new_session && (position.n > 0 || self.resumed_before) {
            self.sources
                .update(&self.spec.key, |s| s.partial_syncs += 1);
        }
        self.new_session = false;
        self.resumed_before = true;
        self.apply(&engine, position, &page).await?;
        Ok(page
            .held_protocol
            .filter(|_| page.entries.is_empty())
            .map(|_| HELD_RETRY))
    }

    /// Applies `page`'s entries in order, recording progress and lag.
    async fn apply(
        &mut self,
        engine: &EngineClient,
        position: LogPosition,
        page: &OpsPage,
    ) -> Result<(), SyncerError> {
        let peer = InstanceId(self.spec.key.peer_instance_id);
        let behind = page.last > position.n;
        let status = match behind {
            true => SyncStatus::Syncing,
            false => SyncStatus::InSync,
        };
        let now = now_millis();
        self.sources.update(&self.spec.key, |s| {
            s.status = status;
            s.peer_last = page.last;
            s.applied = position.n;
            s.last_contact = now;
            s.held_protocol = page.held_protocol;
            s.last_error = None;
            if !behind {
                s.oldest_unapplied_ts = None;
            }
        });
        let mut conn = engine.connection();
        let mut decoded = Vec::with_capacity(page.entries.len());
        for entry in &page.entries {
            let op = Op::from_json(&entry.op, self.spec.protocol)
                .map_err(|e| SyncerError::Decode(format!("op {}: {e}", entry.n)))?;
            let at = flotilla_crdb::Position {
                n: entry.n,
                dot: Some(op.id),
                check: Some(entry_check(&entry.op)),
            };
            decoded.push((at, op));
        }
        for batch in decoded.chunks(APPLY_BATCH) {
            let (first, last) = (&batch[0].1, &batch[batch.len() - 1]);
            self.sources.update(&self.spec.key, |s| {
                s.oldest_unapplied_ts.get_or_insert(first.ts);
            });
            // One script per batch; on a refusal, one by one, so the failing op is named.
            if flotilla_crdb::apply_remote_batch(&mut conn, peer, batch)
                .await
                .is_err()
            {
                for (at, op) in batch {
                    flotilla_crdb::apply_remote(&mut conn, peer, *at, op).await?;
                }
            }
            let (n, ts) = (last.0.n, last.1.ts);
            self.sources.update(&self.spec.key, |s| {
                s.applied = n;
                // The next op is at least as recent as this one: an upper bound of its age.
                s.oldest_unapplied_ts = (n < s.peer_last).then_some(ts);
                if n >= s.peer_last {
                    s.status = SyncStatus::InSync;
                }
            });
        }
        Ok(())
    }

    /// A full state transfer: every key state of the peer's shard merged here, then the
    /// position the peer took before its scan stored, from which the log resumes.
    async fn full_sync(&mut self, engine: &EngineClient) -> Result<(), SyncerError> {
        tracing::info!(crdb = %self.spec.key.crdb_guid, peer = self.spec.key.peer_instance_id, shard = self.spec.key.shard, "the peer's backlog does not cover this instance's position: full state transfer");
        self.sources
            .update(&self.spec.key, |s| s.status = SyncStatus::Syncing);
        let mut conn = engine.connection();
        let mut cursor = 0;
        let mut position = None;
        loop {
            let page = self.fetch_state(cursor).await?;
            if cursor == 0 {
                position = page.position;
            }
            for key in &page.keys {
                let state = KeyState::from_meta(&key.meta)
                    .map_err(|e| SyncerError::Decode(format!("state of a key: {e}")))?;
                flotilla_crdb::merge_remote(&mut conn, key.key.as_bytes(), &state).await?;
            }
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        let position = position.unwrap_or(LogPosition::START);
        let peer = InstanceId(self.spec.key.peer_instance_id);
        set_position(&mut conn, peer, position.stored()).await?;
        self.sources.update(&self.spec.key, |s| {
            s.applied = position.n;
            s.oldest_unapplied_ts = None;
        });
        Ok(())
    }

    async fn fetch_ops(&mut self, position: &LogPosition) -> Result<OpsPage, SyncerError> {
        let query = OpsQuery {
            shard: self.spec.key.shard,
            after: position.n,
            after_dot: position.dot.map(dot_text),
            after_check: position.check.clone(),
            count: crate::wire::DEFAULT_PAGE_OPS,
            protocol: self.spec.protocol,
            wait_ms: LONG_POLL.as_millis() as u64,
        };
        let mut path = format!(
            "/v1/crdbs/{}/ops?shard={}&after={}&count={}&protocol={}&wait_ms={}",
            self.spec.key.crdb_guid,
            query.shard,
            query.after,
            query.count,
            query.protocol,
            query.wait_ms
        );
        if let Some(dot) = &query.after_dot {
            path.push_str(&format!("&after_dot={dot}"));
        }
        if let Some(check) = &query.after_check {
            path.push_str(&format!("&after_check={check}"));
        }
        let page: OpsPage = self.get(&path).await?;
        self.check_peer(page.instance_id)?;
        Ok(page)
    }

    async fn fetch_state(&mut self, cursor: u64) -> Result<StatePage, SyncerError> {
        let query = StateQuery {
            shard: self.spec.key.shard,
            cursor,
            count: crate::wire::DEFAULT_PAGE_KEYS,
        };
        let path = format!(
            "/v1/crdbs/{}/state?shard={}&cursor={}&count={}",
            self.spec.key.crdb_guid, query.shard, query.cursor, query.count
        );
        let page: StatePage = self.get(&path).await?;
        self.check_peer(page.instance_id)?;
        Ok(page)
    }

    fn check_peer(&self, got: u16) -> Result<(), SyncerError> {
        let expected = self.spec.key.peer_instance_id;
        if got == expected {
            return Ok(());
        }
        Err(SyncerError::WrongPeer {
            peer: self.spec.peer.cluster.name.clone(),
            expected,
            got,
        })
    }

    /// `GET path` from the peer's cluster: the URL that answered last first, then the others
    /// in turn. An API error (the peer answered) is not retried on another URL.
    async fn get<R: serde::de::DeserializeOwned>(&mut self, path: &str) -> Result<R, SyncerError> {
        let mut reasons = Vec::new();
        let count = self.peer_clients.len();
        for attempt in 0..count {
            let index = (self.current + attempt) % count;
            let client = &self.peer_clients[index];
            match client.call::<(), R>(Method::GET, path, None).await {
                Ok(answer) => {
                    self.current = index;
                    let uri = client.base().to_string();
                    self.sources.update(&self.spec.key, |s| s.uri = uri);
                    return Ok(answer);
                }
                Err(e @ flotilla_client::ClientError::Api { .. }) => {
                    return Err(SyncerError::Peer {
                        peer: self.spec.peer.cluster.name.clone(),
                        reason: e.to_string(),
                    })
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        Err(SyncerError::Peer {
            peer: self.spec.peer.cluster.name.clone(),
            reason: reasons.join("; "),
        })
    }

    /// The admin connection to the local master, opened on first use and after an error.
    async fn engine(&mut self) -> Result<EngineClient, SyncerError> {
        if let Some(engine) = &self.engine {
            return Ok(engine.clone());
        }
        let engine = self.spec.master.connect(Duration::ZERO).await?;
        self.engine = Some(engine.clone());
        Ok(engine)
    }

    /// After an error: the next answer starts a new session; the cause is logged once.
    fn failed(&mut self, error: &SyncerError) {
        self.engine = None;
        self.new_session = true;
        let text = error.to_string();
        if self.logged_error.as_deref() != Some(text.as_str()) {
            tracing::warn!(crdb = %self.spec.key.crdb_guid, peer = self.spec.key.peer_instance_id, shard = self.spec.key.shard, error = %text, "syncer: pulling from the peer failed; retrying with backoff");
            self.logged_error = Some(text.clone());
        }
        self.sources.update(&self.spec.key, |s| {
            s.status = SyncStatus::OutOfSync;
            s.last_error = Some(text);
        });
    }

    /// After a successful round following errors: logged once.
    fn recovered(&mut self) {
        if self.logged_error.take().is_some() {
            tracing::info!(crdb = %self.spec.key.crdb_guid, peer = self.spec.key.peer_instance_id, shard = self.spec.key.shard, "syncer: pulling from the peer again");
        }
    }
}

/// Stores `position` as peer `peer`'s, after a full state transfer merged everything up to it
/// (the one position write that is not part of an op's script: the merges before it already
/// hold every op up to it, so it is not ahead of the data).
async fn set_position(
    conn: &mut flotilla_crdb::Conn,
    peer: InstanceId,
    position: flotilla_crdb::Position,
) -> Result<(), SyncerError> {
    let _: () = redis::cmd("HSET")
        .arg(flotilla_crdb::POSITIONS_KEY)
        .arg(peer.0)
        .arg(position.to_string())
        .query_async(conn)
        .await?;
    Ok(())
}
