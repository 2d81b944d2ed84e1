//! The state of one client session that an in-place daemon upgrade carries to the new process
//! (DESIGN.md, "Cluster software, in place": the old daemon passes each client connection at a
//! command boundary, with the session's state and the engine connections it is pinned to).
//!
//! One plain value, [`SessionState`], so the handover moves data, not objects: the session
//! takes it at a command boundary (nothing parked, nothing deferred, no reply pending, no
//! request half decoded; see `Session::capture` in `session/`), each part contributing its
//! own piece, and a session is rebuilt from the client socket, this value and the pinned engine sockets (in the
//! order of [`SessionState::pinned`]). Everything else a session holds is either the
//! endpoint's (topology, options, shared connections, counters) or rebuilt on first use (its
//! own shard connections).

use std::net::SocketAddr;

use flotilla_resp::Protocol;
use serde::{Deserialize, Serialize};

/// What an in-place handover carries of one client session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The client's id (CLIENT ID), kept so the client sees the same one.
    pub client_id: u64,
    /// Whether the client authenticated (or needs not).
    pub authenticated: bool,
    /// The protocol the client speaks: 2 or 3 (HELLO).
    pub protocol: u8,
    /// CLIENT SETNAME / HELLO SETNAME.
    pub name: Option<Vec<u8>>,
    /// Whether the client's plain commands still travel over the endpoint's shared engine
    /// connections (false once it used a transaction, WATCH, a blocking command or RESP3).
    pub shared_connections: bool,
    /// What the client is subscribed to, per shard.
    pub subscriptions: Vec<ShardSubscriptions>,
    /// The MULTI in progress.
    pub transaction: Option<TransactionState>,
    /// The WATCH in force; its engine connection is among [`SessionState::pinned`].
    pub watch: Option<WatchState>,
    /// The engine connections that hold the client's state on the engines (the watch, the
    /// subscriptions); the handover passes their sockets in this order.
    pub pinned: Vec<PinnedConnection>,
    /// Bytes the client sent that the session read but has not handled yet (the start of a
    /// request not fully received).
    pub unread: Vec<u8>,
}

/// A client's subscriptions on one shard's subscriber connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSubscriptions {
    /// The shard's index in the topology.
    pub shard: u16,
    /// SUBSCRIBE channels.
    pub channels: Vec<Vec<u8>>,
    /// PSUBSCRIBE patterns.
    pub patterns: Vec<Vec<u8>>,
    /// SSUBSCRIBE shard channels.
    pub shard_channels: Vec<Vec<u8>>,
}

/// A MULTI in progress: what the proxy has queued for EXEC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionState {
    /// Each queued request's arguments (command name first).
    pub queued: Vec<Vec<Vec<u8>>>,
    /// The slot the transaction is pinned to.
    pub slot: Option<u16>,
    /// Whether a request was refused while queueing (EXEC answers EXECABORT).
    pub aborted: bool,
}

/// A WATCH in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchState {
    /// The slot of the watched keys.
    pub slot: u16,
    /// The index of the shard whose connection holds the watch.
    pub shard: u16,
}

/// Why an engine connection is pinned to a client session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinnedPurpose {
    /// It holds the client's WATCH.
    Watch,
    /// It carries the client's subscriptions on one shard.
    Subscriber,
}

/// An engine connection pinned to a client session, described so the new process adopts the
/// socket passed with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedConnection {
    /// What it holds.
    pub purpose: PinnedPurpose,
    /// The shard's index in the topology.
    pub shard: u16,
    /// The shard's uid (for logs and checks).
    pub shard_uid: u64,
    /// The engine's address.
    pub addr: SocketAddr,
    /// The protocol the connection speaks: 2 or 3.
    pub protocol: u8,
}

/// A protocol as the handover state writes it.
pub(crate) fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Resp2 => 2,
        Protocol::Resp3 => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionState {
        let addr = SocketAddr::from(([127, 0, 0, 11], 20001));
        SessionState {
            client_id: 42,
            authenticated: true,
            protocol: 3,
            name: Some(b"app".to_vec()),
            shared_connections: false,
            subscriptions: vec![ShardSubscriptions {
                shard: 0,
                channels: vec![b"news".to_vec()],
                patterns: vec![b"n*".to_vec()],
                shard_channels: Vec::new(),
            }],
            transaction: Some(TransactionState {
                queued: vec![vec![b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()]],
                slot: Some(7638),
                aborted: false,
            }),
            watch: Some(WatchState {
                slot: 7638,
                shard: 0,
            }),
            pinned: vec![
                PinnedConnection {
                    purpose: PinnedPurpose::Watch,
                    shard: 0,
                    shard_uid: 3,
                    addr,
                    protocol: 3,
                },
                PinnedConnection {
                    purpose: PinnedPurpose::Subscriber,
                    shard: 0,
                    shard_uid: 3,
                    addr,
                    protocol: 3,
                },
            ],
            unread: b"*2\r\n$3\r\nGE".to_vec(),
        }
    }

    #[test]
    fn the_state_round_trips_through_serde() {
        let state = sample();
        let json = serde_json::to_string(&state).unwrap();
        let back: SessionState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert!(json.contains("\"purpose\":\"subscriber\""), "{json}");
        assert!(json.contains("\"addr\":\"127.0.0.11:20001\""), "{json}");
    }

    #[test]
    fn protocols_are_written_as_their_number() {
        assert_eq!(protocol_number(Protocol::Resp2), 2);
        assert_eq!(protocol_number(Protocol::Resp3), 3);
    }
}
