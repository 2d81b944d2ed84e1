//! Bounded clients on database endpoints (issue 13): a client that has not authenticated
//! cannot make the daemon buffer more than a few KB, idle connections cost little, a client
//! that does not read its replies is held then cut off with its memory bounded, and the
//! per-database limits (max_connections, client_timeout, client_query_buffer_limit,
//! client_output_timeout) act as Redis's do. Memory is the daemon's resident set
//! (`/proc/PID/status` VmRSS), measured around what each test does.
//!
//! Issue 14 adds many and slow clients: a 100,000-command pipeline answered in order with the
//! daemon's memory bounded, and a client that stops reading with the default limits is held
//! with bounded memory and then gets every reply.
//!
//! Each test owns a loopback subnet (127.0.170-174.x, 127.0.225-226.x).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flotilla_testkit::{assert_success, flotilla_bin, poll_until, DevCluster};

fn bin() -> std::path::PathBuf {
    flotilla_bin(env!("CARGO_BIN_EXE_flotilla"))
}

const MB: u64 = 1 << 20;

/// The daemon's resident set, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kb * 1024
}

/// Samples a process's resident set every few milliseconds until stopped; the highest seen.
struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    sampler: JoinHandle<()>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss(pid)));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        RssPeak {
            stop,
            peak,
            sampler,
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.join().expect("sampler");
        self.peak.load(Ordering::Relaxed)
    }
}

/// Another client's commands, timed one by one on its own connection until stopped.
struct Latency {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<Vec<Duration>>,
}

impl Latency {
    fn start(mut con: redis::Connection) -> Latency {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut times = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) || times.len() < 20 {
                    let started = Instant::now();
                    let _: () = redis::cmd("SET")
                        .arg("other")
                        .arg(i)
                        .query(&mut con)
                        .expect("the other client's SET");
                    let got: u64 = redis::cmd("GET").arg("other").query(&mut con).unwrap();
                    assert_eq!(got, i);
                    times.push(started.elapsed());
                    i += 1;
                }
                times
            })
        };
        Latency { stop, worker }
    }

    /// The round trips measured (a SET and a GET each), sorted.
    fn stop(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        let mut times = self.worker.join().expect("latency client");
        times.sort();
        times
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

fn endpoint(cluster: &DevCluster, port: u16) -> SocketAddr {
    SocketAddr::new(cluster.addr(1).into(), port)
}

fn connect(addr: SocketAddr, password: Option<&str>) -> redis::Connection {
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let client = redis::Client::open(format!("redis://{auth}{addr}/")).unwrap();
    client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connecting to the endpoint")
}

fn raw(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Everything the peer sends until it closes (a reset after its last bytes ends it too).
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "the endpoint did not close the connection: {e} after {} bytes",
                got.len()
            ),
        }
    }
}

/// Sends `PING` and expects `+PONG`.
fn ping(stream: &mut TcpStream) {
    stream.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    stream.read_exact(&mut pong).expect("PONG");
    assert_eq!(&pong, b"+PONG\r\n");
}

fn create(cluster: &DevCluster, name: &str, port: u16, extra: &[&str]) -> serde_json::Value {
    let addr = endpoint(cluster, port);
    let port = port.to_string();
    let mut args = vec![
        "--name",
        name,
        "--port",
        &port,
        "--memory",
        "100mb",
        "--shards",
        "1",
        "--redis-version",
        "redis-7.0",
    ];
    args.extend_from_slice(extra);
    let bdb = cluster.create_db(&args);
    let serving = poll_until(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    });
    assert!(serving, "node 1 serves the endpoint of {name}");
    bdb
}

