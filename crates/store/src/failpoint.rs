//! Fault injection at named points, for tests: each is off unless its environment variable is
//! set on the daemon. [`pause`] holds a named step (an action's step, `switchover:fenced`, an
//! in-place upgrade's `handover:sessions`) so a test can kill -9 a process while it is there;
//! the lost answer below makes a forwarded proposal's outcome unknown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use flotilla_model::Command;

/// Names the steps [`pause`] holds, comma-separated (each a whole step name, or its
/// operation: `switchover` matches `switchover 0-16383`, not `switchover:fenced`).
pub const PAUSE_STEP: &str = "FLOTILLA_FAILPOINT_PAUSE_STEP";
/// How long [`pause`] holds it, in milliseconds (3000 by default).
pub const PAUSE_MS: &str = "FLOTILLA_FAILPOINT_PAUSE_MS";

/// Waits [`PAUSE_MS`] before `step` runs when [`PAUSE_STEP`] names it, so a test can kill -9
/// a process while it is in that step; does nothing otherwise.
pub async fn pause(step: &str) {
    let Ok(wanted) = std::env::var(PAUSE_STEP) else {
        return;
    };
    let matches = wanted
        .split(',')
        .filter(|w| !w.is_empty())
        .any(|w| step == w || step.starts_with(&format!("{w} ")));
    if !matches {
        return;
    }
    let ms = std::env::var(PAUSE_MS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    tracing::warn!(step, ms, "failpoint: pausing before the step");
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Names the command kind (`create_bdb`, `create_action`, ...) whose first forwarded proposal
/// the primary node commits and then answers with a body that breaks off, as a connection lost
/// after the commit would: the forwarding node cannot know the outcome.
pub(crate) const LOSE_ANSWER: &str = "FLOTILLA_FAILPOINT_LOSE_ANSWER";

/// Set once the lost answer has been served: the failpoint fires once per process.
static ANSWER_LOST: AtomicBool = AtomicBool::new(false);

/// True when [`LOSE_ANSWER`] names this forwarded command's kind.
pub(crate) fn lose_answer_of(command: &Command) -> bool {
    let Ok(wanted) = std::env::var(LOSE_ANSWER) else {
        return false;
    };
    let kind = serde_json::to_value(command)
        .ok()
        .and_then(|json| json.get("kind")?.as_str().map(str::to_string));
    kind.as_deref() == Some(wanted.as_str())
}

/// The first time only: a `200 OK` whose body fails after the headers, so the forwarding
/// node's read of the answer errors.
pub(crate) fn lost_answer() -> Option<Response> {
    if ANSWER_LOST.swap(true, Ordering::SeqCst) {
        return None;
    }
    tracing::warn!("failpoint {LOSE_ANSWER}: the proposal was committed; losing its answer");
    let broken = futures_util::stream::once(async {
        Err::<Vec<u8>, _>(std::io::Error::other("failpoint: answer lost"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(broken))
        .ok()
}
