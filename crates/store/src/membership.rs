//! Creating a cluster and joining one: the steps that give a node its uid and Raft membership.
//!
//! Join is two calls to the primary node, both safe to repeat:
//! 1. `/internal/join` (authenticated by the operator's credentials) records the node in the
//!    state (`AddNode`; a known address keeps its uid) and answers its uid and the secret;
//! 2. the joiner saves its identity and starts Raft, then `/internal/join/promote` makes the
//!    primary node add it as a learner, wait until it caught up, and turn it into a voter.
//!
//! Step 1 runs over TLS once the cluster has a CA: the joiner first fetches the CA's
//! certificate from the seed, checks its SHA-256 fingerprint against the one the operator gave
//! (`cluster join --cluster-ca-fingerprint`; without it, it trusts the CA on first use and logs
//! the fingerprint), and sends its request only over a connection whose certificate chains to
//! that CA and names the seed's address. The request carries a signing request for the key the
//! joiner made; the ticket carries its certificate, which it takes into use before it starts
//! Raft. A cluster without a CA (cluster version 0.1.0) is joined in plaintext, as before.
//!
//! A join that fails in step 1 leaves nothing behind; one interrupted after it can be run again
//! and resumes under the same uid.
//!
//! A replacing join (`cluster join --replace-node UID`, Redis Software's `replace_node`) asks
//! `/internal/join/replace` instead: the primary node checks that node UID does not answer,
//! takes it out of the Raft membership (a voter whose log and vote are gone must not count
//! towards a quorum), and gives its uid to the joiner (`ReplaceNode`); step 2 is the same. The
//! shards assigned to the uid stay assigned: the new node's agent creates them again, and
//! replicas sync from their primaries. A primary node of release 0.1.0 has no such route, so the
//! request fails without changing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use flotilla_model::{
    now_secs, ClusterCa, ClusterCreation, Command, CommandResult, Credentials, NodeAddition,
    NodeCertificate, NodeCertificateIssue, NodeReplacement, NodeSpec, NodeUid,
};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::certificates::{ClusterCaAnswer, CLUSTER_CA_PATH};
use crate::credentials::{check_login, hash_password, random_secret, Login, Throttle};
use crate::network::Route;
use crate::tls::{self, NodeCredentials};
use crate::types::RaftNode;
use crate::{Identity, Store, StoreError};

/// What a joining node sends to a cluster member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Operator user name.
    pub username: String,
    /// Operator password.
    pub password: String,
    /// The joining node.
    pub node: NodeSpec,
    /// The uid of the node it replaces (only on `/internal/join/replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_node: Option<NodeUid>,
    /// A signing request for the joiner's own key (PEM), signed when the cluster has a CA.
    /// Introduced in 0.2.0 (a 0.1.0 node ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// The route of a replacing join (step 1).
pub(crate) const JOIN_REPLACE_PATH: &str = "/internal/join/replace";

/// What the primary node answers a successful join request with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTicket {
    /// The joiner's uid.
    pub uid: NodeUid,
    /// The internal RPC secret.
    pub secret: String,
    /// The primary node's RPC address, for step 2 (JSON keeps 0.1.0's name).
    #[serde(rename = "leader_rpc_addr")]
    pub primary_node_rpc_addr: String,
    /// The joiner's certificate, signed by the cluster CA for its address (clusters with a
    /// CA; introduced in 0.2.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The cluster CA's certificate, the same the seed served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PromoteRequest {
    pub uid: NodeUid,
}

