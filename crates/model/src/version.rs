//! Software versions, the cluster version, and which commands each version may be sent.
//!
//! A cluster runs mixed software versions while it is upgraded node by node. The cluster
//! version is the version whose features every node has agreed to use: the version of the
//! first release for clusters created before versions were recorded, the creating node's
//! version for newer ones, and it only moves forward by finalization, once every node runs the
//! new version ([`Command::FinalizeClusterVersion`]). A command is proposed only when every
//! node can decode it: a command kind (or a field of one) that a version introduced waits until
//! the cluster version reaches that version, so an old node never receives a change it cannot
//! apply (DESIGN.md "The cluster store").

use std::cmp::Ordering;

use crate::action::ActionStatus;
use crate::command::{ActionCreation, ActionUpdate, BdbChange, Command};
use crate::error::ModelError;
use crate::state::ClusterState;

/// The first release; a cluster created by it records no cluster version.
pub const FIRST_RELEASE: &str = "0.1.0";

/// The release that introduced the cluster version, finalization and the commands below.
pub const VERSIONED_RELEASE: &str = "0.2.0";

/// Compares two software versions (`major.minor.patch`, an optional `-pre` part sorts first);
/// text that does not parse sorts lowest, so an unreadable version never unlocks a feature.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    parse(a).cmp(&parse(b))
}

/// `major.minor.patch` and whether it is a release (a pre-release sorts before it).
fn parse(version: &str) -> Option<(u64, u64, u64, bool)> {
    let (core, pre) = match version.split_once('-') {
        Some((core, _)) => (core, true),
        None => (version.split('+').next().unwrap_or(version), false),
    };
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let (major, minor, patch) = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch, !pre))
}

/// Whether `version` is at least `floor`.
pub fn at_least(version: &str, floor: &str) -> bool {
    parse(version).is_some() && compare_versions(version, floor) != Ordering::Less
}

impl Command {
    /// The software version that introduced this command as encoded: every member must run at
    /// least this version to apply it as the proposer means it.
    pub fn introduced_in(&self) -> &'static str {
        match self {
            Command::FinalizeClusterVersion(_)
            | Command::CompleteMigration(_)
            | Command::RemoveNode(_)
            | Command::ReplaceNode(_)
            | Command::PruneActions(_)
            | Command::RecordDrain(_)
            | Command::ResumeAction(_)
            | Command::EnterMaintenance(_)
            | Command::ExitMaintenance(_)
            | Command::SetClusterCa(_)
            | Command::SetNodeCertificate(_)
            | Command::RotateNodeCertificates(_)
            | Command::CreateCrdb(_)
            | Command::UpdateCrdb(_)
            | Command::DeleteCrdb(_) => VERSIONED_RELEASE,
            // The first release knows no paused action.
            Command::UpdateAction(ActionUpdate {
                status: ActionStatus::Paused,
                ..
            }) => VERSIONED_RELEASE,
            // The first release fails to decode an action kind it does not know.
            Command::CreateAction(ActionCreation { action, .. })
                if !action.known_to_first_release() =>
            {
                VERSIONED_RELEASE
            }
            Command::UpdateBdb(BdbChange {
                remove_authentication_redis_pass: true,
                ..
            }) => VERSIONED_RELEASE,
            // The first release knows neither hashed passwords, client limits nor TLS endpoints.
            Command::UpdateBdb(change)
                if change.authentication_redis_pass_sha256.is_some()
                    || !change.limits.is_empty()
                    || change.tls_mode.is_some()
                    || !change.config.is_empty() =>
            {
                VERSIONED_RELEASE
            }
            // The first release would create a plain database where a CRDB instance is meant.
            Command::CreateBdb(creation)
                if creation.bdb.authentication_redis_pass_sha256.is_some()
                    || creation.bdb.crdt.is_some()
                    || !creation.bdb.limits.is_default()
                    || creation.bdb.tls_mode.is_enabled()
                    || !creation.bdb.config.is_empty() =>
            {
                VERSIONED_RELEASE
            }
            _ => FIRST_RELEASE,
        }
    }
}

