//! What to run for one shard ([`ShardSpec`]) and the engine config file rendered from it.
//!
//! The config is regenerated from the spec on every start and written atomically (temp file +
//! rename), so a crash never leaves a half-written file for the next start to trip on.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use flotilla_model::EngineUsers;

use crate::acl::{self, EngineLogin};
use crate::error::{EngineError, Result};
use crate::EngineVersion;

/// Shard ports Flotilla hands out (Redis Software's default shard range).
pub const SHARD_PORTS: std::ops::RangeInclusive<u16> = 20000..=29999;

/// Seconds a primary waits before a full sync for more replicas to join it: none, a replica
/// that asks is served at once (an upgrade raises it for one sync, see
/// [`crate::EngineClient::share_next_full_sync`]).
pub const FULL_SYNC_DELAY_SECS: u32 = 0;

/// File names inside a shard's data dir.
const CONFIG_FILE: &str = "engine.conf";
/// The engine pidfile's name inside a shard's folder.
pub(crate) const PID_FILE: &str = "engine.pid";
const LOG_FILE: &str = "engine.log";

/// How a shard keeps its data across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Persistence {
    /// Memory only; a restart starts empty (replication keeps the data alive).
    #[default]
    None,
    /// Append-only file, fsynced every second.
    Aof,
    /// Periodic RDB snapshots.
    Snapshot,
}

/// What the engine does when `maxmemory` is reached; the policies every supported engine knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionPolicy {
    /// Refuse writes that need memory (Redis Software's default for databases).
    #[default]
    Noeviction,
    /// Evict any key, least recently used first.
    AllkeysLru,
    /// Evict any key, least frequently used first.
    AllkeysLfu,
    /// Evict any key at random.
    AllkeysRandom,
    /// Evict keys with a TTL, least recently used first.
    VolatileLru,
    /// Evict keys with a TTL, least frequently used first.
    VolatileLfu,
    /// Evict keys with a TTL at random.
    VolatileRandom,
    /// Evict keys with the nearest expiry first.
    VolatileTtl,
}

impl EvictionPolicy {
    /// The engine's spelling, as in `maxmemory-policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionPolicy::Noeviction => "noeviction",
            EvictionPolicy::AllkeysLru => "allkeys-lru",
            EvictionPolicy::AllkeysLfu => "allkeys-lfu",
            EvictionPolicy::AllkeysRandom => "allkeys-random",
            EvictionPolicy::VolatileLru => "volatile-lru",
            EvictionPolicy::VolatileLfu => "volatile-lfu",
            EvictionPolicy::VolatileRandom => "volatile-random",
            EvictionPolicy::VolatileTtl => "volatile-ttl",
        }
    }
}

/// The primary a replica shard follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplicaOf {
    /// The primary shard's address (its node's address).
    pub host: IpAddr,
    /// The primary shard's port.
    pub port: u16,
}

/// Everything needed to run one shard's engine process on this node.
///
/// The agent builds it from the cluster store; upgrades change `version` and start it again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    /// The shard's id in the cluster store (for logs and errors).
    pub shard_id: u64,
    /// Which engine to run.
    pub version: EngineVersion,
    /// The node's own address; the engine listens only there.
    pub bind: IpAddr,
    /// The shard's port, in [`SHARD_PORTS`].
    pub port: u16,
    /// The cluster secret: the default user's password while [`legacy`](Self::legacy) (and of
    /// engines a 0.1.0 daemon started, whose records have no `users`), and the fallback login
    /// of [`admin_login`](Self::admin_login). Kept under this name: 0.1.0 reads the records.
    pub password: String,
    /// The engine's Flotilla users (admin, proxy, replication); `None` only in the record of an
    /// engine a 0.1.0 daemon started (the default user and the secret, nothing else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<EngineUsers>,
    /// A 0.1.0 node may still talk to this engine: the default user stays on with
    /// [`password`](Self::password), and a replica logs in to its primary with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy: bool,
    /// `maxmemory` in bytes; 0 means no limit.
    pub maxmemory_bytes: u64,
    /// `maxmemory-policy`.
    pub eviction: EvictionPolicy,
    /// How data survives a restart.
    pub persistence: Persistence,
    /// This shard's own folder: config, pidfile, log and data files live there.
    pub dir: PathBuf,
    /// When set, the shard starts as a replica of that primary.
    pub replica_of: Option<ReplicaOf>,
}

