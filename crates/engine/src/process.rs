//! Engine processes: starting a shard detached, adopting one a previous daemon started, checking
//! it is alive, and stopping it (protocol first, then signals to that pid only).
//!
//! Engines run with `daemonize yes`: they detach into their own session and write their own
//! pidfile, so they outlive the daemon that started them, and a new daemon finds them again
//! through that pidfile ([`adopt`]).

use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::catalog::EngineCatalog;
use crate::client::{ClientOptions, EngineClient};
use crate::error::{EngineError, Result};
use crate::spec::{Persistence, ShardSpec};
use crate::EngineVersion;

/// How often process-state waits poll `/proc`.
const PROC_POLL: Duration = Duration::from_millis(20);
/// Lines of the engine log quoted in a start error.
const LOG_TAIL_LINES: usize = 25;

/// Deadlines for [`start`].
#[derive(Debug, Clone, Copy)]
pub struct StartOptions {
    /// Time allowed from launch until the engine answers PING (includes loading persisted data).
    pub ready_timeout: Duration,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// Deadlines for [`ShardProcess::stop_with`].
#[derive(Debug, Clone, Copy)]
pub struct StopOptions {
    /// Time the engine gets to exit after `SHUTDOWN` (a snapshot save happens in it).
    pub shutdown_timeout: Duration,
    /// Time it gets after SIGTERM, then again after SIGKILL.
    pub signal_timeout: Duration,
}

impl Default for StopOptions {
    fn default() -> Self {
        StopOptions {
            shutdown_timeout: Duration::from_secs(30),
            signal_timeout: Duration::from_secs(5),
        }
    }
}

/// A running engine process that serves one shard: its spec and its pid.
#[derive(Debug)]
pub struct ShardProcess {
    spec: ShardSpec,
    pid: u32,
}

/// Starts the engine for `spec` with default deadlines; see [`start_with`].
pub async fn start(catalog: &EngineCatalog, spec: &ShardSpec) -> Result<ShardProcess> {
    start_with(catalog, spec, StartOptions::default()).await
}

/// Writes the spec's config and starts the engine detached, then waits (bounded) until it
/// answers an authenticated PING and reports the pid from its pidfile.
///
/// Refuses when a live engine already owns the shard's pidfile ([`EngineError::AlreadyRunning`]);
/// a stale pidfile is removed. On failure the error quotes the end of the engine's log.
pub async fn start_with(
    catalog: &EngineCatalog,
    spec: &ShardSpec,
    options: StartOptions,
) -> Result<ShardProcess> {
    spec.validate()?;
    let binary = catalog.binary(spec.version)?;
    if let Some(running) = adopt(spec)? {
        return Err(EngineError::AlreadyRunning {
            shard_id: spec.shard_id,
            pid: running.pid,
        });
    }
    remove_if_exists(&spec.pidfile_path())?;
    let config = spec.write_config()?;
    let log_offset = file_len(&spec.log_path());
    let started = Instant::now();
    tracing::info!(shard_id = spec.shard_id, version = %spec.version, addr = %spec.addr(), "starting engine");
    let launcher_pid = launch(spec, &binary, &config, log_offset, options.ready_timeout).await?;
    let remaining = options.ready_timeout.saturating_sub(started.elapsed());
    let pid = wait_ready(spec, launcher_pid, log_offset, remaining).await?;
    tracing::info!(
        shard_id = spec.shard_id,
        pid,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "engine ready"
    );
    Ok(ShardProcess {
        spec: spec.clone(),
        pid,
    })
}

/// Finds the engine a previous daemon started for `spec`: reads the pidfile and checks that the
/// pid is alive and is that engine's server binary listening on that address and port.
///
/// `Ok(None)` means nothing runs (no pidfile, a stale one, or a pid now used by something else).
/// The exact engine version is not visible in `/proc`; [`EngineClient::server`] tells it.
pub fn adopt(spec: &ShardSpec) -> Result<Option<ShardProcess>> {
    let Some(pid) = read_pidfile(&spec.pidfile_path())? else {
        return Ok(None);
    };
    if !process_matches(pid, spec) {
        tracing::info!(
            shard_id = spec.shard_id,
            pid,
            "stale pidfile: no such engine runs"
        );
        return Ok(None);
    }
    Ok(Some(ShardProcess {
        spec: spec.clone(),
        pid,
    }))
}

impl ShardProcess {
    /// The engine's pid (from its pidfile).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What this process runs.
    pub fn spec(&self) -> &ShardSpec {
        &self.spec
    }

