//! Errors of the cluster store, shaped so they can cross nodes when a request is forwarded.
//!
//! A [`StoreError`] says what the caller may do next: redirect
//! ([`StoreError::NotPrimaryNode`]), retry ([`StoreError::NotSent`],
//! [`StoreError::NoPrimaryNode`]), check before doing anything again
//! ([`StoreError::OutcomeUnknown`]) or give up (a refusal, bad credentials, ...).
//!
//! On the wire (inside `/internal/propose` and `/internal/join*` answers) every error keeps the
//! JSON of 0.1.0 (`{"kind": ..., "description": ...}`), so an older node decodes what a newer
//! one sends: a variant 0.1.0 does not know travels as the 0.1.0 variant closest in meaning
//! (`NotPrimaryNode` as `no_leader`, `OutcomeUnknown` as `internal`), with its details in an extra
//! field that older nodes ignore and newer nodes read back.

use flotilla_model::{ModelError, NodeUid};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a store operation failed. Serializable: a follower that forwards a proposal or a join to
/// the primary node hands the primary's error back to its caller unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// This node has not created or joined a cluster.
    #[error("this node is not part of a cluster yet: run `flotilla cluster create` or `flotilla cluster join`")]
    NotBootstrapped,
    /// This node already belongs to a cluster (create/join refused).
    #[error("{0}")]
    AlreadyBootstrapped(String),
    /// Wrong user name or password.
    #[error("wrong user name or password for the cluster")]
    Unauthorized,
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Refused(ModelError),
    /// No primary node is known right now (election in progress or quorum lost).
    #[error("no primary node is reachable right now (election in progress or quorum lost): {0}")]
    NoPrimaryNode(String),
    /// This node is not the primary node; the request must go to `primary_node`. Nothing was
    /// done.
    #[error("this node is not the primary node; node {primary_node}{} is: the request must be sent there", at(.rpc_addr))]
    NotPrimaryNode {
        /// The primary node's uid.
        primary_node: NodeUid,
        /// Its internal RPC address (`ip:port`), when this node knows it.
        rpc_addr: Option<String>,
    },
    /// A request to another node was certainly not run there: it could not be sent (connection
    /// refused, no route), or that node turned it away before running it (wrong secret, not a
    /// member, unknown route). Safe to send again.
    #[error("node {addr} did not run the request (it was not sent or was turned away: {reason}); nothing changed there")]
    NotSent {
        /// The node's RPC address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// A request reached a node (or a change was handed to Raft) but its answer was lost or is
    /// not known yet: the change may have been applied, or may still be. Never sent again
    /// blindly; the caller checks the cluster state first.
    #[error("the outcome is unknown: {reason} (node {addr}); the change may have been applied, or may still be: check the cluster state before trying again")]
    OutcomeUnknown {
        /// The node that was asked (its RPC address), or `local` for this node's Raft.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// A request did not make sense (e.g. a join naming no seed node).
    #[error("{0}")]
    InvalidRequest(String),
    /// A local storage or Raft failure.
    #[error("cluster store failure: {0}")]
    Internal(String),
    /// This node's `store.redb` cannot be opened (held, damaged, disk full); says what to do.
    /// Never crosses nodes as such: on the wire it travels as `internal`.
    #[error(transparent)]
    StoreFile(#[from] crate::store_file::StoreFileError),
}

fn at(rpc_addr: &Option<String>) -> String {
    rpc_addr
        .as_deref()
        .map(|addr| format!(" (at {addr})"))
        .unwrap_or_default()
}

impl StoreError {
    /// True when the request certainly did not run and may be sent again as it is (after the
    /// primary node is known again, for `NoPrimaryNode` and `NotPrimaryNode`).
    pub fn is_safe_to_retry(&self) -> bool {
        matches!(
            self,
            StoreError::NoPrimaryNode(_)
                | StoreError::NotPrimaryNode { .. }
                | StoreError::NotSent { .. }
        )
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Internal(e.to_string())
    }
}

impl From<ModelError> for StoreError {
    fn from(e: ModelError) -> Self {
        StoreError::Refused(e)
    }
}

/// The JSON of [`StoreError`] as 0.1.0 encodes and decodes it: adjacently tagged by `kind`.
/// Never change a variant's name or content here; 0.1.0 nodes read and write exactly this.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", content = "description", rename_all = "snake_case")]
enum Known010 {
    NotBootstrapped,
    AlreadyBootstrapped(String),
    Unauthorized,
    Refused(ModelError),
    NoLeader(String),
    Unreachable { addr: String, reason: String },
    InvalidRequest(String),
    Internal(String),
}

/// Where the primary node is, beside a `no_leader` error (newer nodes only).
#[derive(Serialize, Deserialize)]
struct LeaderHint {
    uid: NodeUid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rpc_addr: Option<String>,
}

/// Which node was asked and what happened, beside an `internal` error whose outcome is
/// unknown (newer nodes only).
#[derive(Serialize, Deserialize)]
struct UnknownOutcome {
    addr: String,
    reason: String,
}

/// The wire form: the 0.1.0 JSON plus optional fields that older nodes ignore.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(flatten)]
    known: Known010,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    leader: Option<LeaderHint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome_unknown: Option<UnknownOutcome>,
}

impl From<&StoreError> for Wire {
    fn from(e: &StoreError) -> Self {
        let plain = |known| Wire {
            known,
            leader: None,
            outcome_unknown: None,
        };
        match e.clone() {
            StoreError::NotBootstrapped => plain(Known010::NotBootstrapped),
            StoreError::AlreadyBootstrapped(s) => plain(Known010::AlreadyBootstrapped(s)),
            StoreError::Unauthorized => plain(Known010::Unauthorized),
            StoreError::Refused(m) => plain(Known010::Refused(m)),
            StoreError::NoPrimaryNode(s) => plain(Known010::NoLeader(s)),
            StoreError::NotPrimaryNode {
                primary_node,
                rpc_addr,
            } => Wire {
                known: Known010::NoLeader(format!("node {primary_node} is the primary node")),
                leader: Some(LeaderHint {
                    uid: primary_node,
                    rpc_addr,
                }),
                outcome_unknown: None,
            },
            StoreError::NotSent { addr, reason } => plain(Known010::Unreachable { addr, reason }),
            StoreError::OutcomeUnknown { addr, reason } => Wire {
                known: Known010::Internal(e.to_string()),
                leader: None,
                outcome_unknown: Some(UnknownOutcome { addr, reason }),
            },
            StoreError::InvalidRequest(s) => plain(Known010::InvalidRequest(s)),
            StoreError::Internal(s) => plain(Known010::Internal(s)),
            StoreError::StoreFile(f) => plain(Known010::Internal(f.to_string())),
        }
    }
}

impl From<Wire> for StoreError {
    fn from(wire: Wire) -> Self {
        if let Some(UnknownOutcome { addr, reason }) = wire.outcome_unknown {
            return StoreError::OutcomeUnknown { addr, reason };
        }
        match (wire.known, wire.leader) {
            (Known010::NoLeader(_), Some(LeaderHint { uid, rpc_addr })) => {
                StoreError::NotPrimaryNode {
                    primary_node: uid,
                    rpc_addr,
                }
            }
            (Known010::NotBootstrapped, _) => StoreError::NotBootstrapped,
            (Known010::AlreadyBootstrapped(s), _) => StoreError::AlreadyBootstrapped(s),
            (Known010::Unauthorized, _) => StoreError::Unauthorized,
            (Known010::Refused(m), _) => StoreError::Refused(m),
            (Known010::NoLeader(s), None) => StoreError::NoPrimaryNode(s),
            (Known010::Unreachable { addr, reason }, _) => StoreError::NotSent { addr, reason },
            (Known010::InvalidRequest(s), _) => StoreError::InvalidRequest(s),
            (Known010::Internal(s), _) => StoreError::Internal(s),
        }
    }
}

impl Serialize for StoreError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire::from(self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StoreError {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Wire::deserialize(deserializer).map(StoreError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `StoreError` exactly as 0.1.0 (commit 07de9e1) derives its serde: what an old node
    /// encodes and decodes.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind", content = "description", rename_all = "snake_case")]
    enum OldStoreError {
        NotBootstrapped,
        AlreadyBootstrapped(String),
        Unauthorized,
        Refused(ModelError),
        NoLeader(String),
        Unreachable { addr: String, reason: String },
        InvalidRequest(String),
        Internal(String),
    }

    /// Every variant 0.1.0 knows, in 0.1.0's JSON, with the error a new node reads from it.
    fn old_samples() -> Vec<(serde_json::Value, StoreError)> {
        vec![
            (
                json!({"kind": "not_bootstrapped"}),
                StoreError::NotBootstrapped,
            ),
            (
                json!({"kind": "already_bootstrapped", "description": "node 2 of 'c'"}),
                StoreError::AlreadyBootstrapped("node 2 of 'c'".into()),
            ),
            (json!({"kind": "unauthorized"}), StoreError::Unauthorized),
            (
                json!({"kind": "refused", "description": {"error_code": "already_exists", "description": "database 'a' exists"}}),
                StoreError::Refused(ModelError::AlreadyExists("database 'a' exists".into())),
            ),
            (
                json!({"kind": "refused", "description": {"error_code": "not_bootstrapped"}}),
                StoreError::Refused(ModelError::NotBootstrapped),
            ),
            (
                json!({"kind": "no_leader", "description": "no leader elected yet"}),
                StoreError::NoPrimaryNode("no leader elected yet".into()),
            ),
            (
                json!({"kind": "unreachable", "description": {"addr": "127.0.0.12:3333", "reason": "connection refused"}}),
                StoreError::NotSent {
                    addr: "127.0.0.12:3333".into(),
                    reason: "connection refused".into(),
                },
            ),
            (
                json!({"kind": "invalid_request", "description": "no seed"}),
                StoreError::InvalidRequest("no seed".into()),
            ),
            (
                json!({"kind": "internal", "description": "disk full"}),
                StoreError::Internal("disk full".into()),
            ),
        ]
    }

    #[test]
    fn every_error_0_1_0_knows_keeps_its_json_both_ways() {
        for (json, error) in old_samples() {
            let decoded: StoreError = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(decoded, error, "decoding {json}");
            assert_eq!(
                serde_json::to_value(&error).unwrap(),
                json,
                "encoding {error:?}"
            );
            let old: OldStoreError = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(
                serde_json::to_value(&old).unwrap(),
                json,
                "0.1.0 round trip"
            );
        }
    }

    #[test]
    fn a_not_primary_node_error_travels_as_no_leader_with_the_primary_node_beside_it() {
        let error = StoreError::NotPrimaryNode {
            primary_node: 2,
            rpc_addr: Some("127.0.0.12:3333".into()),
        };
        let json = serde_json::to_value(&error).unwrap();
        assert_eq!(
            json,
            json!({
                "kind": "no_leader",
                "description": "node 2 is the primary node",
                "leader": {"uid": 2, "rpc_addr": "127.0.0.12:3333"},
            })
        );
        let old: OldStoreError = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            old,
            OldStoreError::NoLeader("node 2 is the primary node".into())
        );
        assert_eq!(serde_json::from_value::<StoreError>(json).unwrap(), error);
    }

    #[test]
    fn an_unknown_outcome_travels_as_internal_with_its_details_beside_it() {
        let error = StoreError::OutcomeUnknown {
            addr: "127.0.0.11:3333".into(),
            reason: "the answer was lost".into(),
        };
        let json = serde_json::to_value(&error).unwrap();
        assert_eq!(
            json,
            json!({
                "kind": "internal",
                "description": error.to_string(),
                "outcome_unknown": {"addr": "127.0.0.11:3333", "reason": "the answer was lost"},
            })
        );
        // A 0.1.0 node does not retry an internal error: it never re-proposes blindly either.
        let old: OldStoreError = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(old, OldStoreError::Internal(error.to_string()));
        assert_eq!(serde_json::from_value::<StoreError>(json).unwrap(), error);
    }

    #[test]
    fn forwarded_answers_keep_their_0_1_0_json() {
        // `/internal/propose` and `/internal/join*` answer `Result<_, StoreError>`.
        let answer: Result<(), StoreError> = Err(StoreError::NoPrimaryNode("x".into()));
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(
            json,
            json!({"Err": {"kind": "no_leader", "description": "x"}})
        );
        let old: Result<(), OldStoreError> = serde_json::from_value(json).unwrap();
        assert_eq!(old, Err(OldStoreError::NoLeader("x".into())));
    }

    #[test]
    fn only_errors_of_requests_that_did_not_run_are_safe_to_retry() {
        let not_sent = StoreError::NotSent {
            addr: "a".into(),
            reason: "refused".into(),
        };
        let unknown = StoreError::OutcomeUnknown {
            addr: "a".into(),
            reason: "lost".into(),
        };
        assert!(not_sent.is_safe_to_retry());
        assert!(StoreError::NoPrimaryNode("x".into()).is_safe_to_retry());
        assert!(StoreError::NotPrimaryNode {
            primary_node: 2,
            rpc_addr: None
        }
        .is_safe_to_retry());
        assert!(!unknown.is_safe_to_retry());
        assert!(!StoreError::Refused(ModelError::NotFound("x".into())).is_safe_to_retry());
        assert!(!StoreError::Internal("x".into()).is_safe_to_retry());
    }
}
