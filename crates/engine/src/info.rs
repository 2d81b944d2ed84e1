//! Typed views of `INFO` sections, parsed from the engine's `key:value` text.
//!
//! Only the fields the agent and the upgrade flows act on are typed; [`InfoMap`] keeps the rest.
//! Both the old words (`master`, `slave0`) and the new ones (`primary`, `replica0`) are accepted,
//! since the four engines do not all print the same.

use std::collections::BTreeMap;

/// One `INFO` reply as `key -> value`, section headers and blank lines dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InfoMap(pub BTreeMap<String, String>);

impl InfoMap {
    /// Parses the text of an `INFO` reply.
    pub fn parse(text: &str) -> Self {
        let map = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        InfoMap(map)
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The value of `key` parsed as a number (or anything `FromStr`).
    pub fn parse_field<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|v| v.parse().ok())
    }
}

/// Whether a shard currently acts as a primary or a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts writes (`role:master`).
    Primary,
    /// Follows a primary (`role:slave`).
    Replica,
}

/// A replica's view of its link to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkStatus {
    /// Connected and streaming.
    Up,
    /// Not connected (connecting, syncing, or failed).
    Down,
}

/// One replica as its primary lists it (`slaveN:ip=..,port=..,state=..,offset=..,lag=..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaEntry {
    /// The address the replica announced (`replica-announce-ip`) or connected from.
    pub ip: String,
    /// The replica's listening port.
    pub port: u16,
    /// `online`, `wait_bgsave`, `send_bulk`, ...
    pub state: String,
    /// The replication offset the replica acknowledged.
    pub offset: i64,
    /// Seconds since the replica's last acknowledgement.
    pub lag: i64,
}

impl ReplicaEntry {
    /// True once the replica streams commands (full sync done).
    pub fn is_online(&self) -> bool {
        self.state == "online"
    }

    fn parse(value: &str) -> Option<Self> {
        let fields: BTreeMap<&str, &str> = value
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        Some(ReplicaEntry {
            ip: fields.get("ip")?.to_string(),
            port: fields.get("port")?.parse().ok()?,
            state: fields.get("state")?.to_string(),
            offset: fields.get("offset")?.parse().ok()?,
            lag: fields.get("lag").and_then(|l| l.parse().ok()).unwrap_or(0),
        })
    }
}

/// `INFO replication`, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationInfo {
    /// Primary or replica.
    pub role: Role,
    /// For a replica: the primary's host.
    pub master_host: Option<String>,
    /// For a replica: the primary's port.
    pub master_port: Option<u16>,
    /// For a replica: whether the link is up.
    pub master_link_status: Option<LinkStatus>,
    /// For a replica: a full sync is in progress.
    pub master_sync_in_progress: bool,
    /// For a replica: the offset it has processed (`slave_repl_offset`).
    pub replica_repl_offset: Option<i64>,
    /// The replication offset of this shard's stream.
    pub master_repl_offset: i64,
    /// The replication id (changes on promotion; PSYNC2 keeps the old one as `master_replid2`).
    pub master_replid: String,
    /// For a primary: its replicas.
    pub replicas: Vec<ReplicaEntry>,
}

impl ReplicationInfo {
    /// Types the fields of an `INFO replication` reply; `None` when `role` is missing.
    pub fn from_map(map: &InfoMap) -> Option<Self> {
        let role = match map.get("role")? {
            "master" | "primary" => Role::Primary,
            "slave" | "replica" => Role::Replica,
            _ => return None,
        };
        let link = map.get("master_link_status").map(|s| {
            if s == "up" {
                LinkStatus::Up
            } else {
                LinkStatus::Down
            }
        });
        Some(ReplicationInfo {
            role,
            master_host: map.get("master_host").map(str::to_string),
            master_port: map.parse_field("master_port"),
            master_link_status: link,
            master_sync_in_progress: map.get("master_sync_in_progress") == Some("1"),
            replica_repl_offset: map
                .parse_field("slave_repl_offset")
                .or_else(|| map.parse_field("replica_repl_offset")),
            master_repl_offset: map.parse_field("master_repl_offset").unwrap_or(0),
            master_replid: map.get("master_replid").unwrap_or_default().to_string(),
            replicas: replica_entries(map),
        })
    }

    /// The offset this shard has reached: its own stream's offset for a primary, the processed
    /// offset for a replica.
    pub fn offset(&self) -> i64 {
        match self.role {
            Role::Primary => self.master_repl_offset,
            Role::Replica => self.replica_repl_offset.unwrap_or(self.master_repl_offset),
        }
    }

    /// The entry for the replica listening on `ip:port`, if this primary lists it.
    pub fn replica(&self, ip: &str, port: u16) -> Option<&ReplicaEntry> {
        self.replicas.iter().find(|r| r.ip == ip && r.port == port)
    }
}

/// `slave0..slaveN` (or `replica0..`) in index order.
fn replica_entries(map: &InfoMap) -> Vec<ReplicaEntry> {
    let mut indexed: Vec<(usize, ReplicaEntry)> = map
        .0
        .iter()
        .filter_map(|(k, v)| {
            let index = k
                .strip_prefix("slave")
                .or_else(|| k.strip_prefix("replica"))?
                .parse()
                .ok()?;
            Some((index, ReplicaEntry::parse(v)?))
        })
        .collect();
    indexed.sort_by_key(|(i, _)| *i);
    indexed.into_iter().map(|(_, r)| r).collect()
}

