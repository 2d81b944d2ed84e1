//! What a node remembers about itself across restarts: its uid and the cluster secret.

use std::io::Write;
use std::path::Path;

use flotilla_model::NodeUid;
use serde::{Deserialize, Serialize};

const FILE: &str = "identity.json";

/// A node's membership identity, written to `DATA_DIR/identity.json` (mode 0600) when it creates
/// or joins a cluster, and read back at every start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node's uid (its Raft node id).
    pub uid: NodeUid,
    /// The cluster's internal RPC secret.
    pub secret: String,
}

impl Identity {
    /// Reads the identity from `data_dir`, `None` for a node that never created or joined.
    pub fn load(data_dir: &Path) -> std::io::Result<Option<Identity>> {
        match std::fs::read(data_dir.join(FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the identity atomically (temp file, fsync, rename).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = data_dir.join(format!("{FILE}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, data_dir.join(FILE))?;
        std::fs::File::open(data_dir)?.sync_all()
    }
}
