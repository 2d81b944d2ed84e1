//! The load clients: writers (SET of unique keys, INCR of a per-writer counter) and readers (GET
//! of recently acknowledged keys), each with its own connection, pacing, stall clock and ledger.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{ConnectionInfo, Value};
use tokio::sync::watch;

use crate::link::{Link, OpError, Request};
use crate::stats::{ClientStats, ErrorKind, StallClock};
use crate::Config;

/// How many recently acknowledged keys readers choose from.
const RECENT_KEYS: usize = 1024;
/// How long a reader waits when no key has been acknowledged yet.
const IDLE_WAIT: Duration = Duration::from_millis(5);
/// Backoff after a failed operation, so an endpoint that fails fast is not hammered.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// The key a writer SETs for one sequence number.
pub(crate) fn set_key(prefix: &str, writer: u32, seq: u64) -> String {
    format!("{prefix}:w{writer}:{seq}")
}

/// The key of a writer's INCR counter.
pub(crate) fn counter_key(prefix: &str, writer: u32) -> String {
    format!("{prefix}:c{writer}")
}

/// The value a writer SETs: names the run, writer and sequence, padded to `size` bytes.
pub(crate) fn value_for(prefix: &str, writer: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{prefix}:w{writer}:{seq}|").into_bytes();
    if v.len() < size {
        v.resize(size, b'.');
    }
    v
}

/// State the clients of one run share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) prefix: String,
    pub(crate) info: ConnectionInfo,
    pub(crate) deadline: Option<Instant>,
    /// Keys acknowledged lately, as (writer, seq), for readers to check.
    recent: Mutex<VecDeque<(u32, u64)>>,
    /// Completed operations so far, for progress reports while running.
    pub(crate) ops: AtomicU64,
    /// Client errors so far, for progress reports while running.
    pub(crate) errors: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: Config, prefix: String, info: ConnectionInfo) -> Self {
        let deadline = config.duration().map(|d| Instant::now() + d);
        Self {
            config,
            prefix,
            info,
            deadline,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_KEYS)),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    fn remember(&self, writer: u32, seq: u64) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_KEYS {
            recent.pop_front();
        }
        recent.push_back((writer, seq));
    }

    fn pick_recent(&self, random: u64) -> Option<(u32, u64)> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.is_empty() {
            return None;
        }
        recent.get((random % recent.len() as u64) as usize).copied()
    }
}

/// What a writer knows was acknowledged, to be read back at the end.
#[derive(Debug, Default)]
pub(crate) struct WriterLedger {
    pub(crate) writer: u32,
    /// Sequence numbers whose SET was answered OK.
    pub(crate) acked: Vec<u64>,
    /// The highest INCR reply received.
    pub(crate) counter_acked: Option<i64>,
    /// INCR replies not above an earlier acknowledged one (the counter lost increments), or
    /// more than one above it with no INCR of unknown outcome in between (an increment was
    /// applied twice: a write resent after it had run).
    pub(crate) counter_regressions: Vec<String>,
    /// Whether an INCR failed since the last acknowledged one: the next reply may then be
    /// more than one above it.
    pub(crate) counter_uncertain: bool,
}

/// Waits between operations: rate limit, error backoff, stop signal and run deadline.
struct Pacer {
    interval: Option<Duration>,
    next: Instant,
    backoff: Duration,
    stop: watch::Receiver<bool>,
    deadline: Option<Instant>,
}

impl Pacer {
    fn new(shared: &Shared, stop: watch::Receiver<bool>) -> Self {
        let interval = shared
            .config
            .rate_per_client
            .map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
        Self {
            interval,
            next: Instant::now(),
            backoff: Duration::ZERO,
            stop,
            deadline: shared.deadline,
        }
    }

