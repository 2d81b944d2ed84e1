//! The engine settings a database may change for itself (`CONFIG SET` through its endpoint,
//! `flotilla db set --config`, REST `config`): the subset Redis Software allows ("Compatibility
//! with Redis Open Source configuration settings"), their validation, and the name each engine
//! family knows them by.
//!
//! The store keeps a database's settings under their canonical (Redis 7 "listpack") names; an
//! engine that knows only the older name (redis-6.2: `hash-max-ziplist-entries`,
//! `lua-time-limit`) is given that one. Redis 7.0 and Valkey know both names (the older one is
//! an alias), so `CONFIG SET` of either works there and both read back the same value.

use std::collections::BTreeMap;

use crate::EngineVersion;

/// A database's engine settings: canonical name -> value, as validated by [`check_setting`].
pub type DatabaseConfig = BTreeMap<String, String>;

/// What values a setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `yes` / `no`.
    Bool,
    /// An integer within the bounds (inclusive).
    Int(i64, i64),
    /// A byte count, with Redis's units (`4kb`, `1mb`, ...), within the bounds.
    Bytes(i64, i64),
    /// `notify-keyspace-events` classes.
    KeyspaceEvents,
}

/// One setting: its canonical name, the name redis-6.2 knows it by (when it differs), and its
/// values.
struct Setting {
    name: &'static str,
    legacy: Option<&'static str>,
    kind: Kind,
}

const MAX: i64 = i64::MAX;

/// The settings a database may change, from Redis Software's list.
const SETTINGS: &[Setting] = &[
    setting("activerehashing", None, Kind::Bool),
    setting(
        "busy-reply-threshold",
        Some("lua-time-limit"),
        Kind::Int(0, 60000),
    ),
    setting(
        "hash-max-listpack-entries",
        Some("hash-max-ziplist-entries"),
        Kind::Int(0, MAX),
    ),
    setting(
        "hash-max-listpack-value",
        Some("hash-max-ziplist-value"),
        Kind::Bytes(0, MAX),
    ),
    setting("hll-sparse-max-bytes", None, Kind::Bytes(0, MAX)),
    setting("list-compress-depth", None, Kind::Int(0, i32::MAX as i64)),
    setting(
        "list-max-listpack-size",
        Some("list-max-ziplist-size"),
        Kind::Int(-5, i32::MAX as i64),
    ),
    setting("notify-keyspace-events", None, Kind::KeyspaceEvents),
    setting("set-max-intset-entries", None, Kind::Int(0, MAX)),
    setting("slowlog-log-slower-than", None, Kind::Int(-1, MAX)),
    setting("slowlog-max-len", None, Kind::Int(0, i32::MAX as i64)),
    setting("stream-node-max-bytes", None, Kind::Bytes(0, MAX)),
    setting("stream-node-max-entries", None, Kind::Int(0, MAX)),
    // Client-side caching's key table (per shard: each engine tracks the keys it holds).
    setting("tracking-table-max-keys", None, Kind::Int(0, MAX)),
    setting(
        "zset-max-listpack-entries",
        Some("zset-max-ziplist-entries"),
        Kind::Int(0, MAX),
    ),
    setting(
        "zset-max-listpack-value",
        Some("zset-max-ziplist-value"),
        Kind::Bytes(0, MAX),
    ),
];

const fn setting(name: &'static str, legacy: Option<&'static str>, kind: Kind) -> Setting {
    Setting { name, legacy, kind }
}

/// Why a setting or its value was refused; the text names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not in the subset a database may change.
    #[error("'{0}' is not configurable per database (only the settings Redis Software allows are: activerehashing, busy-reply-threshold, *-max-listpack-*/ziplist-*, hll-sparse-max-bytes, list-compress-depth, lua-time-limit, notify-keyspace-events, set-max-intset-entries, slowlog-*, stream-node-max-*, tracking-table-max-keys)")]
    NotConfigurable(String),
    /// A value the setting does not take.
    #[error("'{name}': {reason}")]
    InvalidValue {
        /// The setting as given.
        name: String,
        /// What is wrong with the value.
        reason: String,
    },
}

fn find(name: &str) -> Option<&'static Setting> {
    let name = name.to_ascii_lowercase();
    SETTINGS
        .iter()
        .find(|s| s.name == name || s.legacy == Some(name.as_str()))
}

