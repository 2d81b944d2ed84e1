//! `flotilla upgrade check|node|finalize|cluster`: cluster software upgrades, in place and
//! rolling.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use flotilla_checks::{
    upgrade_check, Blocker, UpgradeCheckReport, UpgradeCheckRequest, UpgradeFacts,
};
use flotilla_client::Client;
use flotilla_model::rest::{ClusterUpgradeRequest, NodeUpgradeRequest, NodeUpgradeStatus};
use flotilla_model::{
    compare_versions, ActionStatus, UpgradeMethod, FIRST_RELEASE, VERSIONED_RELEASE,
};

use crate::cli::Connection;
use crate::output;
use flotilla_package::Manifest;

/// How long an in-place upgrade of one node may take from the CLI's point of view.
const NODE_UPGRADE_DEADLINE: Duration = Duration::from_secs(120);
/// How often the CLI looks at the upgrade's progress.
const POLL: Duration = Duration::from_millis(100);
/// How long `upgrade node` waits for every node and shard to be healthy again after the node
/// upgraded (see `wait_until_settled`).
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// `flotilla upgrade` subcommands.
#[derive(Subcommand)]
pub enum UpgradeCommand {
    /// May the cluster move to the package? Every refusal names the object and the fix.
    Check(CheckArgs),
    /// Upgrade one node's Flotilla software in place (the new daemon takes every socket and
    /// client connection over; from a version without handover, the daemon restarts).
    Node(NodeArgs),
    /// Move the cluster version to the version every node runs now.
    Finalize,
    /// Upgrade every node, one at a time, the primary node last, then finalize: one
    /// resumable action (`flotilla action show ID`).
    Cluster(ClusterArgs),
    /// Move every node to another operating system (extra-node or replace-node), one at a
    /// time, the primary node last: one resumable action.
    Os(crate::os_upgrade::OsArgs),
}

/// Arguments of `flotilla upgrade cluster`.
#[derive(Args)]
pub struct ClusterArgs {
    /// The package (folder or .tar.gz), at this same path on every node's machine.
    #[arg(long)]
    pub package: PathBuf,
    /// How each node moves: in-place (the daemon hands over on the same machine), add-node (a
    /// new node joins, the old one is drained and leaves) or replace-node (the old node is
    /// drained, leaves, and its reinstalled machine joins back under its uid).
    #[arg(long, default_value = "in-place")]
    pub method: String,
    /// A dev cluster's folder (`flotilla dev up --dir`): the CLI does the operator's part of a
    /// rolling upgrade itself (`dev add-node`, `dev reinstall-node`) and resumes the action.
    /// Without it the action pauses where a machine must be installed and says what to do.
    #[arg(long)]
    pub dev_dir: Option<PathBuf>,
    /// Address of node 1 of that dev cluster, as given to `dev up`.
    #[arg(long, default_value = "127.0.0.11")]
    pub base_addr: std::net::Ipv4Addr,
    /// Go on despite these checks (see `upgrade node --force`).
    #[arg(long, value_delimiter = ',')]
    pub force: Vec<Blocker>,
    /// Do not ask before starting.
    #[arg(long)]
    pub yes: bool,
    /// Start the action and return (follow it with `flotilla action wait ID`).
    #[arg(long)]
    pub no_wait: bool,
}

/// Arguments of `flotilla upgrade check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The package (folder or .tar.gz).
    #[arg(long, required_unless_present = "os")]
    pub package: Option<PathBuf>,
    /// Whether the cluster may move to this operating system (`ID-VERSION_ID`, `debian-13`)
    /// instead: its packages support it and the current one, every node uses the same install
    /// directories, every node is up, no action runs.
    #[arg(long, conflicts_with = "package")]
    pub os: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `flotilla upgrade node`.
