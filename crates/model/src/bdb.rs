//! Databases (bdbs) and their shards: what the cluster runs for its users.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine_version::EngineVersion;
use crate::state::NodeUid;

/// A database's uid (Redis Software's `bdb` uid).
pub type BdbUid = u64;
/// A shard's uid (Redis Software names shards `redis:N`).
pub type ShardUid = u64;

/// Number of hash slots, as in Redis Cluster.
pub const SLOT_COUNT: u32 = 16384;
/// Database endpoint ports (one listener per database on every node).
pub const ENDPOINT_PORTS: std::ops::RangeInclusive<u16> = 10000..=19999;
/// Shard ports (one engine process per shard, on its node's address).
pub const SHARD_PORTS: std::ops::RangeInclusive<u16> = 20000..=29999;
/// Most primary shards a database may have.
pub const MAX_SHARDS: u16 = 64;

/// How a database keeps its data across engine restarts (Redis Software's `data_persistence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPersistence {
    /// Memory only.
    #[default]
    Disabled,
    /// Append-only file.
    Aof,
    /// RDB snapshots.
    Snapshot,
}

/// A shard's role. Flotilla says primary and replica; the JSON (store, Raft log, REST) keeps
/// Redis Software's values, `master` and `slave`, which 0.1.0 nodes and REST clients read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardRole {
    /// Serves the slot range's reads and writes.
    #[serde(rename = "master")]
    Primary,
    /// Replicates the primary of the same slot range.
    #[serde(rename = "slave")]
    Replica,
}

/// An inclusive range of hash slots, written `start-end` in JSON as Redis Software does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotRange {
    /// First slot.
    pub start: u16,
    /// Last slot (inclusive).
    pub end: u16,
}

impl SlotRange {
    /// The `index`-th of `count` near-equal contiguous ranges: slot `s` belongs to range
    /// `s * count / 16384`, the same split the proxy's `SlotMap::even` uses.
    pub fn even(index: u16, count: u16) -> SlotRange {
        let first = |i: u32| (i * SLOT_COUNT).div_ceil(u32::from(count));
        let start = first(u32::from(index));
        let end = first(u32::from(index) + 1) - 1;
        SlotRange {
            start: start as u16,
            end: end as u16,
        }
    }

    /// Whether `slot` is in the range.
    pub fn contains(&self, slot: u16) -> bool {
        (self.start..=self.end).contains(&slot)
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl FromStr for SlotRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{s}' is not a slot range like 0-8191");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let start: u16 = a.trim().parse().map_err(|_| bad())?;
        let end: u16 = b.trim().parse().map_err(|_| bad())?;
        if start > end || u32::from(end) >= SLOT_COUNT {
            return Err(bad());
        }
        Ok(SlotRange { start, end })
    }
}

impl Serialize for SlotRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SlotRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What an operator asks for when creating a database (Redis Software's field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BdbSpec {
    /// Unique database name.
    pub name: String,
    /// Endpoint port, in [`ENDPOINT_PORTS`], the same on every node.
    pub port: u16,
    /// Memory limit in bytes for the whole database (split across its primary shards).
    pub memory_size: u64,
    /// Number of primary shards.
    pub shards_count: u16,
    /// Whether every primary shard has a replica on another node.
    pub replication: bool,
    /// Persistence mode.
    #[serde(default)]
    pub data_persistence: DataPersistence,
    /// Engine version.
    pub redis_version: EngineVersion,
    /// Password clients must AUTH with, in plaintext: only on clusters whose cluster version is
    /// older than 0.2.0 (the first release reads only this field); from 0.2.0 on the store keeps
    /// [`BdbSpec::authentication_redis_pass_sha256`] instead. None (and no hash): no AUTH.
    #[serde(default)]
    pub authentication_redis_pass: Option<String>,
    /// SHA-256 of the password clients must AUTH with, lowercase hex: how clusters from 0.2.0
    /// on keep it (see [`DatabasePassword`]). Absent from the first release's JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_redis_pass_sha256: Option<String>,
    /// The limits on the endpoint's client connections (absent fields: their defaults).
    #[serde(flatten)]
    pub limits: ClientLimits,
    /// Whether the endpoint serves TLS only (Redis Software's `tls_mode`). Absent from the
    /// JSON while disabled (the first release's JSON has none); enabling it is a 0.2.0 command.
    #[serde(default, skip_serializing_if = "TlsMode::is_disabled")]
    pub tls_mode: TlsMode,
    /// The engine settings the database changed (`CONFIG SET` through its endpoint, `db set
    /// --config`), by canonical name; every shard's engine runs with them. Absent from the
    /// JSON while empty (the first release's JSON has none); setting one is a 0.2.0 command.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config: crate::DatabaseConfig,
    /// Set when this database is one instance of an Active-Active database (issue 15); absent
    /// from the JSON otherwise. Introduced in 0.2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crdt: Option<crate::crdb::BdbCrdt>,
}

