//! Operator passwords, the cluster's internal secret, and the guard every password check goes
//! through.
//!
//! Passwords are stored only as argon2id PHC strings in the replicated state; the internal secret
//! is random and authenticates node-to-node RPC.
//!
//! argon2 is slow on purpose (tens of milliseconds of CPU and 19 MiB per check), so a stream of
//! guesses must not run it on the daemon's async workers, where Raft heartbeats, reports and
//! every REST answer run. [`check_login`] runs each verification on tokio's blocking pool
//! behind a process-wide semaphore of a few permits ([`VERIFY_PERMITS`]), refuses at once when
//! too many checks wait ([`MAX_WAITING`]), and slows failed attempts per source address
//! ([`Throttle`]). A wrong user name costs the same argon2 work as a wrong password (the
//! password is verified against a fixed dummy hash), so the user name does not leak by timing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use flotilla_model::Credentials;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Hashes `password` for storage in [`Credentials::password_hash`].
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// The hash a password is checked against when the user name is wrong (or the stored hash is
/// unusable): the same argon2 parameters as a real one, so the answer takes as long.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| hash_password("flotilla-dummy-password"));

/// True when `username`/`password` match the stored credentials. Always runs one argon2
/// verification, whether the user name matches or not. Blocking and slow: async code calls
/// [`check_login`] instead.
pub fn verify(credentials: &Credentials, username: &str, password: &str) -> bool {
    let user_ok = secret_eq(&credentials.username, username);
    let stored = PasswordHash::new(&credentials.password_hash).ok();
    let real = user_ok && stored.is_some();
    let hash = match stored {
        Some(hash) if real => hash,
        _ => PasswordHash::new(&DUMMY_HASH).expect("the dummy hash is a PHC string"),
    };
    let password_ok = Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok();
    real && password_ok
}

/// Compares two secrets (passwords, tokens, the cluster secret) in time that does not depend on
/// where they differ.
pub fn secret_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A fresh random secret, 32 bytes as hex.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How many argon2 verifications run at once in this process: one less than the cores (at
/// least one), so a stream of guesses always leaves a core to the async workers.
pub static VERIFY_PERMITS: LazyLock<usize> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).max(1)
});

/// How many checks may wait for a permit; past it a check is refused at once
/// ([`Login::Busy`]) instead of queueing without bound.
pub const MAX_WAITING: usize = 64;

/// The outcome of [`check_login`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// The user name and password match.
    Accepted,
    /// They do not (the failure was counted against the source address).
    Refused,
    /// The source failed too often lately; nothing was checked. Try again after this long.
    Throttled {
        /// How long until the source may try again.
        retry_after: Duration,
    },
    /// Too many checks are waiting for a permit; nothing was checked. Try again shortly.
    Busy,
}

/// Checks `username`/`password` against `credentials` from `source` (when known): refused at
/// once while the source is throttled, else verified on the blocking pool behind the
/// process-wide semaphore; a failure counts against the source, a success clears it.
pub async fn check_login(
    source: Option<IpAddr>,
    credentials: &Credentials,
    username: &str,
    password: &str,
) -> Login {
    let throttle = Throttle::process();
    if let Some(retry_after) = source.and_then(|ip| throttle.wait_for(ip, Instant::now())) {
        return Login::Throttled { retry_after };
    }
    let Some(ok) = verify_off_workers(credentials, username, password).await else {
        return Login::Busy;
    };
    if let Some(ip) = source {
        match ok {
            true => throttle.succeeded(ip),
            false => throttle.failed(ip, Instant::now()),
        }
    }
    match ok {
        true => Login::Accepted,
        false => Login::Refused,
    }
}

