//! Proposing the change a REST request asks for. A change whose outcome is unknown (the primary
//! node's answer was lost, or the commit did not finish in time) is never proposed again: the
//! handler says how to recognise it in the state, and when this node's state shows it within
//! [`APPLY_WAIT`] the request is answered as done; otherwise `outcome_unknown` says how to check.

use flotilla_model::{ClusterState, Command, CommandResult};
use flotilla_store::StoreError;

use crate::actions::APPLY_WAIT;
use crate::{ApiContext, ApiError};

/// A change and how to tell from the state that it was made.
pub(crate) struct Change<F> {
    /// The command to propose.
    pub command: Command,
    /// The outcome the command had, read back from a state where it was applied (`None` while
    /// the state does not show it).
    pub applied: F,
    /// The CLI command an operator runs to see whether the change was made.
    pub check: String,
}

/// Proposes `change.command`; a refusal is an error, an unknown outcome is answered as done
/// when the state shows the change within [`APPLY_WAIT`], else as `outcome_unknown`.
pub(crate) async fn propose<F>(
    context: &ApiContext,
    change: Change<F>,
) -> Result<CommandResult, ApiError>
where
    F: Fn(&ClusterState) -> Option<CommandResult>,
{
    let unknown = match context.store.propose(change.command).await {
        Err(e @ StoreError::OutcomeUnknown { .. }) => e,
        other => return Ok(other?),
    };
    let shown = context
        .store
        .wait_until(APPLY_WAIT, |state| (change.applied)(state).is_some())
        .await;
    match shown
        .then(|| (change.applied)(&context.store.state()))
        .flatten()
    {
        Some(result) => {
            tracing::info!(error = %unknown, "the change's answer was lost but the state shows it applied");
            Ok(result)
        }
        None => Err(ApiError::outcome_unknown(&unknown, &change.check)),
    }
}
