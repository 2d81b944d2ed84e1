//! The serving side: what `GET /v1/crdbs/{guid}/ops` and `GET /v1/crdbs/{guid}/state` answer,
//! on any node of the cluster, from the master of shard i of the CRDB's local instance.
//!
//! Each request opens its own admin connection to that master (the long poll blocks it with
//! `XREAD BLOCK` on the op log stream, so it must not be shared), reads the log with
//! [`flotilla_crdb::read_log`] and decides:
//! - **backlog exhausted** when the entry after which the puller asks is gone (trimmed past the
//!   backlog, or beyond the log of a master that failed over and lost ops) or holds another op
//!   (same `n`, another dot): the puller then does a full state transfer;
//! - **held** when an entry's protocol is newer than the puller's: the page ends before it, and
//!   says so; the puller asks again later (nothing is lost, the order is kept);
//! - otherwise the entries after the puller's position, waiting up to `wait_ms` for one when
//!   there is none yet (long poll: the wait ends at the first new entry).

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_crdb::LogPage;
use flotilla_crdt::Dot;
use flotilla_engine::{ClientOptions, EngineClient, EngineLogin};
use flotilla_model::{BdbUid, ClusterState};

use crate::wire::{
    check_text, entry_check, parse_dot, KeyMeta, LogPosition, OpEntry, OpsPage, OpsQuery,
    OpsStatus, StatePage, StateQuery, MAX_PAGE_OPS, MAX_WAIT_MS,
};
use crate::SyncerError;

/// The most keys a state page carries, whatever the puller asks.
const MAX_PAGE_KEYS: usize = 2_000;
/// What a reply may take beyond the long poll's wait before the engine connection gives up.
const REPLY_MARGIN: Duration = Duration::from_secs(5);

/// The master of shard i of a CRDB's local instance, and how to log in to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMaster {
    /// The local instance's id.
    pub instance_id: u16,
    /// The local database.
    pub bdb_uid: BdbUid,
    /// The master's engine address.
    pub addr: SocketAddr,
    /// The engines' admin login.
    pub login: EngineLogin,
}

impl ShardMaster {
    /// Shard `shard` (0-based, in slot order) of CRDB `guid`'s local instance, as `state` has it.
    pub fn find(state: &ClusterState, guid: &str, shard: u16) -> Result<Self, SyncerError> {
        let crdb = state
            .crdbs
            .get(guid)
            .ok_or_else(|| SyncerError::UnknownCrdb(guid.to_string()))?;
        let bdb_uid = crdb.local_bdb_uid;
        if !state.bdbs.contains_key(&bdb_uid) {
            return Err(SyncerError::NoLocalDatabase {
                guid: guid.to_string(),
                bdb_uid,
            });
        }
        let ranges = state.slot_ranges(bdb_uid);
        let range = ranges
            .get(usize::from(shard))
            .ok_or_else(|| SyncerError::NoShard {
                guid: guid.to_string(),
                shard,
                count: ranges.len(),
            })?;
        let master = state
            .primary_of(bdb_uid, *range)
            .ok_or_else(|| SyncerError::NoMaster {
                guid: guid.to_string(),
                shard,
            })?;
        Ok(ShardMaster {
            instance_id: crdb.local_instance_id,
            bdb_uid,
            addr: state.shard_addr(master)?,
            login: EngineLogin::cluster_admin(&state.engine_credentials()?),
        })
    }

    /// A new admin connection to the master whose replies may take `wait` plus a margin.
    pub async fn connect(&self, wait: Duration) -> Result<EngineClient, SyncerError> {
        let options = ClientOptions {
            response_timeout: Some(wait + REPLY_MARGIN),
            ..ClientOptions::default()
        };
        let client =
            EngineClient::connect_with(self.addr.ip(), self.addr.port(), &self.login, options)
                .await?;
        Ok(client)
    }
}

