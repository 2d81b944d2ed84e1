//! `flotilla upgrade check --os TARGET`: may the cluster move to another operating system?
//! (Redis Software's OS upgrade prerequisites: the installed version supports both the current
//! and the target OS, every node uses the same install directories, the cluster is healthy.)

use std::path::Path;

use flotilla_model::rest::{ActionInfo, NodeInfo, NodeStatus};
use flotilla_model::ActionStatus;

use crate::upgrade::{Blocker, Refusal};

/// Every reason the cluster may not move its nodes to operating system `target` (an
/// `ID-VERSION_ID` such as `debian-13`) now; empty: it may.
pub fn os_upgrade_check(nodes: &[NodeInfo], actions: &[ActionInfo], target: &str) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for node in nodes {
        refusals.extend(node_down(node));
        refusals.extend(in_maintenance(node));
        refusals.extend(unsupported(node, target));
    }
    refusals.extend(install_dirs(nodes));
    refusals.extend(
        actions
            .iter()
            .filter(|a| matches!(a.status, ActionStatus::Running | ActionStatus::Paused))
            .map(|a| Refusal {
                blocker: Blocker::ActionRunning,
                object: format!("action:{}", a.action_uid),
                reason: format!("{} is at '{}'", a.kind.name(), a.pending_ops),
                fix: format!(
                    "wait for it (`flotilla action wait {}`) or cancel it (`flotilla action cancel {}`)",
                    a.action_uid, a.action_uid
                ),
            }),
    );
    refusals
}

fn node_down(node: &NodeInfo) -> Option<Refusal> {
    (node.status != NodeStatus::Up).then(|| Refusal {
        blocker: Blocker::NodeDown,
        object: format!("node:{}", node.uid),
        reason: format!("node {} ({}) is not up", node.uid, node.addr),
        fix: format!(
            "start it (`flotilla node start` on {}), or replace it (`flotilla cluster join --replace-node {}`)",
            node.addr, node.uid
        ),
    })
}

/// A node in maintenance mode holds no shards an OS upgrade could move back; it ends first.
fn in_maintenance(node: &NodeInfo) -> Option<Refusal> {
    node.maintenance.then(|| Refusal {
        blocker: Blocker::Maintenance,
        object: format!("node:{}", node.uid),
        reason: format!("node {} is in maintenance mode", node.uid),
        fix: format!("end it first: `flotilla node maintenance {} off`", node.uid),
    })
}

/// The node's package must support the OS it runs and the target.
fn unsupported(node: &NodeInfo, target: &str) -> Option<Refusal> {
    let host = &node.host;
    let object = format!("node:{}", node.uid);
    if host.os_id.is_empty() {
        return Some(Refusal {
            blocker: Blocker::OsUnsupported,
            object,
            reason: format!(
                "node {} runs {}, which does not report its OS id",
                node.uid, node.software_version
            ),
            fix: "upgrade the cluster software first (`flotilla upgrade node N --package P`)"
                .into(),
        });
    }
    let missing: Vec<&str> = [host.os_id.as_str(), target]
        .into_iter()
        .filter(|os| !host.supports(os))
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(Refusal {
        blocker: Blocker::OsUnsupported,
        object,
        reason: format!(
            "its package {} supports {}, not {}",
            node.software_version,
            host.supported_os.join(", "),
            missing.join(" nor ")
        ),
        fix: format!(
            "upgrade the cluster software first to a version whose package supports both {} and {target} (`flotilla upgrade cluster --package P`)",
            host.os_id
        ),
    })
}

