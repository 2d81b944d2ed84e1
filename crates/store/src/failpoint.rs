//! Fault injection at named points, armed by one environment variable on the daemon: off unless
//! [`FAILPOINTS`] is set. A test (or an operator reproducing a bug) makes a daemon pause, exit
//! at once as a crash would, or fail, at a named place: before an action's step starts, after
//! its side effect and before it is recorded, around the agent's engine changes, after the store
//! committed a command and before it answers.
//!
//! Syntax (`FLOTILLA_FAILPOINTS`): entries separated by `;`, each `POINT[@PHASE]=[COUNT*]ACTION`:
//!
//! - `POINT` is a point's whole name, or its first word: `switchover` matches the step
//!   `switchover 0-16383` (every range's), `add_copy shard:4` only that one step.
//! - `PHASE` is `before` (the default) or `after`.
//! - `ACTION` is `pause(MS)` (wait MS milliseconds, then go on), `exit` (the process ends at
//!   once, as kill -9 would: no graceful shutdown, its engines keep running) or `error` (the
//!   step fails with an error naming the failpoint, and is retried as a transient failure).
//! - `COUNT*` fires the entry only the first COUNT times it matches in this process; without
//!   it, every time (`exit` fires once: the process is gone).
//!
//! e.g. `FLOTILLA_FAILPOINTS="upgrade_replica@after=exit;switchover:fenced=pause(3000)"`.
//!
//! The points:
//! - every action step, by its name as `flotilla action show` lists it (`before`: the step is
//!   about to run, again after a retry too; `after`: its side effect is done and not yet
//!   recorded, so the primary node that resumes the action runs it again);
//! - `switchover:fenced` (the old primary is fenced, the replica not yet promoted) and
//!   `handover:sessions` (an in-place upgrade is about to pass client sessions): `before` only;
//! - the agent's engine changes on its node: `agent:start_engine` (a shard's engine starts),
//!   `agent:restart_engine` (an engine on an older spec or version is stopped to start again),
//!   `agent:promote` (`REPLICAOF NO ONE`), `agent:replicaof` (the engine follows its primary),
//!   each `before` and `after`;
//! - `store:commit KIND` (`store:commit` for every kind, or e.g. `store:commit create_action`):
//!   on the primary node, `after` the command is committed and before its proposer gets the
//!   answer; `error` answers that the outcome is unknown;
//! - `store:campaign=error`: the node never stands for election on its own (it still votes, and
//!   takes primary-ship handed to it), so a test keeps the primary node where it wants it;
//! - `store:take_primary=error` ([`TAKE_PRIMARY`]): the node refuses primary-ship another node
//!   hands it (the handing node asks the next candidate), so with `store:campaign=error` it never
//!   becomes the primary node, e.g. the node a test's load runs through while primary nodes crash.
//!
//! - `store:forwarded KIND` ([`FORWARDED`]): on the primary node, `after` a proposal another node
//!   forwarded is committed and before it is answered; `error` breaks the answer off after its
//!   headers, as a connection lost after the commit would (the forwarding node cannot know the
//!   outcome), e.g. `store:forwarded create_bdb@after=1*error`.
//!
//! The variables of 0.1.0's tests still work: [`PAUSE_STEP`] / [`PAUSE_MS`] add a `pause` of
//! each named step, and [`LOSE_ANSWER`]`=KIND` is `store:forwarded KIND@after=1*error`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use flotilla_model::Command;

/// The one variable that arms failpoints (syntax in the module comment).
pub const FAILPOINTS: &str = "FLOTILLA_FAILPOINTS";
/// Older form: names the steps paused before they run, comma-separated (each a whole step name,
/// or its operation). Kept so existing tests and scripts work; the same as
/// `FLOTILLA_FAILPOINTS="STEP=pause(MS)"`.
pub const PAUSE_STEP: &str = "FLOTILLA_FAILPOINT_PAUSE_STEP";
/// Older form: how long a [`PAUSE_STEP`] pause lasts, in milliseconds (3000 by default).
pub const PAUSE_MS: &str = "FLOTILLA_FAILPOINT_PAUSE_MS";
/// The point a node reaches when another node hands it primary-ship (`before` only).
pub const TAKE_PRIMARY: &str = "store:take_primary";
/// The exit status of a process ended by an `exit` failpoint (what a test can tell apart).
pub const EXIT_STATUS: i32 = 86;

