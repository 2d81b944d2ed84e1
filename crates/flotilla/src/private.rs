//! Files only the node's user can read: the daemon's data dir holds the cluster secret
//! (`store.redb`, `identity.json`), the engines' users (engine configs, shard records) and the
//! databases' data (RDB/AOF files, logs).
//!
//! The daemon sets the umask 077 at start, so everything it and the engines it spawns create
//! is owner-only (dirs 0700, files 0600), and tightens a data dir made before (by 0.1.0, whose
//! files were 0644 in 0755 dirs, or by a launcher that created the dir and the log file).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::sys::stat::{umask, Mode};

/// The bits taken from every file and dir the daemon makes: all of group and others.
const NOT_OWNER: u32 = 0o077;

/// Sets the process's umask to 077; processes it spawns (engines) inherit it.
pub fn owner_only_umask() {
    umask(Mode::from_bits_truncate(NOT_OWNER as nix::libc::mode_t));
}

/// Removes every group and other permission bit under `root` (itself included), without
/// following symlinks; returns how many entries changed. An entry that vanishes while the walk
/// runs (an engine's temp file) is skipped.
pub fn tighten(root: &Path) -> io::Result<usize> {
    let mut changed = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & NOT_OWNER != 0 {
            let tightened = std::fs::Permissions::from_mode(mode & !NOT_OWNER & 0o7777);
            match std::fs::set_permissions(&path, tightened) {
                Ok(()) => changed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_made_world_readable_becomes_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("node");
        std::fs::create_dir_all(root.join("shards/3")).unwrap();
        std::fs::write(root.join("store.redb"), b"x").unwrap();
        std::fs::write(root.join("shards/3/engine.conf"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        let set = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        set(&root, 0o755).unwrap();
        set(&root.join("shards"), 0o755).unwrap();
        set(&root.join("shards/3"), 0o775).unwrap();
        set(&root.join("store.redb"), 0o644).unwrap();
        set(&root.join("shards/3/engine.conf"), 0o755).unwrap();
        assert_eq!(tighten(&root).unwrap(), 5);
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(""), 0o700);
        assert_eq!(mode("shards/3"), 0o700);
        assert_eq!(mode("store.redb"), 0o600);
        assert_eq!(
            mode("shards/3/engine.conf"),
            0o700,
            "the owner keeps its bits"
        );
        assert_eq!(tighten(&root).unwrap(), 0, "nothing left to change");
    }
}
