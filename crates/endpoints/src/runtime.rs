//! The runtime the endpoints' data path (client sessions, shard connections) runs on, apart
//! from the daemon's own.
//!
//! Why: at one request per round trip the proxy's cost per request is dominated by waking
//! tasks, and on a runtime with more worker threads than the proxy keeps busy, a wake often
//! unparks an idle worker (a futex and a context switch) that finds nothing to do. `bench/proxy`
//! measured 14.6 us of daemon CPU per request with the daemon's runtime (two workers on two
//! cores) against 8.9 us with one worker, and 0.5 against 0.1 context switches per request. The
//! engines (one thread each) and the clients need the other cores anyway, so the proxy gets
//! half of them by default.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

/// Environment variable setting how many worker threads the data path runs on (a positive
/// integer); by default half the machine's cores, at least one.
pub(crate) const PROXY_THREADS_ENV: &str = "FLOTILLA_PROXY_THREADS";

/// How many worker threads the data path runs on: [`PROXY_THREADS_ENV`] when it holds a
/// positive integer, else half the available cores, at least one.
pub(crate) fn proxy_threads() -> usize {
    let configured = std::env::var(PROXY_THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    configured.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / 2).max(1)
    })
}

/// The data path's runtime, started on first use and kept for the life of the process; the
/// caller's runtime if it cannot be started.
pub(crate) fn data_path() -> Handle {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        let threads = proxy_threads();
        match Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("flotilla-proxy")
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                tracing::info!(threads, "proxy runtime started");
                Some(runtime)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the proxy runtime; the endpoints share the daemon's");
                None
            }
        }
    });
    runtime
        .as_ref()
        .map_or_else(Handle::current, |runtime| runtime.handle().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_one_thread() {
        assert!(proxy_threads() >= 1);
    }
}