impl fmt::Debug for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardSpec")
            .field("shard_id", &self.shard_id)
            .field("version", &self.version)
            .field("bind", &self.bind)
            .field("port", &self.port)
            .field("password", &"<redacted>")
            .field("users", &self.users)
            .field("legacy", &self.legacy)
            .field("maxmemory_bytes", &self.maxmemory_bytes)
            .field("eviction", &self.eviction)
            .field("persistence", &self.persistence)
            .field("dir", &self.dir)
            .field("replica_of", &self.replica_of)
            .finish()
    }
}

impl ShardSpec {
    /// The engine config file this spec is rendered into.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// The pidfile the engine writes once it runs (and removes on a clean shutdown).
    pub fn pidfile_path(&self) -> PathBuf {
        self.dir.join(PID_FILE)
    }

    /// The engine's own log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// How the agent, the orchestrator and upgrades log in: as the admin user, falling back to
    /// the default user on an engine that has no Flotilla users yet. For a 0.1.0 record the
    /// users are those derived from its secret (the engine may have moved to them since).
    pub fn admin_login(&self) -> EngineLogin {
        match &self.users {
            Some(users) => EngineLogin::admin(users, &self.password),
            None => EngineLogin::admin(&EngineUsers::derive(&self.password), &self.password),
        }
    }

    /// `ip:port`, the way logs and errors name the shard.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.bind, self.port)
    }

    /// Checks what the engine would otherwise reject at start, or what would make the config
    /// file ambiguous.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| EngineError::InvalidSpec {
            shard_id: self.shard_id,
            reason,
        };
        if !SHARD_PORTS.contains(&self.port) {
            return Err(invalid(format!(
                "port {} is outside the shard range {}-{}",
                self.port,
                SHARD_PORTS.start(),
                SHARD_PORTS.end()
            )));
        }
        if self.bind.is_unspecified() {
            return Err(invalid(
                "bind address must be the node's own address, not 0.0.0.0/::".into(),
            ));
        }
        validate_password(&self.password).map_err(invalid)?;
        if !self.dir.is_absolute() {
            return Err(invalid(format!(
                "dir {} must be absolute",
                self.dir.display()
            )));
        }
        let dir_text = self.dir.to_string_lossy();
        if dir_text
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
        {
            return Err(invalid(format!(
                "dir {dir_text} must not contain spaces, quotes or backslashes"
            )));
        }
        Ok(())
    }

    /// The engine config file's text for this spec.
    ///
    /// Version-specific: `bind-source-addr` only from redis-7.0 on (redis-6.2 refuses unknown
    /// options and would not start).
    pub fn render_config(&self) -> String {
        let mut lines = vec![
            format!(
                "# Written by Flotilla for shard {} ({}); regenerated on every start, edits are lost.",
                self.shard_id, self.version
            ),
            format!("bind {}", self.bind),
            format!("port {}", self.port),
            format!("dir {}", self.dir.display()),
            format!("pidfile {}", self.pidfile_path().display()),
            format!("logfile {}", self.log_path().display()),
            "daemonize yes".to_string(),
            format!("maxmemory {}", self.maxmemory_bytes),
            format!("maxmemory-policy {}", self.eviction.as_str()),
            format!("replica-announce-ip {}", self.bind),
            format!("repl-diskless-sync-delay {FULL_SYNC_DELAY_SECS}"),
            // A replica that starts empty (new, restarted by an upgrade or after a crash of a
            // memory-only shard) loads the primary's data straight from the socket: no RDB
            // file the size of the data set on its disk, and loading overlaps the transfer.
            "repl-diskless-load on-empty-db".to_string(),
            "dbfilename dump.rdb".to_string(),
        ];
        lines.extend(self.access_lines());
        lines.extend(persistence_lines(self.persistence));
        if self.version.supports_bind_source_addr() {
            lines.push(format!("bind-source-addr {}", self.bind));
        }
        if let Some(primary) = self.replica_of {
            lines.push(format!("replicaof {} {}", primary.host, primary.port));
        }
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }

    /// The users and the replica's login: the Flotilla users (if any), the default user on
    /// with the secret while legacy (else off), and `masteruser`/`masterauth`.
    fn access_lines(&self) -> Vec<String> {
        let Some(users) = &self.users else {
            return vec![
                format!("requirepass \"{}\"", self.password),
                format!("masterauth \"{}\"", self.password),
            ];
        };
        let mut lines: Vec<String> = acl::users(users, self.version)
            .into_iter()
            .map(|(name, rules)| format!("user {name} {}", rules.join(" ")))
            .collect();
        if self.legacy {
            lines.push(format!("requirepass \"{}\"", self.password));
            lines.push(format!("masterauth \"{}\"", self.password));
        } else {
            lines.push(format!("user default {}", acl::DEFAULT_OFF.join(" ")));
            lines.push(format!("masteruser {}", flotilla_model::REPLICATION_USER));
            lines.push(format!("masterauth \"{}\"", users.replication));
        }
        lines
    }

    /// Writes [`render_config`](Self::render_config) to [`config_path`](Self::config_path)
    /// atomically, creating the shard's dir (owner-only). The file is readable by the owner
    /// only: it holds the engine users' passwords.
    pub fn write_config(&self) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| EngineError::io("create shard dir", &self.dir, e))?;
        let path = self.config_path();
        write_atomically(&path, self.render_config().as_bytes())?;
        Ok(path)
    }
}

