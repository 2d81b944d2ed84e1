//! Shard connections shared by an endpoint's clients: every RESP2 client's plain commands for
//! one shard primary travel over one engine connection, so requests from many clients reach
//! the engine in one write and their replies come back in one read.
//!
//! Why: with one engine connection per client, a client sending one command per round trip
//! costs the engine a read and a write system call per command, and the proxy two more; on a
//! loaded machine that is most of the CPU a command costs (`bench/proxy` prints it per
//! request). Coalescing clients is how twemproxy keeps the engine's cost per command low.
//!
//! What stays on a client's own connection ([`crate::shard::ShardConn`]): transactions and
//! WATCH, blocking commands (BLPOP, XREAD BLOCK, WAIT...), and every command of a RESP3
//! client, since those hold per-connection state on the engine or would stall other clients.
//! A client leaves the shared connections for good at its first such command (see
//! `session/links.rs`); its earlier commands have all been answered by then, so its order holds.
//!
//! Ordering: a [`SharedLink`] writes jobs (one client's part of a batch) in the order it
//! receives them and hands their replies back in the same order, reading exactly as many
//! replies per job as the job holds requests.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use flotilla_resp::{Decoder, Limits, Protocol, Request, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::outcome::{role_offset, StreamPosition, OFFSET_PROBE};
use crate::shard::{take_raw_reply, ShardConn, ShardError, RELOGIN_AFTER};
use crate::topology::{ShardLogin, Topology};

/// Jobs queued for one link before clients wait to hand it more (backpressure).
const JOB_QUEUE: usize = 4096;

/// Bytes gathered from queued jobs into one write.
const WRITE_CHUNK: usize = 256 * 1024;

/// The replies of one job, in order, or why there are none.
type JobReplies = Result<VecDeque<Bytes>, ShardError>;

/// One client's requests for a shard, encoded, and where their replies go.
struct Job {
    requests: Bytes,
    count: usize,
    /// Whether a request may be a write: the write it goes out in is followed by the offset
    /// probe.
    writes: bool,
    replies: oneshot::Sender<JobReplies>,
}

/// What the reader is told was written, in order.
enum Written {
    /// A job: how many replies it awaits, and where they go.
    Job(usize, oneshot::Sender<JobReplies>),
    /// The offset probe ([`OFFSET_PROBE`]) after a write holding a write.
    Probe,
}

/// An endpoint's shared connections, one per shard primary address; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct SharedPool {
    links: Arc<Mutex<HashMap<SocketAddr, SharedLink>>>,
}

impl SharedPool {
    /// A client's handle on the shared connection to the primary at `addr` of shard `shard`
    /// (its uid, for messages), opening the connection (in the background) if there is none or
    /// the last one broke.
    pub fn conn(&self, shard: u64, addr: SocketAddr, login: &ShardLogin) -> SharedConn {
        let mut links = self.lock();
        let link = match links.get(&addr) {
            Some(link) if !link.is_broken() && link.logged_in_as(login) => link.clone(),
            _ => {
                let link = SharedLink::open(shard, addr, login.clone());
                links.insert(addr, link.clone());
                link
            }
        };
        SharedConn::new(shard, addr, link)
    }

