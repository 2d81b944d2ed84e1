//! `flotilla db ...`: create, list, show, change and delete databases.

use std::time::Duration;

use crate::output;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use flotilla_client::Client;
use flotilla_model::rest::{BdbCreate, BdbInfo, BdbUpdate, BdbUpgrade};
use flotilla_model::{DataPersistence, TlsMode};

/// `flotilla db` subcommands.
#[derive(Subcommand)]
pub enum DbCommand {
    /// Create a database.
    Create(CreateArgs),
    /// List databases.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one database (by name or uid).
    Show {
        /// Name or uid.
        db: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a database's memory limit, password or client limits.
    Set {
        /// Name or uid.
        db: String,
        /// New memory limit, e.g. 200mb.
        #[arg(long, value_parser = parse_memory)]
        memory: Option<u64>,
        /// New client password ("" removes it).
        #[arg(long)]
        db_password: Option<String>,
        /// New client limits.
        #[command(flatten)]
        limits: LimitArgs,
        /// TLS on the endpoint: on (TLS only, the node's certificate from the cluster CA) or
        /// off (plaintext). Clients already connected keep their connection.
        #[arg(long, value_parser = parse_tls_mode)]
        tls: Option<TlsMode>,
        /// An engine setting, NAME=VALUE (repeatable), as CONFIG SET through the endpoint takes
        /// it: only the settings Redis Software allows (e.g. slowlog-max-len=256,
        /// notify-keyspace-events=KEA, hash-max-listpack-entries=64); every shard gets it.
        #[arg(long = "config", value_parser = parse_setting)]
        config: Vec<(String, String)>,
    },
    /// Upgrade a database's engine with no downtime: replicas first, then a switchover per
    /// shard, then the old primaries (Redis Software's `rladmin upgrade db`).
    Upgrade {
        /// Name or uid.
        db: String,
        /// Target engine (default: the newest bundled engine).
        #[arg(long)]
        redis_version: Option<String>,
        /// Switch primaries back to where they were at the end.
        #[arg(long)]
        preserve_roles: bool,
        /// Slot ranges upgraded at once.
        #[arg(long, default_value_t = 1)]
        parallel_shards: u16,
        /// Restart shards empty on the new engine instead of moving the data.
        #[arg(long)]
        discard_data: bool,
        /// Allow --discard-data on a persistent database.
        #[arg(long)]
        force_discard: bool,
        /// Restart even when the database already runs the target engine.
        #[arg(long)]
        force_restart: bool,
        /// For an instance of an Active-Active database: keep its CRDB protocol version (by
        /// default it moves to the newest this cluster speaks once the engine upgrade finished;
        /// a newer protocol stalls its writes to older instances until they are upgraded).
        #[arg(long)]
        keep_crdt_protocol_version: bool,
        /// Return at once instead of following the action.
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete a database and its data.
    Delete {
        /// Name or uid.
        db: String,
    },
}

/// Arguments of `flotilla db create`.
#[derive(Args)]
pub struct CreateArgs {
    /// Unique name (letters, digits, hyphens).
    #[arg(long)]
    name: String,
    /// Endpoint port, 10000-19999; served on every node.
    #[arg(long)]
    port: u16,
    /// Memory limit, e.g. 100mb, 1gb, or bytes.
    #[arg(long, value_parser = parse_memory)]
    memory: u64,
    /// Primary shards (1-64).
    #[arg(long, default_value_t = 1)]
    shards: u16,
    /// Give every primary shard a replica on another node.
    #[arg(long)]
    replication: bool,
    /// Persistence: aof or snapshot (default: none).
    #[arg(long, value_parser = parse_persistence)]
    persistence: Option<DataPersistence>,
    /// Engine version: redis-6.2, redis-7.0, valkey-8.1, valkey-9.1 (default: the newest).
    #[arg(long)]
    redis_version: Option<String>,
    /// Password clients must AUTH with. (Named --db-password because --password is the
    /// operator's password for every command.)
    #[arg(long)]
    db_password: Option<String>,
    /// Limits on client connections (defaults: see crates/proxy/COMMANDS.md).
    #[command(flatten)]
    limits: LimitArgs,
    /// Serve the endpoint over TLS only, with the node's certificate from the cluster CA
    /// (clients: redis-cli --tls --cacert CA).
    #[arg(long)]
    tls: bool,
    /// Return as soon as the cluster accepted the database, without waiting for its shards to
    /// start (by default the command returns once every shard runs in its role, so a client
    /// may write at once; the endpoint also holds requests for a starting shard, up to 5 s).
    #[arg(long)]
    no_wait: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// How long `db create` waits for every shard of the new database to run in its role.
const CREATE_WAIT: Duration = Duration::from_secs(60);

/// How often `db create` asks whether the new database is active.
const CREATE_POLL: Duration = Duration::from_millis(100);

/// The client limits of a database, as `db create` and `db set` flags (Redis's names).
#[derive(Args, Default)]
pub struct LimitArgs {
    /// Most client connections on each node's endpoint (0: no limit).
    #[arg(long)]
    max_connections: Option<u32>,
    /// Most bytes of a client's request not yet decoded, e.g. 1gb (Redis's
    /// client-query-buffer-limit; at least 1mb).
    #[arg(long, value_parser = parse_memory)]
    client_query_buffer_limit: Option<u64>,
    /// Most bytes of replies pending for one client, e.g. 64mb (0: no limit).
    #[arg(long, value_parser = parse_memory)]
    client_output_buffer_limit: Option<u64>,
    /// Seconds a client may leave its replies unread before it is closed (0: no limit).
    #[arg(long)]
    client_output_timeout: Option<u32>,
    /// Seconds before an idle client is closed (Redis's timeout; 0: never).
    #[arg(long)]
    client_timeout: Option<u32>,
}

impl LimitArgs {
    /// Whether no limit was given.
    fn is_empty(&self) -> bool {
        self.max_connections.is_none()
            && self.client_query_buffer_limit.is_none()
            && self.client_output_buffer_limit.is_none()
            && self.client_output_timeout.is_none()
            && self.client_timeout.is_none()
    }
}

/// Parses `--config NAME=VALUE`, checked as the cluster checks it.
fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text}: expected NAME=VALUE, e.g. slowlog-max-len=256"))?;
    flotilla_model::check_setting(name, value).map_err(|e| e.to_string())
}

/// Parses `--tls on|off` (also Redis Software's `enabled` / `disabled`).
fn parse_tls_mode(text: &str) -> Result<TlsMode, String> {
    text.parse()
}

/// Parses `100mb`, `1gb`, `512kb`, `1024` (bytes); units are powers of 1024.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size like 100mb"))?;
    let factor: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}'; use kb, mb or gb"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn parse_persistence(text: &str) -> Result<DataPersistence, String> {
    match text {
        "aof" => Ok(DataPersistence::Aof),
        "snapshot" => Ok(DataPersistence::Snapshot),
        "disabled" | "none" => Ok(DataPersistence::Disabled),
        other => Err(format!("'{other}' is not aof, snapshot or disabled")),
    }
}

