//! The engine's ACL users: what each Flotilla role may run, written into the engine config at
//! start and installed with `ACL SETUSER` on an engine that runs already (one a 0.1.0 daemon
//! started, moved to the new scheme once the cluster version allows it), and how a client logs
//! in ([`EngineLogin`]).
//!
//! Rules hold on every engine family Flotilla ships (redis 6.2, 7.0, valkey 8.1, 9.1). Redis
//! and Valkey check ACLs for `redis.call` inside scripts and functions too, so the proxy user
//! cannot reach an administrative command through `EVAL` either.

use flotilla_model::{EngineCredentials, EngineUsers, ADMIN_USER, PROXY_USER, REPLICATION_USER};

use crate::EngineVersion;

/// What the proxy may not run, beyond the `@admin` and `@dangerous` categories: commands the
/// proxy refuses or answers itself, which reach other databases, other clients or other
/// servers.
const PROXY_DENIED: &[&str] = &["select", "swapdb", "move", "migrate", "client", "memory"];

/// Commands of the `@admin`/`@dangerous` categories that the proxy forwards for clients
/// (crates/proxy/COMMANDS.md), given back to the proxy user; none administers the engine.
/// `info` is read-only: the endpoint answers INFO from its shards' INFO replies combined.
const PROXY_FORWARDED_DANGEROUS: &[&str] = &[
    "flushall", "flushdb", "info", "keys", "lastsave", "restore", "sort",
];

/// Commands of the `@admin`/`@dangerous` categories the proxy runs itself, for the outcome of
/// writes in flight when a master dies (crates/proxy/src/outcome.rs): `ROLE` after writes on
/// its shared connections (the master's replication offset); it also reads `INFO replication`
/// (the stream a promoted replica came from and where it left it), which
/// [`PROXY_FORWARDED_DANGEROUS`] gives it. It only reads; the proxy refuses `ROLE` from clients.
const PROXY_REPLICATION_READS: &[&str] = &["role"];

/// The admin user may do everything the agent and upgrades need (CONFIG, REPLICAOF, CLIENT
/// PAUSE, SHUTDOWN, ...) but load no module and run no DEBUG.
const ADMIN_DENIED: &[&str] = &["module", "debug"];

/// Redis's documented minimum for a replica's `masteruser`.
const REPLICATION_ALLOWED: &[&str] = &["psync", "replconf", "ping"];

/// The rules (after the name) of one Flotilla user, from a clean slate (`reset`), so that
/// `ACL SETUSER` with them gives the same user whatever it was before.
fn rules(user: &str, password: &str, version: EngineVersion) -> Vec<String> {
    let mut rules = vec![
        "reset".to_string(),
        "on".to_string(),
        format!(">{password}"),
    ];
    match user {
        ADMIN_USER => {
            rules.extend(["~*", "&*", "+@all"].map(String::from));
            rules.extend(ADMIN_DENIED.iter().map(|c| format!("-{c}")));
        }
        PROXY_USER => {
            rules.extend(["~*", "&*", "+@all", "-@admin", "-@dangerous"].map(String::from));
            rules.extend(PROXY_FORWARDED_DANGEROUS.iter().map(|c| format!("+{c}")));
            rules.extend(PROXY_REPLICATION_READS.iter().map(|c| format!("+{c}")));
            if version >= EngineVersion::Redis70 {
                // SORT_RO is in `@dangerous` from 7.0 on; redis 6.2 does not know it.
                rules.push("+sort_ro".into());
            }
            rules.extend(PROXY_DENIED.iter().map(|c| format!("-{c}")));
            rules.push("+memory|usage".into());
            // Client-side caching through an endpoint: the proxy turns tracking on at its own
            // connection for a client (crates/proxy/src/tracking.rs). Both act on the calling
            // connection only.
            rules.push("+client|tracking".into());
            rules.push("+client|caching".into());
            // ACL CAT lists categories (read-only); redis 6.2 has all of ACL in `@admin`.
            rules.push("+acl|cat".into());
        }
        _ => {
            rules.extend(REPLICATION_ALLOWED.iter().map(|c| format!("+{c}")));
        }
    }
    rules
}

