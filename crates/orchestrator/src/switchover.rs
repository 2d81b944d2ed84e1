//! Planned switchover: move a slot range's primary role from process M to its replica R with no
//! client error and no lost acknowledged write (DESIGN.md, "Data path"):
//!
//! 1. hold: the store marks M's slots held; proxies queue their commands;
//! 2. fence M with `CLIENT PAUSE WRITE`, so no write, however late, executes on it;
//! 3. wait until R's offset reaches M's (bounded; on timeout unpause M, release, abort);
//! 4. promote R (`REPLICAOF NO ONE`) and publish it as primary (this also releases the hold);
//! 5. proxies send the queue to R; a write M answers `-READONLY` after the fence is retried
//!    on R (it was not executed);
//! 6. M becomes R's replica, then is unpaused.
//!
//! It runs on the primary node (a request made elsewhere is forwarded there), whose state
//! includes every committed command, and fences M only once every node that is up has applied
//! the hold: from then on no agent "repairs" M's or R's role (held slots are left to the
//! switchover) and every proxy queues instead of writing to M.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use flotilla_engine::{wait_for_sync, ClientOptions, EngineClient, EngineLogin, Role};
use flotilla_model::rest::NodeStatus;
use flotilla_model::timing::{
    CATCH_UP_TIMEOUT, HOLD_SPREAD_TIMEOUT, SWITCHOVER_FENCE, SWITCHOVER_RESPONSE_TIMEOUT,
};
use flotilla_model::{
    ClusterState, Command, Shard, ShardHold, ShardPromotion, ShardRole, ShardUid,
};
use flotilla_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::Observer;

/// Why a switchover did not happen (nothing changed when it is refused or aborted).
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SwitchoverError {
    /// The shard does not exist.
    #[error("shard {0} does not exist; `flotilla db show DB` lists its shards")]
    NotFound(#[serde(with = "wire::shard")] ShardUid),
    /// There is no replica to switch to.
    #[error("shard {0}'s slots have no replica to switch over to; create the database with --replication")]
    NoReplica(#[serde(with = "wire::shard")] ShardUid),
    /// The replica did not catch up in time; M was unpaused and the hold released.
    #[error("aborted: replica shard {replica} did not catch up with primary shard {primary} within {timeout:?} ({detail}); nothing changed")]
    NotCaughtUp {
        /// The primary (JSON keeps 0.1.0's name).
        #[serde(rename = "master")]
        primary: ShardUid,
        /// The replica.
        replica: ShardUid,
        /// The bound.
        timeout: Duration,
        /// What was last seen.
        detail: String,
    },
    /// An engine could not be reached or refused a command.
    #[error("shard {shard}: {detail}")]
    Engine {
        /// The shard.
        shard: ShardUid,
        /// What failed.
        detail: String,
    },
    /// A node did not apply the hold in time; the hold was released and nothing changed.
    #[error("aborted: node {node} did not apply the switchover hold within {timeout:?}; nothing changed")]
    HoldNotSpread {
        /// The slow node.
        node: u64,
        /// The bound.
        timeout: Duration,
    },
    /// The store refused or failed a proposal.
    #[error(transparent)]
    Store(
        #[from]
        #[serde(with = "wire::store")]
        StoreError,
    ),
}

/// The JSON of [`SwitchoverError`]'s newtype variants inside `/internal/switchover` answers. An
/// internally tagged newtype must hold a map: 0.1.0 could not encode `not_found` and
/// `no_replica` (a bare uid) nor decode `store` (its own `kind` beside the variant's), so these
/// forms are new and the other variants keep 0.1.0's JSON.
mod wire {
    /// `{"kind": "not_found" | "no_replica", "shard": UID}`.
    pub mod shard {
        use flotilla_model::ShardUid;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Serialize, Deserialize)]
        struct Shard {
            shard: ShardUid,
        }

        pub fn serialize<S: Serializer>(uid: &ShardUid, s: S) -> Result<S::Ok, S::Error> {
            Shard { shard: *uid }.serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ShardUid, D::Error> {
            Shard::deserialize(d).map(|s| s.shard)
        }
    }

    /// `{"kind": "store", "error": STORE_ERROR}`.
    pub mod store {
        use flotilla_store::StoreError;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Serialize, Deserialize)]
        struct Store {
            error: StoreError,
        }

        pub fn serialize<S: Serializer>(error: &StoreError, s: S) -> Result<S::Ok, S::Error> {
            Store {
                error: error.clone(),
            }
            .serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StoreError, D::Error> {
            Store::deserialize(d).map(|s| s.error)
        }
    }
}

