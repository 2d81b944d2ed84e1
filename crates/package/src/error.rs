//! Why a package could not be built, read, verified or installed.

use std::path::PathBuf;

/// A package error names the package, the file at fault and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `manifest.toml` is missing or does not parse.
    #[error("{}: not a Flotilla package manifest: {reason}", path.display())]
    Manifest {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file the manifest lists is not in the package.
    #[error("package {}: {file} is missing, so the package is incomplete; build it again (`flotilla package build`) or copy it whole", package.display())]
    MissingFile {
        /// The package folder.
        package: PathBuf,
        /// The missing file, relative to the package.
        file: String,
    },
    /// A file does not match the checksum the manifest gives it.
    #[error("package {}: {file} does not match its sha256 in manifest.toml (expected {expected}, found {found}), so the package is corrupt; build or copy it again", package.display())]
    Checksum {
        /// The package folder.
        package: PathBuf,
        /// The file, relative to the package.
        file: String,
        /// The checksum in the manifest.
        expected: String,
        /// The checksum of the file on disk.
        found: String,
    },
    /// Another package of the same version is installed already.
    #[error("version {version} is already installed at {} with other contents; remove that folder first if you mean to replace it", installed.display())]
    VersionInstalled {
        /// The version.
        version: String,
        /// Where it is installed.
        installed: PathBuf,
    },
    /// The inputs of a build or an install do not make a package.
    #[error("{0}")]
    Invalid(String),
}

impl PackageError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PackageError {
        let path = path.into();
        move |source| PackageError::Io { path, source }
    }
}
