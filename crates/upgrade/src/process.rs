//! How a running daemon was started, so its successor starts the same way from a new package.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The argument that names the package a daemon runs from.
const PACKAGE_DIR_ARG: &str = "--package-dir";
/// The argument that gives a new daemon the handover channel's descriptor.
pub const HANDOVER_FD_ARG: &str = "--handover-fd";

/// Why a daemon's start could not be read or repeated.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `/proc/PID/...` could not be read.
    #[error("reading how daemon pid {pid} was started ({what}): {source}; is it still running, and does this user own it?")]
    Inspect {
        /// The daemon's pid.
        pid: u32,
        /// What was being read.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon's command line is not `... node start ...`.
    #[error("pid {pid} is not a flotilla node daemon (its command line is {cmdline:?})")]
    NotADaemon {
        /// The pid.
        pid: u32,
        /// Its command line.
        cmdline: Vec<String>,
    },
    /// The successor's log file could not be opened.
    #[error("opening the daemon's log {}: {source}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A running daemon's command line, working directory, environment and log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonProcess {
    /// Its pid.
    pub pid: u32,
    /// Its arguments after the program name (`node start --addr ... --data-dir ...`).
    pub args: Vec<OsString>,
    /// Its working directory (relative paths in `args` resolve against it).
    pub cwd: PathBuf,
    /// Its environment.
    pub env: Vec<(OsString, OsString)>,
    /// The file its standard error goes to, when it is a file.
    pub log: Option<PathBuf>,
}

impl DaemonProcess {
    /// This process: the old daemon starting its successor.
    pub fn current() -> Result<DaemonProcess, ProcessError> {
        DaemonProcess::inspect(std::process::id())
    }

    /// The daemon with `pid`: the CLI restarting a daemon it did not start (the fallback).
    pub fn inspect(pid: u32) -> Result<DaemonProcess, ProcessError> {
        let read =
            |what: &'static str| {
                std::fs::read(format!("/proc/{pid}/{what}"))
                    .map_err(|source| ProcessError::Inspect { pid, what, source })
            };
        let cmdline = split_nul(&read("cmdline")?);
        let env = split_nul(&read("environ")?)
            .into_iter()
            .filter_map(|pair| {
                let bytes = pair.as_bytes();
                let eq = bytes.iter().position(|b| *b == b'=')?;
                Some((
                    OsStr::from_bytes(&bytes[..eq]).to_owned(),
                    OsStr::from_bytes(&bytes[eq + 1..]).to_owned(),
                ))
            })
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(|source| {
            ProcessError::Inspect {
                pid,
                what: "cwd",
                source,
            }
        })?;
        let log = std::fs::read_link(format!("/proc/{pid}/fd/2"))
            .ok()
            .filter(|path| path.is_absolute() && path.is_file());
        let is_daemon = cmdline
            .windows(2)
            .any(|w| w[0] == "node" && w[1] == "start");
        if !is_daemon {
            return Err(ProcessError::NotADaemon {
                pid,
                cmdline: cmdline
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
            });
        }
        Ok(DaemonProcess {
            pid,
            args: cmdline.into_iter().skip(1).collect(),
            cwd,
            env,
            log,
        })
    }

    /// The value of option `name` (`--data-dir DIR` or `--data-dir=DIR`), if given.
    pub fn arg_value(&self, name: &str) -> Option<&OsStr> {
        let prefix = format!("{name}=");
        self.args.iter().enumerate().find_map(|(i, arg)| {
            if arg == name {
                self.args.get(i + 1).map(OsString::as_os_str)
            } else {
                arg.as_bytes()
                    .strip_prefix(prefix.as_bytes())
                    .map(OsStr::from_bytes)
            }
        })
    }

    /// The data dir, resolved against the daemon's working directory.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.arg_value("--data-dir").map(|dir| self.cwd.join(dir))
    }

    /// The successor's arguments: the same, running from `package_dir`, without the
    /// predecessor's handover descriptor.
    pub fn successor_args(&self, package_dir: &Path) -> Vec<OsString> {
        let mut args = Vec::with_capacity(self.args.len() + 2);
        let mut skip_value = false;
        for arg in &self.args {
            if std::mem::take(&mut skip_value) {
                continue;
            }
            let bytes = arg.as_bytes();
            let replaced = [PACKAGE_DIR_ARG, HANDOVER_FD_ARG].iter().find(|name| {
                bytes == name.as_bytes() || bytes.starts_with(format!("{name}=").as_bytes())
            });
            match replaced {
                Some(name) => skip_value = bytes == name.as_bytes(),
                None => args.push(arg.clone()),
            }
        }
        args.push(PACKAGE_DIR_ARG.into());
        args.push(package_dir.as_os_str().to_owned());
        args
    }

    /// A command that starts `binary` as this daemon's successor: the same arguments (running
    /// from `package_dir`), directory and environment, its output appended to the same log
    /// (`fallback_log` when the daemon logs elsewhere than a file), in a process group of its
    /// own so that signals meant for the starter's group do not reach it.
    pub fn successor(
        &self,
        binary: &Path,
        package_dir: &Path,
        fallback_log: &Path,
    ) -> Result<Command, ProcessError> {
        let log_path = self
            .log
            .clone()
            .unwrap_or_else(|| fallback_log.to_path_buf());
        let open = || {
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|source| ProcessError::Log {
                    path: log_path.clone(),
                    source,
                })
        };
        let mut command = Command::new(binary);
        command
            .args(self.successor_args(package_dir))
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .process_group(0);
        Ok(command)
    }
}

fn split_nul(raw: &[u8]) -> Vec<OsString> {
    raw.split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| OsStr::from_bytes(part).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(args: &[&str]) -> DaemonProcess {
        DaemonProcess {
            pid: 1,
            args: args.iter().map(OsString::from).collect(),
            cwd: PathBuf::from("/srv"),
            env: Vec::new(),
            log: None,
        }
    }

    #[test]
    fn the_successor_runs_from_the_new_package_without_the_old_handover_fd() {
        let old = daemon(&[
            "node",
            "start",
            "--addr",
            "127.0.0.11",
            "--data-dir",
            "node-1",
            "--package-dir=/opt/p/0.2.0",
            "--handover-fd",
            "3",
        ]);
        let args = old.successor_args(Path::new("/opt/p/0.2.1"));
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "node",
                "start",
                "--addr",
                "127.0.0.11",
                "--data-dir",
                "node-1",
                "--package-dir",
                "/opt/p/0.2.1"
            ]
        );
        assert_eq!(old.data_dir(), Some(PathBuf::from("/srv/node-1")));
        assert_eq!(
            old.arg_value("--package-dir"),
            Some(OsStr::new("/opt/p/0.2.0"))
        );
    }

    #[test]
    fn a_process_that_is_not_a_daemon_is_refused_by_name() {
        let err = DaemonProcess::current().unwrap_err().to_string();
        assert!(err.contains("is not a flotilla node daemon"), "{err}");
    }
}