/// The `appendonly` / `save` lines for a persistence mode.
fn persistence_lines(persistence: Persistence) -> Vec<String> {
    let (appendonly, save) = match persistence {
        Persistence::None => ("no", "\"\""),
        Persistence::Aof => ("yes", "\"\""),
        Persistence::Snapshot => ("no", "3600 1 300 100 60 10000"),
    };
    vec![
        format!("appendonly {appendonly}"),
        "appendfsync everysec".to_string(),
        format!("save {save}"),
    ]
}

/// Passwords go into the config file between double quotes: keep them to printable ASCII
/// without quotes, backslashes or spaces, so no escaping is ever needed.
fn validate_password(password: &str) -> Result<(), String> {
    if password.is_empty() {
        return Err("the internal password must not be empty".into());
    }
    let bad = password
        .chars()
        .any(|c| !c.is_ascii_graphic() || c == '"' || c == '\'' || c == '\\');
    if bad {
        return Err(
            "the internal password must be printable ASCII without spaces, quotes or backslashes"
                .into(),
        );
    }
    Ok(())
}

/// Writes `bytes` to a temp file beside `path` (mode 0600), fsyncs it and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_private_file(path, bytes).map_err(|e| EngineError::io("write engine config", path, e))
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a part:
/// a temporary file (owner-only, as it may hold the internal password) is synced, then renamed
/// over `path`. Shared by the engine config and the agent's shard records.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A spec for tests of other modules.
    pub(crate) fn sample_spec() -> ShardSpec {
        spec(EngineVersion::Redis70)
    }

    fn spec(version: EngineVersion) -> ShardSpec {
        ShardSpec {
            shard_id: 7,
            version,
            bind: "127.0.0.11".parse().unwrap(),
            port: 20001,
            password: "s3cret".into(),
            users: Some(EngineUsers::derive("s3cret")),
            legacy: false,
            maxmemory_bytes: 100 << 20,
            eviction: EvictionPolicy::AllkeysLru,
            persistence: Persistence::Aof,
            dir: "/var/lib/flotilla/shards/7".into(),
            replica_of: Some(ReplicaOf {
                host: "127.0.0.12".parse().unwrap(),
                port: 20001,
            }),
        }
    }

    #[test]
    fn config_names_every_setting() {
        let text = spec(EngineVersion::Redis70).render_config();
        for line in [
            "bind 127.0.0.11",
            "port 20001",
            "dir /var/lib/flotilla/shards/7",
            "pidfile /var/lib/flotilla/shards/7/engine.pid",
            "logfile /var/lib/flotilla/shards/7/engine.log",
            "daemonize yes",
            "user default reset off",
            "masteruser flotilla-replication",
            "maxmemory 104857600",
            "maxmemory-policy allkeys-lru",
            "appendonly yes",
            "save \"\"",
            "replica-announce-ip 127.0.0.11",
            "repl-diskless-sync-delay 0",
            "repl-diskless-load on-empty-db",
            "bind-source-addr 127.0.0.11",
            "replicaof 127.0.0.12 20001",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }

    #[test]
    fn the_default_user_is_off_unless_legacy_and_the_secret_is_no_user_password() {
        let mut s = spec(EngineVersion::Redis70);
        let users = s.users.clone().unwrap();
        let text = s.render_config();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains(&format!("masterauth \"{}\"\n", users.replication)));
        for user in ["flotilla-admin", "flotilla-proxy", "flotilla-replication"] {
            assert!(
                text.contains(&format!("\nuser {user} reset on >")),
                "{user}: {text}"
            );
        }
        s.legacy = true;
        let text = s.render_config();
        assert!(
            text.contains("requirepass \"s3cret\"\nmasterauth \"s3cret\"\n"),
            "{text}"
        );
        assert!(!text.contains("user default"), "{text}");
        assert!(text.contains("\nuser flotilla-proxy reset on >"), "{text}");
        s.users = None;
        let text = s.render_config();
        assert!(
            !text.contains("\nuser "),
            "a 0.1.0 record renders as 0.1.0 did: {text}"
        );
    }

    #[test]
    fn a_record_of_0_1_0_reads_as_an_engine_without_users_and_0_1_0_reads_ours() {
        let old = r#"{"shard_id":7,"version":"redis-7.0","bind":"127.0.0.11","port":20001,"password":"s3cret","maxmemory_bytes":1,"eviction":"noeviction","persistence":"none","dir":"/d","replica_of":null}"#;
        let record: ShardSpec = serde_json::from_str(old).unwrap();
        assert_eq!((record.users.is_none(), record.legacy), (true, false));
        assert_eq!(serde_json::to_string(&record).unwrap(), old);
        assert_eq!(record.admin_login().fallback.as_deref(), Some("s3cret"));
        let ours = serde_json::to_value(spec(EngineVersion::Redis70)).unwrap();
        assert_eq!(ours["password"], "s3cret", "0.1.0 needs the password field");
    }

    #[test]
    fn redis_62_gets_no_bind_source_addr() {
        let text = spec(EngineVersion::Redis62).render_config();
        assert!(!text.contains("bind-source-addr"), "{text}");
    }

    #[test]
    fn snapshot_sets_save_points() {
        let mut s = spec(EngineVersion::Valkey91);
        s.persistence = Persistence::Snapshot;
        let text = s.render_config();
        assert!(text.contains("appendonly no\n"), "{text}");
        assert!(text.contains("save 3600 1 300 100 60 10000\n"), "{text}");
    }

    #[test]
    fn validation_rejects_bad_specs() {
        let mut s = spec(EngineVersion::Valkey81);
        s.port = 6379;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("20000-29999"));
        let mut s = spec(EngineVersion::Valkey81);
        s.password = "has space".into();
        assert!(s.validate().is_err());
        let mut s = spec(EngineVersion::Valkey81);
        s.password = String::new();
        assert!(s.validate().is_err());
        let mut s = spec(EngineVersion::Valkey81);
        s.dir = "relative/dir".into();
        assert!(s.validate().is_err());
        let mut s = spec(EngineVersion::Valkey81);
        s.bind = "0.0.0.0".parse().unwrap();
        assert!(s.validate().is_err());
        assert!(spec(EngineVersion::Valkey81).validate().is_ok());
    }

    #[test]
    fn debug_hides_the_password() {
        let text = format!("{:?}", spec(EngineVersion::Redis62));
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn config_is_written_atomically_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(EngineVersion::Redis70);
        s.dir = dir.path().join("shard-7");
        let path = s.write_config().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), s.render_config());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(&s.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind: {leftovers:?}");
    }

    #[test]
    fn spec_round_trips_through_json() {
        let s = spec(EngineVersion::Valkey91);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"valkey-9.1\""), "{json}");
        assert!(json.contains("\"aof\""), "{json}");
        assert!(json.contains("\"allkeys-lru\""), "{json}");
        let back: ShardSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