/// Every node must install packages in the same directory and keep its data in the same one.
/// Data dirs are compared by the folder that holds them, so that a dev cluster's nodes on one
/// machine (`D/node-1`, `D/node-2`) agree, as real machines with the same path do.
fn install_dirs(nodes: &[NodeInfo]) -> Vec<Refusal> {
    let Some(first) = nodes.first() else {
        return Vec::new();
    };
    let data_root = |n: &NodeInfo| {
        Path::new(&n.host.data_dir)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    nodes
        .iter()
        .skip(1)
        .filter_map(|n| {
            let install = (n.host.install_dir != first.host.install_dir)
                .then(|| format!("installs packages in {} (node {}: {})", n.host.install_dir, first.uid, first.host.install_dir));
            let data = (data_root(n) != data_root(first)).then(|| {
                format!(
                    "keeps its data in {} (node {}: {})",
                    n.host.data_dir, first.uid, first.host.data_dir
                )
            });
            let differs: Vec<String> = install.into_iter().chain(data).collect();
            (!differs.is_empty()).then(|| Refusal {
                blocker: Blocker::InstallDirs,
                object: format!("node:{}", n.uid),
                reason: differs.join("; "),
                fix: format!(
                    "reinstall node {} with the same directories as the others (`flotilla cluster join --replace-node {}` from a machine set up like node {})",
                    n.uid, n.uid, first.uid
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use flotilla_model::rest::NodeRole;
    use flotilla_model::NodeHost;

    use super::*;

    fn node(uid: u64, os: &str, supported: &[&str], install: &str, data: &str) -> NodeInfo {
        NodeInfo {
            uid,
            addr: format!("127.0.0.{}", 10 + uid),
            role: NodeRole::Secondary,
            software_version: "0.2.0".into(),
            os: os.into(),
            status: NodeStatus::Up,
            maintenance: false,
            problems: Vec::new(),
            host: NodeHost {
                os_id: os.into(),
                supported_os: supported.iter().map(|s| s.to_string()).collect(),
                install_dir: install.into(),
                data_dir: data.into(),
            },
        }
    }

    const BOTH: &[&str] = &["debian-12", "debian-13"];

    #[test]
    fn a_cluster_whose_package_supports_both_systems_may_move() {
        let nodes = [
            node(1, "debian-12", BOTH, "/opt/f", "/var/f/node-1"),
            node(2, "debian-12", BOTH, "/opt/f", "/var/f/node-2"),
        ];
        assert_eq!(os_upgrade_check(&nodes, &[], "debian-13"), []);
    }

    #[test]
    fn an_unsupported_target_names_the_node_and_the_software_upgrade_first() {
        let nodes = [node(1, "debian-12", &["debian-12"], "/opt/f", "/var/f/n1")];
        let refusals = os_upgrade_check(&nodes, &[], "debian-13");
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        assert_eq!(refusals[0].blocker, Blocker::OsUnsupported);
        assert_eq!(refusals[0].object, "node:1");
        assert!(refusals[0].reason.contains("not debian-13"), "{refusals:?}");
        assert!(refusals[0].fix.contains("upgrade cluster"), "{refusals:?}");
    }

    #[test]
    fn a_node_in_maintenance_is_named_with_the_command_that_ends_it() {
        let mut nodes = [
            node(1, "debian-12", BOTH, "/opt/f", "/var/f/node-1"),
            node(2, "debian-12", BOTH, "/opt/f", "/var/f/node-2"),
        ];
        nodes[1].maintenance = true;
        let refusals = os_upgrade_check(&nodes, &[], "debian-13");
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        assert_eq!(
            (refusals[0].blocker, refusals[0].object.as_str()),
            (Blocker::Maintenance, "node:2")
        );
        assert!(refusals[0].fix.contains("node maintenance 2 off"));
    }

    #[test]
    fn a_node_with_other_directories_is_named() {
        let nodes = [
            node(1, "debian-12", BOTH, "/opt/f", "/var/f/node-1"),
            node(2, "debian-12", BOTH, "/usr/local/f", "/var/f/node-2"),
            node(3, "debian-12", BOTH, "/opt/f", "/data/node-3"),
        ];
        let refusals = os_upgrade_check(&nodes, &[], "debian-13");
        let objects: Vec<(&str, Blocker)> = refusals
            .iter()
            .map(|r| (r.object.as_str(), r.blocker))
            .collect();
        assert_eq!(
            objects,
            [
                ("node:2", Blocker::InstallDirs),
                ("node:3", Blocker::InstallDirs)
            ]
        );
        assert!(refusals[0].reason.contains("/usr/local/f"), "{refusals:?}");
    }
}
