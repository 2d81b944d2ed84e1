//! `flotilla status`: the cluster at a glance, like `rladmin status`.

use anyhow::Result;
use clap::Args;
use flotilla_client::Client;
use flotilla_model::crdb_sync::{SourceReport, SyncStatus};
use flotilla_model::rest::{BdbInfo, ClusterInfo, NodeInfo, NodeRole, NodeStatus, ShardInfo};
use serde::Serialize;

/// Arguments of `flotilla status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Show only problems: nodes not up, databases not active or on an old engine, CRDB
    /// links out of sync.
    #[arg(long)]
    pub issues_only: bool,
}

/// The problems `flotilla status` flags, one line each, naming the object and the fix.
fn issues(
    cluster: &ClusterInfo,
    nodes: &[NodeInfo],
    databases: &[BdbInfo],
    shards: &[ShardInfo],
    sources: &[SourceReport],
) -> Vec<String> {
    let mut found = Vec::new();
    for node in nodes.iter().filter(|n| n.status != NodeStatus::Up) {
        found.push(
            format!(
                "node:{} ({}) is {:?}: check that its daemon runs (`flotilla node start` on it) and read its data dir's flotilla.log",
                node.uid, node.addr, node.status
            )
            .to_lowercase(),
        );
    }
    found.extend(faults(nodes, &[]));
    for node in nodes.iter().filter(|n| n.maintenance) {
        found.push(format!(
            "node:{} ({}) is in maintenance mode (no shard is placed on it): `flotilla node maintenance {} off` once its work is done",
            node.uid, node.addr, node.uid
        ));
    }
    if let Some(version) = &cluster.finalization_pending {
        found.push(format!(
            "cluster: every node runs {version} but the cluster version is {}: `flotilla upgrade finalize`",
            cluster.cluster_version
        ));
    }
    for db in databases {
        if db.status != "active" {
            found.push(format!(
                "db:{} {} is {}: `flotilla db show {}` and `flotilla action list`",
                db.uid, db.name, db.status, db.name
            ));
        }
        if old_engine(cluster, db) {
            found.push(format!(
                "db:{} {}: OLD REDIS VERSION {} (cluster default {}): `flotilla db upgrade {}`",
                db.uid, db.name, db.redis_version, cluster.default_redis_version, db.name
            ));
        }
        found.extend(old_crdt_versions(cluster, db));
    }
    found.extend(faults(&[], shards));
    found.extend(sync_issues(sources));
    found
}

/// The Active-Active links that are out of sync, one line each naming the database, the peer,
/// the shard, how long, the last error and where to look.
fn sync_issues(sources: &[SourceReport]) -> Vec<String> {
    sources
        .iter()
        .filter(|s| s.status == SyncStatus::OutOfSync)
        .map(|s| {
            format!(
                "db:{} crdb {}: OUT OF SYNC with instance {} ({}) on shard {} for {} ms{}: check that the peer cluster is up and reachable (`flotilla crdb health --crdb-guid {}`)",
                s.bdb_uid,
                s.crdb_guid,
                s.peer_instance_id,
                s.peer_cluster,
                s.shard,
                s.lag,
                s.last_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                s.crdb_guid
            )
        })
        .collect()
}

/// The sync sources of every node that is up (a shard's pullers run on the node of its
/// master, and each node answers for its own); a node that does not answer adds nothing.
async fn crdt_sources(client: &Client, nodes: &[NodeInfo]) -> Vec<SourceReport> {
    let mut all = Vec::new();
    for node in nodes.iter().filter(|n| n.status == NodeStatus::Up) {
        if let Ok(sources) = client.for_node(&node.addr).crdt_sources().await {
            all.extend(sources);
        }
    }
    all.sort_by(|a, b| {
        (a.bdb_uid, a.peer_instance_id, a.shard).cmp(&(b.bdb_uid, b.peer_instance_id, b.shard))
    });
    all
}

/// The `CRDB SYNC:` table: each link of each local CRDB instance, its state and lag.
fn print_sources(sources: &[SourceReport]) {
    let peers: Vec<String> = sources
        .iter()
        .map(|s| format!("{} ({})", s.peer_instance_id, s.peer_cluster))
        .collect();
    // The peer column is as wide as its longest name: cluster names are the operator's.
    let width = peers
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("PEER".len());
    println!(
        "{:<8} {:<38} {:<width$} {:<6} {:<12} {:>8} {:>8}  LAST ERROR",
        "DB:ID", "CRDB", "PEER", "SHARD", "STATUS", "LAG(ms)", "OPS LAG"
    );
    for (s, peer) in sources.iter().zip(&peers) {
        let status = match s.status {
            SyncStatus::InSync => "in_sync",
            SyncStatus::Syncing => "syncing",
            SyncStatus::OutOfSync => "OUT_OF_SYNC",
        };
        println!(
            "{:<8} {:<38} {:<width$} {:<6} {:<12} {:>8} {:>8}  {}",
            format!("db:{}", s.bdb_uid),
            s.crdb_guid,
            peer,
            s.shard,
            status,
            s.lag,
            s.ops_lag,
            s.last_error.as_deref().unwrap_or("")
        );
    }
}

/// What nodes and shards report wrong on themselves (a full data dir, a store stopped on a
/// failed write, data files that do not load), one line each naming the file and the fix.
fn faults(nodes: &[NodeInfo], shards: &[ShardInfo]) -> Vec<String> {
    let on_nodes = nodes.iter().flat_map(|node| {
        node.problems
            .iter()
            .map(move |problem| format!("node:{} ({}): {problem}", node.uid, node.addr))
    });
    let on_shards = shards.iter().filter_map(|shard| {
        let problem = shard.problem.as_ref()?;
        Some(format!(
            "shard:{} (db:{} on node:{}, {}): {problem}",
            shard.uid, shard.bdb_uid, shard.node_uid, shard.status
        ))
    });
    on_nodes.chain(on_shards).collect()
}

