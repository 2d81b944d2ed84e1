//! Upgrading a node's Flotilla software in place (DESIGN.md "Cluster software, in place").
//!
//! Two paths move a node from one package to another. The handover: the running daemon starts
//! the new binary and passes it its listening sockets, the cluster state, and every client
//! connection at a command boundary; no client connection closes and no shard restarts. The
//! fallback, when either side has no handover (release 0.1.0): the daemon is stopped and the
//! new binary started with the same arguments; it adopts the running shards, and the node's
//! client connections close. Both start the new daemon the same way: [`DaemonProcess`] reads the
//! running daemon's command line, environment and log file from `/proc`, so the successor runs
//! exactly as its predecessor did, from the new package.

mod process;

pub use process::{DaemonProcess, ProcessError};