/// Where a failpoint sits relative to the work it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the work starts.
    Before,
    /// After its side effect, before it is recorded or answered.
    After,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Before => "before",
            Phase::After => "after",
        })
    }
}

/// What an armed failpoint does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Waits, then goes on.
    Pause(Duration),
    /// Ends the process at once, as a crash would.
    Exit,
    /// Fails the work with [`FailpointError::Injected`].
    Error,
}

/// A failpoint spec that does not parse, or the error an `error` failpoint injects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailpointError {
    /// An entry of [`FAILPOINTS`] (or of the older variables) does not parse.
    #[error("{FAILPOINTS}: entry {entry:?}: {why} (expected POINT[@before|@after]=[COUNT*]pause(MS)|exit|error, entries separated by ';')")]
    Spec {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// An armed `error` failpoint fired.
    #[error("failpoint {point}@{phase} injected an error ({FAILPOINTS})")]
    Injected {
        /// The point's name.
        point: String,
        /// Where it sits.
        phase: Phase,
    },
}

/// One armed entry.
#[derive(Debug)]
struct Entry {
    name: String,
    phase: Phase,
    action: Action,
    /// How many more times it fires (`u64::MAX`: always).
    left: AtomicU64,
}

impl Entry {
    /// True when the entry names `point` (whole, or its first word) at `phase`.
    fn names(&self, point: &str, phase: Phase) -> bool {
        self.phase == phase && names_point(&self.name, point)
    }

    /// Uses one firing; false once they are used up.
    fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            })
            .is_ok()
    }
}

/// True when `name` is `point`, or `point`'s first word (`switchover` names `switchover 0-16383`).
fn names_point(name: &str, point: &str) -> bool {
    point == name
        || point
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(' '))
}

/// The armed failpoints of a process.
#[derive(Debug, Default)]
pub struct Failpoints {
    entries: Vec<Entry>,
}

impl Failpoints {
    /// Parses a [`FAILPOINTS`] value.
    pub fn parse(spec: &str) -> Result<Failpoints, FailpointError> {
        let entries = spec
            .split(';')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(parse_entry)
            .collect::<Result<_, _>>()?;
        Ok(Failpoints { entries })
    }

    /// The failpoints armed by the environment: [`FAILPOINTS`], then the older [`PAUSE_STEP`].
    pub fn from_env() -> Result<Failpoints, FailpointError> {
        let mut armed = match std::env::var(FAILPOINTS) {
            Ok(spec) => Failpoints::parse(&spec)?,
            Err(_) => Failpoints::default(),
        };
        if let Ok(steps) = std::env::var(PAUSE_STEP) {
            let ms = std::env::var(PAUSE_MS).ok();
            armed.entries.extend(legacy_pauses(&steps, ms.as_deref())?);
        }
        if let Ok(kind) = std::env::var(LOSE_ANSWER) {
            armed.entries.push(legacy_lost_answer(&kind));
        }
        Ok(armed)
    }

    /// The action of the first entry naming `point` at `phase` that still fires, using one
    /// firing of it.
    fn fire(&self, point: &str, phase: Phase) -> Option<Action> {
        self.entries
            .iter()
            .filter(|e| e.names(point, phase))
            .find(|e| e.take())
            .map(|e| e.action)
    }

    /// True when an entry names `point` at `phase` with `action` (without firing it).
    fn arms(&self, point: &str, phase: Phase, action: Action) -> bool {
        self.entries
            .iter()
            .any(|e| e.names(point, phase) && e.action == action)
    }
}

