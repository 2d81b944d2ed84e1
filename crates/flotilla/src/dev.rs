//! `flotilla dev up|down|add-node|remove-node`: a local cluster of real daemons on loopback
//! addresses, which can grow and shrink like a real one.
//!
//! Node N binds the N-th address from `--base-addr` (127.0.0.11, .12, ...) with the same port
//! numbers on every node, as separate hosts would. Daemons run detached (own process group),
//! with their pidfile and log in their data dir (`DIR/node-N`). `dev up` is idempotent: it
//! starts only the daemons that are not running and creates or joins only nodes that are not
//! members yet, so running it again after a crash brings the cluster back. `dev down` stops
//! exactly the daemons whose pidfiles are in DIR, and their shard engines, by pid. `dev add-node`
//! starts the next node (`DIR/node-N`, the N-th address) and joins it; `dev remove-node UID` runs
//! `node remove` (drain, leave) and waits until the removed node's daemon stopped.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use flotilla_client::{read_bootstrap_token, Client};
use flotilla_model::rest::{NodeRole, NodeStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cli::{default_dev_dir, Connection};
use crate::daemon::{process_alive, read_pid, PIDFILE};

/// How long `dev up` waits for daemons and for the cluster to form.
const FORM_DEADLINE: Duration = Duration::from_secs(60);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);

/// `flotilla dev` subcommands.
#[derive(Subcommand)]
pub enum DevCommand {
    /// Start N daemons, create the cluster on the first, join the rest, wait until all are up.
    Up(UpArgs),
    /// Stop the daemons of a dev cluster (by pid); --purge also deletes their data.
    Down(DownArgs),
    /// Start one more node (the next address) and join it to the cluster.
    AddNode(AddNodeArgs),
    /// Remove node UID (`flotilla node remove`: its shards move to other nodes first) and
    /// wait until its daemon stopped.
    RemoveNode(RemoveNodeArgs),
    /// Reinstall removed node UID's machine: a fresh data dir at the same address, the daemon
    /// from --package, joined back under its uid (`cluster join --replace-node UID`).
    ReinstallNode(ReinstallNodeArgs),
}

/// Arguments of `flotilla dev reinstall-node`.
#[derive(Args)]
pub struct ReinstallNodeArgs {
    /// The removed node's uid.
    pub uid: u64,
    /// The machine it is reinstalled as (`--package`: by default this binary).
    #[command(flatten)]
    pub machine: MachineArgs,
}

/// Arguments of `flotilla dev add-node`.
#[derive(Args)]
pub struct AddNodeArgs {
    /// The new node's machine.
    #[command(flatten)]
    pub machine: MachineArgs,
}

/// A dev node's machine: where the dev cluster lives, and what the machine runs (a new or a
/// reinstalled node: `dev add-node`, `dev reinstall-node`).
#[derive(Args, Clone)]
pub struct MachineArgs {
    /// Folder holding the nodes' data dirs.
    #[arg(long, default_value_os_t = default_dev_dir())]
    pub dir: PathBuf,
    /// Address of node 1, as given to `dev up`.
    #[arg(long, default_value = "127.0.0.11")]
    pub base_addr: Ipv4Addr,
    /// Run the node from this package (folder or .tar.gz), e.g. a newer version for a rolling
    /// upgrade; by default it runs this binary.
    #[arg(long)]
    pub package: Option<PathBuf>,
    /// The os-release file the node's machine has (`node start --os-release`), given to nodes
    /// that start with a fresh data dir; a node keeps its own across restarts.
    #[arg(long, env = "FLOTILLA_DEV_OS_RELEASE")]
    pub os_release: Option<PathBuf>,
}

/// Arguments of `flotilla dev remove-node`.
#[derive(Args)]
pub struct RemoveNodeArgs {
    /// The node's uid.
    pub uid: u64,
    /// Folder holding the nodes' data dirs.
    #[arg(long, default_value_os_t = default_dev_dir())]
    pub dir: PathBuf,
}

