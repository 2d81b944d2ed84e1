//! INFO through the endpoint: the request goes to every primary shard of the database, and
//! their replies are combined into the one reply the engine would give if it held the whole
//! database, plus a `# Flotilla` section.
//!
//! Every section and field the engine answers is kept, in the engine's order (a field only
//! some shards report, such as a `db0` keyspace line or an `errorstat_...` line, is kept
//! too). How a field combines depends on what it counts ([`rule`]):
//! - counters add up: `keyspace` (keys and expires summed, `avg_ttl` weighted by the keys
//!   with an expiry, over the shards that estimated it), `stats`, `cpu`, `errorstats`, `commandstats` (`usec_per_call`
//!   recomputed), `memory` byte counts (their `_human` forms recomputed), the `clients`
//!   counts;
//! - `connected_clients` is the endpoint's own client count (the shards count the proxy's
//!   connections, which the client never sees);
//! - `replication` describes the database as a client sees it: `role:master`,
//!   `connected_slaves` the fewest replicas any shard has (what `WAIT` can count on across
//!   shards), no `slaveN` lines (replica addresses are internal to the cluster);
//! - `server` is the engine's own (its version, git sha1, mode, os, ...), with `tcp_port`
//!   the endpoint's port and the engine's file paths (`executable`, `config_file`) left out;
//! - anything else (ratios, percentiles, states, settings) is shard 0's value.

use flotilla_resp::{Request, Value};

/// What INFO reports about the endpoint itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InfoContext {
    /// Client connections open on the endpoint now (`connected_clients`).
    pub clients: u64,
    /// The endpoint's port (`tcp_port`).
    pub port: u16,
    /// The database's uid, once the topology carries it.
    pub bdb_uid: Option<u64>,
    /// The database's number of shards.
    pub shards: u16,
    /// Whether the request asks for the `# Flotilla` section (no section, `default`, `all`,
    /// `everything` or `flotilla`).
    pub flotilla: bool,
}

impl InfoContext {
    /// The context of `request` (an INFO request) on an endpoint in the given state.
    pub fn of(
        request: &Request,
        clients: u64,
        port: u16,
        bdb_uid: Option<u64>,
        shards: u16,
    ) -> Self {
        let flotilla = request.args().is_empty()
            || request.args().iter().any(|arg| {
                let arg = arg.to_ascii_lowercase();
                matches!(
                    arg.as_slice(),
                    b"default" | b"all" | b"everything" | b"flotilla"
                )
            });
        InfoContext {
            clients,
            port,
            bdb_uid,
            shards,
            flotilla,
        }
    }

    fn section(&self) -> String {
        let uid = self.bdb_uid.map(|u| u.to_string()).unwrap_or_default();
        format!(
            "# Flotilla\r\nflotilla_proxy_version:{}\r\nbdb_uid:{uid}\r\nshards:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            self.shards
        )
    }
}

/// Combines the shards' INFO `replies` (in shard order) as the module docs say. An error
/// reply from any shard is the answer, so the client sees why INFO failed.
pub(crate) fn merge_info(replies: Vec<Value>, ctx: &InfoContext) -> Value {
    if let Some(error) = replies.iter().find(|r| r.is_error()) {
        return error.clone();
    }
    let mut verbatim = false;
    let mut texts = Vec::with_capacity(replies.len());
    for reply in &replies {
        match reply {
            Value::BulkString(text) => texts.push(String::from_utf8_lossy(text).into_owned()),
            Value::VerbatimString { text, .. } => {
                verbatim = true;
                texts.push(String::from_utf8_lossy(text).into_owned());
            }
            _ => return crate::merge::unexpected(),
        }
    }
    let parsed: Vec<Vec<Section>> = texts.iter().map(|t| parse(t)).collect();
    let mut out = render(&combine(&parsed), ctx);
    if ctx.flotilla {
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        out.push_str(&ctx.section());
    }
    if verbatim {
        Value::VerbatimString {
            format: *b"txt",
            text: out.into(),
        }
    } else {
        Value::bulk(out)
    }
}