/// The entries of the older variables: a pause of each comma-separated step, every time.
fn legacy_pauses(steps: &str, ms: Option<&str>) -> Result<Vec<Entry>, FailpointError> {
    let ms: u64 = match ms {
        None => 3000,
        Some(ms) => ms.trim().parse().map_err(|_| FailpointError::Spec {
            entry: format!("{PAUSE_MS}={ms}"),
            why: "not a number of milliseconds".into(),
        })?,
    };
    Ok(steps
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|name| Entry {
            name: name.to_string(),
            phase: Phase::Before,
            action: Action::Pause(Duration::from_millis(ms)),
            left: AtomicU64::new(u64::MAX),
        })
        .collect())
}

/// The entry of the older [`LOSE_ANSWER`]: the first forwarded proposal of `kind` loses its
/// answer.
fn legacy_lost_answer(kind: &str) -> Entry {
    Entry {
        name: forwarded_point_of(kind.trim()),
        phase: Phase::After,
        action: Action::Error,
        left: AtomicU64::new(1),
    }
}

fn parse_entry(entry: &str) -> Result<Entry, FailpointError> {
    let bad = |why: &str| FailpointError::Spec {
        entry: entry.to_string(),
        why: why.to_string(),
    };
    let (point, action) = entry.split_once('=').ok_or_else(|| bad("no '='"))?;
    let (name, phase) = match point.trim().rsplit_once('@') {
        Some((name, "before")) => (name, Phase::Before),
        Some((name, "after")) => (name, Phase::After),
        Some(_) => return Err(bad("the phase is @before or @after")),
        None => (point.trim(), Phase::Before),
    };
    if name.trim().is_empty() {
        return Err(bad("no point name"));
    }
    let action = action.trim();
    let (count, action) = match action.split_once('*') {
        Some((count, rest)) => {
            let count: u64 = count
                .trim()
                .parse()
                .map_err(|_| bad("COUNT* needs a whole number"))?;
            (count, rest.trim())
        }
        None => (u64::MAX, action),
    };
    let action = match action {
        "exit" => Action::Exit,
        "error" => Action::Error,
        pause => {
            let ms = pause
                .strip_prefix("pause(")
                .and_then(|rest| rest.strip_suffix(')'))
                .ok_or_else(|| bad("the action is pause(MS), exit or error"))?;
            let ms: u64 = ms
                .trim()
                .parse()
                .map_err(|_| bad("pause(MS) needs a number of milliseconds"))?;
            Action::Pause(Duration::from_millis(ms))
        }
    };
    Ok(Entry {
        name: name.trim().to_string(),
        phase,
        action,
        left: AtomicU64::new(count),
    })
}

/// This process's armed failpoints, read from the environment once. A spec that does not parse
/// arms nothing here (the daemon refuses to start with it: [`check_env`]).
fn armed() -> &'static Failpoints {
    static ARMED: OnceLock<Failpoints> = OnceLock::new();
    ARMED.get_or_init(|| {
        Failpoints::from_env().unwrap_or_else(|e| {
            tracing::error!(error = %e, "failpoints not armed");
            Failpoints::default()
        })
    })
}

/// Checks the environment's failpoint spec, so a daemon started with a mistyped one says so
/// instead of running without the fault its operator meant to inject.
pub fn check_env() -> Result<(), FailpointError> {
    Failpoints::from_env().map(|_| ())
}

/// Reaches failpoint `point` at `phase`: pauses, exits the process, or returns the injected
/// error, when an armed entry names it; does nothing otherwise.
pub async fn hit(point: &str, phase: Phase) -> Result<(), FailpointError> {
    match armed().fire(point, phase) {
        None => Ok(()),
        Some(Action::Pause(duration)) => {
            tracing::warn!(point, %phase, ms = duration.as_millis() as u64, "failpoint: pausing");
            tokio::time::sleep(duration).await;
            Ok(())
        }
        Some(Action::Exit) => exit_now(point, phase),
        Some(Action::Error) => {
            tracing::warn!(point, %phase, "failpoint: injecting an error");
            Err(FailpointError::Injected {
                point: point.to_string(),
                phase,
            })
        }
    }
}