/// Arguments of `flotilla dev up`.
#[derive(Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u8,
    /// Which of several dev clusters side by side (e.g. the instances of an Active-Active
    /// database): cluster N's node 1 binds 127.0.0.(10N+1) and its nodes live in
    /// `.flotilla-dev-N` (cluster 1 is the default one: 127.0.0.11, `.flotilla-dev`).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=23), conflicts_with_all = ["dir", "base_addr"])]
    pub cluster: Option<u8>,
    /// Folder holding the nodes' data dirs.
    #[arg(long, default_value_os_t = default_dev_dir())]
    pub dir: PathBuf,
    /// Address of node 1; node N gets the address N-1 above it.
    #[arg(long, default_value = "127.0.0.11")]
    pub base_addr: Ipv4Addr,
    /// Cluster name (default: `flotilla.local` at the default address, else one naming the
    /// address, e.g. `flotilla-0-21.local` for 127.0.0.21, so that clusters side by side, e.g.
    /// the instances of an Active-Active database, have different names).
    #[arg(long)]
    pub name: Option<String>,
    /// Run the nodes from this package (folder or .tar.gz), installed into DIR/packages, as
    /// machines with that version installed would; by default they run this binary.
    #[arg(long)]
    pub package: Option<PathBuf>,
    /// The os-release file the node's machine has (`node start --os-release`), given to nodes
    /// that start with a fresh data dir; a node keeps its own across restarts.
    #[arg(long, env = "FLOTILLA_DEV_OS_RELEASE")]
    pub os_release: Option<PathBuf>,
    /// Also serve the REST API over plain HTTP on this port (`node start --http-port`), on
    /// every node of the dev cluster, also those added later (kept in DIR/http-port). Off by
    /// default: the CLI talks HTTPS (port 9443) trusting DIR/ca.crt.
    #[arg(long)]
    pub http_port: Option<u16>,
}

impl UpArgs {
    /// The cluster's name: `--name`, or one from the base address (see the flag).
    pub fn cluster_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let [_, _, c, d] = self.base_addr.octets();
        match self.base_addr == DEFAULT_BASE_ADDR {
            true => "flotilla.local".into(),
            false => format!("flotilla-{c}-{d}.local"),
        }
    }
}

/// Node 1's address in a dev cluster unless `--base-addr` says otherwise.
const DEFAULT_BASE_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// Node 1's address and the nodes' folder of dev cluster `n` (`dev up --cluster N`).
pub fn dev_cluster_place(n: u8) -> (Ipv4Addr, PathBuf) {
    let base = Ipv4Addr::new(127, 0, 0, 10 * n + 1);
    let dir = match n {
        1 => default_dev_dir(),
        n => PathBuf::from(format!("{}-{n}", default_dev_dir().display())),
    };
    (base, dir)
}

/// Arguments of `flotilla dev down`.
#[derive(Args)]
pub struct DownArgs {
    /// The dev cluster, as `dev up --cluster N` started it.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=23), conflicts_with = "dir")]
    pub cluster: Option<u8>,
    /// Folder holding the nodes' data dirs.
    #[arg(long, default_value_os_t = default_dev_dir())]
    pub dir: PathBuf,
    /// Also delete the nodes' data.
    #[arg(long)]
    pub purge: bool,
}

/// Runs a dev subcommand.
pub async fn run(conn: &Connection, command: DevCommand) -> Result<()> {
    match command {
        DevCommand::Up(args) => up(conn, args).await,
        DevCommand::Down(args) => down(args).await,
        DevCommand::AddNode(args) => add_node(conn, args).await,
        DevCommand::RemoveNode(args) => remove_node(conn, args).await,
        DevCommand::ReinstallNode(args) => reinstall_node(conn, args).await,
    }
}

/// The operator credentials of a dev cluster (`dev up`'s defaults unless given).
fn dev_credentials(conn: &Connection) -> (String, String) {
    let user = conn.user.clone().unwrap_or_else(|| "admin".into());
    let password = conn.password.clone().unwrap_or_else(|| "flotilla".into());
    (user, password)
}

/// A client of the cluster at `conn` (its `--cacert` too) with the dev credentials.
fn dev_client(conn: &Connection) -> Client {
    let (user, password) = dev_credentials(conn);
    Connection {
        user: Some(user),
        password: Some(password),
        ..conn.clone()
    }
    .client()
}

