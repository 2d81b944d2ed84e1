//! A syncer's position in a peer's op log.

use std::fmt;
use std::str::FromStr;

use flotilla_crdt::{Dot, InstanceId};

use crate::CrdbError;

/// How far a shard has applied one peer's op log: entry `n` of the peer's shard, and that
/// entry's dot, so the peer can tell whether its entry `n` is still the same op (after a failover
/// that lost unreplicated ops it may not be, and the puller must do a full state transfer).
///
/// A dot is per key (`instance.seq` counts one key's writes), so another key's op can carry the
/// same dot at the same `n` in a log rewritten after a failover: the position also keeps the
/// [`entry_check`] of that entry's op, written by the same script that applied it.
///
/// Text form (the value in [`POSITIONS_KEY`](crate::POSITIONS_KEY)):
/// `<n>:<instance>.<seq>:<check>` (check: 16 hex digits), `<n>:<instance>.<seq>` (no check:
/// positions written before checks were kept), or `<n>:` when there is no dot (nothing pulled
/// yet, `n` = 0, or a position taken from a state transfer of an empty log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The peer's op sequence number of the last op applied.
    pub n: u64,
    /// The dot of that op.
    pub dot: Option<Dot>,
    /// [`entry_check`] of that op's JSON, when known.
    pub check: Option<u64>,
}

impl Position {
    /// Before the peer's first op.
    pub const START: Position = Position {
        n: 0,
        dot: None,
        check: None,
    };
}

/// A short fingerprint of an op-log entry's op JSON (FNV-1a, 64 bits): what tells two ops of
/// the same dot apart.
pub fn entry_check(op_json: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in op_json.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A check's text form: 16 hex digits.
pub fn check_text(check: u64) -> String {
    format!("{check:016x}")
}

/// Parses [`check_text`].
pub fn parse_check(text: &str) -> Option<u64> {
    u64::from_str_radix(text, 16).ok()
}

/// A dot's text form in positions, op-log entries and the syncer's queries: `<instance>.<seq>`.
pub fn dot_text(dot: Dot) -> String {
    format!("{}.{}", dot.instance.0, dot.seq)
}

/// Parses [`dot_text`].
pub fn parse_dot(text: &str) -> Option<Dot> {
    let (instance, seq) = text.split_once('.')?;
    Some(Dot {
        instance: InstanceId(instance.parse().ok()?),
        seq: seq.parse().ok()?,
    })
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.dot, self.check) {
            (Some(dot), Some(check)) => {
                write!(f, "{}:{}:{}", self.n, dot_text(dot), check_text(check))
            }
            (Some(dot), None) => write!(f, "{}:{}", self.n, dot_text(dot)),
            (None, _) => write!(f, "{}:", self.n),
        }
    }
}

impl FromStr for Position {
    type Err = CrdbError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            CrdbError::Corrupt(format!(
                "position {text:?} is not <n>:<instance>.<seq>[:<check>]"
            ))
        };
        let (n, rest) = text.split_once(':').unwrap_or((text, ""));
        let n = n.parse().map_err(|_| bad())?;
        let (dot, check) = match rest.split_once(':') {
            Some((dot, check)) => (dot, Some(parse_check(check).ok_or_else(bad)?)),
            None => (rest, None),
        };
        let dot = match dot {
            "" => None,
            d => Some(parse_dot(d).ok_or_else(bad)?),
        };
        Ok(Position { n, dot, check })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_their_text() {
        let p = Position {
            n: 42,
            dot: Some(Dot {
                instance: InstanceId(2),
                seq: 7,
            }),
            check: None,
        };
        assert_eq!(p.to_string(), "42:2.7");
        assert_eq!("42:2.7".parse::<Position>().unwrap(), p);
        let checked = Position {
            check: Some(0xff),
            ..p
        };
        assert_eq!(checked.to_string(), "42:2.7:00000000000000ff");
        assert_eq!(
            "42:2.7:00000000000000ff".parse::<Position>().unwrap(),
            checked
        );
        assert!("42:2.7:zz".parse::<Position>().is_err());
        assert_eq!(Position::START.to_string(), "0:");
        assert_eq!("0:".parse::<Position>().unwrap(), Position::START);
        assert_eq!(
            "5".parse::<Position>().unwrap(),
            Position {
                n: 5,
                dot: None,
                check: None
            }
        );
        assert!("x:1.2".parse::<Position>().is_err());
        assert!("3:1".parse::<Position>().is_err());
    }

    #[test]
    fn checks_tell_two_ops_apart() {
        assert_eq!(entry_check("{}"), entry_check("{}"));
        assert_ne!(entry_check(r#"{"key":"a"}"#), entry_check(r#"{"key":"b"}"#));
        assert_eq!(check_text(entry_check("")).len(), 16);
        assert_eq!(parse_check(&check_text(7)), Some(7));
    }
}
