//! The record of a node's latest in-place upgrade, kept in its data dir so the new daemon
//! reports how its predecessor handed over, and the CLI follows the steps.

use std::path::{Path, PathBuf};
use std::time::Instant;

use flotilla_model::rest::NodeUpgradeStatus;

/// The upgrade record of one node, written after every step.
#[derive(Debug)]
pub struct UpgradeRecord {
    path: PathBuf,
    started: Instant,
    status: NodeUpgradeStatus,
}

impl UpgradeRecord {
    /// Starts a record at `path` for an upgrade from `from` to `to` by `method`.
    pub fn start(path: &Path, from: &str, to: &str, method: &str) -> UpgradeRecord {
        let mut record = UpgradeRecord {
            path: path.to_path_buf(),
            started: Instant::now(),
            status: NodeUpgradeStatus {
                from_version: from.into(),
                to_version: to.into(),
                method: method.into(),
                state: "running".into(),
                old_pid: std::process::id(),
                started_at: flotilla_model::now_secs(),
                ..NodeUpgradeStatus::default()
            },
        };
        record.step("install");
        record
    }

    /// Continues the record the old daemon wrote (the new daemon's side), counting time from
    /// now.
    pub fn resume(path: &Path) -> Option<UpgradeRecord> {
        let text = std::fs::read_to_string(path).ok()?;
        let status = serde_json::from_str(&text).ok()?;
        Some(UpgradeRecord {
            path: path.to_path_buf(),
            started: Instant::now(),
            status,
        })
    }

    /// The record of a restart-path upgrade that ended with this process starting as
    /// `version` (the old daemon exec'd it, or the CLI started it in its place): the new
    /// daemon finishes the record once it serves ([`UpgradeRecord::finish_store_gap`]). A
    /// record of a restart that did not bring up `version` is marked failed and `None` comes
    /// back; any other record (none, a handover, an ended upgrade) is left alone.
    pub fn resume_restart(path: &Path, version: &str) -> Option<UpgradeRecord> {
        let mut record = UpgradeRecord::resume(path)?;
        let status = record.status();
        if status.method != "restart" || status.state != "running" {
            return None;
        }
        if status.to_version != version {
            let error = format!(
                "the daemon restarted as {version}, not as {}",
                status.to_version
            );
            record.failed(&error);
            return None;
        }
        record.update(|s| s.new_pid = std::process::id());
        record.step("store");
        Some(record)
    }

    /// Records how long the node had no store (since the old daemon stopped its own) and that
    /// the upgrade is done: the new daemon's last step.
    pub fn finish_store_gap(&mut self) {
        let stopped_at = self.status.store_stopped_at_ms;
        self.update(|s| s.store_gap_ms = flotilla_model::now_millis().saturating_sub(stopped_at));
        self.done();
    }

    /// The status as recorded.
    pub fn status(&self) -> &NodeUpgradeStatus {
        &self.status
    }

    /// Milliseconds since this side started recording.
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records that the upgrade reached `step`.
    pub fn step(&mut self, step: &str) {
        tracing::info!(step, "in-place upgrade");
        self.status.step = step.into();
        let at = self.elapsed_ms();
        self.status.steps.push((step.into(), at));
        self.save();
    }

    /// Changes the status with `change` and saves it.
    pub fn update(&mut self, change: impl FnOnce(&mut NodeUpgradeStatus)) {
        change(&mut self.status);
        self.save();
    }

    /// Records that the upgrade ended well.
    pub fn done(&mut self) {
        self.status.state = "done".into();
        self.step("done");
    }

    /// Records that the upgrade failed, and why; the step it failed at stays.
    pub fn failed(&mut self, error: &str) {
        tracing::error!(step = %self.status.step, error, "in-place upgrade failed");
        self.status.state = "failed".into();
        self.status.error = Some(error.into());
        self.save();
    }

    /// Writes the record (atomically: a reader never sees half a file).
    fn save(&self) {
        let partial = self.path.with_extension("json.partial");
        let text = serde_json::to_string_pretty(&self.status).expect("a status serializes");
        let written =
            std::fs::write(&partial, text).and_then(|_| std::fs::rename(&partial, &self.path));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "could not save the upgrade record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_steps_and_is_continued_by_the_new_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.json");
        let mut old = UpgradeRecord::start(&path, "0.2.0", "0.2.1", "handover");
        old.step("spawn");
        let mut new = UpgradeRecord::resume(&path).unwrap();
        new.update(|s| s.sessions_moved = 3);
        new.done();
        let saved: NodeUpgradeStatus =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let steps: Vec<&str> = saved.steps.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(steps, ["install", "spawn", "done"]);
        assert_eq!((saved.state.as_str(), saved.sessions_moved), ("done", 3));
    }
}
