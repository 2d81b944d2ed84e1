//! Per-client connection state the proxy keeps itself (protocol, authentication, name, id) and
//! the answers to the connection commands it handles without a shard: ECHO, SELECT,
//! AUTH, HELLO, QUIT, CLIENT (of the caller's own connection: SETNAME/GETNAME/ID, SETINFO,
//! NO-EVICT/NO-TOUCH, REPLY; INFO, LIST and KILL are the session's, see `client_line.rs`, and
//! so are the tracking subcommands, see `tracking.rs`), ACL WHOAMI.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use flotilla_model::DatabasePassword;
use flotilla_resp::{Protocol, Request, Value};

use crate::client_line::{ConnectionFacts, ListFilter};
use crate::command::LocalCommand;

/// The version string the proxy reports in HELLO: the Redis API level it speaks.
const API_VERSION: &str = "7.0.0";

/// Why CLIENT UNPAUSE is refused: a client through the proxy cannot pause others.
pub(crate) const NO_PAUSE: &str =
    "no client pause exists through the proxy (CLIENT PAUSE is refused), so there is none to end";

/// Why CLIENT PAUSE is refused: as in Redis Software (its connection commands compatibility
/// table lists CLIENT PAUSE and UNPAUSE as not supported).
pub(crate) const PAUSE: &str = "it would stop every client of the database on every node's endpoint; as in Redis Software, CLIENT PAUSE and UNPAUSE are not supported";

/// CLIENT REPLY: whether the client wants its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ReplyMode {
    /// Every reply (the default).
    #[default]
    On,
    /// No reply at all.
    Off,
    /// No reply to the next command, then on again.
    Skip,
}

/// What a client connection has negotiated with the proxy.
#[derive(Debug, Clone)]
pub(crate) struct ClientState {
    /// The proxy's id for this connection (CLIENT ID).
    pub id: u64,
    /// RESP2 until `HELLO 3`.
    pub protocol: Protocol,
    /// Whether the client may run commands (always, when the database has no password).
    pub authenticated: bool,
    /// CLIENT SETNAME.
    pub name: Option<Bytes>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The endpoint's address.
    pub local: SocketAddr,
    /// CLIENT REPLY (not handed over in an in-place upgrade: a moved client gets replies).
    pub reply: ReplyMode,
    /// When the connection was accepted (CLIENT INFO's `age`; kept by RESET).
    pub connected_at: Instant,
    /// When its last command arrived (CLIENT INFO's `idle`).
    pub last_interaction: Instant,
    /// Its last command's table name (`CLIENT|LIST`; CLIENT INFO's `cmd`, in lower case).
    pub last_command: &'static str,
    /// CLIENT SETINFO LIB-NAME and LIB-VER.
    pub lib: (String, String),
    /// CLIENT NO-EVICT ON (flag `e`).
    pub no_evict: bool,
    /// CLIENT NO-TOUCH ON (flag `T`).
    pub no_touch: bool,
    /// The engine's own CLIENT INFO line, read once for the field list (see `client_line.rs`).
    pub engine_line: Option<Option<String>>,
    /// What CLIENT INFO/LIST show of CLIENT TRACKING: the flag letters (`t`, `R`, `B`) and
    /// the redirect (-1 when off); kept by the session (see `tracking.rs`).
    pub tracking: (String, i64),
}

/// What the session does after a local command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LocalOutcome {
    /// Write this reply and go on.
    Reply(Value),
    /// Write `+OK` and close the connection.
    Quit,
    /// RESET: the session drops transaction state, then the state is reset here.
    Reset,
}