#[test]
fn an_unauthenticated_500_mb_bulk_is_refused_at_its_header_while_other_clients_keep_their_latency()
{
    let cluster = DevCluster::up(&bin(), 170, 1);
    let bdb = create(&cluster, "guarded", 12170, &["--db-password", "s3cret"]);
    assert_eq!(bdb["password_protected"], true);
    assert_eq!(
        bdb["password_storage"], "sha256",
        "a 0.2.0 cluster keeps only the password's hash: {bdb}"
    );
    let addr = endpoint(&cluster, 12170);
    let pid = cluster.daemon_pid(1).expect("daemon pid");

    // Redis's answer, from the header alone.
    let mut header_only = raw(addr);
    header_only
        .write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$500000000\r\n")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&read_to_close(&mut header_only)),
        "-ERR Protocol error: unauthenticated bulk length\r\n"
    );
    let mut many = raw(addr);
    many.write_all(b"*11\r\n").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&read_to_close(&mut many)),
        "-ERR Protocol error: unauthenticated multibulk length\r\n"
    );

    // The other client's latency alone, then while 500 MB bulks stream in, one connection
    // after another, for two seconds.
    let quiet = Latency::start(connect(addr, Some("s3cret")));
    std::thread::sleep(Duration::from_secs(1));
    let quiet = quiet.stop();
    let before = rss(pid);
    let peak = RssPeak::start(pid);
    let busy = Latency::start(connect(addr, Some("s3cret")));
    let attacks = Instant::now();
    let mut attempts = Vec::new();
    while attacks.elapsed() < Duration::from_secs(2) {
        attempts.push(stream_unauthenticated_bulk(addr, 500_000_000));
    }
    let busy = busy.stop();
    let peak = peak.stop();
    let grown = peak.saturating_sub(before);
    let most_taken = attempts.iter().map(|(sent, _)| *sent).max().unwrap_or(0);
    eprintln!(
        "{} streams of a 500 MB unauthenticated bulk in 2 s: each refused after at most {} KB; daemon RSS {} MB before,          peak growth {:.1} MB; the other client's SET+GET: p50 {:?} p99 {:?} max {:?} alone, p50 {:?} p99 {:?} max {:?}          meanwhile ({} round trips)",
        attempts.len(),
        most_taken / 1024,
        before / MB,
        grown as f64 / MB as f64,
        percentile(&quiet, 50),
        percentile(&quiet, 99),
        quiet.last().unwrap(),
        percentile(&busy, 50),
        percentile(&busy, 99),
        busy.last().unwrap(),
        busy.len()
    );
    assert!(
        attempts
            .iter()
            .all(|(sent, refused)| *refused && *sent < 64 * MB),
        "every stream was refused after its header, not after being read: {attempts:?}"
    );
    assert!(
        grown < 16 * MB,
        "the daemon's RSS grew by {} MB (bound 16 MB)",
        grown / MB
    );
    assert!(
        percentile(&busy, 99) < Duration::from_millis(100)
            && *busy.last().unwrap() < Duration::from_millis(500),
        "the other client kept its latency (p99 under 100 ms, max under 500 ms)"
    );
    // And the database still answers, through a new connection too.
    let mut after = connect(addr, Some("s3cret"));
    let pong: String = redis::cmd("PING").query(&mut after).unwrap();
    assert_eq!(pong, "PONG");
}

/// Streams one request whose last argument is a `total`-byte bulk, without authenticating,
/// until the endpoint refuses it; the bytes it took, and whether it refused (an error
/// before the whole bulk was sent).
fn stream_unauthenticated_bulk(addr: SocketAddr, total: u64) -> (u64, bool) {
    let mut stream = raw(addr);
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let header = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${total}\r\n");
    if stream.write_all(header.as_bytes()).is_err() {
        return (0, true);
    }
    let chunk = vec![b'x'; MB as usize];
    let mut sent = 0u64;
    while sent < total {
        let n = chunk.len().min((total - sent) as usize);
        if stream.write_all(&chunk[..n]).is_err() {
            return (sent, true);
        }
        sent += n as u64;
    }
    (sent, false)
}

/// Raises this process's soft limit on open files to at least `want` (within the hard limit).
fn raise_open_files(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= want,
        "this test opens {want} connections: the hard limit on open files is {hard} (ulimit -Hn)"
    );
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// The soft limit on open files of process `pid`.
fn open_files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    line.split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