/// The canonical name of a configurable setting given by any of its names, with its value
/// checked and normalized (`YES` -> `yes`); refuses other settings and bad values.
pub fn check_setting(name: &str, value: &str) -> Result<(String, String), SettingError> {
    let setting = find(name).ok_or_else(|| SettingError::NotConfigurable(name.to_string()))?;
    let invalid = |reason: String| SettingError::InvalidValue {
        name: name.to_string(),
        reason,
    };
    let value = match setting.kind {
        Kind::Bool => match value.to_ascii_lowercase().as_str() {
            v @ ("yes" | "no") => v.to_string(),
            _ => return Err(invalid("argument must be 'yes' or 'no'".into())),
        },
        Kind::Int(low, high) => {
            let n: i64 = value
                .parse()
                .map_err(|_| invalid("argument couldn't be parsed into an integer".into()))?;
            in_bounds(n, low, high).map_err(invalid)?;
            n.to_string()
        }
        Kind::Bytes(low, high) => {
            let n = parse_bytes(value)
                .ok_or_else(|| invalid("argument must be a memory value".into()))?;
            in_bounds(n, low, high).map_err(invalid)?;
            n.to_string()
        }
        Kind::KeyspaceEvents => {
            if let Some(c) = value.chars().find(|c| !"AgKE$lshzxetmdn".contains(*c)) {
                return Err(invalid(format!(
                    "Invalid event class character '{c}'. Use 'Ag$lshzxeKEtmdn'."
                )));
            }
            value.to_string()
        }
    };
    Ok((setting.name.to_string(), value))
}

fn in_bounds(n: i64, low: i64, high: i64) -> Result<(), String> {
    if n < low || n > high {
        return Err(format!(
            "argument must be between {low} and {high} inclusive"
        ));
    }
    Ok(())
}

/// A byte count with Redis's units (`k` = 1000, `kb` = 1024, ...; case-insensitive).
fn parse_bytes(value: &str) -> Option<i64> {
    let lower = value.to_ascii_lowercase();
    let units: [(&str, i64); 6] = [
        ("kb", 1 << 10),
        ("mb", 1 << 20),
        ("gb", 1 << 30),
        ("k", 1000),
        ("m", 1_000_000),
        ("g", 1_000_000_000),
    ];
    let (digits, unit) = units
        .iter()
        .find_map(|(suffix, unit)| lower.strip_suffix(suffix).map(|d| (d, *unit)))
        .unwrap_or((lower.as_str(), 1));
    digits.parse::<i64>().ok()?.checked_mul(unit)
}

/// The name `engine` knows the canonical setting `name` by (redis-6.2 has only the older
/// names).
pub fn engine_setting_name(name: &str, engine: EngineVersion) -> &str {
    match find(name) {
        Some(Setting {
            legacy: Some(legacy),
            ..
        }) if engine == EngineVersion::Redis62 => legacy,
        Some(setting) => setting.name,
        None => name,
    }
}

/// Every configurable name `engine` knows (both spellings from Redis 7.0 on), for `CONFIG GET`
/// with a pattern.
pub fn engine_setting_names(engine: EngineVersion) -> Vec<&'static str> {
    let mut names = Vec::new();
    for setting in SETTINGS {
        if engine != EngineVersion::Redis62 || setting.legacy.is_none() {
            names.push(setting.name);
        }
        names.extend(setting.legacy);
    }
    names
}

/// Whether `name` is a configurable setting under any of its names.
pub fn is_configurable(name: &str) -> bool {
    find(name).is_some()
}

/// Engine settings that the database's persistence decides (`flotilla db create --persistence`),
/// not CONFIG: `CONFIG GET` reads them from the engine, and `CONFIG SET` may only repeat the
/// value they have. Exists because clients and tools (Redis's own test suite among them) read
/// `save`/`appendonly` and set them back to what they read; a change is refused, naming the
/// setting and the command that changes it.
pub const PERSISTENCE_SETTINGS: &[&str] = &["save", "appendonly"];

/// Whether `name` is one of the [`PERSISTENCE_SETTINGS`].
pub fn is_persistence_setting(name: &str) -> bool {
    PERSISTENCE_SETTINGS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

/// Whether an engine's `CONFIG GET` answer `current` is the value `wanted` of setting `name`
/// (the engine spells `notify-keyspace-events` classes in its own order).
pub fn same_setting_value(name: &str, current: &str, wanted: &str) -> bool {
    if name.eq_ignore_ascii_case("notify-keyspace-events") {
        return event_classes(current) == event_classes(wanted);
    }
    current == wanted
}

/// The set of keyspace event classes, `A` expanded.
fn event_classes(value: &str) -> std::collections::BTreeSet<char> {
    value
        .chars()
        .flat_map(|c| match c {
            'A' => "g$lshzxetd".chars().collect::<Vec<_>>(),
            c => vec![c],
        })
        .collect()
}

/// Redis's glob match (`*`, `?`, `[a-z]`, `[^x]`, `\` escapes), case-insensitive as `CONFIG
/// GET` matches.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<u8> = pattern.bytes().map(|b| b.to_ascii_lowercase()).collect();
    let t: Vec<u8> = text.bytes().map(|b| b.to_ascii_lowercase()).collect();
    glob(&p, &t)
}

