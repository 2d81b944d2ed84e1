//! The client side of Raft's RPC: how this node's Raft reaches the others over HTTP.
//!
//! Each request is a JSON POST to `http://PEER_ADDR/raft/...` carrying the cluster's internal
//! secret in [`SECRET_HEADER`]; the peer answers with the JSON of `Result<Response, RaftError>`.
//! A transport failure is reported as `Unreachable`, so openraft backs off instead of spinning.

use std::net::IpAddr;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{NodeId, RaftNode, TypeConfig};

/// HTTP header that carries the cluster's internal secret on every node-to-node request.
pub const SECRET_HEADER: &str = "x-flotilla-secret";

/// Builds the HTTP client every node-to-node call uses: sourced from the node's own address
/// (so peers see each node by its address), no proxies, bounded connect time.
pub fn internal_http_client(local_addr: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local_addr)
        .no_proxy()
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("building an HTTP client with static settings cannot fail")
}

/// Creates one [`Peer`] per target node for openraft.
#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    secret: String,
}

impl Network {
    /// A network whose requests carry `secret`.
    pub fn new(client: reqwest::Client, secret: String) -> Self {
        Self { client, secret }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
            secret: self.secret.clone(),
        }
    }
}

/// Raft's connection to one other node.
pub struct Peer {
    target: NodeId,
    addr: String,
    client: reqwest::Client,
    secret: String,
}

impl Peer {
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
        let url = format!("http://{}/raft/{}", self.addr, path);
        let response = self
            .client
            .post(url)
            .header(SECRET_HEADER, &self.secret)
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

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