#[test]
fn ten_thousand_idle_connections_cost_little_and_max_connections_refuses_the_extra_client() {
    const IDLE: usize = 10_000;
    raise_open_files(IDLE as u64 + 200);
    let cluster = DevCluster::up(&bin(), 171, 1);
    create(&cluster, "idle", 12171, &[]);
    let capped = create(&cluster, "capped", 12172, &["--max-connections", "5"]);
    assert_eq!(capped["max_connections"], 5, "{capped}");
    let pid = cluster.daemon_pid(1).expect("daemon pid");
    assert!(
        open_files_limit(pid) > IDLE as u64 + 100,
        "the daemon raised its open files limit to the hard limit"
    );

    // 10,000 connections, each answered once (so each has a session), then idle.
    let addr = endpoint(&cluster, 12171);
    let mut warm = raw(addr);
    ping(&mut warm);
    let before = rss(pid);
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut stream = raw(addr);
        ping(&mut stream);
        idle.push(stream);
    }
    let after = rss(pid);
    let per_connection = after.saturating_sub(before) / IDLE as u64;
    eprintln!(
        "{IDLE} idle connections opened in {:?}: daemon RSS {} MB -> {} MB, {} bytes per connection",
        started.elapsed(),
        before / MB,
        after / MB,
        per_connection
    );
    assert!(
        per_connection < 8 * 1024,
        "an idle connection costs {per_connection} bytes of RSS (bound 8 KB)"
    );
    for stream in idle.iter_mut().step_by(997) {
        ping(stream);
    }
    drop(idle);

    // max_connections: the 6th client is refused with Redis's error, the 5 keep working.
    let addr = endpoint(&cluster, 12172);
    let mut five: Vec<redis::Connection> = (0..5).map(|_| connect(addr, None)).collect();
    let mut extra = raw(addr);
    assert_eq!(
        String::from_utf8_lossy(&read_to_close(&mut extra)),
        "-ERR max number of clients reached\r\n"
    );
    for (i, con) in five.iter_mut().enumerate() {
        let _: () = redis::cmd("SET").arg(i).arg(i).query(con).unwrap();
        let got: usize = redis::cmd("GET").arg(i).query(con).unwrap();
        assert_eq!(got, i);
    }
    // One leaves: a new client gets its place (once the endpoint saw it leave).
    drop(five.pop());
    let admitted = poll_until(Duration::from_secs(5), || {
        let mut next = raw(addr);
        next.write_all(b"PING\r\n").is_ok() && {
            let mut pong = [0u8; 7];
            next.read_exact(&mut pong).is_ok() && &pong == b"+PONG\r\n"
        }
    });
    assert!(admitted, "a client takes the place of one that left");
    // The limit changes with `db set`, on the running endpoint.
    let set = cluster.flotilla(&["db", "set", "capped", "--max-connections", "0"]);
    assert_success(&set, "db set --max-connections 0");
    let unlimited = poll_until(Duration::from_secs(10), || {
        let mut more: Vec<TcpStream> = (0..3).map(|_| raw(addr)).collect();
        more.iter_mut().all(|s| {
            s.write_all(b"PING\r\n").is_ok() && {
                let mut pong = [0u8; 7];
                s.read_exact(&mut pong).is_ok() && &pong == b"+PONG\r\n"
            }
        })
    });
    assert!(unlimited, "max_connections 0 lifts the limit");
}

#[test]
fn a_client_that_does_not_read_its_replies_is_held_then_cut_off_with_bounded_memory() {
    let cluster = DevCluster::up(&bin(), 172, 1);
    let value = vec![b'v'; 256 * 1024];
    let (addr, pid) = with_big_value(
        &cluster,
        ("slow", 12173),
        &["--client-output-timeout", "3"],
        &value,
    );

    // 2,048 GETs of a 256 KB value (512 MB of replies), pipelined, never read.
    let before = rss(pid);
    let peak = RssPeak::start(pid);
    let mut reader = raw(addr);
    let pipeline = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(2048);
    reader.write_all(&pipeline).unwrap();
    let started = Instant::now();
    // The client reads nothing for 5 s, past client_output_timeout (3 s); meanwhile another
    // client is served as usual.
    let busy = Latency::start(connect(addr, None));
    std::thread::sleep(Duration::from_secs(5));
    let busy = busy.stop();
    let held = peak.stop();
    // It was cut off: reading now yields what was in flight when it was closed (the socket
    // buffers' worth), then the end, not the rest of its 512 MB of replies.
    let got = read_to_close(&mut reader);
    let closed_after = started.elapsed();
    let grown = held.saturating_sub(before);
    eprintln!(
        "non-reading client: daemon RSS grew {:.1} MB while held; {} of {} reply bytes written before it was closed after {:?}; \
         other client p50 {:?} max {:?}",
        grown as f64 / MB as f64,
        got.len(),
        2048 * (value.len() + 13),
        closed_after,
        percentile(&busy, 50),
        busy.last().unwrap()
    );
    assert!(
        grown < 64 * MB,
        "a client that does not read pins {} MB of the daemon (bound 64 MB)",
        grown / MB
    );
    assert!(
        (got.len() as u64) < 64 * MB,
        "the client was cut off, not served all its replies ({} MB read)",
        got.len() as u64 / MB
    );
    assert!(
        *busy.last().unwrap() < Duration::from_millis(500),
        "other clients are served meanwhile"
    );
    let mut after = connect(addr, None);
    let len: usize = redis::cmd("STRLEN").arg("big").query(&mut after).unwrap();
    assert_eq!(len, value.len());
}