fn glob(p: &[u8], t: &[u8]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some(b'*') => (0..=t.len()).any(|skip| glob(&p[1..], &t[skip..])),
        Some(b'?') => !t.is_empty() && glob(&p[1..], &t[1..]),
        Some(b'[') => {
            let Some((&c, rest)) = t.split_first() else {
                return false;
            };
            let (matched, after) = class(&p[1..], c);
            matched && glob(after, rest)
        }
        Some(b'\\') if p.len() > 1 => t.first() == Some(&p[1]) && glob(&p[2..], &t[1..]),
        Some(&c) => t.first() == Some(&c) && glob(&p[1..], &t[1..]),
    }
}

/// Matches `c` against a `[...]` class whose text follows `[`; returns the match and the
/// pattern after `]`.
fn class(p: &[u8], c: u8) -> (bool, &[u8]) {
    let (negate, mut p) = match p.first() {
        Some(b'^') => (true, &p[1..]),
        _ => (false, p),
    };
    let mut matched = false;
    loop {
        match p {
            [] => break,
            [b']', rest @ ..] => {
                p = rest;
                break;
            }
            [b'\\', x, rest @ ..] => {
                matched |= *x == c;
                p = rest;
            }
            [low, b'-', high, rest @ ..] if *high != b']' => {
                let (low, high) = (*low.min(high), *low.max(high));
                matched |= (low..=high).contains(&c);
                p = rest;
            }
            [x, rest @ ..] => {
                matched |= *x == c;
                p = rest;
            }
        }
    }
    (matched != negate, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_canonical_names_and_back_per_engine() {
        assert_eq!(
            check_setting("list-max-ziplist-size", "-2").unwrap(),
            ("list-max-listpack-size".into(), "-2".into())
        );
        assert_eq!(
            check_setting("LUA-TIME-LIMIT", "5000").unwrap().0,
            "busy-reply-threshold"
        );
        assert_eq!(
            engine_setting_name("hash-max-listpack-entries", EngineVersion::Redis62),
            "hash-max-ziplist-entries"
        );
        assert_eq!(
            engine_setting_name("hash-max-listpack-entries", EngineVersion::Redis70),
            "hash-max-listpack-entries"
        );
        assert!(!engine_setting_names(EngineVersion::Redis62).contains(&"busy-reply-threshold"));
        assert!(engine_setting_names(EngineVersion::Valkey81).contains(&"lua-time-limit"));
    }

    #[test]
    fn values_are_checked_and_other_settings_refused() {
        assert!(matches!(
            check_setting("maxmemory", "1"),
            Err(SettingError::NotConfigurable(name)) if name == "maxmemory"
        ));
        assert!(check_setting("busy-reply-threshold", "60001").is_err());
        assert!(check_setting("activerehashing", "maybe").is_err());
        assert_eq!(check_setting("activerehashing", "YES").unwrap().1, "yes");
        assert_eq!(
            check_setting("stream-node-max-bytes", "4kb").unwrap().1,
            "4096"
        );
        assert!(check_setting("notify-keyspace-events", "KEA").is_ok());
        assert!(check_setting("notify-keyspace-events", "KEQ").is_err());
        // Redis 7.0's new-key events (unit/pubsub "Keyspace notifications: new key test").
        assert!(check_setting("notify-keyspace-events", "KEn").is_ok());
        assert!(same_setting_value("notify-keyspace-events", "AKE", "KEA"));
        assert!(!same_setting_value("notify-keyspace-events", "AK", "KEA"));
    }

    #[test]
    fn globs_match_like_redis() {
        assert!(glob_matches("*max-*-entries*", "hash-max-listpack-entries"));
        assert!(glob_matches("slowlog-*", "SLOWLOG-max-len"));
        assert!(!glob_matches("slowlog-?", "slowlog-max-len"));
        assert!(glob_matches("[a-h]ash-*", "hash-max-ziplist-value"));
        assert!(!glob_matches("[^h]ash-*", "hash-max-ziplist-value"));
        assert!(glob_matches("a\\*b", "a*b"));
    }
}
