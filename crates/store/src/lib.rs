//! The cluster store: the replicated, durable truth of a Flotilla cluster.
//!
//! One openraft member per node, with its log and state machine in the node's redb database
//! (`DATA_DIR/store.redb`). Everything else (API, orchestrator, agent, proxy) reads the state
//! from here and changes it only by proposing a [`flotilla_model::Command`] with
//! [`Store::propose`]; a proposal made on a secondary node is forwarded to the primary node.
//!
//! A node starts without Raft; `create_cluster` makes it uid 1 and initializes Raft,
//! `join_cluster` gets a uid from the primary node, starts Raft and becomes a voter.

// openraft's StorageError is large and its traits dictate it; boxing it here would only add
// conversions at every trait boundary.
#![allow(clippy::result_large_err)]

mod certificates;
mod credentials;
mod error;
pub mod failpoint;
mod follow;
mod identity;
pub mod listener;
mod log_store;
mod membership;
mod network;
mod primary;
mod prune;
pub mod rpc;
mod state_machine;
pub mod store_file;
pub mod tls;
mod transfer;
mod types;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_model::timing::{
    ELECTION_TIMEOUT_MAX, ELECTION_TIMEOUT_MIN, RAFT_HEARTBEAT, SNAPSHOT_TRANSFER_TIMEOUT,
};
use flotilla_model::{ClusterState, Command, CommandResult, NodeUid};
use openraft::error::{ClientWriteError, RaftError};
use redb::Database;
use tokio::sync::watch;

pub use certificates::run_certificates;
pub use credentials::{
    check_login, hash_password, random_secret, secret_eq, verify as verify_credentials, Login,
    PeerAddr, Throttle,
};
pub use error::StoreError;
pub use follow::{project, publish_if_changed, StateFeed, Wake, Wakes};
pub use identity::Identity;
pub use membership::{JoinRequest, JoinTicket};
pub use network::{internal_http_client, SECRET_HEADER};
pub use prune::run_pruning;
pub use types::{NodeId, Raft, TypeConfig};

use log_store::LogStore;
use network::{Network, Routes};
use state_machine::StateMachine;

/// Applied log entries between two snapshots. The state machine persists the state only in
/// snapshots, so a restarting node applies at most about this many entries again.
const SNAPSHOT_EVERY: u64 = 500;
/// Log entries kept behind the last snapshot, so a node a little behind catches up from the
/// log rather than with a whole snapshot.
const LOG_KEPT_AFTER_SNAPSHOT: u64 = 500;
/// How long a proposal keeps trying to reach a primary node before giving up.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);
/// Pause before a proposal is sent again while some node is known as the primary node (one
/// that may be gone or deposed): a refused connection fails at once, so without it the retry spins.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a secondary node waits, after forwarding a proposal, to apply what the primary
/// node had applied (normally one heartbeat or less).
const FORWARDED_CATCH_UP: Duration = Duration::from_secs(2);

/// Where a node's store lives and how it is reached.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// The address the node binds for everything.
    pub addr: IpAddr,
    /// The internal RPC port (Raft and node-to-node calls), 3333 by default.
    pub rpc_port: u16,
}

impl StoreConfig {
    /// `addr:rpc_port`: how other nodes reach a node at `addr`.
    pub fn rpc_addr_of(&self, addr: IpAddr) -> String {
        format!("{addr}:{}", self.rpc_port)
    }
}

/// Handle to the node's cluster store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    config: StoreConfig,
    db: Arc<Database>,
    state_machine: StateMachine,
    raft: RwLock<Option<Raft>>,
    identity: RwLock<Option<Identity>>,
    http: reqwest::Client,
    /// The node's certificate and TLS configurations (none before its first certificate).
    tls: tls::NodeTls,
    /// How calls reach each peer (TLS or plaintext).
    routes: Routes,
    /// Held while the node checks or renews its certificate (one round at a time).
    certificates: tokio::sync::Mutex<()>,
    bootstrap: tokio::sync::Mutex<()>,
    /// The term in which this node last became the primary node, and when it saw that.
    primary_since: primary::PrimarySince,
}