#[test]
fn a_100_000_command_pipeline_is_answered_in_order_with_bounded_memory() {
    const COMMANDS: u64 = 100_000;
    let cluster = DevCluster::up(&bin(), 225, 1);
    create(&cluster, "pipe", 12225, &[]);
    let addr = endpoint(&cluster, 12225);
    let pid = cluster.daemon_pid(1).expect("daemon pid");
    let mut warm = raw(addr);
    ping(&mut warm);

    let before = rss(pid);
    let peak = RssPeak::start(pid);
    let busy = Latency::start(connect(addr, None));
    let started = Instant::now();
    let stream = raw(addr);
    // The whole pipeline is written by one thread while this one reads the replies.
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = b"*2\r\n$4\r\nINCR\r\n$4\r\npipe\r\n".repeat(1000);
            for _ in 0..COMMANDS / 1000 {
                stream.write_all(&chunk).expect("writing the pipeline");
            }
        })
    };
    let mut replies = std::io::BufReader::with_capacity(1 << 16, stream);
    let mut line = String::new();
    for expected in 1..=COMMANDS {
        line.clear();
        std::io::BufRead::read_line(&mut replies, &mut line).expect("a reply");
        assert_eq!(
            line,
            format!(":{expected}\r\n"),
            "reply {expected} in order"
        );
    }
    let took = started.elapsed();
    writer.join().expect("writer");
    let busy = busy.stop();
    let grown = peak.stop().saturating_sub(before);
    eprintln!(
        "{COMMANDS}-command pipeline answered in order in {took:?}: daemon RSS grew {:.1} MB; \
         the other client's SET+GET meanwhile: p50 {:?} p99 {:?} max {:?} ({} round trips)",
        grown as f64 / MB as f64,
        percentile(&busy, 50),
        percentile(&busy, 99),
        busy.last().unwrap(),
        busy.len()
    );
    // Measured: RSS +0.6-1 MB; the other client 7-17 ms p50, 20-154 ms p99 on a loaded 2-core
    // machine (debug build).
    assert_bounded("a pipeline", grown, &busy);
}

/// Creates database `name` on `port` (with `extra` flags) and sets its key `big` to `value`:
/// its endpoint and the daemon's pid.
fn with_big_value(
    cluster: &DevCluster,
    (name, port): (&str, u16),
    extra: &[&str],
    value: &[u8],
) -> (SocketAddr, u32) {
    create(cluster, name, port, extra);
    let addr = endpoint(cluster, port);
    let mut setter = connect(addr, None);
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(value)
        .query(&mut setter)
        .unwrap();
    (addr, cluster.daemon_pid(1).expect("daemon pid"))
}

/// What a busy client may cost: under 32 MB of the daemon's RSS, and other clients' p99 under
/// 500 ms (bounds generous for a loaded 2-core machine; the tests print what they measured).
fn assert_bounded(who: &str, grown: u64, others: &[Duration]) {
    assert!(
        grown < 32 * MB,
        "{who} pins {} MB of the daemon (bound 32 MB)",
        grown / MB
    );
    assert!(
        percentile(others, 99) < Duration::from_millis(500),
        "the other client kept its latency (p99 {:?}, bound 500 ms)",
        percentile(others, 99)
    );
}

