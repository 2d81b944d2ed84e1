//! `flotilla-engine` owns the real redis-server / valkey-server processes that are Flotilla's
//! shards: which engine versions exist and where their binaries are ([`EngineVersion`],
//! [`EngineCatalog`]), what a shard runs ([`ShardSpec`] and its config file), starting, adopting
//! and stopping the process ([`start`], [`adopt`], [`ShardProcess`]), and an authenticated client
//! for what the agent and upgrades ask of a running engine ([`EngineClient`]).
//!
//! No cluster logic lives here: callers decide what should run; this crate makes it run and
//! reports what it sees.

mod acl;
mod catalog;
mod client;
mod data_files;
mod error;
mod info;
mod process;
mod spec;

pub use acl::EngineLogin;
pub use catalog::{dev_engines_dir, EngineCatalog, ENGINES_DIR_ENV};
pub use client::{wait_for_sync, ClientOptions, EngineClient};
pub use data_files::{available_bytes, present_data_files, set_aside_data_files, DATA_FILES};
pub use error::{EngineError, Result};
/// Engine versions are cluster vocabulary, defined in the model and used here.
pub use flotilla_model::EngineVersion;
pub use info::{
    InfoMap, LinkStatus, MemoryInfo, ReplicaEntry, ReplicationInfo, Role, ServerInfo, StatsInfo,
};
pub use process::{
    adopt, engines_under, pid_running, read_pidfile, running_engine_pids, start, start_with,
    ShardProcess, StartOptions, StopOptions,
};
pub use spec::{
    write_private_file, EvictionPolicy, Persistence, ReplicaOf, ShardSpec, FULL_SYNC_DELAY_SECS,
    SHARD_PORTS,
};
