//! What travels between a puller and its peer's REST API: the queries and pages of
//! `GET /v1/crdbs/{guid}/ops` and `GET /v1/crdbs/{guid}/state`.
//!
//! The JSON is part of the CRDB's wire between clusters that may run different Flotilla
//! versions: fields are only ever added (with defaults), never renamed; a test pins a sample.

pub use flotilla_crdb::{check_text, dot_text, entry_check, parse_check, parse_dot};
use flotilla_crdt::{Blob, Dot};
use serde::{Deserialize, Serialize};

/// How many op-log entries a page carries when the puller does not say.
pub const DEFAULT_PAGE_OPS: usize = 500;
/// The most op-log entries one page carries, whatever the puller asks.
pub const MAX_PAGE_OPS: usize = 5_000;
/// How many keys a state page carries when the puller does not say.
pub const DEFAULT_PAGE_KEYS: usize = 200;
/// The longest a long poll waits for new entries, whatever the puller asks.
pub const MAX_WAIT_MS: u64 = 30_000;

/// A position in an instance's op log: entry `n`, and the dot of the op it holds, so that a
/// log rewritten after a failover (the same `n`, another op) is told from the one a puller saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    /// The entry's sequence number (1, 2, ...; 0 before the first).
    pub n: u64,
    /// The dot of the op entry `n` holds (none before the first entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dot: Option<Dot>,
    /// [`check_text`] of the [`entry_check`] of entry `n`'s op, when known. A dot is per key (`instance.seq` counts
    /// one key's writes), so another key's op can carry the same dot at the same `n` in a log
    /// rewritten after a failover; the check tells them apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl LogPosition {
    /// Before the first entry: where a new puller starts.
    pub const START: LogPosition = LogPosition {
        n: 0,
        dot: None,
        check: None,
    };
}

impl From<flotilla_crdb::Position> for LogPosition {
    fn from(p: flotilla_crdb::Position) -> Self {
        LogPosition {
            n: p.n,
            dot: p.dot,
            check: p.check.map(check_text),
        }
    }
}

impl LogPosition {
    /// The position as the engine-side layer records it (a check that is not 16 hex digits is
    /// dropped: the dot alone is compared then).
    pub fn stored(&self) -> flotilla_crdb::Position {
        flotilla_crdb::Position {
            n: self.n,
            dot: self.dot,
            check: self.check.as_deref().and_then(parse_check),
        }
    }
}

/// The query of `GET /v1/crdbs/{guid}/ops`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpsQuery {
    /// The shard index (0-based, in slot order): the puller's local shard i pulls the peer's i.
    pub shard: u16,
    /// The last entry the puller applied (0: none).
    #[serde(default)]
    pub after: u64,
    /// The dot of that entry (`instance.seq`), checked against the server's entry `after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_dot: Option<String>,
    /// [`check_text`] of that entry's [`entry_check`], checked too when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_check: Option<String>,
    /// The most entries to return.
    #[serde(default = "default_count")]
    pub count: usize,
    /// The puller's CRDB protocol version: ops of a newer one are held.
    pub protocol: u16,
    /// How long to wait for a new entry when there is none (long poll), in ms.
    #[serde(default)]
    pub wait_ms: u64,
}

fn default_count() -> usize {
    DEFAULT_PAGE_OPS
}

/// What the server says about the puller's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpsStatus {
    /// The entries after `after` follow (maybe none yet).
    Ops,
    /// Entry `after` is gone (trimmed past the backlog) or holds another op (the server's
    /// master failed over and lost ops): the puller must do a full state transfer.
    BacklogExhausted,
}

/// One op-log entry as shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpEntry {
    /// Its sequence number in the origin shard's log.
    pub n: u64,
    /// The protocol version the op was encoded with.
    pub protocol: u16,
    /// The op ([`flotilla_crdt::Op::to_json`]).
    pub op: String,
}

