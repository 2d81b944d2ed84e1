//! Command-line parsing and dispatch.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use flotilla_client::Client;
use flotilla_model::rest::{ActionInfo, ClusterUpdate};
use flotilla_model::{ActionKind, MaintenanceOffRequest, MaintenanceOnRequest, ShardMove};

use crate::output;
use crate::{action, check, crdb, daemon, db, dev, package, status, upgrade};

/// Flotilla: Redis-compatible databases on a cluster of machines, upgraded without downtime.
#[derive(Parser)]
#[command(name = "flotilla", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the REST API is and who is calling it.
#[derive(Args, Clone)]
pub struct Connection {
    /// REST API of any cluster node: HTTPS on 9443 (trust the cluster CA with `--cacert`), or
    /// plain HTTP on 8080 for nodes that serve it (`node start --http-port`, release 0.1.0).
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_URL",
        default_value = "https://127.0.0.11:9443"
    )]
    pub url: String,
    /// Operator user name.
    #[arg(long, global = true, env = "FLOTILLA_USER")]
    pub user: Option<String>,
    /// Operator password.
    #[arg(long, global = true, env = "FLOTILLA_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// The cluster CA's certificate (PEM) to trust for an `https://` URL (port 9443): a
    /// node's `DATA_DIR/tls/ca.crt`; `flotilla dev up` writes it next to its nodes. For `cluster
    /// create` / `join` on a fresh node (no CA yet): its `DATA_DIR/tls/self-signed.crt`.
    #[arg(long, global = true, env = "FLOTILLA_CACERT")]
    pub cacert: Option<PathBuf>,
}

