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

mod new_side;
mod old_side;
mod process;
mod restart;
mod services;
mod status;

pub use new_side::{greet, wait_gone, Followed, Inheritance, Successor};
pub use old_side::{check_move, upgrade_in_place, Finish, OldDaemon, HANDOVER_FD, SESSIONS_BOUND};
pub use process::{DaemonProcess, ProcessError, HANDOVER_FD_ARG};
pub use restart::{daemon_serving, restart_daemon, Restarted};
pub use services::{PassedServices, ServiceListeners};
pub use status::UpgradeRecord;