/// [`verify`] on the blocking pool, at most [`VERIFY_PERMITS`] at once; `None` when
/// [`MAX_WAITING`] checks already wait.
async fn verify_off_workers(
    credentials: &Credentials,
    username: &str,
    password: &str,
) -> Option<bool> {
    static PERMITS: LazyLock<Arc<Semaphore>> =
        LazyLock::new(|| Arc::new(Semaphore::new(*VERIFY_PERMITS)));
    let waiting = Waiting::enter()?;
    let permit = PERMITS.clone().acquire_owned().await;
    drop(waiting);
    let permit = permit.expect("the semaphore is never closed");
    let (credentials, username, password) = (
        credentials.clone(),
        username.to_owned(),
        password.to_owned(),
    );
    // The permit goes with the verification: a caller that gives up (its client went away)
    // does not free it before argon2 is done.
    let verified = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        verify(&credentials, &username, &password)
    })
    .await;
    Some(verified.unwrap_or(false))
}

/// One check waiting for a permit, counted while it waits (also when its caller gives up).
struct Waiting;

/// How many checks wait for a permit.
static WAITING: AtomicUsize = AtomicUsize::new(0);

impl Waiting {
    /// Counts one more waiting check; `None` when [`MAX_WAITING`] already wait.
    fn enter() -> Option<Waiting> {
        let before = WAITING.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting;
        (before < MAX_WAITING).then_some(waiting)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The address a request came from, when the server was started with connection info
/// (`into_make_service_with_connect_info::<SocketAddr>()`); `None` otherwise. What failed
/// logins are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr::of(&parts.extensions))
    }
}

impl PeerAddr {
    /// The peer address recorded in a request's extensions.
    pub fn of(extensions: &axum::http::Extensions) -> Self {
        let info = extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        PeerAddr(info.map(|info| info.0.ip()))
    }
}

/// Failures a source may make within [`THROTTLE_WINDOW`] before it is throttled.
pub const FREE_FAILURES: u32 = 10;
/// The window failures are counted in; a source that stays quiet this long starts afresh.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);
/// The longest a throttled source is told to wait.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Sources remembered at most; past it the one that failed longest ago is forgotten.
pub const MAX_SOURCES: usize = 4096;

/// Failed logins per source address: past [`FREE_FAILURES`] in [`THROTTLE_WINDOW`], a source
/// waits a delay that doubles with each further failure (1 s, 2 s, 4 s, ... up to 60 s) before
/// it is checked again. Bounded to [`MAX_SOURCES`] addresses.
#[derive(Debug, Default)]
pub struct Throttle {
    sources: Mutex<HashMap<IpAddr, Failures>>,
}

/// One source's recent failures.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    last: Instant,
}