impl ClientState {
    /// A fresh connection's state; authenticated when the database has no password.
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        password: Option<&DatabasePassword>,
    ) -> Self {
        ClientState {
            id,
            protocol: Protocol::Resp2,
            authenticated: password.is_none(),
            name: None,
            peer,
            local,
            reply: ReplyMode::On,
            connected_at: Instant::now(),
            last_interaction: Instant::now(),
            last_command: "NULL",
            lib: (String::new(), String::new()),
            no_evict: false,
            no_touch: false,
            engine_line: None,
            tracking: (String::new(), -1),
        }
    }

    /// Back to a new connection's state (RESET), keeping the id, age and library.
    pub fn reset(&mut self, password: Option<&DatabasePassword>) {
        let kept = ClientState {
            connected_at: self.connected_at,
            last_interaction: self.last_interaction,
            last_command: self.last_command,
            lib: std::mem::take(&mut self.lib),
            engine_line: self.engine_line.take(),
            ..ClientState::new(self.id, self.peer, self.local, password)
        };
        *self = kept;
    }

    /// What the endpoint's directory lists of this connection (CLIENT LIST of other clients).
    pub fn directory_entry(&self) -> crate::directory::Entry {
        crate::directory::Entry {
            peer: self.peer,
            local: self.local,
            name: self.name_text(),
            connected_at: self.connected_at,
            kill: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// CLIENT SETNAME's name as text (empty: none).
    pub fn name_text(&self) -> String {
        self.name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default()
    }

    /// Records a command arriving (CLIENT INFO's `idle` and `cmd`): its table row's name,
    /// written in Redis's case only when CLIENT INFO asks (no allocation per command).
    pub fn note_command(&mut self, spec: Option<&'static crate::command::CommandSpec>) {
        self.last_interaction = Instant::now();
        if let Some(spec) = spec {
            self.last_command = spec.name;
        }
    }

    /// What CLIENT INFO says of this connection, given its subscription counts (channels,
    /// patterns, shard channels) and the commands queued in its MULTI.
    pub fn facts(&self, subscriptions: [usize; 3], multi: Option<usize>) -> ConnectionFacts {
        let mut flags = String::new();
        if subscriptions.iter().any(|&n| n > 0) {
            flags.push('P');
        }
        if multi.is_some() {
            flags.push('x');
        }
        flags.push_str(&self.tracking.0);
        if self.no_evict {
            flags.push('e');
        }
        if self.no_touch {
            flags.push('T');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        ConnectionFacts {
            id: self.id,
            addr: self.peer.to_string(),
            laddr: self.local.to_string(),
            name: self.name_text(),
            age: self.connected_at.elapsed(),
            idle: self.last_interaction.elapsed(),
            flags,
            subscriptions,
            multi,
            cmd: match self.last_command {
                "NULL" => "NULL".to_owned(),
                name => name.to_ascii_lowercase(),
            },
            redir: self.tracking.1,
            protocol: self.protocol,
            lib: self.lib.clone(),
        }
    }

    /// Answers a command the proxy handles itself. `password` is the database password.
    pub fn answer(
        &mut self,
        command: LocalCommand,
        request: &Request,
        password: Option<&DatabasePassword>,
    ) -> LocalOutcome {
        use LocalCommand as L;
        let reply = match command {
            L::Ping => ping(request),
            L::Echo => echo(request),
            L::Select => select(request),
            L::Auth => self.auth(request, password),
            L::Hello => self.hello(request, password),
            L::Quit => return LocalOutcome::Quit,
            L::Reset => return LocalOutcome::Reset,
            L::ClientSetName => self.set_name(request),
            L::ClientGetName => self.name.clone().map_or(Value::NullBulkString, Value::bulk),
            L::ClientId => Value::Integer(self.id as i64),
            L::ClientInfo => Value::bulk(self.facts([0; 3], None).render(None)),
            L::ClientList => match ListFilter::parse(request) {
                Ok(filter) if filter.keeps_caller(self, false) => {
                    Value::bulk(self.facts([0; 3], None).render(None))
                }
                Ok(_) => Value::bulk(""),
                Err(reply) => reply,
            },
            L::ClientReply => self.set_reply(request),
            // The session answers these itself (they reach its shard connections; see
            // `tracking.rs`).
            L::ClientTracking => {
                Value::error("ERR internal: CLIENT TRACKING answered outside the session")
            }
            // The session answers MONITOR itself (it opens a connection to every shard).
            L::Monitor => Value::error("ERR internal: MONITOR answered outside the session"),
            // The session answers CLIENT KILL itself (it reaches the endpoint's other clients).
            L::ClientKill => Value::error("ERR internal: CLIENT KILL answered outside the session"),
            L::ClientSetInfo => self.set_info(request),
            L::ClientNoop => self.set_switch(request),
            L::ReadMode => Value::simple("OK"),
            // The session answers CONFIG itself (it waits for the node; see `config.rs`).
            L::Config => Value::error("ERR internal: CONFIG answered outside the session"),
            // The database has one user, the default one (see `check`).
            L::AclWhoami => Value::bulk("default"),
        };
        LocalOutcome::Reply(reply)
    }

    fn auth(&mut self, request: &Request, password: Option<&DatabasePassword>) -> Value {
        let (user, given) = match request.args() {
            [pass] => (None, pass),
            [user, pass] => (Some(user), pass),
            _ => return wrong_arity("auth"),
        };
        let Some(password) = password else {
            if user.is_none() {
                return Value::error(
                    "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                );
            }
            self.authenticated = true;
            return Value::simple("OK");
        };
        if check(user.map(|u| u.as_ref()), given, password) {
            self.authenticated = true;
            Value::simple("OK")
        } else {
            wrong_pass()
        }
    }

    fn hello(&mut self, request: &Request, password: Option<&DatabasePassword>) -> Value {
        let hello = match parse_hello(request) {
            Ok(hello) => hello,
            Err(reply) => return reply,
        };
        if let Some((user, pass)) = &hello.auth {
            let ok = password.is_none_or(|p| check(Some(user), pass, p));
            if !ok {
                return wrong_pass();
            }
            self.authenticated = true;
        }
        if !self.authenticated {
            return Value::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        if let Some(protocol) = hello.protocol {
            self.protocol = protocol;
        }
        if let Some(name) = hello.name {
            if let Err(reply) = self.apply_name(name) {
                return reply;
            }
        }
        self.hello_reply()
    }

    fn hello_reply(&self) -> Value {
        let proto = match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        let pair = |k: &'static str, v: Value| (Value::bulk(k), v);
        Value::Map(vec![
            pair("server", Value::bulk("redis")),
            pair("version", Value::bulk(API_VERSION)),
            pair("proto", Value::Integer(proto)),
            pair("id", Value::Integer(self.id as i64)),
            pair("mode", Value::bulk("standalone")),
            pair("role", Value::bulk("master")),
            pair("modules", Value::Array(Vec::new())),
        ])
    }

    fn set_name(&mut self, request: &Request) -> Value {
        let [_, name] = request.args() else {
            return wrong_arity("client|setname");
        };
        match self.apply_name(name.clone()) {
            Ok(()) => Value::simple("OK"),
            Err(reply) => reply,
        }
    }

    fn apply_name(&mut self, name: Bytes) -> Result<(), Value> {
        if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
            return Err(Value::error(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        self.name = (!name.is_empty()).then_some(name);
        Ok(())
    }

    /// CLIENT REPLY ON|OFF|SKIP; the session suppresses the replies (and this one's, unless
    /// ON).
    fn set_reply(&mut self, request: &Request) -> Value {
        let [_, mode] = request.args() else {
            return wrong_arity("client|reply");
        };
        self.reply = match mode.to_ascii_uppercase().as_slice() {
            b"ON" => ReplyMode::On,
            b"OFF" => ReplyMode::Off,
            b"SKIP" => ReplyMode::Skip,
            _ => return Value::error("ERR syntax error"),
        };
        Value::simple("OK")
    }

    /// CLIENT SETINFO LIB-NAME|LIB-VER value, checked as Redis 7.2 checks it.
    fn set_info(&mut self, request: &Request) -> Value {
        let [_, attr, value] = request.args() else {
            return wrong_arity("client|setinfo");
        };
        let attr = attr.to_ascii_lowercase();
        let slot = match attr.as_slice() {
            b"lib-name" => &mut self.lib.0,
            b"lib-ver" => &mut self.lib.1,
            _ => {
                return Value::error(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&attr)
                ))
            }
        };
        if value.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
            return Value::error(format!(
                "ERR {} cannot contain spaces, newlines or special characters.",
                String::from_utf8_lossy(&attr)
            ));
        }
        *slot = String::from_utf8_lossy(value).into_owned();
        Value::simple("OK")
    }

    /// CLIENT NO-EVICT / NO-TOUCH ON|OFF: the flag shows in CLIENT INFO (an endpoint's client
    /// is never evicted by an engine; NO-TOUCH is for the engine's LRU, which the endpoint's
    /// shared engine connections do not carry per client).
    fn set_switch(&mut self, request: &Request) -> Value {
        let [sub, mode] = request.args() else {
            let name = request
                .arg(1)
                .map(|s| s.to_ascii_lowercase())
                .unwrap_or_default();
            return wrong_arity(&format!("client|{}", String::from_utf8_lossy(&name)));
        };
        let Ok(on) = on_off(mode) else {
            return Value::error("ERR syntax error");
        };
        if sub.eq_ignore_ascii_case(b"no-evict") {
            self.no_evict = on;
        } else {
            self.no_touch = on;
        }
        Value::simple("OK")
    }
}

/// A CLIENT KILL / CLIENT LIST client id: a positive integer.
pub(crate) fn positive_id(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw)
        .ok()?
        .parse::<u64>()
        .ok()
        .filter(|&id| id > 0)
}

/// A client type name as Redis knows it, normalized (`slave` is `replica`).
pub(crate) fn client_type(raw: &[u8]) -> Result<&'static str, Value> {
    Ok(match raw.to_ascii_lowercase().as_slice() {
        b"normal" => "normal",
        b"master" => "master",
        b"replica" | b"slave" => "replica",
        b"pubsub" => "pubsub",
        _ => {
            return Err(Value::error(format!(
                "ERR Unknown client type '{}'",
                String::from_utf8_lossy(raw)
            )))
        }
    })
}

/// Whether `raw` names the database's one user (`default`); another name is Redis's error.
pub(crate) fn user_exists(raw: &[u8]) -> Result<bool, Value> {
    if raw == b"default" {
        return Ok(true);
    }
    Err(Value::error(format!(
        "ERR No such user '{}'",
        String::from_utf8_lossy(raw)
    )))
}

/// `yes`/`no` (SKIPME).
pub(crate) fn yes_no(raw: &[u8]) -> Result<bool, Value> {
    match raw.to_ascii_lowercase().as_slice() {
        b"yes" => Ok(true),
        b"no" => Ok(false),
        _ => Err(Value::error("ERR syntax error")),
    }
}

/// `on`/`off`.
fn on_off(raw: &[u8]) -> Result<bool, ()> {
    match raw.to_ascii_lowercase().as_slice() {
        b"on" => Ok(true),
        b"off" => Ok(false),
        _ => Err(()),
    }
}

/// A parsed `HELLO [protover [AUTH user pass] [SETNAME name]]`.
struct Hello {
    protocol: Option<Protocol>,
    auth: Option<(Bytes, Bytes)>,
    name: Option<Bytes>,
}

fn parse_hello(request: &Request) -> Result<Hello, Value> {
    let mut hello = Hello {
        protocol: None,
        auth: None,
        name: None,
    };
    let args = request.args();
    let Some(version) = args.first() else {
        return Ok(hello);
    };
    hello.protocol = Some(
        match std::str::from_utf8(version).ok().map(str::parse::<i64>) {
            Some(Ok(2)) => Protocol::Resp2,
            Some(Ok(3)) => Protocol::Resp3,
            Some(Ok(_)) => return Err(Value::error("NOPROTO unsupported protocol version")),
            _ => {
                return Err(Value::error(
                    "ERR Protocol version is not an integer or out of range",
                ))
            }
        },
    );
    let mut rest = &args[1..];
    while let Some(option) = rest.first() {
        match (option.to_ascii_uppercase().as_slice(), rest) {
            (b"AUTH", [_, user, pass, ..]) => {
                hello.auth = Some((user.clone(), pass.clone()));
                rest = &rest[3..];
            }
            (b"SETNAME", [_, name, ..]) => {
                hello.name = Some(name.clone());
                rest = &rest[2..];
            }
            _ => {
                return Err(Value::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(option)
                )))
            }
        }
    }
    Ok(hello)
}

