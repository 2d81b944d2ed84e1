//! The fallback of an in-place upgrade for a daemon that cannot hand over (release 0.1.0 has
//! no handover and no upgrade API): run on the node's machine, it installs the package, stops
//! the daemon and starts the new binary exactly as the old one was started, from the package.
//! The new daemon adopts the running shards (no engine restarts); the node's client
//! connections close, and the command says so.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{DaemonProcess, UpgradeRecord};

/// How long the old daemon gets to stop after SIGTERM before it is killed (its shards keep
/// running either way).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The pid of the process listening on `addr:port` on this machine (a node's REST API tells
/// which daemon serves the node), if this user can see it.
pub fn daemon_serving(addr: IpAddr, port: u16) -> Option<u32> {
    let owners = flotilla_checks::socket_owners();
    flotilla_checks::listening_sockets()
        .into_iter()
        .find(|l| l.port == port && (l.addr == addr || l.addr.is_unspecified()))
        .and_then(|l| owners.get(&l.inode).map(|(pid, _)| *pid))
}

/// What the restart did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    /// The old daemon's pid.
    pub old_pid: u32,
    /// The new daemon's pid.
    pub new_pid: u32,
    /// The installed package's folder.
    pub package_dir: PathBuf,
    /// The node's data dir.
    pub data_dir: PathBuf,
}

/// The release that served the REST API only over plain HTTP, on 8080 without a flag.
const PLAIN_HTTP_RELEASE: &str = "0.1.0";

/// Whether the daemon `process` (running `version`) served plain HTTP on 8080 without saying
/// so in its arguments: its successor must be told to keep serving it.
fn served_plain_http_implicitly(process: &DaemonProcess, version: &str) -> bool {
    version == PLAIN_HTTP_RELEASE
        && process.arg_value("--rest-port").is_none()
        && process.arg_value("--http-port").is_none()
}

/// Stops the daemon `pid` and starts the package at `source` in its place (see the module).
pub async fn restart_daemon(
    pid: u32,
    source: &Path,
    from_version: &str,
) -> Result<Restarted, String> {
    let process = DaemonProcess::inspect(pid).map_err(|e| e.to_string())?;
    let data_dir = process
        .data_dir()
        .ok_or_else(|| format!("daemon pid {pid} was started without --data-dir"))?;
    let packages_dir = process
        .arg_value("--package-dir")
        .map(|dir| process.cwd.join(dir))
        .and_then(|dir| dir.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| data_dir.join("packages"));
    let package = flotilla_package::install(source, &packages_dir)
        .map_err(|e| format!("package {}: {e}", source.display()))?;
    let to_version = package.manifest().version.to_string();
    let path = data_dir.join(flotilla_api::UPGRADE_STATUS_FILE);
    let mut record = UpgradeRecord::start(&path, from_version, &to_version, "restart");
    record.update(|s| s.old_pid = pid);
    let log = data_dir.join("flotilla.log");
    let mut command = process
        .successor(&package.binary(), package.dir(), &log)
        .map_err(|e| e.to_string())?;
    if served_plain_http_implicitly(&process, from_version) {
        // 0.1.0 served plain HTTP on 8080 without a flag; the node keeps serving it.
        command.args(["--http-port", "8080"]);
    }
    record.step("stop");
    stop(pid).await;
    record.update(|s| s.store_stopped_at_ms = flotilla_model::now_millis());
    record.step("start");
    let child = command
        .spawn()
        .map_err(|e| format!("starting {}: {e}", package.binary().display()))?;
    record.update(|s| s.new_pid = child.id());
    record.done();
    Ok(Restarted {
        old_pid: pid,
        new_pid: child.id(),
        package_dir: package.dir().to_path_buf(),
        data_dir,
    })
}

/// SIGTERM, wait for the process to be gone, SIGKILL after [`STOP_TIMEOUT`].
async fn stop(pid: u32) {
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    while flotilla_engine::pid_running(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if flotilla_engine::pid_running(pid) {
        tracing::warn!(
            pid,
            "the old daemon did not stop within {STOP_TIMEOUT:?}; killing it"
        );
        let _ = kill(target, Signal::SIGKILL);
        crate::wait_gone(pid).await;
    }
}
