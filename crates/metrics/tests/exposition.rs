//! Rendering a hand-built sample: names, types, labels and values as Prometheus will read them.

mod common;

use flotilla_metrics::{
    render, Bucket, DbSample, Histogram, NodeSample, Sample, ShardRole, ShardSample, SyncerSample,
};

fn cache_db() -> DbSample {
    DbSample {
        bdb_uid: 1,
        name: "cache".into(),
        redis_version: "valkey-8.1".into(),
        shards: 2,
        commands_total: 1234,
        error_replies_total: 5,
        not_executed_total: 2,
        unknown_outcome_total: 3,
        connections_current: 7,
        connections_total: 40,
        latency: Histogram {
            buckets: vec![
                Bucket {
                    upper_bound_seconds: 0.001,
                    cumulative_count: 900,
                },
                Bucket {
                    upper_bound_seconds: 0.01,
                    cumulative_count: 1200,
                },
            ],
            sum_seconds: 1.5,
            count: 1234,
        },
    }
}

fn shard(shard_uid: u64, role: ShardRole, up: bool) -> ShardSample {
    ShardSample {
        shard_uid,
        bdb_uid: 1,
        node_uid: 2,
        role,
        up,
        used_memory_bytes: 1_048_576 * shard_uid,
        repl_offset: 1000 + shard_uid,
    }
}

fn sample() -> Sample {
    Sample {
        node: NodeSample { node_uid: 2 },
        dbs: vec![cache_db()],
        shards: vec![
            shard(3, ShardRole::Primary, true),
            shard(4, ShardRole::Replica, false),
        ],
        syncers: vec![SyncerSample {
            bdb_uid: 1,
            source: "east/2".into(),
            shard: 0,
            status: 1,
            lag_ms: 850,
            ops_lag: 12,
            full_syncs: 1,
            partial_syncs: 3,
        }],
    }
}

#[test]
fn database_counters_and_gauges_carry_bdb_and_name() {
    let text = render(sample()).unwrap();
    let e = common::parse(&text);
    let db = [("bdb", "1"), ("name", "cache")];
    assert_eq!(e.value("flotilla_bdb_requests_total", &db), 1234.0);
    assert_eq!(e.types["flotilla_bdb_requests"], "counter");
    let reply = [("bdb", "1"), ("kind", "error_reply")];
    assert_eq!(e.value("flotilla_bdb_errors_total", &reply), 5.0);
    let refused = [("bdb", "1"), ("kind", "not_executed")];
    assert_eq!(e.value("flotilla_bdb_errors_total", &refused), 2.0);
    let unknown = [("bdb", "1"), ("kind", "unknown_outcome")];
    assert_eq!(e.value("flotilla_bdb_errors_total", &unknown), 3.0);
    assert_eq!(e.value("flotilla_bdb_connections", &db), 7.0);
    assert_eq!(e.types["flotilla_bdb_connections"], "gauge");
    assert_eq!(
        e.value("flotilla_bdb_connections_accepted_total", &db),
        40.0
    );
    assert_eq!(e.value("flotilla_bdb_shards", &db), 2.0);
    let info = [("bdb", "1"), ("redis_version", "valkey-8.1")];
    assert_eq!(e.value("flotilla_bdb_info", &info), 1.0);
    assert_eq!(e.value("flotilla_node_info", &[("node", "2")]), 1.0);
}

#[test]
fn latency_is_a_cumulative_histogram_in_seconds() {
    let e = common::parse(&render(sample()).unwrap());
    assert_eq!(e.types["flotilla_bdb_latency_seconds"], "histogram");
    assert_eq!(e.units["flotilla_bdb_latency_seconds"], "seconds");
    let db = [("bdb", "1")];
    assert_eq!(e.value("flotilla_bdb_latency_seconds_sum", &db), 1.5);
    assert_eq!(e.value("flotilla_bdb_latency_seconds_count", &db), 1234.0);
    let bucket = |le| {
        e.value(
            "flotilla_bdb_latency_seconds_bucket",
            &[("bdb", "1"), ("le", le)],
        )
    };
    assert_eq!(bucket("0.001"), 900.0);
    assert_eq!(bucket("0.01"), 1200.0);
    assert_eq!(bucket("+Inf"), 1234.0);
    assert_eq!(e.all("flotilla_bdb_latency_seconds_bucket").len(), 3);
}

#[test]
fn shard_metrics_carry_shard_bdb_node_and_role() {
    let e = common::parse(&render(sample()).unwrap());
    let primary = [
        ("shard", "3"),
        ("bdb", "1"),
        ("node", "2"),
        ("role", "master"),
    ];
    let replica = [
        ("shard", "4"),
        ("bdb", "1"),
        ("node", "2"),
        ("role", "slave"),
    ];
    assert_eq!(e.value("flotilla_shard_up", &primary), 1.0);
    assert_eq!(e.value("flotilla_shard_up", &replica), 0.0);
    assert_eq!(e.value("flotilla_shard_role_master", &primary), 1.0);
    assert_eq!(e.value("flotilla_shard_role_master", &replica), 0.0);
    assert_eq!(
        e.value("flotilla_shard_used_memory_bytes", &primary),
        3.0 * 1_048_576.0
    );
    assert_eq!(e.units["flotilla_shard_used_memory_bytes"], "bytes");
    assert_eq!(e.value("flotilla_shard_repl_offset", &replica), 1004.0);
}

#[test]
fn database_names_are_escaped_in_labels() {
    let mut s = sample();
    s.dbs[0].name = "we\"ird\\name\n".into();
    let e = common::parse(&render(s).unwrap());
    let db = [("bdb", "1"), ("name", "we\"ird\\name\n")];
    assert_eq!(e.value("flotilla_bdb_requests_total", &db), 1234.0);
}

#[test]
fn an_empty_node_still_renders_its_info_and_eof() {
    let e = common::parse(&render(Sample::default()).unwrap());
    assert_eq!(e.value("flotilla_node_info", &[("node", "0")]), 1.0);
    assert!(e.all("flotilla_bdb_requests_total").is_empty());
    assert_eq!(e.types["flotilla_shard_up"], "gauge");
}

#[test]
fn syncer_metrics_keep_redis_softwares_names() {
    let e = common::parse(&render(sample()).unwrap());
    let link = [("bdb", "1"), ("source", "east/2"), ("shard", "0")];
    let lag = [("bdb", "1"), ("syncer_type", "crdt"), ("source", "east/2")];
    assert_eq!(e.value("flotilla_database_syncer_lag_ms", &lag), 850.0);
    assert_eq!(e.types["flotilla_database_syncer_lag_ms"], "gauge");
    assert_eq!(e.value("flotilla_bdb_crdt_syncer_status", &link), 1.0);
    assert_eq!(e.value("flotilla_bdb_crdt_syncer_ops_lag", &link), 12.0);
    assert_eq!(e.value("flotilla_crdt_sync_full_total", &link), 1.0);
    assert_eq!(e.value("flotilla_crdt_sync_partial_ok_total", &link), 3.0);
}