    fn finished(&self) -> bool {
        *self.stop.borrow()
            || self.stop.has_changed().is_err()
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Waits until the next operation may start; false when the client should stop instead.
    async fn ready(&mut self, extra: Duration) -> bool {
        let now = Instant::now();
        let mut at = now + extra + self.backoff;
        if let Some(interval) = self.interval {
            at = at.max(self.next);
            self.next = at + interval;
        }
        if let Some(deadline) = self.deadline {
            at = at.min(deadline);
        }
        if at > now && !self.finished() {
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = self.stop.changed() => {}
            }
        }
        !self.finished()
    }

    fn succeeded(&mut self) {
        self.backoff = Duration::ZERO;
    }

    fn failed(&mut self) {
        self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
    }
}

/// What every client has: a connection, its counts, its stall clock and its pacing.
struct Client {
    link: Link,
    stats: ClientStats,
    stall: StallClock,
    pacer: Pacer,
    shared: Arc<Shared>,
}

impl Client {
    fn new(shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Result<Self, redis::RedisError> {
        let link = Link::new(shared.info.clone(), shared.config.op_timeout())?;
        Ok(Self {
            link,
            stats: ClientStats::default(),
            stall: StallClock::default(),
            pacer: Pacer::new(&shared, stop),
            shared,
        })
    }

    /// Runs one operation, timing it and counting its failure as a client error.
    /// `what` names the command and key in error examples.
    async fn op<T: redis::FromRedisValue>(
        &mut self,
        what: &str,
        req: Request<'_>,
    ) -> Result<T, OpError> {
        let start = Instant::now();
        self.stall.begin(start);
        let result = self.link.query(req).await;
        match &result {
            Ok(_) => self.completed(start),
            Err(e) => self.error(e.kind(), format!("{what}: {}", e.message())),
        }
        result
    }

    fn completed(&mut self, start: Instant) {
        let now = Instant::now();
        self.stall.complete(now);
        self.stats.latency.record(now - start);
        self.stats.ops += 1;
        self.shared.ops.fetch_add(1, Ordering::Relaxed);
        self.pacer.succeeded();
    }

    fn error(&mut self, kind: ErrorKind, message: String) {
        let max = self.shared.config.max_examples;
        self.stats.error(kind, message, max);
        self.shared.errors.fetch_add(1, Ordering::Relaxed);
        self.pacer.failed();
    }

    fn finish(mut self) -> ClientStats {
        self.stats.longest_stall = self.stall.longest(Instant::now());
        self.stats.reconnects = self.link.connects().saturating_sub(1);
        self.stats
    }
}

/// Runs writer `writer` until stopped; returns its counts and its ledger of acknowledged writes.
pub(crate) async fn writer(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    writer: u32,
) -> Result<(ClientStats, WriterLedger), redis::RedisError> {
    let mut client = Client::new(shared.clone(), stop)?;
    let mut ledger = WriterLedger {
        writer,
        ..WriterLedger::default()
    };
    let counter = counter_key(&shared.prefix, writer);
    let mut seq = 0u64;
    while client.pacer.ready(Duration::ZERO).await {
        if seq % 2 == 0 {
            set_once(&mut client, &mut ledger, seq).await;
        } else {
            incr_once(&mut client, &mut ledger, &counter).await;
        }
        seq += 1;
    }
    Ok((client.finish(), ledger))
}

async fn set_once(client: &mut Client, ledger: &mut WriterLedger, seq: u64) {
    let shared = client.shared.clone();
    let key = set_key(&shared.prefix, ledger.writer, seq);
    let value = value_for(&shared.prefix, ledger.writer, seq, shared.config.value_size);
    let mut cmd = redis::cmd("SET");
    cmd.arg(&key).arg(value);
    match client
        .op::<Value>(&format!("SET {key}"), Request::Cmd(&cmd))
        .await
    {
        Ok(Value::Okay) => {
            ledger.acked.push(seq);
            client.stats.sets_acked += 1;
            shared.remember(ledger.writer, seq);
        }
        Ok(other) => {
            client.error(
                ErrorKind::Other,
                format!("SET {key}: unexpected reply {other:?}"),
            );
            client.stats.writes_unknown += 1;
        }
        Err(OpError::NotSent(_)) => {}
        Err(OpError::Failed(..)) => client.stats.writes_unknown += 1,
    }
}

async fn incr_once(client: &mut Client, ledger: &mut WriterLedger, counter: &str) {
    let mut cmd = redis::cmd("INCR");
    cmd.arg(counter);
    match client
        .op::<i64>(&format!("INCR {counter}"), Request::Cmd(&cmd))
        .await
    {
        Ok(reply) => {
            client.stats.incrs_acked += 1;
            if let Some(prev) = ledger.counter_acked.filter(|&p| reply <= p) {
                ledger.counter_regressions.push(format!(
                    "counter {counter}: INCR returned {reply} after an acknowledged {prev}"
                ));
            }
            let certain = !std::mem::take(&mut ledger.counter_uncertain);
            if let Some(prev) = ledger.counter_acked.filter(|&p| certain && reply > p + 1) {
                ledger.counter_regressions.push(format!(
                    "counter {counter}: INCR returned {reply} right after an acknowledged {prev}: an increment was applied twice"
                ));
            }
            ledger.counter_acked = Some(ledger.counter_acked.map_or(reply, |p| p.max(reply)));
        }
        Err(OpError::NotSent(_)) => ledger.counter_uncertain = true,
        Err(OpError::Failed(..)) => {
            ledger.counter_uncertain = true;
            client.stats.writes_unknown += 1;
        }
    }
}

/// Runs a reader until stopped; returns its counts.
pub(crate) async fn reader(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    reader: u32,
) -> Result<ClientStats, redis::RedisError> {
    let mut client = Client::new(shared.clone(), stop)?;
    let mut rng = XorShift::new(u64::from(reader) + 1);
    let mut extra = Duration::ZERO;
    while client.pacer.ready(extra).await {
        let Some((writer, seq)) = shared.pick_recent(rng.next()) else {
            extra = IDLE_WAIT;
            continue;
        };
        extra = Duration::ZERO;
        read_once(&mut client, writer, seq).await;
    }
    Ok(client.finish())
}

async fn read_once(client: &mut Client, writer: u32, seq: u64) {
    let shared = client.shared.clone();
    let key = set_key(&shared.prefix, writer, seq);
    let mut cmd = redis::cmd("GET");
    cmd.arg(&key);
    let Ok(got) = client
        .op::<Option<Vec<u8>>>(&format!("GET {key}"), Request::Cmd(&cmd))
        .await
    else {
        return;
    };
    let want = value_for(&shared.prefix, writer, seq, shared.config.value_size);
    if got.as_deref() == Some(want.as_slice()) {
        client.stats.reads_ok += 1;
    } else {
        let found = describe(got.as_deref());
        client.error(
            ErrorKind::WrongRead,
            format!("GET {key}: acknowledged value, found {found}"),
        );
    }
}

/// A short printable description of a value read back (or its absence).
pub(crate) fn describe(value: Option<&[u8]>) -> String {
    match value {
        None => "nothing (key missing)".to_owned(),
        Some(v) => {
            let text = String::from_utf8_lossy(&v[..v.len().min(48)]);
            format!("{:?} ({} bytes)", text, v.len())
        }
    }
}

/// A tiny deterministic generator; readers need spread, not cryptographic randomness.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_encode_writer_and_seq() {
        let v = value_for("p:1", 3, 42, 64);
        assert_eq!(v.len(), 64);
        assert!(v.starts_with(b"p:1:w3:42|"));
        assert_ne!(value_for("p:1", 3, 42, 8), value_for("p:1", 2, 42, 8));
        assert_eq!(value_for("p:1", 3, 42, 0), b"p:1:w3:42|".to_vec());
    }

    #[test]
    fn recent_keys_are_bounded() {
        let s = Shared::new(
            Config::default(),
            "p".into(),
            Config::default().validate().unwrap(),
        );
        assert_eq!(s.pick_recent(7), None);
        for seq in 0..(RECENT_KEYS as u64 + 10) {
            s.remember(0, seq);
        }
        let (_, seq) = s.pick_recent(0).unwrap();
        assert_eq!(seq, 10);
    }
}