/// Reaches failpoint `point` (before) where the work cannot fail: `pause` and `exit` act, an
/// armed `error` is logged and ignored. Kept for the points that only paused so far.
pub async fn pause(point: &str) {
    if let Err(e) = hit(point, Phase::Before).await {
        tracing::warn!(error = %e, "failpoint: no error can be injected here; going on");
    }
}

/// True when `store:campaign=error` is armed: this node does not stand for election by itself.
pub(crate) fn campaign_disabled() -> bool {
    armed().arms("store:campaign", Phase::Before, Action::Error)
}

/// Ends the process now, as kill -9 would: no destructor, no graceful shutdown, no flush of
/// anything but the line written here; detached engines keep running.
fn exit_now(point: &str, phase: Phase) -> ! {
    // Written straight to stderr (the daemon's log): a buffered logger would lose it.
    eprintln!("failpoint {point}@{phase}: exiting at once, as a crash would ({FAILPOINTS})");
    // SAFETY: `_exit` takes no pointer and never returns; skipping atexit handlers and
    // destructors is the point.
    unsafe { libc::_exit(EXIT_STATUS) }
}

/// Older form of `store:forwarded KIND@after=1*error`: names the command kind (`create_bdb`,
/// `create_action`, ...) whose first forwarded proposal the primary node commits and then
/// answers with a body that breaks off.
pub(crate) const LOSE_ANSWER: &str = "FLOTILLA_FAILPOINT_LOSE_ANSWER";
/// The point a forwarded proposal reaches on the primary node once committed (`store:forwarded
/// KIND`).
pub const FORWARDED: &str = "store:forwarded";

fn forwarded_point_of(kind: &str) -> String {
    format!("{FORWARDED} {kind}")
}

/// The kind of a command as its JSON names it (`create_bdb`, ...).
pub(crate) fn kind_of(command: &Command) -> Option<String> {
    let json = serde_json::to_value(command).ok()?;
    Some(json.get("kind")?.as_str()?.to_string())
}

/// The point `store:forwarded KIND` of a forwarded `command`; `None` when no failpoint is armed.
pub(crate) fn forwarded_point(command: &Command) -> Option<String> {
    if armed().entries.is_empty() {
        return None;
    }
    Some(forwarded_point_of(&kind_of(command).unwrap_or_default()))
}

/// The point `store:commit KIND` of `command`, reached once it is committed; `None` when no
/// failpoint is armed (the common case skips encoding the command).
pub(crate) fn commit_point(command: &Command) -> Option<String> {
    if armed().entries.is_empty() {
        return None;
    }
    Some(format!(
        "store:commit {}",
        kind_of(command).unwrap_or_default()
    ))
}

