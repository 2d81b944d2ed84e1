//! The running daemon's side of an in-place upgrade: install the package, check that the node
//! may move to it, move primary-ship away, start the new binary, and pass it the listening
//! sockets, the cluster state and every client connection; or, between versions that cannot
//! hand over, stop and let the new binary start in this process's place.
//!
//! Steps (recorded in `DATA_DIR/upgrade.json`): `install`, `primary`, `spawn`, `hello`,
//! `listeners`, `sessions`, then the new daemon's `store` and `done`. Until `sessions` ends the
//! old daemon can take everything back: if the new process dies, it resumes accepting, keeps
//! the sessions it still has, and keeps serving.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::UpgradeOrder;
use flotilla_endpoints::{EndpointHandle, Endpoints};
use flotilla_handover::{Channel, ChannelError, Message, Service, HANDOVER_PROTOCOL};
use flotilla_model::rest::{NodeUpgradeRequest, NodeUpgradeStatus};
use flotilla_model::{at_least, compare_versions, ClusterState};
use flotilla_package::{Manifest, Package};
use flotilla_proxy::DetachedSession;
use flotilla_store::Store;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use crate::{DaemonProcess, ServiceListeners, UpgradeRecord, HANDOVER_FD_ARG};

/// The descriptor number the new daemon finds the handover channel on.
pub const HANDOVER_FD: i32 = 3;
/// How long the new binary may take to start and greet the old one.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the new daemon may take to serve the endpoints it was passed.
const ACCEPTING_TIMEOUT: Duration = Duration::from_secs(15);
/// How long sessions get to reach a command boundary before the rest are closed at their next
/// one. Longer than the proxies' hold timeout: a session parked on a switchover hold first
/// waits for the release.
pub const SESSIONS_BOUND: Duration =
    Duration::from_millis(flotilla_model::timing::HOLD_TIMEOUT.as_millis() as u64 + 2_000);
/// How long the sessions asked to close at a boundary get to do so.
const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// What the running daemon hands over, and with what.
pub struct OldDaemon {
    /// The software version this daemon runs.
    pub software_version: String,
    /// The data dir (absolute).
    pub data_dir: PathBuf,
    /// Where packages are installed side by side.
    pub packages_dir: PathBuf,
    /// The node's store.
    pub store: Store,
    /// Duplicates of the service listeners.
    pub services: ServiceListeners,
    /// The served endpoints.
    pub endpoints: Endpoints,
}

/// How the old daemon ends once the upgrade is under way.
pub enum Finish {
    /// The new daemon has the sockets and the sessions: stop the store, then exit.
    HandedOver(UpgradeRecord),
    /// No handover between these versions: stop serving, then replace this process with
    /// `command` (it adopts the shards; client connections close).
    Restart {
        /// The new daemon's command line.
        command: Command,
        /// The upgrade's record.
        record: UpgradeRecord,
    },
}

/// Runs an upgrade order. Answers `order.reply` once the new daemon has greeted this one (or
/// the restart is decided), or with why the upgrade could not start. `None`: this daemon keeps
/// serving (the upgrade was refused or failed and was taken back; the record says why).
pub async fn upgrade_in_place(old: &OldDaemon, order: UpgradeOrder) -> Option<Finish> {
    let UpgradeOrder { request, reply } = order;
    let (package, mut record) = match prepare(old, &request) {
        Ok(prepared) => prepared,
        Err(e) => {
            let _ = reply.send(Err(e));
            return None;
        }
    };
    move_primary_away(old, &mut record).await;
    let protocol = package.manifest().handover_protocol.min(HANDOVER_PROTOCOL);
    if protocol == 0 {
        return restart(old, &package, record, reply);
    }
    match spawn_and_greet(old, &package, &mut record).await {
        Ok((channel, child)) => {
            let _ = reply.send(Ok(record.status().clone()));
            hand_over(old, channel, child, record).await
        }
        Err(e) => {
            record.failed(&e);
            let _ = reply.send(Err(e));
            None
        }
    }
}

