//! The projection of what a node knows onto one [`Sample`]: the cluster state names each
//! database and shard, the endpoints' counters and the agent's shard reports give the numbers.

use flotilla_model::rest::ShardReport;
use flotilla_model::{BdbUid, ClusterState, NodeUid};
use flotilla_proxy::{LatencySnapshot, StatsSnapshot};

use crate::{Bucket, DbSample, Histogram, NodeSample, Sample, ShardRole, ShardSample};

/// What `/metrics` shows on node `node_uid`: each database it serves an endpoint of, with that
/// endpoint's counters (`endpoints`), and each of its shards the agent reports (`shards`).
/// Counters of a database or reports of a shard the state no longer holds are left out.
pub fn sample_of(
    state: &ClusterState,
    node_uid: NodeUid,
    endpoints: &[(BdbUid, StatsSnapshot)],
    shards: &[ShardReport],
) -> Sample {
    let dbs = endpoints
        .iter()
        .filter_map(|(uid, stats)| {
            let bdb = state.bdbs.get(uid)?;
            Some(DbSample {
                bdb_uid: *uid,
                name: bdb.spec.name.clone(),
                redis_version: bdb.spec.redis_version.to_string(),
                shards: u64::from(bdb.spec.shards_count),
                commands_total: stats.commands_total,
                error_replies_total: stats.error_replies_total,
                not_executed_total: stats.not_executed_total,
                unknown_outcome_total: stats.unknown_outcome_total,
                connections_current: stats.connections_current,
                connections_total: stats.connections_total,
                latency: histogram(&stats.latency),
            })
        })
        .collect();
    let shards = shards
        .iter()
        .filter_map(|report| {
            let shard = state.shards.get(&report.uid)?;
            Some(ShardSample {
                shard_uid: report.uid,
                bdb_uid: shard.bdb_uid,
                node_uid,
                role: match shard.role {
                    flotilla_model::ShardRole::Primary => ShardRole::Primary,
                    flotilla_model::ShardRole::Replica => ShardRole::Replica,
                },
                up: report.up,
                used_memory_bytes: report.used_memory,
                repl_offset: report.offset.max(0) as u64,
            })
        })
        .collect();
    Sample {
        node: NodeSample { node_uid },
        dbs,
        shards,
        syncers: Vec::new(),
    }
}

/// The proxy's latency histogram (microseconds, per bucket) in Prometheus' shape (seconds,
/// cumulative).
fn histogram(latency: &LatencySnapshot) -> Histogram {
    Histogram {
        buckets: latency
            .cumulative()
            .into_iter()
            .map(|(bound_us, count)| Bucket {
                upper_bound_seconds: bound_us as f64 / 1e6,
                cumulative_count: count,
            })
            .collect(),
        sum_seconds: latency.sum_us as f64 / 1e6,
        count: latency.count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Database 1 (`cache`, 2 shards, redis-7.0) with primary shard 10 on node 1 and its replica
    /// 11 on node 2, as the store encodes it.
    fn state() -> ClusterState {
        let shard = |uid: u64, node: u64, role: &str| {
            json!({
                "uid": uid, "bdb_uid": 1, "node_uid": node, "role": role,
                "assigned_slots": "0-16383", "port": 20000, "redis_version": "redis-7.0"
            })
        };
        serde_json::from_value(json!({
            "bdbs": {"1": {
                "uid": 1, "name": "cache", "port": 12000, "memory_size": 104857600,
                "shards_count": 2, "replication": true, "redis_version": "redis-7.0",
                "created_at": 1
            }},
            "shards": {"10": shard(10, 1, "master"), "11": shard(11, 2, "slave")}
        }))
        .expect("a cluster state")
    }

    fn report(uid: u64, up: bool, offset: i64) -> ShardReport {
        serde_json::from_value(json!({"uid": uid, "up": up, "offset": offset, "used_memory": 4096}))
            .expect("a shard report")
    }

    #[test]
    fn a_served_database_carries_its_name_version_and_counters() {
        let stats = StatsSnapshot {
            commands_total: 7,
            error_replies_total: 2,
            not_executed_total: 1,
            unknown_outcome_total: 4,
            connections_current: 3,
            connections_total: 5,
            latency: LatencySnapshot {
                bounds_us: vec![100, 1000],
                counts: vec![4, 2, 1],
                sum_us: 2_500,
                count: 7,
            },
            ..StatsSnapshot::default()
        };
        let sample = sample_of(&state(), 1, &[(1, stats)], &[]);
        assert_eq!(sample.node.node_uid, 1);
        let db = &sample.dbs[..];
        assert_eq!(db.len(), 1);
        let db = &db[0];
        assert_eq!(
            (
                db.bdb_uid,
                db.name.as_str(),
                db.redis_version.as_str(),
                db.shards
            ),
            (1, "cache", "redis-7.0", 2)
        );
        assert_eq!(
            (
                db.commands_total,
                db.error_replies_total,
                db.not_executed_total,
                db.unknown_outcome_total,
                db.connections_current,
                db.connections_total
            ),
            (7, 2, 1, 4, 3, 5)
        );
        let buckets: Vec<_> = db
            .latency
            .buckets
            .iter()
            .map(|b| (b.upper_bound_seconds, b.cumulative_count))
            .collect();
        assert_eq!(buckets, [(0.0001, 4), (0.001, 6)]);
        assert_eq!((db.latency.sum_seconds, db.latency.count), (0.0025, 7));
    }

    #[test]
    fn shards_take_their_role_from_the_store_and_numbers_from_the_report() {
        let sample = sample_of(
            &state(),
            2,
            &[],
            &[report(11, true, 1234), report(10, false, -1)],
        );
        let shards: Vec<_> = sample
            .shards
            .iter()
            .map(|s| {
                (
                    s.shard_uid,
                    s.bdb_uid,
                    s.node_uid,
                    s.role,
                    s.up,
                    s.used_memory_bytes,
                    s.repl_offset,
                )
            })
            .collect();
        assert_eq!(
            shards,
            [
                (11, 1, 2, ShardRole::Replica, true, 4096, 1234),
                (10, 1, 2, ShardRole::Primary, false, 4096, 0),
            ]
        );
    }

    #[test]
    fn what_the_state_no_longer_holds_is_left_out() {
        let sample = sample_of(
            &state(),
            1,
            &[(9, StatsSnapshot::default())],
            &[report(99, true, 1)],
        );
        assert!(sample.dbs.is_empty());
        assert!(sample.shards.is_empty());
    }
}