/// Whether `user` (default when absent) and `given` match the database password: the model's
/// check, which compares SHA-256 hashes in constant time.
fn check(user: Option<&[u8]>, given: &[u8], password: &DatabasePassword) -> bool {
    let user_ok = user.is_none_or(|u| u == b"default");
    password.matches(given) && user_ok
}

fn wrong_pass() -> Value {
    Value::error("WRONGPASS invalid username-password pair or user is disabled.")
}

fn wrong_arity(command: &str) -> Value {
    Value::error(format!(
        "ERR wrong number of arguments for '{command}' command"
    ))
}

fn ping(request: &Request) -> Value {
    match request.args() {
        [] => Value::simple("PONG"),
        [message] => Value::bulk(message.clone()),
        _ => wrong_arity("ping"),
    }
}

fn echo(request: &Request) -> Value {
    match request.args() {
        [message] => Value::bulk(message.clone()),
        _ => wrong_arity("echo"),
    }
}

fn select(request: &Request) -> Value {
    let [index] = request.args() else {
        return wrong_arity("select");
    };
    match std::str::from_utf8(index).ok().map(str::parse::<i64>) {
        Some(Ok(0)) => Value::simple("OK"),
        Some(Ok(_)) => Value::error("ERR DB index is out of range"),
        _ => Value::error("ERR value is not an integer or out of range"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(words: &[&str]) -> Request {
        Request::from_argv(words.iter().map(|w| Bytes::from(w.to_string())).collect()).unwrap()
    }

    fn state(password: Option<&DatabasePassword>) -> ClientState {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        ClientState::new(7, addr, addr, password)
    }

    #[test]
    fn auth_and_hello_check_the_database_password() {
        let pw = DatabasePassword::Plain("secret".into());
        let mut s = state(Some(&pw));
        assert!(!s.authenticated);
        let r = s.answer(LocalCommand::Auth, &req(&["AUTH", "nope"]), Some(&pw));
        assert_eq!(r, LocalOutcome::Reply(wrong_pass()));
        let r = s.answer(LocalCommand::Hello, &req(&["HELLO", "3"]), Some(&pw));
        assert!(matches!(r, LocalOutcome::Reply(Value::Error(_))));
        assert_eq!(s.protocol, Protocol::Resp2);
        let hello = req(&["HELLO", "3", "AUTH", "default", "secret", "SETNAME", "app"]);
        let r = s.answer(LocalCommand::Hello, &hello, Some(&pw));
        assert!(matches!(r, LocalOutcome::Reply(Value::Map(_))));
        assert!(s.authenticated);
        assert_eq!(s.protocol, Protocol::Resp3);
        assert_eq!(s.name.as_deref(), Some(&b"app"[..]));
        assert!(check(None, b"secret", &pw));
        assert!(!check(None, b"secre", &pw));
        assert!(!check(Some(b"other"), b"secret", &pw));
        // A hashed password (clusters from 0.2.0 on) checks the same.
        let hashed = DatabasePassword::from_hex(&flotilla_model::sha256_hex(b"secret")).unwrap();
        assert!(check(Some(b"default"), b"secret", &hashed));
        assert!(!check(None, b"secret2", &hashed));
    }

    #[test]
    fn connection_commands_answer_like_redis() {
        let mut s = state(None);
        let mut answer = |words: &[&str]| match s.answer(
            crate::command::lookup_request(&req(words))
                .and_then(|spec| match spec.class {
                    crate::Class::Local(c) => Some(c),
                    _ => None,
                })
                .unwrap(),
            &req(words),
            None,
        ) {
            LocalOutcome::Reply(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(answer(&["ECHO", "hi"]), Value::bulk("hi"));
        assert_eq!(answer(&["SELECT", "0"]), Value::simple("OK"));
        assert_eq!(
            answer(&["SELECT", "1"]),
            Value::error("ERR DB index is out of range")
        );
        assert_eq!(answer(&["CLIENT", "SETNAME", "x"]), Value::simple("OK"));
        assert_eq!(answer(&["CLIENT", "GETNAME"]), Value::bulk("x"));
        assert_eq!(answer(&["CLIENT", "ID"]), Value::Integer(7));
        assert!(answer(&["CLIENT", "SETNAME", "a b"]).is_error());
        assert_eq!(
            answer(&["HELLO", "4"]),
            Value::error("NOPROTO unsupported protocol version")
        );
    }
}