/// Reaches `point` (`store:forwarded KIND`, after the commit): when an armed `error` fires, a
/// `200 OK` whose body fails after the headers, so the forwarding node's read of the answer
/// errors; `pause` and `exit` act as anywhere.
pub(crate) async fn lost_answer(point: &str) -> Option<Response> {
    hit(point, Phase::After).await.err()?;
    tracing::warn!("failpoint {point}@after (armed by {FAILPOINTS} or the older {LOSE_ANSWER}: the proposal was committed; losing its answer)");
    let broken = futures_util::stream::once(async {
        Err::<Vec<u8>, _>(std::io::Error::other("failpoint: answer lost"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(broken))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(armed: &Failpoints, point: &str, phase: Phase) -> Option<Action> {
        armed.fire(point, phase)
    }

    #[test]
    fn the_older_lose_answer_variable_loses_one_forwarded_answer_of_its_kind() {
        let armed = Failpoints {
            entries: vec![legacy_lost_answer("create_bdb")],
        };
        let other = "store:forwarded create_action";
        assert_eq!(fire(&armed, other, Phase::After), None);
        let point = forwarded_point_of("create_bdb");
        assert_eq!(point, "store:forwarded create_bdb");
        assert_eq!(fire(&armed, &point, Phase::Before), None);
        assert_eq!(fire(&armed, &point, Phase::After), Some(Action::Error));
        assert_eq!(fire(&armed, &point, Phase::After), None, "once");
        let spec = Failpoints::parse("store:forwarded create_bdb@after=1*error").unwrap();
        assert_eq!(fire(&spec, &point, Phase::After), Some(Action::Error));
    }

    #[test]
    fn a_spec_arms_each_entry_at_its_point_and_phase() {
        let armed = Failpoints::parse(
            " upgrade_replica@after=exit ; switchover:fenced=pause(3000);add_copy shard:4@before=1*error;",
        )
        .unwrap();
        assert_eq!(
            fire(&armed, "upgrade_replica 0-8191", Phase::After),
            Some(Action::Exit)
        );
        assert_eq!(fire(&armed, "upgrade_replica 0-8191", Phase::Before), None);
        assert_eq!(
            fire(&armed, "switchover:fenced", Phase::Before),
            Some(Action::Pause(Duration::from_millis(3000)))
        );
        assert_eq!(fire(&armed, "switchover 0-16383", Phase::Before), None);
        assert_eq!(fire(&armed, "add_copy shard:2", Phase::Before), None);
        assert_eq!(
            fire(&armed, "add_copy shard:4", Phase::Before),
            Some(Action::Error)
        );
    }

    #[test]
    fn a_count_limits_the_firings_and_no_count_fires_every_time() {
        let armed = Failpoints::parse("finalize=2*error;sync_copy=pause(5)").unwrap();
        let finalize: Vec<_> = (0..3)
            .map(|_| fire(&armed, "finalize", Phase::Before))
            .collect();
        assert_eq!(finalize, [Some(Action::Error), Some(Action::Error), None]);
        for _ in 0..5 {
            assert!(fire(&armed, "sync_copy shard:1", Phase::Before).is_some());
        }
    }

    #[test]
    fn a_name_is_the_whole_point_or_its_first_word() {
        assert!(names_point("switchover", "switchover 0-16383"));
        assert!(names_point("switchover 0-16383", "switchover 0-16383"));
        assert!(!names_point("switchover", "switchover:fenced"));
        assert!(!names_point("switch", "switchover 0-16383"));
        assert!(names_point("store:commit", "store:commit create_bdb"));
    }

    #[test]
    fn a_bad_entry_is_refused_with_what_is_wrong() {
        for bad in [
            "finalize",
            "finalize=crash",
            "finalize=pause(soon)",
            "finalize@during=exit",
            "=exit",
            "finalize=x*exit",
        ] {
            let e = Failpoints::parse(bad).unwrap_err();
            assert!(
                e.to_string().contains(bad.split(';').next().unwrap()),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_older_variables_pause_each_named_step_every_time() {
        let entries = legacy_pauses("snapshot,drain_node", Some("2000")).unwrap();
        let armed = Failpoints { entries };
        for _ in 0..2 {
            assert_eq!(
                fire(&armed, "drain_node node:2", Phase::Before),
                Some(Action::Pause(Duration::from_millis(2000)))
            );
        }
        assert_eq!(fire(&armed, "snapshot", Phase::After), None);
        let default = legacy_pauses("snapshot", None).unwrap();
        assert_eq!(
            default[0].action,
            Action::Pause(Duration::from_millis(3000))
        );
        assert!(legacy_pauses("snapshot", Some("x")).is_err());
    }

    #[test]
    fn campaign_off_is_armed_without_firing() {
        let armed = Failpoints::parse("store:campaign=error").unwrap();
        assert!(armed.arms("store:campaign", Phase::Before, Action::Error));
        assert!(armed.arms("store:campaign", Phase::Before, Action::Error));
        assert!(!Failpoints::default().arms("store:campaign", Phase::Before, Action::Error));
    }

    #[tokio::test]
    async fn an_unarmed_point_does_nothing() {
        assert_eq!(hit("no such point", Phase::After).await, Ok(()));
    }
}