    /// True while the pid is alive and still is this shard's engine (not a reused pid).
    pub fn is_alive(&self) -> bool {
        process_matches(self.pid, &self.spec)
    }

    /// An authenticated client to this shard.
    pub async fn client(&self) -> Result<EngineClient> {
        EngineClient::connect(self.spec.bind, self.spec.port, &self.spec.admin_login()).await
    }

    /// Stops the engine with default deadlines; see [`stop_with`](Self::stop_with).
    pub async fn stop(&self, graceful: bool) -> Result<()> {
        self.stop_with(graceful, StopOptions::default()).await
    }

    /// Stops the engine: `SHUTDOWN` over the protocol, then waits for the pid to exit; if it
    /// does not, SIGTERM, then SIGKILL, each to this pid only and each with a bounded wait.
    ///
    /// `graceful` keeps data the persistence mode promises (snapshot: `SHUTDOWN SAVE`; AOF:
    /// `SHUTDOWN`, which fsyncs the AOF; none: nothing to save) and lets redis-7.0+ wait for
    /// lagging replicas. Not graceful: `SHUTDOWN NOSAVE` (`NOW` where supported).
    pub async fn stop_with(&self, graceful: bool, options: StopOptions) -> Result<()> {
        let started = Instant::now();
        if !self.is_alive() {
            return Ok(());
        }
        self.send_shutdown(graceful).await;
        if self.wait_exit(options.shutdown_timeout).await {
            return self.finish_stop();
        }
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            tracing::warn!(
                shard_id = self.spec.shard_id,
                pid = self.pid,
                signal,
                "engine still running, signalling"
            );
            self.signal(signal);
            if self.wait_exit(options.signal_timeout).await {
                return self.finish_stop();
            }
        }
        Err(EngineError::StopTimeout {
            pid: self.pid,
            waited_ms: started.elapsed().as_millis(),
        })
    }

    /// SIGKILL to this pid (if it is still this engine) and a bounded wait for it to go; for
    /// fault injection and for guards that must clean up without an async runtime. Returns
    /// true when this engine no longer runs. Leaves the pidfile, as a crash would.
    pub fn kill_now(&self, timeout: Duration) -> bool {
        self.signal(libc::SIGKILL);
        let deadline = Instant::now() + timeout;
        while self.is_alive() && Instant::now() < deadline {
            std::thread::sleep(PROC_POLL);
        }
        !self.is_alive()
    }

    async fn send_shutdown(&self, graceful: bool) {
        let mut cmd = redis::cmd("SHUTDOWN");
        match (graceful, self.spec.persistence) {
            (true, Persistence::Snapshot) => {
                cmd.arg("SAVE");
            }
            (true, _) => {}
            (false, _) => {
                cmd.arg("NOSAVE");
                if self.spec.version >= EngineVersion::Redis70 {
                    cmd.arg("NOW");
                }
            }
        }
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Some(Duration::from_secs(2)),
        };
        let login = self.spec.admin_login();
        let client = EngineClient::connect_with(self.spec.bind, self.spec.port, &login, options);
        // The engine closes the connection as it exits, so an I/O error is the normal answer.
        match client.await {
            Ok(client) => match client.command::<redis::Value>(&cmd).await {
                Ok(reply) => tracing::warn!(
                    pid = self.pid,
                    ?reply,
                    "SHUTDOWN answered instead of exiting"
                ),
                Err(err) => tracing::debug!(pid = self.pid, %err, "SHUTDOWN sent"),
            },
            Err(err) => tracing::warn!(pid = self.pid, %err, "cannot connect to send SHUTDOWN"),
        }
    }

    /// Polls `/proc` until the pid is gone (or a zombie), bounded by `timeout`.
    async fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !pid_running(self.pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(PROC_POLL).await;
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // Re-check identity first: never signal a pid that now belongs to someone else.
        if process_matches(self.pid, &self.spec) {
            // SAFETY: kill(2) with a positive pid only sends a signal to that one process.
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// After exit, drops a pidfile that still names this pid (a killed engine leaves it behind).
    fn finish_stop(&self) -> Result<()> {
        let path = self.spec.pidfile_path();
        if read_pidfile(&path)? == Some(self.pid) {
            remove_if_exists(&path)?;
        }
        tracing::info!(
            shard_id = self.spec.shard_id,
            pid = self.pid,
            "engine stopped"
        );
        Ok(())
    }
}

/// The umask engines run under, whoever starts them: their RDB/AOF files, logs and dirs hold
/// the database's data, readable by the node's user only.
const OWNER_ONLY_UMASK: libc::mode_t = 0o077;

/// Runs the server binary on `config`; with `daemonize yes` it forks the engine and exits.
/// Returns the launcher's pid (so its log lines can be told from the engine's).
async fn launch(
    spec: &ShardSpec,
    binary: &Path,
    config: &Path,
    log_offset: u64,
    timeout: Duration,
) -> Result<u32> {
    let mut command = tokio::process::Command::new(binary);
    command
        .arg(config)
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: umask(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::umask(OWNER_ONLY_UMASK);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| EngineError::io("run engine", binary, e))?;
    let launcher_pid = child.id().unwrap_or(0);
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(EngineError::io("wait for engine launcher", binary, e)),
        Err(_) => {
            // The launcher (our own child) hung before detaching: end it by its pid.
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe {
                libc::kill(launcher_pid as libc::pid_t, libc::SIGKILL);
            }
            return Err(start_failed(
                spec,
                "the engine did not detach in time",
                log_offset,
                "",
            ));
        }
    };
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        let reason = format!("the engine exited with {}", output.status);
        return Err(start_failed(spec, &reason, log_offset, &text));
    }
    Ok(launcher_pid)
}

