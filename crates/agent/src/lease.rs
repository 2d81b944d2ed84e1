//! The master lease: what a master whose node is cut off from the primary node does.
//!
//! The reporter renews the lease with every report the primary node acknowledges, from the
//! moment the report was sent; the primary node acknowledges a report only while a quorum
//! recently acknowledged its leadership (`flotilla_orchestrator`'s report route), so a primary
//! node cut off from the majority renews no lease, its own included. When the lease has not been renewed for [`MASTER_LEASE`],
//! the node is cut off from the primary node (or from a quorum) and its masters may be failed
//! over elsewhere at any moment: the [`ShardAgent`](crate::ShardAgent) fences every primary
//! shard on this node with `CLIENT PAUSE WRITE` for [`LEASE_FENCE`], laid again every
//! [`LEASE_CHECK`] while the lease stays expired. Writes through any endpoint then wait at the
//! engine instead of being acknowledged by a master that may no longer be the shard's.
//!
//! Once the lease is renewed (the node hears the store again) the agent stops laying the fence,
//! except on an engine that still acts as a master while the store no longer wants it to (it
//! was failed over while cut off): that one stays fenced until the agent demoted it, so writes
//! queued behind the fence are answered `-READONLY` (not executed; the proxies retry them on the
//! new master) rather than executed on a master about to resync from its successor.
//!
//! Engine-native `min-replicas-to-write` is not used: it would also fail writes whenever a
//! replica restarts during an upgrade.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_engine::{ClientOptions, EngineClient};
use flotilla_model::timing::{LEASE_CHECK, LEASE_FENCE, LEASE_FENCE_REACH, MASTER_LEASE};
use flotilla_model::ShardRole;

use crate::shards::{DesiredShard, ObservedShards};

/// Short timeouts: a local engine answers at once, and a fence that cannot be laid this check
/// is laid at the next.
const FENCE_CLIENT: ClientOptions = ClientOptions {
    connect_timeout: LEASE_FENCE_REACH,
    response_timeout: Some(LEASE_FENCE_REACH),
};

/// This node's master lease, shared by the reporter (which renews it) and the shard agent
/// (which fences when it expires). Cheap to clone. A new lease counts as renewed when created:
/// a daemon that starts cut off fences its adopted masters one lease later.
#[derive(Debug, Clone)]
pub struct MasterLease {
    renewed: Arc<Mutex<Instant>>,
}

impl Default for MasterLease {
    fn default() -> Self {
        MasterLease {
            renewed: Arc::new(Mutex::new(Instant::now())),
        }
    }
}

impl MasterLease {
    /// Renews the lease as of `sent`: when the acknowledged report was sent (never moves back).
    pub fn renew(&self, sent: Instant) {
        let mut renewed = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        *renewed = (*renewed).max(sent);
    }

    /// True once [`MASTER_LEASE`] passed since the last renewal.
    pub fn expired(&self) -> bool {
        self.since_renewed() > MASTER_LEASE
    }