impl Store {
    /// Creates a cluster with this node as uid 1 and the primary node. Refused when this node
    /// already belongs to a cluster; resumes a create that was interrupted before it applied.
    pub async fn create_cluster(
        &self,
        name: String,
        username: String,
        password: String,
        node: NodeSpec,
    ) -> Result<NodeUid, StoreError> {
        let _guard = self.inner.bootstrap.lock().await;
        self.refuse_if_member()?;
        let identity = match self.identity() {
            Some(identity) if identity.uid == 1 => identity,
            Some(_) => return Err(self.already_member()),
            None => Identity {
                uid: 1,
                secret: random_secret(),
            },
        };
        // A cluster at version 0.2.0 has its CA from the start, and this node its certificate
        // before anything calls it: no call between nodes ever needs plaintext.
        let founding = match flotilla_model::at_least(
            &node.software_version,
            flotilla_model::VERSIONED_RELEASE,
        ) {
            true => Some(self.certify_founder(&name)?),
            false => None,
        };
        identity.save(self.data_dir())?;
        let raft = self.start_raft(identity.clone()).await?;
        let me = RaftNode {
            addr: self.config().rpc_addr_of(node.addr),
        };
        // Already initialized (a resumed create) is fine.
        let _ = raft.initialize(BTreeMap::from([(1, me)])).await;
        if self.wait_for_primary_node(Duration::from_secs(10)).await != Some(1) {
            return Err(StoreError::NoPrimaryNode(
                "this node did not become the primary node within 10 s".into(),
            ));
        }
        let command = Command::CreateCluster(ClusterCreation {
            name,
            credentials: flotilla_model::Credentials {
                username,
                password_hash: hash_password(&password),
            },
            secret: identity.secret,
            created_at: now_secs(),
            // A development build's version may not parse (tests say "test"): such a cluster
            // records none and counts as the first release.
            cluster_version: flotilla_model::at_least(&node.software_version, "0.0.0")
                .then(|| node.software_version.clone()),
            node,
        });
        let uid = match self.propose(command).await? {
            CommandResult::NodeAdded { uid } => uid,
            other => {
                return Err(StoreError::Internal(format!(
                    "unexpected outcome {other:?}"
                )))
            }
        };
        if let Some((ca, certificate)) = founding {
            self.record_founding(uid, ca, certificate).await?;
        }
        Ok(uid)
    }

    /// Makes the CA of a new cluster and this node's certificate from it, and takes the
    /// certificate into use; the caller records both once the cluster exists.
    fn certify_founder(&self, name: &str) -> Result<(ClusterCa, String), StoreError> {
        let ca = tls::make_ca(name)?;
        let key = tls::key_request(self.config().addr)?;
        let certificate = tls::sign(&ca, &key.csr, self.config().addr)?;
        self.tls().install(NodeCredentials {
            ca: ca.certificate.clone(),
            certificate: certificate.clone(),
            key: key.key,
        })?;
        Ok((ca, certificate))
    }

    /// Records a new cluster's CA and its first node's certificate. A create resumed after
    /// its CA was recorded keeps that CA ([`Store::keep_certificates`] then gives this node
    /// a certificate from it).
    async fn record_founding(
        &self,
        uid: NodeUid,
        ca: ClusterCa,
        certificate: String,
    ) -> Result<(), StoreError> {
        let fingerprint = tls::fingerprint(&ca.certificate)?;
        // The same lock as the node's certificate keeper, which would make a CA otherwise.
        let round = self.inner.certificates.lock().await;
        if self.state().cluster_ca().is_none() {
            self.propose(Command::SetClusterCa(ca)).await?;
            tracing::info!(%fingerprint, "made the cluster CA");
            let issue = NodeCertificateIssue {
                uid,
                certificate: NodeCertificate {
                    certificate,
                    rotation: 0,
                },
            };
            self.propose(Command::SetNodeCertificate(issue)).await?;
        }
        drop(round);
        self.keep_certificates().await
    }

