//! The line CLIENT INFO and CLIENT LIST give for a client connection through an endpoint, in
//! the engine's own field list and order: the endpoint asks one shard's engine for its own
//! `CLIENT INFO` line (as the engines' admin user, once per client connection) and puts the
//! values the endpoint knows of the caller's connection in it (id, addresses, name, age, idle,
//! flags, db, subscriptions, MULTI, last command, user, protocol, library). Fields only an
//! engine connection has (buffers, memory, fd) keep the engine's values. Without an admin login
//! the line is Redis 7.0's. Also CLIENT LIST's and CLIENT KILL's filters over the endpoint's
//! clients (see `directory.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use flotilla_resp::{Protocol, Request, Value};

use crate::client::{client_type, positive_id, user_exists, yes_no, ClientState};
use crate::directory::Entry;
use crate::topology::Topology;

/// Redis 7.0's CLIENT INFO line, used when no engine's line can be read.
const REDIS_7_0_LINE: &str = "id=0 addr=0.0.0.0:0 laddr=0.0.0.0:0 fd=8 name= age=0 idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=26 qbuf-free=20448 argv-mem=10 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem=0 tot-mem=22298 events=r cmd=client|info user=default redir=-1 resp=2";

/// What the endpoint knows of one client connection, for its CLIENT INFO line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectionFacts {
    /// The endpoint's id for the connection.
    pub id: u64,
    /// The client's address.
    pub addr: String,
    /// The endpoint's address.
    pub laddr: String,
    /// CLIENT SETNAME's name (empty: none).
    pub name: String,
    /// Since the connection was accepted.
    pub age: Duration,
    /// Since its last command before this one.
    pub idle: Duration,
    /// Redis's flags letters (`N` when none).
    pub flags: String,
    /// Channels, patterns and shard channels subscribed.
    pub subscriptions: [usize; 3],
    /// Commands queued in MULTI (`None`: not in MULTI).
    pub multi: Option<usize>,
    /// The command's full name as Redis writes it (`client|list`).
    pub cmd: String,
    /// CLIENT TRACKING's redirect (-1: none).
    pub redir: i64,
    /// RESP2 or RESP3.
    pub protocol: Protocol,
    /// CLIENT SETINFO LIB-NAME / LIB-VER.
    pub lib: (String, String),
}

impl ConnectionFacts {
    /// The fields this connection's line takes from the endpoint, by name.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let [sub, psub, ssub] = self.subscriptions;
        let multi = self.multi.map_or(-1, |n| n as i64);
        let resp = match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        vec![
            ("id", self.id.to_string()),
            ("addr", self.addr.clone()),
            ("laddr", self.laddr.clone()),
            ("name", self.name.clone()),
            ("age", self.age.as_secs().to_string()),
            ("idle", self.idle.as_secs().to_string()),
            ("flags", self.flags.clone()),
            ("db", "0".to_owned()),
            ("sub", sub.to_string()),
            ("psub", psub.to_string()),
            ("ssub", ssub.to_string()),
            ("multi", multi.to_string()),
            ("watch", "0".to_owned()),
            ("cmd", self.cmd.clone()),
            ("user", "default".to_owned()),
            ("redir", self.redir.to_string()),
            ("resp", resp.to_string()),
            ("lib-name", self.lib.0.clone()),
            ("lib-ver", self.lib.1.clone()),
        ]
    }

    /// The connection's line (ending in a newline), in `engine_line`'s fields and order.
    pub fn render(&self, engine_line: Option<&str>) -> String {
        let known = self.fields();
        let template = engine_line.unwrap_or(REDIS_7_0_LINE);
        let mut line = template
            .split_whitespace()
            .map(|field| match field.split_once('=') {
                Some((key, _)) => match known.iter().find(|(k, _)| *k == key) {
                    Some((_, value)) => format!("{key}={value}"),
                    None => field.to_owned(),
                },
                None => field.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        line.push('\n');
        line
    }
}

impl Entry {
    /// What the endpoint knows of another of its client connections (name, addresses, age).
    pub fn facts(&self, id: u64) -> ConnectionFacts {
        ConnectionFacts {
            id,
            addr: self.peer.to_string(),
            laddr: self.local.to_string(),
            name: self.name.clone(),
            age: self.connected_at.elapsed(),
            idle: Duration::ZERO,
            flags: "N".to_owned(),
            subscriptions: [0; 3],
            multi: None,
            cmd: "NULL".to_owned(),
            redir: -1,
            protocol: Protocol::Resp2,
            lib: (String::new(), String::new()),
        }
    }
}

/// CLIENT LIST's filters: `[TYPE type] [ID id ...] [USER user] [ADDR addr] [LADDR addr]
/// [SKIPME yes|no]`, checked as the engine checks them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ListFilter {
    kind: Option<&'static str>,
    ids: Option<Vec<u64>>,
    addr: Option<Bytes>,
    laddr: Option<Bytes>,
    skip_me: bool,
    /// Valkey's MAXAGE: clients at most this many seconds old.
    max_age: Option<u64>,
}

