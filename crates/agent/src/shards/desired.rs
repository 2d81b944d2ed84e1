//! What this node should run, computed from the cluster state alone (no I/O): one
//! [`DesiredShard`] per shard the store places on this node.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use flotilla_engine::{EvictionPolicy, Persistence, ReplicaOf, ShardSpec};
use flotilla_model::{
    Bdb, ClusterState, DataPersistence, EngineCredentials, NodeUid, Shard, ShardRole, ShardUid,
};

use super::ShardError;

/// One shard this node must run: the engine spec and the role the store gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredShard {
    /// The shard's database (for logs).
    pub bdb_uid: u64,
    /// Primary or replica, as the store says.
    pub role: ShardRole,
    /// The store places a replica of this shard's slot range (for a primary: a failover target
    /// holds its data).
    pub has_replica: bool,
    /// A planned switchover holds this shard's slot range: the switchover, not the agent,
    /// moves the engines' roles until the store publishes the new primary.
    pub switching: bool,
    /// The engine to run; for a replica, `replica_of` names its current primary.
    pub spec: ShardSpec,
    /// The database's engine settings, under the names this shard's engine knows them by
    /// (see [`flotilla_model::engine_setting_name`]); applied with `CONFIG SET` as the admin
    /// user to every engine the agent starts or adopts.
    pub config: Vec<(String, String)>,
}

/// Every shard the store places on node `node`, keyed by shard uid. A shard whose spec cannot
/// be built (its primary's node has no usable address, say) maps to the error, so the caller
/// can log it and still run the others.
pub fn desired_shards(
    state: &ClusterState,
    node: NodeUid,
    bind: IpAddr,
    shards_dir: &Path,
) -> Result<BTreeMap<ShardUid, Result<DesiredShard, ShardError>>, ShardError> {
    let credentials = state
        .engine_credentials()
        .map_err(|e| ShardError::NotReady(e.to_string()))?;
    let desired = state
        .shards_on(node)
        .map(|shard| {
            let built = desired_shard(state, shard, bind, &credentials, shards_dir);
            (shard.uid, built)
        })
        .collect();
    Ok(desired)
}

fn desired_shard(
    state: &ClusterState,
    shard: &Shard,
    bind: IpAddr,
    credentials: &EngineCredentials,
    shards_dir: &Path,
) -> Result<DesiredShard, ShardError> {
    let bdb = state.bdbs.get(&shard.bdb_uid).ok_or_else(|| {
        ShardError::Inconsistent(format!(
            "shard {} names database {}, which does not exist",
            shard.uid, shard.bdb_uid
        ))
    })?;
    let replica_of = match shard.role {
        ShardRole::Primary => None,
        ShardRole::Replica => Some(primary_address(state, shard)?),
    };
    let spec = ShardSpec {
        shard_id: shard.uid,
        version: shard.redis_version,
        bind,
        port: shard.port,
        password: credentials.secret.clone(),
        users: Some(credentials.users.clone()),
        legacy: credentials.legacy,
        maxmemory_bytes: shard_memory(bdb),
        eviction: EvictionPolicy::default(),
        persistence: persistence(bdb.spec.data_persistence),
        dir: shards_dir.join(shard.uid.to_string()),
        replica_of,
    };
    let group = state.slot_group_of(shard);
    let has_replica = group.replicas().any(|other| other.uid != shard.uid);
    let switching = group.primary().is_some_and(|primary| primary.held);
    let config = bdb
        .spec
        .config
        .iter()
        .map(|(name, value)| {
            let name = flotilla_model::engine_setting_name(name, shard.redis_version);
            (name.to_string(), value.clone())
        })
        .collect();
    Ok(DesiredShard {
        config,
        bdb_uid: shard.bdb_uid,
        role: shard.role,
        has_replica,
        switching,
        spec,
    })
}

/// Where the primary of a replica's slot range listens: its node's address and its port.
fn primary_address(state: &ClusterState, replica: &Shard) -> Result<ReplicaOf, ShardError> {
    let primary = state
        .primary_of(replica.bdb_uid, replica.assigned_slots)
        .ok_or_else(|| {
            ShardError::Inconsistent(format!(
                "replica shard {} has no primary shard for slots {} of database {}",
                replica.uid, replica.assigned_slots, replica.bdb_uid
            ))
        })?;
    let addr = state
        .shard_addr(primary)
        .map_err(|e| ShardError::Inconsistent(e.to_string()))?;
    Ok(ReplicaOf {
        host: addr.ip(),
        port: addr.port(),
    })
}

/// The database's memory limit split evenly across its primary shards (a replica holds the same
/// data as its primary, so it gets the same limit).
fn shard_memory(bdb: &Bdb) -> u64 {
    bdb.spec.memory_size / u64::from(bdb.spec.shards_count.max(1))
}

