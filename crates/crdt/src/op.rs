//! Operations: one client write's effect on one key, as data that travels between instances.
//!
//! An [`Op`] is what the origin instance ships to every peer (the syncer's op log holds them in
//! the origin's order). It names its own identity ([`Dot`]), the key's history it had observed
//! (`ctx`), its wall clock, and the protocol version it was encoded with, so that an older
//! instance refuses an op it cannot interpret instead of guessing.
//!
//! The JSON encoding is part of the CRDB protocol: field and variant names are fixed by the
//! `serde` attributes below and pinned by a test; a change of meaning needs a new
//! [`CRDT_PROTOCOL_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::blob::Blob;
use crate::clock::{Dot, InstanceId, Millis, VectorClock};
use crate::error::CrdtError;

/// The CRDB protocol version this crate speaks: the encoding and meaning of [`Op`].
///
/// Compatibility is one-way (reference section 4): an instance accepts ops of its own version and
/// every older one, and refuses newer ones with [`CrdtError::NewerProtocol`]; the sender then holds
/// them until the receiver is upgraded.
pub const CRDT_PROTOCOL_VERSION: u16 = 1;

/// The oldest protocol version this crate still accepts.
pub const CRDT_PROTOCOL_MIN: u16 = 1;

/// The CRDB feature set version this crate can use: a capability level that moves for every
/// instance together, only once all of them run the newest protocol (reference section 4). An
/// effect introduced by a later feature set is not produced before the CRDB moved to it
/// ([`Effect::featureset`]).
pub const CRDT_FEATURESET_VERSION: u16 = 1;

/// The identity of one list element: the write that inserted it and its index within that write
/// (one `LPUSH` inserts several elements under one dot). Serialized as `[instance, seq, idx]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "(InstanceId, u64, u32)", into = "(InstanceId, u64, u32)")]
pub struct ElemId {
    /// The inserting instance.
    pub instance: InstanceId,
    /// The inserting write's per-key sequence number.
    pub seq: u64,
    /// The element's index among the values of that write.
    pub idx: u32,
}

impl ElemId {
    /// The dot of the write that inserted the element.
    pub fn dot(&self) -> Dot {
        Dot {
            instance: self.instance,
            seq: self.seq,
        }
    }
}

impl From<(InstanceId, u64, u32)> for ElemId {
    fn from((instance, seq, idx): (InstanceId, u64, u32)) -> Self {
        ElemId { instance, seq, idx }
    }
}

impl From<ElemId> for (InstanceId, u64, u32) {
    fn from(e: ElemId) -> Self {
        (e.instance, e.seq, e.idx)
    }
}

/// Which counter of a key a reset names: counters live in strings, hash fields and sorted-set
/// scores.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "in", rename_all = "snake_case")]
pub enum CounterRef {
    /// The counter part of a string key (`INCR*`/`DECR*`).
    String,
    /// The counter part of one hash field (`HINCRBY*`).
    Field {
        /// The field.
        field: Blob,
    },
    /// The `ZINCRBY` part of one sorted-set member's score.
    Member {
        /// The member.
        member: Blob,
    },
}

/// One instance's running total of increments to one counter, as of its write `seq`.
///
/// Every replica applies an origin's increments in the origin's order, so `(seq, total)` means the
/// same everywhere; a reset that carries the totals it observed removes exactly those increments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterMark {
    /// The sequence number of the last increment included.
    pub seq: u64,
    /// Sum of the integer increments (`INCRBY`, `HINCRBY`).
    pub int: i128,
    /// Sum of the floating-point increments (`INCRBYFLOAT`, `HINCRBYFLOAT`, `ZINCRBY`).
    pub float: f64,
    /// How many of the increments were floating-point ones (a counter shows as a float once any
    /// live increment is).
    pub floats: u64,
}

/// The totals of one counter that an observed-reset removes (SET over a counter, DEL, HDEL, ZREM,
/// ZADD): increments not included stay ("observed-reset", reference section 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CounterReset {
    /// The counter.
    pub counter: CounterRef,
    /// Per instance, the totals the origin had observed.
    pub observed: BTreeMap<InstanceId, CounterMark>,
}

