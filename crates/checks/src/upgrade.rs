//! `flotilla upgrade check`: may the cluster move to a package? Every refusal names the
//! blocking object and the command that fixes it, under a name `--force` can name.

use std::collections::BTreeSet;

use flotilla_model::rest::{ActionInfo, BdbInfo, NodeInfo, NodeStatus, ShardInfo};
use flotilla_model::ActionStatus;
use serde::{Deserialize, Serialize};

/// What can block an upgrade; `--force NAME` overrides one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocker {
    /// A node is not up.
    NodeDown,
    /// A shard is not active in its role.
    ShardUnhealthy,
    /// An action runs.
    ActionRunning,
    /// A node is in maintenance mode.
    Maintenance,
    /// The package may not be installed over a node's version.
    UpgradePath,
    /// The package does not bundle a database's engine.
    EngineUnsupported,
    /// One node down would lose the store's quorum.
    Quorum,
    /// A node's package does not support the target operating system (or its own).
    OsUnsupported,
    /// A node's install or data directories differ from the other nodes'.
    InstallDirs,
}

impl Blocker {
    /// Every blocker, for `--force` parsing and help.
    pub const ALL: [Blocker; 9] = [
        Blocker::NodeDown,
        Blocker::ShardUnhealthy,
        Blocker::ActionRunning,
        Blocker::Maintenance,
        Blocker::UpgradePath,
        Blocker::EngineUnsupported,
        Blocker::Quorum,
        Blocker::OsUnsupported,
        Blocker::InstallDirs,
    ];

    /// The name `--force` takes.
    pub fn name(self) -> &'static str {
        match self {
            Blocker::NodeDown => "node_down",
            Blocker::ShardUnhealthy => "shard_unhealthy",
            Blocker::ActionRunning => "action_running",
            Blocker::Maintenance => "maintenance",
            Blocker::UpgradePath => "upgrade_path",
            Blocker::EngineUnsupported => "engine_unsupported",
            Blocker::Quorum => "quorum",
            Blocker::OsUnsupported => "os_unsupported",
            Blocker::InstallDirs => "install_dirs",
        }
    }
}

impl std::str::FromStr for Blocker {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Blocker::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Blocker::ALL.iter().map(|b| b.name()).collect();
                format!("--force {s}: unknown check; one of {}", names.join(", "))
            })
    }
}

/// One reason the cluster may not move to the package now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Which check refused (`--force` takes this name).
    pub blocker: Blocker,
    /// The blocking object (`node:2`, `shard:7 of db:1 'cache'`, `action:4`).
    pub object: String,
    /// Why it blocks.
    pub reason: String,
    /// The command that fixes it.
    pub fix: String,
}

impl Refusal {
    /// The refusal as an indented paragraph: `[name] object: reason`, then the fix.
    pub fn to_text(&self) -> String {
        format!(
            "  [{}] {}: {}\n        fix: {}\n",
            self.blocker.name(),
            self.object,
            self.reason,
            self.fix
        )
    }
}

/// A node as the upgrade check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Its uid.
    pub uid: u64,
    /// Its address.
    pub addr: String,
    /// Whether it is up.
    pub up: bool,
    /// Its software version (as reported; may not parse for very old nodes).
    pub software_version: String,
    /// Whether it is a voting member of the store.
    pub voter: bool,
    /// Whether it is in maintenance mode.
    pub maintenance: bool,
}

/// A shard that is not active, as the API judges shards (`GET /v1/shards` `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardFacts {
    /// Its uid.
    pub uid: u64,
    /// Its database's uid and name.
    pub bdb: (u64, String),
    /// Its node.
    pub node_uid: u64,
    /// Its status (`active`, `down`, `syncing`, `unknown`).
    pub status: String,
}

/// A database and the engine it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdbFacts {
    /// Its uid.
    pub uid: u64,
    /// Its name.
    pub name: String,
    /// The engine it runs (`redis-6.2`).
    pub redis_version: String,
}

/// A running action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionFacts {
    /// Its uid.
    pub uid: u64,
    /// What it does (`db_upgrade`).
    pub name: String,
    /// Its current step.
    pub step: String,
}

/// What the package offers, from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFacts {
    /// The package's version.
    pub version: semver::Version,
    /// The versions it may be installed over.
    pub upgrade_from: semver::VersionReq,
    /// The engines it bundles (`redis-6.2`, ...).
    pub engines: BTreeSet<String>,
}

/// Everything the upgrade check judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeFacts {
    /// The cluster's nodes.
    pub nodes: Vec<NodeFacts>,
    /// Its shards.
    pub shards: Vec<ShardFacts>,
    /// Its databases.
    pub bdbs: Vec<BdbFacts>,
    /// The actions running now.
    pub running_actions: Vec<ActionFacts>,
    /// The package.
    pub package: PackageFacts,
}

