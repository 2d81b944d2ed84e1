//! What a node remembers about itself across restarts: its uid and the cluster secret.

use std::io::Write;
use std::path::Path;

use flotilla_model::NodeUid;
use serde::{Deserialize, Serialize};

/// The identity's file name inside the data dir.
pub(crate) const FILE: &str = "identity.json";

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
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_private(data_dir, FILE, &json)?;
        std::fs::File::open(data_dir)?.sync_all()
    }
}

/// Writes `bytes` to `dir/name` that only the daemon's user can read: a 0600 temporary file,
/// fsynced, then renamed into place (a reader sees the old or the new file whole).
pub(crate) fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}