/// `GET /v1/crdbs/{guid}/ops`: the entries of shard `query.shard`'s op log after the puller's
/// position, or "backlog exhausted".
pub async fn ops(
    state: &ClusterState,
    guid: &str,
    query: &OpsQuery,
) -> Result<OpsPage, SyncerError> {
    let master = ShardMaster::find(state, guid, query.shard)?;
    let after_dot =
        match &query.after_dot {
            Some(text) => Some(parse_dot(text).ok_or_else(|| {
                SyncerError::Decode(format!("after_dot {text:?}: not INSTANCE.SEQ"))
            })?),
            None => None,
        };
    let wait = Duration::from_millis(query.wait_ms.min(MAX_WAIT_MS));
    let client = master.connect(wait).await?;
    let mut conn = client.connection();
    let count = query.count.clamp(1, MAX_PAGE_OPS);
    let mut page = flotilla_crdb::read_log(&mut conn, query.after, count).await?;
    let position = LogPosition {
        n: query.after,
        dot: after_dot,
        check: query.after_check.clone(),
    };
    if exhausted(&mut conn, position, &page).await? {
        return Ok(OpsPage {
            status: OpsStatus::BacklogExhausted,
            instance_id: master.instance_id,
            entries: Vec::new(),
            last: page.last,
            first: page.first,
            held_protocol: None,
        });
    }
    if page.entries.is_empty() && !wait.is_zero() {
        wait_for_entry(&client, query.after.max(page.last), wait).await?;
        page = flotilla_crdb::read_log(&mut conn, query.after, count).await?;
    }
    Ok(ops_page(master.instance_id, page, query.protocol))
}

/// Whether the puller at `position` cannot continue from this log: see the module comment.
async fn exhausted(
    conn: &mut redis::aio::MultiplexedConnection,
    position: LogPosition,
    page: &LogPage,
) -> Result<bool, SyncerError> {
    let at_position = match position.n {
        0 => None,
        n => entry(conn, n).await?,
    };
    Ok(backlog_exhausted(
        &position,
        page.first,
        page.last,
        at_position,
    ))
}

/// The dot and [`entry_check`] of the log's entry `n`, if it still holds it.
async fn entry(
    conn: &mut redis::aio::MultiplexedConnection,
    n: u64,
) -> Result<Option<(Dot, String)>, SyncerError> {
    let page = flotilla_crdb::read_log(conn, n - 1, 1).await?;
    Ok(page
        .entries
        .into_iter()
        .find(|e| e.n == n)
        .map(|e| (e.dot, check_text(entry_check(&e.json)))))
}

/// The decision of [`exhausted`]: `first`/`last` are the log's bounds, `at_position` the dot
/// and check of the log's entry `position.n` (none when the log no longer holds it).
fn backlog_exhausted(
    position: &LogPosition,
    first: Option<u64>,
    last: u64,
    at_position: Option<(Dot, String)>,
) -> bool {
    if position.n == 0 {
        // A puller that never pulled needs entry 1 onwards.
        return match first {
            Some(first) => first > 1,
            None => last > 0,
        };
    }
    match at_position {
        // Trimmed past the backlog, or beyond the log of a master that lost entries.
        None => true,
        // The same n, another op: the log was rewritten after a failover.
        Some((dot, check)) => {
            position.dot.is_some_and(|seen| seen != dot)
                || position.check.as_ref().is_some_and(|seen| *seen != check)
        }
    }
}

/// Waits (up to `wait`) until the op log has an entry after `after`: `XREAD BLOCK` wakes at
/// the first one.
async fn wait_for_entry(
    client: &EngineClient,
    after: u64,
    wait: Duration,
) -> Result<(), SyncerError> {
    let mut command = redis::cmd("XREAD");
    command
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(wait.as_millis() as u64)
        .arg("STREAMS")
        .arg(flotilla_crdb::OPLOG_KEY)
        .arg(format!("{after}-0"));
    let _: redis::Value = client.command(&command).await?;
    Ok(())
}

/// The page for a puller of protocol `protocol`: the entries up to the first one of a newer
/// protocol, which is held.
fn ops_page(instance_id: u16, page: LogPage, protocol: u16) -> OpsPage {
    let mut entries = Vec::with_capacity(page.entries.len());
    let mut held_protocol = None;
    for entry in page.entries {
        if entry.protocol > protocol {
            held_protocol = Some(entry.protocol);
            break;
        }
        entries.push(OpEntry {
            n: entry.n,
            protocol: entry.protocol,
            op: entry.json,
        });
    }
    OpsPage {
        status: OpsStatus::Ops,
        instance_id,
        entries,
        last: page.last,
        first: page.first,
        held_protocol,
    }
}

