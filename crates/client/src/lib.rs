//! A typed client for the REST API: one place that knows the URLs and the error shape, shared
//! by the CLI, `flotilla dev` and the integration tests.

use std::path::Path;
use std::time::Duration;

use flotilla_model::rest::{
    ActionInfo, BdbCreate, BdbInfo, BdbUpdate, BdbUpgrade, BootstrapCluster, BootstrapCredentials,
    BootstrapRequest, BootstrapResult, ClusterInfo, ClusterUpdate, CrdbCreateRequest,
    CrdbHealthReport, CrdbInfo, CrdbLocalCreate, CrdbLocalUpdate, CrdbTask, CrdbUpdateRequest,
    CrdbUpdates, ErrorBody, Health, NodeInfo, NodesStatus, ShardInfo, BOOTSTRAP_TOKEN_FILE,
    BOOTSTRAP_TOKEN_HEADER,
};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The prefix of the bootstrap routes, the only calls that carry the bootstrap token.
const BOOTSTRAP: &str = "/v1/bootstrap/";

/// The bootstrap token of the node whose data dir is `data_dir`, when it has one (a node on
/// this machine that is not part of a cluster yet): what `flotilla dev` and the tests send.
pub fn read_bootstrap_token(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(BOOTSTRAP_TOKEN_FILE)).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error body.
    #[error("{status}: {} ({})", .body.description, .body.error_code)]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The JSON error.
        body: ErrorBody,
    },
    /// No usable answer: connection refused, timeout, or a body that is not the expected JSON.
    #[error("{url}: {reason}")]
    Transport {
        /// The URL called.
        url: String,
        /// What failed.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of an API error, if the API answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Transport { .. } => None,
        }
    }
}

/// Why a request could not be sent, with its causes; a node certificate the client does not
/// trust gets the remedy (`--cacert`), the usual cause when the cluster CA was not given.
fn sending_failed(error: &reqwest::Error) -> String {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    if reason.contains("certificate") {
        reason.push_str(
            "; the node's HTTPS certificate is not trusted: give the cluster CA with --cacert FILE \
             (FLOTILLA_CACERT; a node's DATA_DIR/tls/ca.crt, or DATA_DIR/tls/self-signed.crt \
             before it is in a cluster)",
        );
    }
    reason
}

/// Makes the ring provider the process's rustls default: reqwest (built without a provider of
/// its own) needs one before it builds any client. Calling it again does nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A connection to one node's REST API.
#[derive(Clone)]
pub struct Client {
    base: String,
    user: Option<String>,
    password: Option<String>,
    bootstrap_token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base` (e.g. `https://127.0.0.11:9443`) with optional basic auth.
    pub fn new(base: &str, user: Option<String>, password: Option<String>) -> Self {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .build()
            .expect("building an HTTP client with static settings cannot fail");
        Self {
            base: base.trim_end_matches('/').to_string(),
            user,
            password,
            bootstrap_token: None,
            http,
        }
    }

