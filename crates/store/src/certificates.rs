//! Keeping each node's certificate current: the cluster CA made once the cluster version is
//! 0.2.0, a certificate for every node that has none, a new one after a rotation order.
//!
//! A node makes its key itself and sends only a signing request to the primary node
//! ([`SIGN_PATH`], over the authenticated RPC: mutual TLS when it has a certificate, else the
//! cluster secret); the primary node signs it for the node's address, records the certificate
//! in the state ([`Command::SetNodeCertificate`]) and answers it. The node then takes it into
//! use at once ([`crate::tls::NodeTls::install`]).

use std::net::IpAddr;
use std::time::Duration;

use flotilla_model::{Command, NodeCertificate, NodeCertificateIssue, NodeUid};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::tls::{self, NodeCredentials, TlsError};
use crate::{Store, StoreError};

/// The route that answers the cluster CA's certificate (public, no credential).
pub(crate) const CLUSTER_CA_PATH: &str = "/internal/cluster-ca";
/// The route by which a node asks the primary node for a certificate.
pub(crate) const SIGN_PATH: &str = "/internal/certificate";
/// How often a node checks its certificate when nothing changes in the state.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Pause after a failed attempt (no primary node, a primary node without the CA yet).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The answer of [`CLUSTER_CA_PATH`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClusterCaAnswer {
    pub certificate: String,
}

/// A node's request for a certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CertificateRequest {
    /// The node asking.
    pub uid: NodeUid,
    /// Its signing request (PEM).
    pub csr: String,
}

impl From<TlsError> for StoreError {
    fn from(e: TlsError) -> Self {
        StoreError::Internal(e.to_string())
    }
}

impl Store {
    /// The primary node's signing of a joiner's request, recorded in the state at once (the
    /// joiner takes it into use when it starts).
    pub(crate) async fn issue_certificate(
        &self,
        request: CertificateRequest,
    ) -> Result<String, StoreError> {
        let uid = request.uid;
        let (certificate, rotation) = self.sign_certificate(request, None)?;
        self.record_certificate(uid, certificate.clone(), rotation)
            .await?;
        Ok(certificate)
    }

    /// The primary node's signing of a node's request: the certificate names the node's
    /// address; answered with the rotation it belongs to. `peer` is the caller's address when
    /// it came over RPC: a node gets a certificate only for itself. Not recorded: a renewing
    /// node records it once it serves it, so that "every node has its new certificate" in the
    /// state means every node presents it.
    pub(crate) fn sign_certificate(
        &self,
        request: CertificateRequest,
        peer: Option<IpAddr>,
    ) -> Result<(String, u64), StoreError> {
        if !self.is_primary_node() {
            return Err(StoreError::NoPrimaryNode(
                "this node is not the primary node; ask the primary node".into(),
            ));
        }
        let state = self.state();
        let node = state.nodes.get(&request.uid).ok_or_else(|| {
            StoreError::InvalidRequest(format!("node {} is not in the cluster", request.uid))
        })?;
        if peer.is_some_and(|peer| peer != node.addr) {
            return Err(StoreError::InvalidRequest(format!(
                "a node asks for its own certificate only: node {} is at {}",
                node.uid, node.addr
            )));
        }
        let ca = state
            .cluster_ca()
            .ok_or_else(|| StoreError::InvalidRequest("the cluster has no CA yet".into()))?;
        let certificate = tls::sign(ca, &request.csr, node.addr)?;
        Ok((certificate, ca.rotation))
    }

    async fn record_certificate(
        &self,
        uid: NodeUid,
        certificate: String,
        rotation: u64,
    ) -> Result<(), StoreError> {
        let issue = NodeCertificateIssue {
            uid,
            certificate: NodeCertificate {
                certificate,
                rotation,
            },
        };
        self.propose(Command::SetNodeCertificate(issue)).await?;
        Ok(())
    }

    /// One round of keeping this node's TLS current: on the primary node of a cluster at
    /// version 0.2.0 without a CA, makes the CA; on a node whose certificate is missing, not
    /// the one the state records, or older than the last rotation order, gets a new one.
    pub async fn keep_certificates(&self) -> Result<(), StoreError> {
        let _round = self.inner.certificates.lock().await;
        let Some(uid) = self.uid() else {
            return Ok(());
        };
        let state = self.state();
        let Some(cluster) = state.cluster.as_ref() else {
            return Ok(());
        };
        let Some(ca) = state.cluster_ca() else {
            let versioned = flotilla_model::at_least(
                state.cluster_version(),
                flotilla_model::VERSIONED_RELEASE,
            );
            if versioned && self.is_primary_node() {
                let ca = tls::make_ca(&cluster.name)?;
                let fingerprint = tls::fingerprint(&ca.certificate)?;
                self.propose(Command::SetClusterCa(ca)).await?;
                tracing::info!(%fingerprint, "made the cluster CA");
            }
            return Ok(());
        };
        if !state.nodes.contains_key(&uid) {
            return Ok(());
        }
        let current = match (self.tls().credentials(), state.node_certificate(uid)) {
            (Some(local), Some(recorded)) => {
                local.certificate == recorded.certificate
                    && local.ca == ca.certificate
                    && recorded.rotation >= ca.rotation
            }
            _ => false,
        };
        if current {
            return Ok(());
        }
        let ca = ca.certificate.clone();
        self.renew_certificate(uid, ca).await
    }

    /// Makes a new key, has the primary node sign it, and takes the certificate into use.
    async fn renew_certificate(&self, uid: NodeUid, ca: String) -> Result<(), StoreError> {
        let request = tls::key_request(self.config().addr)?;
        let ask = CertificateRequest {
            uid,
            csr: request.csr,
        };
        let (certificate, rotation) = if self.is_primary_node() {
            self.sign_certificate(ask, None)?
        } else {
            let answer: Result<(String, u64), StoreError> =
                self.call_primary_node(SIGN_PATH, &ask).await?;
            answer?
        };
        self.tls().install(NodeCredentials {
            ca,
            certificate: certificate.clone(),
            key: request.key,
        })?;
        let serial = tls::serial_of(&certificate)?;
        tracing::info!(%serial, "took a new node certificate into use");
        self.record_certificate(uid, certificate, rotation).await
    }
}

/// Keeps the node's certificate current ([`Store::keep_certificates`]) whenever the state
/// changes, until `stop`.
pub async fn run_certificates(store: Store, mut stop: watch::Receiver<bool>) {
    let mut changes = store.subscribe();
    loop {
        let pause = match store.keep_certificates().await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e, "keeping the node certificate current");
                Some(RETRY_AFTER)
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
