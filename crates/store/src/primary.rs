//! Moving primary-ship (Raft leadership) to another node before this one goes away for a
//! moment: an in-place upgrade starts with the primary node (Redis Software's rule), and a node
//! whose daemon hands over should not be the one the cluster waits for.
//!
//! openraft 0.9 has no leadership transfer; the chosen node is asked to stand for election at
//! once (`/internal/elect`), which it wins when its log is as long as the others' (the primary
//! node waits for that first), and this node steps down on seeing the higher term. The same
//! move to a named node is `flotilla cluster promote` ([`Store::move_primary_node_to`]): no
//! election timeout passes, so there is no gap without a primary node beyond one vote.

use std::time::Duration;

use flotilla_model::timing::ELECTION_TIMEOUT_MAX;
use flotilla_model::{at_least, NodeUid, VERSIONED_RELEASE};
use tokio::time::Instant;

use crate::{Store, StoreError};

/// The internal route that makes a node stand for election.
pub(crate) const ELECT_PATH: &str = "/internal/elect";
/// How long a move of primary-ship may take.
const MOVE_DEADLINE: Duration = Duration::from_secs(10);
/// Waited beyond the followers' leader lease (openraft's lease is the longest election
/// timeout) before a candidate is asked to stand.
const LEASE_MARGIN: Duration = Duration::from_millis(200);

/// The term in which this node last became the primary node and the moment it saw that: a
/// new primary node refuses to vote for anyone else until its own leader lease (openraft's:
/// the longest election timeout since its vote changed) ran out, so a move of primary-ship
/// asked sooner fails and costs an election.
pub(crate) type PrimarySince = std::sync::Mutex<Option<(u64, Instant)>>;

/// Waited beyond this node's own leader lease before a candidate is asked to stand.
const OWN_LEASE_MARGIN: Duration = Duration::from_millis(100);

/// The primary node with its heartbeats off, for as long as it lives; they resume on drop.
struct QuietLeader(crate::Raft);

impl Drop for QuietLeader {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
    }
}

