//! The in-place upgrade's handover channel (DESIGN.md "Cluster software, in place").
//!
//! A running daemon (the old process) starts its successor (the new binary) with one end of a
//! Unix `SOCK_SEQPACKET` socket pair, and passes it, over that channel, everything the node
//! serves with: its listening sockets, the cluster state until the successor opens the store
//! itself, and each client connection at a command boundary with the session's state and the
//! engine connections the session is pinned to. File descriptors travel as `SCM_RIGHTS`, so a
//! client keeps its TCP connection while the process serving it changes.
//!
//! This crate is the transport and the message set; what a message means is decided by the
//! daemon and the endpoints.

mod channel;
mod message;

pub use channel::{Channel, ChannelError};
pub use message::{Message, Service, HANDOVER_PROTOCOL};