/// Whether a database's endpoint serves TLS (Redis Software's `tls_mode` values).
///
/// Exists so clients on untrusted networks reach a database encrypted and check the node's
/// certificate against the cluster CA; an endpoint in TLS mode refuses plaintext clients, as
/// Redis does with `tls-port` alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext RESP (the default).
    #[default]
    Disabled,
    /// TLS only, with the node's certificate from the cluster CA.
    Enabled,
}

impl TlsMode {
    /// Whether the endpoint serves plaintext (the default, left out of the JSON).
    pub fn is_disabled(&self) -> bool {
        *self == TlsMode::Disabled
    }

    /// Whether the endpoint serves TLS.
    pub fn is_enabled(&self) -> bool {
        *self == TlsMode::Enabled
    }
}

impl FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enabled" | "on" => Ok(TlsMode::Enabled),
            "disabled" | "off" => Ok(TlsMode::Disabled),
            other => Err(format!(
                "'{other}' is not a TLS mode (enabled/on or disabled/off)"
            )),
        }
    }
}

impl BdbSpec {
    /// The password clients must AUTH with, hashed or (on a cluster not yet finalized to
    /// 0.2.0) plaintext; `None` when clients need no AUTH.
    pub fn password(&self) -> Option<DatabasePassword> {
        if let Some(hex) = &self.authentication_redis_pass_sha256 {
            return Some(DatabasePassword::from_hex(hex).unwrap_or(DatabasePassword::Invalid));
        }
        self.authentication_redis_pass
            .as_ref()
            .map(|p| DatabasePassword::Plain(p.clone()))
    }

    /// Whether clients must AUTH.
    pub fn has_password(&self) -> bool {
        self.authentication_redis_pass.is_some() || self.authentication_redis_pass_sha256.is_some()
    }

    /// Whether `given` is the database password (compared in constant time); `false` when the
    /// database has none. The one check every endpoint (proxy, discovery) makes.
    pub fn password_matches(&self, given: &[u8]) -> bool {
        self.password().is_some_and(|p| p.matches(given))
    }

    /// Replaces a plaintext password by its hash: what the store does from cluster version 0.2.0
    /// on (at finalization for existing databases, and for every password set after it).
    pub fn hash_password(&mut self) {
        if let Some(plain) = self.authentication_redis_pass.take() {
            self.authentication_redis_pass_sha256 = Some(sha256_hex(plain.as_bytes()));
        }
    }
}

/// The SHA-256 of `bytes`, lowercase hex: the form [`BdbSpec::authentication_redis_pass_sha256`]
/// keeps (the same form Redis's ACL keeps its users' passwords in).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A database's client password as an endpoint checks it: plaintext (clusters before 0.2.0) or
/// its SHA-256.
///
/// Exists so the store never has to keep a password only checked against: AUTH compares the
/// SHA-256 of what the client sent with the stored one, in constant time (`subtle`), whichever
/// form is stored.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabasePassword {
    /// The password itself (a 0.1.0 cluster's store).
    Plain(String),
    /// Its SHA-256.
    Sha256([u8; 32]),
    /// A stored hash that does not parse: matches nothing.
    Invalid,
}

impl std::fmt::Debug for DatabasePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatabasePassword::Plain(_) => "Plain(<redacted>)",
            DatabasePassword::Sha256(_) => "Sha256(<redacted>)",
            DatabasePassword::Invalid => "Invalid",
        })
    }
}