/// What a completed switchover did and how long its phases took. The JSON (REST and
/// `/internal/switchover` answers) keeps 0.1.0's field names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchoverReport {
    /// The former primary.
    #[serde(rename = "old_master")]
    pub old_primary: ShardUid,
    /// The new primary.
    #[serde(rename = "new_master")]
    pub new_primary: ShardUid,
    /// From hold to the new primary published, in ms (the longest a client could wait).
    pub hold_ms: u64,
    /// Time every node took to apply the hold, in ms.
    pub spread_ms: u64,
    /// Time the replica took to catch up with the fenced primary, in ms.
    pub catch_up_ms: u64,
}

/// Switches shard `uid`'s slot range over: when `uid` is a primary, to its replica; when it is
/// a replica, to that replica. Forwarded to the primary node when this node is not it.
pub async fn switchover(
    observer: &Observer,
    uid: ShardUid,
) -> Result<SwitchoverReport, SwitchoverError> {
    let store = &observer.store;
    if !store.is_primary_node() {
        return store
            .call_primary_node("/internal/switchover", &uid)
            .await?;
    }
    let state = store.state();
    let (primary, replica) = pair(&state, uid)?;
    let span = tracing::info_span!(
        "switchover",
        shard = primary.uid,
        bdb = primary.bdb_uid,
        replica = replica.uid,
    );
    switch(observer, &state, &primary, &replica)
        .instrument(span)
        .await
}

/// The design's switchover steps from `primary` to `replica` (this node being the primary
/// node).
async fn switch(
    observer: &Observer,
    state: &ClusterState,
    primary: &Shard,
    replica: &Shard,
) -> Result<SwitchoverReport, SwitchoverError> {
    let store = &observer.store;
    let _driving = Driving::new(observer, primary.uid);
    let m = connect(state, primary).await?;
    let r = connect(state, replica).await?;
    let started = Instant::now();

    let hold = Command::HoldShard(ShardHold {
        uid: primary.uid,
        held: true,
    });
    let (_, index) = store.propose_indexed(hold).await?;
    if let Err(e) = applied_everywhere(observer, state, index).await {
        release(store, &m, primary.uid).await;
        return Err(e);
    }
    let spread_ms = started.elapsed().as_millis() as u64;
    let fence_ms = SWITCHOVER_FENCE.as_millis() as u64;
    if let Err(e) = m.client_pause_write(fence_ms).await {
        release(store, &m, primary.uid).await;
        return Err(engine(primary.uid, e));
    }
    let fenced = Instant::now();
    if let Err(e) = wait_for_sync(&m, &r, CATCH_UP_TIMEOUT).await {
        release(store, &m, primary.uid).await;
        return Err(SwitchoverError::NotCaughtUp {
            primary: primary.uid,
            replica: replica.uid,
            timeout: CATCH_UP_TIMEOUT,
            detail: e.to_string(),
        });
    }
    let catch_up_ms = fenced.elapsed().as_millis() as u64;
    flotilla_store::failpoint::pause("switchover:fenced").await;
    if let Err(e) = r.replicaof_no_one().await {
        release(store, &m, primary.uid).await;
        return Err(engine(replica.uid, e));
    }
    // Demote M before publishing: should the fence lapse or a late proxy write to M, M now
    // answers -READONLY (not executed, retried on R) instead of acknowledging a lost write.
    let (r_ip, r_port) = address(state, replica)?;
    let demoted = m.replicaof(r_ip, r_port).await;
    let promote = Command::PromoteShard(ShardPromotion {
        uid: replica.uid,
        require_held: true,
    });
    if let Err(e) = propose(store, promote).await {
        // The hold was released meanwhile (a new primary node undid this switchover): give
        // the role back to M, which may already be taking writes again.
        let (m_ip, m_port) = address(state, primary)?;
        let _ = r.replicaof(m_ip, m_port).await;
        let _ = m.replicaof_no_one().await;
        let _ = m.client_unpause().await;
        return Err(e);
    }
    let hold_ms = started.elapsed().as_millis() as u64;
    let _ = m.client_unpause().await;
    demoted.map_err(|e| engine(primary.uid, e))?;
    tracing::info!(hold_ms, catch_up_ms, "switchover done");
    Ok(SwitchoverReport {
        old_primary: primary.uid,
        new_primary: replica.uid,
        hold_ms,
        spread_ms,
        catch_up_ms,
    })
}