/// `INFO memory`, the part the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryInfo {
    /// Bytes allocated by the engine.
    pub used_memory: u64,
}

impl MemoryInfo {
    /// Types an `INFO memory` reply; `None` when `used_memory` is missing.
    pub fn from_map(map: &InfoMap) -> Option<Self> {
        Some(MemoryInfo {
            used_memory: map.parse_field("used_memory")?,
        })
    }
}

/// `INFO server`: which engine and which process answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `redis_version` (valkey also prints one, for client compatibility).
    pub redis_version: String,
    /// `valkey_version` on valkey engines.
    pub valkey_version: Option<String>,
    /// The engine's pid.
    pub process_id: u32,
    /// Changes on every restart of the process.
    pub run_id: String,
    /// The TCP port it listens on.
    pub tcp_port: Option<u16>,
}

impl ServerInfo {
    /// Types an `INFO server` reply.
    pub fn from_map(map: &InfoMap) -> Option<Self> {
        Some(ServerInfo {
            redis_version: map.get("redis_version")?.to_string(),
            valkey_version: map.get("valkey_version").map(str::to_string),
            process_id: map.parse_field("process_id")?,
            run_id: map.get("run_id")?.to_string(),
            tcp_port: map.parse_field("tcp_port"),
        })
    }

    /// The engine's own version: `valkey_version` for valkey, `redis_version` otherwise.
    pub fn engine_version(&self) -> &str {
        self.valkey_version
            .as_deref()
            .unwrap_or(&self.redis_version)
    }
}

/// `INFO stats`, the replication counters a switchover checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsInfo {
    /// Full resyncs this shard served as a primary.
    pub sync_full: u64,
    /// Partial resyncs accepted as a primary.
    pub sync_partial_ok: u64,
    /// Partial resyncs refused as a primary (the replica then did a full sync).
    pub sync_partial_err: u64,
}

impl StatsInfo {
    /// Types an `INFO stats` reply.
    pub fn from_map(map: &InfoMap) -> Option<Self> {
        Some(StatsInfo {
            sync_full: map.parse_field("sync_full")?,
            sync_partial_ok: map.parse_field("sync_partial_ok")?,
            sync_partial_err: map.parse_field("sync_partial_err")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: &str = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
        slave1:ip=127.0.0.13,port=20002,state=wait_bgsave,offset=0,lag=0\r\n\
        slave0:ip=127.0.0.12,port=20001,state=online,offset=1234,lag=1\r\n\
        master_failover_state:no-failover\r\nmaster_replid:abc\r\nmaster_repl_offset:1234\r\n";

    const REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.11\r\n\
        master_port:20001\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\n\
        slave_repl_offset:1200\r\nmaster_replid:abc\r\nmaster_repl_offset:1200\r\n";

    #[test]
    fn parses_a_primary() {
        let info = ReplicationInfo::from_map(&InfoMap::parse(PRIMARY)).unwrap();
        assert_eq!(info.role, Role::Primary);
        assert_eq!(info.offset(), 1234);
        assert_eq!(info.replicas.len(), 2);
        assert_eq!(info.replicas[0].ip, "127.0.0.12");
        assert!(info.replicas[0].is_online());
        assert_eq!(info.replicas[0].lag, 1);
        assert_eq!(
            info.replica("127.0.0.13", 20002).unwrap().state,
            "wait_bgsave"
        );
        assert!(info.master_link_status.is_none());
    }

    #[test]
    fn parses_a_replica() {
        let info = ReplicationInfo::from_map(&InfoMap::parse(REPLICA)).unwrap();
        assert_eq!(info.role, Role::Replica);
        assert_eq!(info.master_host.as_deref(), Some("127.0.0.11"));
        assert_eq!(info.master_port, Some(20001));
        assert_eq!(info.master_link_status, Some(LinkStatus::Up));
        assert!(!info.master_sync_in_progress);
        assert_eq!(info.offset(), 1200);
    }

    #[test]
    fn accepts_new_words() {
        let text = "role:replica\nreplica0:ip=1.2.3.4,port=1,state=online,offset=5,lag=0\n";
        let info = ReplicationInfo::from_map(&InfoMap::parse(text)).unwrap();
        assert_eq!(info.role, Role::Replica);
        assert_eq!(info.replicas.len(), 1);
    }

    #[test]
    fn server_info_prefers_valkey_version() {
        let text =
            "redis_version:7.2.4\nvalkey_version:8.1.1\nprocess_id:42\nrun_id:r\ntcp_port:20001\n";
        let info = ServerInfo::from_map(&InfoMap::parse(text)).unwrap();
        assert_eq!(info.engine_version(), "8.1.1");
        assert_eq!(info.process_id, 42);
        assert_eq!(info.tcp_port, Some(20001));
    }

    #[test]
    fn missing_fields_give_none() {
        assert!(ReplicationInfo::from_map(&InfoMap::parse("foo:bar")).is_none());
        assert!(MemoryInfo::from_map(&InfoMap::parse("")).is_none());
        assert!(StatsInfo::from_map(&InfoMap::parse("sync_full:1")).is_none());
    }
}
