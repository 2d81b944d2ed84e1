//! The cluster's certificate authority and its nodes' certificates, as the replicated state
//! records them (introduced in 0.2.0).
//!
//! The CA is made by the primary node once the cluster version is 0.2.0 (at `cluster create`,
//! or at the finalization of an upgrade from 0.1.0); its key lives in the state like the
//! cluster secret, so whichever node is the primary node can sign a joining node's request. A
//! node's own key never leaves the node: the state holds only its certificate, which tells
//! every peer that the node takes mutual TLS.

use serde::{Deserialize, Serialize};

use super::{ClusterState, NodeUid};
use crate::command::{CommandResult, NodeCertificateIssue};
use crate::error::ModelError;

/// The cluster's certificate authority: it signs every node's certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCa {
    /// The CA certificate (PEM): what every node and client trusts.
    pub certificate: String,
    /// The CA's private key (PEM); replicated like the cluster secret.
    pub key: String,
    /// How many rotations of the node certificates were ordered
    /// (`flotilla cluster certificates rotate`); a node whose certificate was issued at a lower
    /// count asks for a new one.
    #[serde(default)]
    pub rotation: u64,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("certificate", &self.certificate)
            .field("key", &"(redacted)")
            .field("rotation", &self.rotation)
            .finish()
    }
}

/// A node's certificate, signed by the cluster CA for the node's own key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificate {
    /// The certificate (PEM); its subject alternative name is the node's address.
    pub certificate: String,
    /// The [`ClusterCa::rotation`] it was issued at.
    #[serde(default)]
    pub rotation: u64,
}

impl ClusterState {
    /// The cluster CA, once the cluster has one.
    pub fn cluster_ca(&self) -> Option<&ClusterCa> {
        self.cluster.as_ref().and_then(|c| c.ca.as_ref())
    }

    /// The certificate of node `uid`, once it has one.
    pub fn node_certificate(&self, uid: NodeUid) -> Option<&NodeCertificate> {
        self.nodes.get(&uid).and_then(|n| n.certificate.as_ref())
    }

    /// True once the cluster has a CA and every node has a certificate from it: from then on
    /// node-to-node RPC is mutual TLS only and plaintext is refused.
    pub fn tls_everywhere(&self) -> bool {
        self.cluster_ca().is_some() && self.nodes.values().all(|n| n.certificate.is_some())
    }

    pub(super) fn set_cluster_ca(&mut self, ca: ClusterCa) -> Result<CommandResult, ModelError> {
        let cluster = self.cluster.as_mut().ok_or(ModelError::NotBootstrapped)?;
        if cluster.ca.is_some() {
            return Err(ModelError::AlreadyExists(
                "the cluster already has a certificate authority".into(),
            ));
        }
        cluster.ca = Some(ca);
        Ok(CommandResult::Ok)
    }

    pub(super) fn set_node_certificate(
        &mut self,
        issue: NodeCertificateIssue,
    ) -> Result<CommandResult, ModelError> {
        if self.cluster_ca().is_none() {
            return Err(ModelError::InvalidValue(
                "the cluster has no certificate authority yet".into(),
            ));
        }
        let node = self.nodes.get_mut(&issue.uid).ok_or_else(|| {
            ModelError::NotFound(format!("node {} is not in the cluster", issue.uid))
        })?;
        node.certificate = Some(issue.certificate);
        Ok(CommandResult::Ok)
    }

    pub(super) fn rotate_node_certificates(&mut self) -> Result<CommandResult, ModelError> {
        let cluster = self.cluster.as_mut().ok_or(ModelError::NotBootstrapped)?;
        let ca = cluster.ca.as_mut().ok_or_else(|| {
            ModelError::InvalidValue(
                "the cluster has no certificate authority yet (cluster version 0.2.0 makes one)"
                    .into(),
            )
        })?;
        ca.rotation += 1;
        Ok(CommandResult::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CertificateRotation, Command};
    use crate::state::testing::{add, create};

    fn ca() -> ClusterCa {
        ClusterCa {
            certificate: "CA".into(),
            key: "KEY".into(),
            rotation: 0,
        }
    }

    fn issue(uid: NodeUid, rotation: u64) -> Command {
        Command::SetNodeCertificate(NodeCertificateIssue {
            uid,
            certificate: NodeCertificate {
                certificate: format!("node {uid}"),
                rotation,
            },
        })
    }

    #[test]
    fn tls_is_everywhere_once_every_node_has_a_certificate_from_the_ca() {
        let mut state = ClusterState::default();
        state.apply(create());
        state.apply(add("127.0.0.12"));
        assert!(!state.tls_everywhere());
        assert!(matches!(
            state.apply(issue(1, 0)),
            CommandResult::Refused(_)
        ));
        assert_eq!(state.apply(Command::SetClusterCa(ca())), CommandResult::Ok);
        assert!(matches!(
            state.apply(Command::SetClusterCa(ca())),
            CommandResult::Refused(_)
        ));
        assert_eq!(state.apply(issue(1, 0)), CommandResult::Ok);
        assert!(!state.tls_everywhere(), "node 2 has no certificate yet");
        assert_eq!(state.apply(issue(2, 0)), CommandResult::Ok);
        assert!(state.tls_everywhere());
        assert!(matches!(
            state.apply(issue(9, 0)),
            CommandResult::Refused(_)
        ));
        let rotate = Command::RotateNodeCertificates(CertificateRotation {});
        assert_eq!(state.apply(rotate), CommandResult::Ok);
        assert_eq!(state.cluster_ca().unwrap().rotation, 1);
        assert!(!format!("{:?}", state.cluster_ca()).contains("KEY"));
    }
}
