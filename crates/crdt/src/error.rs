//! Errors of applying ops (replica side) and of preparing writes (origin side).

use crate::clock::{Dot, InstanceId};

/// Why an op cannot be applied to a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdtError {
    /// The op was encoded by a newer protocol than this instance speaks: the sender must hold it
    /// until this instance is upgraded (protocol compatibility is one-way).
    #[error("op of CRDB protocol version {op} is newer than this instance's version {local}; hold it until this instance is upgraded")]
    NewerProtocol {
        /// The op's version.
        op: u16,
        /// This instance's version.
        local: u16,
    },
    /// The op was encoded by a protocol this instance no longer accepts.
    #[error("op of CRDB protocol version {op} is older than the oldest supported version {min}")]
    RetiredProtocol {
        /// The op's version.
        op: u16,
        /// The oldest supported version.
        min: u16,
    },
    /// An instance was asked to run a protocol version this code cannot produce.
    #[error("CRDB protocol version {v} is not supported (this release speaks {min} to {max})")]
    UnsupportedProtocol {
        /// The requested version.
        v: u16,
        /// The oldest supported version.
        min: u16,
        /// The newest supported version.
        max: u16,
    },
    /// An op of an origin arrived before an earlier op of the same origin on the same key: the
    /// syncer broke per-origin order (it must resend from `expected`).
    #[error("op {got:?} skips ahead: instance {instance:?}'s next op on this key is {expected}")]
    Gap {
        /// The origin.
        instance: InstanceId,
        /// The sequence number this replica expects next from that origin.
        expected: u64,
        /// The op that arrived.
        got: Dot,
    },
    /// The op's JSON could not be decoded.
    #[error("cannot decode op: {0}")]
    Decode(String),
}

/// Why a client's write is refused at its origin (what the engine would answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The key holds another type.
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    /// The value is not an integer (or a hash value is not).
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// The value is not a float.
    #[error("ERR value is not a valid float")]
    NotFloat,
    /// The increment would leave the 59-bit range of Active-Active counters.
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    /// The result would be NaN or infinite.
    #[error("ERR increment would produce NaN or Infinity")]
    NotFinite,
    /// `LSET` past the end of the list.
    #[error("ERR index out of range")]
    IndexOutOfRange,
    /// `LSET` on a missing key.
    #[error("ERR no such key")]
    NoSuchKey,
}