impl Connection {
    /// A REST client with these settings (exits naming the problem when --cacert is not a
    /// readable certificate).
    pub fn client(&self) -> Client {
        let client = Client::new(&self.url, self.user.clone(), self.password.clone());
        let Some(path) = &self.cacert else {
            return client;
        };
        let trusted = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|ca| client.trusting(&ca));
        match trusted {
            Ok(client) => client,
            Err(e) => {
                eprintln!("error: --cacert {}: {e}", path.display());
                std::process::exit(2);
            }
        }
    }

    fn credentials(&self) -> Result<(String, String)> {
        let user = self
            .user
            .clone()
            .context("--user (or FLOTILLA_USER) is required")?;
        let password = self
            .password
            .clone()
            .context("--password (or FLOTILLA_PASSWORD) is required")?;
        Ok((user, password))
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run or manage a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Create, join or change the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create, list, show, change and delete databases.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Active-Active databases across clusters (like Redis Software's `crdb-cli crdb`).
    #[command(subcommand)]
    Crdb(crdb::CrdbCommand),
    /// Follow and cancel long operations.
    #[command(subcommand)]
    Action(action::ActionCommand),
    /// Shard operations.
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Show nodes and databases, like `rladmin status`.
    Status(status::StatusArgs),
    /// A local cluster on loopback addresses, for trying Flotilla and for tests.
    #[command(subcommand)]
    Dev(dev::DevCommand),
    /// Run writers and readers through an endpoint; report errors, lost writes and stalls.
    Loadcheck(LoadcheckArgs),
    /// Build Flotilla packages.
    #[command(subcommand)]
    Package(package::PackageCommand),
    /// A node's prerequisite checks (like rlcheck), or `check ports`.
    Check(check::CheckArgs),
    /// Cluster software upgrades: check, upgrade a node in place, finalize.
    #[command(subcommand)]
    Upgrade(upgrade::UpgradeCommand),
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Start the node daemon in the foreground.
    Start(daemon::StartArgs),
    /// Remove a node: move each of its shards to another node (new copy, catch up,
    /// switchover, old copy dropped), then it leaves the cluster and its daemon stops.
    Remove {
        /// Node uid.
        uid: u64,
        /// Return at once instead of following the action.
        #[arg(long)]
        no_wait: bool,
    },
    /// Maintenance mode (Redis Software's `maintenance_mode`): `on` snapshots the node's
    /// placement and roles, marks it so that no shard is placed on it and moves its shards away;
    /// `off` moves them back as the snapshot says. Activations stack: after two `on`, the
    /// second `off` restores the shards.
    Maintenance {
        /// Node uid.
        uid: u64,
        /// On or off.
        #[command(subcommand)]
        mode: MaintenanceMode,
        /// Return at once instead of following the action.
        #[arg(long, global = true)]
        no_wait: bool,
    },
}

/// `flotilla node maintenance UID on|off`.
#[derive(Subcommand)]
pub enum MaintenanceMode {
    /// Put the node in maintenance mode; refused when it would lose quorum (nodes already in
    /// maintenance count as offline) or when the other nodes lack room for its shards.
    On {
        /// Keep replica shards on the node; only hand each primary role to a replica on
        /// another node (Redis Software's keep_slave_shards).
        #[arg(long)]
        keep_replicas: bool,
        /// Hand the primary-node role to another node first (demote_node).
        #[arg(long)]
        demote_node: bool,
        /// Replace the snapshot an earlier `on` took (overwrite_snapshot).
        #[arg(long)]
        overwrite_snapshot: bool,
    },
    /// Take the node out of maintenance mode: its shards come back and each slot range's
    /// primary role returns to where the snapshot had it, then the mark and the snapshot go.
    Off {
        /// Only clear the mark; leave the shards where they are (skip_shards_restore).
        #[arg(long)]
        skip_shards_restore: bool,
    },
}

#[derive(Subcommand)]
pub enum ShardCommand {
    /// Planned switchover: the shard's replica becomes primary with no client error.
    Failover {
        /// Shard uid (a primary: switch to its replica; a replica: promote it).
        uid: u64,
    },
    /// Move a shard to another node with no client error: a new copy there, caught up, the
    /// primary role switched over to it when the shard holds it, the old copy dropped.
    Migrate {
        /// Shard uid.
        uid: u64,
        /// The node it moves to.
        #[arg(long)]
        to_node: u64,
        /// Return at once instead of following the action.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `flotilla cluster certificates ...`.
#[derive(Subcommand)]
pub enum CertificatesCommand {
    /// Give every node a new certificate from the same cluster CA; nodes take it into use
    /// without a restart. Waits until every node has its new certificate.
    Rotate,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster on the node at --url (it becomes node 1, the primary node).
    Create {
        /// Cluster name, e.g. cluster.local.
        #[arg(long)]
        name: String,
        /// The bootstrap token of the node at --url, as its daemon printed it at first start
        /// (also in its DATA_DIR/bootstrap-token); a node of release 0.1.0 takes none.
        #[arg(long, env = "FLOTILLA_BOOTSTRAP_TOKEN", hide_env_values = true)]
        bootstrap_token: Option<String>,
    },
    /// Join the node at --url to the cluster that NODES belong to.
    Join {
        /// Addresses of one or more cluster members, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<IpAddr>,
        /// Take the place and the uid of this node, which is down or was removed (a freshly
        /// installed machine replacing it): its shards are created again here and synced.
        #[arg(long, value_name = "UID")]
        replace_node: Option<u64>,
        /// Join only a cluster whose CA has this SHA-256 fingerprint (`flotilla status` on a
        /// member prints it); without it the node trusts the CA it finds and logs its
        /// fingerprint.
        #[arg(long, value_name = "SHA256")]
        cluster_ca_fingerprint: Option<String>,
        /// The bootstrap token of the node at --url, as its daemon printed it at first start
        /// (also in its DATA_DIR/bootstrap-token); a node of release 0.1.0 takes none.
        #[arg(long, env = "FLOTILLA_BOOTSTRAP_TOKEN", hide_env_values = true)]
        bootstrap_token: Option<String>,
    },
    /// Make a node the primary node (Raft leader) without waiting for an election timeout.
    Promote {
        /// Node uid.
        uid: u64,
    },
    /// The nodes' certificates (node-to-node TLS, HTTPS).
    Certificates {
        #[command(subcommand)]
        command: CertificatesCommand,
    },
    /// Change cluster settings.
    Set {
        /// New cluster name.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Args)]
pub struct LoadcheckArgs {
    /// Database endpoint, host:port.
    #[arg(long)]
    endpoint: String,
    /// How long to run, e.g. 30s.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// Database password.
    #[arg(long = "db-password")]
    db_password: Option<String>,
    /// Writers.
    #[arg(long, default_value_t = 2)]
    writers: u32,
    /// Readers.
    #[arg(long, default_value_t = 2)]
    readers: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> Result<()> {
        match self.command {
            Command::Node(NodeCommand::Start(args)) => daemon::run(args).await,
            Command::Node(NodeCommand::Remove { uid, no_wait }) => {
                let client = self.conn.client();
                let started = client.remove_node(uid).await?;
                follow(&client, started, no_wait).await
            }
            Command::Node(NodeCommand::Maintenance { uid, mode, no_wait }) => {
                let client = self.conn.client();
                let started = match mode {
                    MaintenanceMode::On {
                        keep_replicas,
                        demote_node,
                        overwrite_snapshot,
                    } => {
                        let request = MaintenanceOnRequest {
                            overwrite_snapshot,
                            keep_slave_shards: keep_replicas,
                            evict_ha_replica: None,
                            demote_node,
                        };
                        client.maintenance_on(uid, &request).await?
                    }
                    MaintenanceMode::Off {
                        skip_shards_restore,
                    } => {
                        let request = MaintenanceOffRequest {
                            skip_shards_restore,
                        };
                        client.maintenance_off(uid, &request).await?
                    }
                };
                follow(&client, started, no_wait).await
            }
            Command::Shard(ShardCommand::Migrate {
                uid,
                to_node,
                no_wait,
            }) => {
                let client = self.conn.client();
                let started = client.migrate_shard(uid, to_node).await?;
                follow(&client, started, no_wait).await
            }
            Command::Cluster(command) => cluster(&self.conn, command).await,
            Command::Shard(ShardCommand::Failover { uid }) => {
                let report = self.conn.client().failover_shard(uid).await?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(())
            }
            Command::Action(command) => action::run(&self.conn.client(), command).await,
            Command::Db(command) => db::run(&self.conn.client(), command).await,
            Command::Crdb(command) => crdb::run(&self.conn, command).await,
            Command::Status(args) => status::run(&self.conn.client(), args).await,
            Command::Dev(command) => dev::run(&self.conn, command).await,
            Command::Loadcheck(args) => loadcheck(args).await,
            Command::Package(command) => package::run(command),
            Command::Check(args) => check::run(&self.conn.client(), args).await,
            Command::Upgrade(command) => upgrade::run(&self.conn, command).await,
        }
    }
}

async fn cluster(conn: &Connection, command: ClusterCommand) -> Result<()> {
    let client = conn.client();
    match command {
        ClusterCommand::Create {
            name,
            bootstrap_token,
        } => {
            let (user, password) = conn.credentials()?;
            let client = client.with_bootstrap_token(bootstrap_token);
            let result = client.create_cluster(&name, &user, &password).await?;
            println!("cluster '{name}' created; this is node {}", result.node_uid);
        }
        ClusterCommand::Join {
            nodes,
            replace_node,
            cluster_ca_fingerprint,
            bootstrap_token,
        } => {
            let (user, password) = conn.credentials()?;
            let client = client.with_bootstrap_token(bootstrap_token);
            let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
            let result = client
                .join_cluster_checked(
                    &nodes,
                    &user,
                    &password,
                    replace_node,
                    cluster_ca_fingerprint,
                )
                .await?;
            match replace_node {
                Some(uid) => println!(
                    "joined the cluster in the place of node {uid}; its shards are created again here and sync from their primaries"
                ),
                None => println!("joined the cluster as node {}", result.node_uid),
            }
        }
        ClusterCommand::Promote { uid } => {
            let info = client.promote_node(uid).await?;
            let primary = info.primary_node.map_or("none".into(), |p| p.to_string());
            println!("node {uid} is the primary node (the cluster's primary node: {primary})");
        }
        ClusterCommand::Certificates {
            command: CertificatesCommand::Rotate,
        } => {
            client.rotate_certificates().await?;
            println!("every node took a new certificate from the cluster CA into use");
        }
        ClusterCommand::Set { name } => {
            let info = client.update_cluster(&ClusterUpdate { name }).await?;
            println!("cluster '{}' updated", info.name);
        }
    }
    Ok(())
}

/// Prints a started action's plan, then follows it unless `no_wait`.
async fn follow(client: &Client, started: ActionInfo, no_wait: bool) -> Result<()> {
    println!(
        "action {} ({} on {}), {} steps:",
        started.action_uid, started.name, started.object, started.steps_total
    );
    let moves: &[ShardMove] = match &started.kind {
        ActionKind::NodeRemove { moves, .. } => moves,
        ActionKind::ShardMigrate(shard_move) => std::slice::from_ref(shard_move),
        ActionKind::MaintenanceOn(on) => &on.moves,
        ActionKind::MaintenanceOff(off) => &off.moves,
        ActionKind::DbUpgrade { .. } | ActionKind::ClusterUpgrade(_) => &[],
    };
    for m in moves {
        println!(
            "  shard {} of database {} (slots {}): node {} -> node {}",
            m.shard_uid, m.bdb_uid, m.assigned_slots, m.from_node, m.to_node
        );
    }
    if no_wait {
        println!(
            "follow it with `flotilla action wait {}`",
            started.action_uid
        );
        return Ok(());
    }
    action::wait(client, started.action_uid).await
}

async fn loadcheck(args: LoadcheckArgs) -> Result<()> {
    let mut config = flotilla_loadcheck::Config::for_endpoint(&args.endpoint);
    config.duration_ms = Some(args.duration.as_millis() as u64);
    config.password = args.db_password;
    config.writers = args.writers;
    config.readers = args.readers;
    let report = flotilla_loadcheck::run(config).await?;
    output::print_or_json(&report, args.json, |report| println!("{report}"))?;
    if !report.is_clean() {
        anyhow::bail!("the load check saw client errors or lost acknowledged writes");
    }
    Ok(())
}

/// Where `flotilla dev` keeps its nodes by default.
pub fn default_dev_dir() -> PathBuf {
    PathBuf::from(".flotilla-dev")
}