/// Runs a db subcommand.
pub async fn run(client: &Client, command: DbCommand) -> Result<()> {
    match command {
        DbCommand::Create(args) => create(client, args).await,
        DbCommand::List { json } => {
            let bdbs = client.bdbs().await?;
            output::print_or_json(&bdbs, json, |bdbs| print_table(bdbs))?;
            Ok(())
        }
        DbCommand::Show { db, json } => {
            let bdb = client.find_bdb(&db).await?;
            output::print_or_json(&bdb, json, print_details)?;
            Ok(())
        }
        DbCommand::Set {
            db,
            memory,
            db_password,
            limits,
            tls,
            config,
        } => {
            if memory.is_none()
                && db_password.is_none()
                && limits.is_empty()
                && tls.is_none()
                && config.is_empty()
            {
                bail!("nothing to change: pass --memory, --db-password, --tls, --config or a client limit such as --max-connections");
            }
            let bdb = client.find_bdb(&db).await?;
            let update = BdbUpdate {
                memory_size: memory,
                authentication_redis_pass: db_password,
                max_connections: limits.max_connections,
                client_query_buffer_limit: limits.client_query_buffer_limit,
                client_output_buffer_limit: limits.client_output_buffer_limit,
                client_output_timeout: limits.client_output_timeout,
                client_timeout: limits.client_timeout,
                tls_mode: tls,
                config: config.into_iter().collect(),
            };
            let bdb = client.update_bdb(bdb.uid, &update).await?;
            println!("database '{}' (db:{}) updated", bdb.name, bdb.uid);
            Ok(())
        }
        DbCommand::Upgrade {
            db,
            redis_version,
            preserve_roles,
            parallel_shards,
            discard_data,
            force_discard,
            force_restart,
            keep_crdt_protocol_version,
            no_wait,
        } => {
            let bdb = client.find_bdb(&db).await?;
            let request = BdbUpgrade {
                redis_version,
                preserve_roles,
                parallel_shards_upgrade: Some(parallel_shards),
                may_discard_data: discard_data,
                force_discard,
                force_restart,
                keep_crdt_protocol_version,
            };
            let action = client.upgrade_bdb(bdb.uid, &request).await?;
            println!(
                "upgrading database '{}' (db:{}) from {}: action {} ({} steps)",
                bdb.name, bdb.uid, bdb.redis_version, action.action_uid, action.steps_total
            );
            if no_wait {
                return Ok(());
            }
            crate::action::wait(client, action.action_uid).await
        }
        DbCommand::Delete { db } => {
            let bdb = client.find_bdb(&db).await?;
            client.delete_bdb(bdb.uid).await?;
            println!("database '{}' (db:{}) deleted", bdb.name, bdb.uid);
            Ok(())
        }
    }
}