fn old_engine(cluster: &ClusterInfo, db: &BdbInfo) -> bool {
    let order = |v: &str| v.parse::<flotilla_model::EngineVersion>().ok();
    matches!((order(&db.redis_version), order(&cluster.default_redis_version)), (Some(a), Some(b)) if a < b)
}

/// `flotilla status --json`.
#[derive(Serialize)]
struct StatusJson {
    cluster: ClusterInfo,
    nodes: Vec<NodeInfo>,
    databases: Vec<BdbInfo>,
    /// Each Active-Active link's sync state and lag (`GET /v1/crdt_sources` of every node).
    crdt_sources: Vec<SourceReport>,
    issues: Vec<String>,
}

/// Fetches and prints the status.
pub async fn run(client: &Client, args: StatusArgs) -> Result<()> {
    let cluster = client.cluster().await?;
    let nodes = client.nodes().await?;
    let databases = client.bdbs().await?;
    let shards = client.shards().await?;
    let sources = crdt_sources(client, &nodes).await;
    let issues = issues(&cluster, &nodes, &databases, &shards, &sources);
    if args.issues_only && !args.json {
        if issues.is_empty() {
            println!("no issues");
        }
        for issue in &issues {
            println!("{issue}");
        }
        return Ok(());
    }
    if args.json {
        let status = StatusJson {
            cluster,
            nodes,
            databases,
            crdt_sources: sources,
            issues,
        };
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "CLUSTER: {} ({} nodes), cluster version {}{}",
        cluster.name,
        cluster.nodes_count,
        if cluster.cluster_version.is_empty() {
            "0.1.0"
        } else {
            &cluster.cluster_version
        },
        cluster
            .finalization_pending
            .as_ref()
            .map(|v| format!(" (finalization to {v} pending: `flotilla upgrade finalize`)"))
            .unwrap_or_default()
    );
    if let Some(fingerprint) = &cluster.ca_fingerprint {
        println!("CLUSTER CA: SHA-256 {fingerprint}");
    }
    println!();
    println!("CLUSTER NODES:");
    println!(
        "{:<8} {:<10} {:<16} {:<10} {:<34} STATUS",
        "NODE:ID", "ROLE", "ADDRESS", "VERSION", "OS"
    );
    for node in &nodes {
        let role = match node.role {
            NodeRole::Primary => "primary",
            NodeRole::Secondary => "secondary",
        };
        let status = match node.status {
            NodeStatus::Up => "up",
            NodeStatus::Down => "DOWN",
            NodeStatus::Unknown => "unknown",
        };
        let status = if node.maintenance {
            format!("{status} MAINTENANCE")
        } else {
            status.to_string()
        };
        println!(
            "{:<8} {:<10} {:<16} {:<10} {:<34} {}",
            format!("node:{}", node.uid),
            role,
            node.addr,
            node.software_version,
            os_text(node),
            status
        );
    }
    println!();
    println!("DATABASES:");
    crate::db::print_table(&databases);
    if !sources.is_empty() {
        println!();
        println!("CRDB SYNC:");
        print_sources(&sources);
    }
    for line in sync_issues(&sources) {
        println!("{line}");
    }
    let faults = faults(&nodes, &shards);
    if !faults.is_empty() {
        println!();
        println!("FAULTS:");
        for fault in faults {
            println!("{fault}");
        }
    }
    for db in databases.iter().filter(|db| old_engine(&cluster, db)) {
        println!(
            "db:{} {}: OLD REDIS VERSION ({}; cluster default {})",
            db.uid, db.name, db.redis_version, cluster.default_redis_version
        );
    }
    for line in databases
        .iter()
        .flat_map(|db| old_crdt_versions(&cluster, db))
    {
        println!("{line}");
    }
    Ok(())
}

/// The node's OS as `flotilla status` shows it: its name, and the id packages list.
fn os_text(node: &flotilla_model::rest::NodeInfo) -> String {
    match node.host.os_id.as_str() {
        "" => node.os.clone(),
        id => format!("{} [{id}]", node.os),
    }
}

/// The `OLD CRDB PROTOCOL VERSION` / `OLD CRDB FEATURESET VERSION` flags of a database that is
/// a CRDB instance running an older protocol or feature set than this cluster's software
/// knows (Redis Software's `rladmin status` flags), each with the command that moves it.
fn old_crdt_versions(
    cluster: &flotilla_model::rest::ClusterInfo,
    db: &flotilla_model::rest::BdbInfo,
) -> Vec<String> {
    let Some(crdt) = &db.crdt else {
        return vec![];
    };
    let mut flags = Vec::new();
    let newest_protocol = cluster
        .crdt_supported_protocol_versions
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    if crdt.crdt_protocol_version < newest_protocol {
        flags.push(format!(
            "db:{} {}: OLD CRDB PROTOCOL VERSION {} (this cluster speaks {newest_protocol}): `flotilla db upgrade {}`",
            db.uid, db.name, crdt.crdt_protocol_version, db.name
        ));
    }
    if crdt.crdt_featureset_version < cluster.crdt_supported_featureset_version {
        flags.push(format!(
            "db:{} {}: OLD CRDB FEATURESET VERSION {} (this cluster knows {}): `flotilla crdb update --crdb-guid {} --featureset-version true` once every instance runs the newest protocol",
            db.uid,
            db.name,
            crdt.crdt_featureset_version,
            cluster.crdt_supported_featureset_version,
            crdt.crdt_guid
        ));
    }
    flags
}
