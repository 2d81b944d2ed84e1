//! What can go wrong serving an op log or pulling one, with the HTTP status the REST handlers
//! answer for each.

use flotilla_model::ModelError;

/// A syncer error: on the serving side (answered to the peer's puller), or on the pulling side
/// (recorded as the source's `last_error`, retried with a bounded backoff).
#[derive(Debug, thiserror::Error)]
pub enum SyncerError {
    /// No CRDB with this GUID on this cluster.
    #[error(
        "no Active-Active database {0} on this cluster (`flotilla crdb list` shows those it has)"
    )]
    UnknownCrdb(String),
    /// The CRDB's local database is not in the cluster state.
    #[error("Active-Active database {guid}: its local database {bdb_uid} does not exist")]
    NoLocalDatabase {
        /// The CRDB.
        guid: String,
        /// The database it names.
        bdb_uid: u64,
    },
    /// The shard index is out of range.
    #[error("Active-Active database {guid}: shard {shard} does not exist (the instance has {count} shards; every instance must have the same count)")]
    NoShard {
        /// The CRDB.
        guid: String,
        /// The index asked for.
        shard: u16,
        /// How many shards the local instance has.
        count: usize,
    },
    /// The shard has no master right now (a failover is under way).
    #[error("Active-Active database {guid}: shard {shard} has no master right now (a failover is under way); retry")]
    NoMaster {
        /// The CRDB.
        guid: String,
        /// The shard index.
        shard: u16,
    },
    /// The cluster state could not say something needed (credentials, a node).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The engine could not be reached or answered an error.
    #[error(transparent)]
    Engine(#[from] flotilla_engine::EngineError),
    /// The engine-side CRDT layer failed.
    #[error(transparent)]
    Crdb(#[from] flotilla_crdb::CrdbError),
    /// An op or key state from the peer could not be decoded.
    #[error("decoding what the peer sent: {0}")]
    Decode(String),
    /// A redis command of the syncer's own failed.
    #[error("engine command failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// No URL of the peer answered, or it answered an error.
    #[error("peer {peer}: {reason}")]
    Peer {
        /// The peer cluster's name.
        peer: String,
        /// What every URL answered.
        reason: String,
    },
    /// The peer's URLs reach another instance than the one pulled from.
    #[error("peer {peer}: its REST answers for instance {got}, not instance {expected}; check the CRDB's URLs for that cluster")]
    WrongPeer {
        /// The peer cluster's name.
        peer: String,
        /// The instance id the CRDB names.
        expected: u16,
        /// The one that answered.
        got: u16,
    },
}

impl SyncerError {
    /// The HTTP status a REST handler answers for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            SyncerError::UnknownCrdb(_) | SyncerError::NoLocalDatabase { .. } => 404,
            SyncerError::NoShard { .. } | SyncerError::Decode(_) => 400,
            _ => 503,
        }
    }

    /// The `error_code` a REST handler answers for this error.
    pub fn error_code(&self) -> &'static str {
        match self {
            SyncerError::UnknownCrdb(_) | SyncerError::NoLocalDatabase { .. } => "crdb_not_found",
            SyncerError::NoShard { .. } => "invalid_shard",
            SyncerError::Decode(_) => "invalid_schema",
            SyncerError::NoMaster { .. } => "no_master",
            _ => "syncer_unavailable",
        }
    }
}