/// Each Flotilla user's name and rules (after the name), for `user` config lines and `ACL
/// SETUSER`.
pub(crate) fn users(
    users: &EngineUsers,
    version: EngineVersion,
) -> Vec<(&'static str, Vec<String>)> {
    [
        (ADMIN_USER, &users.admin),
        (PROXY_USER, &users.proxy),
        (REPLICATION_USER, &users.replication),
    ]
    .into_iter()
    .map(|(name, password)| (name, rules(name, password, version)))
    .collect()
}

/// The default user's rules in the config of an engine started once the cluster version is
/// 0.2.0: off, no password, no permission.
pub(crate) const DEFAULT_OFF: &[&str] = &["reset", "off"];

/// The default user's rules when a running engine moves to the users: off and without its
/// password, so the cluster secret no longer logs in; its permissions stay, because Redis
/// checks them on every command of a connection already logged in as it (a 0.1.0 proxy's or
/// replica's), and those must keep working until they close.
pub(crate) const DEFAULT_OFF_RUNNING: &[&str] = &["off", "resetpass"];

/// How a client logs in to an engine.
///
/// As a user with its password; `fallback` is the default user's password (the cluster
/// secret), tried when the user login is refused: on an engine a 0.1.0 daemon started, which
/// has no Flotilla users yet. Once the engine moved to the new scheme its default user is off
/// and the fallback is refused too.
#[derive(Clone, PartialEq, Eq)]
pub struct EngineLogin {
    /// The user (`None`: the default user).
    pub user: Option<String>,
    /// Its password.
    pub password: String,
    /// The default user's password, tried when the login above is refused.
    pub fallback: Option<String>,
}

impl std::fmt::Debug for EngineLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineLogin")
            .field("user", &self.user)
            .field("fallback", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}

impl EngineLogin {
    /// The admin user's login, falling back to `secret` (see [`EngineLogin`]).
    pub fn admin(users: &EngineUsers, secret: &str) -> Self {
        EngineLogin {
            user: Some(ADMIN_USER.into()),
            password: users.admin.clone(),
            fallback: Some(secret.into()),
        }
    }

    /// The admin user's login for a cluster's engines (the orchestrator's, which has no spec).
    pub fn cluster_admin(credentials: &EngineCredentials) -> Self {
        Self::admin(&credentials.users, &credentials.secret)
    }

    /// The proxy user's login, without fallback (tests that check what the proxy may run).
    pub fn proxy(users: &EngineUsers) -> Self {
        EngineLogin {
            user: Some(PROXY_USER.into()),
            password: users.proxy.clone(),
            fallback: None,
        }
    }

    /// The default user with `password` (an engine a 0.1.0 daemon started).
    pub fn default_user(password: &str) -> Self {
        EngineLogin {
            user: None,
            password: password.into(),
            fallback: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_user_loses_administration_and_keeps_what_the_proxy_forwards() {
        let users = EngineUsers::derive("s");
        let all = super::users(&users, EngineVersion::Redis62);
        let (name, proxy) = &all[1];
        assert_eq!(*name, PROXY_USER);
        let text = proxy.join(" ");
        for needed in [
            "-@admin",
            "-@dangerous",
            "+flushall",
            "+keys",
            "-select",
            "-swapdb",
            "+role",
            "+info",
        ] {
            assert!(
                proxy.iter().any(|r| r == needed),
                "{needed} missing: {text}"
            );
        }
        assert!(
            !text.contains("sort_ro"),
            "redis 6.2 knows no SORT_RO: {text}"
        );
        let (_, proxy_70) = &super::users(&users, EngineVersion::Redis70)[1];
        assert!(proxy_70.iter().any(|r| r == "+sort_ro"));
        let (_, replication) = &all[2];
        assert_eq!(replication[3..], ["+psync", "+replconf", "+ping"]);
    }
}