impl ClusterState {
    /// The cluster version: the version every node has agreed to use.
    pub fn cluster_version(&self) -> &str {
        self.cluster
            .as_ref()
            .and_then(|c| c.cluster_version.as_deref())
            .unwrap_or(FIRST_RELEASE)
    }

    /// The lowest software version any node reports running.
    pub fn lowest_node_version(&self) -> Option<&str> {
        self.nodes
            .values()
            .map(|n| n.software_version.as_str())
            .min_by(|a, b| compare_versions(a, b))
    }

    /// The version finalization would move the cluster to: every node runs at least it and it
    /// is newer than the cluster version. `None` when nothing is pending.
    pub fn pending_finalization(&self) -> Option<&str> {
        let lowest = self.lowest_node_version()?;
        (compare_versions(lowest, self.cluster_version()) == Ordering::Greater
            && at_least(lowest, VERSIONED_RELEASE))
        .then_some(lowest)
    }

    /// Refuses a command some node of the cluster could not apply as meant: finalization needs
    /// every node on the version it finalizes; any other command needs the cluster version to
    /// have reached the version that introduced it.
    pub fn check_proposable(&self, command: &Command) -> Result<(), ModelError> {
        let needed = command.introduced_in();
        if let Command::FinalizeClusterVersion(finalization) = command {
            return self.check_finalization(&finalization.version);
        }
        if at_least(self.cluster_version(), needed) {
            return Ok(());
        }
        Err(ModelError::InvalidValue(format!(
            "this change needs cluster version {needed}, and the cluster version is {} until every node runs {needed} or newer and the upgrade is finalized (`flotilla upgrade finalize`); nothing was changed",
            self.cluster_version()
        )))
    }