    /// How long ago the lease was last renewed.
    pub fn since_renewed(&self) -> Duration {
        self.renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// What the lease asks of one shard's engine at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// Lay (or lay again) the fence: `CLIENT PAUSE WRITE` for [`LEASE_FENCE`].
    Lay,
    /// Nothing: a fence laid earlier lapses by itself within [`LEASE_FENCE`].
    Leave,
}

/// What a shard needs at a check. With the lease expired: a fence on every master (in the
/// store or, as last observed, in fact). With the lease renewed, for a shard this lease fenced:
/// the fence again while it still acts as a master the store no longer wants (failed over
/// while this node was cut off; the agent demotes it next, and writes queued behind the fence
/// are then answered `-READONLY`, not executed). A master the store still wants is not
/// unpaused at once: the fence lapses within [`LEASE_FENCE`], the time for this node's store
/// to catch up with what the primary node decided while it was cut off.
pub(crate) fn decide(
    lease_expired: bool,
    fenced_by_lease: bool,
    wanted_role: ShardRole,
    observed_role: Option<ShardRole>,
) -> Fence {
    let acts_as_master = observed_role == Some(ShardRole::Primary);
    let wanted_master = wanted_role == ShardRole::Primary;
    match (lease_expired, fenced_by_lease) {
        (true, _) if wanted_master || acts_as_master => Fence::Lay,
        (false, true) if acts_as_master && !wanted_master => Fence::Lay,
        _ => Fence::Leave,
    }
}

/// An authenticated client for the shard's engine, with short timeouts.
async fn engine(wanted: &DesiredShard) -> Result<EngineClient, flotilla_engine::EngineError> {
    let spec = &wanted.spec;
    let login = spec.admin_login();
    EngineClient::connect_with(spec.bind, spec.port, &login, FENCE_CLIENT).await
}

/// Lays the fence on shard `wanted`'s engine for [`LEASE_FENCE`].
async fn lay(wanted: &DesiredShard) {
    let uid = wanted.spec.shard_id;
    let pause = LEASE_FENCE.as_millis() as u64;
    let laid = async { engine(wanted).await?.client_pause_write(pause).await };
    match laid.await {
        Ok(()) => tracing::info!(shard = uid, "master fenced by the lease"),
        Err(e) => tracing::warn!(shard = uid, error = %e, "cannot fence the master"),
    }
}

/// Every [`LEASE_CHECK`] until `shutdown`: fences or unfences the shards of `desired` (what
/// the store places on this node now) as [`decide`] says.
pub(crate) async fn run_fence(
    lease: MasterLease,
    observed: ObservedShards,
    desired: impl Fn() -> Vec<DesiredShard>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(LEASE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_expired = false;
    // The shards this lease fenced, until each is where the store wants it.
    let mut fenced = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let expired = lease.expired();
        let desired = desired();
        if expired != was_expired && !desired.is_empty() {
            log_transition(expired, lease.since_renewed());
        }
        was_expired = expired;
        let roles = observed.roles();
        fenced.retain(|uid| desired.iter().any(|d| d.spec.shard_id == *uid));
        for wanted in desired {
            let uid = wanted.spec.shard_id;
            let role = roles.get(&uid).copied().flatten();
            match decide(expired, fenced.contains(&uid), wanted.role, role) {
                Fence::Lay => {
                    lay(&wanted).await;
                    fenced.insert(uid);
                }
                Fence::Leave if !expired => {
                    fenced.remove(&uid);
                }
                Fence::Leave => {}
            }
        }
    }
}

fn log_transition(expired: bool, since: Duration) {
    match expired {
        true => tracing::warn!(
            ?since,
            "master lease expired: the primary node has not acknowledged a report; fencing this node's masters (CLIENT PAUSE WRITE)"
        ),
        false => tracing::info!("master lease renewed: the primary node hears this node again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_lease_fences_masters_and_a_renewed_one_keeps_only_a_deposed_master_fenced() {
        use ShardRole::{Primary, Replica};
        assert_eq!(decide(true, false, Primary, Some(Primary)), Fence::Lay);
        assert_eq!(decide(true, false, Primary, None), Fence::Lay, "unobserved");
        assert_eq!(
            decide(true, false, Replica, Some(Primary)),
            Fence::Lay,
            "a master in fact"
        );
        assert_eq!(decide(true, false, Replica, Some(Replica)), Fence::Leave);
        assert_eq!(
            decide(false, true, Primary, Some(Primary)),
            Fence::Leave,
            "lapses"
        );
        assert_eq!(
            decide(false, true, Replica, Some(Primary)),
            Fence::Lay,
            "failed over meanwhile"
        );
        assert_eq!(
            decide(false, true, Replica, Some(Replica)),
            Fence::Leave,
            "demoted"
        );
        assert_eq!(
            decide(false, false, Replica, Some(Primary)),
            Fence::Leave,
            "a switchover's old master, observed a moment ago, is not the lease's to fence"
        );
    }

    #[test]
    fn a_lease_expires_after_the_master_lease_and_never_moves_back() {
        let lease = MasterLease::default();
        assert!(!lease.expired());
        let old = Instant::now() - MASTER_LEASE - Duration::from_millis(10);
        *lease.renewed.lock().unwrap() = old;
        assert!(lease.expired());
        lease.renew(old - Duration::from_secs(1));
        assert!(lease.expired(), "an older report does not renew");
        lease.renew(Instant::now());
        assert!(!lease.expired());
    }
}
