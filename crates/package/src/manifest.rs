//! `manifest.toml`: what a package is and holds, with the sha256 of every file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use flotilla_model::EngineVersion;
use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{PackageError, Result};

/// The manifest's file name at the package's root.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// The daemon/CLI binary, relative to the package's root.
pub const BINARY_PATH: &str = "bin/flotilla";
/// The engines folder, relative to the package's root: `engines/<engine>/bin/<server>`.
pub const ENGINES_DIR: &str = "engines";
/// The operating systems (`ID-VERSION_ID` of `/etc/os-release`) a package supports unless its
/// build says otherwise: the ones its engines were checked on.
pub const DEFAULT_SUPPORTED_OS: [&str; 4] =
    ["debian-12", "debian-13", "ubuntu-22.04", "ubuntu-24.04"];

/// A package's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The software version of the package.
    pub version: Version,
    /// The installed versions this package may be installed over (a semver requirement, e.g.
    /// `>=0.1.0, <0.3.0`).
    pub upgrade_from: VersionReq,
    /// The engine new databases get when none is named.
    pub default_engine: EngineVersion,
    /// The operating systems the package supports, as `ID-VERSION_ID` (`debian-12`).
    pub supported_os: Vec<String>,
    /// The version of the daemon handover protocol the binary speaks; 0 when it has none (an
    /// in-place upgrade from or to it stops one daemon and starts the other).
    pub handover_protocol: u32,
    /// The sha256 of the package's own files (the binary), by path relative to the package.
    pub files: BTreeMap<String, String>,
    /// The engines bundled: for each, the sha256 of every file by path relative to
    /// `engines/<engine>/`.
    pub engines: BTreeMap<EngineVersion, BTreeMap<String, String>>,
}

impl Manifest {
    /// Reads `dir/manifest.toml`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(PackageError::io(&path))?;
        Manifest::parse(&text).map_err(|reason| PackageError::Manifest { path, reason })
    }

    /// The manifest of the package at `path`: a package folder, or its `.tar.gz` (read without
    /// unpacking the rest).
    pub fn of_package(path: &Path) -> Result<Manifest> {
        if path.is_dir() {
            return Manifest::read(path);
        }
        let file = std::fs::File::open(path).map_err(PackageError::io(path))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries().map_err(PackageError::io(path))? {
            let mut entry = entry.map_err(PackageError::io(path))?;
            let name = entry.path().map_err(PackageError::io(path))?.into_owned();
            if name.components().count() == 2 && name.ends_with(MANIFEST_FILE) {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(PackageError::io(path))?;
                return Manifest::parse(&text).map_err(|reason| PackageError::Manifest {
                    path: path.join(name),
                    reason,
                });
            }
        }
        Err(PackageError::Manifest {
            path: path.to_path_buf(),
            reason: format!("no {MANIFEST_FILE} in the tarball's top folder"),
        })
    }

    /// Parses a manifest's text.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        if !manifest.engines.contains_key(&manifest.default_engine) {
            return Err(format!(
                "default_engine {} is not among the bundled engines",
                manifest.default_engine
            ));
        }
        if !manifest.files.contains_key(BINARY_PATH) {
            return Err(format!("files does not list {BINARY_PATH}"));
        }
        Ok(manifest)
    }

    /// The manifest as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serializes")
    }

    /// Whether this package may be installed over a node running `installed`.
    pub fn may_upgrade_from(&self, installed: &Version) -> bool {
        self.upgrade_from.matches(installed)
    }

    /// Whether the package bundles `engine`.
    pub fn bundles(&self, engine: EngineVersion) -> bool {
        self.engines.contains_key(&engine)
    }

    /// Whether the package supports the operating system `os_id` (`debian-12`).
    pub fn supports_os(&self, os_id: &str) -> bool {
        self.supported_os.iter().any(|os| os == os_id)
    }

    /// Every file of the package with its checksum, by path relative to the package's root.
    pub fn checksums(&self) -> impl Iterator<Item = (String, &str)> {
        let own = self.files.iter().map(|(p, s)| (p.clone(), s.as_str()));
        let engines = self.engines.iter().flat_map(|(engine, files)| {
            files
                .iter()
                .map(move |(p, s)| (format!("{ENGINES_DIR}/{engine}/{p}"), s.as_str()))
        });
        own.chain(engines)
    }
}

/// The lowercase hex sha256 of a file's contents.
pub(crate) fn sha256_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(PackageError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(PackageError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            version: Version::new(0, 2, 1),
            upgrade_from: VersionReq::parse(">=0.1.0, <0.2.1").unwrap(),
            default_engine: EngineVersion::Valkey91,
            supported_os: vec!["debian-12".into()],
            handover_protocol: 1,
            files: BTreeMap::from([(BINARY_PATH.into(), "aa".into())]),
            engines: BTreeMap::from([(
                EngineVersion::Valkey91,
                BTreeMap::from([("bin/valkey-server".into(), "bb".into())]),
            )]),
        }
    }

    #[test]
    fn a_manifest_round_trips_through_toml() {
        let manifest = sample();
        let text = manifest.to_toml();
        assert!(text.contains("version = \"0.2.1\""), "{text}");
        assert!(text.contains("[engines.\"valkey-9.1\"]"), "{text}");
        assert_eq!(Manifest::parse(&text).unwrap(), manifest);
    }

    #[test]
    fn upgrade_from_and_os_are_answered_from_the_manifest() {
        let manifest = sample();
        assert!(manifest.may_upgrade_from(&Version::new(0, 1, 0)));
        assert!(manifest.may_upgrade_from(&Version::new(0, 2, 0)));
        assert!(!manifest.may_upgrade_from(&Version::new(0, 2, 1)));
        assert!(manifest.supports_os("debian-12"));
        assert!(!manifest.supports_os("debian-11"));
        assert!(manifest.bundles(EngineVersion::Valkey91));
        assert!(!manifest.bundles(EngineVersion::Redis62));
    }

    #[test]
    fn a_default_engine_that_is_not_bundled_is_refused() {
        let mut manifest = sample();
        manifest.default_engine = EngineVersion::Redis62;
        let err = Manifest::parse(&manifest.to_toml()).unwrap_err();
        assert!(err.contains("default_engine redis-6.2"), "{err}");
    }

    #[test]
    fn checksums_list_the_binary_and_every_engine_file_by_package_path() {
        let paths: Vec<String> = sample().checksums().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            vec!["bin/flotilla", "engines/valkey-9.1/bin/valkey-server"]
        );
    }
}