/// Waits until the engine's pidfile exists and it answers an authenticated PING as that pid.
/// Fails early when the engine (known from its log lines before the pidfile exists) dies.
async fn wait_ready(
    spec: &ShardSpec,
    launcher_pid: u32,
    log_offset: u64,
    timeout: Duration,
) -> Result<u32> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no pidfile yet");
    loop {
        let from_pidfile = read_pidfile(&spec.pidfile_path())?;
        let pid = from_pidfile.or_else(|| engine_pid_from_log(spec, log_offset, launcher_pid));
        if let Some(pid) = pid {
            if !pid_running(pid) {
                return Err(start_failed(
                    spec,
                    &format!("the engine (pid {pid}) exited"),
                    log_offset,
                    "",
                ));
            }
        }
        if let Some(pid) = from_pidfile {
            match ping_as(spec, pid).await {
                Ok(()) => return Ok(pid),
                Err(err) => last = err,
            }
        }
        if Instant::now() >= deadline {
            let reason = format!("not ready within {} ms ({last})", timeout.as_millis());
            return Err(start_failed(spec, &reason, log_offset, ""));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PINGs the shard and checks that the answering process is `pid`.
async fn ping_as(spec: &ShardSpec, pid: u32) -> std::result::Result<(), String> {
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Some(Duration::from_secs(2)),
    };
    let client = EngineClient::connect_with(spec.bind, spec.port, &spec.admin_login(), options)
        .await
        .map_err(|e| e.to_string())?;
    client.ping().await.map_err(|e| e.to_string())?;
    let server = client.server().await.map_err(|e| e.to_string())?;
    if server.process_id != pid {
        return Err(format!(
            "{} is answered by pid {}, not by pid {pid} from the pidfile",
            spec.addr(),
            server.process_id
        ));
    }
    Ok(())
}

/// The pid of the newest log line (written since `offset`) that is not the launcher's.
/// Engine log lines start with `PID:ROLE `.
fn engine_pid_from_log(spec: &ShardSpec, offset: u64, launcher_pid: u32) -> Option<u32> {
    let text = read_from(&spec.log_path(), offset);
    text.lines()
        .rev()
        .filter_map(|line| line.split_once(':')?.0.parse::<u32>().ok())
        .find(|pid| *pid != launcher_pid)
}

fn start_failed(
    spec: &ShardSpec,
    reason: &str,
    log_offset: u64,
    launcher_output: &str,
) -> EngineError {
    let log_text = read_from(&spec.log_path(), log_offset);
    if let Some(line) = crate::data_files::load_failure(&log_text) {
        let files: Vec<String> = crate::data_files::present_data_files(&spec.dir)
            .iter()
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect();
        return EngineError::DataUnreadable {
            shard_id: spec.shard_id,
            dir: spec.dir.clone(),
            files: files.join(", "),
            line,
        };
    }
    let mut tail = tail_lines(&log_text, LOG_TAIL_LINES);
    if !launcher_output.trim().is_empty() {
        tail = format!("{}\n{tail}", launcher_output.trim_end());
    }
    EngineError::StartFailed {
        shard_id: spec.shard_id,
        version: spec.version.to_string(),
        reason: reason.to_string(),
        log: spec.log_path(),
        log_tail: tail,
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The file's text from byte `offset` (from 0 when the file got shorter); empty when unreadable.
fn read_from(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = if offset as usize <= bytes.len() {
        offset as usize
    } else {
        0
    };
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EngineError::io("remove stale pidfile", path, e)),
    }
}

/// The pid in a pidfile; `None` when there is none or it does not hold a positive number.
pub fn read_pidfile(path: &Path) -> Result<Option<u32>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse::<u32>().ok().filter(|pid| *pid > 0)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io("read pidfile", path, e)),
    }
}