async fn create(client: &Client, args: CreateArgs) -> Result<()> {
    let request = BdbCreate {
        name: args.name,
        port: args.port,
        memory_size: args.memory,
        shards_count: args.shards,
        replication: args.replication,
        data_persistence: args.persistence.unwrap_or_default(),
        redis_version: args.redis_version,
        authentication_redis_pass: args.db_password,
        max_connections: args.limits.max_connections,
        client_query_buffer_limit: args.limits.client_query_buffer_limit,
        client_output_buffer_limit: args.limits.client_output_buffer_limit,
        client_output_timeout: args.limits.client_output_timeout,
        client_timeout: args.limits.client_timeout,
        tls_mode: args.tls.then_some(TlsMode::Enabled),
    };
    let mut bdb = client.create_bdb(&request).await?;
    if !args.no_wait {
        bdb = wait_until_active(client, &bdb).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&bdb)?);
    } else {
        println!(
            "database '{}' created as db:{} on port {} ({} shards{}, {})",
            bdb.name,
            bdb.uid,
            bdb.port,
            bdb.shards_count,
            if bdb.replication { ", replicated" } else { "" },
            bdb.redis_version
        );
    }
    Ok(())
}

/// Waits (bounded by [`CREATE_WAIT`]) until every shard of the new database `bdb` runs in its
/// role, so the database serves when `db create` returns; past the bound, an error naming the
/// shards that do not.
async fn wait_until_active(client: &Client, bdb: &BdbInfo) -> Result<BdbInfo> {
    let deadline = tokio::time::Instant::now() + CREATE_WAIT;
    loop {
        // A read that fails (the primary node changing, a node busy) is asked again until the
        // bound: the database exists, only its status is unknown for now.
        let status = match client.bdb(bdb.uid).await {
            Ok(now) if now.status == "active" => return Ok(now),
            Ok(now) => format!("status {}", now.status),
            Err(e) => format!("its status could not be read: {e}"),
        };
        if tokio::time::Instant::now() >= deadline {
            let waiting = not_active_shards(client, bdb.uid).await;
            bail!(
                "database '{}' (db:{}) was created but does not serve yet after {} s ({status}): \
                 {waiting}; `flotilla db show {}` shows its status and `flotilla status \
                 --issues-only` the nodes' (create with --no-wait to return at once)",
                bdb.name,
                bdb.uid,
                CREATE_WAIT.as_secs(),
                bdb.name
            );
        }
        tokio::time::sleep(CREATE_POLL).await;
    }
}

