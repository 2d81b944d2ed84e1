//! Fault injection at named points of the store, for tests: each is off unless its environment
//! variable is set on the daemon (like the action runner's `FLOTILLA_FAILPOINT_PAUSE_STEP`).

use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use flotilla_model::Command;

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