    /// Joins the cluster that `seeds` (RPC addresses of members) belong to; with
    /// `replace_node`, in the place (and under the uid) of that node. With `ca_fingerprint`,
    /// only a cluster whose CA has that SHA-256 fingerprint.
    pub async fn join_cluster(
        &self,
        seeds: &[String],
        username: String,
        password: String,
        node: NodeSpec,
        replace_node: Option<NodeUid>,
        ca_fingerprint: Option<String>,
    ) -> Result<NodeUid, StoreError> {
        let _guard = self.inner.bootstrap.lock().await;
        self.refuse_if_member()?;
        if seeds.is_empty() {
            return Err(StoreError::InvalidRequest(
                "cluster.nodes is empty: name at least one address of a cluster member".into(),
            ));
        }
        let key = tls::key_request(node.addr)?;
        let request = JoinRequest {
            username,
            password,
            node,
            replace_node,
            csr: Some(key.csr),
        };
        let ticket = self
            .request_ticket(seeds, &request, ca_fingerprint.as_deref())
            .await?;
        if let Some(identity) = self.identity() {
            if identity.uid != ticket.uid {
                return Err(StoreError::AlreadyBootstrapped(format!(
                    "this node started joining as uid {} but the cluster answered uid {}; \
                     stop the daemon, empty its data dir and join again",
                    identity.uid, ticket.uid
                )));
            }
        }
        if let (Some(certificate), Some(ca)) = (&ticket.certificate, &ticket.ca_certificate) {
            self.tls().install(NodeCredentials {
                ca: ca.clone(),
                certificate: certificate.clone(),
                key: key.key,
            })?;
        }
        let identity = Identity {
            uid: ticket.uid,
            secret: ticket.secret.clone(),
        };
        identity.save(self.data_dir())?;
        self.start_raft(identity).await?;
        let promote = PromoteRequest { uid: ticket.uid };
        let promoted: Result<(), StoreError> = self
            .call_internal(
                &ticket.primary_node_rpc_addr,
                "/internal/join/promote",
                &promote,
            )
            .await?;
        promoted?;
        self.wait_until_listed(ticket.uid).await?;
        Ok(ticket.uid)
    }

