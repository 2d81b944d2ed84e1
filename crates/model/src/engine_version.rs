//! Engine versions: the closed set of Redis-compatible servers a database may run, in upgrade order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One Redis-compatible engine a shard can run.
///
/// The variants are declared oldest to newest so that `Ord` gives the upgrade order: replication
/// only flows from an older-or-equal engine to a newer-or-equal one (see `ENGINES.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EngineVersion {
    /// Redis 6.2 (`redis-server` 6.2.x).
    #[serde(rename = "redis-6.2")]
    Redis62,
    /// Redis 7.0 (`redis-server` 7.0.x).
    #[serde(rename = "redis-7.0")]
    Redis70,
    /// Valkey 8.1 (`valkey-server` 8.1.x).
    #[serde(rename = "valkey-8.1")]
    Valkey81,
    /// Valkey 9.1 (`valkey-server` 9.x).
    #[serde(rename = "valkey-9.1")]
    Valkey91,
}

impl EngineVersion {
    /// Every known version, oldest first; callers iterate it to test or list all engines.
    pub const ALL: [EngineVersion; 4] = [
        EngineVersion::Redis62,
        EngineVersion::Redis70,
        EngineVersion::Valkey81,
        EngineVersion::Valkey91,
    ];

    /// The name used in the store, the CLI, the API and the engines folder (`redis-6.2`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EngineVersion::Redis62 => "redis-6.2",
            EngineVersion::Redis70 => "redis-7.0",
            EngineVersion::Valkey81 => "valkey-8.1",
            EngineVersion::Valkey91 => "valkey-9.1",
        }
    }

    /// The server binary's file name under `<engines>/<version>/bin/`.
    pub fn server_binary(self) -> &'static str {
        match self {
            EngineVersion::Redis62 | EngineVersion::Redis70 => "redis-server",
            EngineVersion::Valkey81 | EngineVersion::Valkey91 => "valkey-server",
        }
    }

    /// Whether the engine accepts `bind-source-addr` (added in Redis 7.0; redis-6.2 refuses to
    /// start on an unknown option), so a replica's outgoing link leaves from the node's address.
    pub fn supports_bind_source_addr(self) -> bool {
        self >= EngineVersion::Redis70
    }

    /// The `major.minor` prefix that `INFO server` reports as `redis_version` or
    /// `valkey_version` for this engine; used to check that a process is the engine we expect.
    pub fn reported_version_prefix(self) -> &'static str {
        match self {
            EngineVersion::Redis62 => "6.2.",
            EngineVersion::Redis70 => "7.0.",
            EngineVersion::Valkey81 => "8.1.",
            EngineVersion::Valkey91 => "9.",
        }
    }

    /// Whether a primary on `self` can fully sync a replica on `replica`: only when the
    /// replica is the same or a newer engine. Observed (see `ENGINES.md`): an older engine
    /// refuses a newer one's RDB ("Can't handle RDB format version"), flushes its data and
    /// retries forever, so callers must never set up that direction.
    pub fn can_feed(self, replica: EngineVersion) -> bool {
        self <= replica
    }

    fn known_list() -> String {
        Self::ALL
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A string that names no known engine version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown engine version '{given}'; known versions: {known}")]
pub struct UnknownEngineVersion {
    /// What was given.
    pub given: String,
    /// The known versions, comma-separated.
    pub known: String,
}

impl fmt::Display for EngineVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EngineVersion {
    type Err = UnknownEngineVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownEngineVersion {
                given: s.to_string(),
                known: Self::known_list(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_version() {
        for v in EngineVersion::ALL {
            assert_eq!(v.as_str().parse::<EngineVersion>().unwrap(), v);
            assert_eq!(v.to_string(), v.as_str());
        }
    }

    #[test]
    fn orders_oldest_to_newest() {
        let mut shuffled = vec![
            EngineVersion::Valkey91,
            EngineVersion::Redis62,
            EngineVersion::Valkey81,
            EngineVersion::Redis70,
        ];
        shuffled.sort();
        assert_eq!(shuffled, EngineVersion::ALL.to_vec());
    }

    #[test]
    fn unknown_version_lists_known_ones() {
        let err = "redis-5.0"
            .parse::<EngineVersion>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis-5.0"), "{err}");
        for v in EngineVersion::ALL {
            assert!(err.contains(v.as_str()), "{err} misses {v}");
        }
    }

    #[test]
    fn serde_uses_the_version_strings() {
        let json = serde_json::to_string(&EngineVersion::Valkey81).unwrap();
        assert_eq!(json, "\"valkey-8.1\"");
        let back: EngineVersion = serde_json::from_str("\"redis-6.2\"").unwrap();
        assert_eq!(back, EngineVersion::Redis62);
        assert!(serde_json::from_str::<EngineVersion>("\"redis-9\"").is_err());
    }

    #[test]
    fn replication_flows_old_to_new_only() {
        assert!(EngineVersion::Redis62.can_feed(EngineVersion::Valkey91));
        assert!(EngineVersion::Valkey81.can_feed(EngineVersion::Valkey81));
        assert!(!EngineVersion::Valkey81.can_feed(EngineVersion::Redis70));
    }

    #[test]
    fn binary_names_follow_the_engine_family() {
        assert_eq!(EngineVersion::Redis62.server_binary(), "redis-server");
        assert_eq!(EngineVersion::Redis70.server_binary(), "redis-server");
        assert_eq!(EngineVersion::Valkey81.server_binary(), "valkey-server");
        assert_eq!(EngineVersion::Valkey91.server_binary(), "valkey-server");
    }
}