/// The numbers of the node dirs in `dir` (`node-N`).
fn node_numbers(dir: &Path) -> Result<Vec<u8>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        if let Some(n) = name.to_string_lossy().strip_prefix("node-") {
            numbers.extend(n.parse::<u8>().ok());
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Starts one more node (the next address) and joins it (`flotilla dev add-node`; a rolling
/// upgrade of a dev cluster adds its new nodes so).
pub async fn add_node(conn: &Connection, args: AddNodeArgs) -> Result<()> {
    let args = args.machine;
    let started = Instant::now();
    let existing = node_numbers(&args.dir)?;
    let n = existing.last().map_or(Some(1), |last| last.checked_add(1));
    let n = n.ok_or_else(|| anyhow!("{} holds node-255 already", args.dir.display()))?;
    let addr = node_addr(args.base_addr, n)?;
    let data_dir = node_dir(&args.dir, n);
    let uid = start_and_join(conn, &args, n, None).await?;
    println!(
        "node {} ({addr}, {}) joined in {:.1} s",
        uid,
        data_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn remove_node(conn: &Connection, args: RemoveNodeArgs) -> Result<()> {
    let client = dev_client(conn);
    let node = client.node(args.uid).await?;
    let action = client.remove_node(args.uid).await?;
    println!(
        "removing node {} ({}): action {} ({} steps)",
        args.uid, node.addr, action.action_uid, action.steps_total
    );
    crate::action::wait(&client, action.action_uid).await?;
    // The removed node's daemon stops by itself once told; one that was not told is stopped
    // here, with its engines (it should have none left). Its data dir holds its identity.
    for n in node_numbers(&args.dir)? {
        let data_dir = node_dir(&args.dir, n);
        let identity = flotilla_store::Identity::load(&data_dir).ok().flatten();
        if identity.is_none_or(|i| i.uid != args.uid) {
            continue;
        }
        if let Some(pid) = read_pid(&data_dir.join(PIDFILE)) {
            wait_gone(pid, &data_dir).await;
            if is_our_daemon(pid, &data_dir) {
                stop_pid(pid).await?;
            }
        }
        for engine in flotilla_engine::running_engine_pids(&data_dir.join("shards")) {
            stop_pid(engine).await?;
        }
        println!(
            "node {} removed; its daemon ({}) stopped",
            args.uid,
            data_dir.display()
        );
        return Ok(());
    }
    println!(
        "node {} removed; none of the node dirs in {} is its",
        args.uid,
        args.dir.display()
    );
    Ok(())
}

/// Reinstalls removed node `args.uid`'s machine and joins it back under its uid (`flotilla dev
/// reinstall-node`; a replace-node upgrade of a dev cluster does so for each node).
pub async fn reinstall_node(conn: &Connection, args: ReinstallNodeArgs) -> Result<()> {
    let uid = args.uid;
    let args = args.machine;
    let started = Instant::now();
    let n = node_number_of(&args.dir, uid)?;
    let data_dir = node_dir(&args.dir, n);
    if let Some(pid) = read_pid(&data_dir.join(PIDFILE)) {
        // A removed node's daemon stops by itself once told: give it the time.
        if data_dir.join(crate::daemon::REMOVED_MARKER).exists() {
            wait_gone(pid, &data_dir).await;
        }
        if is_our_daemon(pid, &data_dir) {
            bail!(
                "node {} ({}) still runs (pid {pid}); remove it first (`flotilla node remove {}`)",
                uid,
                data_dir.display(),
                uid
            );
        }
    }
    std::fs::remove_dir_all(&data_dir)
        .with_context(|| format!("wiping {} (a fresh machine)", data_dir.display()))?;
    start_and_join(conn, &args, n, Some(uid)).await?;
    let addr = node_addr(args.base_addr, n)?;
    println!(
        "node {} ({addr}, {}) reinstalled and joined back in {:.1} s",
        uid,
        data_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts node `n` of the dev cluster on `machine` (its address and data dir from `n`) and
/// joins it, in the place of node `replacing` when given; waits until the cluster lists it.
/// The node's uid.
async fn start_and_join(
    conn: &Connection,
    machine: &MachineArgs,
    n: u8,
    replacing: Option<u64>,
) -> Result<u64> {
    let (user, password) = dev_credentials(conn);
    let members = dev_client(conn)
        .nodes()
        .await
        .with_context(|| format!("asking {} for the cluster's nodes", conn.url))?;
    let seeds: Vec<String> = members.iter().map(|m| m.addr.clone()).collect();
    let addr = node_addr(machine.base_addr, n)?;
    let data_dir = node_dir(&machine.dir, n);
    let launch = Launch::of(
        machine.package.as_deref(),
        &machine.dir,
        machine.os_release.as_deref(),
    )?;
    let mut child = ensure_daemon(addr, &data_dir, &launch)?;
    let node = DevNode::new(addr, &data_dir, &user, &password);
    wait_healthy(&launch, &node, child.as_mut()).await?;
    let client = launch
        .client(&node)?
        .with_bootstrap_token(read_bootstrap_token(&data_dir));
    let joined = client
        .join_cluster_replacing(&seeds, &user, &password, replacing)
        .await?;
    // Joined, the node presents its certificate from the cluster CA.
    wait_formed(&launch.client(&node)?, members.len() + 1).await?;
    Ok(joined.node_uid)
}

/// Waits (up to 10 s) until daemon `pid` of `data_dir` exited.
async fn wait_gone(pid: u32, data_dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_our_daemon(pid, data_dir) && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
}

/// The number of the node dir in `dir` whose identity is node `uid`.
fn node_number_of(dir: &Path, uid: u64) -> Result<u8> {
    for n in node_numbers(dir)? {
        let identity = flotilla_store::Identity::load(&node_dir(dir, n))
            .ok()
            .flatten();
        if identity.is_some_and(|i| i.uid == uid) {
            return Ok(n);
        }
    }
    bail!("none of the node dirs in {} is node {uid}'s", dir.display())
}

/// The address of node `n` (1-based).
fn node_addr(base: Ipv4Addr, n: u8) -> Result<Ipv4Addr> {
    let [a, b, c, d] = base.octets();
    let last = d
        .checked_add(n - 1)
        .ok_or_else(|| anyhow!("--base-addr {base} leaves no room for {n} nodes"))?;
    Ok(Ipv4Addr::new(a, b, c, last))
}

fn node_dir(dir: &Path, n: u8) -> PathBuf {
    dir.join(format!("node-{n}"))
}

async fn up(conn: &Connection, mut args: UpArgs) -> Result<()> {
    if let Some(n) = args.cluster {
        (args.base_addr, args.dir) = dev_cluster_place(n);
    }
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let user = conn.user.clone().unwrap_or_else(|| "admin".into());
    let password = conn.password.clone().unwrap_or_else(|| "flotilla".into());
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let started = Instant::now();
    if let Some(port) = args.http_port {
        let file = args.dir.join(HTTP_PORT_FILE);
        std::fs::write(&file, port.to_string())
            .with_context(|| format!("writing {}", file.display()))?;
    }
    let launch = Launch::of(
        args.package.as_deref(),
        &args.dir,
        args.os_release.as_deref(),
    )?;
    let mut nodes = Vec::new();
    for n in 1..=args.nodes {
        let addr = node_addr(args.base_addr, n)?;
        let data_dir = node_dir(&args.dir, n);
        // A removed node is no longer part of the cluster (`dev remove-node`).
        if data_dir.join(crate::daemon::REMOVED_MARKER).exists() {
            println!("node-{n} ({addr}) was removed from the cluster; not started");
            continue;
        }
        let child = ensure_daemon(addr, &data_dir, &launch)?;
        nodes.push((addr, data_dir, child));
    }
    if nodes.is_empty() {
        bail!("every node in {} was removed", args.dir.display());
    }
    for (addr, data_dir, child) in nodes.iter_mut() {
        let node = DevNode::new(*addr, data_dir, &user, &password);
        wait_healthy(&launch, &node, child.as_mut()).await?;
    }
    let first = nodes[0].0.to_string();
    for (i, (addr, data_dir, _)) in nodes.iter().enumerate() {
        let node = DevNode::new(*addr, data_dir, &user, &password);
        let client = launch.client(&node)?;
        if client.health().await?.node_uid.is_some() {
            continue;
        }
        let client = client.with_bootstrap_token(read_bootstrap_token(node.data_dir));
        if i == 0 {
            client
                .create_cluster(&args.cluster_name(), &user, &password)
                .await?;
        } else {
            client
                .join_cluster(std::slice::from_ref(&first), &user, &password)
                .await?;
        }
    }
    // In the cluster, the nodes present certificates from its CA: clients trusting it.
    let clients = nodes
        .iter()
        .map(|(addr, data_dir, _)| launch.client(&DevNode::new(*addr, data_dir, &user, &password)))
        .collect::<Result<Vec<_>>>()?;
    wait_started(&clients, &nodes).await?;
    println!(
        "cluster '{}' is up with {} nodes in {:.1} s",
        args.cluster_name(),
        nodes.len(),
        started.elapsed().as_secs_f64()
    );
    let credentials = format!("FLOTILLA_USER={user} FLOTILLA_PASSWORD={password}");
    match write_cluster_ca(&args.dir)? {
        Some(ca) => println!(
            "export FLOTILLA_URL=https://{first}:{} FLOTILLA_CACERT={} {credentials}",
            crate::daemon::REST_TLS_PORT,
            ca.display()
        ),
        // A cluster of 0.1.0 nodes: plain HTTP, as they serve it.
        None => println!("export FLOTILLA_URL=http://{first}:{PLAIN_HTTP_PORT} {credentials}"),
    }
    if let (Some(port), true) = (launch.http_port, launch.speaks_https) {
        println!("# plain HTTP too: export FLOTILLA_URL=http://{first}:{port}");
    }
    Ok(())
}

/// Where `dev up` writes the cluster CA's certificate: what `--cacert` (FLOTILLA_CACERT) names.
pub const CLUSTER_CA_FILE: &str = "ca.crt";

/// Copies the cluster CA's certificate from node 1 to `DIR/ca.crt`; `None` for a cluster
/// without a CA (cluster version 0.1.0).
fn write_cluster_ca(dir: &Path) -> Result<Option<PathBuf>> {
    let source = node_dir(dir, 1).join("tls").join(CLUSTER_CA_FILE);
    let Ok(ca) = std::fs::read(&source) else {
        return Ok(None);
    };
    let target = dir.join(CLUSTER_CA_FILE);
    std::fs::write(&target, ca).with_context(|| format!("writing {}", target.display()))?;
    Ok(Some(target))
}

/// Where the dev cluster keeps `dev up --http-port`, for the nodes `dev add-node` and `dev
/// reinstall-node` start later.
const HTTP_PORT_FILE: &str = "http-port";
/// The port release 0.1.0 serves the REST API on, only over plain HTTP.
const PLAIN_HTTP_PORT: u16 = 8080;
/// The release whose daemon serves only plain HTTP (no HTTPS on 9443).
const PLAIN_HTTP_RELEASE: &str = "0.1.0";

/// Which binary the dev nodes run, and from which package.
struct Launch {
    binary: PathBuf,
    package_dir: Option<PathBuf>,
    /// The os-release file a node with a fresh data dir starts with.
    os_release: Option<PathBuf>,
    /// The plain-HTTP port the nodes also serve (`dev up --http-port`), if any.
    http_port: Option<u16>,
    /// Whether the nodes serve HTTPS on 9443 (every release after 0.1.0).
    speaks_https: bool,
}

/// A dev node as `dev` talks to it.
struct DevNode<'a> {
    addr: Ipv4Addr,
    data_dir: &'a Path,
    user: &'a str,
    password: &'a str,
}

impl<'a> DevNode<'a> {
    fn new(addr: Ipv4Addr, data_dir: &'a Path, user: &'a str, password: &'a str) -> Self {
        DevNode {
            addr,
            data_dir,
            user,
            password,
        }
    }
}

impl Launch {
    /// This binary, or the package `--package` names (installed once into DIR/packages); new
    /// nodes' machines run the OS `os_release` describes.
    fn of(package: Option<&Path>, dir: &Path, os_release: Option<&Path>) -> Result<Launch> {
        let os_release = match os_release {
            Some(file) => Some(
                std::fs::canonicalize(file)
                    .with_context(|| format!("--os-release {}", file.display()))?,
            ),
            None => None,
        };
        let http_port = std::fs::read_to_string(dir.join(HTTP_PORT_FILE))
            .ok()
            .and_then(|port| port.trim().parse().ok());
        let Some(source) = package else {
            let binary = std::env::current_exe().context("locating the flotilla binary")?;
            return Ok(Launch {
                binary,
                package_dir: None,
                os_release,
                http_port,
                speaks_https: true,
            });
        };
        let package = flotilla_package::install(source, &dir.join("packages"))
            .with_context(|| format!("--package {}", source.display()))?;
        let speaks_https = package.manifest().version.to_string() != PLAIN_HTTP_RELEASE;
        let package_dir = std::fs::canonicalize(package.dir())?;
        Ok(Launch {
            binary: package_dir.join(flotilla_package::BINARY_PATH),
            package_dir: Some(package_dir),
            os_release,
            http_port,
            speaks_https,
        })
    }

    /// A REST client for `node`: plain HTTP when the dev cluster serves it (or the node is a
    /// 0.1.0 one), else HTTPS trusting the node's self-signed certificate (before it is in the
    /// cluster) and the cluster CA (once it is), both from its data dir.
    fn client(&self, node: &DevNode) -> Result<Client> {
        let user = Some(node.user.to_string());
        let password = Some(node.password.to_string());
        let addr = node.addr;
        let plain = match (self.speaks_https, self.http_port) {
            (false, _) => Some(PLAIN_HTTP_PORT),
            (true, port) => port,
        };
        if let Some(port) = plain {
            return Ok(Client::new(
                &format!("http://{addr}:{port}"),
                user,
                password,
            ));
        }
        let tls = node.data_dir.join("tls");
        let trusted: String = [SELF_SIGNED_FILE, CLUSTER_CA_FILE]
            .iter()
            .filter_map(|file| std::fs::read_to_string(tls.join(file)).ok())
            .collect();
        let url = format!("https://{addr}:{}", crate::daemon::REST_TLS_PORT);
        let client = Client::new(&url, user, password);
        if trusted.is_empty() {
            // Not started yet: the health check fails until the node wrote its certificate.
            return Ok(client);
        }
        client
            .trusting(&trusted)
            .map_err(|e| anyhow!("the certificates in {}: {e}", tls.display()))
    }
}

/// A fresh node's self-signed certificate in `DATA_DIR/tls`, what a client trusts for `cluster
/// create` / `join` before the node has a certificate from the cluster CA.
const SELF_SIGNED_FILE: &str = "self-signed.crt";

/// Starts the daemon for `data_dir` unless its pidfile names a live one.
fn ensure_daemon(addr: Ipv4Addr, data_dir: &Path, launch: &Launch) -> Result<Option<Child>> {
    if let Some(pid) = read_pid(&data_dir.join(PIDFILE)) {
        if process_alive(pid) {
            return Ok(None);
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(data_dir.join("flotilla.log"))?;
    let mut command = std::process::Command::new(&launch.binary);
    command
        .args(["node", "start", "--addr", &addr.to_string(), "--data-dir"])
        .arg(data_dir);
    if let Some(package_dir) = &launch.package_dir {
        command.arg("--package-dir").arg(package_dir);
    }
    // `--rest-port`: the name 0.1.0 knows too (it serves plain HTTP anyway).
    if let Some(port) = launch.http_port {
        command.arg("--rest-port").arg(port.to_string());
    }
    // A node that kept its machine's OS (a restart) keeps it.
    let fresh = !data_dir.join(crate::daemon::OS_RELEASE_COPY).exists();
    if let (Some(file), true) = (&launch.os_release, fresh) {
        command.arg("--os-release").arg(file);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting a node daemon")?;
    Ok(Some(child))
}

fn log_tail(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.join("flotilla.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

async fn wait_healthy(
    launch: &Launch,
    node: &DevNode<'_>,
    mut child: Option<&mut Child>,
) -> Result<()> {
    let data_dir = node.data_dir;
    let deadline = Instant::now() + FORM_DEADLINE;
    loop {
        // Built anew each time: the node writes its certificate as it starts.
        if launch.client(node)?.health().await.is_ok() {
            return Ok(());
        }
        if let Some(child) = child.as_deref_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the daemon for {} exited ({status}):\n{}",
                    data_dir.display(),
                    log_tail(data_dir)
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon for {} did not answer within {:?}:\n{}",
                data_dir.display(),
                FORM_DEADLINE,
                log_tail(data_dir)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the cluster lists `count` nodes, all up, exactly one primary node.
async fn wait_formed(client: &Client, count: usize) -> Result<()> {
    let clients = std::slice::from_ref(client);
    wait_nodes(clients, |listed| listed == count, &format!("{count} nodes")).await
}

/// Waits until the cluster lists the `started` nodes (less those removed meanwhile: a removal
/// may complete while `dev up` restarts a node), all up, exactly one primary node.
async fn wait_started(
    clients: &[Client],
    started: &[(Ipv4Addr, PathBuf, Option<Child>)],
) -> Result<()> {
    let removed = |dir: &Path| dir.join(crate::daemon::REMOVED_MARKER).exists();
    let fits = |listed: usize| {
        let members = started.iter().filter(|(_, dir, _)| !removed(dir)).count();
        listed == members
    };
    wait_nodes(clients, fits, &format!("its {} nodes", started.len())).await
}

/// Waits until the cluster, as the first of `clients` that answers sees it, lists a number of
/// nodes that `fits`, all up, one primary node.
async fn wait_nodes(clients: &[Client], fits: impl Fn(usize) -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + FORM_DEADLINE;
    loop {
        for client in clients {
            let Ok(nodes) = client.nodes().await else {
                continue;
            };
            let up = nodes.iter().all(|n| n.status == NodeStatus::Up);
            let primaries = nodes.iter().filter(|n| n.role == NodeRole::Primary).count();
            if fits(nodes.len()) && up && primaries == 1 {
                return Ok(());
            }
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not show {what} up with one primary node within {FORM_DEADLINE:?}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn down(mut args: DownArgs) -> Result<()> {
    if let Some(n) = args.cluster {
        args.dir = dev_cluster_place(n).1;
    }
    let mut stopped = 0;
    for entry in
        std::fs::read_dir(&args.dir).with_context(|| format!("reading {}", args.dir.display()))?
    {
        let data_dir = entry?.path();
        if let Some(pid) = read_pid(&data_dir.join(PIDFILE)) {
            if process_alive(pid) && is_our_daemon(pid, &data_dir) {
                stop_pid(pid).await?;
                stopped += 1;
            }
        }
        // Shards outlive their daemon by design; a dev cluster going down takes them along.
        for pid in flotilla_engine::running_engine_pids(&data_dir.join("shards")) {
            stop_pid(pid).await?;
        }
    }
    if args.purge {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("removing {}", args.dir.display()))?;
    }
    println!(
        "stopped {stopped} daemon(s){}",
        if args.purge { ", data removed" } else { "" }
    );
    Ok(())
}

/// True when `pid` is a flotilla daemon started on `data_dir` (guards against a reused pid).
/// Paths are compared resolved (the daemon's relative `--data-dir` against its working dir), so
/// `dev down --dir /abs/path` finds daemons that `dev up --dir rel/path` started.
fn is_our_daemon(pid: u32, data_dir: &Path) -> bool {
    let args = process_args(pid);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let Ok(wanted) = std::fs::canonicalize(data_dir) else {
        return false;
    };
    let names_it = |arg: &String| {
        let path = match &cwd {
            Some(cwd) if Path::new(arg).is_relative() => cwd.join(arg),
            _ => PathBuf::from(arg),
        };
        std::fs::canonicalize(path).is_ok_and(|p| p == wanted)
    };
    args.iter().any(|a| a == "start") && args.iter().any(names_it)
}

/// The command line of process `pid` (empty when it is gone).
fn process_args(pid: u32) -> Vec<String> {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return Vec::new();
    };
    cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// SIGTERM, wait up to 10 s, then SIGKILL.
async fn stop_pid(pid: u32) -> Result<()> {
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    if process_alive(pid) {
        let _ = kill(target, Signal::SIGKILL);
    }
    Ok(())
}
