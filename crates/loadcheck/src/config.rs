//! The load check's configuration: what to connect to, how many clients, how hard to push.
//!
//! Serialized with serde so the CLI and test harnesses can pass it around; every field has a
//! default so `{"endpoint": "127.0.0.1:12000"}` is a complete configuration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use serde::{Deserialize, Serialize};

use crate::LoadcheckError;

/// Everything a load check run needs; durations are in milliseconds so the JSON stays plain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Database endpoint as `host:port` (a Flotilla proxy endpoint, or a plain engine in tests).
    pub endpoint: String,
    /// Optional username for `AUTH` (ACL user); `None` means the default user.
    pub username: Option<String>,
    /// Optional password for `AUTH`.
    pub password: Option<String>,
    /// How long to run; `None` runs until stopped (or Ctrl-C in [`crate::run`]).
    pub duration_ms: Option<u64>,
    /// Number of writer clients (SET of unique keys and INCR of a per-writer counter).
    pub writers: u32,
    /// Number of reader clients (GET of recently acknowledged keys).
    pub readers: u32,
    /// Base of the key prefix; a unique run id is always appended so runs never mix.
    pub key_prefix: String,
    /// Per-operation timeout; an operation past it has an unknown outcome.
    pub op_timeout_ms: u64,
    /// Minimum size of each SET value in bytes (the writer/seq header is never truncated).
    pub value_size: usize,
    /// Optional limit of operations per second for each client.
    pub rate_per_client: Option<u32>,
    /// Keys per pipelined batch when reading back acknowledged writes.
    pub verify_batch: usize,
    /// How many example keys to keep for each kind of problem in the report.
    pub max_examples: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            endpoint: "127.0.0.1:6379".to_owned(),
            username: None,
            password: None,
            duration_ms: None,
            writers: 2,
            readers: 2,
            key_prefix: "loadcheck".to_owned(),
            op_timeout_ms: 2_000,
            value_size: 64,
            rate_per_client: None,
            verify_batch: 100,
            max_examples: 5,
        }
    }
}

impl Config {
    /// A default configuration aimed at `endpoint`; the common case for tests and the CLI.
    pub fn for_endpoint(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            ..Self::default()
        }
    }

    /// The per-operation timeout as a [`Duration`].
    pub fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.op_timeout_ms)
    }

    /// The run duration as a [`Duration`], if bounded.
    pub fn duration(&self) -> Option<Duration> {
        self.duration_ms.map(Duration::from_millis)
    }

    /// Checks the configuration and returns the connection info it describes.
    pub(crate) fn validate(&self) -> Result<ConnectionInfo, LoadcheckError> {
        let invalid = |msg: String| Err(LoadcheckError::InvalidConfig(msg));
        if self.writers == 0 {
            return invalid("writers must be at least 1 (nothing to verify otherwise)".into());
        }
        if self.op_timeout_ms == 0 {
            return invalid("op_timeout_ms must be positive".into());
        }
        if self.verify_batch == 0 {
            return invalid("verify_batch must be positive".into());
        }
        if self.rate_per_client == Some(0) {
            return invalid("rate_per_client must be positive when set".into());
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return invalid(format!(
                "key_prefix {:?} must be non-empty without spaces",
                self.key_prefix
            ));
        }
        self.connection_info()
    }

    fn connection_info(&self) -> Result<ConnectionInfo, LoadcheckError> {
        let (host, port) = parse_endpoint(&self.endpoint)?;
        let mut redis = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(user) = &self.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password);
        }
        let info = ConnectionAddr::Tcp(host, port)
            .into_connection_info()
            .map_err(|e| LoadcheckError::InvalidConfig(e.to_string()))?;
        Ok(info.set_redis_settings(redis))
    }
}

/// Splits `host:port` (or `[v6]:port`) into its parts.
fn parse_endpoint(endpoint: &str) -> Result<(String, u16), LoadcheckError> {
    let bad = || LoadcheckError::InvalidConfig(format!("endpoint {endpoint:?} is not host:port"));
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// A run id unique within this process and, by time and pid, across processes.
pub(crate) fn unique_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{millis}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_json_takes_defaults() {
        let c: Config = serde_json::from_str(r#"{"endpoint":"127.0.0.1:12000"}"#).unwrap();
        assert_eq!(c.writers, 2);
        assert_eq!(c.readers, 2);
        assert_eq!(c.op_timeout(), Duration::from_secs(2));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for e in ["localhost", "host:", ":80", "h:0", "h:99999"] {
            assert!(Config::for_endpoint(e).validate().is_err(), "{e} accepted");
        }
        assert_eq!(parse_endpoint("[::1]:7").unwrap(), ("::1".to_owned(), 7));
    }

    #[test]
    fn run_ids_differ() {
        assert_ne!(unique_run_id(), unique_run_id());
    }
}
