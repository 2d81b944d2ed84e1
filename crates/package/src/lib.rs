//! Flotilla packages (DESIGN.md "Engines and packages").
//!
//! A package is a folder (or a `.tar.gz` of one) holding `bin/flotilla`, `engines/<engine>/...`
//! and `manifest.toml`. The manifest says which version the package is, which installed versions
//! it may be installed over (`upgrade_from`), which engines it bundles with the sha256 of every
//! file, its default engine, the operating systems it supports and the version of the daemon
//! handover protocol its binary speaks. A node's software version is the version in the manifest
//! of the package it runs from.
//!
//! Packages are installed side by side (`PACKAGES_DIR/<version>/`), never over each other, and
//! every file is checked against its checksum before a package is used: a corrupt or incomplete
//! package is refused with an error naming the file.

mod build;
mod error;
mod install;
mod manifest;

pub use build::{build, BuildSpec, Built};
pub use error::PackageError;
pub use install::{install, Package};
pub use manifest::{Manifest, BINARY_PATH, DEFAULT_SUPPORTED_OS, ENGINES_DIR, MANIFEST_FILE};
pub use semver::{Version, VersionReq};

/// The result type of this crate.
pub type Result<T, E = PackageError> = std::result::Result<T, E>;