impl UpgradeFacts {
    /// The facts as the REST API shows them (`/v1/nodes`, `/v1/shards`, `/v1/bdbs`,
    /// `/v1/actions`), which every release serves: the API judges its own views, and the CLI
    /// judges an older cluster's. Every member node votes (nodes join as voters).
    pub fn from_rest(
        nodes: &[NodeInfo],
        shards: &[ShardInfo],
        bdbs: &[BdbInfo],
        actions: &[ActionInfo],
        package: PackageFacts,
    ) -> UpgradeFacts {
        let name_of = |uid: u64| {
            bdbs.iter()
                .find(|b| b.uid == uid)
                .map(|b| b.name.clone())
                .unwrap_or_default()
        };
        UpgradeFacts {
            nodes: nodes
                .iter()
                .map(|n| NodeFacts {
                    uid: n.uid,
                    addr: n.addr.clone(),
                    up: n.status == NodeStatus::Up,
                    software_version: n.software_version.clone(),
                    voter: true,
                    maintenance: n.maintenance,
                })
                .collect(),
            shards: shards
                .iter()
                .map(|s| ShardFacts {
                    uid: s.uid,
                    bdb: (s.bdb_uid, name_of(s.bdb_uid)),
                    node_uid: s.node_uid,
                    status: s.status.clone(),
                })
                .collect(),
            bdbs: bdbs
                .iter()
                .map(|b| BdbFacts {
                    uid: b.uid,
                    name: b.name.clone(),
                    redis_version: b.redis_version.clone(),
                })
                .collect(),
            running_actions: actions
                .iter()
                .filter(|a| matches!(a.status, ActionStatus::Running | ActionStatus::Paused))
                .map(|a| ActionFacts {
                    uid: a.action_uid,
                    name: a.kind.name().to_string(),
                    step: a.pending_ops.clone(),
                })
                .collect(),
            package,
        }
    }
}

/// Every reason the cluster may not move to the package now (empty: it may).
pub fn upgrade_check(facts: &UpgradeFacts) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    refusals.extend(nodes_down(facts));
    refusals.extend(unhealthy_shards(facts));
    refusals.extend(running_actions(facts));
    refusals.extend(maintenance(facts));
    refusals.extend(upgrade_paths(facts));
    refusals.extend(unsupported_engines(facts));
    refusals.extend(quorum(facts));
    refusals
}

fn nodes_down(facts: &UpgradeFacts) -> impl Iterator<Item = Refusal> + '_ {
    facts.nodes.iter().filter(|n| !n.up).map(|n| Refusal {
        blocker: Blocker::NodeDown,
        object: format!("node:{} ({})", n.uid, n.addr),
        reason: "the node is down; an upgrade must see every node healthy".into(),
        fix: format!(
            "start its daemon (`flotilla node start --addr {} ...` on it, or `flotilla dev up` for a local cluster), then `flotilla check` on it",
            n.addr
        ),
    })
}

fn unhealthy_shards(facts: &UpgradeFacts) -> impl Iterator<Item = Refusal> + '_ {
    facts
        .shards
        .iter()
        .filter(|s| s.status != "active")
        .map(|s| Refusal {
            blocker: Blocker::ShardUnhealthy,
            object: format!("shard:{} of db:{} '{}' on node:{}", s.uid, s.bdb.0, s.bdb.1, s.node_uid),
            reason: format!("the shard is {}, not active", s.status),
            fix: format!(
                "wait until `flotilla status --issues-only` shows no issue for db '{}' (the agent restarts and resyncs shards on its own); if it stays, read the shard's engine.log on node:{}",
                s.bdb.1, s.node_uid
            ),
        })
}

fn running_actions(facts: &UpgradeFacts) -> impl Iterator<Item = Refusal> + '_ {
    facts.running_actions.iter().map(|a| Refusal {
        blocker: Blocker::ActionRunning,
        object: format!("action:{} ({})", a.uid, a.name),
        reason: format!(
            "the action is running (step '{}'); no cluster operation may run during an upgrade",
            a.step
        ),
        fix: format!(
            "`flotilla action wait {}` (or `flotilla action cancel {}`)",
            a.uid, a.uid
        ),
    })
}

fn maintenance(facts: &UpgradeFacts) -> impl Iterator<Item = Refusal> + '_ {
    facts
        .nodes
        .iter()
        .filter(|n| n.maintenance)
        .map(|n| Refusal {
            blocker: Blocker::Maintenance,
            object: format!("node:{} ({})", n.uid, n.addr),
            reason: "the node is in maintenance mode".into(),
            fix: format!("`flotilla node maintenance {} off`", n.uid),
        })
}

