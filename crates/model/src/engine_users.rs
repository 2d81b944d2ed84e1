//! The engines' users and their passwords: one user per role, each with least privilege.
//!
//! Every shard's engine (Redis 6.2+ and Valkey, all with ACLs) has three Flotilla users:
//! [`ADMIN_USER`] for everything that manages an engine (agent, orchestrator, checks,
//! upgrades), [`PROXY_USER`] for the data path (what the proxy forwards, nothing that
//! administers the engine, also not from scripts) and [`REPLICATION_USER`], which replicas
//! authenticate to their primary with. The default user is off.
//!
//! The passwords are derived from the cluster secret with HMAC-SHA256, one label per role, so
//! no new replicated state (and no migration of state) is needed, and knowing an engine
//! password reveals neither the RPC secret nor another role's password.
//!
//! While a 0.1.0 node is a member (cluster version 0.1.0) its proxy and replicas log in as the
//! default user with the secret, so engines keep that login too ([`EngineCredentials::legacy`]);
//! once the cluster version is 0.2.0 each agent turns the default user off on its engines.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ModelError;
use crate::state::ClusterState;
use crate::version::{at_least, VERSIONED_RELEASE};

/// The user that manages an engine: the agent, the orchestrator, checks and upgrades.
pub const ADMIN_USER: &str = "flotilla-admin";
/// The proxy's user: the data path only.
pub const PROXY_USER: &str = "flotilla-proxy";
/// The user replicas authenticate to their primary with (`masteruser`).
pub const REPLICATION_USER: &str = "flotilla-replication";

/// The passwords of the engines' three Flotilla users.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineUsers {
    /// [`ADMIN_USER`]'s password.
    pub admin: String,
    /// [`PROXY_USER`]'s password.
    pub proxy: String,
    /// [`REPLICATION_USER`]'s password.
    pub replication: String,
}

impl std::fmt::Debug for EngineUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineUsers(<redacted>)")
    }
}

impl EngineUsers {
    /// The users' passwords derived from the cluster secret (see the module docs).
    pub fn derive(secret: &str) -> Self {
        EngineUsers {
            admin: derive_password(secret, ADMIN_USER),
            proxy: derive_password(secret, PROXY_USER),
            replication: derive_password(secret, REPLICATION_USER),
        }
    }
}

/// Everything a node needs to run engines and log in to them.
#[derive(Clone, PartialEq, Eq)]
pub struct EngineCredentials {
    /// The cluster secret: the default user's password of engines a 0.1.0 node started (and,
    /// while [`legacy`](Self::legacy), of every engine). Only a fallback login for 0.2.0 nodes.
    pub secret: String,
    /// The Flotilla users' passwords.
    pub users: EngineUsers,
    /// A 0.1.0 node may still be a member: engines keep the default user on with the secret,
    /// and replicas authenticate with it.
    pub legacy: bool,
}

impl std::fmt::Debug for EngineCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCredentials")
            .field("legacy", &self.legacy)
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 of a role label under the secret, as hex (64 characters, printable, no quotes:
/// safe in an engine config file).
fn derive_password(secret: &str, user: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any size");
    mac.update(b"flotilla engine user v1: ");
    mac.update(user.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ClusterState {
    /// The engines' credentials, or the error that says the cluster is not created yet.
    /// Legacy while the cluster version is older than 0.2.0 (see the module docs).
    pub fn engine_credentials(&self) -> Result<EngineCredentials, ModelError> {
        let secret = self.cluster()?.secret.clone();
        Ok(EngineCredentials {
            users: EngineUsers::derive(&secret),
            legacy: !at_least(self.cluster_version(), VERSIONED_RELEASE),
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_its_own_password_and_none_is_the_secret() {
        let users = EngineUsers::derive("s3cret");
        let all = [&users.admin, &users.proxy, &users.replication];
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.len(), 64);
            assert!(!a.contains("s3cret"));
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(users, EngineUsers::derive("s3cret"), "derivation is stable");
        assert_ne!(users.admin, EngineUsers::derive("other").admin);
    }

    #[test]
    fn the_derivation_is_pinned() {
        // Engines started by one software version must accept the logins of the next one;
        // the value is HMAC-SHA256 as Python's `hmac` computes it.
        assert_eq!(
            EngineUsers::derive("s3cret").proxy,
            "bfca1956756a0c00bc570541991166e1c9e75aa21c2f8a5c2bd93f0393f4d320"
        );
    }

    #[test]
    fn debug_hides_passwords() {
        let users = EngineUsers::derive("s3cret");
        let text = format!("{users:?}");
        assert!(!text.contains(&users.admin[..8]), "{text}");
    }
}