impl ListFilter {
    /// The filters of a CLIENT LIST request, or Redis 7.0's error for a malformed one (the
    /// session first has the engine check them: its own errors are the engine's words).
    pub fn parse(request: &Request) -> Result<Self, Value> {
        let mut filter = ListFilter::default();
        let mut rest = &request.args()[1..];
        while let Some(option) = rest.first() {
            let option = option.to_ascii_uppercase();
            if option == b"ID" {
                // Redis 7.0 takes every argument after ID as an id; Valkey 8 takes the ids
                // up to the next filter (an engine that refused the rest already said so).
                let count = rest[1..]
                    .iter()
                    .take_while(|a| positive_id(a).is_some())
                    .count();
                if count == 0 {
                    return Err(Value::error("ERR Invalid client ID"));
                }
                let ids = rest[1..=count].iter().filter_map(|a| positive_id(a));
                filter.ids = Some(ids.collect());
                rest = &rest[1 + count..];
                continue;
            }
            let [_, value, ..] = rest else {
                return Err(Value::error("ERR syntax error"));
            };
            match option.as_slice() {
                b"TYPE" => filter.kind = Some(client_type(value)?),
                b"USER" => {
                    user_exists(value)?;
                }
                b"ADDR" => filter.addr = Some(value.clone()),
                b"LADDR" => filter.laddr = Some(value.clone()),
                b"SKIPME" => filter.skip_me = yes_no(value)?,
                b"MAXAGE" => {
                    let age = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                    let age = age.ok_or_else(|| {
                        Value::error("ERR value is not an integer or out of range")
                    })?;
                    filter.max_age = Some(age);
                }
                _ => return Err(Value::error("ERR syntax error")),
            }
            rest = &rest[2..];
        }
        Ok(filter)
    }

    /// Whether the filters keep a client (`kind`: `normal` or `pubsub`; `me`: the caller).
    fn keeps(&self, client: (u64, SocketAddr, SocketAddr, Duration), kind: &str, me: bool) -> bool {
        let (id, peer, local, age) = client;
        let is = |want: &Option<Bytes>, addr: SocketAddr| {
            want.as_ref()
                .is_none_or(|w| w.as_ref() == addr.to_string().as_bytes())
        };
        self.kind.is_none_or(|k| k == kind)
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&id))
            && is(&self.addr, peer)
            && is(&self.laddr, local)
            && !(me && self.skip_me)
            && self.max_age.is_none_or(|max| age.as_secs() <= max)
    }

    /// Whether the filters keep the caller's own line.
    pub fn keeps_caller(&self, state: &ClientState, subscribed: bool) -> bool {
        let kind = if subscribed { "pubsub" } else { "normal" };
        let age = state.connected_at.elapsed();
        self.keeps((state.id, state.peer, state.local, age), kind, true)
    }

    /// Whether the filters keep another client of the endpoint.
    pub fn keeps_other(&self, id: u64, entry: &Entry) -> bool {
        let age = entry.connected_at.elapsed();
        self.keeps((id, entry.peer, entry.local, age), "normal", false)
    }
}

