//! Flotilla's discovery service: the subset of the Redis Sentinel protocol that clients use to
//! find a database's endpoint by name.
//!
//! Every node serves it on `ADDR:8001` ([`DISCOVERY_PORT`]). A client such as redis-py's
//! `Sentinel([("127.0.0.11", 8001)]).master_for("mydb")` asks `SENTINEL masters` (or
//! `SENTINEL get-master-addr-by-name mydb`) and is told `ADDR:PORT`: this node's own address
//! and the database's port, where this node's proxy serves the database. Replicas are internal
//! shards, never client endpoints, so every database is reported as a master with no replicas.
//!
//! The crate owns the protocol subset, the listener and the snapshot it answers from: the daemon
//! publishes a [`Databases`] snapshot ([`Databases::of_node`], projected from the cluster state)
//! through a `tokio::sync::watch` channel, and [`serve`] answers every command from the latest
//! snapshot. Commands: `PING`, `SENTINEL`
//! (`get-master-addr-by-name`, `masters`, `master`, `replicas`/`slaves`, `sentinels`, `myid`),
//! `HELLO`, `AUTH`, `CLIENT` (`SETNAME`, `GETNAME`, `SETINFO`, `ID`), `ROLE`, `INFO`, `QUIT`.
//!
//! A database with a password is named only to a client that authenticated with that password
//! (`AUTH pw`, `AUTH user pw` or `HELLO 3 AUTH user pw`; redis-py sends it with
//! `Sentinel(..., sentinel_kwargs={"password": pw})`); to any other client it does not exist.
//! Databases without a password are named to every client. `AUTH` itself always answers `OK`:
//! which databases a password opens is the only thing it changes.

mod error;
mod sentinel;
mod server;
mod session;
mod snapshot;

pub use error::DiscoveryError;
pub use server::{serve, serve_connection};
pub use snapshot::{password_ok, run_id, Databases, DbEndpoint};

/// The port the discovery service listens on, on each node's own address (Redis Software's
/// default).
pub const DISCOVERY_PORT: u16 = 8001;
