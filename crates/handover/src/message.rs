//! The messages of the handover protocol, in the order they usually flow.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The version of the handover protocol this build speaks. A package records it in its
/// manifest (`handover_protocol`); two daemons hand over only when both speak a version >= 1,
/// and then speak the lower of the two. 0 means "no handover" (release 0.1.0): the upgrade
/// stops one daemon and starts the other.
pub const HANDOVER_PROTOCOL: u32 = 1;

/// A service whose listening socket passes from the old daemon to the new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "service", rename_all = "snake_case")]
pub enum Service {
    /// The REST API over plain HTTP (`--http-port`).
    Rest,
    /// The REST API over HTTPS (9443): passed too, so the node answers HTTPS all through the
    /// handover.
    RestTls,
    /// Internal RPC and Raft.
    Rpc,
    /// The Sentinel-compatible discovery service.
    Discovery,
    /// The metrics endpoint.
    Metrics,
    /// A database endpoint.
    Endpoint {
        /// The database's uid.
        bdb_uid: u64,
    },
}

/// One message on the handover channel. Messages that carry file descriptors say which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "snake_case")]
pub enum Message {
    /// New -> old, first: the new binary started and speaks `protocol`.
    Hello {
        /// The newest protocol version the new binary speaks.
        protocol: u32,
        /// The new binary's software version.
        software_version: String,
        /// The new process's pid.
        pid: u32,
    },
    /// Old -> new: the protocol both speak, the first client id the new daemon may hand out
    /// (client ids stay unique across the handover: `CLIENT ID` keeps its meaning), and the
    /// cluster state as the old daemon applied it.
    Welcome {
        /// The protocol version both speak from now on.
        protocol: u32,
        /// Ids below this were handed out by the old daemon.
        next_client_id: u64,
        /// The cluster state (JSON of `ClusterState`).
        state: serde_json::Value,
        /// How many [`Message::Listener`]s follow.
        listeners: u32,
    },
    /// Old -> new, with one descriptor: a listening socket and the service it belongs to.
    Listener {
        /// The service.
        #[serde(flatten)]
        service: Service,
        /// Its address, for logs and checks.
        addr: SocketAddr,
    },
    /// New -> old: the new daemon accepts on every endpoint and discovery listener; the old one
    /// stops accepting on them and starts passing its client connections.
    Accepting,
    /// Old -> new: the cluster state changed (the new daemon's endpoints follow it until it
    /// opens the store itself).
    State {
        /// The cluster state (JSON of `ClusterState`).
        state: serde_json::Value,
    },
    /// Old -> new, with the client socket first and then the session's pinned engine sockets:
    /// one client session, stopped at a command boundary.
    Session {
        /// The endpoint (listening address) the client connected to.
        endpoint: SocketAddr,
        /// The session's state (JSON of the proxy's session state).
        session: serde_json::Value,
    },
    /// Old -> new: every session has been passed or closed; the old daemon now stops its
    /// store and exits, and the new one opens the store when the old process is gone.
    SessionsDone {
        /// Sessions passed.
        moved: u64,
        /// Sessions that could not reach a command boundary within the bound and were closed.
        closed: u64,
        /// How long moving them took.
        took_ms: u64,
    },
    /// Either way: the sender gives up the handover; the old daemon keeps (or resumes) serving.
    Abort {
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_a_stable_json_form() {
        let listener = Message::Listener {
            service: Service::Endpoint { bdb_uid: 3 },
            addr: "127.0.0.11:12000".parse().unwrap(),
        };
        let json = serde_json::to_string(&listener).unwrap();
        assert_eq!(
            json,
            r#"{"message":"listener","service":"endpoint","bdb_uid":3,"addr":"127.0.0.11:12000"}"#
        );
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), listener);
    }
}