/// Installs and checks the package; starts the record.
fn prepare(
    old: &OldDaemon,
    request: &NodeUpgradeRequest,
) -> Result<(Package, UpgradeRecord), String> {
    let source = PathBuf::from(&request.package);
    let manifest = flotilla_package::Manifest::of_package(&source)
        .map_err(|e| format!("package {}: {e}", source.display()))?;
    let target = manifest.version.to_string();
    check_move(&old.software_version, &manifest, &old.store.state())?;
    let package = flotilla_package::install(&source, &old.packages_dir)
        .map_err(|e| format!("package {}: {e}", source.display()))?;
    let method = if package.manifest().handover_protocol.min(HANDOVER_PROTOCOL) == 0 {
        "restart"
    } else {
        "handover"
    };
    let path = old.data_dir.join(flotilla_api::UPGRADE_STATUS_FILE);
    let record = UpgradeRecord::start(&path, &old.software_version, &target, method);
    Ok((package, record))
}

/// Whether this node may move from `current` to the package's `target` version: forward when
/// the package's `upgrade_from` covers `current`; back only to a version no older than the
/// cluster version (before finalization).
pub fn check_move(current: &str, manifest: &Manifest, state: &ClusterState) -> Result<(), String> {
    let target = manifest.version.to_string();
    let target = target.as_str();
    if current == target {
        return Err(format!("the node already runs {target}; nothing to do"));
    }
    let cluster_version = state.cluster_version();
    let backwards = compare_versions(target, current).is_lt();
    if backwards {
        if at_least(target, cluster_version) {
            return Ok(());
        }
        return Err(format!(
            "the cluster version is {cluster_version} (finalized), so no node may move back to {target}: every node must run {cluster_version} or newer. Options: stay on this version, move to another {cluster_version}-or-newer package, or replace the node (`flotilla cluster join --replace-node`) with one installed from {target} only in a cluster that never finalized past it"
        ));
    }
    let installed = semver::Version::parse(current)
        .map_err(|e| format!("this node's version {current} does not parse: {e}"))?;
    if manifest.may_upgrade_from(&installed) {
        return Ok(());
    }
    Err(format!(
        "package {target} may only be installed over {} and this node runs {current}: upgrade to a version it accepts first",
        manifest.upgrade_from
    ))
}

/// On the primary node, asks another node to take primary-ship first (Redis Software upgrades
/// the primary node first; the node being upgraded should not be the one the cluster waits
/// for). When no node can, the election timeouts decide after the store moves.
async fn move_primary_away(old: &OldDaemon, record: &mut UpgradeRecord) {
    if !old.store.is_primary_node() {
        return;
    }
    record.step("primary");
    match old.store.move_primary_node_away().await {
        Ok(uid) => tracing::info!(
            new_primary_node = uid,
            "moved primary-ship before the handover"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not move primary-ship first; the other nodes elect a new primary node if the handover takes long")
        }
    }
}

/// Starts the new binary with one end of the handover channel and waits for its greeting.
async fn spawn_and_greet(
    old: &OldDaemon,
    package: &Package,
    record: &mut UpgradeRecord,
) -> Result<(Arc<Channel>, Child), String> {
    record.step("spawn");
    let (mine, theirs) = Channel::pair().map_err(|e| format!("handover channel: {e}"))?;
    let process = DaemonProcess::current().map_err(|e| e.to_string())?;
    let log = old.data_dir.join("flotilla.log");
    let mut command = process
        .successor(&package.binary(), package.dir(), &log)
        .map_err(|e| e.to_string())?;
    command.arg(HANDOVER_FD_ARG).arg(HANDOVER_FD.to_string());
    pass_fd_at_exec(&mut command, theirs.inheritable_fd());
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting {}: {e}", package.binary().display()))?;
    drop(theirs);
    record.update(|s| s.new_pid = child.id());
    record.step("hello");
    let mine = Arc::new(mine);
    match timeout(HELLO_TIMEOUT, mine.recv()).await {
        Ok(Ok((Message::Hello { protocol, .. }, _))) if protocol >= 1 => {}
        other => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the new daemon (pid {}) did not greet this one ({}); it was stopped and this daemon keeps serving; its output is in {}",
                child.id(),
                describe(other),
                log.display()
            ));
        }
    }
    let welcome = Message::Welcome {
        protocol: HANDOVER_PROTOCOL,
        next_client_id: flotilla_proxy::next_client_id(),
        state: serde_json::to_value(&*old.store.state()).map_err(|e| e.to_string())?,
        listeners: (old.services.each().len() + old.endpoints.handles().len()) as u32,
    };
    mine.send(&welcome, &[]).await.map_err(|e| e.to_string())?;
    Ok((mine, child))
}