/// What one write does to its key. Variant names are the protocol's, not Redis command names:
/// several commands share an effect (`SET`/`SETEX`/`APPEND`/`SETRANGE`/`GETSET` are all `set` of the
/// resulting value; `LPUSH`/`RPUSH`/`LINSERT` are all `list_insert`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// A string's new value (last-writer-wins register); also resets the observed counter.
    Set {
        /// The value.
        value: Blob,
        /// `KEEPTTL`: leave the key's expiry alone (otherwise the observed expiry is cleared).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_ttl: bool,
    },
    /// `INCRBY`/`DECRBY`/`INCR`/`DECR`: summed across instances.
    Incr {
        /// The signed increment.
        by: i64,
    },
    /// `INCRBYFLOAT`: summed across instances.
    IncrFloat {
        /// The increment.
        by: f64,
    },
    /// `HSET`/`HMSET`/`HSETNX`: per field last-writer-wins; wins over a concurrent `HDEL`.
    HashSet {
        /// Field and value pairs.
        fields: Vec<(Blob, Blob)>,
    },
    /// `HDEL`: removes what the origin had observed of the fields.
    HashDel {
        /// The fields.
        fields: Vec<Blob>,
    },
    /// `HINCRBY`: summed across instances.
    HashIncr {
        /// The field.
        field: Blob,
        /// The increment.
        by: i64,
    },
    /// `HINCRBYFLOAT`: summed across instances.
    HashIncrFloat {
        /// The field.
        field: Blob,
        /// The increment.
        by: f64,
    },
    /// `SADD`: add-wins.
    SetAdd {
        /// The members.
        members: Vec<Blob>,
    },
    /// `SREM`/`SPOP`/`SMOVE`'s source side: removes what the origin had observed.
    SetRem {
        /// The members.
        members: Vec<Blob>,
    },
    /// `ZADD`: membership add-wins; the score is last-writer-wins and resets observed `ZINCRBY`s.
    ZAdd {
        /// Member and score pairs.
        members: Vec<(Blob, f64)>,
    },
    /// `ZINCRBY`: summed across instances.
    ZIncr {
        /// The member.
        member: Blob,
        /// The increment.
        by: f64,
    },
    /// `ZREM`/`ZPOP*`: removes the observed membership and the observed score.
    ZRem {
        /// The members.
        members: Vec<Blob>,
    },
    /// `LPUSH`/`RPUSH`/`LINSERT`: new elements after `after` (`None`: at the head), in this order.
    ListInsert {
        /// The element the first value follows, `None` for the head of the list.
        after: Option<ElemId>,
        /// The values; element `i` gets id `(op dot, i)`.
        values: Vec<Blob>,
    },
    /// `LPOP`/`RPOP`/`LREM`/`LTRIM`: removes the elements the origin had observed.
    ListRem {
        /// The removed elements.
        elems: Vec<ElemId>,
    },
    /// `LSET`: a new value for one element (last-writer-wins; a concurrent removal wins).
    ListSet {
        /// The element.
        elem: ElemId,
        /// The value.
        value: Blob,
    },
    /// `DEL`/`UNLINK` and the source side of `RENAME`: removes everything observed of the key.
    Del,
    /// `EXPIRE`/`PEXPIRE`/`EXPIREAT`...: an absolute deadline. The longest concurrent one wins.
    Expire {
        /// Wall-clock milliseconds at which the key expires.
        at: Millis,
    },
    /// `PERSIST`: beats every concurrent expiry.
    Persist,
}

/// One write to one key, as shipped from its origin to every peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// The CRDB protocol version the op was encoded with.
    pub v: u16,
    /// The key.
    pub key: Blob,
    /// The write's identity (origin and per-key sequence number).
    pub id: Dot,
    /// The origin's wall clock when it made the write.
    pub ts: Millis,
    /// The key's history the origin had observed before this write.
    pub ctx: VectorClock,
    /// The key did not exist at the origin (absent or expired): the write first removes everything
    /// observed of the key, as a `DEL` would, so a new key starts clean.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
    /// The counters this write resets, with the totals the origin had observed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resets: Vec<CounterReset>,
    /// What the write does.
    pub effect: Effect,
}

impl Effect {
    /// The feature set version that introduced this effect: the proxy refuses a command whose
    /// effect needs a newer feature set than the CRDB's, so an instance on an older feature set
    /// never receives it.
    pub fn featureset(&self) -> u16 {
        1
    }
}

impl Op {
    /// Labels the op with the protocol the instance runs (an older one while it keeps its
    /// protocol through an engine upgrade); refuses a version this code cannot encode.
    pub fn for_protocol(mut self, v: u16) -> Result<Op, CrdtError> {
        if !(CRDT_PROTOCOL_MIN..=CRDT_PROTOCOL_VERSION).contains(&v) {
            return Err(CrdtError::UnsupportedProtocol {
                v,
                min: CRDT_PROTOCOL_MIN,
                max: CRDT_PROTOCOL_VERSION,
            });
        }
        self.v = v;
        Ok(self)
    }

    /// The history this op completes: what its origin had observed, plus the op itself.
    /// Comparing two ops' clocks tells whether one saw the other or they are concurrent.
    pub fn clock(&self) -> VectorClock {
        let mut clock = self.ctx.clone();
        clock.observe(self.id.instance, self.id.seq);
        clock
    }

    /// Whether a peer running protocol `peer` can receive this op. When it cannot, the syncer
    /// holds this op and every later one of its origin until the peer is upgraded (the per-origin
    /// order must not break); nothing is lost.
    pub fn deliverable_to(&self, peer: u16) -> bool {
        self.v <= peer
    }

    /// Refuses an op from a protocol this instance does not speak (newer, or retired).
    pub fn check_protocol(&self, local: u16) -> Result<(), CrdtError> {
        if self.v > local {
            return Err(CrdtError::NewerProtocol { op: self.v, local });
        }
        if self.v < CRDT_PROTOCOL_MIN {
            return Err(CrdtError::RetiredProtocol {
                op: self.v,
                min: CRDT_PROTOCOL_MIN,
            });
        }
        Ok(())
    }

    /// The op's JSON, as the op log stores and the syncer ships it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an op always serializes")
    }

    /// Decodes an op from the log, refusing one from a newer protocol than `local` before
    /// looking at its body (whose meaning may have changed).
    pub fn from_json(text: &str, local: u16) -> Result<Op, CrdtError> {
        #[derive(Deserialize)]
        struct Version {
            v: u16,
        }
        let version: Version =
            serde_json::from_str(text).map_err(|e| CrdtError::Decode(e.to_string()))?;
        if version.v > local {
            return Err(CrdtError::NewerProtocol {
                op: version.v,
                local,
            });
        }
        let op: Op = serde_json::from_str(text).map_err(|e| CrdtError::Decode(e.to_string()))?;
        op.check_protocol(local)?;
        Ok(op)
    }
}
