//! Opening, verifying and installing packages side by side (`PACKAGES_DIR/<version>/`).

use std::path::{Path, PathBuf};

use crate::build::copy_tree;
use crate::manifest::{sha256_of, BINARY_PATH, ENGINES_DIR, MANIFEST_FILE};
use crate::{Manifest, PackageError, Result};

/// A package folder whose every file matched its checksum when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    dir: PathBuf,
    manifest: Manifest,
}

impl Package {
    /// Opens the package folder `dir`, refusing it (naming the file) when a file the manifest
    /// lists is missing or does not match its checksum.
    pub fn open(dir: &Path) -> Result<Package> {
        let manifest = Manifest::read(dir)?;
        for (file, expected) in manifest.checksums() {
            let path = dir.join(&file);
            if !path.is_file() {
                return Err(PackageError::MissingFile {
                    package: dir.to_path_buf(),
                    file,
                });
            }
            let found = sha256_of(&path)?;
            if found != expected {
                return Err(PackageError::Checksum {
                    package: dir.to_path_buf(),
                    file,
                    expected: expected.to_string(),
                    found,
                });
            }
        }
        Ok(Package {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The package folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The package's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The package's `flotilla` binary.
    pub fn binary(&self) -> PathBuf {
        self.dir.join(BINARY_PATH)
    }

    /// The package's engines folder (`<engine>/bin/<server>`).
    pub fn engines_dir(&self) -> PathBuf {
        self.dir.join(ENGINES_DIR)
    }
}

/// Installs the package at `source` (a package folder or its `.tar.gz`) into
/// `packages_dir/<version>/`, beside what is installed there, and returns it verified. Installing
/// the same package again returns the installed one; a different package of an installed
/// version is refused. Nothing is left half-installed: the copy is made under a temporary name
/// and renamed once verified.
pub fn install(source: &Path, packages_dir: &Path) -> Result<Package> {
    std::fs::create_dir_all(packages_dir).map_err(PackageError::io(packages_dir))?;
    let staging = tempdir_in(packages_dir)?;
    let unpacked = match unpack_or_copy(source, &staging) {
        Ok(dir) => Package::open(&dir),
        Err(e) => Err(e),
    };
    let result = unpacked.and_then(|package| place(package, packages_dir));
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Moves a verified package from its staging folder to `packages_dir/<version>`.
fn place(package: Package, packages_dir: &Path) -> Result<Package> {
    let target = packages_dir.join(package.manifest.version.to_string());
    if target.exists() {
        let installed = Package::open(&target)?;
        if installed.manifest == package.manifest {
            return Ok(installed);
        }
        return Err(PackageError::VersionInstalled {
            version: package.manifest.version.to_string(),
            installed: target,
        });
    }
    std::fs::rename(&package.dir, &target).map_err(PackageError::io(&target))?;
    Package::open(&target)
}

/// Puts the package at `source` into `staging`; returns the package folder inside it.
fn unpack_or_copy(source: &Path, staging: &Path) -> Result<PathBuf> {
    if source.is_dir() {
        let dir = staging.join("package");
        copy_tree(source, &dir)?;
        return Ok(dir);
    }
    let file = std::fs::File::open(source).map_err(PackageError::io(source))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.unpack(staging).map_err(PackageError::io(source))?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(staging).map_err(PackageError::io(staging))? {
        let entry = entry.map_err(PackageError::io(staging))?;
        if entry.path().join(MANIFEST_FILE).is_file() {
            found.push(entry.path());
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(PackageError::Invalid(format!(
            "{}: expected one package folder (with {MANIFEST_FILE}) at the top of the tarball, found {}",
            source.display(),
            found.len()
        ))),
    }
}

/// A fresh folder under `parent` for staging an install.
fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    for attempt in 0..100u32 {
        let dir = parent.join(format!(".installing-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(PackageError::io(&dir)(e)),
        }
    }
    Err(PackageError::Invalid(format!(
        "{}: could not make a staging folder",
        parent.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, BuildSpec};
    use flotilla_model::EngineVersion;
    use semver::{Version, VersionReq};

    /// A tiny "engine" and "binary" in a temp dir, built into a package.
    fn built(root: &Path, version: &str) -> crate::Built {
        let engines = root.join("engines-src");
        let bin = engines.join("valkey-9.1/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("valkey-server"), b"engine bytes").unwrap();
        let binary = root.join("flotilla");
        std::fs::write(&binary, format!("binary {version}")).unwrap();
        build(&BuildSpec {
            binary,
            version: Version::parse(version).unwrap(),
            engines_dir: engines,
            engines: Vec::new(),
            upgrade_from: VersionReq::parse(">=0.1.0").unwrap(),
            default_engine: EngineVersion::Valkey91,
            supported_os: vec!["debian-12".into()],
            handover_protocol: 1,
            out_dir: root.join("out"),
        })
        .unwrap()
    }

    #[test]
    fn a_built_package_installs_from_its_folder_and_its_tarball_side_by_side() {
        let root = tempfile::tempdir().unwrap();
        let a = built(root.path(), "0.2.0");
        let b = built(root.path(), "0.2.1");
        let packages = root.path().join("packages");
        let first = install(&a.tarball, &packages).unwrap();
        let second = install(&b.dir, &packages).unwrap();
        assert_eq!(first.dir(), packages.join("0.2.0"));
        assert_eq!(crate::Manifest::of_package(&a.tarball).unwrap(), a.manifest);
        assert_eq!(crate::Manifest::of_package(&b.dir).unwrap(), b.manifest);
        assert_eq!(second.dir(), packages.join("0.2.1"));
        assert_eq!(
            std::fs::read(second.binary()).unwrap(),
            b"binary 0.2.1".to_vec()
        );
        assert!(second
            .engines_dir()
            .join("valkey-9.1/bin/valkey-server")
            .is_file());
        let again = install(&a.dir, &packages).unwrap();
        assert_eq!(again, first, "installing the same package again is a no-op");
        let leftovers: Vec<_> = std::fs::read_dir(&packages)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_corrupt_or_incomplete_package_is_refused_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let pkg = built(root.path(), "0.2.0");
        let engine = pkg.dir.join("engines/valkey-9.1/bin/valkey-server");
        std::fs::write(&engine, b"tampered").unwrap();
        let err = Package::open(&pkg.dir).unwrap_err().to_string();
        assert!(
            err.contains("engines/valkey-9.1/bin/valkey-server does not match its sha256"),
            "{err}"
        );
        std::fs::remove_file(&engine).unwrap();
        let err = install(&pkg.dir, &root.path().join("packages"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engines/valkey-9.1/bin/valkey-server is missing"),
            "{err}"
        );
        assert!(
            !root.path().join("packages/0.2.0").exists(),
            "nothing half-installed"
        );
    }

    #[test]
    fn another_package_under_an_installed_version_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let packages = root.path().join("packages");
        install(&built(root.path(), "0.2.0").dir, &packages).unwrap();
        let other = tempfile::tempdir().unwrap();
        let rebuilt = built(other.path(), "0.2.0");
        std::fs::write(rebuilt.dir.join("bin/flotilla"), b"other").unwrap();
        let manifest = rebuilt.dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest).unwrap();
        let sum = sha256_of(&rebuilt.dir.join("bin/flotilla")).unwrap();
        let old = rebuilt.manifest.files[BINARY_PATH].clone();
        std::fs::write(&manifest, text.replace(&old, &sum)).unwrap();
        let err = install(&rebuilt.dir, &packages).unwrap_err().to_string();
        assert!(err.contains("version 0.2.0 is already installed"), "{err}");
    }
}