#[derive(Args)]
pub struct NodeArgs {
    /// The node (default: the node at --url).
    pub uid: Option<u64>,
    /// The package (folder or .tar.gz) on the node's machine.
    #[arg(long)]
    pub package: PathBuf,
    /// Go on despite these checks (comma-separated: node_down, shard_unhealthy,
    /// action_running, maintenance, upgrade_path, engine_unsupported, quorum).
    #[arg(long, value_delimiter = ',')]
    pub force: Vec<Blocker>,
    /// Do not ask before upgrading.
    #[arg(long)]
    pub yes: bool,
    /// Do not finalize the cluster version when this was the last node to upgrade.
    #[arg(long)]
    pub no_auto_finalize: bool,
}

/// Runs an upgrade subcommand.
pub async fn run(conn: &Connection, command: UpgradeCommand) -> Result<()> {
    let client = &conn.client();
    match command {
        UpgradeCommand::Check(CheckArgs {
            os: Some(os), json, ..
        }) => crate::os_upgrade::check(client, &os, json).await,
        UpgradeCommand::Check(args) => {
            let package = args.package.context("--package or --os is required")?;
            let manifest = read_manifest(&package)?;
            let report = check_report(client, &manifest).await?;
            output::print_or_json(&report, args.json, |report| print!("{}", report.to_text()))?;
            if !report.refusals.is_empty() {
                bail!("the cluster may not move to {} now", manifest.version);
            }
            Ok(())
        }
        UpgradeCommand::Node(args) => upgrade_node(client, args).await,
        UpgradeCommand::Cluster(args) => upgrade_cluster(conn, args).await,
        UpgradeCommand::Os(args) => crate::os_upgrade::upgrade_os(conn, args).await,
        UpgradeCommand::Finalize => {
            let info = client.finalize().await?;
            println!("cluster version finalized: {}", info.cluster_version);
            Ok(())
        }
    }
}

async fn upgrade_cluster(conn: &Connection, args: ClusterArgs) -> Result<()> {
    let client = conn.client();
    let method = UpgradeMethod::parse(&args.method).ok_or_else(|| {
        anyhow!(
            "--method {}: not a method; use in-place, add-node or replace-node",
            args.method
        )
    })?;
    let package = std::fs::canonicalize(&args.package)
        .with_context(|| format!("--package {}", args.package.display()))?;
    let manifest = read_manifest(&package)?;
    refuse_before_versioned_release(&client, method).await?;
    let report = check_report(&client, &manifest).await?;
    refuse_blocking(&report, &args.force)?;
    let primary = client.cluster().await?.primary_node;
    let nodes = client.nodes().await?;
    let mut order: Vec<_> = nodes.iter().filter(|n| Some(n.uid) != primary).collect();
    order.extend(nodes.iter().filter(|n| Some(n.uid) == primary));
    println!(
        "upgrade the cluster to {} {}, one node at a time, the primary node last:",
        manifest.version,
        method.name()
    );
    for node in &order {
        let role = if Some(node.uid) == primary {
            " (the primary node: primary-ship moves to another node first)"
        } else {
            ""
        };
        println!(
            "  node {} ({}) {} -> {}{role}",
            node.uid, node.addr, node.software_version, manifest.version
        );
    }
    println!(
        "  then the cluster version is finalized to {}",
        manifest.version
    );
    println!("{}", method_text(method));
    if !args.yes && !confirm()? {
        bail!("nothing done");
    }
    let request = ClusterUpgradeRequest {
        package: package.to_string_lossy().into_owned(),
        version: manifest.version.to_string(),
        method: Some(method.name().to_string()),
        os: None,
    };
    let operator = DevOperator {
        dir: args.dev_dir.clone(),
        base_addr: args.base_addr,
        package,
        os_release: None,
    };
    start_and_drive(conn, &request, &operator, args.no_wait).await
}

