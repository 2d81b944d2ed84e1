//! The engine layer's one error type: each variant names the object involved and, where there is
//! one, the fix.

use std::path::PathBuf;

/// Everything that can go wrong while locating, configuring, starting, adopting, stopping or
/// querying an engine process.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine binary is not where the catalog expects it.
    #[error("engine binary for {version} not found at {path}; run `scripts/fetch-engines` (or set FLOTILLA_ENGINES_DIR to a folder that has it)")]
    MissingBinary {
        /// The engine version asked for.
        version: String,
        /// The path that was checked.
        path: PathBuf,
    },

    /// A shard spec that cannot be run (bad port, bad address, empty password, ...).
    #[error("invalid shard spec for shard {shard_id}: {reason}")]
    InvalidSpec {
        /// The shard the spec describes.
        shard_id: u64,
        /// What is wrong.
        reason: String,
    },

    /// A file-system operation on a shard's files failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("write config", "read pidfile", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A live engine already owns this shard's pidfile; adopt it instead of starting another.
    #[error("shard {shard_id} already runs as pid {pid}; adopt it instead of starting it again")]
    AlreadyRunning {
        /// The shard.
        shard_id: u64,
        /// The running process.
        pid: u32,
    },

    /// The engine did not start, or did not answer PING in time.
    #[error("shard {shard_id} ({version}) failed to start: {reason}\n--- last lines of {log} ---\n{log_tail}")]
    StartFailed {
        /// The shard.
        shard_id: u64,
        /// The engine version that was started.
        version: String,
        /// What went wrong.
        reason: String,
        /// The engine's log file.
        log: PathBuf,
        /// The last lines of that log (or the launcher's stderr).
        log_tail: String,
    },

    /// The engine exited at start because its data files (RDB, AOF) do not load: truncated or
    /// corrupt. Nothing was changed; the files are where they were.
    #[error("shard {shard_id} cannot load its data files {files} in {dir}: the engine says \"{line}\" (engine.log there). Repair them (`valkey-check-aof --fix` / `redis-check-aof --fix` for an AOF, `redis-check-rdb` for an RDB), or move them aside to start the shard empty; a replica shard's are moved aside by the agent, which syncs it from its primary again")]
    DataUnreadable {
        /// The shard.
        shard_id: u64,
        /// The shard's dir.
        dir: PathBuf,
        /// The data files present, by name.
        files: String,
        /// The engine's log line that says what failed.
        line: String,
    },

    /// The engine process did not exit, even after SIGKILL, within the deadline.
    #[error("pid {pid} did not exit within {waited_ms} ms")]
    StopTimeout {
        /// The process.
        pid: u32,
        /// How long we waited in total.
        waited_ms: u128,
    },

    /// A command sent to the engine failed.
    #[error("engine {addr}: {source}")]
    Redis {
        /// `ip:port` of the engine.
        addr: String,
        /// The client error.
        source: redis::RedisError,
    },

    /// An engine answered something this crate cannot parse.
    #[error("engine {addr}: unexpected reply: {detail}")]
    Protocol {
        /// `ip:port` of the engine.
        addr: String,
        /// What was unexpected.
        detail: String,
    },

    /// A bounded wait (sync, offsets, readiness) ran out.
    #[error("timed out after {waited_ms} ms waiting for {what}; last seen: {last}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long we waited.
        waited_ms: u128,
        /// The last observed state, for the operator.
        last: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// Wraps an I/O error with the action and the path it concerned.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        EngineError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
