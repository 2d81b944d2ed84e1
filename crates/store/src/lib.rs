//! The cluster store: the replicated, durable truth of a Flotilla cluster.
//!
//! One openraft member per node, with its log and state machine in the node's redb database
//! (`DATA_DIR/store.redb`). Everything else (API, orchestrator, agent, proxy) reads the state
//! from here and changes it only by proposing a [`flotilla_model::Command`] with
//! [`Store::propose`]; a proposal made on a secondary node is forwarded to the primary node.
//!
//! A node starts without Raft; `create_cluster` makes it uid 1 and initializes Raft,
//! `join_cluster` gets a uid from the primary, starts Raft and becomes a voter.

// openraft's StorageError is large and its traits dictate it; boxing it here would only add
// conversions at every trait boundary.
#![allow(clippy::result_large_err)]

mod credentials;
mod error;
mod follow;
mod identity;
mod log_store;
mod membership;
mod network;
pub mod rpc;
mod state_machine;
mod types;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_model::timing::{ELECTION_TIMEOUT_MAX, ELECTION_TIMEOUT_MIN, RAFT_HEARTBEAT};
use flotilla_model::{ClusterState, Command, CommandResult, ModelError, NodeUid};
use openraft::error::{ClientWriteError, RaftError};
use redb::Database;
use tokio::sync::watch;

pub use credentials::{hash_password, verify as verify_credentials};
pub use error::StoreError;
pub use follow::{publish_if_changed, Wake, Wakes};
pub use identity::Identity;
pub use membership::{JoinRequest, JoinTicket};
pub use network::{internal_http_client, SECRET_HEADER};
pub use types::{NodeId, Raft, TypeConfig};

use log_store::LogStore;
use network::Network;
use state_machine::StateMachine;

/// How long a proposal keeps trying to reach a primary node before giving up.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

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
    bootstrap: tokio::sync::Mutex<()>,
}

impl Store {
    /// Opens the store in the data dir and, when this node already belongs to a cluster,
    /// starts its Raft member.
    pub async fn open(config: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let db = Database::create(config.data_dir.join("store.redb"))
            .map_err(|e| StoreError::Internal(format!("opening store.redb: {e}")))?;
        let db = Arc::new(db);
        let state_machine =
            StateMachine::open(db.clone()).map_err(|e| StoreError::Internal(e.to_string()))?;
        let identity = Identity::load(&config.data_dir)?;
        let store = Store {
            inner: Arc::new(Inner {
                http: internal_http_client(config.addr),
                config,
                db,
                state_machine,
                raft: RwLock::new(None),
                identity: RwLock::new(None),
                bootstrap: tokio::sync::Mutex::new(()),
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

    /// The uid of the primary node (Raft leader) as this node knows it.
    pub fn leader(&self) -> Option<NodeUid> {
        let raft = self.raft().ok()?;
        let leader = raft.metrics().borrow().current_leader;
        leader
    }

    /// True when this node is the primary node.
    pub fn is_leader(&self) -> bool {
        self.uid().is_some() && self.leader() == self.uid()
    }

    /// The RPC address (`ip:port`) of the primary node, from Raft's membership.
    pub fn leader_rpc_addr(&self) -> Option<String> {
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

    /// The HTTP client for node-to-node calls.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
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

    /// Proposes a command and returns its replicated outcome. On a secondary node the command is
    /// forwarded to the primary node; while there is no primary it retries until a deadline.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, StoreError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        loop {
            let attempt = match self.propose_local(command.clone()).await {
                Err(StoreError::NoLeader(_)) => self.forward_to_leader(&command).await,
                other => other,
            };
            match attempt {
                Err(StoreError::NoLeader(_) | StoreError::Unreachable { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    self.wait_for_leader(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    /// Proposes on this node only: `NoLeader` when this node is not the primary.
    pub async fn propose_local(&self, command: Command) -> Result<CommandResult, StoreError> {
        self.propose_indexed(command)
            .await
            .map(|(result, _)| result)
    }

    /// Proposes on this node (the primary) and returns the outcome with the entry's log index,
    /// so the caller can wait until other nodes have applied it ([`Store::applied_index`]).
    pub async fn propose_indexed(
        &self,
        command: Command,
    ) -> Result<(CommandResult, u64), StoreError> {
        let raft = self.raft()?;
        let write = tokio::time::timeout(PROPOSE_DEADLINE, raft.client_write(command));
        match write.await {
            Ok(Ok(response)) => Ok((response.data, response.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(
                StoreError::NoLeader(format!("node {:?} is the primary", f.leader_id)),
            ),
            Ok(Err(e)) => Err(StoreError::Internal(e.to_string())),
            Err(_) => Err(StoreError::Internal(
                "the change was not committed within 10 s (quorum lost?); it may still apply"
                    .into(),
            )),
        }
    }

    async fn forward_to_leader(&self, command: &Command) -> Result<CommandResult, StoreError> {
        let leader = self
            .leader_rpc_addr()
            .ok_or_else(|| StoreError::NoLeader("no leader elected yet".into()))?;
        self.call_internal(&leader, "/internal/propose", command)
            .await?
    }

    /// Waits (bounded) until some node is known as the primary.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeUid> {
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

    /// POSTs `body` to another node's internal RPC `path` with the cluster secret and decodes
    /// the JSON answer. Transport failures become `Unreachable`.
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
        let unreachable = |reason: String| StoreError::Unreachable {
            addr: rpc_addr.to_string(),
            reason,
        };
        let response = self
            .inner
            .http
            .post(format!("http://{rpc_addr}{path}"))
            .header(SECRET_HEADER, secret)
            .timeout(Duration::from_secs(30))
            .json(body)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            unreachable(format!(
                "answered {status} with an unexpected body ({e}): {}",
                String::from_utf8_lossy(&bytes)
            ))
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
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
            max_in_snapshot_log_to_keep: 500,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        let log_store = LogStore::new(self.inner.db.clone())
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let network = Network::new(self.inner.http.clone(), identity.secret.clone());
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

/// Maps a refused command to the store's error, keeping other outcomes.
pub fn refused_to_error(result: CommandResult) -> Result<CommandResult, StoreError> {
    match result {
        CommandResult::Refused(e) => Err(StoreError::Refused(e)),
        other => Ok(other),
    }
}

impl From<ModelError> for StoreError {
    fn from(e: ModelError) -> Self {
        StoreError::Refused(e)
    }
}