/// Starts the cluster upgrade `request` and, unless `no_wait`, follows it to its end with
/// `operator` doing the machine work on a dev cluster (`upgrade cluster`, `upgrade os`).
pub(crate) async fn start_and_drive(
    conn: &Connection,
    request: &ClusterUpgradeRequest,
    operator: &DevOperator,
    no_wait: bool,
) -> Result<()> {
    let started = conn.client().start_cluster_upgrade(request).await?;
    println!(
        "action {} ({}), {} steps",
        started.action_uid, started.name, started.steps_total
    );
    if no_wait {
        println!(
            "follow it with `flotilla action wait {}`",
            started.action_uid
        );
        return Ok(());
    }
    drive_to_the_end(conn, operator, started.action_uid).await
}

/// Who does the operator's part of a rolling upgrade on a dev cluster (`--dev-dir`): the
/// folder, node 1's address, the package new and reinstalled nodes run, and the os-release
/// their machines get (an OS upgrade).
pub(crate) struct DevOperator {
    /// The dev cluster's folder; `None` on real machines (the action pauses for the operator).
    pub dir: Option<PathBuf>,
    /// Node 1's address, as given to `dev up`.
    pub base_addr: std::net::Ipv4Addr,
    /// The package new and reinstalled nodes run.
    pub package: PathBuf,
    /// The os-release file their machines get.
    pub os_release: Option<PathBuf>,
}

/// What each method does to a node, and what it risks, as the plan prints it.
fn method_text(method: UpgradeMethod) -> &'static str {
    match method {
        UpgradeMethod::InPlace => "each node's daemon hands its sockets and client connections to the new binary (a restart, closing that node's client connections, between versions without the handover); no shard moves or restarts; the action stops at the first node that fails and `flotilla action show ID` says why",
        UpgradeMethod::AddNode => "for each old node: a new node with the package joins (the action pauses until it is there: install it, join it, `flotilla action resume ID`), every shard of the old node moves off it (a copy, synced, a planned switchover for primaries: no client error), then it leaves the cluster; every database keeps its replicas throughout, but the old node's endpoint goes with it: clients must reach the databases through the other nodes' endpoints (DNS or discovery)",
        UpgradeMethod::ReplaceNode => "for each old node: every shard moves off it (a copy, synced, a planned switchover for primaries: no client error), it leaves the cluster, and its machine is reinstalled with the package and joins back under its uid (the action pauses until it is there: `flotilla cluster join --replace-node UID`, then `flotilla action resume ID`); while a node is out the others hold every shard: they need the memory",
    }
}

/// Refuses any `upgrade cluster` while the cluster version predates the release that knows the
/// action (its 0.1.0 members could not apply it), naming the way that works.
pub(crate) async fn refuse_before_versioned_release(
    client: &Client,
    method: UpgradeMethod,
) -> Result<()> {
    let cluster = client.cluster().await?;
    // A 0.1.0 node answers without the field.
    let version = match cluster.cluster_version.as_str() {
        "" => FIRST_RELEASE,
        version => version,
    };
    if compare_versions(version, VERSIONED_RELEASE).is_ge() {
        return Ok(());
    }
    bail!(
        "refused: the cluster version is {} and `upgrade cluster --method {}` is an action its nodes cannot run (it, and the node removal the rolling methods need, came with {VERSIONED_RELEASE}). Upgrade each node in place instead, one at a time, the primary node last: `flotilla upgrade node N --package P` (each daemon restarts on the new version; the last one finalizes the cluster version). From then on every method works.",
        version,
        method.name()
    )
}

