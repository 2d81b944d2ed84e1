//! Why an action step failed, and whether running it again may help: the runner retries a
//! step at once, after a pause, or fails the action, as the step's error says.

use flotilla_store::StoreError;

use crate::placement::PlacementError;
use crate::switchover::SwitchoverError;

/// When running a failed step again may help. Every step is idempotent (it checks the state
/// and does only what is missing), so running it again is always safe; this says whether it
/// is useful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// At once: the failure was transient (a request to another node or an engine that was
    /// lost on the way).
    Now,
    /// After a pause: the cluster is not ready yet (a slot range without a primary right after
    /// a primary node change, a node not yet seen up, a replica still catching up).
    Later,
    /// Never: the step cannot succeed as asked (a database without replication asked for a
    /// data-preserving switchover, a shard that did not sync within its bound); the action
    /// fails at once with the message.
    Never,
    /// Not until an operator acted on a machine (installed a new node, reinstalled one): the
    /// action pauses with the message, which says what to do and that `flotilla action resume`
    /// continues it.
    Operator,
}

/// Why an action step failed: a message that names the object and the fix, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// Whether and when the runner runs the step again.
    pub retry: Retry,
    /// What failed, naming the object and what to do; recorded as the action's error.
    pub message: String,
}

impl StepError {
    /// An error with its retry rule.
    pub fn new(retry: Retry, message: impl Into<String>) -> Self {
        Self {
            retry,
            message: message.into(),
        }
    }

    /// A transient failure: run the step again at once.
    pub fn now(message: impl Into<String>) -> Self {
        Self::new(Retry::Now, message)
    }

    /// The cluster is not ready for the step yet: run it again after a pause.
    pub fn later(message: impl Into<String>) -> Self {
        Self::new(Retry::Later, message)
    }

    /// The step cannot succeed as asked: fail the action now.
    pub fn never(message: impl Into<String>) -> Self {
        Self::new(Retry::Never, message)
    }

    /// The step waits for an operator's work on a machine: pause the action.
    pub fn operator(message: impl Into<String>) -> Self {
        Self::new(Retry::Operator, message)
    }

    /// The same error with `context` (e.g. the object being changed) in front of its message.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        Self::new(self.retry, format!("{context}: {}", self.message))
    }
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        let retry = match &e {
            // The request did not run: send it again (the runner stops when this node is no
            // longer the primary node).
            StoreError::NotSent { .. }
            | StoreError::NoPrimaryNode(_)
            | StoreError::NotPrimaryNode { .. } => Retry::Now,
            // The step reads the state again before it proposes anything, so it never repeats a
            // change that was applied; give the change time to show up.
            StoreError::OutcomeUnknown { .. } => Retry::Later,
            // The state moved under the step (a shard removed or promoted meanwhile, a port taken
            // since it was picked): the step re-reads it and proposes what fits now.
            StoreError::Refused(_) | StoreError::Internal(_) | StoreError::StoreFile(_) => {
                Retry::Later
            }
            StoreError::NotBootstrapped
            | StoreError::AlreadyBootstrapped(_)
            | StoreError::Unauthorized
            | StoreError::InvalidRequest(_) => Retry::Never,
        };
        Self::new(retry, e.to_string())
    }
}

impl From<SwitchoverError> for StepError {
    fn from(e: SwitchoverError) -> Self {
        let retry = match &e {
            SwitchoverError::Store(inner) => return inner.clone().into(),
            SwitchoverError::NoReplica(_) => Retry::Never,
            // A shard gone or promoted meanwhile, a replica still catching up, an engine
            // restarting, a node slow to apply the hold: all may pass.
            SwitchoverError::NotFound(_)
            | SwitchoverError::NotCaughtUp { .. }
            | SwitchoverError::Engine { .. }
            | SwitchoverError::HoldNotSpread { .. } => Retry::Later,
        };
        Self::new(retry, e.to_string())
    }
}

impl From<PlacementError> for StepError {
    fn from(e: PlacementError) -> Self {
        let retry = match &e {
            // Right after a primary node change no node is known to be up for a while.
            PlacementError::NotEnoughNodes { .. } => Retry::Later,
            PlacementError::NoFreePort(_) => Retry::Never,
        };
        Self::new(retry, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flotilla_model::ModelError;

    use super::*;

    fn retry_of(e: impl Into<StepError>) -> Retry {
        e.into().retry
    }

    #[test]
    fn a_request_that_did_not_run_is_retried_at_once() {
        let not_sent = StoreError::NotSent {
            addr: "127.0.0.12:3333".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(retry_of(not_sent), Retry::Now);
        assert_eq!(
            retry_of(StoreError::NoPrimaryNode("election".into())),
            Retry::Now
        );
        let not_leader = StoreError::NotPrimaryNode {
            primary_node: 2,
            rpc_addr: None,
        };
        assert_eq!(retry_of(not_leader), Retry::Now);
    }

    #[test]
    fn an_unknown_outcome_or_a_state_that_moved_is_retried_later() {
        let unknown = StoreError::OutcomeUnknown {
            addr: "local".into(),
            reason: "not committed within 10 s".into(),
        };
        assert_eq!(retry_of(unknown), Retry::Later);
        let gone = StoreError::Refused(ModelError::NotFound("shard 4 does not exist".into()));
        assert_eq!(retry_of(gone), Retry::Later);
        let taken = StoreError::Refused(ModelError::InvalidValue("port 20000 is taken".into()));
        assert_eq!(retry_of(taken), Retry::Later);
        assert_eq!(retry_of(SwitchoverError::NotFound(4)), Retry::Later);
        let behind = SwitchoverError::NotCaughtUp {
            primary: 1,
            replica: 2,
            timeout: Duration::from_secs(2),
            detail: "offset 10 < 20".into(),
        };
        assert_eq!(retry_of(behind), Retry::Later);
        let restarting = SwitchoverError::Engine {
            shard: 1,
            detail: "connection refused".into(),
        };
        assert_eq!(retry_of(restarting), Retry::Later);
        let no_node_up_yet = PlacementError::NotEnoughNodes {
            needed: 2,
            available: 1,
        };
        assert_eq!(retry_of(no_node_up_yet), Retry::Later);
    }

    #[test]
    fn a_step_that_cannot_succeed_as_asked_is_never_retried() {
        let e = StepError::from(SwitchoverError::NoReplica(3));
        assert_eq!(e.retry, Retry::Never);
        assert!(e.message.contains("shard 3"), "{e}");
        assert!(e.message.contains("--replication"), "names the fix: {e}");
        assert_eq!(retry_of(PlacementError::NoFreePort(2)), Retry::Never);
        assert_eq!(retry_of(StoreError::Unauthorized), Retry::Never);
    }

    #[test]
    fn a_store_error_inside_a_switchover_error_keeps_its_own_rule() {
        let lost = SwitchoverError::Store(StoreError::NotSent {
            addr: "127.0.0.12:3333".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(retry_of(lost), Retry::Now);
    }

    #[test]
    fn context_names_the_object_and_keeps_the_rule() {
        let e = StepError::never("no free port").context("replacement for shard 7");
        assert_eq!(e.message, "replacement for shard 7: no free port");
        assert_eq!(e.retry, Retry::Never);
    }
}
