//! Turning a [`Sample`] into OpenMetrics text with `prometheus-client`'s encoder.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::sample::{DbSample, Sample, ShardSample, SyncerSample};
use crate::MetricsError;

/// The content type of [`render`]'s output (OpenMetrics text 1.0.0, which Prometheus accepts).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label set: fixed names, escaped values.
type Labels = Vec<(&'static str, String)>;

/// Renders one sample as a complete OpenMetrics exposition, ending with `# EOF`.
pub fn render(sample: Sample) -> Result<String, MetricsError> {
    let mut registry = Registry::with_prefix("flotilla");
    registry.register_collector(Box::new(SampleCollector(sample)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Hands one sample to the registry, which asks it to encode itself.
#[derive(Debug)]
struct SampleCollector(Sample);

impl Collector for SampleCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_node(&mut encoder, &self.0)?;
        encode_dbs(&mut encoder, &self.0.dbs)?;
        encode_shards(&mut encoder, &self.0.shards)?;
        encode_syncers(&mut encoder, &self.0.syncers)
    }
}

fn encode_node(encoder: &mut DescriptorEncoder, sample: &Sample) -> Result<(), std::fmt::Error> {
    let help = "The node serving this endpoint (always 1).";
    let labels: Labels = vec![("node", sample.node.node_uid.to_string())];
    encoder
        .encode_descriptor("node", help, None, MetricType::Info)?
        .encode_info(&labels)
}

fn encode_dbs(encoder: &mut DescriptorEncoder, dbs: &[DbSample]) -> Result<(), std::fmt::Error> {
    let help = "A database with an endpoint on this node (always 1).";
    let mut info = encoder.encode_descriptor("bdb", help, None, MetricType::Info)?;
    for db in dbs {
        let mut labels = db_labels(db);
        labels.push(("redis_version", escape(&db.redis_version)));
        info.encode_info(&labels)?;
    }
    db_gauge(encoder, dbs, "bdb_shards", "Shards of the database.", |d| {
        d.shards
    })?;
    db_counter(
        encoder,
        dbs,
        "bdb_requests",
        "Commands answered by this node's endpoint.",
        |d| d.commands_total,
    )?;
    encode_db_errors(encoder, dbs)?;
    db_gauge(
        encoder,
        dbs,
        "bdb_connections",
        "Client connections open on this node's endpoint.",
        |d| d.connections_current,
    )?;
    db_counter(
        encoder,
        dbs,
        "bdb_connections_accepted",
        "Client connections accepted by this node's endpoint.",
        |d| d.connections_total,
    )?;
    encode_db_latency(encoder, dbs)
}

fn encode_db_errors(
    encoder: &mut DescriptorEncoder,
    dbs: &[DbSample],
) -> Result<(), std::fmt::Error> {
    let help = "Commands that failed: kind=error_reply (the engine answered with an error), \
                kind=not_executed (the endpoint failed them without running them) or \
                kind=unknown_outcome (the shard connection was lost after sending them: they \
                may or may not have run).";
    let mut metric = encoder.encode_descriptor("bdb_errors", help, None, MetricType::Counter)?;
    for db in dbs {
        for (kind, value) in [
            ("error_reply", db.error_replies_total),
            ("not_executed", db.not_executed_total),
            ("unknown_outcome", db.unknown_outcome_total),
        ] {
            let mut labels = db_labels(db);
            labels.push(("kind", kind.to_string()));
            metric
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
    }
    Ok(())
}

fn encode_db_latency(
    encoder: &mut DescriptorEncoder,
    dbs: &[DbSample],
) -> Result<(), std::fmt::Error> {
    let help = "Command latency seen by this node's endpoint.";
    let unit = Unit::Seconds;
    let mut metric =
        encoder.encode_descriptor("bdb_latency", help, Some(&unit), MetricType::Histogram)?;
    for db in dbs {
        let labels = db_labels(db);
        let latency = &db.latency;
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(
                latency.sum_seconds,
                latency.count,
                &latency.per_bucket_counts(),
                None,
            )?;
    }
    Ok(())
}

fn db_gauge(
    encoder: &mut DescriptorEncoder,
    dbs: &[DbSample],
    name: &str,
    help: &str,
    value: impl Fn(&DbSample) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for db in dbs {
        metric
            .encode_family(&db_labels(db))?
            .encode_gauge(&value(db))?;
    }
    Ok(())
}

fn db_counter(
    encoder: &mut DescriptorEncoder,
    dbs: &[DbSample],
    name: &str,
    help: &str,
    value: impl Fn(&DbSample) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for db in dbs {
        metric
            .encode_family(&db_labels(db))?
            .encode_counter::<NoLabelSet, _, u64>(&value(db), None)?;
    }
    Ok(())
}

fn encode_shards(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardSample],
) -> Result<(), std::fmt::Error> {
    shard_gauge(
        encoder,
        shards,
        "shard_up",
        "1 if the engine answered, else 0.",
        None,
        |s| u64::from(s.up),
    )?;
    shard_gauge(
        encoder,
        shards,
        "shard_role_master",
        "1 if the shard is a primary (role=\"master\"), 0 if a replica.",
        None,
        |s| u64::from(s.role == crate::ShardRole::Primary),
    )?;
    shard_gauge(
        encoder,
        shards,
        "shard_used_memory",
        "The engine's used_memory.",
        Some(Unit::Bytes),
        |s| s.used_memory_bytes,
    )?;
    shard_gauge(
        encoder,
        shards,
        "shard_repl_offset",
        "The engine's replication offset.",
        None,
        |s| s.repl_offset,
    )
}

fn shard_gauge(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardSample],
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: impl Fn(&ShardSample) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    for shard in shards {
        metric
            .encode_family(&shard_labels(shard))?
            .encode_gauge(&value(shard))?;
    }
    Ok(())
}

/// One syncer metric family: name, help, and the value of a link.
type SyncerFamily = (&'static str, &'static str, fn(&SyncerSample) -> u64);

fn encode_syncers(
    encoder: &mut DescriptorEncoder,
    syncers: &[SyncerSample],
) -> Result<(), std::fmt::Error> {
    let help = "Active-Active replication lag from a peer instance in ms (0 when caught up).";
    let mut lag =
        encoder.encode_descriptor("database_syncer_lag_ms", help, None, MetricType::Gauge)?;
    for syncer in syncers {
        let mut labels = syncer_labels(syncer);
        labels.insert(1, ("syncer_type", "crdt".to_string()));
        lag.encode_family(&labels)?.encode_gauge(&syncer.lag_ms)?;
    }
    let gauges: [SyncerFamily; 2] = [
        (
            "bdb_crdt_syncer_status",
            "Active-Active syncer status: 0 in sync, 1 syncing, 2 out of sync.",
            |s| u64::from(s.status),
        ),
        (
            "bdb_crdt_syncer_ops_lag",
            "Ops a peer instance logged that are not applied here yet.",
            |s| s.ops_lag,
        ),
    ];
    for (name, help, value) in gauges {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for syncer in syncers {
            metric
                .encode_family(&syncer_labels(syncer))?
                .encode_gauge(&value(syncer))?;
        }
    }
    let counters: [SyncerFamily; 2] = [
        (
            "crdt_sync_full",
            "Full state transfers from a peer instance (past its backlog).",
            |s| s.full_syncs,
        ),
        (
            "crdt_sync_partial_ok",
            "Resumptions from the stored position without a full transfer.",
            |s| s.partial_syncs,
        ),
    ];
    for (name, help, value) in counters {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for syncer in syncers {
            metric
                .encode_family(&syncer_labels(syncer))?
                .encode_counter::<NoLabelSet, _, u64>(&value(syncer), None)?;
        }
    }
    Ok(())
}

fn syncer_labels(syncer: &SyncerSample) -> Labels {
    vec![
        ("bdb", syncer.bdb_uid.to_string()),
        ("source", escape(&syncer.source)),
        ("shard", syncer.shard.to_string()),
    ]
}

fn db_labels(db: &DbSample) -> Labels {
    vec![("bdb", db.bdb_uid.to_string()), ("name", escape(&db.name))]
}

fn shard_labels(shard: &ShardSample) -> Labels {
    vec![
        ("shard", shard.shard_uid.to_string()),
        ("bdb", shard.bdb_uid.to_string()),
        ("node", shard.node_uid.to_string()),
        ("role", shard.role.as_str().to_string()),
    ]
}

/// Escapes a label value as the text format requires; the encoder writes values verbatim.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
