//! The client side of Raft's RPC: how this node's Raft reaches the others over HTTP.
//!
//! Each request is a JSON POST to `PEER_ADDR/raft/...`: over mutual TLS (`https://`, the
//! node's certificate from the cluster CA) when both nodes have certificates, else plaintext
//! carrying the cluster's internal secret in [`SECRET_HEADER`] (0.1.0 peers, and nodes that
//! have no certificate yet; see [`Routes`]). The peer answers with the JSON of
//! `Result<Response, RaftError>`.
//! A transport failure is reported as `Unreachable`, so openraft backs off instead of spinning.
//! Snapshots travel whole and binary where the peer can take them (see [`crate::transfer`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::snapshot_transport::{Chunked, SnapshotTransport};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::tls::NodeTls;
use crate::transfer::{self, SnapshotHead, FULL_SNAPSHOT_PATH};
use crate::types::{NodeId, RaftNode, TypeConfig};

/// An error while streaming a snapshot, as openraft wants it.
type SnapshotError = StreamingError<TypeConfig, Fatal<NodeId>>;

/// A snapshot transfer that failed after it reached the peer: openraft tries again.
fn network_error(e: &(impl std::error::Error + 'static)) -> SnapshotError {
    StreamingError::Network(NetworkError::new(e))
}

/// HTTP header that carries the cluster's internal secret on every node-to-node request.
pub const SECRET_HEADER: &str = "x-flotilla-secret";

/// Builds the plaintext HTTP client of node-to-node calls: sourced from the node's own address
/// (so peers see each node by its address), no proxies, bounded connect time.
pub fn internal_http_client(local_addr: IpAddr) -> reqwest::Client {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .local_address(local_addr)
        .no_proxy()
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("building an HTTP client with static settings cannot fail")
}

/// Whether the node at an address has a certificate from the cluster CA: `Some(false)` for a
/// node the state knows without one, `None` for an address the state does not know.
pub(crate) type PeerCertified = Arc<dyn Fn(IpAddr) -> Option<bool> + Send + Sync>;

/// How this node reaches a peer's RPC address: mutual TLS once this node has a certificate,
/// unless the state knows the peer without one (a 0.1.0 node, or one that has not got its
/// certificate yet), which is reached in plaintext with the cluster secret.
#[derive(Clone)]
pub(crate) struct Routes {
    plain: reqwest::Client,
    tls: NodeTls,
    peer_certified: PeerCertified,
    /// This node's own address: a call to itself takes TLS whenever it has a certificate.
    own: IpAddr,
}

/// One peer's way in: the URL base, the client, and the secret when the route is plaintext.
pub(crate) struct Route {
    base: String,
    client: reqwest::Client,
    secret: Option<String>,
}

impl Routes {
    pub(crate) fn new(
        plain: reqwest::Client,
        tls: NodeTls,
        peer_certified: PeerCertified,
        own: IpAddr,
    ) -> Self {
        Self {
            plain,
            tls,
            peer_certified,
            own,
        }
    }

    /// The route to `rpc_addr` (`ip:port`); `secret` authenticates a plaintext one.
    pub(crate) fn to(&self, rpc_addr: &str, secret: &str) -> Route {
        let peer = rpc_addr.parse::<SocketAddr>().ok().map(|a| a.ip());
        let peer_certified = match peer {
            Some(ip) if ip == self.own => None,
            Some(ip) => (self.peer_certified)(ip),
            None => None,
        };
        match self.tls.client() {
            Some(client) if peer_certified != Some(false) => Route::tls(rpc_addr, client),
            _ => Route::plain(rpc_addr, self.plain.clone(), secret),
        }
    }
}

impl Route {
    /// A plaintext route carrying `secret`.
    pub(crate) fn plain(rpc_addr: &str, client: reqwest::Client, secret: &str) -> Self {
        Route {
            base: format!("http://{rpc_addr}"),
            client,
            secret: Some(secret.to_string()),
        }
    }

    /// A TLS route by `client`.
    pub(crate) fn tls(rpc_addr: &str, client: reqwest::Client) -> Self {
        Route {
            base: format!("https://{rpc_addr}"),
            client,
            secret: None,
        }
    }

    /// A request to `path` on the peer, authenticated as the route requires.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.secret {
            Some(secret) => request.header(SECRET_HEADER, secret),
            None => request,
        }
    }
}

/// Creates one [`Peer`] per target node for openraft.
#[derive(Clone)]
pub struct Network {
    routes: Routes,
    secret: String,
}

impl Network {
    /// A network that reaches peers by `routes`; plaintext requests carry `secret`.
    pub(crate) fn new(routes: Routes, secret: String) -> Self {
        Self { routes, secret }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            routes: self.routes.clone(),
            secret: self.secret.clone(),
        }
    }
}

/// Raft's connection to one other node.
pub struct Peer {
    target: NodeId,
    addr: String,
    routes: Routes,
    secret: String,
}

impl Peer {
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.routes
            .to(&self.addr, &self.secret)
            .request(reqwest::Method::POST, path)
    }

    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, RaftNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let response = self
            .post(&format!("/raft/{path}"))
            .timeout(option.hard_ttl())
            .json(request)
            .send()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let e = std::io::Error::other(format!("peer answered {status}: {text}"));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let result: Result<Resp, E> = response
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Whether the peer serves [`FULL_SNAPSHOT_PATH`]: a release without it (0.1.0) answers
    /// the probe 404.
    async fn takes_full_snapshots(&self, option: &RPCOption) -> Result<bool, SnapshotError> {
        let response = self
            .routes
            .to(&self.addr, &self.secret)
            .request(reqwest::Method::GET, FULL_SNAPSHOT_PATH)
            .timeout(option.hard_ttl())
            .send()
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        match response.status() {
            status if status.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            status => {
                let e = std::io::Error::other(format!("snapshot probe answered {status}"));
                Err(StreamingError::Network(NetworkError::new(&e)))
            }
        }
    }

    /// Sends the whole snapshot in one binary request and returns the peer's answer.
    async fn send_full_snapshot(
        &self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        option: &RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, SnapshotError> {
        let head = SnapshotHead {
            vote,
            meta: snapshot.meta,
        };
        let body = transfer::encode(&head, snapshot.snapshot.get_ref());
        let response = self
            .post(FULL_SNAPSHOT_PATH)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(option.hard_ttl())
            .body(body)
            .send()
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| network_error(&e))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let e = std::io::Error::other(format!("peer answered {status}: {text}"));
            return Err(network_error(&e));
        }
        let answer: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            serde_json::from_slice(&bytes).map_err(|e| network_error(&e))?;
        answer.map_err(|fatal| StreamingError::RemoteError(RemoteError::new(self.target, fatal)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, RaftNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    /// The whole snapshot in one binary request when the peer takes it, else openraft's chunked
    /// JSON RPC in chunks a 0.1.0 node accepts (the configured chunk size is only used here).
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, SnapshotError> {
        if !self.takes_full_snapshots(&option).await? {
            tracing::info!(
                target_node = self.target,
                "the node does not take binary snapshots (release 0.1.0): sending JSON chunks"
            );
            return <Chunked as SnapshotTransport<TypeConfig>>::send_snapshot(
                self, vote, snapshot, cancel, option,
            )
            .await;
        }
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = self.send_full_snapshot(vote, snapshot, &option) => sent,
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