    /// This client trusting `ca_pem` (the cluster CA, `--cacert`) for `https://` URLs, and
    /// only it: a node's REST API on HTTPS presents its certificate from the cluster CA.
    pub fn trusting(mut self, ca_pem: &str) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let certificate = certificate.map_err(|e| format!("not a PEM certificate: {e}"))?;
            roots.add(certificate).map_err(|e| e.to_string())?;
        }
        if roots.is_empty() {
            return Err("no certificate in the CA file".into());
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        self.http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(self)
    }

    /// A client for another cluster's REST API at `url` (a CRDB's peer): basic auth with
    /// `username`/`password`, and for an `https://` URL trusting only that cluster's CA
    /// (`ca_pem`).
    pub fn for_cluster(
        url: &str,
        username: &str,
        password: &str,
        ca_pem: &str,
    ) -> Result<Self, String> {
        let client = Client::new(url, Some(username.into()), Some(password.into()));
        match url.starts_with("https://") {
            true => client.trusting(ca_pem),
            false => Ok(client),
        }
    }

    /// This client, sending `token` with its bootstrap calls (create and join): a fresh node
    /// takes them only with its bootstrap token. A 0.1.0 node ignores it.
    pub fn with_bootstrap_token(mut self, token: Option<String>) -> Self {
        self.bootstrap_token = token;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and decodes the JSON answer or the JSON error.
    pub async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let url = format!("{}{}", self.base, path);
        let transport = |reason: String| ClientError::Transport {
            url: url.clone(),
            reason,
        };
        let mut request = self.http.request(method, &url);
        if let Some(user) = &self.user {
            request = request.basic_auth(user, self.password.as_ref());
        }
        if let Some(token) = self
            .bootstrap_token
            .as_ref()
            .filter(|_| path.starts_with(BOOTSTRAP))
        {
            request = request.header(BOOTSTRAP_TOKEN_HEADER, token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport(sending_failed(&e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| transport(e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api { status, body }),
            Err(_) => Err(transport(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ))),
        }
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        self.call::<(), R>(Method::GET, path, None).await
    }

    /// `GET /v1/health` (no auth needed).
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health").await
    }

    /// `POST /v1/bootstrap/create_cluster`.
    pub async fn create_cluster(
        &self,
        name: &str,
        username: &str,
        password: &str,
    ) -> Result<BootstrapResult, ClientError> {
        let request = BootstrapRequest {
            replace_node: None,
            action: Some("create_cluster".into()),
            cluster: BootstrapCluster {
                name: Some(name.into()),
                nodes: None,
                cluster_ca_fingerprint: None,
            },
            credentials: BootstrapCredentials {
                username: username.into(),
                password: password.into(),
            },
        };
        self.call(Method::POST, "/v1/bootstrap/create_cluster", Some(&request))
            .await
    }

    /// `POST /v1/bootstrap/join_cluster`.
    pub async fn join_cluster(
        &self,
        nodes: &[String],
        username: &str,
        password: &str,
    ) -> Result<BootstrapResult, ClientError> {
        self.join_cluster_replacing(nodes, username, password, None)
            .await
    }

    /// `POST /v1/bootstrap/join_cluster` with `replace_node`: the node joins in the place, and
    /// under the uid, of that node (one that is down, or was removed).
    pub async fn join_cluster_replacing(
        &self,
        nodes: &[String],
        username: &str,
        password: &str,
        replace_node: Option<u64>,
    ) -> Result<BootstrapResult, ClientError> {
        self.join_cluster_checked(nodes, username, password, replace_node, None)
            .await
    }

    /// [`Client::join_cluster_replacing`] that joins only a cluster whose CA has the SHA-256
    /// fingerprint `ca_fingerprint` (when given).
    pub async fn join_cluster_checked(
        &self,
        nodes: &[String],
        username: &str,
        password: &str,
        replace_node: Option<u64>,
        ca_fingerprint: Option<String>,
    ) -> Result<BootstrapResult, ClientError> {
        let request = BootstrapRequest {
            replace_node,
            action: Some("join_cluster".into()),
            cluster: BootstrapCluster {
                name: None,
                nodes: Some(nodes.to_vec()),
                cluster_ca_fingerprint: ca_fingerprint,
            },
            credentials: BootstrapCredentials {
                username: username.into(),
                password: password.into(),
            },
        };
        self.call(Method::POST, "/v1/bootstrap/join_cluster", Some(&request))
            .await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterInfo, ClientError> {
        self.get("/v1/cluster").await
    }

    /// `PUT /v1/cluster`.
    pub async fn update_cluster(&self, update: &ClusterUpdate) -> Result<ClusterInfo, ClientError> {
        self.call(Method::PUT, "/v1/cluster", Some(update)).await
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.get("/v1/nodes").await
    }

    /// `GET /v1/nodes/{uid}`.
    pub async fn node(&self, uid: u64) -> Result<NodeInfo, ClientError> {
        self.get(&format!("/v1/nodes/{uid}")).await
    }

    /// `GET /v1/nodes/status`.
    pub async fn nodes_status(&self) -> Result<NodesStatus, ClientError> {
        self.get("/v1/nodes/status").await
    }

    /// `GET /v1/bdbs`.
    pub async fn bdbs(&self) -> Result<Vec<BdbInfo>, ClientError> {
        self.get("/v1/bdbs").await
    }

    /// `GET /v1/bdbs/{uid}`.
    pub async fn bdb(&self, uid: u64) -> Result<BdbInfo, ClientError> {
        self.get(&format!("/v1/bdbs/{uid}")).await
    }

    /// The database named `name` or with uid `name`, or a 404-style error listing none.
    pub async fn find_bdb(&self, name_or_uid: &str) -> Result<BdbInfo, ClientError> {
        if let Ok(uid) = name_or_uid.parse::<u64>() {
            return self.bdb(uid).await;
        }
        self.bdbs()
            .await?
            .into_iter()
            .find(|b| b.name == name_or_uid)
            .ok_or_else(|| ClientError::Api {
                status: StatusCode::NOT_FOUND,
                body: ErrorBody {
                    error_code: "not_found".into(),
                    description: format!(
                        "no database named '{name_or_uid}'; `flotilla db list` lists them"
                    ),
                },
            })
    }

    /// `POST /v1/bdbs`.
    pub async fn create_bdb(&self, request: &BdbCreate) -> Result<BdbInfo, ClientError> {
        self.call(Method::POST, "/v1/bdbs", Some(request)).await
    }

    /// `PUT /v1/bdbs/{uid}`.
    pub async fn update_bdb(&self, uid: u64, update: &BdbUpdate) -> Result<BdbInfo, ClientError> {
        self.call(Method::PUT, &format!("/v1/bdbs/{uid}"), Some(update))
            .await
    }

    /// `DELETE /v1/bdbs/{uid}`.
    pub async fn delete_bdb(&self, uid: u64) -> Result<(), ClientError> {
        let path = format!("/v1/bdbs/{uid}");
        let _: serde_json::Value = self.call::<(), _>(Method::DELETE, &path, None).await?;
        Ok(())
    }

    /// `GET /v1/crdbs`: the CRDBs this cluster has an instance of.
    pub async fn crdbs(&self) -> Result<Vec<CrdbInfo>, ClientError> {
        self.get("/v1/crdbs").await
    }

    /// `GET /v1/crdbs/{guid}`.
    pub async fn crdb(&self, guid: &str) -> Result<CrdbInfo, ClientError> {
        self.get(&format!("/v1/crdbs/{guid}")).await
    }

    /// `POST /v1/crdbs/local`: makes this cluster's instance of a CRDB (what a coordinator asks
    /// of every participating cluster).
    pub async fn create_local_crdb(
        &self,
        request: &CrdbLocalCreate,
    ) -> Result<CrdbInfo, ClientError> {
        self.call(Method::POST, "/v1/crdbs/local", Some(request))
            .await
    }

    /// `DELETE /v1/crdbs/{guid}/local`: deletes this cluster's instance only.
    pub async fn delete_local_crdb(&self, guid: &str) -> Result<(), ClientError> {
        let path = format!("/v1/crdbs/{guid}/local");
        let _: serde_json::Value = self.call::<(), _>(Method::DELETE, &path, None).await?;
        Ok(())
    }

    /// `POST /v1/crdbs`: asks this cluster to coordinate a new CRDB; answers its task.
    pub async fn create_crdb(&self, request: &CrdbCreateRequest) -> Result<CrdbTask, ClientError> {
        self.call(Method::POST, "/v1/crdbs", Some(request)).await
    }

    /// `DELETE /v1/crdbs/{guid}`: deletes every instance; answers the task.
    pub async fn delete_crdb(&self, guid: &str) -> Result<CrdbTask, ClientError> {
        let path = format!("/v1/crdbs/{guid}");
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// `PATCH /v1/crdbs/{guid}/local`: changes this cluster's instance only.
    pub async fn update_local_crdb(
        &self,
        guid: &str,
        update: &CrdbLocalUpdate,
    ) -> Result<CrdbInfo, ClientError> {
        let path = format!("/v1/crdbs/{guid}/local");
        self.call(Method::PATCH, &path, Some(update)).await
    }

    /// `PATCH /v1/crdbs/{guid}`: changes every instance (`crdb update`); answers the task.
    pub async fn update_crdb(
        &self,
        guid: &str,
        update: &CrdbUpdateRequest,
    ) -> Result<CrdbTask, ClientError> {
        let path = format!("/v1/crdbs/{guid}");
        self.call(Method::PATCH, &path, Some(update)).await
    }

    /// `POST /v1/crdbs/{guid}/updates`: adds or removes instances; answers the task.
    pub async fn update_crdb_instances(
        &self,
        guid: &str,
        updates: &CrdbUpdates,
    ) -> Result<CrdbTask, ClientError> {
        let path = format!("/v1/crdbs/{guid}/updates");
        self.call(Method::POST, &path, Some(updates)).await
    }

    /// `PUT /v1/crdbs/{guid}/flush/local`: flushes this cluster's instance only.
    pub async fn flush_local_crdb(&self, guid: &str) -> Result<serde_json::Value, ClientError> {
        let path = format!("/v1/crdbs/{guid}/flush/local");
        self.call::<(), _>(Method::PUT, &path, None).await
    }

    /// `PUT /v1/crdbs/{guid}/flush`: flushes every instance; answers the task.
    pub async fn flush_crdb(&self, guid: &str) -> Result<CrdbTask, ClientError> {
        let path = format!("/v1/crdbs/{guid}/flush");
        self.call::<(), _>(Method::PUT, &path, None).await
    }

    /// `GET /v1/crdbs/{guid}/health_report`.
    pub async fn crdb_health(&self, guid: &str) -> Result<CrdbHealthReport, ClientError> {
        self.get(&format!("/v1/crdbs/{guid}/health_report")).await
    }

    /// `GET /v1/crdb_tasks/{id}`.
    pub async fn crdb_task(&self, id: &str) -> Result<CrdbTask, ClientError> {
        self.get(&format!("/v1/crdb_tasks/{id}")).await
    }

    /// `GET /v1/crdb_tasks`.
    pub async fn crdb_tasks(&self) -> Result<Vec<CrdbTask>, ClientError> {
        self.get("/v1/crdb_tasks").await
    }

    /// `GET /v1/shards`.
    pub async fn shards(&self) -> Result<Vec<ShardInfo>, ClientError> {
        self.get("/v1/shards").await
    }

    /// `POST /v1/shards/{uid}/actions/failover`: a planned switchover; answers its report.
    pub async fn failover_shard(&self, uid: u64) -> Result<serde_json::Value, ClientError> {
        let path = format!("/v1/shards/{uid}/actions/failover");
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// `POST /v1/bdbs/{uid}/upgrade`: starts a database upgrade action.
    pub async fn upgrade_bdb(
        &self,
        uid: u64,
        request: &BdbUpgrade,
    ) -> Result<ActionInfo, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/bdbs/{uid}/upgrade"),
            Some(request),
        )
        .await
    }

    /// `POST /v1/shards/{uid}/actions/migrate`: starts moving the shard to `node` (an action).
    pub async fn migrate_shard(&self, uid: u64, node: u64) -> Result<ActionInfo, ClientError> {
        let path = format!("/v1/shards/{uid}/actions/migrate");
        let request = flotilla_model::rest::ShardMigrateRequest {
            target_node_uid: node,
        };
        self.call(Method::POST, &path, Some(&request)).await
    }

    /// `POST /v1/cluster/actions/upgrade`: starts `upgrade cluster` (an action).
    pub async fn start_cluster_upgrade(
        &self,
        request: &flotilla_model::rest::ClusterUpgradeRequest,
    ) -> Result<ActionInfo, ClientError> {
        self.call(Method::POST, "/v1/cluster/actions/upgrade", Some(request))
            .await
    }

    /// `POST /v1/nodes/{uid}/actions/remove`: starts draining and removing the node (an action).
    pub async fn remove_node(&self, uid: u64) -> Result<ActionInfo, ClientError> {
        let path = format!("/v1/nodes/{uid}/actions/remove");
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// `POST /v1/nodes/{uid}/actions/maintenance_on`: starts putting the node in maintenance
    /// mode (an action).
    pub async fn maintenance_on(
        &self,
        uid: u64,
        request: &flotilla_model::MaintenanceOnRequest,
    ) -> Result<ActionInfo, ClientError> {
        let path = format!("/v1/nodes/{uid}/actions/maintenance_on");
        self.call(Method::POST, &path, Some(request)).await
    }

    /// `POST /v1/nodes/{uid}/actions/maintenance_off`: starts taking the node out of
    /// maintenance mode (an action).
    pub async fn maintenance_off(
        &self,
        uid: u64,
        request: &flotilla_model::MaintenanceOffRequest,
    ) -> Result<ActionInfo, ClientError> {
        let path = format!("/v1/nodes/{uid}/actions/maintenance_off");
        self.call(Method::POST, &path, Some(request)).await
    }

    /// `POST /v1/cluster/actions/change_master`: makes node `uid` the primary node.
    pub async fn promote_node(&self, uid: u64) -> Result<ClusterInfo, ClientError> {
        let request = flotilla_model::rest::PrimaryNodeChange { node_uid: uid };
        self.call(
            Method::POST,
            "/v1/cluster/actions/change_master",
            Some(&request),
        )
        .await
    }

    /// `GET /v1/actions`.
    pub async fn actions(&self) -> Result<Vec<ActionInfo>, ClientError> {
        self.get("/v1/actions").await
    }

    /// `GET /v1/actions/{uid}`.
    pub async fn action(&self, uid: u64) -> Result<ActionInfo, ClientError> {
        self.get(&format!("/v1/actions/{uid}")).await
    }

    /// `POST /v1/actions/{uid}/cancel`.
    pub async fn cancel_action(&self, uid: u64) -> Result<ActionInfo, ClientError> {
        let path = format!("/v1/actions/{uid}/cancel");
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// `POST /v1/actions/{uid}/resume`.
    pub async fn resume_action(&self, uid: u64) -> Result<ActionInfo, ClientError> {
        let path = format!("/v1/actions/{uid}/resume");
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// `GET /v1/crdt_sources`: the Active-Active links whose pullers run on this node (a
    /// shard's pullers run on its master's node: ask every node for the whole cluster, e.g.
    /// with [`Client::for_node`]).
    pub async fn crdt_sources(
        &self,
    ) -> Result<Vec<flotilla_model::crdb_sync::SourceReport>, ClientError> {
        self.get("/v1/crdt_sources").await
    }

    /// A client for another node's REST API (same port, credentials and settings), for the
    /// calls a node answers about itself (checks, its in-place upgrade).
    pub fn for_node(&self, addr: &str) -> Client {
        let port = self
            .base
            .rsplit_once(':')
            .map_or("8080", |(_, port)| port.trim_end_matches('/'));
        let scheme = self
            .base
            .split_once("://")
            .map_or("http", |(scheme, _)| scheme);
        Client {
            base: format!("{scheme}://{addr}:{port}"),
            ..self.clone()
        }
    }

    /// `GET /v1/nodes/{uid}/check`: rlcheck's tests, answered by that node.
    pub async fn node_check(&self, uid: u64) -> Result<flotilla_checks::CheckReport, ClientError> {
        self.get(&format!("/v1/nodes/{uid}/check")).await
    }

    /// `GET /v1/nodes/{uid}/check/ports`: who holds each port the node needs.
    pub async fn node_ports(
        &self,
        uid: u64,
    ) -> Result<Vec<flotilla_checks::PortStatus>, ClientError> {
        self.get(&format!("/v1/nodes/{uid}/check/ports")).await
    }

    /// `POST /v1/cluster/upgrade_check`: may the cluster move to the package described?
    pub async fn upgrade_check(
        &self,
        request: &flotilla_checks::UpgradeCheckRequest,
    ) -> Result<flotilla_checks::UpgradeCheckReport, ClientError> {
        self.call(Method::POST, "/v1/cluster/upgrade_check", Some(request))
            .await
    }

    /// `POST /v1/cluster/certificates/rotate`: every node gets a new certificate from the same
    /// cluster CA; answers once all have it.
    pub async fn rotate_certificates(&self) -> Result<ClusterInfo, ClientError> {
        self.call::<(), _>(Method::POST, "/v1/cluster/certificates/rotate", None)
            .await
    }

    /// `POST /v1/cluster/finalize`: moves the cluster version to what every node runs.
    pub async fn finalize(&self) -> Result<ClusterInfo, ClientError> {
        self.call::<(), _>(Method::POST, "/v1/cluster/finalize", None)
            .await
    }

    /// `POST /v1/nodes/{uid}/upgrade` (to that node's own API): starts its in-place upgrade.
    pub async fn start_node_upgrade(
        &self,
        uid: u64,
        request: &flotilla_model::rest::NodeUpgradeRequest,
    ) -> Result<flotilla_model::rest::NodeUpgradeStatus, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/nodes/{uid}/upgrade"),
            Some(request),
        )
        .await
    }

    /// `GET /v1/nodes/{uid}/upgrade`: the node's latest in-place upgrade.
    pub async fn node_upgrade_status(
        &self,
        uid: u64,
    ) -> Result<flotilla_model::rest::NodeUpgradeStatus, ClientError> {
        self.get(&format!("/v1/nodes/{uid}/upgrade")).await
    }
}
