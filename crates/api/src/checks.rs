//! `flotilla check` and `flotilla check ports` on a node (Redis Software's `rlcheck` and port
//! table), plus the internal probe other nodes answer so a port can be reported unreachable
//! from them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use flotilla_checks::{
    classify_ports, data_dir, host_settings, listening_sockets, port_range, shard_pidfiles,
    socket_owners, Check, CheckReport, CheckStatus, HostFacts, PortNeed, PortStatus,
};
use flotilla_model::{ClusterState, ENDPOINT_PORTS, SHARD_PORTS, VERSIONED_RELEASE};
use serde::{Deserialize, Serialize};

use crate::upgrade::require_this_node;
use crate::{ApiContext, ApiError};

/// How long one TCP probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A clock further than this from the primary node's is reported.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(2);
/// The port 0.1.0 nodes serve the REST API on (plain HTTP only), and a node that kept it.
const PLAIN_HTTP_PORT: u16 = 8080;

/// `GET /v1/nodes/{uid}/check`: rlcheck's tests on this node.
pub(crate) async fn node_check(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<CheckReport>, ApiError> {
    require_this_node(&context, &uid)?;
    let state = context.store.state();
    let local = &context.local;
    let facts = HostFacts::read();
    let mut checks = vec![services(&context, &state).await];
    checks.push(shard_pidfiles(&local_shard_dirs(&context, &state)));
    checks.extend(data_dir(&local.data_dir));
    checks.extend(host_settings(&facts));
    checks.push(port_range(
        &facts,
        &[
            (
                *ENDPOINT_PORTS.start(),
                *ENDPOINT_PORTS.end(),
                "database endpoints",
            ),
            (*SHARD_PORTS.start(), *SHARD_PORTS.end(), "shards"),
        ],
    ));
    checks.push(clock_skew(&context).await);
    checks.push(connectivity(&context, &state).await);
    Ok(Json(CheckReport {
        node_uid: context.store.uid().unwrap_or(0),
        addr: local.addr.to_string(),
        checks,
    }))
}

/// The shards the store places on this node, with their folders.
fn local_shard_dirs(context: &ApiContext, state: &ClusterState) -> Vec<(u64, std::path::PathBuf)> {
    let Some(me) = context.store.uid() else {
        return Vec::new();
    };
    let shards_dir = context.local.data_dir.join("shards");
    state
        .shards_on(me)
        .map(|s| (s.uid, shards_dir.join(s.uid.to_string())))
        .collect()
}

/// `verify_services`: this daemon's listeners and its database endpoints accept connections.
async fn services(context: &ApiContext, state: &ClusterState) -> Check {
    const NAME: &str = "verify_services";
    let local = &context.local;
    let mut wanted = vec![
        ("internal RPC".to_string(), local.ports.rpc),
        ("discovery".to_string(), local.ports.discovery),
        ("metrics".to_string(), local.ports.metrics),
    ];
    wanted.extend(
        state
            .bdbs
            .values()
            .map(|b| (format!("database '{}' endpoint", b.spec.name), b.spec.port)),
    );
    let mut down = Vec::new();
    for (what, port) in &wanted {
        if let Err(e) = probe(SocketAddr::new(local.addr, *port)).await {
            down.push(format!("{what} on port {port} ({e})"));
        }
    }
    if down.is_empty() {
        return Check::pass(
            NAME,
            format!("REST and {} other listener(s) answer", wanted.len()),
        );
    }
    Check::issue(
        NAME,
        CheckStatus::Fail,
        format!("not answering: {}", down.join(", ")),
        "read the daemon's log (DATA_DIR/flotilla.log) and `flotilla check ports` for who holds the port",
    )
}

/// Opens (and closes) a TCP connection to `target`.
async fn probe(target: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// `verify_clock_skew`: this node's clock against the primary node's (the HTTP `Date` of its
/// health answer, second resolution, which every version sends).
async fn clock_skew(context: &ApiContext) -> Check {
    const NAME: &str = "verify_clock_skew";
    let state = context.store.state();
    let primary = context
        .store
        .primary_node()
        .and_then(|uid| state.nodes.get(&uid).map(|n| n.addr));
    let Some(primary) = primary else {
        return Check::issue(
            NAME,
            CheckStatus::Warn,
            "no primary node is known, so its clock could not be read",
            "wait for an election (`flotilla status`) and run the check again",
        );
    };
    // Over HTTPS with the node's client from the cluster CA; a cluster without a CA (0.1.0
    // members) is read over plain HTTP on 0.1.0's port.
    let (http, url) = match context.store.tls().client() {
        Some(client) => (
            client,
            format!("https://{primary}:{}/v1/health", context.local.ports.rest),
        ),
        None => (
            context.store.http().clone(),
            format!("http://{primary}:{PLAIN_HTTP_PORT}/v1/health"),
        ),
    };
    let before = std::time::SystemTime::now();
    let answer = http.get(&url).timeout(PROBE_TIMEOUT * 4).send().await;
    let date = answer
        .ok()
        .and_then(|r| r.headers().get("date").cloned())
        .and_then(|d| {
            d.to_str()
                .ok()
                .and_then(|d| httpdate::parse_http_date(d).ok())
        });
    let Some(remote) = date else {
        return Check::issue(
            NAME,
            CheckStatus::Warn,
            format!("the primary node ({primary}) did not give its time"),
            "check that the primary node's REST API answers",
        );
    };
    let local = before + before.elapsed().unwrap_or_default() / 2;
    let skew = match local.duration_since(remote) {
        Ok(ahead) => ahead,
        Err(behind) => behind.duration(),
    };
    // The remote time has one-second resolution.
    if skew <= MAX_CLOCK_SKEW + Duration::from_secs(1) {
        return Check::pass(
            NAME,
            format!("within {MAX_CLOCK_SKEW:?} of the primary node's clock"),
        );
    }
    Check::issue(
        NAME,
        CheckStatus::Warn,
        format!("{:.1} s from the primary node's clock", skew.as_secs_f64()),
        "synchronise clocks with NTP (timestamps of actions and logs disagree otherwise)",
    )
}

/// `verify_tcp_connectivity`: every other node's internal RPC port accepts a connection.
async fn connectivity(context: &ApiContext, state: &ClusterState) -> Check {
    const NAME: &str = "verify_tcp_connectivity";
    let me = context.store.uid();
    let mut unreachable = Vec::new();
    let others: Vec<_> = state.nodes.values().filter(|n| Some(n.uid) != me).collect();
    for node in &others {
        let target = SocketAddr::new(node.addr, context.local.ports.rpc);
        if let Err(e) = probe(target).await {
            unreachable.push(format!("node {} at {target} ({e})", node.uid));
        }
    }
    if unreachable.is_empty() {
        return Check::pass(
            NAME,
            format!("every other node ({}) is reachable", others.len()),
        );
    }
    Check::issue(
        NAME,
        CheckStatus::Fail,
        format!("unreachable: {}", unreachable.join(", ")),
        "check that the node's daemon runs and that no firewall blocks the internal RPC port between nodes",
    )
}

/// `GET /v1/nodes/{uid}/check/ports`: every port this node needs and who holds it.
pub(crate) async fn node_ports(
    State(context): State<ApiContext>,
    Path(uid): Path<String>,
) -> Result<Json<Vec<PortStatus>>, ApiError> {
    require_this_node(&context, &uid)?;
    let state = context.store.state();
    let needs = port_needs(&context, &state);
    let mut pids: HashSet<u32> =
        flotilla_engine::running_engine_pids(&context.local.data_dir.join("shards"))
            .into_iter()
            .collect();
    pids.insert(std::process::id());
    let mut statuses = classify_ports(needs, &listening_sockets(), &socket_owners(), &pids);
    add_unreachable(&context, &state, &mut statuses).await;
    Ok(Json(statuses))
}

/// The ports table of DESIGN.md for this node, plus every database endpoint and local shard.
fn port_needs(context: &ApiContext, state: &ClusterState) -> Vec<PortNeed> {
    let local = &context.local;
    let need = |port, purpose: String| PortNeed {
        addr: local.addr,
        port,
        purpose,
    };
    let mut needs = vec![
        need(local.ports.rest, "REST API (HTTPS)".into()),
        need(local.ports.rpc, "internal RPC and Raft".into()),
        need(local.ports.discovery, "discovery (Sentinel API)".into()),
        need(local.ports.metrics, "metrics".into()),
    ];
    needs.extend(
        local
            .ports
            .http
            .map(|port| need(port, "REST API (plain HTTP, --http-port)".into())),
    );
    needs.extend(
        state
            .bdbs
            .values()
            .map(|b| need(b.spec.port, format!("database '{}' endpoint", b.spec.name))),
    );
    if let Some(me) = context.store.uid() {
        needs.extend(state.shards_on(me).map(|s| {
            let db = state
                .bdbs
                .get(&s.bdb_uid)
                .map_or("?", |b| b.spec.name.as_str());
            need(s.port, format!("shard {} of database '{db}'", s.uid))
        }));
    }
    needs
}

/// Asks every other node that knows the probe (0.2.0 on) to connect to the ports Flotilla
/// serves here; a port another node cannot reach is marked with that node.
async fn add_unreachable(context: &ApiContext, state: &ClusterState, statuses: &mut [PortStatus]) {
    let targets: Vec<SocketAddr> = statuses
        .iter()
        .filter(|s| matches!(s.state, flotilla_checks::PortState::Flotilla { .. }))
        .map(|s| SocketAddr::new(s.need.addr, s.need.port))
        .collect();
    let me = context.store.uid();
    for node in state.nodes.values().filter(|n| Some(n.uid) != me) {
        if !flotilla_model::at_least(&node.software_version, VERSIONED_RELEASE) {
            continue;
        }
        let rpc = SocketAddr::new(node.addr, context.local.ports.rpc).to_string();
        let request = ProbeRequest {
            targets: targets.clone(),
        };
        let answer: Result<ProbeAnswer, _> = context
            .store
            .call_internal(&rpc, PROBE_PATH, &request)
            .await;
        let failures = match answer {
            Ok(answer) => answer.failures,
            Err(e) => targets.iter().map(|t| (*t, e.to_string())).collect(),
        };
        for (target, why) in failures {
            if let Some(status) = statuses
                .iter_mut()
                .find(|s| SocketAddr::new(s.need.addr, s.need.port) == target)
            {
                status.unreachable_from.push((node.uid, why));
            }
        }
    }
}

/// The internal route other nodes call to test reachability from here.
const PROBE_PATH: &str = "/internal/probe";

/// Addresses to open a connection to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProbeRequest {
    targets: Vec<SocketAddr>,
}

/// The targets that could not be reached from this node, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProbeAnswer {
    failures: Vec<(SocketAddr, String)>,
}

/// Internal routes of this crate, served on the RPC port behind the cluster secret: the port
/// probe, and the primary node's order to upgrade this node (`upgrade cluster`).
pub fn internal_router(store: flotilla_store::Store, local: crate::LocalNode) -> Router {
    Router::new()
        .route(PROBE_PATH, post(answer_probe))
        .route(
            flotilla_model::rest::INTERNAL_NODE_UPGRADE_PATH,
            post(crate::upgrade::internal_node_upgrade).with_state(local),
        )
        .layer(axum::middleware::from_fn_with_state(
            store,
            flotilla_store::rpc::require_secret,
        ))
}

async fn answer_probe(Json(request): Json<ProbeRequest>) -> Json<ProbeAnswer> {
    let mut failures = Vec::new();
    for target in request.targets.into_iter().take(4096) {
        if let Err(e) = probe(target).await {
            failures.push((target, e));
        }
    }
    Json(ProbeAnswer { failures })
}
