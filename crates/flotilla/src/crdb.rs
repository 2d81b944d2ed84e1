//! `flotilla crdb ...`: Active-Active databases across clusters, shaped like Redis Software's
//! `crdb-cli crdb` (create, list, show, delete; each change is a task that the CLI follows
//! unless `--no-wait`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use flotilla_client::Client;
use flotilla_model::rest::{
    CrdbCreateRequest, CrdbDbConfig, CrdbHealthReport, CrdbInfo, CrdbInstanceRequest, CrdbTask,
    CrdbTaskStatus, CrdbUpdateRequest, CrdbUpdates,
};
use flotilla_model::DataPersistence;

use crate::cli::Connection;
use crate::db::parse_memory;
use crate::output;

/// `flotilla crdb` subcommands.
#[derive(Subcommand)]
pub enum CrdbCommand {
    /// Create a CRDB with an instance on each cluster named by `--instance` (the first one
    /// coordinates it).
    Create(CreateArgs),
    /// List the CRDBs this cluster has an instance of: CRDB-GUID NAME REPL-ID CLUSTER-FQDN.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one CRDB (its protocol and feature set versions, its instances).
    Show {
        /// The CRDB's GUID.
        #[arg(long)]
        crdb_guid: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a CRDB: every instance, on every cluster.
    Delete {
        /// The CRDB's GUID.
        #[arg(long)]
        crdb_guid: String,
        /// Delete only this cluster's instance (what a failed create names when it could not
        /// undo one); the other clusters keep theirs.
        #[arg(long)]
        local_only: bool,
        /// Print the task id and return.
        #[arg(long)]
        no_wait: bool,
    },
    /// Change every instance: `--featureset-version true` moves them all to the newest feature
    /// set (refused, naming the laggard, until every instance runs the newest protocol).
    Update {
        /// The CRDB's GUID.
        #[arg(long)]
        crdb_guid: String,
        /// `true`: move the feature set version.
        #[arg(long, value_parser = clap::value_parser!(bool))]
        featureset_version: Option<bool>,
        /// Print the task id and return.
        #[arg(long)]
        no_wait: bool,
    },
    /// Add an instance on each cluster named by `--instance` (refused while protocol versions
    /// are mixed).
    AddInstance {
        /// The CRDB's GUID.
        #[arg(long)]
        crdb_guid: String,
        /// A cluster's REST URL (or `url=..,username=..,password=..`), once per new cluster.
        #[arg(long = "instance", required = true)]
        instances: Vec<String>,
    },
    /// Remove an instance: its database is deleted on its cluster, the others record it as
    /// removed (refused while protocol versions are mixed).
    RemoveInstance {
        /// The CRDB's GUID.
        #[arg(long)]
        crdb_guid: String,
        /// The instance's id.
        #[arg(long)]
        instance_id: u16,
        /// Do not reach the removed instance (it keeps its data until `crdb purge-instance` on
        /// its cluster).
        #[arg(long)]
        force: bool,
    },
    /// On a cluster whose instance was removed with `--force`: delete that instance here.
    PurgeInstance {
        /// The CRDB's GUID.
        #[arg(long)]
        crdb_guid: String,
        /// This cluster's instance id (checked).
        #[arg(long)]
        instance_id: u16,
    },
    /// Flush every instance (FLUSHALL of each cluster's primary shards; clients cannot flush
    /// an instance themselves).
    Flush {
        /// The CRDB's GUID.
        #[arg(long)]
        crdb_guid: String,
    },
    /// Every instance's configuration as its cluster answers: protocol and feature set
    /// versions, the instances it lists, whether it answered.
    Health {
        /// The CRDB's GUID.
        #[arg(long)]
        crdb_guid: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// CRDB tasks run by the node at `--url`.
    #[command(subcommand)]
    Task(TaskCommand),
}

/// `flotilla crdb task` subcommands.
#[derive(Subcommand)]
pub enum TaskCommand {
    /// List the tasks.
    List,
    /// Show one task.
    Status {
        /// The task's id.
        #[arg(long)]
        task_id: String,
    },
}

/// Arguments of `flotilla crdb create`.
#[derive(Args)]
pub struct CreateArgs {
    /// Name (letters, digits, hyphens): the database's name on every cluster.
    #[arg(long)]
    name: String,
    /// Endpoint port, 10000-19999, free on every node of every cluster.
    #[arg(long)]
    port: u16,
    /// Memory limit of each instance, e.g. 100mb.
    #[arg(long, value_parser = parse_memory)]
    memory: u64,
    /// Primary shards of each instance (1-64; the same everywhere).
    #[arg(long, default_value_t = 1)]
    shards: u16,
    /// A replica for every primary shard, in each cluster.
    #[arg(long)]
    replication: bool,
    /// Engine version (default: each cluster's newest).
    #[arg(long)]
    redis_version: Option<String>,
    /// One participating cluster: the REST URL of one of its nodes, with `--user`/`--password`
    /// (repeat the flag per cluster; at least 2), or `url=URL,username=U,password=P` for a
    /// cluster with other credentials.
    #[arg(long = "instance", required = true)]
    instances: Vec<String>,
    /// Print the task id and return.
    #[arg(long)]
    no_wait: bool,
}

/// Runs a `flotilla crdb` command.
pub async fn run(conn: &Connection, command: CrdbCommand) -> Result<()> {
    let client = conn.client();
    match command {
        CrdbCommand::Create(args) => create(conn, args).await,
        CrdbCommand::List { json } => {
            let crdbs = client.crdbs().await?;
            output::print_or_json(&crdbs, json, |crdbs| print_list(crdbs))?;
            Ok(())
        }
        CrdbCommand::Show { crdb_guid, json } => {
            let crdb = client.crdb(&crdb_guid).await?;
            output::print_or_json(&crdb, json, print_details)?;
            Ok(())
        }
        CrdbCommand::Delete {
            crdb_guid,
            local_only: true,
            ..
        } => {
            client.delete_local_crdb(&crdb_guid).await?;
            println!("deleted this cluster's instance of CRDB {crdb_guid}");
            Ok(())
        }
        CrdbCommand::Delete {
            crdb_guid, no_wait, ..
        } => {
            let task = client.delete_crdb(&crdb_guid).await?;
            follow(&client, task, no_wait).await
        }
        CrdbCommand::Update {
            crdb_guid,
            featureset_version,
            no_wait,
        } => {
            if featureset_version != Some(true) {
                bail!("--featureset-version: give `--featureset-version true` (the only change `crdb update` makes so far)");
            }
            let request = CrdbUpdateRequest {
                featureset_version: true,
            };
            let task = client.update_crdb(&crdb_guid, &request).await?;
            follow(&client, task, no_wait).await
        }
        CrdbCommand::AddInstance {
            crdb_guid,
            instances,
        } => {
            let add_instances = instances
                .iter()
                .map(|text| parse_instance(text, conn))
                .collect::<Result<Vec<_>>>()?;
            let updates = CrdbUpdates {
                add_instances,
                ..Default::default()
            };
            let task = client.update_crdb_instances(&crdb_guid, &updates).await?;
            follow(&client, task, false).await
        }
        CrdbCommand::RemoveInstance {
            crdb_guid,
            instance_id,
            force,
        } => {
            let updates = CrdbUpdates {
                remove_instances: vec![instance_id],
                force_remove: force,
                ..Default::default()
            };
            let task = client.update_crdb_instances(&crdb_guid, &updates).await?;
            follow(&client, task, false).await
        }
        CrdbCommand::PurgeInstance {
            crdb_guid,
            instance_id,
        } => {
            let crdb = client.crdb(&crdb_guid).await?;
            if crdb.local_instance_id != instance_id {
                bail!(
                    "--instance-id: this cluster's instance of CRDB {crdb_guid} is {}, not {instance_id}; run purge-instance on the cluster of instance {instance_id}",
                    crdb.local_instance_id
                );
            }
            client.delete_local_crdb(&crdb_guid).await?;
            println!("purged instance {instance_id} of CRDB {crdb_guid} from this cluster");
            Ok(())
        }
        CrdbCommand::Flush { crdb_guid } => {
            let task = client.flush_crdb(&crdb_guid).await?;
            follow(&client, task, false).await
        }
        CrdbCommand::Health { crdb_guid, json } => {
            let report = client.crdb_health(&crdb_guid).await?;
            output::print_or_json(&report, json, print_health)
        }
        CrdbCommand::Task(TaskCommand::List) => {
            for task in client.crdb_tasks().await? {
                print_task(&task);
            }
            Ok(())
        }
        CrdbCommand::Task(TaskCommand::Status { task_id }) => {
            print_task(&client.crdb_task(&task_id).await?);
            Ok(())
        }
    }
}

/// One `--instance`: a URL (with the CLI's credentials) or `url=..,username=..,password=..`.
fn parse_instance(text: &str, conn: &Connection) -> Result<CrdbInstanceRequest> {
    let (mut url, mut username, mut password) = (None, conn.user.clone(), conn.password.clone());
    if text.contains('=') {
        for part in text.split(',') {
            let (key, value) = part.split_once('=').with_context(|| {
                format!("--instance {text}: '{part}' is not KEY=VALUE (url=, username=, password=)")
            })?;
            match key {
                "url" => url = Some(value.to_string()),
                "username" => username = Some(value.to_string()),
                "password" => password = Some(value.to_string()),
                other => bail!(
                    "--instance {text}: unknown key '{other}'; use url=URL,username=U,password=P"
                ),
            }
        }
    } else {
        url = Some(text.to_string());
    }
    let url = url.with_context(|| format!("--instance {text}: give url=URL"))?;
    let missing = |what: &str| {
        format!("--instance {url}: no {what}; give --{what} (FLOTILLA_USER/FLOTILLA_PASSWORD) or --instance url={url},username=U,password=P")
    };
    Ok(CrdbInstanceRequest {
        username: username.with_context(|| missing("user"))?,
        password: password.with_context(|| missing("password"))?,
        url,
    })
}

async fn create(conn: &Connection, args: CreateArgs) -> Result<()> {
    if args.instances.len() < 2 {
        bail!("--instance: a CRDB needs at least 2 clusters; give --instance URL once per cluster");
    }
    let instances = args
        .instances
        .iter()
        .map(|text| parse_instance(text, conn))
        .collect::<Result<Vec<_>>>()?;
    let request = CrdbCreateRequest {
        name: args.name,
        default_db_config: CrdbDbConfig {
            port: args.port,
            memory_size: args.memory,
            shards_count: args.shards,
            replication: args.replication,
            data_persistence: DataPersistence::Disabled,
            redis_version: args.redis_version,
            authentication_redis_pass: None,
        },
        instances,
    };
    // The first instance's cluster coordinates, reached with this CLI's --cacert.
    let coordinator = Connection {
        url: request.instances[0].url.clone(),
        user: Some(request.instances[0].username.clone()),
        password: Some(request.instances[0].password.clone()),
        cacert: conn.cacert.clone(),
    }
    .client();
    let task = coordinator.create_crdb(&request).await?;
    follow(&coordinator, task, args.no_wait).await
}

/// How long the CLI follows a task before it gives up (the task goes on).
const FOLLOW_FOR: Duration = Duration::from_secs(300);

/// Waits for `task` to end (unless `no_wait`), printing its steps; fails when it failed.
async fn follow(client: &Client, mut task: CrdbTask, no_wait: bool) -> Result<()> {
    if no_wait {
        println!("{}", task.id);
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut shown = String::new();
    while !task.is_done() {
        if started.elapsed() > FOLLOW_FOR {
            bail!(
                "task {} is still {:?} at '{}'; follow it with `flotilla crdb task status --task-id {}`",
                task.id,
                task.status,
                task.step,
                task.id
            );
        }
        if task.step != shown {
            eprintln!("task {}: {}", task.id, task.step);
            shown = task.step.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        task = client.crdb_task(&task.id).await?;
    }
    print_task(&task);
    if task.status == CrdbTaskStatus::Failed {
        let errors: Vec<String> = task.errors.iter().map(|e| e.description.clone()).collect();
        bail!("task {} failed: {}", task.id, errors.join("; "));
    }
    Ok(())
}

fn print_task(task: &CrdbTask) {
    println!(
        "task {} {} {:?} crdb {} ({:.0}%)",
        task.id,
        task.operation,
        task.status,
        task.crdb_guid,
        task.progress * 100.0
    );
    for error in &task.errors {
        println!(
            "  error [{}] {}: {}",
            error.error_code, error.cluster_name, error.description
        );
    }
}

/// Prints `CRDB-GUID NAME REPL-ID CLUSTER-FQDN`, one line per instance (as `crdb-cli crdb
/// list`).
fn print_list(crdbs: &[CrdbInfo]) {
    println!(
        "{:<36} {:<20} {:<7} CLUSTER-FQDN",
        "CRDB-GUID", "NAME", "REPL-ID"
    );
    for crdb in crdbs {
        for instance in &crdb.instances {
            println!(
                "{:<36} {:<20} {:<7} {}",
                crdb.guid, crdb.name, instance.id, instance.cluster.name
            );
        }
    }
}

fn print_details(crdb: &CrdbInfo) {
    println!("crdb {} {}", crdb.guid, crdb.name);
    println!("  protocol version:    {}", crdb.protocol_version);
    println!("  feature set version: {}", crdb.featureset_version);
    let config = &crdb.default_db_config;
    println!(
        "  database:            port {}, {} bytes, {} shards, replication {}",
        config.port, config.memory_size, config.shards_count, config.replication
    );
    for instance in &crdb.instances {
        let local = match instance.id == crdb.local_instance_id {
            true => " (this cluster)",
            false => "",
        };
        println!(
            "  instance {}: cluster {} {}{local}",
            instance.id, instance.cluster.name, instance.cluster.url
        );
    }
    if !crdb.ghost_instance_ids.is_empty() {
        println!("  removed instances:   {:?}", crdb.ghost_instance_ids);
    }
}

/// The `crdb health` text: whether the instances agree, then one line per participating cluster.
fn print_health(report: &CrdbHealthReport) {
    println!(
        "crdb {} {}",
        report.crdb_guid,
        if report.consistent {
            "consistent"
        } else {
            "INCONSISTENT"
        }
    );
    println!(
        "{:<8} {:<28} {:<12} {:<9} {:<11} INSTANCES",
        "REPL-ID", "CLUSTER", "STATUS", "PROTOCOL", "FEATURESET"
    );
    for c in &report.configurations {
        println!(
            "{:<8} {:<28} {:<12} {:<9} {:<11} {:?} {}",
            c.id,
            c.cluster_name,
            c.status,
            c.protocol_version,
            c.featureset_version,
            c.instances,
            c.error
        );
    }
}