impl Store {
    /// Opens the store in the data dir and, when this node already belongs to a cluster,
    /// starts its Raft member.
    pub async fn open(config: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let identity = Identity::load(&config.data_dir)?;
        let uid = identity.as_ref().map(|i| i.uid);
        let db = Arc::new(store_file::open_database(&config.data_dir, uid)?);
        // Pages that pass their checksums but whose state does not decode are damage too.
        let state_machine = StateMachine::open(db.clone())
            .map_err(|e| store_file::damaged(&config.data_dir, uid, e.to_string()))?;
        let http = internal_http_client(config.addr);
        let tls = tls::NodeTls::open(&config.data_dir, config.addr)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let peers = state_machine.clone();
        let peer_certified: network::PeerCertified = Arc::new(move |ip| {
            let state = peers.state();
            state.node_by_addr(ip).map(|n| n.certificate.is_some())
        });
        let routes = Routes::new(http.clone(), tls.clone(), peer_certified, config.addr);
        let store = Store {
            inner: Arc::new(Inner {
                http,
                tls,
                routes,
                certificates: tokio::sync::Mutex::new(()),
                config,
                db,
                state_machine,
                raft: RwLock::new(None),
                identity: RwLock::new(None),
                bootstrap: tokio::sync::Mutex::new(()),
                primary_since: Default::default(),
            }),
        };
        if let Some(identity) = identity {
            store.start_raft(identity).await?;
        }
        Ok(store)
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// This node's uid and secret, once it created or joined a cluster.
    pub fn identity(&self) -> Option<Identity> {
        self.inner.identity.read().expect("identity lock").clone()
    }

    /// This node's uid, once it created or joined a cluster.
    pub fn uid(&self) -> Option<NodeUid> {
        self.identity().map(|i| i.uid)
    }

    /// The replicated cluster state as applied on this node: a shared snapshot (no copy), which
    /// later changes do not alter; take it again to see them.
    pub fn state(&self) -> Arc<ClusterState> {
        self.inner.state_machine.state()
    }

    /// The index of the last log entry this node applied.
    pub fn applied_index(&self) -> u64 {
        self.inner.state_machine.applied_index()
    }

    /// Changes whenever this node applies new commands.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.state_machine.subscribe()
    }

    /// The running Raft member, or `NotBootstrapped`.
    pub fn raft(&self) -> Result<Raft, StoreError> {
        self.inner
            .raft
            .read()
            .expect("raft lock")
            .clone()
            .ok_or(StoreError::NotBootstrapped)
    }

    /// Why this node's Raft member stopped, when a write to `store.redb` failed (a full disk,
    /// an I/O error): the node then no longer follows cluster changes while the others carry
    /// on. Names the file and the fix; `None` while the store runs (or before it started).
    pub fn failure(&self) -> Option<String> {
        let raft = self.raft().ok()?;
        let running = raft.metrics().borrow().running_state.clone();
        let openraft::error::Fatal::StorageError(error) = running.err()? else {
            return None;
        };
        let dir = &self.inner.config.data_dir;
        Some(format!(
            "this node's cluster store ({}) stopped after a failed write: {error}. The node no longer follows cluster changes (the other nodes carry on without it): free space in {} (or fix the disk); the daemon restarts by itself once the data dir has room again",
            dir.join(store_file::STORE_FILE).display(),
            dir.display()
        ))
    }

    /// The uid of the primary node (Raft leader) as this node knows it.
    pub fn primary_node(&self) -> Option<NodeUid> {
        let raft = self.raft().ok()?;
        let leader = raft.metrics().borrow().current_leader;
        leader
    }

    /// True when this node is the primary node.
    pub fn is_primary_node(&self) -> bool {
        self.uid().is_some() && self.primary_node() == self.uid()
    }

    /// The RPC address (`ip:port`) of the primary node, from Raft's membership.
    pub fn primary_node_rpc_addr(&self) -> Option<String> {
        let raft = self.raft().ok()?;
        let metrics = raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some(node.addr.clone())
    }

