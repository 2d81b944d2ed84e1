//! `flotilla package build`: a package folder and its `.tar.gz` from a binary and engines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_model::EngineVersion;
use semver::{Version, VersionReq};

use crate::manifest::{sha256_of, BINARY_PATH, ENGINES_DIR, MANIFEST_FILE};
use crate::{Manifest, PackageError, Result};

/// What to put in a package.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The `flotilla` binary to package.
    pub binary: PathBuf,
    /// The package's version.
    pub version: Version,
    /// A folder holding `<engine>/bin/<server>` (and any libraries next to it) per engine.
    pub engines_dir: PathBuf,
    /// The engines to bundle; every engine found in `engines_dir` when empty.
    pub engines: Vec<EngineVersion>,
    /// The installed versions the package may be installed over.
    pub upgrade_from: VersionReq,
    /// The engine new databases get by default.
    pub default_engine: EngineVersion,
    /// The operating systems the package supports (`debian-12`, ...).
    pub supported_os: Vec<String>,
    /// The handover protocol the binary speaks (0: none).
    pub handover_protocol: u32,
    /// Where the package folder and tarball are written.
    pub out_dir: PathBuf,
}

/// Where a build wrote the package.
#[derive(Debug, Clone)]
pub struct Built {
    /// The package folder, `OUT/flotilla-<version>/`.
    pub dir: PathBuf,
    /// The same as a tarball, `OUT/flotilla-<version>.tar.gz`.
    pub tarball: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Builds a package: copies the binary and engines into `OUT/flotilla-<version>/`, writes the
/// manifest with the checksum of every file, and packs the folder into a tarball beside it. An
/// existing folder of the same name is replaced.
pub fn build(spec: &BuildSpec) -> Result<Built> {
    let name = format!("flotilla-{}", spec.version);
    let dir = spec.out_dir.join(&name);
    let staging = spec.out_dir.join(format!(".{name}.partial"));
    remove_dir_if_present(&staging)?;
    let engines = engines_to_bundle(spec)?;

    copy_file(&spec.binary, &staging.join(BINARY_PATH))?;
    let files = BTreeMap::from([(BINARY_PATH.to_string(), sha256_of(&spec.binary)?)]);
    let mut bundled = BTreeMap::new();
    for engine in engines {
        let from = spec.engines_dir.join(engine.as_str());
        let to = staging.join(ENGINES_DIR).join(engine.as_str());
        bundled.insert(engine, copy_tree(&from, &to)?);
    }
    let manifest = Manifest {
        version: spec.version.clone(),
        upgrade_from: spec.upgrade_from.clone(),
        default_engine: spec.default_engine,
        supported_os: spec.supported_os.clone(),
        handover_protocol: spec.handover_protocol,
        files,
        engines: bundled,
    };
    if !manifest.bundles(spec.default_engine) {
        return Err(PackageError::Invalid(format!(
            "--default-engine {}: that engine is not bundled; bundle it or pick one of the bundled engines",
            spec.default_engine
        )));
    }
    let manifest_path = staging.join(MANIFEST_FILE);
    std::fs::write(&manifest_path, manifest.to_toml()).map_err(PackageError::io(&manifest_path))?;
    remove_dir_if_present(&dir)?;
    std::fs::rename(&staging, &dir).map_err(PackageError::io(&dir))?;
    let tarball = spec.out_dir.join(format!("{name}.tar.gz"));
    pack(&dir, &name, &tarball)?;
    Ok(Built {
        dir,
        tarball,
        manifest,
    })
}

/// The engines a build bundles: those asked for (each must be present), or all present.
fn engines_to_bundle(spec: &BuildSpec) -> Result<Vec<EngineVersion>> {
    let present = |e: &EngineVersion| spec.engines_dir.join(e.as_str()).join("bin").is_dir();
    if spec.engines.is_empty() {
        let found: Vec<EngineVersion> = EngineVersion::ALL.into_iter().filter(present).collect();
        if found.is_empty() {
            return Err(PackageError::Invalid(format!(
                "--engines {}: no engine found there (expected <engine>/bin/<server>); run scripts/fetch-engines or name another folder",
                spec.engines_dir.display()
            )));
        }
        return Ok(found);
    }
    for engine in &spec.engines {
        if !present(engine) {
            return Err(PackageError::Invalid(format!(
                "engine {engine} is not in {} (expected {engine}/bin/); run scripts/fetch-engines",
                spec.engines_dir.display()
            )));
        }
    }
    Ok(spec.engines.clone())
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PackageError::io(dir)(e)),
        _ => Ok(()),
    }
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(PackageError::io(parent))?;
    }
    std::fs::copy(from, to).map_err(PackageError::io(from))?;
    Ok(())
}

/// Copies the regular files under `from` to `to`; returns their checksums by relative path.
/// Files an engine fetch leaves for bookkeeping (`source.txt`, `version.txt`) are copied too:
/// they say where the engine came from.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<BTreeMap<String, String>> {
    let mut sums = BTreeMap::new();
    for relative in files_under(from)? {
        let source = from.join(&relative);
        copy_file(&source, &to.join(&relative))?;
        sums.insert(relative, sha256_of(&source)?);
    }
    Ok(sums)
}

/// The regular files under `root`, as `/`-separated paths relative to it, sorted.
pub(crate) fn files_under(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        for entry in std::fs::read_dir(&dir).map_err(PackageError::io(&dir))? {
            let entry = entry.map_err(PackageError::io(&dir))?;
            let kind = entry.file_type().map_err(PackageError::io(entry.path()))?;
            let path = relative.join(entry.file_name());
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                found.push(path.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Packs `dir` into `tarball` under the top folder `name`.
fn pack(dir: &Path, name: &str, tarball: &Path) -> Result<()> {
    let partial = tarball.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(PackageError::io(&partial))?;
    let encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut archive = tar::Builder::new(encoder);
    archive
        .append_dir_all(name, dir)
        .map_err(PackageError::io(dir))?;
    let encoder = archive.into_inner().map_err(PackageError::io(&partial))?;
    encoder.finish().map_err(PackageError::io(&partial))?;
    std::fs::rename(&partial, tarball).map_err(PackageError::io(tarball))
}
