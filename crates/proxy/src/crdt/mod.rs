//! The Active-Active layer on an endpoint (issue 15): for a database that is an instance of a
//! CRDB ([`Topology::crdt`]), what each client command becomes.
//!
//! - Supported writes (see [`screen`]) go through `flotilla-crdb` on the key's shard: the key's
//!   CRDT state is loaded, the write applied by `flotilla-crdt`'s rules, and one script commits
//!   the new metadata, the engine's value and the op-log entry. The client gets the reply the
//!   engine would have given, computed from the key before and after.
//! - Every other write is refused, naming the command (so nothing reaches the engine without
//!   being replicated), as are commands naming the layer's hidden keys (`__crdt__...`),
//!   transactions and scripts.
//! - `KEYS`, `SCAN`, `RANDOMKEY` and `DBSIZE` run here, leaving the hidden keys out.
//! - Reads go to the engine unchanged.
//!
//! Commands run here use one multiplexed engine connection per shard primary and login, shared
//! by the whole process ([`connection`]); the session runs each at the start of a batch, after
//! every earlier command of the client was answered, and before any later one is sent, so a
//! client's order holds.

mod collections;
mod keyspace;
mod listings;
mod strings;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_crdb::{is_hidden, Conn};
use flotilla_crdt::{InstanceId, Millis};
use flotilla_resp::{Protocol, Request, Value};

use crate::command::Class;
use crate::route::{request_keys, Decision, Route};
use crate::slot::ShardIndex;
use crate::topology::{CrdtInstance, ShardLogin, Topology};

pub(crate) use listings::info;
use support::{format_score, Failure};

/// The reply of a refused command: what it is, and that the database is Active-Active.
fn unsupported(name: &str) -> String {
    format!("ERR {name} is not supported on an Active-Active database")
}

/// What the endpoint of an Active-Active instance does with a request.
#[derive(Debug)]
pub(crate) enum Screen {
    /// Not the layer's business: the ordinary data path.
    Pass,
    /// Refused with this error.
    Refuse(String),
    /// Run here (a write through the layer, or a listing that hides the hidden keys).
    Run,
}

/// Whether `name` is a supported write (each goes through the layer): the single-shard ones of
/// each family, and the multi-key ones run per shard.
fn is_supported_write(name: &str) -> bool {
    strings::COMMANDS.contains(&name)
        || collections::COMMANDS.contains(&name)
        || keyspace::COMMANDS.contains(&name)
        || matches!(name, "MSET" | "DEL" | "UNLINK")
}

/// Listings run here so that the hidden keys stay hidden (`INFO`: its `keyspace` counts).
const LISTINGS: &[&str] = &["KEYS", "SCAN", "RANDOMKEY", "DBSIZE", "INFO"];

/// Decides what the endpoint of an Active-Active instance does with `request`.
pub(crate) fn screen(request: &Request, decision: &Decision) -> Screen {
    let name = request.name();
    if let Ok(keys) = request_keys(request) {
        if keys.iter().any(|k| is_hidden(k)) {
            return Screen::Refuse(
                "ERR keys starting with __crdt__ are reserved on an Active-Active database".into(),
            );
        }
    }
    match name {
        "FLUSHALL" | "FLUSHDB" => {
            return Screen::Refuse(format!(
                "{}; use `flotilla crdb flush`, which flushes every instance",
                unsupported(name)
            ))
        }
        "MULTI" | "WATCH" => {
            return Screen::Refuse(format!(
                "{} (transactions are not replicated as one)",
                unsupported(name)
            ))
        }
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
            return Screen::Refuse(format!(
                "{} (scripts are not replicated)",
                unsupported(name)
            ))
        }
        "OBJECT"
            if request
                .arg(1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"ENCODING")) =>
        {
            return Screen::Refuse(unsupported("OBJECT ENCODING"))
        }
        "SORT"
            if request
                .args()
                .iter()
                .any(|a| a.eq_ignore_ascii_case(b"STORE")) =>
        {
            return Screen::Refuse(unsupported("SORT ... STORE"))
        }
        _ => {}
    }
    if matches!(
        decision.route,
        Route::Unknown | Route::Invalid(_) | Route::CrossSlot | Route::Refused(_)
    ) {
        // The proxy's own answer (unknown command, wrong arity, CROSSSLOT...).
        return Screen::Pass;
    }
    if is_supported_write(name) || LISTINGS.contains(&name) {
        return Screen::Run;
    }
    let Some(spec) = decision.spec else {
        return Screen::Pass;
    };
    let data = matches!(
        spec.class,
        Class::Keyed | Class::Split(_) | Class::AllShards(_) | Class::Scan
    );
    if data && spec.write {
        return Screen::Refuse(unsupported(name));
    }
    Screen::Pass
}

/// Engine connections by primary address and login user.
type Pool = tokio::sync::Mutex<HashMap<(SocketAddr, Option<String>), Conn>>;