impl Store {
    /// Makes another node the primary node when this one is, and returns the new one's uid.
    /// Only nodes from the release that introduced the election route are asked; when none is
    /// up, the caller decides (a daemon handover then leaves the election to the timeouts).
    pub async fn move_primary_node_away(&self) -> Result<NodeUid, StoreError> {
        let me = self.uid().ok_or(StoreError::NotBootstrapped)?;
        if !self.is_primary_node() {
            return self
                .primary_node()
                .ok_or_else(|| StoreError::NoPrimaryNode("no primary node elected yet".into()));
        }
        let deadline = Instant::now() + MOVE_DEADLINE;
        let mut last =
            String::from("no other node can stand for election (none runs 0.2.0 or newer)");
        let candidates = self.election_candidates(me);
        let _quiet = if candidates.is_empty() {
            None
        } else {
            self.let_leases_lapse().await?
        };
        for candidate in candidates {
            let (uid, rpc) = candidate;
            if let Err(e) = self.wait_caught_up(uid, deadline).await {
                last = e.to_string();
                continue;
            }
            self.let_own_lease_lapse().await;
            let term = self.current_term();
            if let Err(e) = self.ask_to_stand(&rpc).await {
                last = format!("node {uid}: {e}");
                continue;
            }
            match self.election_outcome(me, term, deadline).await {
                Some(new) => return Ok(new),
                // It lost (e.g. its log was behind) and this node was elected again, or time
                // ran out: the next candidate, while time is left.
                None => {
                    last = format!("node {uid} was asked to stand for election but did not become the primary node");
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(StoreError::NoPrimaryNode(last))
    }

    /// Makes node `uid` the primary node (`flotilla cluster promote`), from the primary node:
    /// waits until its log caught up with this node's, then asks it to stand for election.
    pub async fn move_primary_node_to(&self, uid: NodeUid) -> Result<(), StoreError> {
        if self.primary_node() == Some(uid) {
            return Ok(());
        }
        if !self.is_primary_node() {
            return Err(StoreError::NotPrimaryNode {
                primary_node: self.primary_node().unwrap_or_default(),
                rpc_addr: self.primary_node_rpc_addr(),
            });
        }
        let state = self.state();
        let node = state.nodes.get(&uid).ok_or_else(|| {
            StoreError::InvalidRequest(format!(
                "node {uid} is not in the cluster; `flotilla status` lists the nodes"
            ))
        })?;
        if !self.voter_uids().contains(&uid) {
            return Err(StoreError::InvalidRequest(format!(
                "node {uid} is not a voting member yet (still joining); wait until `flotilla status` shows it up"
            )));
        }
        if !at_least(&node.software_version, VERSIONED_RELEASE) {
            return Err(StoreError::InvalidRequest(format!(
                "node {uid} runs {}, which cannot be asked to stand for election; upgrade it first (`flotilla upgrade node {uid} --package PACKAGE`)",
                node.software_version
            )));
        }
        let deadline = Instant::now() + MOVE_DEADLINE;
        self.wait_caught_up(uid, deadline).await?;
        let _quiet = self.let_leases_lapse().await?;
        self.let_own_lease_lapse().await;
        let rpc = self.config().rpc_addr_of(node.addr);
        self.ask_to_stand(&rpc).await?;
        while Instant::now() < deadline {
            if self.primary_node() == Some(uid) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(StoreError::NoPrimaryNode(format!(
            "node {uid} was asked to stand for election but did not become the primary node within {MOVE_DEADLINE:?}; `flotilla status` shows the primary node now"
        )))
    }

    /// Waits until another node is the primary node (its uid), or until this one is the
    /// primary node again in a newer term than `term` (the candidate lost), or `deadline`.
    async fn election_outcome(&self, me: NodeUid, term: u64, deadline: Instant) -> Option<NodeUid> {
        while Instant::now() < deadline {
            match self.primary_node() {
                Some(primary) if primary != me => return Some(primary),
                Some(_) if self.current_term() > term => return None,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        None
    }

    /// Records the term and moment each time this node becomes the primary node, for as long as
    /// `raft` runs (see [`PrimarySince`]).
    pub(crate) fn note_primary_terms(&self, raft: &crate::Raft, me: NodeUid) {
        let store = self.clone();
        let mut metrics = raft.metrics();
        tokio::spawn(async move {
            loop {
                let (leader, term) = {
                    let m = metrics.borrow_and_update();
                    (m.current_leader, m.current_term)
                };
                if leader == Some(me) {
                    let mut since = store.inner.primary_since.lock().expect("primary_since");
                    if since.map(|(t, _)| t) != Some(term) {
                        *since = Some((term, Instant::now()));
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Waits until this node's own leader lease ran out, so that it grants its vote to the
    /// candidate it asks to stand (with up to three voters that vote decides).
    async fn let_own_lease_lapse(&self) {
        let since = *self.inner.primary_since.lock().expect("primary_since");
        if let Some((term, at)) = since {
            if term == self.current_term() {
                tokio::time::sleep_until(at + ELECTION_TIMEOUT_MAX + OWN_LEASE_MARGIN).await;
            }
        }
    }

    /// The Raft term this node is in (0 before Raft runs).
    fn current_term(&self) -> u64 {
        self.raft()
            .map(|raft| raft.metrics().borrow().current_term)
            .unwrap_or(0)
    }

    /// A candidate wins at once with its own vote and this node's (the primary node grants it:
    /// its own lease is not renewed by heartbeats) in a cluster of up to three voters. With more,
    /// the other voters refuse to vote while their leader lease runs (openraft renews it with
    /// every heartbeat): this node stops sending heartbeats (it stays the primary node and still
    /// replicates every change) until the leases lapsed, and the candidate then wins its first
    /// vote, before any follower's own election timeout (lease plus election timeout) fires.
    async fn let_leases_lapse(&self) -> Result<Option<QuietLeader>, StoreError> {
        if self.voter_uids().len() <= 3 {
            return Ok(None);
        }
        let raft = self.raft()?;
        raft.runtime_config().heartbeat(false);
        let quiet = QuietLeader(raft);
        tokio::time::sleep(ELECTION_TIMEOUT_MAX + LEASE_MARGIN).await;
        Ok(Some(quiet))
    }

    /// Asks the node at `rpc` to stand for election now (its route answers the outcome as a
    /// `Result`).
    async fn ask_to_stand(&self, rpc: &str) -> Result<(), StoreError> {
        let answer: Result<(), StoreError> = self.call_internal(rpc, ELECT_PATH, &()).await?;
        answer
    }

    /// Waits until node `uid` holds every log entry this node (the primary node) has.
    async fn wait_caught_up(&self, uid: NodeUid, deadline: Instant) -> Result<(), StoreError> {
        let raft = self.raft()?;
        loop {
            let metrics = raft.metrics().borrow().clone();
            let last = metrics.last_log_index.unwrap_or(0);
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&uid).cloned().flatten())
                .map_or(0, |log_id| log_id.index);
            if matched >= last {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StoreError::Internal(format!(
                    "node {uid} did not catch up with the primary node's log within {MOVE_DEADLINE:?} (at {matched} of {last}); is it up?"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Other voting nodes that know the election route, most caught up first.
    fn election_candidates(&self, me: NodeUid) -> Vec<(NodeUid, String)> {
        let state = self.state();
        let voters = self.voter_uids();
        let matched = self
            .raft()
            .ok()
            .and_then(|raft| raft.metrics().borrow().replication.clone())
            .unwrap_or_default();
        let mut candidates: Vec<(u64, NodeUid, String)> = state
            .nodes
            .values()
            .filter(|n| n.uid != me && voters.contains(&n.uid))
            .filter(|n| at_least(&n.software_version, VERSIONED_RELEASE))
            .map(|n| {
                let index = matched
                    .get(&n.uid)
                    .and_then(|m| m.as_ref().map(|log_id| log_id.index))
                    .unwrap_or(0);
                (index, n.uid, self.config().rpc_addr_of(n.addr))
            })
            .collect();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        candidates
            .into_iter()
            .map(|(_, uid, rpc)| (uid, rpc))
            .collect()
    }

    /// Stands for election now (the route another node calls to hand primary-ship over).
    /// Failpoint [`crate::failpoint::TAKE_PRIMARY`] (`error`) refuses, so a test keeps a node
    /// (e.g. the one its load runs through) from ever becoming the primary node.
    pub(crate) async fn elect_now(&self) -> Result<(), StoreError> {
        use crate::failpoint::{hit, Phase, TAKE_PRIMARY};
        hit(TAKE_PRIMARY, Phase::Before)
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let raft = self.raft()?;
        raft.trigger()
            .elect()
            .await
            .map_err(|e| StoreError::Internal(format!("standing for election: {e}")))
    }
}