/// The engine's persistence mode for a database's `data_persistence`.
fn persistence(mode: DataPersistence) -> Persistence {
    match mode {
        DataPersistence::Disabled => Persistence::None,
        DataPersistence::Aof => Persistence::Aof,
        DataPersistence::Snapshot => Persistence::Snapshot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_model::{
        BdbCreation, BdbSpec, ClusterCreation, Command, Credentials, EngineVersion, NodeAddition,
        NodeSpec, ShardPlan, ShardPromotion,
    };
    use flotilla_model::{CommandResult, SlotRange};

    fn node(addr: &str) -> NodeSpec {
        NodeSpec {
            addr: addr.parse().unwrap(),
            software_version: "0.1.0".into(),
            os: "test".into(),
            host: Default::default(),
        }
    }

    /// A two-node cluster with one database: primary on node 1, replica on node 2.
    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        let create = Command::CreateCluster(ClusterCreation {
            name: "c".into(),
            credentials: Credentials {
                username: "a".into(),
                password_hash: "h".into(),
            },
            secret: "sekret".into(),
            created_at: 0,
            node: node("127.0.0.11"),
            cluster_version: None,
        });
        assert!(matches!(
            state.apply(create),
            CommandResult::NodeAdded { .. }
        ));
        let add = Command::AddNode(NodeAddition {
            node: node("127.0.0.12"),
        });
        assert!(matches!(state.apply(add), CommandResult::NodeAdded { .. }));
        let slots = SlotRange::even(0, 1);
        let plan = |node_uid, role, port| ShardPlan {
            node_uid,
            role,
            assigned_slots: slots,
            port,
        };
        let bdb = Command::CreateBdb(BdbCreation {
            bdb: BdbSpec {
                name: "db".into(),
                port: 12000,
                memory_size: 300 << 20,
                shards_count: 3,
                replication: true,
                data_persistence: DataPersistence::Aof,
                redis_version: EngineVersion::Valkey81,
                authentication_redis_pass: None,
                authentication_redis_pass_sha256: None,
                limits: Default::default(),
                tls_mode: Default::default(),
                config: Default::default(),
                crdt: None,
            },
            created_at: 0,
            shards: vec![
                plan(1, ShardRole::Primary, 20001),
                plan(2, ShardRole::Replica, 20002),
            ],
        });
        assert!(matches!(state.apply(bdb), CommandResult::BdbCreated { .. }));
        state
    }

    #[test]
    fn the_database_settings_reach_every_shard_under_its_engines_names() {
        let mut state = state();
        let mut change: flotilla_model::BdbChange = serde_json::from_str(
            r#"{"uid":1,"config":{"hash-max-listpack-entries":"64","slowlog-max-len":"200"}}"#,
        )
        .unwrap();
        change.uid = *state.bdbs.keys().next().unwrap();
        state.apply(Command::UpdateBdb(change));
        let dir = Path::new("/data/shards");
        let on_2 = desired_shards(&state, 2, "127.0.0.12".parse().unwrap(), dir).unwrap();
        let replica = on_2.get(&2).unwrap().as_ref().unwrap();
        assert_eq!(
            replica.config,
            [
                ("hash-max-listpack-entries".to_string(), "64".to_string()),
                ("slowlog-max-len".to_string(), "200".to_string())
            ]
        );
        // redis-6.2 knows only the ziplist name.
        assert_eq!(
            flotilla_model::engine_setting_name(
                "hash-max-listpack-entries",
                EngineVersion::Redis62
            ),
            "hash-max-ziplist-entries"
        );
    }

    #[test]
    fn a_replica_follows_the_node_and_port_of_its_primary() {
        let state = state();
        let dir = Path::new("/data/shards");
        let on_2 = desired_shards(&state, 2, "127.0.0.12".parse().unwrap(), dir).unwrap();
        assert_eq!(on_2.len(), 1);
        let replica = on_2.get(&2).unwrap().as_ref().unwrap();
        assert_eq!(replica.role, ShardRole::Replica);
        assert!(!replica.has_replica);
        let spec = &replica.spec;
        assert_eq!(spec.bind.to_string(), "127.0.0.12");
        assert_eq!(spec.port, 20002);
        assert_eq!(spec.password, "sekret");
        assert_eq!(
            spec.users,
            Some(flotilla_model::EngineUsers::derive("sekret"))
        );
        assert!(
            spec.legacy,
            "a cluster of the first release keeps the default user"
        );
        assert_eq!(spec.maxmemory_bytes, 100 << 20);
        assert_eq!(spec.persistence, Persistence::Aof);
        assert_eq!(spec.version, EngineVersion::Valkey81);
        assert_eq!(spec.dir, Path::new("/data/shards/2"));
        let primary = spec.replica_of.unwrap();
        assert_eq!(
            (primary.host.to_string().as_str(), primary.port),
            ("127.0.0.11", 20001)
        );
    }

    #[test]
    fn a_promotion_swaps_who_follows_whom() {
        let mut state = state();
        assert_eq!(
            state.apply(Command::PromoteShard(ShardPromotion {
                uid: 2,
                require_held: false
            })),
            CommandResult::Ok
        );
        let dir = Path::new("/data/shards");
        let on_1 = desired_shards(&state, 1, "127.0.0.11".parse().unwrap(), dir).unwrap();
        let old_primary = on_1.get(&1).unwrap().as_ref().unwrap();
        assert_eq!(old_primary.role, ShardRole::Replica);
        let primary = old_primary.spec.replica_of.unwrap();
        assert_eq!(
            (primary.host.to_string().as_str(), primary.port),
            ("127.0.0.12", 20002)
        );
        let on_2 = desired_shards(&state, 2, "127.0.0.12".parse().unwrap(), dir).unwrap();
        let new_primary = on_2.get(&2).unwrap().as_ref().unwrap();
        assert_eq!(new_primary.role, ShardRole::Primary);
        assert_eq!(new_primary.spec.replica_of, None);
        assert!(new_primary.has_replica);
    }

    #[test]
    fn nothing_is_desired_before_the_cluster_exists() {
        let err = desired_shards(
            &ClusterState::default(),
            1,
            "127.0.0.11".parse().unwrap(),
            Path::new("/x"),
        )
        .unwrap_err();
        assert!(matches!(err, ShardError::NotReady(_)), "{err}");
    }
}