    async fn request_ticket(
        &self,
        seeds: &[String],
        request: &JoinRequest,
        ca_fingerprint: Option<&str>,
    ) -> Result<JoinTicket, StoreError> {
        let mut last = None;
        for seed in seeds {
            let answer = self.ask_for_ticket(seed, request, ca_fingerprint).await;
            match answer {
                Ok(result) => return result,
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("seeds is not empty"))
    }

    /// Join step 1 at one seed: over TLS verified against the seed's CA once its fingerprint
    /// checked out, in plaintext when the seed has no CA (and no fingerprint was given).
    async fn ask_for_ticket(
        &self,
        seed: &str,
        request: &JoinRequest,
        ca_fingerprint: Option<&str>,
    ) -> Result<Result<JoinTicket, StoreError>, StoreError> {
        let path = match request.replace_node {
            Some(_) => JOIN_REPLACE_PATH,
            None => "/internal/join",
        };
        let refuse = |reason: String| Ok(Err(StoreError::InvalidRequest(reason)));
        let ca = match (self.seed_ca(seed).await, ca_fingerprint) {
            (Some(ca), _) => ca,
            (None, Some(_)) => {
                return refuse(format!(
                    "cluster_ca_fingerprint: the node at {seed} serves no cluster CA over TLS (a cluster at version 0.1.0 has none), so the fingerprint cannot be checked; join without it"
                ))
            }
            (None, None) => {
                tracing::warn!(%seed, "the cluster has no CA (cluster version 0.1.0): joining over plaintext RPC");
                let route = Route::plain(seed, self.http().clone(), "");
                return Ok(self.call_by(&route, seed, path, request).await);
            }
        };
        let fingerprint = tls::fingerprint(&ca)?;
        match ca_fingerprint {
            Some(given) if !tls::same_fingerprint(given, &fingerprint) => {
                return refuse(format!(
                    "cluster_ca_fingerprint: the cluster at {seed} has CA fingerprint {fingerprint}, not {given}; nothing was sent to it"
                ));
            }
            Some(_) => {
                tracing::info!(%seed, %fingerprint, "the cluster CA's fingerprint checked out")
            }
            None => {
                tracing::warn!(%seed, %fingerprint, "joining without --cluster-ca-fingerprint: trusting the cluster CA on first use")
            }
        }
        let config = tls::client_config(&ca, &tls::CertSlot::default())?;
        let route = Route::tls(seed, tls::https_client(self.config().addr, config));
        let answer: Result<JoinTicket, StoreError> =
            self.call_by(&route, seed, path, request).await?;
        Ok(answer.and_then(|ticket| match &ticket.ca_certificate {
            Some(answered) if *answered == ca => Ok(ticket),
            _ => Err(StoreError::InvalidRequest(format!(
                "the join answer of {seed} names another CA than the one it serves"
            ))),
        }))
    }

    /// The CA certificate `seed` (`ADDR:RPC_PORT` of any cluster's node) serves over TLS,
    /// `None` when it serves none (no TLS, or a cluster without a CA). Read over an unverified
    /// connection: the caller checks it (against `--cluster-ca-fingerprint` at a join, against
    /// the fingerprint the cluster's REST API names when a CRDB coordinator reads a peer's).
    pub async fn seed_ca(&self, seed: &str) -> Option<String> {
        let config = tls::unverified_client_config().ok()?;
        let client = tls::https_client(self.config().addr, config);
        let answer = client
            .get(format!("https://{seed}{CLUSTER_CA_PATH}"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let answer: ClusterCaAnswer = answer.json().await.ok()?;
        Some(answer.certificate)
    }

    /// The joiner's certificate and the CA's, when the cluster has a CA and the joiner sent a
    /// signing request: signed for the joiner's address and recorded in the state.
    async fn certify_joiner(
        &self,
        uid: NodeUid,
        request: &JoinRequest,
    ) -> Result<(Option<String>, Option<String>), StoreError> {
        let state = self.state();
        let (Some(ca), Some(csr)) = (state.cluster_ca(), &request.csr) else {
            return Ok((None, None));
        };
        let ask = crate::certificates::CertificateRequest {
            uid,
            csr: csr.clone(),
        };
        let certificate = self.issue_certificate(ask).await?;
        Ok((Some(certificate), Some(ca.certificate.clone())))
    }

    async fn wait_until_listed(&self, uid: NodeUid) -> Result<(), StoreError> {
        let mut changes = self.subscribe();
        let listed = async {
            changes
                .wait_for(|_| self.state().nodes.contains_key(&uid))
                .await
                .is_ok()
        };
        match tokio::time::timeout(Duration::from_secs(20), listed).await {
            Ok(true) => Ok(()),
            _ => Err(StoreError::Internal(format!(
                "joined as uid {uid} but the cluster state did not reach this node within 20 s"
            ))),
        }
    }

    fn refuse_if_member(&self) -> Result<(), StoreError> {
        let is_voter = self
            .uid()
            .is_some_and(|uid| self.voter_uids().contains(&uid));
        if is_voter && self.state().cluster.is_some() {
            return Err(self.already_member());
        }
        Ok(())
    }

    fn already_member(&self) -> StoreError {
        let name = self
            .state()
            .cluster
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_else(|| "(being created)".into());
        let uid = self.uid().unwrap_or_default();
        StoreError::AlreadyBootstrapped(format!(
            "this node is already node {uid} of cluster '{name}'; to start over, stop its daemon \
             and empty its data dir"
        ))
    }

    /// Primary node's handling of a join request (step 1). Forwards to the primary node when this
    /// node is not it.
    pub(crate) async fn admit(
        &self,
        request: JoinRequest,
        source: Option<IpAddr>,
    ) -> Result<JoinTicket, StoreError> {
        if !self.is_primary_node() {
            return self.forward_join("/internal/join", &request, source).await;
        }
        let state = self.state();
        let cluster = state.cluster()?;
        self.check_joiner(&cluster.credentials, &request, source)
            .await?;
        if let Some(existing) = state.node_by_addr(request.node.addr) {
            if self.voter_uids().contains(&existing.uid) {
                return Err(StoreError::AlreadyBootstrapped(format!(
                    "address {} is already node {} of cluster '{}'; remove that node first",
                    existing.addr, existing.uid, cluster.name
                )));
            }
        }
        let outcome = self
            .propose(Command::AddNode(NodeAddition {
                node: request.node.clone(),
            }))
            .await?;
        let uid = match outcome {
            CommandResult::NodeAdded { uid } | CommandResult::NodeExists { uid } => uid,
            other => {
                return Err(StoreError::Internal(format!(
                    "unexpected outcome {other:?}"
                )))
            }
        };
        let (certificate, ca_certificate) = self.certify_joiner(uid, &request).await?;
        Ok(JoinTicket {
            uid,
            secret: cluster.secret.clone(),
            primary_node_rpc_addr: self.primary_node_rpc_addr().unwrap_or_default(),
            certificate,
            ca_certificate,
        })
    }

    /// Primary node's handling of a replacing join (step 1): refused while the replaced node
    /// answers; otherwise that node leaves the Raft membership and the joiner gets its uid.
    pub(crate) async fn admit_replacement(
        &self,
        request: JoinRequest,
        source: Option<IpAddr>,
    ) -> Result<JoinTicket, StoreError> {
        if !self.is_primary_node() {
            return self.forward_join(JOIN_REPLACE_PATH, &request, source).await;
        }
        let state = self.state();
        let cluster = state.cluster()?;
        self.check_joiner(&cluster.credentials, &request, source)
            .await?;
        let uid = request.replace_node.ok_or_else(|| {
            StoreError::InvalidRequest(
                "replace_node: missing the uid of the node to replace".into(),
            )
        })?;
        if let Some(replaced) = state.nodes.get(&uid) {
            let rpc = self.config().rpc_addr_of(replaced.addr);
            let alive: Result<u64, StoreError> =
                self.call_internal(&rpc, "/internal/applied", &()).await;
            if alive.is_ok() {
                return Err(StoreError::InvalidRequest(format!(
                    "replace_node: node {uid} ({}) is running; stop its daemon on its machine first (a node is replaced only once it is gone), or remove it with `flotilla node remove {uid}`",
                    replaced.addr
                )));
            }
        }
        let command = Command::ReplaceNode(NodeReplacement {
            uid,
            node: request.node.clone(),
        });
        // Checked before the membership changes, so a refused replacement changes nothing.
        state.check_proposable(&command)?;
        self.remove_member(uid).await?;
        self.propose(command).await?;
        let (certificate, ca_certificate) = self.certify_joiner(uid, &request).await?;
        Ok(JoinTicket {
            uid,
            secret: cluster.secret.clone(),
            primary_node_rpc_addr: self.primary_node_rpc_addr().unwrap_or_default(),
            certificate,
            ca_certificate,
        })
    }

    /// The operator's credentials in a join request, checked through the login guard
    /// ([`check_login`]: argon2 off the async workers, failures slowed per source). A request
    /// forwarded by a member was already throttled there: its source is not counted here.
    async fn check_joiner(
        &self,
        credentials: &Credentials,
        request: &JoinRequest,
        source: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        let source = source.filter(|ip| !self.is_member_addr(*ip));
        let login = check_login(source, credentials, &request.username, &request.password).await;
        login_refusal(login, source).map_or(Ok(()), Err)
    }

    /// A join step 1 forwarded to the primary node by a member that is not it: a throttled
    /// source is refused here, and a refusal of its credentials counts against it here.
    async fn forward_join(
        &self,
        path: &str,
        request: &JoinRequest,
        source: Option<IpAddr>,
    ) -> Result<JoinTicket, StoreError> {
        let throttle = Throttle::process();
        if let Some(ip) = source {
            if let Some(retry_after) = throttle.wait_for(ip, Instant::now()) {
                let login = Login::Throttled { retry_after };
                return Err(login_refusal(login, source).expect("a throttled login is refused"));
            }
        }
        let answer = self.call_primary_node(path, request).await?;
        if let (Some(ip), Err(StoreError::Unauthorized)) = (source, &answer) {
            throttle.failed(ip, Instant::now());
        }
        answer
    }

    /// True when `ip` is the address of a voting member (a node whose daemon forwards joins).
    fn is_member_addr(&self, ip: IpAddr) -> bool {
        let voters = self.voter_uids();
        self.state()
            .node_by_addr(ip)
            .is_some_and(|node| voters.contains(&node.uid))
    }

    /// Primary node's step 2: learner, catch up, voter.
    pub(crate) async fn promote(&self, uid: NodeUid) -> Result<(), StoreError> {
        if !self.is_primary_node() {
            return self
                .call_primary_node("/internal/join/promote", &PromoteRequest { uid })
                .await?;
        }
        let state = self.state();
        let node = state.nodes.get(&uid).ok_or_else(|| {
            StoreError::InvalidRequest(format!("node {uid} has not been admitted"))
        })?;
        let raft = self.raft()?;
        let learner = RaftNode {
            addr: self.config().rpc_addr_of(node.addr),
        };
        let internal = |e: String| StoreError::Internal(e);
        tokio::time::timeout(
            Duration::from_secs(30),
            raft.add_learner(uid, learner, true),
        )
        .await
        .map_err(|_| internal(format!("node {uid} did not catch up within 30 s")))?
        .map_err(|e| internal(e.to_string()))?;
        let voters = ChangeMembers::AddVoterIds(BTreeSet::from([uid]));
        tokio::time::timeout(
            Duration::from_secs(30),
            raft.change_membership(voters, false),
        )
        .await
        .map_err(|_| internal(format!("making node {uid} a voter took over 30 s")))?
        .map_err(|e| internal(e.to_string()))?;
        Ok(())
    }
}

impl Store {
    /// Takes node `uid` out of the Raft membership (on the primary node, once the node is
    /// drained): it stops voting and receiving the log. Already out is fine.
    pub async fn remove_member(&self, uid: NodeUid) -> Result<(), StoreError> {
        let raft = self.raft()?;
        let membership = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voter = membership.voter_ids().any(|v| v == uid);
        let learner = membership.learner_ids().any(|l| l == uid);
        let change = match (voter, learner) {
            (true, _) => ChangeMembers::RemoveVoters(BTreeSet::from([uid])),
            (false, true) => ChangeMembers::RemoveNodes(BTreeSet::from([uid])),
            (false, false) => return Ok(()),
        };
        let removed = tokio::time::timeout(
            Duration::from_secs(30),
            raft.change_membership(change, false),
        )
        .await
        .map_err(|_| StoreError::OutcomeUnknown {
            addr: self.config().rpc_addr_of(self.config().addr),
            reason: format!("removing node {uid} from the membership took over 30 s"),
        })?;
        removed.map_err(|e| match e {
            openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            ) => match f.leader_id {
                Some(leader) => StoreError::NotPrimaryNode {
                    primary_node: leader,
                    rpc_addr: f.leader_node.map(|n| n.addr),
                },
                None => StoreError::NoPrimaryNode("no primary node elected yet".into()),
            },
            other => {
                StoreError::Internal(format!("removing node {uid} from the membership: {other}"))
            }
        })?;
        Ok(())
    }
}

/// The error a join answers for a login that was not accepted (`None` when it was). A
/// throttled or busy check travels as `invalid_request` with its reason: 0.1.0 nodes know no
/// other variant for it.
fn login_refusal(login: Login, source: Option<IpAddr>) -> Option<StoreError> {
    let from = source.map_or_else(String::new, |ip| format!(" from {ip}"));
    match login {
        Login::Accepted => None,
        Login::Refused => Some(StoreError::Unauthorized),
        Login::Throttled { retry_after } => Some(StoreError::InvalidRequest(format!(
            "too many failed logins{from}: try again in {} s",
            retry_after.as_secs().max(1)
        ))),
        Login::Busy => Some(StoreError::InvalidRequest(
            "the primary node is busy checking other logins: try again in a moment".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_ticket_keeps_the_json_of_0_1_0() {
        let old = r#"{"uid":3,"secret":"s3cret","leader_rpc_addr":"127.0.0.11:3333"}"#;
        let ticket: JoinTicket = serde_json::from_str(old).unwrap();
        assert_eq!(ticket.primary_node_rpc_addr, "127.0.0.11:3333");
        assert_eq!(serde_json::to_string(&ticket).unwrap(), old);
    }

    #[test]
    fn a_join_request_keeps_the_json_of_0_1_0_and_adds_its_signing_request_alone() {
        let old = r#"{"username":"admin","password":"pw","node":{"addr":"127.0.0.12","software_version":"0.1.0","os":"Debian GNU/Linux 12 (bookworm)"}}"#;
        let mut request: JoinRequest = serde_json::from_str(old).unwrap();
        assert_eq!(request.csr, None);
        assert_eq!(serde_json::to_string(&request).unwrap(), old);
        request.csr = Some("CSR".into());
        let new = serde_json::to_string(&request).unwrap();
        assert_eq!(new, old.replace("}}", r#"},"csr":"CSR"}"#));
        let ticket = r#"{"uid":3,"secret":"s3cret","leader_rpc_addr":"127.0.0.11:3333","certificate":"C","ca_certificate":"CA"}"#;
        let decoded: JoinTicket = serde_json::from_str(ticket).unwrap();
        assert_eq!(decoded.certificate.as_deref(), Some("C"));
        assert_eq!(serde_json::to_string(&decoded).unwrap(), ticket);
    }
}