/// The process's engine connections for the layer.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// A connection to the engine at `addr` logged in with `login` (shared; opened on first use).
async fn connection(addr: SocketAddr, login: &ShardLogin) -> Result<Conn, String> {
    let mut pool = pool().lock().await;
    let id = (addr, login.user.clone());
    if let Some(conn) = pool.get(&id) {
        return Ok(conn.clone());
    }
    let mut settings = redis::RedisConnectionInfo::default().set_skip_set_lib_name();
    if !login.password.is_empty() {
        settings = settings.set_password(login.password.clone());
        if let Some(user) = &login.user {
            settings = settings.set_username(user.clone());
        }
    }
    let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
        addr.ip().to_string(),
        addr.port(),
    ))
    .map_err(|e| e.to_string())?
    .set_redis_settings(settings)
    // Each write waits for its replies: no Nagle delay on the way.
    .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let conn = redis::Client::open(info)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("cannot reach shard at {addr}: {e}"))?;
    pool.insert(id, conn.clone());
    Ok(conn)
}

/// Forgets a connection that failed, so the next command opens a new one.
async fn forget(addr: SocketAddr, login: &ShardLogin) {
    pool().lock().await.remove(&(addr, login.user.clone()));
}

/// What a command run here needs.
struct Ctx<'a> {
    topology: &'a Topology,
    instance: InstanceId,
    protocol: u16,
    resp3: bool,
    now: Millis,
}

impl Ctx<'_> {
    fn nil(&self) -> Value {
        if self.resp3 {
            Value::Null
        } else {
            Value::NullBulkString
        }
    }

    fn nil_array(&self) -> Value {
        if self.resp3 {
            Value::Null
        } else {
            Value::NullArray
        }
    }

    fn score(&self, score: f64) -> Value {
        if self.resp3 {
            Value::Double(score)
        } else {
            Value::bulk(format_score(score))
        }
    }

    /// The connection to `shard`'s primary.
    async fn conn(&self, shard: ShardIndex) -> Result<(Conn, SocketAddr), Value> {
        let addr = self
            .topology
            .primary(shard)
            .ok_or_else(|| Value::error("ERR no such shard"))?;
        let conn = connection(addr, self.topology.shard_login())
            .await
            .map_err(|e| Value::error(format!("ERR {e}")))?;
        Ok((conn, addr))
    }
}

/// Runs a request [`screen`] said to run here, for a client speaking `protocol`.
pub(crate) async fn run(
    topology: &Topology,
    crdt: CrdtInstance,
    request: &Request,
    decision: &Decision,
    protocol: Protocol,
) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0);
    let ctx = Ctx {
        topology,
        instance: InstanceId(crdt.replica_id),
        protocol: crdt.protocol_version,
        resp3: protocol == Protocol::Resp3,
        now,
    };
    match request.name() {
        "KEYS" => listings::keys(&ctx, request).await,
        "SCAN" => listings::scan(&ctx, request).await,
        "RANDOMKEY" => listings::randomkey(&ctx).await,
        "DBSIZE" => listings::dbsize(&ctx).await,
        "INFO" => Value::error("ERR INFO runs with the session's context"),
        "DEL" | "UNLINK" => keyspace::del(&ctx, request).await,
        "MSET" => strings::mset(&ctx, request).await,
        _ => {
            let shard = match &decision.route {
                Route::Slot(slot) => topology.slots().shard_of(*slot),
                _ => ShardIndex(0),
            };
            let (mut conn, addr) = match ctx.conn(shard).await {
                Ok(c) => c,
                Err(e) => return e,
            };
            let reply = write(&ctx, &mut conn, request).await;
            if let Err(e) = &reply {
                if e.is_io_error() || e.is_connection_dropped() {
                    forget(addr, topology.shard_login()).await;
                }
            }
            reply.unwrap_or_else(|e| match e {
                Failure::Engine(e) if e.code() == Some("READONLY") => {
                    Value::error(format!("READONLY {}", e.detail().unwrap_or_default()))
                }
                e => Value::error(e.to_string()),
            })
        }
    }
}

/// Whether `reply` is a write refused by a demoted primary (nothing was written: the script
/// stops at its first write), which may run again on the next primary.
pub(crate) fn refused_readonly(reply: &Value) -> bool {
    matches!(reply, Value::Error(e) if e.starts_with(b"READONLY"))
}

/// A single-shard write command, by family.
async fn write(ctx: &Ctx<'_>, conn: &mut Conn, request: &Request) -> Result<Value, Failure> {
    let name = request.name();
    if strings::COMMANDS.contains(&name) {
        strings::write(ctx, conn, request).await
    } else if keyspace::COMMANDS.contains(&name) {
        keyspace::write(ctx, conn, request).await
    } else {
        collections::write(ctx, conn, request).await
    }
}