/// CLIENT KILL's filters: the old `addr` form, or `ID id`, `TYPE type`, `USER user`, `ADDR
/// addr`, `LADDR addr`, `SKIPME yes|no` and Valkey's `MAXAGE seconds` (clients at least that
/// old), checked as Redis 7.0 checks them. SKIPME is yes by default, as in Redis, except that
/// `ID` naming the caller's own id kills the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KillFilter {
    /// The old form: one address, answered `+OK` or `No such client`.
    old_addr: Option<Bytes>,
    id: Option<u64>,
    kind: Option<&'static str>,
    addr: Option<Bytes>,
    laddr: Option<Bytes>,
    skip_me: Option<bool>,
    min_age: Option<u64>,
}

impl KillFilter {
    /// The filters of a CLIENT KILL request, or the engine's error for a malformed one
    /// (`valkey`: Valkey 8's words, whose filter parser calls an id that is not a number a
    /// syntax error).
    pub fn parse(request: &Request, valkey: bool) -> Result<Self, Value> {
        let mut filter = KillFilter::default();
        let pairs = match &request.args()[1..] {
            [] => {
                return Err(Value::error(
                    "ERR wrong number of arguments for 'client|kill' command",
                ))
            }
            [addr] => {
                filter.old_addr = Some(addr.clone());
                return Ok(filter);
            }
            pairs if pairs.len() % 2 == 0 => pairs,
            _ => return Err(Value::error("ERR syntax error")),
        };
        for pair in pairs.chunks(2) {
            let value = &pair[1];
            match pair[0].to_ascii_uppercase().as_slice() {
                b"ID" => {
                    let number = std::str::from_utf8(value).ok();
                    if valkey && number.and_then(|v| v.parse::<i64>().ok()).is_none() {
                        return Err(Value::error("ERR syntax error"));
                    }
                    let id = positive_id(value);
                    let id =
                        id.ok_or_else(|| Value::error("ERR client-id should be greater than 0"));
                    filter.id = Some(id?);
                }
                b"TYPE" => filter.kind = Some(client_type(value)?),
                b"USER" => {
                    user_exists(value)?;
                }
                b"ADDR" => filter.addr = Some(value.clone()),
                b"LADDR" => filter.laddr = Some(value.clone()),
                b"SKIPME" => filter.skip_me = Some(yes_no(value)?),
                b"MAXAGE" => {
                    let age = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<i64>().ok());
                    let age = age.ok_or_else(|| {
                        Value::error("ERR value is not an integer or out of range")
                    })?;
                    if age < 0 {
                        return Err(Value::error("ERR maxage should be greater than 0"));
                    }
                    filter.min_age = Some(age as u64);
                }
                _ => return Err(Value::error("ERR syntax error")),
            }
        }
        Ok(filter)
    }

    /// Whether the filters name a client (`me`: the caller).
    fn names(&self, client: (u64, SocketAddr, SocketAddr, Duration), me: bool) -> bool {
        let (id, peer, local, age) = client;
        let is = |want: &Option<Bytes>, addr: SocketAddr| {
            want.as_ref()
                .is_none_or(|w| w.as_ref() == addr.to_string().as_bytes())
        };
        if let Some(addr) = &self.old_addr {
            return addr.as_ref() == peer.to_string().as_bytes();
        }
        let skip_me = self.skip_me.unwrap_or(self.id != Some(id));
        self.id.is_none_or(|want| want == id)
            && self.kind.is_none_or(|k| k == "normal")
            && is(&self.addr, peer)
            && is(&self.laddr, local)
            && self.min_age.is_none_or(|min| age.as_secs() >= min)
            && !(me && skip_me)
    }

    /// Whether the filters name the caller.
    pub fn keeps_caller(&self, state: &ClientState) -> bool {
        let age = state.connected_at.elapsed();
        self.names((state.id, state.peer, state.local, age), true)
    }

    /// Whether the filters name another client of the endpoint.
    pub fn keeps_other(&self, id: u64, entry: &Entry) -> bool {
        let age = entry.connected_at.elapsed();
        self.names((id, entry.peer, entry.local, age), false)
    }

    /// The reply once `killed` clients are closed: the old form's `+OK` or error, the new
    /// form's count.
    pub fn reply(&self, killed: i64) -> Value {
        match (&self.old_addr, killed) {
            (None, killed) => Value::Integer(killed),
            (Some(_), 0) => Value::error("ERR No such client"),
            (Some(_), _) => Value::simple("OK"),
        }
    }
}