impl DatabasePassword {
    /// A stored hash, from the 64 hex digits of [`sha256_hex`].
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(DatabasePassword::Sha256(out))
    }

    /// Whether `given` is this password: SHA-256 of both sides, compared in constant time.
    pub fn matches(&self, given: &[u8]) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        let expected: [u8; 32] = match self {
            DatabasePassword::Plain(p) => sha2::Sha256::digest(p.as_bytes()).into(),
            DatabasePassword::Sha256(h) => *h,
            DatabasePassword::Invalid => return false,
        };
        let given: [u8; 32] = sha2::Sha256::digest(given).into();
        given.ct_eq(&expected).into()
    }
}

/// The default [`ClientLimits::client_query_buffer_limit`]: Redis's (1 GiB), so every request
/// Redis accepts (a 512 MiB bulk, with room for the rest of the command) passes.
pub const DEFAULT_CLIENT_QUERY_BUFFER_LIMIT: u64 = 1 << 30;

/// The default [`ClientLimits::client_output_timeout`]: Redis's soft limit time for pub/sub
/// clients (60 s).
pub const DEFAULT_CLIENT_OUTPUT_TIMEOUT: u32 = 60;

/// The smallest query buffer limit accepted (Redis's minimum, 1 MiB).
pub const MIN_CLIENT_QUERY_BUFFER_LIMIT: u64 = 1 << 20;

/// Limits on a database endpoint's client connections, in Redis's (and Redis Software's)
/// terms; each node's endpoint applies them to its own clients.
///
/// Exists so an operator bounds what clients may make the daemon hold: too many connections,
/// a request that never ends, replies that are never read, a connection left idle. Fields left
/// at their defaults are absent from the JSON (the first release's JSON has none); setting one
/// is a 0.2.0 command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLimits {
    /// Most client connections on the endpoint of each node (Redis Software's
    /// `max_connections`); past it a client is answered `-ERR max number of clients reached`
    /// and closed. 0: no limit (the default).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub max_connections: u32,
    /// Most bytes of one client's input not yet decoded into a request (Redis's
    /// `client-query-buffer-limit`): past it the client is answered an error and closed.
    #[serde(
        default = "default_query_buffer_limit",
        skip_serializing_if = "is_default_query_buffer_limit"
    )]
    pub client_query_buffer_limit: u64,
    /// Most bytes of replies one client may have pending (Redis's `client-output-buffer-limit
    /// normal` hard limit): past it the client is closed. 0: no limit (the default, as Redis's
    /// normal class): a client that does not read is held instead (its requests are not read
    /// while its replies wait), so its replies pending stay about one batch.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub client_output_buffer_limit: u64,
    /// Seconds a client may leave its pending replies unread (no byte accepted) before it is
    /// closed; 0: no limit. Default 60.
    #[serde(
        default = "default_output_timeout",
        skip_serializing_if = "is_default_output_timeout"
    )]
    pub client_output_timeout: u32,
    /// Seconds a client may stay idle (no request, nothing pending) before it is closed
    /// (Redis's `timeout`); 0: never (the default). Subscribed clients are not idle.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub client_timeout: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_connections: 0,
            client_query_buffer_limit: DEFAULT_CLIENT_QUERY_BUFFER_LIMIT,
            client_output_buffer_limit: 0,
            client_output_timeout: DEFAULT_CLIENT_OUTPUT_TIMEOUT,
            client_timeout: 0,
        }
    }
}

impl ClientLimits {
    /// Whether every limit has its default (what the first release's databases have).
    pub fn is_default(&self) -> bool {
        *self == ClientLimits::default()
    }

    /// Applies the changes given.
    pub fn apply(&mut self, change: &ClientLimitsChange) {
        if let Some(v) = change.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = change.client_query_buffer_limit {
            self.client_query_buffer_limit = v;
        }
        if let Some(v) = change.client_output_buffer_limit {
            self.client_output_buffer_limit = v;
        }
        if let Some(v) = change.client_output_timeout {
            self.client_output_timeout = v;
        }
        if let Some(v) = change.client_timeout {
            self.client_timeout = v;
        }
    }

    /// Refuses values an endpoint cannot honour, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if self.client_query_buffer_limit < MIN_CLIENT_QUERY_BUFFER_LIMIT {
            return Err(format!(
                "client_query_buffer_limit: {} bytes is below the minimum of {} (1 MiB)",
                self.client_query_buffer_limit, MIN_CLIENT_QUERY_BUFFER_LIMIT
            ));
        }
        Ok(())
    }
}

