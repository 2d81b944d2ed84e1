//! The master lease: what a master whose node is cut off from the primary node does.
//!
//! The reporter renews the lease with every report the primary node acknowledges (when this
//! node is the primary node itself, only once a quorum of nodes confirmed it still leads), from
//! the moment the report was sent. When the lease has not been renewed for [`MASTER_LEASE`],
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
use flotilla_store::Store;

use crate::shards::{DesiredShard, ObservedShards};

/// Short timeouts: a local engine answers at once, and a fence that cannot be laid this check
/// is laid at the next.
const FENCE_CLIENT: ClientOptions = ClientOptions {
    connect_timeout: LEASE_FENCE_REACH,
    response_timeout: Some(LEASE_FENCE_REACH),
};

/// How long the primary node's own check that a quorum still follows it may take.
const QUORUM_CHECK: Duration = Duration::from_secs(1);

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

/// True when the report the primary node just acknowledged proves this node still hears the
/// cluster: always for a report another node acknowledged (it was the primary node of a
/// quorum when it last heard one); for this node's own report, only once a quorum confirms
/// it still leads (a primary node cut off from the others goes on acknowledging itself).
pub(crate) async fn acknowledged_by_quorum(store: &Store) -> bool {
    if !store.is_primary_node() {
        return true;
    }
    let Ok(raft) = store.raft() else {
        return false;
    };
    matches!(
        tokio::time::timeout(QUORUM_CHECK, raft.get_read_log_id()).await,
        Ok(Ok(_))
    )
}

/// Whether a shard must be fenced now: the lease expired and it is a master (in the store or,
/// as last observed, in fact), or the lease holds again but the shard, fenced while it was
/// expired, still acts as a master the store no longer wants (failed over while this node was
/// cut off; the agent demotes it next).
pub(crate) fn needs_fence(
    lease_expired: bool,
    fenced_while_expired: bool,
    wanted_role: ShardRole,
    observed_role: Option<ShardRole>,
) -> bool {
    let acts_as_master = observed_role == Some(ShardRole::Primary);
    let wanted_master = wanted_role == ShardRole::Primary;
    match lease_expired {
        true => wanted_master || acts_as_master,
        false => fenced_while_expired && acts_as_master && !wanted_master,
    }
}

/// Lays the fence on shard `wanted`'s engine for [`LEASE_FENCE`].
pub(crate) async fn fence(wanted: &DesiredShard) {
    let spec = &wanted.spec;
    let login = spec.admin_login();
    let fenced = async {
        let client = EngineClient::connect_with(spec.bind, spec.port, &login, FENCE_CLIENT).await?;
        client
            .client_pause_write(LEASE_FENCE.as_millis() as u64)
            .await
    };
    match fenced.await {
        Ok(()) => tracing::debug!(shard = spec.shard_id, "master fenced: lease expired"),
        Err(e) => tracing::warn!(shard = spec.shard_id, error = %e, "cannot fence master"),
    }
}

/// Every [`LEASE_CHECK`] until `shutdown`: fences the shards of `desired` (what the store
/// places on this node now) that [`needs_fence`] says must be.
pub(crate) async fn run_fence(
    lease: MasterLease,
    observed: ObservedShards,
    desired: impl Fn() -> Vec<DesiredShard>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(LEASE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_expired = false;
    // The shards fenced since the lease last expired, until each is where the store wants it.
    let mut fenced = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let expired = lease.expired();
        if expired != was_expired {
            let since = lease.since_renewed();
            match expired {
                true => tracing::warn!(?since, "master lease expired: the primary node has not acknowledged a report; fencing this node's masters"),
                false => tracing::info!("master lease renewed: the primary node hears this node again"),
            }
            was_expired = expired;
        }
        let roles = observed.roles();
        let desired = desired();
        fenced.retain(|uid| desired.iter().any(|d| d.spec.shard_id == *uid));
        for wanted in desired {
            let uid = wanted.spec.shard_id;
            let role = roles.get(&uid).copied().flatten();
            if needs_fence(expired, fenced.contains(&uid), wanted.role, role) {
                fence(&wanted).await;
                fenced.insert(uid);
            } else if !expired {
                fenced.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_lease_fences_masters_and_a_renewed_one_only_deposed_masters() {
        use ShardRole::{Primary, Replica};
        assert!(needs_fence(true, false, Primary, Some(Primary)));
        assert!(
            needs_fence(true, false, Primary, None),
            "a master the store wants, unobserved"
        );
        assert!(
            needs_fence(true, false, Replica, Some(Primary)),
            "a master in fact"
        );
        assert!(!needs_fence(true, false, Replica, Some(Replica)));
        assert!(
            !needs_fence(false, true, Primary, Some(Primary)),
            "still the master"
        );
        assert!(
            needs_fence(false, true, Replica, Some(Primary)),
            "failed over while cut off"
        );
        assert!(!needs_fence(false, true, Replica, Some(Replica)), "demoted");
        assert!(
            !needs_fence(false, false, Replica, Some(Primary)),
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
