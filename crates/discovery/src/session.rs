//! One client connection's state (protocol, client name) and the dispatch of every command the
//! discovery service answers.

use std::fmt::Write as _;

use bytes::Bytes;
use flotilla_resp::{CommandName, Protocol, Request, Value};

use crate::sentinel::{arity, sentinel, View};
use crate::snapshot::run_id;

/// The Redis version whose Sentinel subset this service speaks, reported by `HELLO` and `INFO`.
const SERVER_VERSION: &str = "7.0.0";

/// What to do after a command: the reply, and whether to close the connection once it is sent.
pub(crate) struct Outcome {
    /// The reply to send.
    pub reply: Value,
    /// Close the connection after sending the reply (`QUIT`).
    pub close: bool,
}

/// Per-connection state of a discovery client.
pub(crate) struct Session {
    /// The connection's id, reported by `HELLO` and `CLIENT ID`.
    id: u64,
    /// RESP2 until the client says `HELLO 3`.
    protocol: Protocol,
    /// The name set by `CLIENT SETNAME` or `HELLO ... SETNAME`.
    name: Option<Bytes>,
    /// The password given by the latest `AUTH` or `HELLO ... AUTH`: the databases that have
    /// this password (and those that have none) are the ones this client sees.
    password: Option<Bytes>,
}

impl Session {
    /// A fresh connection speaking RESP2.
    pub fn new(id: u64) -> Self {
        Session {
            id,
            protocol: Protocol::Resp2,
            name: None,
            password: None,
        }
    }

    /// The password this client authenticated with, if any.
    pub fn password(&self) -> Option<&[u8]> {
        self.password.as_deref()
    }

