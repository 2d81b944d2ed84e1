//! Flotilla's lost-write and stall checker.
//!
//! Every upgrade test, benchmark and the demo runs this load through a database endpoint while
//! the cluster changes underneath, then asks two questions: did any client see an error or a long
//! stall, and is every acknowledged write still there? This crate owns the load clients
//! (writers and readers), the stall and latency measurement, and the read-back verification.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flotilla_loadcheck::LoadcheckError> {
//! let load = flotilla_loadcheck::start(flotilla_loadcheck::Config::for_endpoint("127.0.0.11:12000"))?;
//! // ... upgrade the database underneath ...
//! let report = load.stop().await?;
//! assert!(report.is_clean(), "{report}");
//! # Ok(()) }
//! ```
//!
//! Writers SET unique keys `{prefix}:w{n}:{seq}` (the value names the writer and sequence) and
//! INCR a counter `{prefix}:c{n}`; a write counts as acknowledged only on an OK / integer reply.
//! A write that failed in any way has an unknown outcome: it is counted, never retried, and not
//! verified. Readers GET recently acknowledged keys and check the value. An INCR reply not
//! exactly one above the writer's previous one, with no failed INCR in between, counts as a
//! lost write (an increment lost, or applied twice by a resend).

mod config;
mod error;
mod histogram;
mod link;
mod record;
mod report;
mod stats;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;
pub use error::LoadcheckError;
pub use record::LoadRecord;
pub use report::{Latency, Report};
pub use stats::ClientErrors;

use stats::ClientStats;
use worker::{Shared, WriterLedger};

type WriterTask = JoinHandle<Result<(ClientStats, WriterLedger), redis::RedisError>>;
type ReaderTask = JoinHandle<Result<ClientStats, redis::RedisError>>;

/// A load run in progress; stop it to get the verified [`Report`].
///
/// Dropping it without stopping makes the clients stop after their current operation, and
/// the record of acknowledged writes is lost.
pub struct LoadHandle {
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    writers: Vec<WriterTask>,
    readers: Vec<ReaderTask>,
    started: Instant,
}

/// Counts while the load is running, so callers can wait for progress instead of sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Completed operations so far.
    pub ops: u64,
    /// Client errors so far.
    pub client_errors: u64,
    /// Time since the load started.
    pub elapsed: Duration,
}

/// Starts the load clients in the background on the current tokio runtime.
///
/// Fails only on an invalid configuration; an unreachable endpoint shows up as `connect`
/// client errors in the report, as it would for an application.
pub fn start(config: Config) -> Result<LoadHandle, LoadcheckError> {
    let info = config.validate()?;
    let prefix = format!("{}:{}", config.key_prefix, config::unique_run_id());
    let shared = Arc::new(Shared::new(config, prefix, info));
    let (stop, stop_rx) = watch::channel(false);
    let writers = (0..shared.config.writers)
        .map(|n| tokio::spawn(worker::writer(shared.clone(), stop_rx.clone(), n)))
        .collect();
    let readers = (0..shared.config.readers)
        .map(|n| tokio::spawn(worker::reader(shared.clone(), stop_rx.clone(), n)))
        .collect();
    tracing::info!(endpoint = %shared.config.endpoint, prefix = %shared.prefix, "loadcheck started");
    Ok(LoadHandle {
        stop,
        shared,
        writers,
        readers,
        started: Instant::now(),
    })
}

impl LoadHandle {
    /// The unique key prefix of this run.
    pub fn key_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The configuration this run uses.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Counts so far.
    pub fn progress(&self) -> Progress {
        Progress {
            ops: self.shared.ops.load(Ordering::Relaxed),
            client_errors: self.shared.errors.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        }
    }

    /// Waits until at least `ops` operations have completed; false if `timeout` passes first.
    pub async fn wait_for_ops(&self, ops: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.progress().ops < ops {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Stops the clients (each finishes its current operation) and returns what they saw,
    /// without verifying yet.
    pub async fn stop_load(self) -> Result<LoadRecord, LoadcheckError> {
        // Receivers live in the tasks; a send error only means they have all finished.
        let _ = self.stop.send(true);
        let mut stats = ClientStats::default();
        let max = self.shared.config.max_examples;
        let mut ledgers = Vec::with_capacity(self.writers.len());
        for task in self.writers {
            let (s, ledger) = task.await?.map_err(|e| invalid_client(&e))?;
            stats.merge(&s, max);
            ledgers.push(ledger);
        }
        for task in self.readers {
            stats.merge(&task.await?.map_err(|e| invalid_client(&e))?, max);
        }
        let elapsed = self.started.elapsed();
        Ok(LoadRecord::new(self.shared, stats, ledgers, elapsed))
    }

    /// Stops the clients and verifies every acknowledged write: the usual end of a test.
    pub async fn stop(self) -> Result<Report, LoadcheckError> {
        self.stop_load().await?.verify().await
    }
}

fn invalid_client(e: &redis::RedisError) -> LoadcheckError {
    LoadcheckError::InvalidConfig(format!("cannot create a client: {e}"))
}

/// Runs a load check for the configured duration (or until Ctrl-C) and returns its report.
///
/// This is what the `flotilla loadcheck` command runs.
pub async fn run(config: Config) -> Result<Report, LoadcheckError> {
    let handle = start(config)?;
    match handle.config().duration() {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            // An error here means no signal handler could be installed; stop rather than hang.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    handle.stop().await
}