/// The engine's error for a CLIENT LIST with filters (each engine words and accepts them its
/// own way: Valkey 8 has more filters than Redis 7.0), asked as the admin user; `None` when it
/// accepts them, when there are none, or when the endpoint has no admin login.
pub(crate) async fn engine_refuses(topology: &Topology, request: &Request) -> Option<Value> {
    if request.argc() <= 2 {
        return None;
    }
    let reply = crate::admin::ask_shard(topology, request).await?;
    reply.is_error().then_some(reply)
}

/// Whether an engine's CLIENT INFO line is Valkey's (its `capa` field), for the few errors
/// Valkey words differently from Redis.
pub(crate) fn is_valkey_line(line: Option<&str>) -> bool {
    line.is_some_and(|l| l.contains(" capa="))
}

/// The engine's own CLIENT INFO line for a connection of the endpoint's admin user to the
/// first shard, or `None` when the endpoint has no admin login or the shard does not answer.
pub(crate) async fn engine_line(topology: &Topology) -> Option<String> {
    let request = Request::new("CLIENT", ["INFO".into()]);
    let reply = crate::admin::ask_shard(topology, &request).await?;
    match reply {
        Value::BulkString(line) | Value::VerbatimString { text: line, .. } => {
            let line = String::from_utf8_lossy(&line).trim().to_owned();
            line.starts_with("id=").then_some(line)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ConnectionFacts {
        ConnectionFacts {
            id: 42,
            addr: "127.0.0.1:5000".into(),
            laddr: "127.0.0.1:6000".into(),
            name: "app".into(),
            age: Duration::from_secs(7),
            idle: Duration::from_secs(2),
            flags: "N".into(),
            subscriptions: [1, 0, 0],
            multi: None,
            cmd: "client|list".into(),
            redir: -1,
            protocol: Protocol::Resp2,
            lib: (String::new(), String::new()),
        }
    }

    #[test]
    fn the_endpoints_facts_go_into_the_engines_fields() {
        let valkey = "id=9 addr=10.0.0.1:1 laddr=10.0.0.1:2 fd=11 name= age=100 idle=0 flags=N capa= db=0 sub=0 psub=0 ssub=0 multi=-1 watch=0 qbuf=0 qbuf-free=0 argv-mem=10 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem=0 tot-mem=1928 events=r cmd=client|info user=admin redir=-1 resp=2 lib-name= lib-ver= tot-net-in=30 tot-net-out=0 tot-cmds=1\n";
        assert_eq!(
            facts().render(Some(valkey)),
            "id=42 addr=127.0.0.1:5000 laddr=127.0.0.1:6000 fd=11 name=app age=7 idle=2 flags=N capa= db=0 sub=1 psub=0 ssub=0 multi=-1 watch=0 qbuf=0 qbuf-free=0 argv-mem=10 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem=0 tot-mem=1928 events=r cmd=client|list user=default redir=-1 resp=2 lib-name= lib-ver= tot-net-in=30 tot-net-out=0 tot-cmds=1\n"
        );
    }

    #[test]
    fn list_filters_take_ids_up_to_the_next_filter() {
        let req = |words: &[&str]| {
            Request::from_argv(words.iter().map(|w| Bytes::from(w.to_string())).collect()).unwrap()
        };
        let filter =
            ListFilter::parse(&req(&["CLIENT", "LIST", "ID", "3", "5", "TYPE", "normal"])).unwrap();
        assert_eq!(filter.ids, Some(vec![3, 5]));
        assert_eq!(filter.kind, Some("normal"));
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let age = Duration::from_secs(1);
        assert!(filter.keeps((3, addr, addr, age), "normal", true));
        assert!(!filter.keeps((4, addr, addr, age), "normal", false));
        assert!(!filter.keeps((5, addr, addr, age), "pubsub", true));
        let errors = [
            (
                &["CLIENT", "LIST", "ID", "str"][..],
                "ERR Invalid client ID",
            ),
            (
                &["CLIENT", "LIST", "TYPE", "wrong"],
                "ERR Unknown client type 'wrong'",
            ),
            (
                &["CLIENT", "LIST", "USER", "nobody"],
                "ERR No such user 'nobody'",
            ),
            (&["CLIENT", "LIST", "SKIPME", "maybe"], "ERR syntax error"),
            (&["CLIENT", "LIST", "BOGUS", "1"], "ERR syntax error"),
        ];
        for (words, expected) in errors {
            assert_eq!(
                ListFilter::parse(&req(words)),
                Err(Value::error(expected)),
                "{words:?}"
            );
        }
        let skip =
            ListFilter::parse(&req(&["CLIENT", "LIST", "SKIPME", "yes", "MAXAGE", "10"])).unwrap();
        assert!(!skip.keeps((3, addr, addr, age), "normal", true));
        assert!(skip.keeps((4, addr, addr, age), "normal", false));
        assert!(!skip.keeps((4, addr, addr, Duration::from_secs(11)), "normal", false));
    }

    #[test]
    fn kill_filters_skip_the_caller_unless_told_or_named_by_id() {
        let req = |words: &[&str]| {
            Request::from_argv(words.iter().map(|w| Bytes::from(w.to_string())).collect()).unwrap()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let age = Duration::from_secs(5);
        let all = KillFilter::parse(&req(&["CLIENT", "KILL", "TYPE", "normal"]), false).unwrap();
        assert!(all.names((4, addr, addr, age), false));
        assert!(
            !all.names((3, addr, addr, age), true),
            "SKIPME yes by default"
        );
        let by_id = KillFilter::parse(&req(&["CLIENT", "KILL", "ID", "3"]), false).unwrap();
        assert!(
            by_id.names((3, addr, addr, age), true),
            "the caller's own id"
        );
        let me_too = KillFilter::parse(&req(&["CLIENT", "KILL", "SKIPME", "no"]), false).unwrap();
        assert!(me_too.names((3, addr, addr, age), true));
        let old = KillFilter::parse(&req(&["CLIENT", "KILL", "MAXAGE", "10"]), false).unwrap();
        assert!(!old.names((4, addr, addr, age), false));
        let by_addr = KillFilter::parse(&req(&["CLIENT", "KILL", "127.0.0.1:1"]), false).unwrap();
        assert_eq!(by_addr.reply(0), Value::error("ERR No such client"));
        assert_eq!(by_addr.reply(1), Value::simple("OK"));
        assert_eq!(all.reply(2), Value::Integer(2));
        let errors = [
            (&["CLIENT", "KILL"][..], false, "wrong number of arguments"),
            (
                &["CLIENT", "KILL", "ID", "10", "x"],
                false,
                "ERR syntax error",
            ),
            (&["CLIENT", "KILL", "ID", "str"], false, "greater than 0"),
            (&["CLIENT", "KILL", "ID", "str"], true, "ERR syntax error"),
            (&["CLIENT", "KILL", "ID", "-1"], true, "greater than 0"),
            (&["CLIENT", "KILL", "MAXAGE", "-1"], false, "greater than 0"),
            (&["CLIENT", "KILL", "MAXAGE", "x"], false, "not an integer"),
            (&["CLIENT", "KILL", "USER", "x"], false, "No such user"),
        ];
        for (words, valkey, expected) in errors {
            let Err(Value::Error(e)) = KillFilter::parse(&req(words), valkey) else {
                panic!("{words:?} is refused");
            };
            let e = String::from_utf8_lossy(&e).into_owned();
            assert!(e.contains(expected), "{words:?}: {e}");
        }
    }

    #[test]
    fn without_an_engine_line_it_is_redis_7_0s() {
        let line = facts().render(None);
        assert!(line.starts_with("id=42 addr=127.0.0.1:5000 laddr=127.0.0.1:6000 fd=8 name=app age=7 idle=2 flags=N db=0 sub=1 psub=0 ssub=0 multi=-1 qbuf=26 "), "{line}");
        assert!(
            line.ends_with("cmd=client|list user=default redir=-1 resp=2\n"),
            "{line}"
        );
    }
}