/// Follows the action to its end; on a dev cluster (`--dev-dir`) does the operator's part
/// each time it pauses (a new node, a reinstalled node) and resumes it. When the node the CLI
/// talks to leaves (a rolling upgrade removes every old node), it follows through another.
async fn drive_to_the_end(conn: &Connection, operator: &DevOperator, uid: u64) -> Result<()> {
    let mut conn = conn.clone();
    let started = Instant::now();
    let mut printed = 0;
    let mut known: Vec<String> = Vec::new();
    loop {
        if let Ok(nodes) = conn.client().nodes().await {
            known = nodes.into_iter().map(|n| n.addr).collect();
        }
        let action = match crate::action::follow(&conn.client(), uid, &mut printed).await {
            Ok(action) => action,
            Err(e) => {
                conn = another_node(&conn, &known, uid)
                    .await
                    .with_context(|| format!("following action {uid}: {e:#}"))?;
                continue;
            }
        };
        let message = action.error.clone().unwrap_or_default();
        match action.status {
            ActionStatus::Completed => {
                println!(
                    "action {uid} completed in {:.2} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            ActionStatus::Paused => {
                if operator.dir.is_none() {
                    println!("action {uid} paused at '{}': {message}", action.pending_ops);
                    return Ok(());
                }
                println!(
                    "action {uid} paused at '{}'; doing the operator's part on the dev cluster",
                    action.pending_ops
                );
                operate_dev_cluster(&conn, operator, &action.pending_ops).await?;
                conn.client().resume_action(uid).await?;
            }
            status => bail!(
                "action {uid} {status:?} at '{}': {message}",
                action.pending_ops
            ),
        }
    }
}

/// A connection to a node among `known` (the node addresses last listed) that answers about
/// action `uid`: the node `conn` talks to may have just left.
async fn another_node(conn: &Connection, known: &[String], uid: u64) -> Result<Connection> {
    let deadline = Instant::now() + NODE_UPGRADE_DEADLINE;
    while Instant::now() < deadline {
        for addr in known {
            let client = conn.client().for_node(addr);
            if client.action(uid).await.is_ok() {
                let url = client.base().to_string();
                return Ok(Connection {
                    url,
                    ..conn.clone()
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("no node of the cluster answers; `flotilla status --url https://NODE:9443` on any node")
}

/// The operator's part of the step `step` (`add_node node:N`, `rejoin_node node:N`) on the dev
/// cluster `operator` names.
async fn operate_dev_cluster(conn: &Connection, operator: &DevOperator, step: &str) -> Result<()> {
    let dir = operator.dir.clone().context("not a dev cluster")?;
    let node = step
        .split_once(" node:")
        .and_then(|(_, n)| n.parse::<u64>().ok());
    let machine = crate::dev::MachineArgs {
        dir,
        base_addr: operator.base_addr,
        package: Some(operator.package.clone()),
        os_release: operator.os_release.clone(),
    };
    match (step.split(' ').next(), node) {
        (Some("add_node"), Some(_)) => {
            crate::dev::add_node(conn, crate::dev::AddNodeArgs { machine }).await
        }
        (Some("rejoin_node"), Some(uid)) => {
            let args = crate::dev::ReinstallNodeArgs { uid, machine };
            crate::dev::reinstall_node(conn, args).await
        }
        _ => bail!("the action paused at '{step}', which needs no machine work: `flotilla action show` says why"),
    }
}

pub(crate) fn read_manifest(package: &Path) -> Result<Manifest> {
    Manifest::of_package(package)
        .with_context(|| format!("--package {}: not a Flotilla package", package.display()))
}

/// The upgrade check, asked of the cluster; a cluster whose API predates the check (0.1.0) is
/// judged here, on the same REST views.
async fn check_report(client: &Client, manifest: &Manifest) -> Result<UpgradeCheckReport> {
    let request = check_request(manifest);
    match client.upgrade_check(&request).await {
        Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {
            let package = request.package_facts().map_err(|e| anyhow!(e))?;
            let facts = UpgradeFacts::from_rest(
                &client.nodes().await?,
                &client.shards().await?,
                &client.bdbs().await?,
                &client.actions().await?,
                package,
            );
            Ok(UpgradeCheckReport {
                package_version: request.version,
                refusals: upgrade_check(&facts),
            })
        }
        other => Ok(other?),
    }
}

fn check_request(manifest: &Manifest) -> UpgradeCheckRequest {
    UpgradeCheckRequest {
        version: manifest.version.to_string(),
        upgrade_from: manifest.upgrade_from.to_string(),
        engines: manifest.engines.keys().map(|e| e.to_string()).collect(),
    }
}

async fn upgrade_node(client: &Client, args: NodeArgs) -> Result<()> {
    let package = std::fs::canonicalize(&args.package)
        .with_context(|| format!("--package {}", args.package.display()))?;
    let manifest = read_manifest(&package)?;
    let (uid, node) = crate::check::node_client(client, args.uid).await?;
    let info = client.node(uid).await?;
    let health = node.health().await?;
    let target = manifest.version.to_string();
    let backwards = compare_versions(&target, &info.software_version).is_lt();
    let mut forced = args.force.clone();
    if backwards {
        // Moving back is judged by the node against the cluster version, not upgrade_from.
        forced.push(Blocker::UpgradePath);
    }
    let report = check_report(client, &manifest).await?;
    refuse_blocking(&report, &forced)?;
    let handover = health.handover_protocol >= 1;
    let method = plan_text(
        uid,
        &info.addr,
        &info.software_version,
        &target,
        handover,
        &manifest,
    );
    println!("{method}");
    if !args.yes && !confirm()? {
        bail!("nothing done");
    }
    let started = Instant::now();
    let status = if handover {
        let request = NodeUpgradeRequest {
            package: package.to_string_lossy().into_owned(),
        };
        node.start_node_upgrade(uid, &request).await?;
        follow(&node, uid).await?
    } else {
        restart_locally(&node, &info.addr, &info.software_version, &package).await?
    };
    wait_until_running(&node, &target).await?;
    print_report(&status, started.elapsed());
    wait_until_settled(client, &manifest).await?;
    if !args.no_auto_finalize {
        finalize_if_due(client).await?;
    }
    Ok(())
}

fn refuse_blocking(report: &UpgradeCheckReport, forced: &[Blocker]) -> Result<()> {
    let blocking = report.blocking(forced);
    if blocking.is_empty() {
        return Ok(());
    }
    let mut text = format!(
        "refused: the cluster may not move to {} now:\n",
        report.package_version
    );
    for r in blocking {
        text.push_str(&r.to_text());
    }
    text.push_str("(`--force NAME` goes on despite the check NAME)");
    Err(anyhow!(text))
}

fn plan_text(
    uid: u64,
    addr: &str,
    from: &str,
    to: &str,
    handover: bool,
    manifest: &Manifest,
) -> String {
    let how = if handover && manifest.handover_protocol >= 1 {
        "handover: the running daemon passes its listening sockets, the cluster state and every client connection (at a command boundary) to the new binary; no shard restarts, no client connection closes"
    } else if handover {
        "restart in place (the package has no handover): the daemon stops and the new binary starts as it did; it adopts the running shards; this node's client connections close"
    } else {
        "restart (the running version has no handover): the daemon is stopped and the new binary started with the same arguments; it adopts the running shards; this node's client connections close"
    };
    format!("upgrade node {uid} ({addr}) from {from} to {to} by {how}")
}

pub(crate) fn confirm() -> Result<bool> {
    print!("go on? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Follows the node's upgrade record until it is done or failed. The node's API goes away
/// for a moment while the store passes from one daemon to the next.
async fn follow(node: &Client, uid: u64) -> Result<NodeUpgradeStatus> {
    let deadline = Instant::now() + NODE_UPGRADE_DEADLINE;
    let mut shown = 0;
    loop {
        if let Ok(status) = node.node_upgrade_status(uid).await {
            for (step, at) in status.steps.iter().skip(shown) {
                println!("  {step:<12} +{at} ms");
            }
            shown = status.steps.len();
            match status.state.as_str() {
                "done" => return Ok(status),
                "failed" => bail!(
                    "the upgrade of node {uid} failed at '{}': {}",
                    status.step,
                    status.error.unwrap_or_default()
                ),
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bail!("the upgrade of node {uid} did not finish within {NODE_UPGRADE_DEADLINE:?}; `flotilla check --node {uid}` and the node's flotilla.log tell more");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The fallback from a daemon without a handover: only possible on the node's own machine.
async fn restart_locally(
    node: &Client,
    addr: &str,
    from: &str,
    package: &Path,
) -> Result<NodeUpgradeStatus> {
    let ip: std::net::IpAddr = addr.parse()?;
    let port = node
        .base()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(8080);
    let pid = flotilla_upgrade::daemon_serving(ip, port).ok_or_else(|| {
        anyhow!("the daemon of node {addr} runs {from}, which cannot hand over; its restart must run on that node's machine (no local process listens on {addr}:{port})")
    })?;
    let restarted = flotilla_upgrade::restart_daemon(pid, package, from)
        .await
        .map_err(|e| anyhow!(e))?;
    println!(
        "  stopped pid {} and started pid {} from {}",
        restarted.old_pid,
        restarted.new_pid,
        restarted.package_dir.display()
    );
    let text = std::fs::read_to_string(restarted.data_dir.join(flotilla_api::UPGRADE_STATUS_FILE))?;
    Ok(serde_json::from_str(&text)?)
}

/// Waits (bounded) until every node is up and every shard active again as the primary node
/// sees it: after a restart, or a change of primary node, shards read `unknown` until their
/// agents' next reports, and the next node's upgrade check would refuse. Says so when the
/// cluster has not settled by [`SETTLE_DEADLINE`]; the next check then names what is wrong.
async fn wait_until_settled(client: &Client, manifest: &Manifest) -> Result<()> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        let report = check_report(client, manifest).await?;
        let unsettled: Vec<_> = report
            .refusals
            .iter()
            .filter(|r| matches!(r.blocker, Blocker::NodeDown | Blocker::ShardUnhealthy))
            .collect();
        if unsettled.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            println!(
                "warning: {} node(s) or shard(s) not healthy {SETTLE_DEADLINE:?} after the upgrade:",
                unsettled.len()
            );
            for r in unsettled {
                print!("{}", r.to_text());
            }
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the node's daemon answers with the new version and the cluster lists it so.
async fn wait_until_running(node: &Client, version: &str) -> Result<()> {
    let deadline = Instant::now() + NODE_UPGRADE_DEADLINE;
    loop {
        let running = node.health().await.ok();
        if let Some(health) = running.filter(|h| h.software_version == version) {
            let uid = health.node_uid.unwrap_or(0);
            if node
                .node(uid)
                .await
                .is_ok_and(|n| n.software_version == version)
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the node did not report version {version} within {NODE_UPGRADE_DEADLINE:?}; read its flotilla.log");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn print_report(status: &NodeUpgradeStatus, took: Duration) {
    println!(
        "node upgraded from {} to {} by {} in {:.2} s: {} client connection(s) moved, {} closed at a command boundary, store gap {} ms (pid {} -> {})",
        status.from_version,
        status.to_version,
        status.method,
        took.as_secs_f64(),
        status.sessions_moved,
        status.sessions_closed,
        status.store_gap_ms,
        status.old_pid,
        status.new_pid
    );
    if status.method == "restart" {
        println!("(restart: this node's client connections were closed; clients reconnect)");
    }
}

/// Finalizes the cluster version when every node runs a newer version than it.
async fn finalize_if_due(client: &Client) -> Result<()> {
    let cluster = client.cluster().await?;
    let Some(version) = cluster.finalization_pending else {
        return Ok(());
    };
    if compare_versions(&version, VERSIONED_RELEASE).is_lt() {
        return Ok(());
    }
    let info = client.finalize().await?;
    println!(
        "every node runs {version}: cluster version finalized to {} (moving a node back below it is refused from now on)",
        info.cluster_version
    );
    Ok(())
}
