//! CONFIG through an endpoint: the database's settings, which the proxy reads and changes
//! through a [`DatabaseAdmin`] its owner gives it (the proxy never writes to the cluster store
//! itself: data flows store -> proxy). This module owns the command's parsing, checks and
//! replies; the owner (crates/endpoints) owns committing settings and reaching the engines.
//!
//! `CONFIG SET` answers `+OK` once the setting is committed to the store *and* every primary
//! engine of the database runs with it (the agents apply it), so `CONFIG SET x; CONFIG GET x`
//! reads back x and the next command sees the new setting on every shard.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use flotilla_model::{check_setting, is_configurable, is_persistence_setting, SettingError};
use flotilla_resp::{Request, Value};

/// Why CONFIG subcommands other than GET/SET/RESETSTAT are refused (the command table's note).
pub(crate) const CONFIG_OTHERS: &str =
    "a database's settings are kept by the cluster: CONFIG GET/SET/RESETSTAT of the settings Redis Software allows; the rest through the flotilla CLI or REST API";

/// A future the admin returns; boxed so the trait is object-safe.
pub type AdminFuture<T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send>>;

/// What an endpoint needs from its node to answer CONFIG: exists so the proxy declares the
/// interface and the node (crates/endpoints, with the store and the engines' admin login)
/// implements it.
pub trait DatabaseAdmin: Send + Sync + 'static {
    /// Commits `settings` (canonical names, checked values) as database `bdb`'s and resolves
    /// once every primary engine of the database runs with them.
    fn set_config(&self, bdb: u64, settings: Vec<(String, String)>) -> AdminFuture<()>;
    /// The configurable settings matching `pattern` (a glob) as the database's engine names
    /// and reports them: name, value.
    fn get_config(&self, bdb: u64, pattern: String) -> AdminFuture<Vec<(String, String)>>;
    /// `CONFIG RESETSTAT` on every shard of the database.
    fn reset_stats(&self, bdb: u64) -> AdminFuture<()>;
}

/// A shared [`DatabaseAdmin`], carried by the [`crate::Topology`]; two handles are equal when
/// they are the same admin, so republishing a topology does not count as a change.
#[derive(Clone)]
pub struct AdminHandle(pub Arc<dyn DatabaseAdmin>);

impl PartialEq for AdminHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for AdminHandle {}

impl std::fmt::Debug for AdminHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminHandle")
    }
}

/// The reply to a CONFIG request for database `bdb` (`None`, or no admin: a topology built
/// outside a cluster, which has no settings to change).
pub(crate) async fn config(
    admin: Option<&AdminHandle>,
    bdb: Option<u64>,
    request: &Request,
) -> Value {
    let sub = request
        .arg(1)
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase())
        .unwrap_or_default();
    let (Some(admin), Some(bdb)) = (admin, bdb) else {
        return Value::error(
            "ERR CONFIG is not available on this endpoint: it serves no cluster database",
        );
    };
    let args: Vec<String> = request.args()[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let result = match sub.as_str() {
        "GET" => get(admin, bdb, &args).await,
        "SET" => set(admin, bdb, &args).await,
        "RESETSTAT" if args.is_empty() => {
            admin.0.reset_stats(bdb).await.map(|()| Value::simple("OK"))
        }
        "RESETSTAT" => Ok(arity("config|resetstat")),
        _ => Ok(Value::error(format!(
            "ERR CONFIG {sub} is refused: {CONFIG_OTHERS}"
        ))),
    };
    result.unwrap_or_else(|e| Value::error(format!("ERR {e}")))
}

fn arity(command: &str) -> Value {
    Value::error(format!(
        "ERR wrong number of arguments for '{command}' command"
    ))
}

/// `CONFIG GET pattern [pattern ...]`: a pattern without glob characters must name a
/// configurable setting; with them, it answers the configurable settings it matches.
async fn get(admin: &AdminHandle, bdb: u64, patterns: &[String]) -> Result<Value, String> {
    if patterns.is_empty() {
        return Ok(arity("config|get"));
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pattern in patterns {
        let glob = pattern.contains(['*', '?', '[']);
        if !glob && !is_configurable(pattern) && !is_persistence_setting(pattern) {
            return Ok(refused(&SettingError::NotConfigurable(pattern.clone())));
        }
        for pair in admin.0.get_config(bdb, pattern.clone()).await? {
            if !pairs.iter().any(|(name, _)| *name == pair.0) {
                pairs.push(pair);
            }
        }
    }
    Ok(Value::Map(
        pairs
            .into_iter()
            .map(|(name, value)| (Value::bulk(name), Value::bulk(value)))
            .collect(),
    ))
}

/// `CONFIG SET name value [name value ...]`: every setting checked before any is committed.
async fn set(admin: &AdminHandle, bdb: u64, args: &[String]) -> Result<Value, String> {
    if args.is_empty() || args.len() % 2 != 0 {
        return Ok(arity("config|set"));
    }
    let mut settings = Vec::with_capacity(args.len() / 2);
    for pair in args.chunks(2) {
        if is_persistence_setting(&pair[0]) {
            if let Some(refusal) = persistence_change(admin, bdb, &pair[0], &pair[1]).await? {
                return Ok(refusal);
            }
            continue;
        }
        match check_setting(&pair[0], &pair[1]) {
            Ok(setting) => settings.push(setting),
            Err(e) => return Ok(refused(&e)),
        }
    }
    if !settings.is_empty() {
        admin.0.set_config(bdb, settings).await?;
    }
    Ok(Value::simple("OK"))
}

/// A persistence setting (`save`, `appendonly`) set through CONFIG: accepted (`None`, nothing
/// to do) when `value` is what the engine has, else the refusal naming the command that changes
/// the database's persistence.
async fn persistence_change(
    admin: &AdminHandle,
    bdb: u64,
    name: &str,
    value: &str,
) -> Result<Option<Value>, String> {
    let current = admin.0.get_config(bdb, name.to_ascii_lowercase()).await?;
    if current.iter().any(|(_, v)| v.trim() == value.trim()) {
        return Ok(None);
    }
    Ok(Some(Value::error(format!(
        "ERR '{name}' is set by the database's persistence, not per CONFIG: CONFIG SET may only repeat its current value (the persistence is chosen at `flotilla db create --persistence aof|snapshot`)"
    ))))
}

/// Redis's wording for a bad value; a setting outside the subset is named and refused.
fn refused(error: &SettingError) -> Value {
    match error {
        SettingError::NotConfigurable(_) => Value::error(format!("ERR {error}")),
        SettingError::InvalidValue { name, reason } => Value::error(format!(
            "ERR CONFIG SET failed (possibly related to argument '{name}') - {reason}"
        )),
    }
}