/// One `# Name` section of an INFO reply: its fields in order.
#[derive(Debug, Clone, PartialEq)]
struct Section {
    name: String,
    fields: Vec<(String, String)>,
}

fn parse(text: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("# ") {
            sections.push(Section {
                name: name.trim().to_owned(),
                fields: Vec::new(),
            });
        } else if let Some((key, value)) = line.split_once(':') {
            if sections.is_empty() {
                sections.push(Section {
                    name: String::new(),
                    fields: Vec::new(),
                });
            }
            let section = sections.last_mut().expect("a section exists");
            section.fields.push((key.to_owned(), value.to_owned()));
        }
    }
    sections
}

/// A field's values across shards (`None` where a shard does not report it).
type Column = Vec<Option<String>>;

/// The union of the shards' sections and fields, in first-seen order, combined field by field.
fn combine(shards: &[Vec<Section>]) -> Vec<(String, Vec<(String, Column)>)> {
    let mut out: Vec<(String, Vec<(String, Column)>)> = Vec::new();
    for (i, sections) in shards.iter().enumerate() {
        for section in sections {
            let at = match out.iter().position(|(name, _)| *name == section.name) {
                Some(at) => at,
                None => {
                    out.push((section.name.clone(), Vec::new()));
                    out.len() - 1
                }
            };
            let fields = &mut out[at].1;
            for (key, value) in &section.fields {
                let at = match fields.iter().position(|(k, _)| k == key) {
                    Some(at) => at,
                    None => {
                        fields.push((key.clone(), vec![None; shards.len()]));
                        fields.len() - 1
                    }
                };
                fields[at].1[i] = Some(value.clone());
            }
        }
    }
    out
}

/// How one field combines across shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Shard 0's value (the first shard reporting it).
    First,
    /// Numbers added up.
    Sum,
    /// The largest number.
    Max,
    /// The smallest number.
    Min,
    /// `a=1,b=2` lists, each number added up (keyspace, errorstats, commandstats).
    Subfields,
    /// The human-readable form of the combined field without `_human`.
    Human,
    /// The endpoint's own value.
    Endpoint,
    /// Left out.
    Drop,
}

fn rule(section: &str, key: &str) -> Rule {
    match section.to_ascii_lowercase().as_str() {
        "server" => match key {
            "executable" | "config_file" => Rule::Drop,
            "tcp_port" => Rule::Endpoint,
            _ => Rule::First,
        },
        "clients" => match key {
            "connected_clients" => Rule::Endpoint,
            "maxclients" | "cluster_connections" => Rule::First,
            _ if key.contains("max") => Rule::Max,
            _ => Rule::Sum,
        },
        "memory" => memory_rule(key),
        "persistence" => match key {
            "rdb_changes_since_last_save" => Rule::Sum,
            _ => Rule::First,
        },
        "stats" if key.starts_with("latest_") || key.starts_with("current_") => Rule::First,
        "stats" if key.contains("perc") => Rule::First,
        "stats" | "cpu" => Rule::Sum,
        "replication" => match key {
            "connected_slaves" => Rule::Min,
            _ if is_replica_line(key) => Rule::Drop,
            _ => Rule::First,
        },
        "keyspace" | "errorstats" | "commandstats" => Rule::Subfields,
        _ => Rule::First,
    }
}

fn memory_rule(key: &str) -> Rule {
    if key.ends_with("_human") {
        return Rule::Human;
    }
    if key.ends_with("_perc") || key.ends_with("_ratio") || key.starts_with("number_of_") {
        return Rule::First;
    }
    let summed_prefix = ["used_memory", "maxmemory", "allocator_", "mem_", "lazyfree"];
    match key {
        "maxmemory_policy" | "mem_allocator" | "total_system_memory" => Rule::First,
        _ if summed_prefix.iter().any(|p| key.starts_with(p)) => Rule::Sum,
        _ => Rule::First,
    }
}