fn describe(
    received: Result<Result<(Message, Vec<OwnedFd>), ChannelError>, tokio::time::error::Elapsed>,
) -> String {
    match received {
        Err(_) => format!("no greeting within {HELLO_TIMEOUT:?}"),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok((message, _))) => format!("unexpected {message:?}"),
    }
}

/// Makes `fd` the child's descriptor [`HANDOVER_FD`], open across exec.
fn pass_fd_at_exec(command: &mut Command, fd: BorrowedFd<'_>) {
    let raw = fd.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if raw == HANDOVER_FD {
                let flags = libc::fcntl(raw, libc::F_GETFD);
                if flags < 0 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, HANDOVER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Passes the listeners, then the sessions; takes everything back if the new daemon dies.
async fn hand_over(
    old: &OldDaemon,
    channel: Arc<Channel>,
    mut child: Child,
    mut record: UpgradeRecord,
) -> Option<Finish> {
    let handles = old.endpoints.handles();
    let result = pass(old, &channel, &handles, &mut record).await;
    match result {
        Ok(()) => {
            record.update(|s| s.store_stopped_at_ms = flotilla_model::now_millis());
            Some(Finish::HandedOver(record))
        }
        Err(e) => {
            for handle in &handles {
                handle.control.keep_serving().await;
                handle.control.resume_accepting();
            }
            let _ = child.kill();
            let _ = child.wait();
            record.failed(&format!(
                "{e}; this daemon took its listeners back and keeps serving"
            ));
            None
        }
    }
}

async fn pass(
    old: &OldDaemon,
    channel: &Arc<Channel>,
    handles: &[Arc<EndpointHandle>],
    record: &mut UpgradeRecord,
) -> Result<(), String> {
    record.step("listeners");
    for (service, listener) in old.services.each() {
        send_listener(channel, service, listener).await?;
    }
    for handle in handles {
        let service = Service::Endpoint {
            bdb_uid: handle.bdb_uid,
        };
        send_listener(channel, service, &handle.listener).await?;
    }
    match timeout(ACCEPTING_TIMEOUT, channel.recv()).await {
        Ok(Ok((Message::Accepting, _))) => {}
        Ok(Ok((Message::Abort { reason }, _))) => {
            return Err(format!("the new daemon gave up: {reason}"))
        }
        Ok(Ok((other, _))) => {
            return Err(format!(
                "the new daemon sent {other:?} instead of accepting"
            ))
        }
        Ok(Err(e)) => return Err(format!("the new daemon went away before accepting: {e}")),
        Err(_) => {
            return Err(format!(
                "the new daemon did not accept within {ACCEPTING_TIMEOUT:?}"
            ))
        }
    }
    flotilla_store::failpoint::pause("handover:sessions").await;
    record.step("sessions");
    for handle in handles {
        handle.control.stop_accepting().await;
    }
    let (stop_streaming, streaming) = stream_state(old.store.clone(), channel.clone());
    let moved = move_sessions(channel, handles, record).await;
    let _ = stop_streaming.send(true);
    let _ = streaming.await;
    let (moved, took_ms) = moved?;
    let closed: u64 = handles
        .iter()
        .map(|h| h.control.counts().closed_at_boundary)
        .sum();
    record.update(|s| {
        s.sessions_moved = moved;
        s.sessions_closed = closed;
    });
    let done = Message::SessionsDone {
        moved,
        closed,
        took_ms,
    };
    channel.send(&done, &[]).await.map_err(|e| e.to_string())
}

async fn send_listener(
    channel: &Channel,
    service: Service,
    listener: &std::net::TcpListener,
) -> Result<(), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let message = Message::Listener { service, addr };
    channel
        .send(&message, &[listener.as_fd()])
        .await
        .map_err(|e| format!("passing the listener on {addr}: {e}"))
}

/// Sends the cluster state to the new daemon after every change until `stop`.
fn stream_state(
    store: Store,
    channel: Arc<Channel>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop_tx, mut stop) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut changes = store.subscribe();
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
            let Ok(state) = serde_json::to_value(&*store.state()) else {
                return;
            };
            if channel.send(&Message::State { state }, &[]).await.is_err() {
                return;
            }
        }
    });
    (stop_tx, task)
}

