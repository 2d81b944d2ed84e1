//! What this node holds on disk: one folder per shard under the shards dir, named by shard uid,
//! each with a record of the spec its engine was last started with (`shard.json`). The record
//! is how a shard the store no longer knows is still found, identified and stopped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_engine::{adopt, read_pidfile, ShardSpec, StopOptions};
use flotilla_model::ShardUid;

use super::ShardError;

/// The record's file name inside a shard's folder.
const RECORD_FILE: &str = "shard.json";

/// Deadlines for stopping a shard that is being removed (its data is no longer wanted).
const REMOVE_STOP: StopOptions = StopOptions {
    shutdown_timeout: Duration::from_secs(5),
    signal_timeout: Duration::from_secs(5),
};

/// The spec recorded in a shard's folder, if any. Public so that tools and test guards can find
/// and stop the engines a node runs from its shards dir alone.
pub fn recorded_spec(shard_dir: &Path) -> Result<Option<ShardSpec>, ShardError> {
    let path = shard_dir.join(RECORD_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ShardError::io("read shard record", &path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ShardError::BadRecord { path, source: e })
}

/// Writes `spec` as the shard's record (mode 0600: it holds the internal password), atomically,
/// unless the same record is already there.
pub(crate) fn record_spec(spec: &ShardSpec) -> Result<(), ShardError> {
    if recorded_spec(&spec.dir).ok().flatten().as_ref() == Some(spec) {
        return Ok(());
    }
    std::fs::create_dir_all(&spec.dir)
        .map_err(|e| ShardError::io("create shard dir", &spec.dir, e))?;
    let path = spec.dir.join(RECORD_FILE);
    let bytes = serde_json::to_vec_pretty(spec).map_err(|e| ShardError::BadRecord {
        path: path.clone(),
        source: e,
    })?;
    flotilla_engine::write_private_file(&path, &bytes)
        .map_err(|e| ShardError::io("write shard record", &path, e))
}

/// The shard folders under `shards_dir`: every sub-folder whose name is a shard uid written
/// the canonical way. Anything else there is left alone.
pub fn local_shard_dirs(shards_dir: &Path) -> Result<Vec<(ShardUid, PathBuf)>, ShardError> {
    let entries = match std::fs::read_dir(shards_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ShardError::io("list shards dir", shards_dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(uid) = name.parse::<ShardUid>() else {
            continue;
        };
        if uid.to_string() == name && entry.path().is_dir() {
            found.push((uid, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Stops the engine recorded in `shard_dir` (without saving: its data is no longer wanted) and
/// removes the folder. A folder whose pidfile names a live process but that has no record is
/// left in place: nothing proves that process is this shard's engine.
pub(crate) async fn remove_shard(uid: ShardUid, shard_dir: &Path) -> Result<(), ShardError> {
    match recorded_spec(shard_dir)? {
        Some(spec) => {
            if let Some(process) = adopt(&spec)? {
                tracing::info!(
                    shard = uid,
                    pid = process.pid(),
                    "stopping a shard the store no longer places here"
                );
                process.stop_with(false, REMOVE_STOP).await?;
            }
        }
        None => refuse_unrecorded_live_pid(uid, shard_dir)?,
    }
    std::fs::remove_dir_all(shard_dir)
        .map_err(|e| ShardError::io("remove shard dir", shard_dir, e))?;
    tracing::info!(shard = uid, dir = %shard_dir.display(), "shard removed from this node");
    Ok(())
}

fn refuse_unrecorded_live_pid(uid: ShardUid, shard_dir: &Path) -> Result<(), ShardError> {
    let pidfile = shard_dir.join("engine.pid");
    if let Some(pid) = read_pidfile(&pidfile)? {
        if Path::new(&format!("/proc/{pid}")).exists() {
            return Err(ShardError::Unrecorded { uid, pid });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> ShardSpec {
        ShardSpec {
            shard_id: 4,
            version: flotilla_model::EngineVersion::Redis70,
            bind: "127.0.0.11".parse().unwrap(),
            port: 20004,
            password: "pw".into(),
            users: Some(flotilla_model::EngineUsers::derive("pw")),
            legacy: false,
            maxmemory_bytes: 1 << 20,
            eviction: Default::default(),
            persistence: Default::default(),
            dir: dir.join("4"),
            replica_of: None,
        }
    }

    #[test]
    fn a_record_round_trips_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path());
        assert_eq!(recorded_spec(&spec.dir).unwrap(), None);
        record_spec(&spec).unwrap();
        assert_eq!(recorded_spec(&spec.dir).unwrap(), Some(spec.clone()));
        let mode = std::fs::metadata(spec.dir.join(RECORD_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn only_uid_folders_count_as_shards() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["3", "12", "007", "tmp", "4x"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        std::fs::write(dir.path().join("5"), b"a file").unwrap();
        let uids: Vec<ShardUid> = local_shard_dirs(dir.path())
            .unwrap()
            .into_iter()
            .map(|(uid, _)| uid)
            .collect();
        assert_eq!(uids, vec![3, 12]);
        assert!(local_shard_dirs(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn an_unrecorded_folder_with_a_live_pid_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let shard_dir = dir.path().join("9");
        std::fs::create_dir(&shard_dir).unwrap();
        std::fs::write(shard_dir.join("engine.pid"), std::process::id().to_string()).unwrap();
        let err = remove_shard(9, &shard_dir).await.unwrap_err();
        assert!(
            matches!(err, ShardError::Unrecorded { uid: 9, .. }),
            "{err}"
        );
        assert!(shard_dir.is_dir());
        std::fs::remove_file(shard_dir.join("engine.pid")).unwrap();
        remove_shard(9, &shard_dir).await.unwrap();
        assert!(!shard_dir.exists());
    }
}