/// Pids of the live redis/valkey engines whose pidfiles are in `shards_dir/*/engine.pid`: what
/// a node (or a test, or `flotilla dev down`) must stop to take its shards down. A pidfile whose
/// pid now belongs to another program is ignored.
pub fn running_engine_pids(shards_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(shards_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            read_pidfile(&entry.path().join(crate::spec::PID_FILE))
                .ok()
                .flatten()
        })
        .filter(|pid| pid_running(*pid) && is_engine_process(*pid))
        .collect()
}

/// Pids of the live redis/valkey engines whose working directory is inside `dir`, pidfile or
/// not: for a test (or a benchmark) that must leave no engine behind, including one its
/// daemon started just before it was killed, before the pidfile was written.
pub fn engines_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .filter(|pid| is_engine_process(*pid))
        .collect()
}

fn is_engine_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
        let title = String::from_utf8_lossy(&raw);
        title.contains("redis-server") || title.contains("valkey-server")
    })
}

/// True when `/proc/PID` exists and the process is not a zombie (an exited engine that no one
/// reaped yet counts as gone). A process whose main thread exited while other threads are
/// still being torn down (after SIGKILL) still runs: those threads hold its open files and
/// listening sockets until the last one is gone.
pub fn pid_running(pid: u32) -> bool {
    match thread_state(&format!("/proc/{pid}/stat")) {
        Some('Z' | 'X') => other_threads_alive(pid),
        Some(_) => true,
        None => false,
    }
}

/// The state letter in a `/proc/.../stat` file, if it can be read.
fn thread_state(path: &str) -> Option<char> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The state follows the last ')' (the command name may itself contain parentheses).
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
}

/// Whether a thread of `pid` other than its main thread has not finished exiting.
fn other_threads_alive(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let tid = task.file_name();
        tid.to_str() != Some(pid.to_string().as_str())
            && !matches!(
                thread_state(&format!("/proc/{pid}/task/{}/stat", tid.to_string_lossy())),
                Some('Z' | 'X') | None
            )
    })
}

/// True when `pid` runs and is `spec`'s engine: its executable is the version's server binary
/// and its process title (which engines set to `<binary> <bind>:<port>`) names the shard's
/// address.
fn process_matches(pid: u32, spec: &ShardSpec) -> bool {
    if !pid_running(pid) {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let title = String::from_utf8_lossy(&raw).replace('\0', " ");
    let mut words = title.split_whitespace();
    let program_ok = words
        .next()
        .and_then(|w| Path::new(w).file_name())
        .is_some_and(|name| name == spec.version.server_binary())
        || exe_name(pid).as_deref() == Some(spec.version.server_binary());
    program_ok && words.any(|w| w == listen_word(spec.bind, spec.port))
}

/// How the process title writes the listen address.
fn listen_word(bind: IpAddr, port: u16) -> String {
    match bind {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    }
}

/// The executable's file name, without the ` (deleted)` the kernel adds after a package swap.
fn exe_name(pid: u32) -> Option<String> {
    let target = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    Some(name.trim_end_matches(" (deleted)").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_running_and_not_an_engine() {
        let me = std::process::id();
        assert!(pid_running(me));
        let spec = ShardSpec {
            shard_id: 1,
            version: EngineVersion::Redis62,
            bind: "127.0.0.1".parse().unwrap(),
            port: 20000,
            password: "x".into(),
            users: None,
            legacy: false,
            maxmemory_bytes: 0,
            eviction: Default::default(),
            persistence: Persistence::None,
            dir: "/tmp".into(),
            replica_of: None,
        };
        assert!(!process_matches(me, &spec));
    }

    #[test]
    fn pidfile_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        assert_eq!(read_pidfile(&path).unwrap(), None);
        std::fs::write(&path, "1234\n").unwrap();
        assert_eq!(read_pidfile(&path).unwrap(), Some(1234));
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(read_pidfile(&path).unwrap(), None);
        std::fs::write(&path, "0").unwrap();
        assert_eq!(read_pidfile(&path).unwrap(), None);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }

    #[test]
    fn listen_word_brackets_ipv6() {
        assert_eq!(
            listen_word("127.0.0.11".parse().unwrap(), 20001),
            "127.0.0.11:20001"
        );
        assert_eq!(listen_word("::1".parse().unwrap(), 20001), "[::1]:20001");
    }
}
