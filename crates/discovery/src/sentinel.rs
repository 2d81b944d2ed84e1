//! The `SENTINEL` subcommands clients use to find a database's endpoint, answered from a
//! [`Databases`] snapshot.

use std::net::SocketAddr;

use bytes::Bytes;
use flotilla_resp::{CommandName, Protocol, Request, Value};

use crate::snapshot::{run_id, Databases, DbEndpoint};

/// Sentinel's default `down-after-milliseconds`, reported for every database.
const DOWN_AFTER_MS: &str = "30000";
/// Sentinel's default `failover-timeout`, reported for every database.
const FAILOVER_TIMEOUT_MS: &str = "180000";

/// What a command is answered from: the latest snapshot and this service's own address.
pub(crate) struct View<'a> {
    /// The databases and peers as last published by the daemon.
    pub dbs: &'a Databases,
    /// The address this discovery service listens on.
    pub me: SocketAddr,
}

impl View<'_> {
    /// The quorum reported for every database: a majority of the nodes' discovery services.
    fn quorum(&self) -> usize {
        let nodes = self.dbs.sentinels.len() + 1;
        nodes / 2 + 1
    }
}

/// Answers `SENTINEL <subcommand> ...`.
pub(crate) fn sentinel(req: &Request, view: &View<'_>, protocol: Protocol) -> Value {
    let Some(raw_sub) = req.arg(1) else {
        return arity("sentinel");
    };
    let sub = CommandName::new(raw_sub);
    let name = req.arg(2);
    match (sub.as_str(), name, req.argc()) {
        ("GET-MASTER-ADDR-BY-NAME", Some(name), 3) => master_addr(view, name, protocol),
        ("MASTERS", None, 2) => masters(view),
        ("MASTER", Some(name), 3) => with_master(view, name, |e| master_fields(e, view)),
        ("REPLICAS" | "SLAVES", Some(name), 3) => with_master(view, name, |_| Value::Array(vec![])),
        ("SENTINELS", Some(name), 3) => with_master(view, name, |_| sentinels(view)),
        ("MYID", None, 2) => Value::bulk(run_id(view.me)),
        (
            "GET-MASTER-ADDR-BY-NAME"
            | "MASTERS"
            | "MASTER"
            | "REPLICAS"
            | "SLAVES"
            | "SENTINELS"
            | "MYID",
            _,
            _,
        ) => arity(&format!("sentinel|{}", sub.as_str().to_ascii_lowercase())),
        _ => Value::error(format!(
            "ERR unknown subcommand '{}'. Try SENTINEL HELP.",
            String::from_utf8_lossy(raw_sub)
        )),
    }
}

/// `SENTINEL get-master-addr-by-name NAME`: `[ip, port]`, or a null array for an unknown name.
fn master_addr(view: &View<'_>, name: &Bytes, protocol: Protocol) -> Value {
    match view.dbs.endpoint(name) {
        Some(e) => Value::Array(vec![
            Value::bulk(e.addr.to_string()),
            Value::bulk(e.port.to_string()),
        ]),
        None if protocol == Protocol::Resp3 => Value::Null,
        None => Value::NullArray,
    }
}

/// `SENTINEL masters`: one field list per database.
fn masters(view: &View<'_>) -> Value {
    Value::Array(
        view.dbs
            .endpoints
            .iter()
            .map(|e| master_fields(e, view))
            .collect(),
    )
}

/// Answers with `reply(endpoint)` when `name` is a database, else Sentinel's error.
fn with_master(view: &View<'_>, name: &Bytes, reply: impl FnOnce(&DbEndpoint) -> Value) -> Value {
    match view.dbs.endpoint(name) {
        Some(e) => reply(e),
        None => Value::error("ERR No such master with that name"),
    }
}

/// The field list Sentinel reports for a master, describing a database's endpoint.
fn master_fields(e: &DbEndpoint, view: &View<'_>) -> Value {
    let addr = e.socket_addr();
    fields(vec![
        ("name", e.name.clone()),
        ("ip", addr.ip().to_string()),
        ("port", addr.port().to_string()),
        ("runid", run_id(addr)),
        ("flags", "master".into()),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
        ("down-after-milliseconds", DOWN_AFTER_MS.into()),
        ("info-refresh", "0".into()),
        ("role-reported", "master".into()),
        ("role-reported-time", "0".into()),
        ("config-epoch", "0".into()),
        ("num-slaves", "0".into()),
        ("num-other-sentinels", view.dbs.sentinels.len().to_string()),
        ("quorum", view.quorum().to_string()),
        ("failover-timeout", FAILOVER_TIMEOUT_MS.into()),
        ("parallel-syncs", "1".into()),
    ])
}

/// `SENTINEL sentinels NAME`: the other nodes' discovery services (every one watches every
/// database).
fn sentinels(view: &View<'_>) -> Value {
    Value::Array(
        view.dbs
            .sentinels
            .iter()
            .map(|&a| sentinel_fields(a))
            .collect(),
    )
}

/// The field list Sentinel reports for a peer sentinel.
fn sentinel_fields(addr: SocketAddr) -> Value {
    fields(vec![
        ("name", run_id(addr)),
        ("ip", addr.ip().to_string()),
        ("port", addr.port().to_string()),
        ("runid", run_id(addr)),
        ("flags", "sentinel".into()),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
        ("down-after-milliseconds", DOWN_AFTER_MS.into()),
        ("last-hello-message", "0".into()),
        ("voted-leader", "?".into()),
        ("voted-leader-epoch", "0".into()),
    ])
}

/// A field/value list: a flat array in RESP2, a map in RESP3 (as Sentinel answers).
fn fields(pairs: Vec<(&'static str, String)>) -> Value {
    Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::bulk(k), Value::bulk(v)))
            .collect(),
    )
}

/// Redis's wrong-arity error for `command`.
pub(crate) fn arity(command: &str) -> Value {
    Value::error(format!(
        "ERR wrong number of arguments for '{command}' command"
    ))
}
