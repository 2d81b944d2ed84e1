//! A shard's data files (RDB, AOF) as the engine loads them at start: telling a start that
//! failed because they do not load from any other failed start, and setting them aside, never
//! deleting them, when the shard's data is to come from its primary instead.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::spec::ShardSpec;

/// The files and folders an engine loads its data from at start, in a shard's dir: the RDB
/// snapshot, the single-file AOF (redis 6.2) and the multi-part AOF folder (7.0 and later).
pub const DATA_FILES: [&str; 3] = ["dump.rdb", "appendonly.aof", "appendonlydir"];

/// Lines redis and valkey log when the data they load at start is truncated or corrupt.
const LOAD_FAILURES: [&str; 8] = [
    "Short read or OOM loading DB",
    "Wrong signature trying to load DB from file",
    "Internal error in RDB reading",
    "Fatal error loading the DB",
    "Bad file format reading the append only file",
    "Unexpected end of file reading the append only file",
    "Unrecoverable error reading the append only file",
    "AOF manifest",
];

/// The engine log line that says the data did not load, if the log (since the start) has one.
pub(crate) fn load_failure(log_text: &str) -> Option<String> {
    log_text
        .lines()
        .find(|line| LOAD_FAILURES.iter().any(|marker| line.contains(marker)))
        .map(|line| line.trim().to_string())
}

/// The data files present in the shard's dir.
pub fn present_data_files(dir: &Path) -> Vec<PathBuf> {
    DATA_FILES
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| path.exists())
        .collect()
}

/// Moves every data file of `spec`'s dir into a new folder `damaged-<unix ms>` beside them, so
/// the engine starts empty (a replica then syncs from its primary). Returns that folder. Never
/// deletes anything: the operator decides what becomes of the moved files.
pub fn set_aside_data_files(spec: &ShardSpec) -> Result<PathBuf> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let aside = spec.dir.join(format!("damaged-{millis}"));
    std::fs::create_dir_all(&aside)
        .map_err(|e| EngineError::io("create the folder for damaged data files", &aside, e))?;
    for path in present_data_files(&spec.dir) {
        let name = path.file_name().expect("a data file has a name");
        std::fs::rename(&path, aside.join(name))
            .map_err(|e| EngineError::io("move a damaged data file aside", &path, e))?;
    }
    Ok(aside)
}

/// Bytes an unprivileged writer may still use on the file system holding `dir` (`statvfs`):
/// what shards, the store and `flotilla check` have left before writes fail. `None` when it
/// cannot be read.
pub fn available_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs reads the NUL-terminated path and writes only into `stat`.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    let bytes = u64::from(stat.f_bavail) * u64::from(stat.f_frsize);
    (rc == 0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_failures_are_told_from_other_failures() {
        let rdb = "1:M 30 Nov * Server initialized\n1:M 30 Nov # Wrong signature trying to load DB from file\n1:M # Fatal error loading the DB, check server logs. Exiting.";
        assert!(load_failure(rdb).unwrap().contains("Wrong signature"));
        let aof = "1:M # Bad file format reading the append only file appendonly.aof.1.incr.aof: make a backup";
        assert!(load_failure(aof)
            .unwrap()
            .contains("appendonly.aof.1.incr.aof"));
        let port = "1:M # Warning: Could not create server TCP listening socket 127.0.0.1:20000: bind: Address already in use";
        assert_eq!(load_failure(port), None);
    }

    #[test]
    fn data_files_are_moved_aside_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = crate::spec::tests::sample_spec();
        spec.dir = dir.path().to_path_buf();
        std::fs::write(dir.path().join("dump.rdb"), b"REDIS0011").unwrap();
        std::fs::create_dir(dir.path().join("appendonlydir")).unwrap();
        std::fs::write(dir.path().join("appendonlydir/x.aof"), b"*1").unwrap();
        std::fs::write(dir.path().join("engine.conf"), b"port 1").unwrap();
        let aside = set_aside_data_files(&spec).unwrap();
        assert!(present_data_files(dir.path()).is_empty());
        assert_eq!(std::fs::read(aside.join("dump.rdb")).unwrap(), b"REDIS0011");
        assert!(aside.join("appendonlydir/x.aof").exists());
        assert!(dir.path().join("engine.conf").exists());
    }
}
