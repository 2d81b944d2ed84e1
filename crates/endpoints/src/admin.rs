//! The node's side of CONFIG through an endpoint ([`DatabaseAdmin`]): settings are committed to
//! the cluster store as the database's (the agents then apply them to every engine), read from
//! the database's engines as the admin user, and `CONFIG RESETSTAT` is run on every shard.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flotilla_engine::{EngineClient, EngineLogin};
use flotilla_model::{
    engine_setting_name, engine_setting_names, glob_matches, same_setting_value, BdbChange, BdbUid,
    ClusterState, Command, Shard, PERSISTENCE_SETTINGS,
};
use flotilla_proxy::{AdminFuture, DatabaseAdmin};
use flotilla_store::{Store, StoreError};

/// How long `CONFIG SET` waits for the store to show the change on this node and for every
/// primary engine to run with it (the agents apply it within a reconcile round).
const APPLY_WAIT: Duration = Duration::from_secs(15);

/// How often the primaries are checked while waiting.
const APPLY_POLL: Duration = Duration::from_millis(50);

/// The node's [`DatabaseAdmin`]: works once the daemon gives it the store (the endpoints may
/// serve before the store opens, during an in-place upgrade).
#[derive(Clone, Default)]
pub(crate) struct NodeAdmin {
    store: Arc<OnceLock<Store>>,
}

impl NodeAdmin {
    /// Gives the admin the node's store (once; later calls are ignored).
    pub(crate) fn set_store(&self, store: Store) {
        let _ = self.store.set(store);
    }

    fn store(&self) -> Result<Store, String> {
        self.store.get().cloned().ok_or_else(|| {
            "this node's cluster store is not open yet; try again in a moment".to_string()
        })
    }
}

impl DatabaseAdmin for NodeAdmin {
    fn set_config(&self, bdb: BdbUid, settings: Vec<(String, String)>) -> AdminFuture<()> {
        let store = self.store();
        Box::pin(async move { set_config(store?, bdb, settings).await })
    }

    fn get_config(&self, bdb: BdbUid, pattern: String) -> AdminFuture<Vec<(String, String)>> {
        let store = self.store();
        Box::pin(async move { get_config(&store?.state(), bdb, &pattern).await })
    }

    fn reset_stats(&self, bdb: BdbUid) -> AdminFuture<()> {
        let store = self.store();
        Box::pin(async move {
            let state = store?.state();
            for shard in state.shards_of(bdb) {
                let client = connect(&state, shard).await?;
                client
                    .command::<()>(redis::cmd("CONFIG").arg("RESETSTAT"))
                    .await
                    .map_err(|e| format!("CONFIG RESETSTAT on shard {}: {e}", shard.uid))?;
            }
            Ok(())
        })
    }
}

/// Commits the settings, then waits until this node's state shows them and every primary
/// engine runs with them.
async fn set_config(
    store: Store,
    bdb: BdbUid,
    settings: Vec<(String, String)>,
) -> Result<(), String> {
    let change = BdbChange {
        uid: bdb,
        memory_size: None,
        authentication_redis_pass: None,
        remove_authentication_redis_pass: false,
        authentication_redis_pass_sha256: None,
        limits: Default::default(),
        tls_mode: None,
        config: settings.iter().cloned().collect(),
    };
    match store.propose(Command::UpdateBdb(change)).await {
        // Its answer was lost: the state tells below whether it was committed.
        Ok(_) | Err(StoreError::OutcomeUnknown { .. }) => {}
        Err(e) => return Err(format!("the setting was not committed: {e}")),
    }
    let shown = |state: &ClusterState| {
        state.bdbs.get(&bdb).is_some_and(|b| {
            settings
                .iter()
                .all(|(name, value)| b.spec.config.get(name) == Some(value))
        })
    };
    if !store.wait_until(APPLY_WAIT, shown).await {
        return Err(format!(
            "the setting is committed but this node's copy of the store does not show it after {} s; CONFIG GET shows when it does",
            APPLY_WAIT.as_secs()
        ));
    }
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    loop {
        let lagging = lagging_primary(&store.state(), bdb, &settings).await;
        let Some(why) = lagging else {
            return Ok(());
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the setting is committed (every shard gets it from its agent), but {why} after {} s",
                APPLY_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(APPLY_POLL).await;
    }
}

/// The first primary of `bdb` that does not run with `settings` yet, described.
async fn lagging_primary(
    state: &ClusterState,
    bdb: BdbUid,
    settings: &[(String, String)],
) -> Option<String> {
    for shard in state.primaries_of(bdb) {
        let client = match connect(state, shard).await {
            Ok(client) => client,
            Err(e) => return Some(e),
        };
        for (name, value) in settings {
            let name = engine_setting_name(name, shard.redis_version);
            match client.config_get(name).await {
                Ok(Some(current)) if same_setting_value(name, &current, value) => {}
                Ok(current) => {
                    return Some(format!(
                        "shard {} still runs {name} = {}",
                        shard.uid,
                        current.unwrap_or_default()
                    ))
                }
                Err(e) => return Some(format!("shard {} does not answer: {e}", shard.uid)),
            }
        }
    }
    None
}

/// The configurable settings matching `pattern`, as the database's first primary engine names
/// and reports them.
async fn get_config(
    state: &ClusterState,
    bdb: BdbUid,
    pattern: &str,
) -> Result<Vec<(String, String)>, String> {
    let primaries = state.primaries_of(bdb);
    let Some(shard) = primaries.first() else {
        return Err(format!("database {bdb} has no primary shard right now"));
    };
    let client = connect(state, shard).await?;
    let mut pairs = Vec::new();
    let names = engine_setting_names(shard.redis_version);
    for name in names.iter().chain(PERSISTENCE_SETTINGS) {
        if !glob_matches(pattern, name) {
            continue;
        }
        let value = client
            .config_get(name)
            .await
            .map_err(|e| format!("CONFIG GET on shard {}: {e}", shard.uid))?;
        if let Some(value) = value {
            pairs.push((name.to_string(), value));
        }
    }
    Ok(pairs)
}

/// An admin connection to `shard`'s engine.
async fn connect(state: &ClusterState, shard: &Shard) -> Result<EngineClient, String> {
    let credentials = state.engine_credentials().map_err(|e| e.to_string())?;
    let addr = state.shard_addr(shard).map_err(|e| e.to_string())?;
    let login = EngineLogin::cluster_admin(&credentials);
    EngineClient::connect(addr.ip(), addr.port(), &login)
        .await
        .map_err(|e| format!("cannot reach shard {} at {addr}: {e}", shard.uid))
}
