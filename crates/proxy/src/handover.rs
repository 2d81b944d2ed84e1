//! The state of one client session that an in-place daemon upgrade carries to the new process
//! (DESIGN.md, "Cluster software, in place": the old daemon passes each client connection at a
//! command boundary, with the session's state and the engine connections it is pinned to).
//!
//! One plain value, [`SessionState`], so the handover moves data, not objects: the session
//! takes it at a command boundary (nothing parked, nothing deferred, no reply pending, no
//! request half decoded; see `session/detach.rs`), each part contributing its own piece, and
//! a session is rebuilt from the client socket, this value and the pinned engine sockets (in
//! the order of [`SessionState::pinned`]): together a [`DetachedSession`]. Everything else a
//! session holds is either the endpoint's (topology, options, shared connections, counters)
//! or rebuilt on first use (its own shard connections).
//!
//! One exception to "at a command boundary": a client whose only outstanding request is a
//! blocking one (BLPOP with no timeout...) on its own engine connection moves with that
//! connection, and the new session first awaits the reply ([`BlockedState`]); otherwise such a
//! client could hold the handover forever.

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
    /// blocked request, the subscriptions); the handover passes their sockets in this order.
    pub pinned: Vec<PinnedConnection>,
    /// Bytes the client sent that the session read but has not handled yet (the start of a
    /// request not fully received).
    pub unread: Vec<u8>,
    /// The blocking request whose reply the new session awaits first, if the client moved
    /// while blocked.
    #[serde(default)]
    pub blocked: Option<BlockedState>,
}

/// A blocking request sent to a shard and not answered yet: its reply comes on the pinned
/// connection of that shard (purpose [`PinnedPurpose::Blocked`], or [`PinnedPurpose::Watch`]
/// when the same connection holds the client's WATCH) and is passed to the client as the
/// engine encoded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedState {
    /// The shard's index in the topology.
    pub shard: u16,
    /// The request's arguments (command name first), kept so a request the shard refuses as
    /// a demoted primary (certainly not executed) is resent to the next one, as before.
    pub request: Vec<Vec<u8>>,
    /// Whether the request writes (BLPOP pops; XREAD BLOCK only reads).
    pub write: bool,
}

/// A client session stopped for an in-place handover: its client socket, its state and the
/// engine sockets it is pinned to, in the order of [`SessionState::pinned`].
///
/// Exists so the endpoint's owner can move a client to another endpoint instance (another
/// process: the sockets travel as file descriptors, the state as JSON) without the client
/// noticing: nothing was sent to the client and nothing is pending on any of these sockets
/// except what the state says (unread bytes, buffered engine bytes, a blocked reply).
#[derive(Debug)]
pub struct DetachedSession {
    /// The client's connection, still open.
    pub client: std::net::TcpStream,
    /// What the session holds.
    pub state: SessionState,
    /// The pinned engine connections, in the order of [`SessionState::pinned`].
    pub engines: Vec<std::net::TcpStream>,
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
    /// It owes the reply of the client's blocking request ([`SessionState::blocked`]).
    Blocked,
}

/// An engine connection pinned to a client session, described so the new process adopts the
/// socket passed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Bytes the session read from the connection but has not decoded yet (the start of a
    /// published message, or messages not passed on yet): the new session decodes them before
    /// reading the socket, so nothing is lost or seen twice.
    #[serde(default)]
    pub buffered: Vec<u8>,
}

/// A protocol as the handover state writes it.
pub(crate) fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Resp2 => 2,
        Protocol::Resp3 => 3,
    }
}

/// The protocol the handover state names.
pub(crate) fn protocol_of(number: u8) -> Protocol {
    match number {
        3 => Protocol::Resp3,
        _ => Protocol::Resp2,
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
                    buffered: Vec::new(),
                },
                PinnedConnection {
                    purpose: PinnedPurpose::Blocked,
                    shard: 1,
                    shard_uid: 4,
                    addr,
                    protocol: 3,
                    buffered: b">3\r\n$5\r\nBL".to_vec(),
                },
                PinnedConnection {
                    purpose: PinnedPurpose::Subscriber,
                    shard: 0,
                    shard_uid: 3,
                    addr,
                    protocol: 3,
                    buffered: b">3\r\n$7\r\nmess".to_vec(),
                },
            ],
            unread: b"*2\r\n$3\r\nGE".to_vec(),
            blocked: Some(BlockedState {
                shard: 1,
                request: vec![b"BLPOP".to_vec(), b"q".to_vec(), b"0".to_vec()],
                write: true,
            }),
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

    /// The JSON the handover carries, pinned: a change of encoding fails here.
    #[test]
    fn the_state_json_is_pinned() {
        let json = r#"{"client_id":42,"authenticated":true,"protocol":2,"name":null,"shared_connections":true,"subscriptions":[],"transaction":null,"watch":null,"pinned":[{"purpose":"blocked","shard":1,"shard_uid":4,"addr":"127.0.0.11:20001","protocol":2,"buffered":[36]}],"unread":[80],"blocked":{"shard":1,"request":[[66],[113]],"write":false}}"#;
        let state: SessionState = serde_json::from_str(json).unwrap();
        assert_eq!(state.pinned[0].purpose, PinnedPurpose::Blocked);
        assert_eq!(state.pinned[0].buffered, b"$");
        assert_eq!(state.unread, b"P");
        assert_eq!(state.blocked.as_ref().unwrap().request[1], b"q");
        assert_eq!(serde_json::to_string(&state).unwrap(), json);
    }

    /// A state written before sessions could move while blocked (no `blocked`, no `buffered`)
    /// still reads, as a session with nothing blocked and nothing buffered.
    #[test]
    fn a_state_without_the_blocked_fields_reads() {
        let json = r#"{"client_id":7,"authenticated":true,"protocol":3,"name":[97],"shared_connections":false,"subscriptions":[{"shard":0,"channels":[[110]],"patterns":[],"shard_channels":[]}],"transaction":null,"watch":null,"pinned":[{"purpose":"subscriber","shard":0,"shard_uid":3,"addr":"127.0.0.11:20001","protocol":3}],"unread":[]}"#;
        let state: SessionState = serde_json::from_str(json).unwrap();
        assert_eq!(state.blocked, None);
        assert!(state.pinned[0].buffered.is_empty());
        assert_eq!(state.name.as_deref(), Some(&b"a"[..]));
    }

    #[test]
    fn protocols_are_written_as_their_number() {
        assert_eq!(protocol_number(Protocol::Resp2), 2);
        assert_eq!(protocol_number(Protocol::Resp3), 3);
        for protocol in [Protocol::Resp2, Protocol::Resp3] {
            assert_eq!(protocol_of(protocol_number(protocol)), protocol);
        }
    }
}