fn upgrade_paths(facts: &UpgradeFacts) -> impl Iterator<Item = Refusal> + '_ {
    let package = &facts.package;
    facts.nodes.iter().filter_map(move |n| {
        let installed = semver::Version::parse(&n.software_version).ok();
        let allowed = installed.as_ref().is_some_and(|v| {
            package.upgrade_from.matches(v) || *v == package.version
        });
        (!allowed).then(|| Refusal {
            blocker: Blocker::UpgradePath,
            object: format!("node:{} ({})", n.uid, n.addr),
            reason: format!(
                "the node runs {}; package {} may only be installed over {}",
                n.software_version, package.version, package.upgrade_from
            ),
            fix: format!(
                "upgrade the node to a version that {} accepts first (an intermediate package), or use a package whose upgrade_from covers {}",
                package.upgrade_from, n.software_version
            ),
        })
    })
}

fn unsupported_engines(facts: &UpgradeFacts) -> impl Iterator<Item = Refusal> + '_ {
    let engines = &facts.package.engines;
    facts
        .bdbs
        .iter()
        .filter(move |b| !engines.contains(&b.redis_version))
        .map(move |b| {
            let offered: Vec<&str> = engines.iter().map(String::as_str).collect();
            let newest = offered.last().copied().unwrap_or("a bundled engine");
            Refusal {
                blocker: Blocker::EngineUnsupported,
                object: format!("db:{} '{}'", b.uid, b.name),
                reason: format!(
                    "the database runs {}, which package {} does not bundle ({})",
                    b.redis_version,
                    facts.package.version,
                    offered.join(", ")
                ),
                fix: format!(
                    "`flotilla db upgrade {} --redis-version {newest}` before the cluster upgrade",
                    b.name
                ),
            }
        })
}