/// Asks every session to stop at a command boundary and passes each to the new daemon; after
/// [`SESSIONS_BOUND`] the rest are closed at their next boundary. Fails (putting back what it
/// still holds) when the new daemon goes away.
async fn move_sessions(
    channel: &Arc<Channel>,
    handles: &[Arc<EndpointHandle>],
    record: &mut UpgradeRecord,
) -> Result<(u64, u64), String> {
    let started = std::time::Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Arc<EndpointHandle>, DetachedSession)>();
    for handle in handles {
        let mut detaching = handle.control.detach_all().await;
        let (handle, tx) = (handle.clone(), tx.clone());
        tokio::spawn(async move {
            while let Some(session) = detaching.next().await {
                if let Err(mpsc::error::SendError((handle, session))) =
                    tx.send((handle.clone(), session))
                {
                    let _ = handle.control.adopt(session).await;
                }
            }
        });
    }
    drop(tx);
    let peer_gone = watch_peer(channel.clone());
    tokio::pin!(peer_gone);
    let bound = tokio::time::sleep(SESSIONS_BOUND);
    tokio::pin!(bound);
    let mut closing = false;
    let mut moved = 0u64;
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some((handle, session)) = next else { break };
                match send_session(channel, &handle, session).await {
                    Ok(()) => moved += 1,
                    Err((e, session)) => {
                        if let Some(session) = session {
                            let _ = handle.control.adopt(session).await;
                        }
                        return Err(give_back(&mut rx, e, moved).await);
                    }
                }
            }
            reason = &mut peer_gone => return Err(give_back(&mut rx, reason, moved).await),
            () = &mut bound => {
                if closing {
                    break;
                }
                closing = true;
                let mut asked = 0;
                for handle in handles {
                    asked += handle.control.close_at_boundary().await;
                }
                tracing::warn!(asked, "sessions did not reach a command boundary within {SESSIONS_BOUND:?}; closing them at their next one");
                record.step("sessions: closing the rest at a boundary");
                bound.as_mut().reset(tokio::time::Instant::now() + CLOSE_BOUND);
            }
        }
    }
    Ok((moved, started.elapsed().as_millis() as u64))
}

/// Puts the sessions detached but not yet passed back into their endpoints.
async fn give_back(
    rx: &mut mpsc::UnboundedReceiver<(Arc<EndpointHandle>, DetachedSession)>,
    reason: String,
    moved: u64,
) -> String {
    rx.close();
    while let Some((handle, session)) = rx.recv().await {
        let _ = handle.control.adopt(session).await;
    }
    format!("{reason}; {moved} client connection(s) already passed to it were lost with it")
}

/// Completes when the new daemon closes the channel or sends something unexpected.
async fn watch_peer(channel: Arc<Channel>) -> String {
    match channel.recv().await {
        Err(ChannelError::Closed) => "the new daemon exited during the handover".into(),
        Err(e) => e.to_string(),
        Ok((Message::Abort { reason }, _)) => format!("the new daemon gave up: {reason}"),
        Ok((other, _)) => format!("the new daemon sent {other:?} during the handover"),
    }
}

/// Passes one session; on failure gives the session back (when it was not consumed).
async fn send_session(
    channel: &Channel,
    handle: &EndpointHandle,
    session: DetachedSession,
) -> Result<(), (String, Option<DetachedSession>)> {
    let endpoint = match handle.listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => return Err((e.to_string(), Some(session))),
    };
    let state = match serde_json::to_value(&session.state) {
        Ok(state) => state,
        Err(e) => return Err((e.to_string(), Some(session))),
    };
    let message = Message::Session {
        endpoint,
        session: state,
    };
    let mut fds: Vec<BorrowedFd<'_>> = vec![session.client.as_fd()];
    fds.extend(session.engines.iter().map(|e| e.as_fd()));
    match channel.send(&message, &fds).await {
        Ok(()) => Ok(()),
        Err(e) => Err((e.to_string(), Some(session))),
    }
}

/// The fallback between versions without a handover: the new binary runs in this process's
/// place once it stopped serving.
fn restart(
    old: &OldDaemon,
    package: &Package,
    mut record: UpgradeRecord,
    reply: tokio::sync::oneshot::Sender<Result<NodeUpgradeStatus, String>>,
) -> Option<Finish> {
    record.step("restart");
    let log = old.data_dir.join("flotilla.log");
    let command = DaemonProcess::current()
        .and_then(|process| process.successor(&package.binary(), package.dir(), &log));
    match command {
        Ok(command) => {
            let _ = reply.send(Ok(record.status().clone()));
            Some(Finish::Restart { command, record })
        }
        Err(e) => {
            record.failed(&e.to_string());
            let _ = reply.send(Err(e.to_string()));
            None
        }
    }
}