#[test]
fn a_client_that_stops_reading_is_held_with_bounded_memory_then_gets_every_reply() {
    const GETS: usize = 512;
    let cluster = DevCluster::up(&bin(), 226, 1);
    // Default limits: the output timeout (60 s) is longer than the client's pause.
    let value: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let (addr, pid) = with_big_value(&cluster, ("pause", 12226), &[], &value);

    // 512 GETs of a 256 KB value (128 MB of replies), pipelined, then 3 s without reading.
    let before = rss(pid);
    let peak = RssPeak::start(pid);
    let mut reader = raw(addr);
    reader
        .write_all(&b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(GETS))
        .unwrap();
    let busy = Latency::start(connect(addr, None));
    std::thread::sleep(Duration::from_secs(3)); // the client's pause, not a readiness wait
    let busy = busy.stop();
    let grown = peak.stop().saturating_sub(before);

    // It reads now: every reply, whole and in order.
    let mut replies = std::io::BufReader::with_capacity(1 << 20, reader);
    let header = format!("${}\r\n", value.len());
    let mut got = vec![0u8; header.len() + value.len() + 2];
    for n in 0..GETS {
        replies.read_exact(&mut got).expect("a whole reply");
        assert!(
            got.starts_with(header.as_bytes())
                && got[header.len()..got.len() - 2] == value[..]
                && got.ends_with(b"\r\n"),
            "reply {n} is the value"
        );
    }
    eprintln!(
        "a client pausing with {} MB of replies requested: daemon RSS grew {:.1} MB; the other \
         client's SET+GET meanwhile: p50 {:?} p99 {:?} max {:?}",
        (GETS * value.len()) >> 20,
        grown as f64 / MB as f64,
        percentile(&busy, 50),
        percentile(&busy, 99),
        busy.last().unwrap()
    );
    // Measured: RSS +6 MB; the other client 0.3-2.5 ms p50, 0.5-20 ms p99 (debug build).
    assert_bounded("a paused client", grown, &busy);
}

#[test]
fn idle_and_query_buffer_limits_close_the_client_with_redis_semantics() {
    let cluster = DevCluster::up(&bin(), 173, 1);
    create(
        &cluster,
        "limited",
        12174,
        &[
            "--client-timeout",
            "1",
            "--client-query-buffer-limit",
            "1mb",
        ],
    );
    let addr = endpoint(&cluster, 12174);

    // An idle client is closed after client_timeout; an active one is not.
    let mut active = raw(addr);
    let mut idle = raw(addr);
    ping(&mut idle);
    let idle_since = Instant::now();
    let closer = std::thread::spawn(move || {
        let got = read_to_close(&mut idle);
        (got, idle_since.elapsed())
    });
    for _ in 0..12 {
        ping(&mut active);
        std::thread::sleep(Duration::from_millis(250));
    }
    let (got, after) = closer.join().unwrap();
    assert!(got.is_empty(), "closed without a reply");
    assert!(
        after >= Duration::from_secs(1) && after < Duration::from_secs(3),
        "the idle client was closed after {after:?} (client_timeout 1 s)"
    );

    // A request past the query buffer limit (1 MB) is refused with an error, then closed;
    // a request within it passes. The client sends one byte more than the limit allows
    // (4 bytes of arguments taken plus the payload), so the endpoint reads all it was sent
    // and its reply is not lost to a reset.
    let mut big = raw(addr);
    let payload = vec![b'x'; (MB - 4 + 1) as usize];
    let header = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", 2 * MB);
    big.write_all(header.as_bytes()).unwrap();
    big.write_all(&payload).unwrap();
    let reply = String::from_utf8_lossy(&read_to_close(&mut big)).into_owned();
    assert_eq!(
        reply,
        "-ERR Protocol error: client query buffer limit of 1048576 bytes reached\r\n"
    );
    let mut fits = connect(addr, None);
    let half = vec![b'y'; 512 * 1024];
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg(&half)
        .query(&mut fits)
        .unwrap();
    let len: usize = redis::cmd("STRLEN").arg("k").query(&mut fits).unwrap();
    assert_eq!(len, half.len());
}

