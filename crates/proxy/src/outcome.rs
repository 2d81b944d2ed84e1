//! The outcome of writes in flight when a shard's master dies: where they stood in the master's
//! replication stream, and whether the replica promoted in its place can have run them.
//!
//! Why: a write sent to a master that dies before answering may or may not have run there, and
//! if it ran, its replication may or may not have reached the replica that is promoted. Only
//! the promoted replica's history survives, so the question that decides the client's answer
//! is "did the promoted replica apply it?". Resending a write it may have applied could apply it
//! twice (an INCR counted twice), so the answer must be a proof, not a guess.
//!
//! The proof, from replication offsets (Redis and Valkey alike):
//! - On a shared master connection the proxy pipelines `ROLE` after every write of jobs that
//!   hold a write (see `shared.rs`). The engine runs one connection's commands in order and
//!   feeds each write into its replication stream before running the next command, so the
//!   offset `ROLE` answers is a position `O` in the master's stream (its replication id, taken
//!   with `INFO replication` when the connection opened) that every write sent before it lies
//!   at or before, and every write sent after it lies after. When the connection breaks, every
//!   job written after the last answered `ROLE` is in flight, and lies after `O`.
//! - A replica applies the master's stream in order, and its offset counts what it applied. When
//!   it is promoted (`REPLICAOF NO ONE`) it keeps the old replication id as `master_replid2`
//!   and records `second_repl_offset`, one past the last byte of that stream it applied.
//! - So if the new primary is a master whose `master_replid2` is the dead master's id and whose
//!   `second_repl_offset - 1 <= O`, it applied nothing after `O`: none of the writes in flight
//!   ran on the surviving history, and they are resent to it (their reply is the new primary's
//!   own). In every other case (the promoted replica has bytes after `O`, which may be the
//!   writes in flight or another client's; another replication id; no position known; no new
//!   primary within the hold bound) the client still gets `... the command may have executed`.
//!
//! Bytes after `O` that are not the writes in flight (another connection's writes, the
//! master's replication PING every 10 s) only make the proof fail, never succeed falsely.

use flotilla_resp::Value;

/// How long a replication id is (40 hex digits, on every engine Flotilla runs).
const REPLID_LEN: usize = 40;

/// The `ROLE` request the shared connections pipeline after a write, as RESP.
pub(crate) const OFFSET_PROBE: &[u8] = b"*1\r\n$4\r\nROLE\r\n";

/// A position in a master's replication stream: its replication id and an offset. Writes in
/// flight on a connection that broke lie after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPosition {
    replid: [u8; REPLID_LEN],
    offset: u64,
}

impl StreamPosition {
    /// The same stream at `offset` (a later `ROLE` on the same master).
    pub(crate) fn at(self, offset: u64) -> Self {
        StreamPosition { offset, ..self }
    }
}

/// The replication fields of an engine's `INFO replication` that the proof reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Replication {
    /// Whether `role:master`.
    pub master: bool,
    /// `master_replid`: the current history's id.
    pub replid: String,
    /// `master_repl_offset`.
    pub offset: u64,
    /// `master_replid2`: the history it was promoted from (zeros when none).
    pub replid2: String,
    /// `second_repl_offset`: one past the last byte of `replid2`'s stream it applied.
    pub second_offset: i64,
}

impl Replication {
    /// Parses `INFO replication` text; `None` when it is not one (an error reply, a field
    /// missing).
    pub fn parse(text: &str) -> Option<Replication> {
        let mut info = Replication::default();
        let mut seen = 0;
        for line in text.lines() {
            let Some((key, value)) = line.trim_end().split_once(':') else {
                continue;
            };
            match key {
                "role" => {
                    info.master = value == "master";
                    seen |= 1;
                }
                "master_replid" => {
                    info.replid = value.to_owned();
                    seen |= 2;
                }
                "master_repl_offset" => {
                    info.offset = value.parse().ok()?;
                    seen |= 4;
                }
                "master_replid2" => {
                    info.replid2 = value.to_owned();
                    seen |= 8;
                }
                "second_repl_offset" => {
                    info.second_offset = value.parse().ok()?;
                    seen |= 16;
                }
                _ => {}
            }
        }
        (seen == 31).then_some(info)
    }

