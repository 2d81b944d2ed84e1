//! `flotilla upgrade os` and `flotilla upgrade check --os`: moving every node to another
//! operating system by adding or reinstalling machines (Redis Software's "Upgrade operating
//! system": the extra-node and replace-node methods), as one resumable action.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_agent::host::OsRelease;
use flotilla_checks::{os_upgrade_check, Blocker, Refusal};
use flotilla_client::Client;
use flotilla_model::rest::ClusterUpgradeRequest;
use flotilla_model::UpgradeMethod;

use crate::cli::Connection;
use crate::upgrade::{
    confirm, read_manifest, refuse_before_versioned_release, start_and_drive, DevOperator,
};

/// Arguments of `flotilla upgrade os`.
#[derive(Args)]
pub struct OsArgs {
    /// The operating system every node ends on, as `ID-VERSION_ID` (`debian-13`).
    #[arg(long)]
    pub os: String,
    /// extra-node (a new machine on the target OS joins, an old node is drained and leaves) or
    /// replace-node (an old node is drained, leaves, and its machine is reinstalled on the
    /// target OS and joins back under its uid).
    #[arg(long)]
    pub method: String,
    /// The package of the version the cluster runs (new and reinstalled machines install it):
    /// an OS upgrade keeps the software version.
    #[arg(long)]
    pub package: PathBuf,
    /// Go on despite these checks (comma-separated names the refusals print).
    #[arg(long, value_delimiter = ',')]
    pub force: Vec<Blocker>,
    /// Do not ask before starting.
    #[arg(long)]
    pub yes: bool,
    /// Start the action and return (follow it with `flotilla action wait ID`).
    #[arg(long)]
    pub no_wait: bool,
    /// A dev cluster's folder: the CLI adds and reinstalls its nodes itself, on machines that
    /// run the OS `--os-release` describes.
    #[arg(long)]
    pub dev_dir: Option<PathBuf>,
    /// Address of node 1 of that dev cluster, as given to `dev up`.
    #[arg(long, default_value = "127.0.0.11")]
    pub base_addr: std::net::Ipv4Addr,
    /// The os-release file the dev cluster's new and reinstalled machines get (its
    /// `ID-VERSION_ID` must be --os).
    #[arg(long)]
    pub os_release: Option<PathBuf>,
}

/// `flotilla upgrade check --os TARGET`: prints every refusal; fails when there is one.
pub async fn check(client: &Client, target: &str, json: bool) -> Result<()> {
    let refusals = refusals(client, target).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&refusals)?);
    } else if refusals.is_empty() {
        println!("the cluster may move to {target}");
    } else {
        for refusal in &refusals {
            print!("{}", refusal.to_text());
        }
    }
    if !refusals.is_empty() {
        bail!("the cluster may not move to {target} now");
    }
    Ok(())
}

async fn refusals(client: &Client, target: &str) -> Result<Vec<Refusal>> {
    let nodes = client.nodes().await?;
    let actions = client.actions().await?;
    Ok(os_upgrade_check(&nodes, &actions, target))
}

/// `flotilla upgrade os`: checks, prints the plan, starts the action and follows it.
pub async fn upgrade_os(conn: &Connection, args: OsArgs) -> Result<()> {
    let client = conn.client();
    let method = match args.method.as_str() {
        "extra-node" | "add-node" => UpgradeMethod::AddNode,
        "replace-node" => UpgradeMethod::ReplaceNode,
        other => bail!("--method {other}: an OS upgrade is extra-node or replace-node"),
    };
    let package = std::fs::canonicalize(&args.package)
        .with_context(|| format!("--package {}", args.package.display()))?;
    let manifest = read_manifest(&package)?;
    refuse_before_versioned_release(&client, method).await?;
    let nodes = client.nodes().await?;
    if let Some(other) = nodes
        .iter()
        .find(|n| n.software_version != manifest.version.to_string())
    {
        bail!(
            "--package {}: it is version {}, and node {} runs {}; an OS upgrade keeps the software version: name the package of the version every node runs (upgrade the software with `flotilla upgrade cluster` before or after)",
            package.display(),
            manifest.version,
            other.uid,
            other.software_version
        );
    }
    if !manifest.supports_os(&args.os) {
        bail!(
            "--os {}: package {} supports {}; upgrade the cluster software first to a version that supports {} (`flotilla upgrade cluster --package P`)",
            args.os,
            manifest.version,
            manifest.supported_os.join(", "),
            args.os
        );
    }
    if let Some(file) = &args.os_release {
        let os_id = OsRelease::read(file).os_id();
        if os_id != args.os {
            bail!(
                "--os-release {}: it describes {os_id}, not --os {}",
                file.display(),
                args.os
            );
        }
    }
    let blocking: Vec<Refusal> = refusals(&client, &args.os)
        .await?
        .into_iter()
        .filter(|r| !args.force.contains(&r.blocker))
        .collect();
    if !blocking.is_empty() {
        let text: String = blocking.iter().map(Refusal::to_text).collect();
        bail!(
            "refused: the cluster may not move to {} now:\n{text}(`--force NAME` goes on despite the check NAME)",
            args.os
        );
    }
    print_plan(&client, &nodes, &args.os, method).await?;
    if !args.yes && !confirm()? {
        bail!("nothing done");
    }
    let request = ClusterUpgradeRequest {
        package: package.to_string_lossy().into_owned(),
        version: manifest.version.to_string(),
        method: Some(args.method.clone()),
        os: Some(args.os.clone()),
    };
    let operator = DevOperator {
        dir: args.dev_dir,
        base_addr: args.base_addr,
        package,
        os_release: args.os_release,
    };
    start_and_drive(conn, &request, &operator, args.no_wait).await
}

async fn print_plan(
    client: &Client,
    nodes: &[flotilla_model::rest::NodeInfo],
    target: &str,
    method: UpgradeMethod,
) -> Result<()> {
    let primary = client.cluster().await?.primary_node;
    let mut order: Vec<_> = nodes.iter().filter(|n| Some(n.uid) != primary).collect();
    order.extend(nodes.iter().filter(|n| Some(n.uid) == primary));
    println!("move every node to {target}, one node at a time, the primary node last:");
    for node in order {
        let role = if Some(node.uid) == primary {
            " (the primary node: primary-ship moves to another node first)"
        } else {
            ""
        };
        println!(
            "  node {} ({}) {} -> {target}{role}",
            node.uid, node.addr, node.host.os_id
        );
    }
    let how = match method {
        UpgradeMethod::ReplaceNode => "each node is drained (its shards move to the other nodes: a copy, synced, a planned switchover for primaries), leaves, and its machine is reinstalled on the target OS with the same package and joins back under its uid (the action pauses for that: `flotilla cluster join --replace-node UID` on it, then `flotilla action resume ID`); the other nodes need the memory for its shards meanwhile",
        _ => "for each node a new machine on the target OS with the same package joins (the action pauses for that: `flotilla cluster join` on it, then `flotilla action resume ID`), the old node is drained (its shards move: a copy, synced, a planned switchover for primaries) and leaves; clients of an old node's endpoint must reach the databases through nodes that stay",
    };
    println!("{how}");
    Ok(())
}
