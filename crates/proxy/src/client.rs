//! Per-client connection state the proxy keeps itself (protocol, authentication, name, id) and
//! the answers to the connection commands it handles without a shard: ECHO, SELECT,
//! AUTH, HELLO, QUIT, CLIENT (of the caller's own connection: SETNAME/GETNAME/ID/INFO/LIST,
//! REPLY, KILL of itself; the tracking subcommands are the session's, see `tracking.rs`), ACL
//! WHOAMI.

use std::net::SocketAddr;

use bytes::Bytes;
use flotilla_model::DatabasePassword;
use flotilla_resp::{Protocol, Request, Value};

use crate::command::LocalCommand;

/// The version string the proxy reports in HELLO: the Redis API level it speaks.
const API_VERSION: &str = "7.0.0";

/// Why CLIENT UNPAUSE is refused: a client through the proxy cannot pause others.
pub(crate) const NO_PAUSE: &str =
    "no client pause exists through the proxy (CLIENT PAUSE is refused), so there is none to end";

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
    /// Write this reply and close the connection (CLIENT KILL of the caller itself).
    CloseAfter(Value),
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
            tracking: (String::new(), -1),
        }
    }

    /// Back to a new connection's state (RESET), keeping the id.
    pub fn reset(&mut self, password: Option<&DatabasePassword>) {
        *self = ClientState::new(self.id, self.peer, self.local, password);
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
            L::ClientInfo => Value::bulk(self.info_line()),
            L::ClientList => self.list(request),
            L::ClientReply => self.set_reply(request),
            // The session answers these itself (they reach its shard connections; see
            // `tracking.rs`).
            L::ClientTracking => {
                Value::error("ERR internal: CLIENT TRACKING answered outside the session")
            }
            L::ClientKill => return self.kill(request),
            L::ClientSetInfo | L::ClientNoop | L::ReadMode => Value::simple("OK"),
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

    /// CLIENT LIST [TYPE normal] [ID id ...]: the caller's own line when the filter keeps it;
    /// other clients are not reachable through the proxy.
    fn list(&self, request: &Request) -> Value {
        let args = &request.args()[1..];
        let mine = match args.first().map(|a| a.to_ascii_uppercase()) {
            None => true,
            Some(option) if option == b"TYPE" && args.len() == 2 => {
                args[1].eq_ignore_ascii_case(b"normal")
            }
            Some(option) if option == b"ID" && args.len() >= 2 => args[1..]
                .iter()
                .any(|id| id.as_ref() == self.id.to_string().as_bytes()),
            Some(_) => return Value::error("ERR syntax error"),
        };
        Value::bulk(if mine {
            self.info_line()
        } else {
            String::new()
        })
    }

    /// CLIENT KILL of the caller's own connection (by `ID`, `ADDR`, `LADDR` or the old
    /// `addr` form): answered, then the connection closes, as Redis does; any other client is
    /// out of reach.
    fn kill(&self, request: &Request) -> LocalOutcome {
        let args = &request.args()[1..];
        let (peer, local, id) = (
            self.peer.to_string(),
            self.local.to_string(),
            self.id.to_string(),
        );
        let is = |value: &Bytes, mine: &str| value.as_ref() == mine.as_bytes();
        let outcome = match args {
            [addr] if is(addr, &peer) => Some(Value::simple("OK")),
            [_] => return LocalOutcome::Reply(Value::error("ERR No such client")),
            pairs if pairs.len() % 2 == 0 && !pairs.is_empty() => {
                let names_me =
                    pairs
                        .chunks(2)
                        .all(|pair| match pair[0].to_ascii_uppercase().as_slice() {
                            b"ID" => is(&pair[1], &id),
                            b"ADDR" => is(&pair[1], &peer),
                            b"LADDR" => is(&pair[1], &local),
                            b"SKIPME" => pair[1].eq_ignore_ascii_case(b"no"),
                            b"TYPE" => pair[1].eq_ignore_ascii_case(b"normal"),
                            _ => false,
                        });
                names_me.then_some(Value::Integer(1))
            }
            _ => return LocalOutcome::Reply(Value::error("ERR syntax error")),
        };
        match outcome {
            Some(reply) => LocalOutcome::CloseAfter(reply),
            None => LocalOutcome::Reply(Value::error(
                "ERR CLIENT KILL through the flotilla proxy reaches only the caller's own connection (by ID, ADDR or LADDR, with SKIPME no): other clients' connections are not reachable through the proxy",
            )),
        }
    }

    fn info_line(&self) -> String {
        let name = self
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let resp = match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        let (flags, redir) = &self.tracking;
        let flags = if flags.is_empty() { "N" } else { flags };
        format!(
            "id={} addr={} laddr={} name={} flags={} db=0 redir={} resp={}\n",
            self.id, self.peer, self.local, name, flags, redir, resp
        )
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