/// Marks a primary as being switched over by this node for as long as it lives.
struct Driving<'a> {
    observer: &'a Observer,
    primary: ShardUid,
}

impl<'a> Driving<'a> {
    fn new(observer: &'a Observer, primary: ShardUid) -> Self {
        observer
            .switching
            .lock()
            .expect("switching lock")
            .insert(primary);
        Driving { observer, primary }
    }
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        self.observer
            .switching
            .lock()
            .expect("switching lock")
            .remove(&self.primary);
    }
}

/// Waits until every node that is up has applied log entry `index` (bounded).
pub(crate) async fn applied_everywhere(
    observer: &Observer,
    state: &ClusterState,
    index: u64,
) -> Result<(), SwitchoverError> {
    let store = &observer.store;
    let statuses = observer.local_statuses();
    let deadline = Instant::now() + HOLD_SPREAD_TIMEOUT;
    for node in state.nodes.values() {
        // Nodes not known to be down are waited for: right after a primary node change every
        // node is `unknown` for a moment, and skipping them would fence with stale proxies about.
        if Some(node.uid) == store.uid() || statuses.get(&node.uid) == Some(&NodeStatus::Down) {
            continue;
        }
        let rpc = store.config().rpc_addr_of(node.addr);
        loop {
            let applied: Result<u64, StoreError> =
                store.call_internal(&rpc, "/internal/applied", &()).await;
            if applied.is_ok_and(|applied| applied >= index) {
                break;
            }
            if Instant::now() > deadline {
                return Err(SwitchoverError::HoldNotSpread {
                    node: node.uid,
                    timeout: HOLD_SPREAD_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(())
}

/// Undoes steps 1-2 after an abort: unpause M and release the hold.
async fn release(store: &Store, m: &EngineClient, primary: ShardUid) {
    let _ = m.client_unpause().await;
    if let Err(e) = propose(
        store,
        Command::HoldShard(ShardHold {
            uid: primary,
            held: false,
        }),
    )
    .await
    {
        tracing::error!(error = %e, "could not release the switchover hold");
    }
}

async fn propose(store: &Store, command: Command) -> Result<(), SwitchoverError> {
    store.propose(command).await?;
    Ok(())
}

fn pair(state: &ClusterState, uid: ShardUid) -> Result<(Shard, Shard), SwitchoverError> {
    let shard = state
        .shards
        .get(&uid)
        .ok_or(SwitchoverError::NotFound(uid))?;
    let group = state.slot_group_of(shard);
    let primary = group.primary().ok_or(SwitchoverError::NoReplica(uid))?;
    let replica = match shard.role {
        ShardRole::Replica => shard,
        // A replica on another node first (an upgrade's replacement of the primary shares its
        // node), then a permanent one.
        ShardRole::Primary => group
            .replicas()
            .min_by_key(|s| (s.node_uid == shard.node_uid, s.temporary, s.uid))
            .ok_or(SwitchoverError::NoReplica(uid))?,
    };
    Ok((primary.clone(), replica.clone()))
}

fn address(state: &ClusterState, shard: &Shard) -> Result<(IpAddr, u16), SwitchoverError> {
    let addr = state.shard_addr(shard).map_err(|e| engine(shard.uid, e))?;
    Ok((addr.ip(), addr.port()))
}

/// An authenticated client for `shard`'s engine whose commands outlast a fenced primary.
pub(crate) async fn connect(
    state: &ClusterState,
    shard: &Shard,
) -> Result<EngineClient, SwitchoverError> {
    let (ip, port) = address(state, shard)?;
    let credentials = state
        .engine_credentials()
        .map_err(|e| SwitchoverError::Store(e.into()))?;
    let login = EngineLogin::cluster_admin(&credentials);
    // Commands here must not time out while the primary is paused.
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        response_timeout: Some(SWITCHOVER_RESPONSE_TIMEOUT),
    };
    EngineClient::connect_with(ip, port, &login, options)
        .await
        .map_err(|e| engine(shard.uid, e))
}

fn engine(shard: ShardUid, e: impl std::fmt::Display) -> SwitchoverError {
    SwitchoverError::Engine {
        shard,
        detail: e.to_string(),
    }
}

/// A switchover cut short by a primary node change leaves the primary held: complete it when
/// the replica was already promoted on its engine, otherwise undo it (release, unpause).
pub async fn finish_interrupted(
    observer: &Observer,
    primary: &Shard,
) -> Result<(), SwitchoverError> {
    if !primary.held {
        return Ok(());
    }
    let span = tracing::info_span!(
        "switchover_repair",
        shard = primary.uid,
        bdb = primary.bdb_uid
    );
    repair(observer, primary).instrument(span).await
}

async fn repair(observer: &Observer, primary: &Shard) -> Result<(), SwitchoverError> {
    let store = &observer.store;
    let state = store.state();
    for replica in state.slot_group_of(primary).replicas() {
        if engine_role(&state, replica).await == Some(Role::Primary) {
            tracing::warn!(
                replica = replica.uid,
                "completing a switchover interrupted after the promotion"
            );
            return propose(
                store,
                Command::PromoteShard(ShardPromotion {
                    uid: replica.uid,
                    require_held: true,
                }),
            )
            .await;
        }
    }
    tracing::warn!("undoing a switchover interrupted before the promotion");
    if let Ok(client) = connect(&state, primary).await {
        let _ = client.client_unpause().await;
    }
    let release = Command::HoldShard(ShardHold {
        uid: primary.uid,
        held: false,
    });
    propose(store, release).await
}

async fn engine_role(state: &ClusterState, shard: &Shard) -> Option<Role> {
    let client = connect(state, shard).await.ok()?;
    client.replication().await.ok().map(|r| r.role)
}

/// Held primaries that no switchover on this node is driving (its primary node died while it
/// ran): repaired by the primary node's failover loop after a short grace.
pub(crate) fn orphaned_holds(observer: &Observer) -> Vec<Shard> {
    let driving = observer.switching.lock().expect("switching lock").clone();
    observer
        .store
        .state()
        .shards
        .values()
        .filter(|s| s.held && !driving.contains(&s.uid))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn round_trip(error: SwitchoverError) -> serde_json::Value {
        let message = error.to_string();
        let answer: Result<SwitchoverReport, SwitchoverError> = Err(error);
        let json = serde_json::to_value(&answer).expect("every switchover error encodes");
        let back: Result<SwitchoverReport, SwitchoverError> =
            serde_json::from_value(json.clone()).expect("and decodes");
        assert!(matches!(back, Err(e) if e.to_string() == message), "{json}");
        json
    }

    #[test]
    fn the_variants_0_1_0_could_encode_keep_their_json() {
        let json = round_trip(SwitchoverError::HoldNotSpread {
            node: 3,
            timeout: Duration::from_secs(1),
        });
        assert_eq!(
            json,
            json!({"Err": {"kind": "hold_not_spread", "node": 3, "timeout": {"secs": 1, "nanos": 0}}})
        );
        let json = round_trip(SwitchoverError::Engine {
            shard: 4,
            detail: "refused".into(),
        });
        assert_eq!(
            json,
            json!({"Err": {"kind": "engine", "shard": 4, "detail": "refused"}})
        );
        let old: serde_json::Value = json!({"Err": {"kind": "not_caught_up", "master": 1,
            "replica": 2, "timeout": {"secs": 2, "nanos": 0}, "detail": "behind"}});
        let decoded: Result<SwitchoverReport, SwitchoverError> =
            serde_json::from_value(old.clone()).unwrap();
        assert_eq!(serde_json::to_value(&decoded).unwrap(), old);
    }

    #[test]
    fn a_switchover_report_keeps_the_json_of_0_1_0() {
        let old = json!({"Ok": {"old_master": 1, "new_master": 2, "hold_ms": 30,
            "spread_ms": 5, "catch_up_ms": 12}});
        let decoded: Result<SwitchoverReport, SwitchoverError> =
            serde_json::from_value(old.clone()).unwrap();
        let report = decoded.as_ref().expect("a report");
        assert_eq!((report.old_primary, report.new_primary), (1, 2));
        assert_eq!(serde_json::to_value(&decoded).unwrap(), old);
    }

    #[test]
    fn a_forwarded_switchover_answers_every_error_in_a_form_the_caller_decodes() {
        assert_eq!(
            round_trip(SwitchoverError::NoReplica(3)),
            json!({"Err": {"kind": "no_replica", "shard": 3}})
        );
        assert_eq!(
            round_trip(SwitchoverError::NotFound(9)),
            json!({"Err": {"kind": "not_found", "shard": 9}})
        );
        assert_eq!(
            round_trip(SwitchoverError::Store(StoreError::NoPrimaryNode(
                "x".into()
            ))),
            json!({"Err": {"kind": "store", "error": {"kind": "no_leader", "description": "x"}}})
        );
    }
}
