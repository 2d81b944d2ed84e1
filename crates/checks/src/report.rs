//! The outcome of one check and of a node's whole check run.

use serde::{Deserialize, Serialize};

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Nothing to do.
    Pass,
    /// Works, but an engine or an upgrade may suffer; the fix says what to change.
    Warn,
    /// Must be fixed before an upgrade.
    Fail,
}

/// One named check (`verify_host_settings`, ...), what it found and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The check's name, in rlcheck's style.
    pub name: String,
    /// How it ended.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// The command or setting that fixes it, when it did not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A passed check.
    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: CheckStatus::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A check that did not pass (`Warn` or `Fail`), with its fix.
    pub fn issue(
        name: &str,
        status: CheckStatus,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check run on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The node's uid (0 before it joined a cluster).
    pub node_uid: u64,
    /// The node's address.
    pub addr: String,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl CheckReport {
    /// The worst status of any check.
    pub fn status(&self) -> CheckStatus {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(CheckStatus::Pass)
    }

    /// The report as text, one line per check, then rlcheck's summary line.
    pub fn to_text(&self) -> String {
        let mut out = format!("node {} ({})\n", self.node_uid, self.addr);
        for check in &self.checks {
            let status = match check.status {
                CheckStatus::Pass => "PASS",
                CheckStatus::Warn => "WARN",
                CheckStatus::Fail => "FAIL",
            };
            out.push_str(&format!("  {status}  {}: {}\n", check.name, check.detail));
            if let Some(fix) = &check.fix {
                out.push_str(&format!("        fix: {fix}\n"));
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .count();
        let warned = self
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Warn)
            .count();
        out.push_str(&match (failed, warned) {
            (0, 0) => "ALL TESTS PASSED\n".to_string(),
            (0, w) => format!("ALL TESTS PASSED with {w} warning(s)\n"),
            (f, w) => format!("{f} TEST(S) FAILED, {w} warning(s)\n"),
        });
        out
    }
}
