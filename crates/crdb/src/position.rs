//! A syncer's position in a peer's op log.

use std::fmt;
use std::str::FromStr;

use flotilla_crdt::{Dot, InstanceId};

use crate::CrdbError;

/// How far a shard has applied one peer's op log: entry `n` of the peer's shard, and that
/// entry's dot, so the peer can tell whether its entry `n` is still the same op (after a failover
/// that lost unreplicated ops it may not be, and the puller must do a full state transfer).
///
/// Text form (the value in [`POSITIONS_KEY`](crate::POSITIONS_KEY) and in the syncer's requests):
/// `<n>:<instance>.<seq>`, or `<n>:` when there is no dot (nothing pulled yet, `n` = 0, or a
/// position taken from a state transfer of an empty log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The peer's op sequence number of the last op applied.
    pub n: u64,
    /// The dot of that op.
    pub dot: Option<Dot>,
}

impl Position {
    /// Before the peer's first op.
    pub const START: Position = Position { n: 0, dot: None };
}

/// A dot's text form in positions and op-log entries: `<instance>.<seq>`.
pub(crate) fn dot_text(dot: Dot) -> String {
    format!("{}.{}", dot.instance.0, dot.seq)
}

/// Parses [`dot_text`].
pub(crate) fn parse_dot(text: &str) -> Option<Dot> {
    let (instance, seq) = text.split_once('.')?;
    Some(Dot {
        instance: InstanceId(instance.parse().ok()?),
        seq: seq.parse().ok()?,
    })
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dot {
            Some(dot) => write!(f, "{}:{}", self.n, dot_text(dot)),
            None => write!(f, "{}:", self.n),
        }
    }
}

impl FromStr for Position {
    type Err = CrdbError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || CrdbError::Corrupt(format!("position {text:?} is not <n>:<instance>.<seq>"));
        let (n, dot) = text.split_once(':').unwrap_or((text, ""));
        let n = n.parse().map_err(|_| bad())?;
        let dot = match dot {
            "" => None,
            d => Some(parse_dot(d).ok_or_else(bad)?),
        };
        Ok(Position { n, dot })
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
        };
        assert_eq!(p.to_string(), "42:2.7");
        assert_eq!("42:2.7".parse::<Position>().unwrap(), p);
        assert_eq!(Position::START.to_string(), "0:");
        assert_eq!("0:".parse::<Position>().unwrap(), Position::START);
        assert_eq!(
            "5".parse::<Position>().unwrap(),
            Position { n: 5, dot: None }
        );
        assert!("x:1.2".parse::<Position>().is_err());
        assert!("3:1".parse::<Position>().is_err());
    }
}