    /// Where a master's stream stands now; `None` for a replica.
    pub fn position(&self) -> Option<StreamPosition> {
        if !self.master {
            return None;
        }
        let replid = self.replid.as_bytes().try_into().ok()?;
        Some(StreamPosition {
            replid,
            offset: self.offset,
        })
    }

    /// Whether this engine, a master promoted from the stream `position` is in, certainly
    /// applied nothing of that stream after `position`: the proof that writes in flight after
    /// `position` did not run on it. False when it is no master, or was not promoted from that
    /// stream, or applied more of it.
    pub fn lacks_everything_after(&self, position: &StreamPosition) -> bool {
        self.master
            && self.replid2.as_bytes() == position.replid
            && self.second_offset >= 1
            && u64::try_from(self.second_offset - 1).is_ok_and(|applied| applied <= position.offset)
    }
}

/// The offset in a master's `ROLE` reply (`["master", offset, replicas]`); `None` for anything
/// else (a replica's reply, an error such as `NOPERM`).
pub(crate) fn role_offset(reply: &Value) -> Option<u64> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.as_slice() {
        [Value::BulkString(role) | Value::SimpleString(role), Value::Integer(offset), ..]
            if &role[..] == b"master" =>
        {
            u64::try_from(*offset).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER_INFO: &str = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=20001,state=online,offset=1500,lag=0\r\nmaster_failover_state:no-failover\r\nmaster_replid:2c4d0b4a1a7b0e5e3c8b2c7f1e3d4c5b6a798877\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:1500\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:1\r\n";

    fn promoted(second_offset: i64) -> Replication {
        Replication {
            master: true,
            replid: "f".repeat(40),
            offset: 9000,
            replid2: "2c4d0b4a1a7b0e5e3c8b2c7f1e3d4c5b6a798877".into(),
            second_offset,
        }
    }

    #[test]
    fn a_masters_info_gives_its_stream_position() {
        let info = Replication::parse(MASTER_INFO).unwrap();
        assert!(info.master);
        assert_eq!(info.second_offset, -1);
        let position = info.position().unwrap();
        assert_eq!(position.offset, 1500);
        assert_eq!(
            &position.replid,
            b"2c4d0b4a1a7b0e5e3c8b2c7f1e3d4c5b6a798877"
        );
        let replica = MASTER_INFO.replace("role:master", "role:slave");
        assert_eq!(Replication::parse(&replica).unwrap().position(), None);
        assert_eq!(
            Replication::parse("NOPERM this user has no permissions"),
            None
        );
    }

    #[test]
    fn only_a_replica_promoted_at_or_before_the_position_lacks_what_came_after() {
        let position = Replication::parse(MASTER_INFO)
            .unwrap()
            .position()
            .unwrap()
            .at(2000);
        // Applied up to 2000 (second_repl_offset is one past): nothing after 2000.
        assert!(promoted(2001).lacks_everything_after(&position));
        assert!(promoted(1800).lacks_everything_after(&position));
        // Applied one byte more: it may hold a write in flight.
        assert!(!promoted(2002).lacks_everything_after(&position));
        // Promoted from another history, or not promoted at all, or still a replica.
        let other = Replication {
            replid2: "a".repeat(40),
            ..promoted(1000)
        };
        assert!(!other.lacks_everything_after(&position));
        assert!(!promoted(-1).lacks_everything_after(&position));
        let replica = Replication {
            master: false,
            ..promoted(1000)
        };
        assert!(!replica.lacks_everything_after(&position));
    }

    #[test]
    fn role_gives_a_masters_offset_only() {
        let master = Value::Array(vec![
            Value::bulk("master"),
            Value::Integer(3129659),
            Value::Array(vec![]),
        ]);
        assert_eq!(role_offset(&master), Some(3129659));
        let replica = Value::Array(vec![
            Value::bulk("slave"),
            Value::bulk("127.0.0.1"),
            Value::Integer(9999),
        ]);
        assert_eq!(role_offset(&replica), None);
        assert_eq!(role_offset(&Value::error("NOPERM x")), None);
    }
}
