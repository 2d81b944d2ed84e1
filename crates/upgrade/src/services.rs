//! The listening sockets of a node's own services, kept as plain sockets so they can be
//! duplicated and passed to a successor daemon.

use std::net::TcpListener;

use flotilla_handover::Service;

/// The listening sockets of the REST API (plain HTTP if served, HTTPS), internal RPC,
/// discovery and metrics.
#[derive(Debug)]
pub struct ServiceListeners {
    /// REST API over plain HTTP, if the node serves it (`--http-port`). HTTPS is bound by the
    /// daemon itself, retried until the predecessor lets go.
    pub rest: Option<TcpListener>,
    /// REST API over HTTPS; `None` in a daemon whose predecessor did not pass it (it binds
    /// the port itself once the predecessor let go, and does not pass it on).
    pub rest_tls: Option<TcpListener>,
    /// Internal RPC and Raft.
    pub rpc: TcpListener,
    /// Discovery (Sentinel API).
    pub discovery: TcpListener,
    /// Metrics.
    pub metrics: TcpListener,
}

impl ServiceListeners {
    /// Duplicates of every socket (the same listening sockets, new descriptors).
    pub fn try_clone(&self) -> std::io::Result<ServiceListeners> {
        Ok(ServiceListeners {
            rest: self.rest.as_ref().map(TcpListener::try_clone).transpose()?,
            rest_tls: self
                .rest_tls
                .as_ref()
                .map(TcpListener::try_clone)
                .transpose()?,
            rpc: self.rpc.try_clone()?,
            discovery: self.discovery.try_clone()?,
            metrics: self.metrics.try_clone()?,
        })
    }

    /// Each socket with the service it belongs to.
    pub fn each(&self) -> Vec<(Service, &TcpListener)> {
        let rest = self.rest.as_ref().map(|l| (Service::Rest, l));
        let rest_tls = self.rest_tls.as_ref().map(|l| (Service::RestTls, l));
        rest.into_iter()
            .chain(rest_tls)
            .chain([
                (Service::Rpc, &self.rpc),
                (Service::Discovery, &self.discovery),
                (Service::Metrics, &self.metrics),
            ])
            .collect()
    }
}

/// Service sockets passed from a predecessor daemon; any it did not pass is bound afresh.
#[derive(Debug, Default)]
pub struct PassedServices {
    /// REST API.
    pub rest: Option<TcpListener>,
    /// REST API over HTTPS.
    pub rest_tls: Option<TcpListener>,
    /// Internal RPC and Raft.
    pub rpc: Option<TcpListener>,
    /// Discovery.
    pub discovery: Option<TcpListener>,
    /// Metrics.
    pub metrics: Option<TcpListener>,
}

impl PassedServices {
    /// Keeps a passed socket for its service.
    pub fn insert(&mut self, service: &Service, listener: TcpListener) {
        let slot = match service {
            Service::Rest => &mut self.rest,
            Service::RestTls => &mut self.rest_tls,
            Service::Rpc => &mut self.rpc,
            Service::Discovery => &mut self.discovery,
            Service::Metrics => &mut self.metrics,
            Service::Endpoint { .. } => return,
        };
        *slot = Some(listener);
    }
}
