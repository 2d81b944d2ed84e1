//! `flotilla status`: the cluster at a glance, like `rladmin status`.

use anyhow::Result;
use clap::Args;
use flotilla_client::Client;
use flotilla_model::rest::{BdbInfo, ClusterInfo, NodeInfo, NodeRole, NodeStatus};
use serde::Serialize;

/// Arguments of `flotilla status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `flotilla status --json`.
#[derive(Serialize)]
struct StatusJson {
    cluster: ClusterInfo,
    nodes: Vec<NodeInfo>,
    databases: Vec<BdbInfo>,
}

/// Fetches and prints the status.
pub async fn run(client: &Client, args: StatusArgs) -> Result<()> {
    let cluster = client.cluster().await?;
    let nodes = client.nodes().await?;
    let databases = client.bdbs().await?;
    if args.json {
        let status = StatusJson {
            cluster,
            nodes,
            databases,
        };
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("CLUSTER: {} ({} nodes)", cluster.name, cluster.nodes_count);
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
        println!(
            "{:<8} {:<10} {:<16} {:<10} {:<34} {}",
            format!("node:{}", node.uid),
            role,
            node.addr,
            node.software_version,
            node.os,
            status
        );
    }
    println!();
    println!("DATABASES:");
    crate::db::print_table(&databases);
    Ok(())
}
