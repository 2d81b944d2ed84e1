//! Locating engine binaries: `<engines_dir>/<version>/bin/<server>`.
//!
//! A node passes its package's `engines/` folder; developers and tests use
//! [`dev_engines_dir`], which honours `FLOTILLA_ENGINES_DIR` and otherwise points at the cache
//! that `scripts/fetch-engines` fills.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::EngineVersion;

/// The environment variable that overrides where engines are looked up in development and tests.
pub const ENGINES_DIR_ENV: &str = "FLOTILLA_ENGINES_DIR";

/// Where engine binaries live for one caller (a node's package, or the developer cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineCatalog {
    dir: PathBuf,
}

impl EngineCatalog {
    /// A catalog over `dir`, which holds one `<version>/bin/<server>` per engine.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EngineCatalog { dir: dir.into() }
    }

    /// The catalog developers and tests use: see [`dev_engines_dir`].
    pub fn dev() -> Self {
        EngineCatalog::new(dev_engines_dir())
    }

    /// The folder this catalog reads.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the binary for `version` is expected, whether or not it is there.
    pub fn binary_path(&self, version: EngineVersion) -> PathBuf {
        self.dir
            .join(version.as_str())
            .join("bin")
            .join(version.server_binary())
    }

    /// The binary for `version`, or an error naming the path and `scripts/fetch-engines`.
    pub fn binary(&self, version: EngineVersion) -> Result<PathBuf> {
        let path = self.binary_path(version);
        if path.is_file() {
            Ok(path)
        } else {
            Err(EngineError::MissingBinary {
                version: version.to_string(),
                path,
            })
        }
    }

    /// The versions whose binaries are present, oldest first (for `flotilla check` and packages).
    pub fn available(&self) -> Vec<EngineVersion> {
        EngineVersion::ALL
            .into_iter()
            .filter(|v| self.binary_path(*v).is_file())
            .collect()
    }
}

/// The engines folder for development and tests: `$FLOTILLA_ENGINES_DIR` when set and not
/// empty, else `<repo>/.cache/engines` (the folder `scripts/fetch-engines` fills).
pub fn dev_engines_dir() -> PathBuf {
    match std::env::var_os(ENGINES_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join(".cache").join("engines"),
    }
}

/// The workspace root, two levels above this crate's manifest.
fn repo_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(crate_dir)
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_path_follows_the_layout() {
        let catalog = EngineCatalog::new("/pkg/engines");
        assert_eq!(
            catalog.binary_path(EngineVersion::Valkey91),
            PathBuf::from("/pkg/engines/valkey-9.1/bin/valkey-server")
        );
        assert_eq!(
            catalog.binary_path(EngineVersion::Redis62),
            PathBuf::from("/pkg/engines/redis-6.2/bin/redis-server")
        );
    }

    #[test]
    fn missing_binary_names_path_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = EngineCatalog::new(dir.path());
        let err = catalog
            .binary(EngineVersion::Redis70)
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis-7.0/bin/redis-server"), "{err}");
        assert!(err.contains("scripts/fetch-engines"), "{err}");
        assert!(catalog.available().is_empty());
    }

    #[test]
    fn present_binary_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = EngineCatalog::new(dir.path());
        let path = catalog.binary_path(EngineVersion::Valkey81);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert_eq!(catalog.binary(EngineVersion::Valkey81).unwrap(), path);
        assert_eq!(catalog.available(), vec![EngineVersion::Valkey81]);
    }

    #[test]
    fn dev_dir_defaults_to_repo_cache() {
        // Only meaningful when the variable is not set by the developer.
        if std::env::var_os(ENGINES_DIR_ENV).is_none() {
            let dir = dev_engines_dir();
            assert!(dir.ends_with(".cache/engines"), "{}", dir.display());
            assert!(dir
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("crates")
                .is_dir());
        }
    }
}
