//! Opening `DATA_DIR/store.redb`: the one place that tells a file another daemon still holds from
//! a damaged one or a full disk, and says for each what the operator does about it.
//!
//! A damaged file (truncated, a page overwritten, not a redb file at all) is never repaired in
//! silence nor replaced by an empty store: a node that forgot its Raft log or vote must not vote
//! again, and an empty store would be a node that forgot its cluster. The daemon refuses to
//! start, naming the file and the way back: move it aside and rejoin under the same uid
//! (`flotilla cluster join --replace-node UID`), which takes the cluster's store from the other
//! nodes and adopts the node's running shards.

use std::path::Path;

use flotilla_model::NodeUid;
use redb::{Database, DatabaseError, StorageError};

/// The store's file name inside the data dir.
pub const STORE_FILE: &str = "store.redb";

/// Why `store.redb` could not be opened; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreFileError {
    /// Another process (a daemon still running on this data dir, or one still exiting) holds
    /// the file. Worth retrying for a moment.
    #[error("{path} is held by another process: is a daemon still running on this data dir? (stop it first)")]
    Held {
        /// The file.
        path: String,
    },
    /// The file is not a readable redb database, or failed its integrity check.
    #[error("{path} is damaged ({reason}): the daemon does not start on it (a node must not vote with a Raft log it may have lost, nor start empty and forget its cluster). {fix}")]
    Damaged {
        /// The file.
        path: String,
        /// What redb found.
        reason: String,
        /// What the operator does (names the node's uid when its identity is readable).
        fix: String,
    },
    /// An I/O error other than damage: a full disk, permissions.
    #[error("{path}: {reason}{fix}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        reason: String,
        /// What the operator does (for a full disk: free space), with a leading separator.
        fix: String,
    },
}

/// The fix appended to an I/O error's text: for a full disk, which dir to free space in.
pub fn disk_full_fix(error: &std::io::Error, dir: &Path) -> Option<String> {
    is_disk_full(error).then(|| {
        format!(
            "; the file system of {} is full: free space there (the node resumes once it can write)",
            dir.display()
        )
    })
}

/// True for ENOSPC (and EDQUOT, a full quota).
pub fn is_disk_full(error: &std::io::Error) -> bool {
    // ENOSPC and EDQUOT on Linux.
    matches!(error.raw_os_error(), Some(28 | 122))
}

/// Opens (or creates) the store's database in `data_dir` and checks every page of it. `uid` is
/// the node's uid when its identity is readable, for the fix the error names.
pub(crate) fn open_database(
    data_dir: &Path,
    uid: Option<NodeUid>,
) -> Result<Database, StoreFileError> {
    let path = data_dir.join(STORE_FILE);
    let opened = without_panic_message(|| -> Result<Database, DatabaseError> {
        let mut db = Database::create(&path)?;
        if !db.check_integrity()? {
            return Err(DatabaseError::Storage(StorageError::Corrupted(
                "it failed redb's integrity check (checksums): redb repaired it, possibly rolling back its last writes".into(),
            )));
        }
        Ok(db)
    });
    let shown = path.display().to_string();
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch)) => {
            Err(StoreFileError::Held { path: shown })
        }
        Ok(Err(DatabaseError::Storage(StorageError::Io(e)))) if !is_damage(&e) => {
            Err(StoreFileError::Io {
                path: shown,
                reason: e.to_string(),
                fix: disk_full_fix(&e, data_dir).unwrap_or_default(),
            })
        }
        Ok(Err(e)) => Err(damaged(data_dir, uid, e.to_string())),
        Err(panic) => Err(damaged(
            data_dir,
            uid,
            format!("reading it failed: {panic}"),
        )),
    }
}

/// I/O errors that mean the bytes are wrong, not that the disk refused.
fn is_damage(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
    )
}

/// The error for a damaged store file, with the way back.
pub(crate) fn damaged(data_dir: &Path, uid: Option<NodeUid>, reason: String) -> StoreFileError {
    let path = data_dir.join(STORE_FILE);
    let identity = data_dir.join(crate::identity::FILE);
    let uid_text = uid.map_or_else(|| "UID".to_string(), |uid| uid.to_string());
    let fix = format!(
        "The other nodes hold the cluster store: move this copy aside and rejoin this node under its uid: `mv {p} {p}.damaged && mv {i} {i}.old`, start the daemon again (it prints a bootstrap token), then `flotilla cluster join --nodes ANOTHER_NODE --replace-node {uid_text} --bootstrap-token TOKEN` against this node; its running shards are adopted. (With no other node left, the cluster's configuration is lost with this file.)",
        p = path.display(),
        i = identity.display(),
    );
    StoreFileError::Damaged {
        path: path.display().to_string(),
        reason,
        fix,
    }
}

/// Runs `f`, turning a panic (redb's debug assertions on a damaged file) into an error carrying
/// its message, without the panic hook printing it as a crash.
fn without_panic_message<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "redb gave up on it".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn written(dir: &Path) {
        let db = Database::create(dir.join(STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(T).unwrap();
            for i in 0..2_000u64 {
                table.insert(i, vec![7u8; 200].as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_sound_file_opens_and_a_missing_one_is_created() {
        let dir = tempfile::tempdir().unwrap();
        open_database(dir.path(), None).expect("creates");
        let other = tempfile::tempdir().unwrap();
        written(other.path());
        open_database(other.path(), Some(3)).expect("opens");
    }

    #[test]
    fn a_truncated_file_is_damaged_and_the_error_names_it_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path());
        let path = dir.path().join(STORE_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
        let err = open_database(dir.path(), Some(3)).expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, StoreFileError::Damaged { .. }), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("--replace-node 3"), "{text}");
    }

    #[test]
    fn an_overwritten_page_is_damaged() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        written(dir.path());
        let path = dir.path().join(STORE_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(len / 2)).unwrap();
        file.write_all(&[0xA5; 4096]).unwrap();
        drop(file);
        let err = open_database(dir.path(), None).expect_err("refused");
        assert!(matches!(err, StoreFileError::Damaged { .. }), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STORE_FILE), vec![0u8; 10_000]).unwrap();
        let err = open_database(dir.path(), None).expect_err("refused");
        assert!(matches!(err, StoreFileError::Damaged { .. }), "{err}");
    }

    #[test]
    fn a_held_file_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open_database(dir.path(), None).unwrap();
        let err = open_database(dir.path(), None).expect_err("held");
        assert!(matches!(err, StoreFileError::Held { .. }), "{err}");
    }
}