impl Throttle {
    /// The table every check in this process shares (the REST API and internal joins).
    pub fn process() -> &'static Throttle {
        static PROCESS: LazyLock<Throttle> = LazyLock::new(Throttle::default);
        &PROCESS
    }

    /// How long `source` must still wait before it is checked again, if it must.
    pub fn wait_for(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        let sources = self.sources.lock().expect("throttle lock");
        let failures = sources.get(&source)?;
        if now.duration_since(failures.first) > THROTTLE_WINDOW {
            return None;
        }
        let over = failures.count.checked_sub(FREE_FAILURES)?;
        let delay = Duration::from_secs(1u64 << over.min(6)).min(MAX_RETRY_AFTER);
        let free_at = failures.last + delay;
        (free_at > now).then(|| free_at - now)
    }

    /// Counts a failed login from `source`.
    pub fn failed(&self, source: IpAddr, now: Instant) {
        let mut sources = self.sources.lock().expect("throttle lock");
        if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
            sources.retain(|_, f| now.duration_since(f.last) <= THROTTLE_WINDOW);
            if sources.len() >= MAX_SOURCES {
                let oldest = sources
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(ip, _)| *ip);
                oldest.map(|ip| sources.remove(&ip));
            }
        }
        let entry = sources.entry(source).or_insert(Failures {
            count: 0,
            first: now,
            last: now,
        });
        if now.duration_since(entry.first) > THROTTLE_WINDOW
            && now.duration_since(entry.last) > THROTTLE_WINDOW
        {
            *entry = Failures {
                count: 0,
                first: now,
                last: now,
            };
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }

    /// Forgets `source`'s failures after a successful login.
    pub fn succeeded(&self, source: IpAddr) {
        self.sources.lock().expect("throttle lock").remove(&source);
    }

    /// How many sources are remembered.
    pub fn len(&self) -> usize {
        self.sources.lock().expect("throttle lock").len()
    }

    /// True when no source is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            username: "admin".into(),
            password_hash: hash_password("s3cret"),
        }
    }

    #[test]
    fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let creds = creds();
        assert!(!creds.password_hash.contains("s3cret"));
        assert!(verify(&creds, "admin", "s3cret"));
        assert!(!verify(&creds, "admin", "wrong"));
        assert!(!verify(&creds, "other", "s3cret"));
        assert!(!verify(&creds, "other", "flotilla-dummy-password"));
    }

    #[test]
    fn a_wrong_user_name_costs_the_same_argon2_work_as_a_wrong_password() {
        let creds = creds();
        let time = |user: &str| {
            let started = Instant::now();
            assert!(!verify(&creds, user, "wrong"));
            started.elapsed()
        };
        // Interleaved, so a change of the machine's load hits both alike.
        let (mut wrong_password, mut wrong_user) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..8 {
            wrong_password += time("admin");
            wrong_user += time("nobody");
        }
        let ratio = wrong_user.as_secs_f64() / wrong_password.as_secs_f64();
        assert!(
            (0.5..2.0).contains(&ratio),
            "wrong user {wrong_user:?} vs wrong password {wrong_password:?}"
        );
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "abcd"));
        assert!(!secret_eq("", "a"));
    }

    #[test]
    fn a_source_is_throttled_past_the_free_failures_with_a_growing_delay() {
        let throttle = Throttle::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.wait_for(ip, now), None);
            throttle.failed(ip, now);
        }
        assert_eq!(throttle.wait_for(ip, now), Some(Duration::from_secs(1)));
        throttle.failed(ip, now);
        assert_eq!(throttle.wait_for(ip, now), Some(Duration::from_secs(2)));
        assert_eq!(
            throttle.wait_for(ip, now + Duration::from_secs(2)),
            None,
            "free again once the delay passed"
        );
        assert_eq!(throttle.wait_for(other, now), None, "another source is not");
        throttle.succeeded(ip);
        assert_eq!(throttle.wait_for(ip, now), None);
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let throttle = Throttle::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let start = Instant::now();
        for _ in 0..=FREE_FAILURES {
            throttle.failed(ip, start);
        }
        let later = start + THROTTLE_WINDOW + Duration::from_secs(61);
        assert_eq!(throttle.wait_for(ip, later), None);
        throttle.failed(ip, later);
        assert_eq!(throttle.wait_for(ip, later), None, "counting starts afresh");
    }

    #[test]
    fn the_table_of_sources_stays_bounded() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            throttle.failed(ip, now + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(throttle.len(), MAX_SOURCES);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_run_off_the_async_workers_and_a_flood_is_refused_not_queued() {
        let creds = creds();
        let source: IpAddr = "127.0.9.9".parse().unwrap();
        assert_eq!(
            check_login(Some(source), &creds, "admin", "s3cret").await,
            Login::Accepted
        );
        let checks: Vec<_> = (0..200)
            .map(|_| {
                let creds = creds.clone();
                tokio::spawn(async move { check_login(None, &creds, "admin", "x").await })
            })
            .collect();
        // The workers stay free while the checks run.
        let started = Instant::now();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(started.elapsed() < Duration::from_millis(500));
        let mut busy = 0;
        for check in checks {
            match check.await.unwrap() {
                Login::Busy => busy += 1,
                Login::Refused => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(busy > 0, "past {MAX_WAITING} waiting, checks are refused");
    }
}