/// Whether node `n`'s endpoint on `port` lets a client in with `password` (AUTH, then PING).
fn auth_ok(cluster: &DevCluster, n: u8, port: u16, password: &str) -> bool {
    let addr = SocketAddr::new(cluster.addr(n).into(), port);
    let auth = format!("redis://:{password}@{addr}/");
    redis::Client::open(auth)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con))
        .is_ok_and(|pong| pong == "PONG")
}

/// Whether node `n`'s endpoint lets a client in with `password` within 10 s (an endpoint
/// starts serving a new database, or again after its daemon restarted, a moment later).
fn admits(cluster: &DevCluster, n: u8, port: u16, password: &str) -> bool {
    poll_until(Duration::from_secs(10), || {
        auth_ok(cluster, n, port, password)
    })
}

/// How node `n`'s API says the database's password is stored (`None`: it does not say).
fn password_storage(cluster: &DevCluster, n: u8, db: &str) -> Option<String> {
    let bdb = cluster.json(n, &["db", "show", db, "--json"]);
    bdb["password_storage"].as_str().map(str::to_owned)
}

/// The cluster version as node 1 answers.
fn cluster_version(cluster: &DevCluster) -> String {
    cluster.status_json(1)["cluster"]["cluster_version"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_0_1_0_clusters_database_passwords_keep_working_and_are_hashed_at_finalization() {
    let packages = flotilla_testkit::Packages::shared(&bin());
    let v010 = packages.release_0_1_0();
    let (_, v021) = packages.current_pair();
    let cluster = DevCluster::up_from_package(&bin(), 174, 3, &v010);
    create(
        &cluster,
        "secured",
        12176,
        &["--replication", "--db-password", "old-pw"],
    );
    for n in 1..=3 {
        assert!(admits(&cluster, n, 12176, "old-pw"), "node {n} on 0.1.0");
        assert!(!auth_ok(&cluster, n, 12176, "wrong"));
    }

    // Mixed: node 2 runs the new build beside two 0.1.0 nodes, which read only the
    // plaintext: it stays, and every node checks it.
    let package = v021.to_string_lossy().into_owned();
    let upgrade = |n: u8| {
        let node = n.to_string();
        let output = cluster.flotilla(&["upgrade", "node", &node, "--package", &package, "--yes"]);
        assert_success(&output, &format!("upgrade node {n}"));
    };
    upgrade(2);
    assert_eq!(
        password_storage(&cluster, 2, "secured").as_deref(),
        Some("plaintext"),
        "kept in plaintext while 0.1.0 nodes are members"
    );
    for n in 1..=3 {
        assert!(admits(&cluster, n, 12176, "old-pw"), "node {n}, mixed");
        assert!(!auth_ok(&cluster, n, 12176, "wrong"), "node {n}, mixed");
    }

    // Every node upgraded: the cluster version moves to the new one, and with it the
    // password is replaced by its hash; the same password still lets clients in.
    upgrade(1);
    upgrade(3);
    if cluster_version(&cluster) != "0.2.1" {
        assert_success(
            &cluster.flotilla(&["upgrade", "finalize"]),
            "upgrade finalize",
        );
    }
    assert_eq!(cluster_version(&cluster), "0.2.1");
    for n in 1..=3 {
        let hashed = poll_until(Duration::from_secs(10), || {
            password_storage(&cluster, n, "secured").as_deref() == Some("sha256")
        });
        assert!(hashed, "node {n}'s store keeps the hash, not the password");
        assert!(admits(&cluster, n, 12176, "old-pw"), "node {n}, finalized");
        assert!(!auth_ok(&cluster, n, 12176, "wrong"), "node {n}, finalized");
    }

    // A new password is hashed before it is proposed, and replaces the old one.
    let set = cluster.flotilla(&["db", "set", "secured", "--db-password", "new-pw"]);
    assert_success(&set, "db set --db-password");
    assert_eq!(
        password_storage(&cluster, 1, "secured").as_deref(),
        Some("sha256")
    );
    for n in 1..=3 {
        let moved = poll_until(Duration::from_secs(10), || {
            auth_ok(&cluster, n, 12176, "new-pw") && !auth_ok(&cluster, n, 12176, "old-pw")
        });
        assert!(moved, "node {n} checks the new password only");
    }
}