/// `slave0`, `slave1`, ...: a replica's address and offset.
fn is_replica_line(key: &str) -> bool {
    key.strip_prefix("slave")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn render(sections: &[(String, Vec<(String, Column)>)], ctx: &InfoContext) -> String {
    let mut out = String::new();
    for (name, fields) in sections {
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        if !name.is_empty() {
            out.push_str(&format!("# {name}\r\n"));
        }
        let mut done: Vec<(String, String)> = Vec::new();
        for (key, column) in fields {
            let value = match rule(name, key) {
                Rule::Drop => continue,
                Rule::Endpoint => endpoint_value(key, ctx),
                Rule::Human => human_of(&done, key).unwrap_or_else(|| first(column)),
                Rule::Subfields => subfields(column),
                Rule::First => first(column),
                Rule::Sum => numbers(column, Fold::Sum),
                Rule::Max => numbers(column, Fold::Max),
                Rule::Min => numbers(column, Fold::Min),
            };
            out.push_str(&format!("{key}:{value}\r\n"));
            done.push((key.clone(), value));
        }
    }
    out
}

fn endpoint_value(key: &str, ctx: &InfoContext) -> String {
    match key {
        "tcp_port" => ctx.port.to_string(),
        _ => ctx.clients.to_string(),
    }
}

fn first(column: &Column) -> String {
    column.iter().flatten().next().cloned().unwrap_or_default()
}

/// The `_human` form of the field it names, from that field's combined value.
fn human_of(done: &[(String, String)], key: &str) -> Option<String> {
    let raw = key.strip_suffix("_human")?;
    let (_, value) = done.iter().find(|(k, _)| k == raw)?;
    value.parse::<u64>().ok().map(bytes_to_human)
}

/// Redis's `bytesToHuman`: `919.33K`, `11.54M`, `200B`.
fn bytes_to_human(n: u64) -> String {
    const UNITS: [(&str, u32); 5] = [("K", 1), ("M", 2), ("G", 3), ("T", 4), ("P", 5)];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut unit = ("E", 6u32);
    for (name, power) in UNITS {
        if (n as f64) < 1024f64.powi(power as i32 + 1) {
            unit = (name, power);
            break;
        }
    }
    format!("{:.2}{}", n as f64 / 1024f64.powi(unit.1 as i32), unit.0)
}

#[derive(Debug, Clone, Copy)]
enum Fold {
    Sum,
    Max,
    Min,
}

/// The column's values folded as numbers: integers stay integers, decimals keep the first
/// value's number of decimals; a column that is not all numbers is shard 0's value.
fn numbers(column: &Column, fold: Fold) -> String {
    let values: Vec<&str> = column.iter().flatten().map(String::as_str).collect();
    if let Ok(ints) = values
        .iter()
        .map(|v| v.parse::<i64>())
        .collect::<Result<Vec<_>, _>>()
    {
        let folded = match fold {
            Fold::Sum => ints.iter().fold(0i64, |a, b| a.saturating_add(*b)),
            Fold::Max => ints.iter().copied().max().unwrap_or(0),
            Fold::Min => ints.iter().copied().min().unwrap_or(0),
        };
        return folded.to_string();
    }
    let Ok(floats) = values
        .iter()
        .map(|v| v.parse::<f64>())
        .collect::<Result<Vec<_>, _>>()
    else {
        return first(column);
    };
    let decimals = values
        .first()
        .and_then(|v| v.split_once('.'))
        .map_or(0, |(_, d)| d.len());
    let folded = match fold {
        Fold::Sum => floats.iter().sum(),
        Fold::Max => floats.iter().copied().fold(f64::MIN, f64::max),
        Fold::Min => floats.iter().copied().fold(f64::MAX, f64::min),
    };
    format!("{folded:.decimals$}")
}

/// `keys=3,expires=1,avg_ttl=100` lists summed subfield by subfield, in the first-seen order;
/// `avg_ttl` is weighted by `expires` (of the shards that estimated it), `usec_per_call` is
/// `usec / calls`.
fn subfields(column: &Column) -> String {
    let mut names: Vec<String> = Vec::new();
    let mut sums: Vec<f64> = Vec::new();
    let mut decimals: Vec<usize> = Vec::new();
    // avg_ttl weighted by the keys with an expiry of the shards that estimated it (an engine
    // reports 0 until it sampled some).
    let (mut ttl_weighted, mut ttl_weight) = (0f64, 0f64);
    for value in column.iter().flatten() {
        let pairs: Vec<(&str, &str)> = value.split(',').filter_map(|p| p.split_once('=')).collect();
        let expires = pairs
            .iter()
            .find(|(k, _)| *k == "expires")
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        for (name, number) in pairs {
            let n = number.parse::<f64>().unwrap_or(0.0);
            let at = match names.iter().position(|k| k == name) {
                Some(at) => at,
                None => {
                    names.push(name.to_owned());
                    sums.push(0.0);
                    decimals.push(number.split_once('.').map_or(0, |(_, d)| d.len()));
                    names.len() - 1
                }
            };
            sums[at] += n;
            if name == "avg_ttl" && n > 0.0 {
                ttl_weighted += n * expires;
                ttl_weight += expires;
            }
        }
    }
    let get = |name: &str| names.iter().position(|k| k == name).map(|at| sums[at]);
    let mut parts = Vec::with_capacity(names.len());
    for (at, name) in names.iter().enumerate() {
        let value = match name.as_str() {
            "avg_ttl" if ttl_weight > 0.0 => (ttl_weighted / ttl_weight).round(),
            "avg_ttl" => 0.0,
            "usec_per_call" => match (get("usec"), get("calls")) {
                (Some(usec), Some(calls)) if calls > 0.0 => usec / calls,
                _ => 0.0,
            },
            _ => sums[at],
        };
        let places = decimals[at];
        parts.push(format!("{name}={value:.places$}"));
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(text: &str) -> Value {
        Value::bulk(text.replace('\n', "\r\n"))
    }

    fn ctx(flotilla: bool) -> InfoContext {
        InfoContext {
            clients: 5,
            port: 12000,
            bdb_uid: Some(3),
            shards: 2,
            flotilla,
        }
    }

    fn text(value: Value) -> String {
        match value {
            Value::BulkString(b) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    const SHARD_0: &str = "# Server\nredis_version:7.0.15\nredis_git_sha1:00000000\ntcp_port:7001\nexecutable:/x/redis-server\nconfig_file:/x/redis.conf\n\n# Clients\nconnected_clients:3\nmaxclients:10000\nclient_recent_max_input_buffer:20\nblocked_clients:1\n\n# Memory\nused_memory:1048576\nused_memory_human:1.00M\nused_memory_peak_perc:100.20%\nmaxmemory_policy:noeviction\n\n# Stats\ntotal_commands_processed:10\ninstantaneous_input_kbps:0.50\nlatest_fork_usec:7\n\n# Replication\nrole:master\nconnected_slaves:1\nslave0:ip=10.0.0.2,port=7002,state=online,offset=5,lag=0\nmaster_repl_offset:5\n\n# CPU\nused_cpu_sys:0.006154\n\n# Commandstats\ncmdstat_set:calls=2,usec=7,usec_per_call=3.50,rejected_calls=0,failed_calls=0\n\n# Errorstats\nerrorstat_ERR:count=1\n\n# Keyspace\ndb0:keys=4,expires=1,avg_ttl=1000\n";

    const SHARD_1: &str = "# Server\nredis_version:7.0.15\nredis_git_sha1:00000000\ntcp_port:7003\nexecutable:/x/redis-server\nconfig_file:/x/redis.conf\n\n# Clients\nconnected_clients:4\nmaxclients:10000\nclient_recent_max_input_buffer:8\nblocked_clients:0\n\n# Memory\nused_memory:2097152\nused_memory_human:2.00M\nused_memory_peak_perc:99.00%\nmaxmemory_policy:noeviction\n\n# Stats\ntotal_commands_processed:5\ninstantaneous_input_kbps:0.25\nlatest_fork_usec:9\n\n# Replication\nrole:master\nconnected_slaves:0\nmaster_repl_offset:9\n\n# CPU\nused_cpu_sys:0.000001\n\n# Commandstats\ncmdstat_set:calls=2,usec=9,usec_per_call=4.50,rejected_calls=0,failed_calls=0\ncmdstat_get:calls=1,usec=1,usec_per_call=1.00,rejected_calls=0,failed_calls=0\n\n# Errorstats\nerrorstat_ERR:count=2\nerrorstat_WRONGTYPE:count=1\n\n# Keyspace\ndb0:keys=6,expires=3,avg_ttl=2000\n";

    #[test]
    fn counters_add_up_and_the_server_section_is_the_engines() {
        let merged = text(merge_info(vec![info(SHARD_0), info(SHARD_1)], &ctx(true)));
        for line in [
            "redis_version:7.0.15",
            "redis_git_sha1:00000000",
            "tcp_port:12000",
            "connected_clients:5",
            "maxclients:10000",
            "client_recent_max_input_buffer:20",
            "blocked_clients:1",
            "used_memory:3145728",
            "used_memory_human:3.00M",
            "used_memory_peak_perc:100.20%",
            "total_commands_processed:15",
            "instantaneous_input_kbps:0.75",
            "latest_fork_usec:7",
            "role:master",
            "connected_slaves:0",
            "used_cpu_sys:0.006155",
            "cmdstat_set:calls=4,usec=16,usec_per_call=4.00,rejected_calls=0,failed_calls=0",
            "cmdstat_get:calls=1,usec=1,usec_per_call=1.00,rejected_calls=0,failed_calls=0",
            "errorstat_ERR:count=3",
            "errorstat_WRONGTYPE:count=1",
            "db0:keys=10,expires=4,avg_ttl=1750",
            "flotilla_proxy_version:",
            "bdb_uid:3",
            "shards:2",
        ] {
            assert!(merged.contains(line), "{line} missing in:\n{merged}");
        }
        for absent in ["executable", "config_file", "slave0"] {
            assert!(!merged.contains(absent), "{absent} in:\n{merged}");
        }
        assert!(merged.starts_with("# Server\r\n"), "{merged}");
        assert!(merged.contains("\r\n\r\n# Flotilla\r\n"), "{merged}");
    }

    #[test]
    fn a_section_only_one_shard_reports_is_kept_and_flotilla_only_when_asked() {
        let empty = "# Keyspace\n";
        let merged = text(merge_info(
            vec![
                info(empty),
                info("# Keyspace\ndb0:keys=2,expires=0,avg_ttl=0\n"),
            ],
            &ctx(false),
        ));
        assert_eq!(merged, "# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n");
        // A shard that has not estimated avg_ttl yet (0) does not pull the average down.
        let merged = text(merge_info(
            vec![
                info("# Keyspace\ndb0:keys=5,expires=2,avg_ttl=0\n"),
                info("# Keyspace\ndb0:keys=5,expires=3,avg_ttl=900\n"),
            ],
            &ctx(false),
        ));
        assert_eq!(
            merged,
            "# Keyspace\r\ndb0:keys=10,expires=5,avg_ttl=900\r\n"
        );
        let request = Request::new("INFO", ["keyspace".into()]);
        assert!(!InfoContext::of(&request, 1, 1, None, 1).flotilla);
        let request = Request::new("INFO", ["Everything".into()]);
        assert!(InfoContext::of(&request, 1, 1, None, 1).flotilla);
        assert!(InfoContext::of(&Request::new("INFO", []), 1, 1, None, 1).flotilla);
    }

    #[test]
    fn a_shard_error_is_the_answer() {
        let err = Value::error("NOPERM no");
        assert_eq!(
            merge_info(vec![info(SHARD_0), err.clone()], &ctx(true)),
            err
        );
    }

    #[test]
    fn human_sizes_like_redis() {
        assert_eq!(bytes_to_human(200), "200B");
        assert_eq!(bytes_to_human(941392), "919.33K");
        assert_eq!(bytes_to_human(12095488), "11.54M");
        assert_eq!(bytes_to_human(25276502016), "23.54G");
    }
}
