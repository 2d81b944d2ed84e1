//! The REST API served on every node at `ADDR:8080`, shaped like Redis Software's (`/v1/...`,
//! its field names, `{"error_code", "description"}` errors).
//!
//! Every endpoint but `/v1/health` and the bootstrap calls (which run before any credentials
//! exist) needs basic auth with the cluster's operator credentials; the bootstrap calls need
//! the node's bootstrap token (see [`BootstrapToken`]).

mod actions;
mod auth;
mod bdbs;
mod bootstrap;
mod certificates;
mod checks;
mod crdb_sync;
mod crdb_tasks;
mod crdbs;
mod error;
mod handlers;
mod lifecycle;
mod local;
mod maintenance;
mod propose;
mod upgrade;

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, patch, post, put};
use axum::Router;
use flotilla_model::NodeSpec;
use flotilla_orchestrator::Observer;
use flotilla_store::Store;

pub use bootstrap::BootstrapToken;
pub use checks::internal_router;
pub use error::ApiError;
pub use local::{LocalNode, NodePorts, UpgradeOrder, UPGRADE_STATUS_FILE};

/// What the API handlers need: the store, the observer and facts about this node.
#[derive(Clone)]
pub struct ApiContext {
    /// The node's cluster store.
    pub store: Store,
    /// Liveness as the primary node sees it.
    pub observer: Observer,
    /// This node as it describes itself when creating or joining.
    pub node: NodeSpec,
    /// This daemon's own facts (data dir, ports, upgrade driver).
    pub local: LocalNode,
    /// The sync state of the Active-Active pullers on this node.
    pub sync_sources: flotilla_syncer::SyncSources,
    auth_cache: Arc<auth::Cache>,
    /// The CRDB tasks this node runs or ran (see `crdb_tasks`).
    crdb_tasks: crdb_tasks::TaskTable,
}

impl ApiContext {
    /// A context for this node.
    pub fn new(store: Store, observer: Observer, node: NodeSpec, local: LocalNode) -> Self {
        Self {
            store,
            observer,
            node,
            local,
            sync_sources: Default::default(),
            auth_cache: Arc::default(),
            crdb_tasks: Arc::default(),
        }
    }

    /// This context answering `crdt_sources` from `sources` (the daemon's syncer).
    pub fn with_sync_sources(mut self, sources: flotilla_syncer::SyncSources) -> Self {
        self.sync_sources = sources;
        self
    }
}

/// The REST routes.
pub fn router(context: ApiContext) -> Router {
    let authenticated = Router::new()
        .route(
            "/v1/cluster",
            get(handlers::get_cluster).put(handlers::put_cluster),
        )
        .route("/v1/nodes", get(handlers::get_nodes))
        .route("/v1/bdbs", get(bdbs::list).post(bdbs::create))
        .route(
            "/v1/bdbs/{uid}",
            get(bdbs::get).put(bdbs::update).delete(bdbs::delete),
        )
        .route("/v1/bdbs/{uid}/upgrade", post(actions::upgrade))
        .route("/v1/crdbs", get(crdbs::list).post(crdb_tasks::create))
        .route("/v1/crdbs/local", post(crdbs::create_local))
        .route(
            "/v1/crdbs/{guid}",
            get(crdbs::get)
                .delete(crdb_tasks::delete)
                .patch(crdb_tasks::update),
        )
        .route(
            "/v1/crdbs/{guid}/local",
            patch(crdbs::update_local).delete(crdbs::delete_local),
        )
        .route("/v1/crdbs/{guid}/updates", post(crdb_tasks::updates))
        .route("/v1/crdbs/{guid}/flush", put(crdb_tasks::flush))
        .route("/v1/crdbs/{guid}/flush/local", put(crdbs::flush_local))
        .route(
            "/v1/crdbs/{guid}/health_report",
            get(crdb_tasks::health_report),
        )
        .route("/v1/crdb_tasks", get(crdb_tasks::list_tasks))
        .route("/v1/crdb_tasks/{id}", get(crdb_tasks::get_task))
        .route("/v1/actions", get(actions::list))
        .route("/v1/actions/{uid}", get(actions::get_action))
        .route("/v1/actions/{uid}/cancel", post(actions::cancel))
        .route("/v1/actions/{uid}/resume", post(actions::resume))
        .route("/v1/shards", get(bdbs::shards))
        .route("/v1/shards/{uid}/actions/failover", post(bdbs::failover))
        .route(
            "/v1/shards/{uid}/actions/migrate",
            post(lifecycle::migrate_shard),
        )
        .route(
            "/v1/cluster/actions/upgrade",
            post(upgrade::start_cluster_upgrade),
        )
        .route(
            "/v1/nodes/{uid}/actions/remove",
            post(lifecycle::remove_node),
        )
        .route(
            "/v1/nodes/{uid}/actions/maintenance_on",
            post(maintenance::maintenance_on),
        )
        .route(
            "/v1/nodes/{uid}/actions/maintenance_off",
            post(maintenance::maintenance_off),
        )
        .route(
            "/v1/cluster/actions/change_master",
            post(lifecycle::change_master),
        )
        .route("/v1/crdbs/{guid}/ops", get(crdb_sync::ops))
        .route("/v1/crdbs/{guid}/state", get(crdb_sync::state))
        .route(
            "/v1/crdbs/{guid}/crdt_sources",
            get(crdb_sync::crdb_sources),
        )
        .route("/v1/crdt_sources", get(crdb_sync::sources))
        .route("/v1/nodes/status", get(handlers::get_nodes_status))
        .route("/v1/nodes/{uid}", get(handlers::get_node))
        .route("/v1/nodes/{uid}/check", get(checks::node_check))
        .route("/v1/nodes/{uid}/check/ports", get(checks::node_ports))
        .route(
            "/v1/nodes/{uid}/upgrade",
            get(upgrade::node_upgrade_status).post(upgrade::start_node_upgrade),
        )
        .route("/v1/cluster/upgrade_check", post(upgrade::check))
        .route("/v1/cluster/finalize", post(upgrade::finalize))
        .route(
            "/v1/cluster/certificates/rotate",
            post(certificates::rotate),
        )
        .layer(middleware::from_fn_with_state(
            context.clone(),
            auth::require_basic_auth,
        ));
    Router::new()
        .route("/v1/health", get(handlers::health))
        .route(
            "/v1/bootstrap/create_cluster",
            post(handlers::create_cluster),
        )
        .route("/v1/bootstrap/join_cluster", post(handlers::join_cluster))
        .merge(authenticated)
        .fallback(handlers::not_found)
        .with_state(context)
}