    /// The protocol replies must be encoded in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Answers one command.
    pub fn handle(&mut self, req: &Request, view: &View<'_>) -> Outcome {
        let reply = match req.name() {
            "PING" => ping(req),
            "SENTINEL" => sentinel(req, view, self.protocol),
            "HELLO" => self.hello(req),
            "AUTH" if matches!(req.argc(), 2 | 3) => {
                self.password = req.argv().last().cloned();
                Value::simple("OK")
            }
            "AUTH" => arity("auth"),
            "CLIENT" => self.client(req),
            "ROLE" => role(view),
            "INFO" => info(req, view),
            "QUIT" => {
                return Outcome {
                    reply: Value::simple("OK"),
                    close: true,
                }
            }
            _ => unknown_command(req),
        };
        Outcome {
            reply,
            close: false,
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switches protocol, takes the
    /// password as `AUTH` does, answers the server's description.
    fn hello(&mut self, req: &Request) -> Value {
        let mut protocol = self.protocol;
        let mut at = 1;
        if let Some(version) = req.arg(1) {
            protocol = match version.as_ref() {
                b"2" => Protocol::Resp2,
                b"3" => Protocol::Resp3,
                _ => return Value::error("NOPROTO unsupported protocol version"),
            };
            at = 2;
        }
        let mut name = None;
        let mut password = None;
        while let Some(option) = req.arg(at) {
            match CommandName::new(option).as_str() {
                "AUTH" if at + 2 < req.argc() => {
                    password = req.arg(at + 2).cloned();
                    at += 3;
                }
                "SETNAME" if at + 1 < req.argc() => {
                    name = req.arg(at + 1).cloned();
                    at += 2;
                }
                _ => {
                    return Value::error(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(option)
                    ))
                }
            }
        }
        if let Some(name) = name {
            if let Err(e) = self.set_name(name) {
                return e;
            }
        }
        if password.is_some() {
            self.password = password;
        }
        self.protocol = protocol;
        self.hello_reply()
    }

    /// The map `HELLO` answers.
    fn hello_reply(&self) -> Value {
        let proto = match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        Value::Map(vec![
            (Value::bulk("server"), Value::bulk("redis")),
            (Value::bulk("version"), Value::bulk(SERVER_VERSION)),
            (Value::bulk("proto"), Value::Integer(proto)),
            (Value::bulk("id"), Value::Integer(self.id as i64)),
            (Value::bulk("mode"), Value::bulk("sentinel")),
            (Value::bulk("role"), Value::bulk("sentinel")),
            (Value::bulk("modules"), Value::Array(vec![])),
        ])
    }

    /// `CLIENT SETNAME|GETNAME|SETINFO|ID`.
    fn client(&mut self, req: &Request) -> Value {
        let Some(raw_sub) = req.arg(1) else {
            return arity("client");
        };
        let sub = CommandName::new(raw_sub);
        match (sub.as_str(), req.argc()) {
            ("SETNAME", 3) => match self.set_name(req.argv()[2].clone()) {
                Ok(()) => Value::simple("OK"),
                Err(e) => e,
            },
            ("GETNAME", 2) => match &self.name {
                Some(name) => Value::BulkString(name.clone()),
                None => Value::Null,
            },
            ("SETINFO", 4) => Value::simple("OK"),
            ("ID", 2) => Value::Integer(self.id as i64),
            ("SETNAME" | "GETNAME" | "SETINFO" | "ID", _) => {
                arity(&format!("client|{}", sub.as_str().to_ascii_lowercase()))
            }
            _ => Value::error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(raw_sub)
            )),
        }
    }

    /// Sets the client name with Redis's rule (printable, no spaces); empty clears it.
    fn set_name(&mut self, name: Bytes) -> Result<(), Value> {
        if !name.iter().all(|b| (b'!'..=b'~').contains(b)) {
            return Err(Value::error(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        self.name = (!name.is_empty()).then_some(name);
        Ok(())
    }
}

/// `PING [message]`.
fn ping(req: &Request) -> Value {
    match req.argc() {
        1 => Value::simple("PONG"),
        2 => Value::BulkString(req.argv()[1].clone()),
        _ => arity("ping"),
    }
}

/// `ROLE`: `["sentinel", [database names]]`, as Sentinel answers.
fn role(view: &View<'_>) -> Value {
    let names = view
        .dbs
        .endpoints
        .iter()
        .map(|e| Value::bulk(e.name.clone()))
        .collect();
    Value::Array(vec![Value::bulk("sentinel"), Value::Array(names)])
}

/// `INFO [section]`: a small `# Server` and `# Sentinel` section.
fn info(req: &Request, view: &View<'_>) -> Value {
    let section = req
        .arg(1)
        .map(|s| CommandName::new(s).as_str().to_owned())
        .unwrap_or_default();
    let all = matches!(section.as_str(), "" | "ALL" | "DEFAULT" | "EVERYTHING");
    let mut text = String::new();
    if all || section == "SERVER" {
        server_section(&mut text, view);
    }
    if all || section == "SENTINEL" {
        sentinel_section(&mut text, view);
    }
    Value::bulk(text)
}

/// Appends INFO's `# Server` section.
fn server_section(text: &mut String, view: &View<'_>) {
    let _ = write!(
        text,
        "# Server\r\nredis_version:{SERVER_VERSION}\r\nredis_mode:sentinel\r\n\
         run_id:{}\r\ntcp_port:{}\r\n\r\n",
        run_id(view.me),
        view.me.port()
    );
}

/// Appends INFO's `# Sentinel` section: one `masterN:` line per database.
fn sentinel_section(text: &mut String, view: &View<'_>) {
    let _ = write!(
        text,
        "# Sentinel\r\nsentinel_masters:{}\r\nsentinel_tilt:0\r\nsentinel_running_scripts:0\r\n\
         sentinel_scripts_queue_length:0\r\nsentinel_simulate_failure_flags:0\r\n",
        view.dbs.endpoints.len()
    );
    for (i, e) in view.dbs.endpoints.iter().enumerate() {
        let _ = write!(
            text,
            "master{i}:name={},status=ok,address={},slaves=0,sentinels={}\r\n",
            e.name,
            e.socket_addr(),
            view.dbs.sentinels.len() + 1
        );
    }
}

/// Redis's error for a command it does not know, quoting the first arguments.
fn unknown_command(req: &Request) -> Value {
    let mut message = format!(
        "ERR unknown command '{}', with args beginning with: ",
        shown(req.raw_name())
    );
    for arg in req.args().iter().take(8) {
        let _ = write!(message, "'{}' ", shown(arg));
    }
    Value::error(message)
}

/// Client input as quoted in an error: at most 128 bytes, lossily decoded.
fn shown(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(&bytes[..bytes.len().min(128)])
}
