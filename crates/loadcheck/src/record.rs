//! The record of a stopped load run and its verification: every acknowledged key and counter is
//! read back, and whatever is missing, different or lower is a lost acknowledged write.

use std::time::{Duration, Instant};

use crate::link::{Link, Request};
use crate::report::{Latency, Report};
use crate::stats::ClientStats;
use crate::worker::{counter_key, describe, set_key, value_for, Shared, WriterLedger};
use crate::LoadcheckError;
use std::sync::Arc;

/// How many times one verification batch is tried before the run is declared unverifiable.
const VERIFY_ATTEMPTS: u32 = 3;

/// What a stopped run saw, before verification; verifying it produces the [`Report`].
///
/// Kept separate from [`crate::LoadHandle::stop`] so a caller can act between the end of the
/// load and the read-back (tests delete keys here to prove that lost writes are caught).
pub struct LoadRecord {
    shared: Arc<Shared>,
    stats: ClientStats,
    ledgers: Vec<WriterLedger>,
    elapsed: Duration,
}

/// What the read-back found.
#[derive(Default)]
struct Verification {
    keys: u64,
    counters: u64,
    lost: u64,
    examples: Vec<String>,
}

impl Verification {
    fn lose(&mut self, count: u64, example: String, max: usize) {
        self.lost += count;
        if self.examples.len() < max {
            self.examples.push(example);
        }
    }
}

impl LoadRecord {
    pub(crate) fn new(
        shared: Arc<Shared>,
        stats: ClientStats,
        ledgers: Vec<WriterLedger>,
        elapsed: Duration,
    ) -> Self {
        Self {
            shared,
            stats,
            ledgers,
            elapsed,
        }
    }

    /// The unique key prefix of this run (every key it wrote starts with it).
    pub fn key_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Writes (SET and INCR) that the endpoint acknowledged during the run.
    pub fn acknowledged_writes(&self) -> u64 {
        self.stats.sets_acked + self.stats.incrs_acked
    }

    /// Reads back every acknowledged write and builds the report.
    ///
    /// Errors only when the endpoint cannot be read back at all; missing or wrong data is
    /// reported as lost writes, not as an error.
    pub async fn verify(&self) -> Result<Report, LoadcheckError> {
        let started = Instant::now();
        let mut link = Link::new(self.shared.info.clone(), self.shared.config.op_timeout())
            .map_err(|e| self.verify_error(0, e.to_string()))?;
        let mut found = Verification::default();
        for ledger in &self.ledgers {
            self.verify_keys(&mut link, ledger, &mut found).await?;
            self.verify_counter(&mut link, ledger, &mut found).await?;
        }
        tracing::debug!(prefix = %self.shared.prefix, took = ?started.elapsed(), lost = found.lost, "verified");
        Ok(self.report(found))
    }

    async fn verify_keys(
        &self,
        link: &mut Link,
        ledger: &WriterLedger,
        found: &mut Verification,
    ) -> Result<(), LoadcheckError> {
        let cfg = &self.shared.config;
        for batch in ledger.acked.chunks(cfg.verify_batch) {
            let keys: Vec<String> = batch
                .iter()
                .map(|&seq| set_key(&self.shared.prefix, ledger.writer, seq))
                .collect();
            let values = self.read_batch(link, &keys).await?;
            for ((key, &seq), got) in keys.iter().zip(batch).zip(values) {
                found.keys += 1;
                let want = value_for(&self.shared.prefix, ledger.writer, seq, cfg.value_size);
                if got.as_deref() != Some(want.as_slice()) {
                    let what = describe(got.as_deref());
                    found.lose(
                        1,
                        format!("key {key}: acknowledged, found {what}"),
                        cfg.max_examples,
                    );
                }
            }
        }
        Ok(())
    }

    async fn verify_counter(
        &self,
        link: &mut Link,
        ledger: &WriterLedger,
        found: &mut Verification,
    ) -> Result<(), LoadcheckError> {
        let max = self.shared.config.max_examples;
        for regression in &ledger.counter_regressions {
            found.lose(1, regression.clone(), max);
        }
        let Some(acked) = ledger.counter_acked else {
            return Ok(());
        };
        let key = counter_key(&self.shared.prefix, ledger.writer);
        let got = self.read_batch(link, std::slice::from_ref(&key)).await?;
        found.counters += 1;
        let value = got
            .first()
            .cloned()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0);
        if value < acked {
            let missing = u64::try_from(acked - value).unwrap_or(0);
            let example = format!("counter {key}: {value}, but an INCR acknowledged {acked}");
            found.lose(missing, example, max);
        }
        Ok(())
    }

    /// Pipelined GETs of `keys` (single-key commands, so safe whatever shard each key is on).
    async fn read_batch(
        &self,
        link: &mut Link,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, LoadcheckError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("GET").arg(key);
        }
        let mut last = String::new();
        for _ in 0..VERIFY_ATTEMPTS {
            match link.query(Request::Pipe(&pipe)).await {
                Ok(values) => return Ok(values),
                Err(e) => last = e.message().to_owned(),
            }
        }
        Err(self.verify_error(VERIFY_ATTEMPTS, last))
    }

    fn verify_error(&self, attempts: u32, reason: String) -> LoadcheckError {
        LoadcheckError::Verify {
            endpoint: self.shared.config.endpoint.clone(),
            attempts,
            reason,
        }
    }

    fn report(&self, found: Verification) -> Report {
        let s = &self.stats;
        let secs = self.elapsed.as_secs_f64();
        let ms = |us: u64| us as f64 / 1000.0;
        Report {
            endpoint: self.shared.config.endpoint.clone(),
            key_prefix: self.shared.prefix.clone(),
            elapsed_ms: self.elapsed.as_millis() as u64,
            ops: s.ops,
            ops_per_sec: if secs > 0.0 { s.ops as f64 / secs } else { 0.0 },
            writes_acknowledged: self.acknowledged_writes(),
            reads_ok: s.reads_ok,
            writes_outcome_unknown: s.writes_unknown,
            reconnects: s.reconnects,
            client_errors_total: s.errors.total(),
            client_errors: s.errors,
            error_examples: s.error_examples.clone(),
            keys_verified: found.keys,
            counters_verified: found.counters,
            lost_writes: found.lost,
            lost_write_examples: found.examples,
            longest_stall_ms: self.stats.longest_stall.as_secs_f64() * 1000.0,
            latency_ms: Latency {
                p50: ms(s.latency.quantile_us(0.50)),
                p99: ms(s.latency.quantile_us(0.99)),
                max: ms(s.latency.max_us()),
            },
        }
    }
}