/// The shards of database `bdb_uid` that do not run in their role, as an error names them.
async fn not_active_shards(client: &Client, bdb_uid: u64) -> String {
    let Ok(shards) = client.shards().await else {
        return "its shards could not be read".into();
    };
    let waiting: Vec<String> = shards
        .iter()
        .filter(|s| s.bdb_uid == bdb_uid && s.status != "active")
        .map(|s| {
            format!(
                "shard {} ({} on node {}, port {}) is {}",
                s.uid,
                if s.role == flotilla_model::ShardRole::Primary {
                    "primary"
                } else {
                    "replica"
                },
                s.node_uid,
                s.port,
                s.status
            )
        })
        .collect();
    if waiting.is_empty() {
        "its shards are starting".into()
    } else {
        waiting.join(", ")
    }
}

/// Prints databases as the `DATABASES` table of `flotilla status` and `db list`.
pub fn print_table(bdbs: &[BdbInfo]) {
    println!(
        "{:<8} {:<20} {:<12} {:<7} {:<12} {:<8} STATUS",
        "DB:ID", "NAME", "ENGINE", "SHARDS", "REPLICATION", "PORT"
    );
    for bdb in bdbs {
        println!(
            "{:<8} {:<20} {:<12} {:<7} {:<12} {:<8} {}",
            format!("db:{}", bdb.uid),
            bdb.name,
            bdb.redis_version,
            bdb.shards_count,
            if bdb.replication {
                "enabled"
            } else {
                "disabled"
            },
            bdb.port,
            bdb.status
        );
    }
}

fn print_details(bdb: &BdbInfo) {
    println!("db:{} {}", bdb.uid, bdb.name);
    println!("  engine:       {}", bdb.redis_version);
    println!("  status:       {}", bdb.status);
    println!("  memory:       {} bytes", bdb.memory_size);
    println!(
        "  shards:       {} (shard uids {:?})",
        bdb.shards_count, bdb.shard_list
    );
    println!("  replication:  {}", bdb.replication);
    println!("  persistence:  {:?}", bdb.data_persistence);
    println!(
        "  password:     {}",
        match (bdb.password_protected, bdb.password_storage.as_deref()) {
            (false, _) => "none".to_string(),
            (true, Some(storage)) => format!("required (stored as {storage})"),
            (true, None) => "required".to_string(),
        }
    );
    println!(
        "  tls:          {}",
        if bdb.tls_mode.is_enabled() {
            "enabled (clients: --tls with the cluster CA)"
        } else {
            "disabled"
        }
    );
    let limits = &bdb.limits;
    let unlimited = |n: u64| {
        if n == 0 {
            "no limit".to_string()
        } else {
            n.to_string()
        }
    };
    println!(
        "  clients:      max {} per node, idle timeout {} s, query buffer {} bytes, output buffer {} bytes, output timeout {} s",
        unlimited(u64::from(limits.max_connections)),
        unlimited(u64::from(limits.client_timeout)),
        limits.client_query_buffer_limit,
        unlimited(limits.client_output_buffer_limit),
        unlimited(u64::from(limits.client_output_timeout)),
    );
    for (name, value) in &bdb.config {
        println!("  config:       {name} {value}");
    }
    for endpoint in &bdb.endpoints {
        println!(
            "  endpoint:     port {} on {}",
            endpoint.port,
            endpoint.addr.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_sizes_parse_with_binary_units() {
        assert_eq!(super::parse_memory("100mb"), Ok(100 << 20));
        assert_eq!(super::parse_memory("1GB"), Ok(1 << 30));
        assert_eq!(super::parse_memory("2048"), Ok(2048));
        assert!(super::parse_memory("ten").is_err());
        assert!(super::parse_memory("5tb").is_err());
    }
}
