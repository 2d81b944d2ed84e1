//! Why an Active-Active engine operation failed.

use flotilla_crdt::{CrdtError, WriteError};

/// Errors of the engine-side layer. A client's refused write is [`CrdbError::Write`], whose text
/// is the engine's own error reply.
#[derive(Debug, thiserror::Error)]
pub enum CrdbError {
    /// The write is refused as the engine would refuse it (`WRONGTYPE`, not an integer...).
    #[error("{0}")]
    Write(#[from] WriteError),
    /// An op or a state could not be applied (newer protocol, a gap in an origin's order, a
    /// metadata or op that does not decode).
    #[error("{0}")]
    Crdt(#[from] CrdtError),
    /// The engine failed or refused a command.
    #[error("engine: {0}")]
    Engine(#[from] redis::RedisError),
    /// Other writers kept changing the keys: every attempt found a newer version.
    #[error("ERR Active-Active write gave up after {0} attempts (the keys kept changing)")]
    Contended(u32),
    /// The engine holds something this layer did not write (a metadata hash without its state,
    /// an op-log entry without its fields): named, never guessed around.
    #[error("corrupt Active-Active data in the engine: {0}")]
    Corrupt(String),
    /// The caller broke a rule of this API (e.g. the same key twice in one transaction).
    #[error("{0}")]
    Invalid(String),
}