fn quorum(facts: &UpgradeFacts) -> Option<Refusal> {
    let voters = facts.nodes.iter().filter(|n| n.voter).count();
    let majority = voters / 2 + 1;
    (voters.saturating_sub(1) < majority).then(|| Refusal {
        blocker: Blocker::Quorum,
        object: format!("cluster ({voters} voting node(s))"),
        reason: format!(
            "with one of {voters} node(s) down the store loses its quorum ({majority} needed), and a node may be down during its upgrade"
        ),
        fix: "add nodes until there are at least 3 (`flotilla cluster join` on new machines), or pass `--force quorum` to accept a pause of configuration changes".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> UpgradeFacts {
        let node = |uid: u64| NodeFacts {
            uid,
            addr: format!("127.0.0.{}", 10 + uid),
            up: true,
            software_version: "0.2.0".into(),
            voter: true,
            maintenance: false,
        };
        UpgradeFacts {
            nodes: vec![node(1), node(2), node(3)],
            shards: vec![ShardFacts {
                uid: 1,
                bdb: (1, "cache".into()),
                node_uid: 1,
                status: "active".into(),
            }],
            bdbs: vec![BdbFacts {
                uid: 1,
                name: "cache".into(),
                redis_version: "valkey-8.1".into(),
            }],
            running_actions: Vec::new(),
            package: PackageFacts {
                version: semver::Version::new(0, 2, 1),
                upgrade_from: semver::VersionReq::parse(">=0.1.0, <0.2.1").unwrap(),
                engines: ["redis-7.0", "valkey-8.1", "valkey-9.1"]
                    .map(String::from)
                    .into(),
            },
        }
    }

    fn only(facts: &UpgradeFacts) -> Refusal {
        let refusals = upgrade_check(facts);
        assert_eq!(refusals.len(), 1, "{refusals:#?}");
        refusals.into_iter().next().unwrap()
    }

    #[test]
    fn a_node_in_maintenance_as_the_rest_api_shows_it_blocks_the_upgrade() {
        let node = |uid: u64, maintenance: bool| NodeInfo {
            uid,
            addr: format!("127.0.0.{}", 10 + uid),
            role: flotilla_model::rest::NodeRole::Secondary,
            software_version: "0.2.0".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            status: NodeStatus::Up,
            maintenance,
            problems: Vec::new(),
            host: Default::default(),
        };
        let nodes = [node(1, false), node(2, true), node(3, false)];
        let facts = UpgradeFacts::from_rest(&nodes, &[], &[], &[], healthy().package);
        let r = only(&facts);
        assert_eq!(
            (r.blocker, r.object.as_str()),
            (Blocker::Maintenance, "node:2 (127.0.0.12)")
        );
        assert!(
            r.fix.contains("flotilla node maintenance 2 off"),
            "{}",
            r.fix
        );
    }

    #[test]
    fn a_healthy_cluster_may_move() {
        assert!(upgrade_check(&healthy()).is_empty());
    }

    #[test]
    fn each_blocker_names_its_object_and_fix() {
        let mut down = healthy();
        down.nodes[1].up = false;
        let r = only(&down);
        assert_eq!(
            (r.blocker, r.object.as_str()),
            (Blocker::NodeDown, "node:2 (127.0.0.12)")
        );

        let mut shard = healthy();
        shard.shards[0].status = "down".into();
        let r = only(&shard);
        assert_eq!(r.blocker, Blocker::ShardUnhealthy);
        assert!(
            r.object.starts_with("shard:1 of db:1 'cache'"),
            "{}",
            r.object
        );

        let mut action = healthy();
        action.running_actions.push(ActionFacts {
            uid: 4,
            name: "db_upgrade".into(),
            step: "switchover 0-16383".into(),
        });
        let r = only(&action);
        assert_eq!(r.blocker, Blocker::ActionRunning);
        assert!(r.fix.contains("flotilla action wait 4"), "{}", r.fix);

        let mut maint = healthy();
        maint.nodes[2].maintenance = true;
        let r = only(&maint);
        assert_eq!(r.blocker, Blocker::Maintenance);
        assert!(r.fix.contains("maintenance 3 off"));

        let mut path = healthy();
        path.nodes[0].software_version = "0.0.9".into();
        let r = only(&path);
        assert_eq!(r.blocker, Blocker::UpgradePath);
        assert!(r.reason.contains("0.0.9"), "{}", r.reason);

        let mut engine = healthy();
        engine.bdbs[0].redis_version = "redis-6.2".into();
        let r = only(&engine);
        assert_eq!(r.blocker, Blocker::EngineUnsupported);
        assert!(
            r.fix
                .contains("flotilla db upgrade cache --redis-version valkey-9.1"),
            "{}",
            r.fix
        );

        let mut small = healthy();
        small.nodes.truncate(2);
        let r = only(&small);
        assert_eq!(r.blocker, Blocker::Quorum);
    }

    #[test]
    fn a_node_already_on_the_package_version_is_no_path_problem() {
        let mut half = healthy();
        half.nodes[0].software_version = "0.2.1".into();
        assert!(upgrade_check(&half).is_empty());
    }

    #[test]
    fn force_names_parse_and_unknown_ones_list_the_choices() {
        assert_eq!("quorum".parse::<Blocker>().unwrap(), Blocker::Quorum);
        let err = "everything".parse::<Blocker>().unwrap_err();
        assert!(err.contains("node_down, shard_unhealthy"), "{err}");
    }
}

impl UpgradeCheckRequest {
    /// The package facts the check judges.
    pub fn package_facts(&self) -> Result<PackageFacts, String> {
        Ok(PackageFacts {
            version: semver::Version::parse(&self.version)
                .map_err(|e| format!("version: {}: {e}", self.version))?,
            upgrade_from: semver::VersionReq::parse(&self.upgrade_from)
                .map_err(|e| format!("upgrade_from: {}: {e}", self.upgrade_from))?,
            engines: self.engines.iter().cloned().collect(),
        })
    }
}

/// `POST /v1/cluster/upgrade_check`: the package to judge, from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeCheckRequest {
    /// The package's version.
    pub version: String,
    /// The versions it may be installed over (a semver requirement).
    pub upgrade_from: String,
    /// The engines it bundles.
    pub engines: Vec<String>,
}

/// The answer to an upgrade check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeCheckReport {
    /// The package's version.
    pub package_version: String,
    /// Every reason the cluster may not move to it now; empty when it may.
    pub refusals: Vec<Refusal>,
}

impl UpgradeCheckReport {
    /// The refusals `--force` does not name.
    pub fn blocking(&self, forced: &[Blocker]) -> Vec<&Refusal> {
        self.refusals
            .iter()
            .filter(|r| !forced.contains(&r.blocker))
            .collect()
    }

    /// The report as text: one paragraph per refusal, or that the cluster may move.
    pub fn to_text(&self) -> String {
        if self.refusals.is_empty() {
            return format!(
                "the cluster may move to {}: every check passed\n",
                self.package_version
            );
        }
        let mut out = format!(
            "the cluster may not move to {} now ({} reason(s)):\n",
            self.package_version,
            self.refusals.len()
        );
        for r in &self.refusals {
            out.push_str(&r.to_text());
        }
        out
    }
}
