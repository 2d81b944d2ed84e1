//! The one clock reading the cluster's timestamps use.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as every timestamp in the state and in commands is written
/// (`created_at`, `updated_at`). Read by whoever proposes a command, never while applying one,
/// so that applying stays deterministic.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, for durations measured across processes (an in-place
/// upgrade's store gap runs from one daemon to the next).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