/// `GET /v1/crdbs/{guid}/state`: one page of a scan of shard `query.shard`'s key states; the
/// first page (cursor 0) also carries the log position taken before the scan.
pub async fn state_page(
    state: &ClusterState,
    guid: &str,
    query: &StateQuery,
) -> Result<StatePage, SyncerError> {
    let master = ShardMaster::find(state, guid, query.shard)?;
    let client = master.connect(Duration::ZERO).await?;
    let mut conn = client.connection();
    let position = match query.cursor {
        0 => Some(current_position(&mut conn).await?),
        _ => None,
    };
    let count = query.count.clamp(1, MAX_PAGE_KEYS);
    let (cursor, keys) = flotilla_crdb::scan_states(&mut conn, query.cursor, count).await?;
    Ok(StatePage {
        instance_id: master.instance_id,
        cursor,
        position,
        keys: keys
            .into_iter()
            .map(|(key, meta)| KeyMeta {
                key: flotilla_crdt::Blob(key),
                meta,
            })
            .collect(),
    })
}

/// The newest entry of the op log and its dot.
async fn current_position(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<LogPosition, SyncerError> {
    let page = flotilla_crdb::read_log(conn, 0, 1).await?;
    let at = match page.last {
        0 => None,
        n => entry(conn, n).await?,
    };
    Ok(LogPosition {
        n: page.last,
        dot: at.as_ref().map(|(dot, _)| *dot),
        check: at.map(|(_, check)| check),
    })
}

#[cfg(test)]
mod tests {
    use flotilla_crdb::LogEntry;
    use flotilla_crdt::InstanceId;

    use super::*;

    fn dot(instance: u16, seq: u64) -> Dot {
        Dot {
            instance: InstanceId(instance),
            seq,
        }
    }

    fn at(n: u64, d: Dot) -> LogPosition {
        LogPosition {
            n,
            dot: Some(d),
            check: Some("c1".into()),
        }
    }

    #[test]
    fn a_new_puller_needs_the_whole_log() {
        let start = &LogPosition::START;
        assert!(!backlog_exhausted(start, None, 0, None), "empty log");
        assert!(
            !backlog_exhausted(start, Some(1), 9, None),
            "nothing trimmed"
        );
        assert!(
            backlog_exhausted(start, Some(3), 9, None),
            "1 and 2 trimmed"
        );
        assert!(
            backlog_exhausted(start, None, 9, None),
            "everything trimmed"
        );
    }

    #[test]
    fn a_position_the_log_lost_or_rewrote_needs_a_full_transfer() {
        let seen = dot(1, 4);
        let same = Some((seen, "c1".to_string()));
        assert!(
            !backlog_exhausted(&at(5, seen), Some(1), 9, same.clone()),
            "still there"
        );
        assert!(backlog_exhausted(&at(5, seen), Some(7), 9, None), "trimmed");
        assert!(
            backlog_exhausted(&at(12, seen), Some(1), 9, None),
            "beyond the log"
        );
        let other_dot = Some((dot(1, 5), "c1".to_string()));
        assert!(
            backlog_exhausted(&at(5, seen), Some(1), 9, other_dot),
            "rewritten"
        );
        // Dots count one key's writes: another key's op may have the same one.
        let other_op = Some((seen, "c2".to_string()));
        assert!(
            backlog_exhausted(&at(5, seen), Some(1), 9, other_op),
            "same dot, other op"
        );
        let unchecked = LogPosition {
            n: 5,
            dot: None,
            check: None,
        };
        assert!(
            !backlog_exhausted(&unchecked, Some(1), 9, same),
            "nothing to compare"
        );
    }

    #[test]
    fn ops_of_a_newer_protocol_are_held_with_everything_after_them() {
        let entry = |n: u64, protocol: u16| LogEntry {
            n,
            dot: dot(1, n),
            protocol,
            json: format!("op {n}"),
        };
        let page = LogPage {
            entries: vec![entry(1, 1), entry(2, 2), entry(3, 1)],
            first: Some(1),
            last: 3,
        };
        let old = ops_page(1, page.clone(), 1);
        assert_eq!(old.entries.len(), 1, "only the op before the newer one");
        assert_eq!(old.held_protocol, Some(2));
        assert_eq!(old.last, 3);
        let new = ops_page(1, page, 2);
        assert_eq!(new.entries.len(), 3);
        assert_eq!(new.held_protocol, None);
    }
}