    /// Whether the cluster may be finalized at `version`.
    pub(crate) fn check_finalization(&self, version: &str) -> Result<(), ModelError> {
        if !at_least(version, VERSIONED_RELEASE) {
            return Err(ModelError::InvalidValue(format!(
                "version {version}: finalization names a version from {VERSIONED_RELEASE} on"
            )));
        }
        if let Some(behind) = self
            .nodes
            .values()
            .find(|n| !at_least(&n.software_version, version))
        {
            return Err(ModelError::InvalidValue(format!(
                "node {} ({}) runs {}, older than {version}: upgrade it first (`flotilla upgrade node {} --package PACKAGE`)",
                behind.uid, behind.addr, behind.software_version, behind.uid
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::ClusterVersionFinalization;
    use crate::state::testing::{add, create};

    #[test]
    fn versions_compare_numerically_and_unreadable_ones_sort_lowest() {
        assert_eq!(compare_versions("0.10.0", "0.9.1"), Ordering::Greater);
        assert_eq!(compare_versions("0.2.0-rc1", "0.2.0"), Ordering::Less);
        assert_eq!(compare_versions("0.2.0", "0.2.0"), Ordering::Equal);
        assert!(!at_least("garbage", "0.1.0"));
        assert!(at_least("0.2.1", "0.2.0"));
    }

    fn mixed() -> ClusterState {
        let mut state = ClusterState::default();
        state.apply(create());
        state.apply(add("127.0.0.12"));
        state
    }

    fn set_version(state: &mut ClusterState, uid: u64, version: &str) {
        state.nodes.get_mut(&uid).unwrap().software_version = version.into();
    }

    #[test]
    fn a_cluster_from_the_first_release_has_its_version_and_gates_new_commands() {
        let state = mixed();
        assert_eq!(state.cluster_version(), FIRST_RELEASE);
        let finalize = Command::FinalizeClusterVersion(ClusterVersionFinalization {
            version: "0.2.0".into(),
        });
        let err = state.check_proposable(&finalize).unwrap_err().to_string();
        assert!(err.contains("node 1 (127.0.0.11) runs 0.1.0"), "{err}");
        let remove = Command::UpdateBdb(BdbChange {
            uid: 1,
            memory_size: None,
            authentication_redis_pass: None,
            remove_authentication_redis_pass: true,
            authentication_redis_pass_sha256: None,
            limits: Default::default(),
            tls_mode: Default::default(),
            config: Default::default(),
        });
        let err = state.check_proposable(&remove).unwrap_err().to_string();
        assert!(err.contains("needs cluster version 0.2.0"), "{err}");
        assert!(state.check_proposable(&add("127.0.0.13")).is_ok());
    }

    #[test]
    fn node_removals_and_shard_moves_wait_for_cluster_version_0_2_0() {
        use crate::action::{ActionKind, ShardMove};
        use crate::command::{ActionCreation, NodeRemoval, ShardMigration};
        let shard_move = ShardMove {
            shard_uid: 1,
            bdb_uid: 1,
            assigned_slots: crate::SlotRange::even(0, 1),
            from_node: 1,
            to_node: 2,
        };
        let create = |action| {
            Command::CreateAction(ActionCreation {
                action,
                steps_total: 1,
                first_step: "x".into(),
                created_at: 1,
            })
        };
        let gated = [
            Command::RemoveNode(NodeRemoval { uid: 2 }),
            Command::CompleteMigration(ShardMigration { old: 1, new: 2 }),
            create(ActionKind::ShardMigrate(shard_move.clone())),
            create(ActionKind::NodeRemove {
                node_uid: 1,
                moves: vec![shard_move],
            }),
        ];
        let mut state = mixed();
        for command in &gated {
            let err = state.check_proposable(command).unwrap_err().to_string();
            assert!(err.contains("needs cluster version 0.2.0"), "{err}");
            assert!(err.contains("flotilla upgrade finalize"), "{err}");
        }
        set_version(&mut state, 1, "0.2.0");
        set_version(&mut state, 2, "0.2.0");
        state.apply(Command::FinalizeClusterVersion(
            ClusterVersionFinalization {
                version: "0.2.0".into(),
            },
        ));
        assert!(gated.iter().all(|c| state.check_proposable(c).is_ok()));
    }

    #[test]
    fn pruning_actions_waits_for_the_cluster_version_that_knows_it() {
        let mut state = mixed();
        let prune = Command::PruneActions(crate::ActionPruning { uids: vec![1] });
        let err = state.check_proposable(&prune).unwrap_err().to_string();
        assert!(err.contains("needs cluster version 0.2.0"), "{err}");
        assert!(err.contains("flotilla upgrade finalize"), "{err}");
        set_version(&mut state, 1, "0.2.0");
        set_version(&mut state, 2, "0.2.0");
        let finalize = Command::FinalizeClusterVersion(ClusterVersionFinalization {
            version: "0.2.0".into(),
        });
        assert_eq!(state.apply(finalize), crate::CommandResult::Ok);
        assert!(state.check_proposable(&prune).is_ok());
    }

    #[test]
    fn finalization_is_pending_once_every_node_runs_the_new_version_and_then_applies() {
        let mut state = mixed();
        set_version(&mut state, 1, "0.2.0");
        assert_eq!(
            state.pending_finalization(),
            None,
            "node 2 still runs 0.1.0"
        );
        set_version(&mut state, 2, "0.2.1");
        assert_eq!(state.pending_finalization(), Some("0.2.0"));
        let finalize = Command::FinalizeClusterVersion(ClusterVersionFinalization {
            version: "0.2.0".into(),
        });
        assert!(state.check_proposable(&finalize).is_ok());
        assert_eq!(state.apply(finalize), crate::CommandResult::Ok);
        assert_eq!(state.cluster_version(), "0.2.0");
        assert_eq!(state.pending_finalization(), None);
    }
}
