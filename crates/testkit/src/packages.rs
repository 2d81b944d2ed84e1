//! Flotilla packages for upgrade tests: the binary under test packaged as two versions that
//! both know the handover, and the real previous release, built from its recorded commit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::assert_success;

/// The environment variable naming the release 0.1.0 binary to test upgrades from (otherwise
/// `scripts/fetch-release 0.1.0` builds it).
pub const OLD_BIN_ENV: &str = "FLOTILLA_OLD_BIN";

/// Packages built for one test process, on demand, once each.
pub struct Packages {
    bin: PathBuf,
    dir: tempfile::TempDir,
    built: Mutex<Vec<String>>,
}

impl Packages {
    /// This test process's packages of `bin`, made once and shared by every test of the
    /// file (a package is built once per version).
    pub fn shared(bin: &Path) -> &'static Packages {
        static PACKAGES: std::sync::OnceLock<Packages> = std::sync::OnceLock::new();
        PACKAGES.get_or_init(|| Packages::new(bin))
    }

    /// The binary under test as 0.2.0 and as 0.2.1: two releases that both know the handover.
    pub fn current_pair(&self) -> (PathBuf, PathBuf) {
        (self.current("0.2.0", &[]), self.current("0.2.1", &[]))
    }

    /// Packages of `bin` (the binary under test) kept in a temp dir for this test process.
    pub fn new(bin: &Path) -> Packages {
        remove_stale_package_dirs();
        Packages {
            bin: bin.to_path_buf(),
            dir: tempfile::Builder::new()
                .prefix(&format!("{PACKAGES_PREFIX}{}-", std::process::id()))
                .tempdir()
                .expect("temp dir"),
            built: Mutex::new(Vec::new()),
        }
    }

    /// The binary under test packaged as `version` (a folder; its `.tar.gz` sits beside it),
    /// with extra `flotilla package build` arguments.
    pub fn current(&self, version: &str, extra: &[&str]) -> PathBuf {
        let mut args = vec!["--version", version];
        args.extend_from_slice(extra);
        self.build(version, &self.bin, &args)
    }

    /// Release 0.1.0, the real previous release: [`OLD_BIN_ENV`] or the binary
    /// `scripts/fetch-release 0.1.0` builds from its recorded commit, packaged with no
    /// handover.
    pub fn release_0_1_0(&self) -> PathBuf {
        let old = old_release_binary();
        let old = old.to_string_lossy().into_owned();
        let args = [
            "--version",
            "0.1.0",
            "--binary",
            &old,
            "--handover-protocol",
            "0",
            "--upgrade-from",
            "<0.1.0",
        ];
        self.build("0.1.0", &self.bin, &args)
    }

    fn build(&self, version: &str, bin: &Path, args: &[&str]) -> PathBuf {
        let folder = self.dir.path().join(format!("flotilla-{version}"));
        let mut built = self.built.lock().expect("packages lock");
        if built.iter().any(|v| v == version) {
            return folder;
        }
        let out = self.dir.path().to_string_lossy().into_owned();
        let output = Command::new(bin)
            .args(["package", "build", "--out", &out])
            .args(args)
            .output()
            .expect("running flotilla package build");
        assert_success(&output, "flotilla package build");
        built.push(version.to_string());
        folder
    }
}

/// The release 0.1.0 binary; fails loudly with the command that builds it.
pub fn old_release_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os(OLD_BIN_ENV) {
        return PathBuf::from(bin);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("the workspace root");
    let output = Command::new(repo.join("scripts/fetch-release"))
        .arg("0.1.0")
        .current_dir(repo)
        .output()
        .expect("running scripts/fetch-release 0.1.0");
    assert!(
        output.status.success(),
        "release 0.1.0 is needed for this upgrade test and could not be built: run `scripts/fetch-release 0.1.0` (or set {OLD_BIN_ENV})\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    PathBuf::from(path)
}

/// The temp dirs packages are built in: `flotilla-packages-PID-XXXX`. A test binary keeps its
/// [`Packages`] in a static, never dropped, so its dir outlives it.
const PACKAGES_PREFIX: &str = "flotilla-packages-";

/// Removes the package dirs of test processes that ended (hundreds of MB each), so that runs
/// do not fill the disk.
fn remove_stale_package_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(PACKAGES_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !crate::process_alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
