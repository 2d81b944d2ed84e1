//! `flotilla check [ports]`: a node's prerequisite and port checks, answered by that node.

use crate::output;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use flotilla_checks::{CheckStatus, PortState};
use flotilla_client::Client;

/// Arguments of `flotilla check`.
#[derive(Args)]
pub struct CheckArgs {
    /// What to check (nothing: rlcheck's tests).
    #[command(subcommand)]
    pub what: Option<CheckCommand>,
    /// The node to check (default: the node at --url).
    #[arg(long, global = true)]
    pub node: Option<u64>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `flotilla check` subcommands.
#[derive(Subcommand)]
pub enum CheckCommand {
    /// Every port the node needs: served by Flotilla, free, taken by another program, or
    /// unreachable from another node.
    Ports,
}

/// Runs `flotilla check`; fails when a check failed (warnings pass).
pub async fn run(client: &Client, args: CheckArgs) -> Result<()> {
    let (uid, node) = node_client(client, args.node).await?;
    match args.what {
        None => {
            let report = node.node_check(uid).await?;
            output::print_or_json(&report, args.json, |report| print!("{}", report.to_text()))?;
            if report.status() == CheckStatus::Fail {
                bail!("node {uid} failed a check (see above)");
            }
        }
        Some(CheckCommand::Ports) => {
            let ports = node.node_ports(uid).await?;
            output::print_or_json(&ports, args.json, |ports| print_ports(ports))?;
            let blocked = ports.iter().any(|p| {
                matches!(p.state, PortState::Taken { .. }) || !p.unreachable_from.is_empty()
            });
            if blocked {
                bail!("a port node {uid} needs is taken by another program or unreachable (see above)");
            }
        }
    }
    Ok(())
}

/// The node's uid and a client for its own API.
pub async fn node_client(client: &Client, node: Option<u64>) -> Result<(u64, Client)> {
    let uid = match node {
        Some(uid) => uid,
        None => client.health().await?.node_uid.ok_or_else(|| {
            anyhow::anyhow!("the node at {} is not in a cluster yet", client.base())
        })?,
    };
    let info = client.node(uid).await?;
    Ok((uid, client.for_node(&info.addr)))
}

fn print_ports(ports: &[flotilla_checks::PortStatus]) {
    println!("{:<22} {:<40} STATE", "ADDRESS", "USE");
    for port in ports {
        let state = match &port.state {
            PortState::Flotilla { pid, program } => {
                format!("served by Flotilla ({program}, pid {pid})")
            }
            PortState::Free => "free".to_string(),
            PortState::Taken { pid, program } => format!(
                "TAKEN by {} (pid {})",
                program.as_deref().unwrap_or("another program"),
                pid.map_or("unknown".into(), |p| p.to_string())
            ),
        };
        let addr = format!("{}:{}", port.need.addr, port.need.port);
        println!("{addr:<22} {:<40} {state}", port.need.purpose);
        for (node, why) in &port.unreachable_from {
            println!("{:<22} {:<40} UNREACHABLE from node {node}: {why}", "", "");
        }
    }
}