/// Changes to [`ClientLimits`]; `None` fields stay as they are. In the JSON of REST updates and
/// of [`crate::Command::UpdateBdb`] (0.2.0), absent when unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLimitsChange {
    /// New [`ClientLimits::max_connections`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// New [`ClientLimits::client_query_buffer_limit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_query_buffer_limit: Option<u64>,
    /// New [`ClientLimits::client_output_buffer_limit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_output_buffer_limit: Option<u64>,
    /// New [`ClientLimits::client_output_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_output_timeout: Option<u32>,
    /// New [`ClientLimits::client_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_timeout: Option<u32>,
}

impl ClientLimitsChange {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == ClientLimitsChange::default()
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn default_query_buffer_limit() -> u64 {
    DEFAULT_CLIENT_QUERY_BUFFER_LIMIT
}

fn is_default_query_buffer_limit(v: &u64) -> bool {
    *v == DEFAULT_CLIENT_QUERY_BUFFER_LIMIT
}

fn default_output_timeout() -> u32 {
    DEFAULT_CLIENT_OUTPUT_TIMEOUT
}

fn is_default_output_timeout(v: &u32) -> bool {
    *v == DEFAULT_CLIENT_OUTPUT_TIMEOUT
}

/// A database as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bdb {
    /// Database uid.
    pub uid: BdbUid,
    /// What was asked for (and later changed).
    #[serde(flatten)]
    pub spec: BdbSpec,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
}

/// Where one shard goes, decided by placement before the command is proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// The node that runs it.
    pub node_uid: NodeUid,
    /// Primary or replica.
    pub role: ShardRole,
    /// Its slots.
    pub assigned_slots: SlotRange,
    /// Its port on that node.
    pub port: u16,
}

/// One shard: a real engine process on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Shard uid.
    pub uid: ShardUid,
    /// Its database.
    pub bdb_uid: BdbUid,
    /// Its node.
    pub node_uid: NodeUid,
    /// Primary or replica.
    pub role: ShardRole,
    /// Its slots (a primary and its replica share the range).
    pub assigned_slots: SlotRange,
    /// Its port on its node.
    pub port: u16,
    /// The engine this shard runs (differs from the database's during an upgrade).
    pub redis_version: EngineVersion,
    /// A planned switchover is under way for this primary's slots: proxies queue its commands
    /// instead of sending them (design step 1) until the new primary is published.
    #[serde(default)]
    pub held: bool,
    /// A replica added only for the time of an upgrade: for a database without replication
    /// (the upgrade removes it again), or the replacement of a replicated database's primary
    /// (the upgrade makes it permanent in the old primary's place).
    #[serde(default)]
    pub temporary: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_ranges_cover_every_slot_once() {
        for count in [1u16, 2, 3, 5, 7, 64] {
            let ranges: Vec<SlotRange> = (0..count).map(|i| SlotRange::even(i, count)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(u32::from(ranges.last().unwrap().end), SLOT_COUNT - 1);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end + 1, pair[1].start, "{count}: {pair:?}");
            }
            for (i, range) in ranges.iter().enumerate() {
                for slot in [range.start, range.end] {
                    assert_eq!(u32::from(slot) * u32::from(count) / SLOT_COUNT, i as u32);
                }
            }
        }
    }

    #[test]
    fn shard_roles_keep_redis_softwares_json_values() {
        for (role, json) in [
            (ShardRole::Primary, "\"master\""),
            (ShardRole::Replica, "\"slave\""),
        ] {
            assert_eq!(serde_json::to_string(&role).unwrap(), json);
            assert_eq!(serde_json::from_str::<ShardRole>(json).unwrap(), role);
        }
        assert!(serde_json::from_str::<ShardRole>("\"primary\"").is_err());
    }

    #[test]
    fn slot_ranges_are_written_like_redis_software() {
        let range = SlotRange::even(1, 2);
        assert_eq!(serde_json::to_string(&range).unwrap(), "\"8192-16383\"");
        assert_eq!(
            "0-8191".parse::<SlotRange>().unwrap(),
            SlotRange::even(0, 2)
        );
        assert!("9-3".parse::<SlotRange>().is_err());
        assert!("0-16384".parse::<SlotRange>().is_err());
    }
}