    /// Forgets links to addresses that are no longer any shard's primary (their connections
    /// close once no client uses them).
    pub fn retain_primaries(&self, topology: &Topology) {
        let primaries: Vec<SocketAddr> = (0..topology.shard_count())
            .filter_map(|i| topology.primary(crate::ShardIndex(i)))
            .collect();
        self.lock()
            .retain(|addr, link| primaries.contains(addr) && !link.is_broken());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, SharedLink>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side of one shared engine connection, run by its own task.
#[derive(Clone)]
pub(crate) struct SharedLink {
    jobs: mpsc::Sender<Job>,
    broken: Arc<AtomicBool>,
    /// The login it was opened with, and when it fell back to the default user (set by its
    /// task once connected).
    login: Arc<(ShardLogin, Mutex<Option<Instant>>)>,
}

impl SharedLink {
    fn open(shard: u64, addr: SocketAddr, login: ShardLogin) -> Self {
        let (jobs, queue) = mpsc::channel(JOB_QUEUE);
        let broken = Arc::new(AtomicBool::new(false));
        let login = Arc::new((login, Mutex::new(None)));
        tokio::spawn(run_link(shard, addr, login.clone(), queue, broken.clone()));
        SharedLink {
            jobs,
            broken,
            login,
        }
    }

    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// See [`ShardConn::logged_in_as`].
    fn logged_in_as(&self, login: &ShardLogin) -> bool {
        let fell_back = *self.login.1.lock().unwrap_or_else(|e| e.into_inner());
        self.login.0 == *login && fell_back.is_none_or(|at| at.elapsed() < RELOGIN_AFTER)
    }
}

/// Connects, then writes jobs and reads their replies until the connection fails or every
/// handle is gone. Jobs never written are answered "unavailable" (not executed); jobs written
/// but not answered are answered "lost" (they may have executed), with the master's stream
/// position before them when the engine told it (see `outcome.rs`), so a session can prove
/// the promoted replica lacks them and resend them.
async fn run_link(
    shard: u64,
    addr: SocketAddr,
    login: Arc<(ShardLogin, Mutex<Option<Instant>>)>,
    mut queue: mpsc::Receiver<Job>,
    broken: Arc<AtomicBool>,
) {
    let opened = async {
        let mut conn = ShardConn::connect(shard, addr, &login.0, Protocol::Resp2, 0).await?;
        let position = conn.replication().await?.and_then(|r| r.position());
        Ok::<_, ShardError>((conn, position))
    };
    let (conn, position) = match opened.await {
        Ok((conn, position)) => {
            *login.1.lock().unwrap_or_else(|e| e.into_inner()) = conn.fell_back_at();
            (conn, position)
        }
        Err(e) => {
            broken.store(true, Ordering::Relaxed);
            let e = match e {
                ShardError::Lost { reason, .. } => ShardError::Unavailable {
                    shard,
                    addr,
                    reason,
                },
                e => e,
            };
            refuse_queued(&mut queue, &e);
            return;
        }
    };
    let (stream, input) = conn.into_parts();
    let (reader, writer) = stream.into_split();
    let (written_tx, mut written) = mpsc::unbounded_channel();
    let probing = AtomicBool::new(position.is_some());
    let mut position = position;
    let lost = |reason: String, position: Option<StreamPosition>| ShardError::Lost {
        shard,
        addr,
        reason,
        position: position.map(Box::new),
    };
    // The job whose replies are being read: answered here when the connection fails, also when
    // the write side fails first and the reader is dropped mid-read.
    let mut reading = None;
    let outcome = tokio::try_join!(
        write_jobs(writer, &mut queue, written_tx, &probing),
        read_replies(
            reader,
            input,
            &mut written,
            &mut reading,
            &mut position,
            &probing
        ),
    );
    if let Err(error) = outcome {
        broken.store(true, Ordering::Relaxed);
        tracing::debug!(shard, %addr, %error, "shared shard connection failed");
        let error = lost(error, position);
        if let Some(replies) = reading.take() {
            let _ = replies.send(Err(error.clone()));
        }
        while let Ok(written) = written.try_recv() {
            if let Written::Job(_, replies) = written {
                let _ = replies.send(Err(error.clone()));
            }
        }
        refuse_queued(
            &mut queue,
            &ShardError::Unavailable {
                shard,
                addr,
                reason: "the shared connection to the shard failed before sending".into(),
            },
        );
    }
}

/// Answers every job still queued with `error`, and refuses new ones.
fn refuse_queued(queue: &mut mpsc::Receiver<Job>, error: &ShardError) {
    queue.close();
    while let Ok(job) = queue.try_recv() {
        let _ = job.replies.send(Err(error.clone()));
    }
}

/// Writes queued jobs, several per write when they queue up, and tells the reader how many
/// replies each one awaits. A write holding a job that may write ends with the offset probe
/// while `probing` (see `outcome.rs`). Ends when every handle is gone.
async fn write_jobs(
    mut writer: OwnedWriteHalf,
    queue: &mut mpsc::Receiver<Job>,
    written: mpsc::UnboundedSender<Written>,
    probing: &AtomicBool,
) -> Result<(), String> {
    let mut out = BytesMut::with_capacity(16 * 1024);
    while let Some(job) = queue.recv().await {
        let mut writes = gather(&mut out, job, queue, &written);
        if out.len() < WRITE_CHUNK {
            // Let the clients that are ready to run (or whose requests the runtime is about
            // to read) queue theirs first, so they go out in this write too.
            tokio::task::yield_now().await;
            while out.len() < WRITE_CHUNK {
                let Ok(job) = queue.try_recv() else { break };
                writes |= gather(&mut out, job, queue, &written);
            }
        }
        if writes && probing.load(Ordering::Relaxed) {
            out.extend_from_slice(OFFSET_PROBE);
            let _ = written.send(Written::Probe);
        }
        writer.write_all(&out).await.map_err(|e| e.to_string())?;
        out.clear();
    }
    Ok(())
}

/// Appends `job` and the jobs queued behind it to `out`, up to [`WRITE_CHUNK`] bytes, telling
/// the reader how many replies each awaits; whether any of them may write.
fn gather(
    out: &mut BytesMut,
    job: Job,
    queue: &mut mpsc::Receiver<Job>,
    written: &mpsc::UnboundedSender<Written>,
) -> bool {
    let mut writes = false;
    let mut next = Some(job);
    while let Some(job) = next.take() {
        out.extend_from_slice(&job.requests);
        writes |= job.writes;
        let _ = written.send(Written::Job(job.count, job.replies));
        if out.len() < WRITE_CHUNK {
            next = queue.try_recv().ok();
        }
    }
    writes
}

/// Reads each written job's replies, in order, and hands them to the job's client; the job
/// being read waits in `reading` (on failure the caller answers it). Moves `position` to each
/// offset probe's answer (a probe not answered with an offset stops the probing and forgets the
/// position: nothing in flight can be proven absent then).
async fn read_replies(
    mut reader: OwnedReadHalf,
    mut input: BytesMut,
    written: &mut mpsc::UnboundedReceiver<Written>,
    reading: &mut Option<oneshot::Sender<JobReplies>>,
    position: &mut Option<StreamPosition>,
    probing: &AtomicBool,
) -> Result<(), String> {
    let mut decoder = Decoder::new(Limits::for_replies());
    loop {
        // While no job awaits replies, the engine closing the connection (it died) is noticed
        // at once: the jobs queued next are then answered "unavailable" (not executed) instead
        // of being written to a dead connection and answered "lost" (may have executed).
        let next = tokio::select! {
            biased;
            next = written.recv() => next,
            ready = reader.readable(), if input.is_empty() => {
                ready.map_err(|e| e.to_string())?;
                input.reserve(4096);
                match reader.try_read_buf(&mut input) {
                    Ok(0) => return Err("connection closed by the shard".to_owned()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.to_string()),
                }
                continue;
            }
        };
        let count = match next {
            None => break,
            Some(Written::Job(count, replies)) => {
                *reading = Some(replies);
                count
            }
            Some(Written::Probe) => {
                let raw = read_one(&mut reader, &mut input, &mut decoder).await?;
                let offset = decode_one(&raw).as_ref().and_then(role_offset);
                *position = position.zip(offset).map(|(p, offset)| p.at(offset));
                if position.is_none() {
                    probing.store(false, Ordering::Relaxed);
                }
                continue;
            }
        };
        let mut got = VecDeque::with_capacity(count);
        while got.len() < count {
            match take_raw_reply(&mut input, &mut decoder) {
                Ok(Some(raw)) => {
                    got.push_back(raw);
                    continue;
                }
                Ok(None) => {}
                Err(reason) => return Err(reason),
            }
            input.reserve(4096);
            let read = match reader.read_buf(&mut input).await {
                Ok(0) => Err("connection closed by the shard".to_owned()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            };
            read?;
        }
        // The client may have gone; its replies are dropped.
        if let Some(replies) = reading.take() {
            let _ = replies.send(Ok(got));
        }
    }
    Ok(())
}

/// The next complete reply off the connection.
async fn read_one(
    reader: &mut OwnedReadHalf,
    input: &mut BytesMut,
    decoder: &mut Decoder,
) -> Result<Bytes, String> {
    loop {
        if let Some(raw) = take_raw_reply(input, decoder)? {
            return Ok(raw);
        }
        input.reserve(4096);
        match reader.read_buf(input).await {
            Ok(0) => return Err("connection closed by the shard".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A complete reply, decoded.
fn decode_one(raw: &[u8]) -> Option<Value> {
    let mut buffer = BytesMut::from(raw);
    Decoder::new(Limits::for_replies())
        .decode(&mut buffer)
        .ok()
        .flatten()
}

/// One client's use of a shared connection for one shard: requests are gathered with
/// [`SharedConn::send`], handed over as one job by [`SharedConn::flush`], and their replies
/// taken in order with [`SharedConn::reply_raw`] / [`SharedConn::reply`], as with a
/// [`ShardConn`].
pub(crate) struct SharedConn {
    shard: u64,
    addr: SocketAddr,
    link: SharedLink,
    out: BytesMut,
    count: usize,
    /// Whether a request of the next job may write.
    writes: bool,
    jobs: VecDeque<JobState>,
    decoder: Decoder,
}

/// A job handed over and not fully answered yet.
enum JobState {
    Waiting(oneshot::Receiver<JobReplies>, usize),
    Answered(VecDeque<Bytes>),
    Failed(ShardError, usize),
}

impl SharedConn {
    fn new(shard: u64, addr: SocketAddr, link: SharedLink) -> Self {
        SharedConn {
            shard,
            addr,
            link,
            out: BytesMut::new(),
            count: 0,
            writes: false,
            jobs: VecDeque::new(),
            decoder: Decoder::new(Limits::for_replies()),
        }
    }

    /// The address of the shard primary this goes to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the shared connection failed; this handle is replaced before the next batch.
    pub fn is_broken(&self) -> bool {
        self.link.is_broken()
    }

    /// Appends `request` to this client's next job.
    pub fn send(&mut self, request: &Request) {
        request.encode(&mut self.out);
        self.count += 1;
        self.writes |= crate::lookup_request(request).is_none_or(|spec| spec.write);
    }

    /// Hands the requests appended since the last flush to the link as one job.
    pub async fn flush(&mut self) {
        if self.count == 0 {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let job = Job {
            requests: self.out.split().freeze(),
            count: std::mem::take(&mut self.count),
            writes: std::mem::take(&mut self.writes),
            replies: tx,
        };
        let count = job.count;
        let state = match self.link.jobs.send(job).await {
            Ok(()) => JobState::Waiting(rx, count),
            Err(_) => JobState::Failed(self.unavailable(), count),
        };
        self.jobs.push_back(state);
    }

    /// The next reply as the engine encoded it (RESP2), in the order requests were sent.
    pub async fn reply_raw(&mut self) -> Result<Bytes, ShardError> {
        loop {
            match self.jobs.front_mut() {
                None => return Err(self.unavailable()),
                Some(JobState::Answered(replies)) => match replies.pop_front() {
                    Some(raw) => return Ok(raw),
                    None => {
                        self.jobs.pop_front();
                    }
                },
                Some(JobState::Failed(error, left)) => {
                    let error = error.clone();
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        self.jobs.pop_front();
                    }
                    return Err(error);
                }
                Some(JobState::Waiting(..)) => {
                    let Some(JobState::Waiting(rx, count)) = self.jobs.pop_front() else {
                        unreachable!("the front job was waiting");
                    };
                    let state = match rx.await {
                        Ok(Ok(replies)) => JobState::Answered(replies),
                        Ok(Err(e)) => JobState::Failed(e, count),
                        Err(_) => JobState::Failed(self.lost(), count),
                    };
                    self.jobs.push_front(state);
                }
            }
        }
    }

    /// The next reply, decoded.
    pub async fn reply(&mut self) -> Result<Value, ShardError> {
        let raw = self.reply_raw().await?;
        let mut buffer = BytesMut::from(&raw[..]);
        match self.decoder.decode(&mut buffer) {
            Ok(Some(value)) => Ok(value),
            _ => Err(self.lost()),
        }
    }

    fn unavailable(&self) -> ShardError {
        ShardError::Unavailable {
            shard: self.shard,
            addr: self.addr,
            reason: "the shared connection to the shard is closed".into(),
        }
    }

    fn lost(&self) -> ShardError {
        ShardError::Lost {
            shard: self.shard,
            addr: self.addr,
            reason: "the shared connection to the shard failed".into(),
            position: None,
        }
    }
}

/// A client's connection to one shard: its own, or its handle on the shared one.
pub(crate) enum Conn {
    /// A connection of this client's own (transactions, blocking commands, RESP3).
    Own(ShardConn),
    /// This client's handle on the endpoint's shared connection.
    Shared(SharedConn),
}

impl Conn {
    /// See [`ShardConn::send`].
    pub fn send(&mut self, request: &Request) {
        match self {
            Conn::Own(c) => c.send(request),
            Conn::Shared(c) => c.send(request),
        }
    }

    /// See [`ShardConn::flush`].
    pub async fn flush(&mut self) {
        match self {
            Conn::Own(c) => c.flush().await,
            Conn::Shared(c) => c.flush().await,
        }
    }

    /// See [`ShardConn::reply`].
    pub async fn reply(&mut self) -> Result<Value, ShardError> {
        match self {
            Conn::Own(c) => c.reply().await,
            Conn::Shared(c) => c.reply().await,
        }
    }

    /// See [`ShardConn::reply_raw`].
    pub async fn reply_raw(&mut self) -> Result<Bytes, ShardError> {
        match self {
            Conn::Own(c) => c.reply_raw().await,
            Conn::Shared(c) => c.reply_raw().await,
        }
    }

    /// See [`ShardConn::addr`].
    pub fn addr(&self) -> SocketAddr {
        match self {
            Conn::Own(c) => c.addr(),
            Conn::Shared(c) => c.addr(),
        }
    }

    /// See [`ShardConn::is_broken`].
    pub fn is_broken(&self) -> bool {
        match self {
            Conn::Own(c) => c.is_broken(),
            Conn::Shared(c) => c.is_broken(),
        }
    }

    /// See [`ShardConn::logged_in_as`].
    pub fn logged_in_as(&self, login: &ShardLogin) -> bool {
        match self {
            Conn::Own(c) => c.logged_in_as(login),
            Conn::Shared(c) => c.link.logged_in_as(login),
        }
    }

    /// See [`ShardConn::generation`]; a shared connection holds no WATCH, so 0.
    pub fn generation(&self) -> u64 {
        match self {
            Conn::Own(c) => c.generation(),
            Conn::Shared(_) => 0,
        }
    }

    /// Whether this is a handle on the shared connection.
    pub fn is_shared(&self) -> bool {
        matches!(self, Conn::Shared(_))
    }
}