    /// The uids of the voting members in Raft's current membership.
    pub fn voter_uids(&self) -> Vec<NodeUid> {
        let Ok(raft) = self.raft() else {
            return Vec::new();
        };
        let metrics = raft.metrics().borrow().clone();
        metrics.membership_config.membership().voter_ids().collect()
    }

    /// The plaintext HTTP client for node-to-node calls (see [`Store::call_internal`] for
    /// calls that take TLS when the peer does).
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The node's TLS: its certificate from the cluster CA and the configurations using it.
    pub fn tls(&self) -> &tls::NodeTls {
        &self.inner.tls
    }

    /// What the RPC listener takes: TLS with the node's certificate once it has one, and
    /// plaintext until every node of the cluster has a certificate.
    pub fn rpc_policy(&self) -> Arc<dyn listener::ListenPolicy> {
        Arc::new(RpcPolicy(self.clone()))
    }

    /// Waits until this node's state satisfies `ready` (e.g. a change proposed through the
    /// primary node has been applied here too), or the timeout passes; true when it did.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        ready: impl Fn(&ClusterState) -> bool,
    ) -> bool {
        let mut changes = self.subscribe();
        let reached = async { changes.wait_for(|_| ready(&self.state())).await.is_ok() };
        matches!(tokio::time::timeout(timeout, reached).await, Ok(true))
    }

    /// Waits until this node has applied at least `index`, or the timeout passes.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut changes = self.subscribe();
        let reached = async { changes.wait_for(|applied| *applied >= index).await.is_ok() };
        matches!(tokio::time::timeout(timeout, reached).await, Ok(true))
    }

    /// Proposes a command and returns its replicated outcome; a command the state machine
    /// refused is `Err(Refused)`. On a secondary node the command is forwarded to the primary
    /// node. While there is no primary node, or the command certainly did not reach it
    /// ([`StoreError::is_safe_to_retry`]), it tries again until a deadline; a command whose
    /// outcome is unknown ([`StoreError::OutcomeUnknown`]) is never proposed again here: the
    /// caller checks the state (it may have been applied).
    pub async fn propose(&self, command: Command) -> Result<CommandResult, StoreError> {
        self.check_proposable(&command)?;
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        loop {
            let attempt = match self.propose_local(command.clone()).await {
                Err(StoreError::NotPrimaryNode { rpc_addr, .. }) => {
                    match rpc_addr.or_else(|| self.primary_node_rpc_addr()) {
                        Some(leader) => {
                            let result = self.forward_proposal(&leader, &command).await;
                            if result.is_ok() {
                                self.catch_up_with(&leader).await;
                            }
                            result
                        }
                        None => Err(StoreError::NoPrimaryNode(
                            "no primary node elected yet".into(),
                        )),
                    }
                }
                other => other,
            };
            match attempt {
                Err(e) if e.is_safe_to_retry() && tokio::time::Instant::now() < deadline => {
                    if self.primary_node().is_some() {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    self.wait_for_primary_node(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    /// Refuses a command that some member could not apply as meant: a command kind or field
    /// newer than the cluster version, or a finalization some node is not ready for (see
    /// [`ClusterState::check_proposable`]). Checked where a command is proposed and again on
    /// the primary node, whose state is the newest.
    fn check_proposable(&self, command: &Command) -> Result<(), StoreError> {
        Ok(self.state().check_proposable(command)?)
    }

    /// Proposes on this node only: `NotPrimaryNode` (or `NoPrimaryNode`) when this node is
    /// not the primary node; a refused command is `Err(Refused)`.
    pub async fn propose_local(&self, command: Command) -> Result<CommandResult, StoreError> {
        self.propose_indexed(command)
            .await
            .map(|(result, _)| result)
    }

    /// Proposes on this node (the primary node) and returns the outcome with the entry's log index,
    /// so the caller can wait until other nodes have applied it ([`Store::applied_index`]).
    /// A refused command is `Err(Refused)`.
    pub async fn propose_indexed(
        &self,
        command: Command,
    ) -> Result<(CommandResult, u64), StoreError> {
        self.check_proposable(&command)?;
        let (result, index) = self.write(command).await?;
        Ok((refusal_as_error(Ok(result))?, index))
    }

    /// Hands a command to this node's Raft: the outcome as it travels in `/internal/propose`
    /// answers (a refusal inside `Ok`, as 0.1.0 nodes expect it).
    async fn write(&self, command: Command) -> Result<(CommandResult, u64), StoreError> {
        let raft = self.raft()?;
        let commit_point = failpoint::commit_point(&command);
        let write = tokio::time::timeout(PROPOSE_DEADLINE, raft.client_write(command));
        match write.await {
            Ok(Ok(response)) => {
                if let Some(point) = commit_point {
                    failpoint::hit(&point, failpoint::Phase::After)
                        .await
                        .map_err(|e| StoreError::OutcomeUnknown {
                            addr: self.rpc_addr(),
                            reason: e.to_string(),
                        })?;
                }
                Ok((response.data, response.log_id.index))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(match f.leader_id {
                    Some(leader) => StoreError::NotPrimaryNode {
                        primary_node: leader,
                        rpc_addr: f.leader_node.map(|n| n.addr),
                    },
                    None => StoreError::NoPrimaryNode("no primary node elected yet".into()),
                })
            }
            Ok(Err(e)) => Err(StoreError::Internal(e.to_string())),
            Err(_) => Err(StoreError::OutcomeUnknown {
                addr: self.rpc_addr(),
                reason: format!(
                    "the change was not committed within {PROPOSE_DEADLINE:?} (quorum lost?) and may still apply"
                ),
            }),
        }
    }

    /// `/internal/propose` on this node: the 0.1.0 answer (a refusal inside `Ok`).
    pub(crate) async fn propose_for_peer(
        &self,
        command: Command,
    ) -> Result<CommandResult, StoreError> {
        self.write(command).await.map(|(result, _)| result)
    }

    async fn forward_proposal(
        &self,
        leader: &str,
        command: &Command,
    ) -> Result<CommandResult, StoreError> {
        let answer: Result<CommandResult, StoreError> = self
            .call_internal(leader, "/internal/propose", command)
            .await?;
        refusal_as_error(answer)
    }

    /// Waits (bounded) until this node applied what the primary node at `leader` has applied
    /// now: a change proposed through this node is then visible here to whoever proposed it
    /// (a REST client reading right after writing through a secondary node).
    async fn catch_up_with(&self, leader: &str) {
        let applied: Result<u64, StoreError> =
            self.call_internal(leader, "/internal/applied", &()).await;
        if let Ok(index) = applied {
            self.wait_applied(index, FORWARDED_CATCH_UP).await;
        }
    }

    /// This node's RPC address (`ip:port`), as other nodes reach it.
    fn rpc_addr(&self) -> String {
        self.config().rpc_addr_of(self.config().addr)
    }

    /// Waits (bounded) until some node is known as the primary node.
    pub async fn wait_for_primary_node(&self, timeout: Duration) -> Option<NodeUid> {
        let raft = self.raft().ok()?;
        let mut metrics = raft.metrics();
        let found = async {
            metrics
                .wait_for(|m| m.current_leader.is_some())
                .await
                .ok()
                .and_then(|m| m.current_leader)
        };
        tokio::time::timeout(timeout, found).await.ok().flatten()
    }

    /// Runs a request on the primary node: POSTs `body` to its internal RPC `path` (see
    /// [`Store::call_internal`]). `NoPrimaryNode` when no primary node is known. The request
    /// goes over HTTP even when this node is the primary node; callers that can run it here check
    /// [`Store::is_primary_node`] first.
    pub async fn call_primary_node<B, R>(&self, path: &str, body: &B) -> Result<R, StoreError>
    where
        B: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        let leader = self
            .primary_node_rpc_addr()
            .ok_or_else(|| StoreError::NoPrimaryNode("no primary node elected yet".into()))?;
        self.call_internal(&leader, path, body).await
    }

    /// POSTs `body` to another node's internal RPC `path` with the cluster secret and decodes
    /// the JSON answer. A request that certainly did not run there (not sent, or turned away
    /// before its handler: wrong secret, unknown route) is `NotSent`; one that was sent but
    /// whose answer was lost or unreadable is `OutcomeUnknown`.
    pub async fn call_internal<B, R>(
        &self,
        rpc_addr: &str,
        path: &str,
        body: &B,
    ) -> Result<R, StoreError>
    where
        B: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        let secret = self.identity().map(|i| i.secret).unwrap_or_default();
        let route = self.inner.routes.to(rpc_addr, &secret);
        self.call_by(&route, rpc_addr, path, body).await
    }

    /// [`Store::call_internal`] by a given route.
    pub(crate) async fn call_by<B, R>(
        &self,
        route: &network::Route,
        rpc_addr: &str,
        path: &str,
        body: &B,
    ) -> Result<R, StoreError>
    where
        B: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        let not_sent = |reason: String| StoreError::NotSent {
            addr: rpc_addr.to_string(),
            reason,
        };
        let unknown = |reason: String| StoreError::OutcomeUnknown {
            addr: rpc_addr.to_string(),
            reason: format!("{path}: {reason}"),
        };
        let response = route
            .request(reqwest::Method::POST, path)
            .timeout(Duration::from_secs(30))
            .json(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_builder() {
                    not_sent(e.to_string())
                } else {
                    unknown(format!("sent, but no answer came ({e})"))
                }
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unknown(format!("the answer was cut off ({e})")))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            let body = String::from_utf8_lossy(&bytes);
            // Handlers answer JSON. A 4xx or 503 comes from before the handler ran (the secret
            // check, an unknown route, a body the route could not read); any other answer may
            // come from after it (e.g. a 500 for an answer that could not be encoded).
            if status.is_client_error() || status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                not_sent(format!("answered {status}: {body}"))
            } else {
                unknown(format!(
                    "answered {status} with an unexpected body ({e}): {body}"
                ))
            }
        })
    }

    async fn start_raft(&self, identity: Identity) -> Result<Raft, StoreError> {
        if let Ok(raft) = self.raft() {
            return Ok(raft);
        }
        let config = openraft::Config {
            cluster_name: "flotilla".into(),
            heartbeat_interval: RAFT_HEARTBEAT.as_millis() as u64,
            election_timeout_min: ELECTION_TIMEOUT_MIN.as_millis() as u64,
            election_timeout_max: ELECTION_TIMEOUT_MAX.as_millis() as u64,
            enable_elect: !failpoint::campaign_disabled(),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
            max_in_snapshot_log_to_keep: LOG_KEPT_AFTER_SNAPSHOT,
            install_snapshot_timeout: SNAPSHOT_TRANSFER_TIMEOUT.as_millis() as u64,
            snapshot_max_chunk_size: transfer::LEGACY_CHUNK_BYTES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        let log_store = LogStore::new(self.inner.db.clone())
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let network = Network::new(self.inner.routes.clone(), identity.secret.clone());
        let identity_uid = identity.uid;
        let raft = Raft::new(
            identity.uid,
            Arc::new(config),
            network,
            log_store,
            self.inner.state_machine.clone(),
        )
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        *self.inner.identity.write().expect("identity lock") = Some(identity);
        *self.inner.raft.write().expect("raft lock") = Some(raft.clone());
        self.note_primary_terms(&raft, identity_uid);
        Ok(raft)
    }

    /// Stops the Raft member (used on daemon shutdown).
    pub async fn shutdown(&self) {
        if let Ok(raft) = self.raft() {
            let _ = raft.shutdown().await;
        }
    }

    fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }
}

struct RpcPolicy(Store);

impl listener::ListenPolicy for RpcPolicy {
    fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.0.tls().server_config()
    }

    fn plaintext_allowed(&self) -> bool {
        !self.0.state().tls_everywhere()
    }
}

/// A refused command as the store's error, other outcomes as they are: what every caller of
/// [`Store::propose`] gets (the wire keeps refusals inside `Ok` for 0.1.0 nodes).
fn refusal_as_error(
    answer: Result<CommandResult, StoreError>,
) -> Result<CommandResult, StoreError> {
    match answer? {
        CommandResult::Refused(e) => Err(StoreError::Refused(e)),
        other => Ok(other),
    }
}