/// The answer of `GET /v1/crdbs/{guid}/ops`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpsPage {
    /// Whether the puller can continue from its position.
    pub status: OpsStatus,
    /// The instance that answers (the puller checks it pulls whom it means to).
    pub instance_id: u16,
    /// Entries after `after`, in order (none when exhausted or nothing new).
    #[serde(default)]
    pub entries: Vec<OpEntry>,
    /// The newest entry in the server's log (the puller's ops lag is `last - applied`).
    pub last: u64,
    /// The oldest entry the server still keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<u64>,
    /// The next entry is of this protocol, newer than the puller's: it and everything after it
    /// are held until the puller's instance is upgraded (nothing is lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_protocol: Option<u16>,
}

/// The query of `GET /v1/crdbs/{guid}/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateQuery {
    /// The shard index.
    pub shard: u16,
    /// The scan cursor (0: start, which also takes the log position).
    #[serde(default)]
    pub cursor: u64,
    /// About how many keys to return.
    #[serde(default = "default_keys")]
    pub count: usize,
}

fn default_keys() -> usize {
    DEFAULT_PAGE_KEYS
}

/// One key's CRDT state as a full state transfer ships it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    /// The key.
    pub key: Blob,
    /// Its metadata ([`flotilla_crdt::KeyState::to_meta`]).
    pub meta: String,
}

/// The answer of `GET /v1/crdbs/{guid}/state`: one page of a scan of the shard's key states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatePage {
    /// The instance that answers.
    pub instance_id: u16,
    /// The cursor of the next page; 0 when the scan is complete.
    pub cursor: u64,
    /// The op-log position taken before the scan started (on the first page only): every op
    /// up to it is in the states the scan returns, so the puller resumes the log after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<LogPosition>,
    /// Key states.
    pub keys: Vec<KeyMeta>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_crdt::InstanceId;

    #[test]
    fn the_pages_keep_their_json() {
        let sample = r#"{"status":"ops","instance_id":2,"entries":[{"n":7,"protocol":1,"op":"{}"}],"last":9,"first":1,"held_protocol":2}"#;
        let page: OpsPage = serde_json::from_str(sample).unwrap();
        assert_eq!(page.status, OpsStatus::Ops);
        assert_eq!(serde_json::to_string(&page).unwrap(), sample);
        let exhausted = r#"{"status":"backlog_exhausted","instance_id":1,"entries":[],"last":3}"#;
        let page: OpsPage = serde_json::from_str(exhausted).unwrap();
        assert_eq!(page.status, OpsStatus::BacklogExhausted);
        assert_eq!(serde_json::to_string(&page).unwrap(), exhausted);
        let state = r#"{"instance_id":1,"cursor":0,"position":{"n":4,"dot":[1,2],"check":"00ff"},"keys":[{"key":"k","meta":"{}"}]}"#;
        let page: StatePage = serde_json::from_str(state).unwrap();
        assert_eq!(page.position.as_ref().unwrap().dot.unwrap().seq, 2);
        assert_eq!(serde_json::to_string(&page).unwrap(), state);
    }

    #[test]
    fn positions_convert_both_ways() {
        let stored = flotilla_crdb::Position {
            n: 4,
            dot: Some(Dot {
                instance: InstanceId(1),
                seq: 2,
            }),
            check: Some(entry_check("{}")),
        };
        let wire = LogPosition::from(stored);
        assert_eq!(wire.check.as_deref().map(str::len), Some(16));
        assert_eq!(wire.stored(), stored);
    }

    #[test]
    fn dots_travel_as_instance_dot_seq() {
        let dot = Dot {
            instance: InstanceId(3),
            seq: 41,
        };
        assert_eq!(dot_text(dot), "3.41");
        assert_eq!(parse_dot("3.41"), Some(dot));
        assert_eq!(parse_dot("3"), None);
        assert_eq!(parse_dot("x.1"), None);
    }
}
