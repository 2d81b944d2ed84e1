//! MONITOR through an endpoint: the endpoint opens one connection of its own to every primary
//! shard, as the engines' admin user (MONITOR is `@admin`), runs MONITOR there, and passes each
//! shard's lines to the client as they come. Lines of the cluster's own traffic (the agents'
//! and the endpoint's health, replication and login commands: INFO, PING, ROLE, CLIENT,
//! CONFIG, REPLCONF, ...) are left out: the client sees the commands of the database's
//! clients, in each shard's order (lines of different shards are not ordered between them),
//! with the address of the endpoint's engine connection that carried them.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use flotilla_resp::{Protocol, Request, Value};

use crate::shard::{ShardConn, ShardError};
use crate::slot::ShardIndex;
use crate::topology::Topology;

/// How long one shard may take to connect, log in and start monitoring.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Commands of the cluster's own traffic, left out of the client's MONITOR stream.
const INTERNAL: &[&str] = &[
    "info",
    "ping",
    "role",
    "client",
    "config",
    "replconf",
    "replicaof",
    "slaveof",
    "acl",
    "auth",
    "hello",
    "monitor",
    "sync",
    "psync",
    "shutdown",
    "failover",
    "latency",
    "slowlog",
];

/// A client's MONITOR connections, one per primary shard.
#[derive(Debug, Default)]
pub(crate) struct Monitors {
    conns: Vec<ShardConn>,
}

impl Monitors {
    /// Starts MONITOR on every primary of `topology`; the error to answer when the endpoint
    /// has no admin login or a shard does not start.
    pub async fn start(topology: &Topology) -> Result<Monitors, Value> {
        let Some(login) = topology.admin_login() else {
            return Err(Value::error(
                "ERR MONITOR is not available on this endpoint: it has no admin login to its shards",
            ));
        };
        let mut conns = Vec::with_capacity(usize::from(topology.shard_count()));
        for index in 0..topology.shard_count() {
            let shard = ShardIndex(index);
            let uid = topology.shard_uid(shard);
            let Some(addr) = topology.primary(shard) else {
                return Err(Value::error(format!("ERR shard {uid} has no primary")));
            };
            let start = async {
                let mut conn = ShardConn::connect(uid, addr, login, Protocol::Resp2, 0).await?;
                conn.send(&Request::new("MONITOR", []));
                conn.flush().await;
                let reply = conn.reply().await?;
                Ok::<_, ShardError>((conn, reply))
            };
            match tokio::time::timeout(START_TIMEOUT, start).await {
                Ok(Ok((conn, reply))) if !reply.is_error() => conns.push(conn),
                Ok(Ok((_, error))) => return Err(error),
                Ok(Err(e)) => return Err(e.reply()),
                Err(_) => {
                    return Err(Value::error(format!(
                        "ERR shard {uid} at {addr} did not start MONITOR within {}s",
                        START_TIMEOUT.as_secs()
                    )))
                }
            }
        }
        Ok(Monitors { conns })
    }

    /// Whether the client monitors.
    pub fn active(&self) -> bool {
        !self.conns.is_empty()
    }

    /// The next line of any shard that the client sees (pending forever when not monitoring);
    /// an error when a shard's connection broke.
    pub async fn next_line(&mut self) -> Result<Value, ShardError> {
        loop {
            let frame = poll_fn(|cx| {
                for conn in &mut self.conns {
                    if let Poll::Ready(frame) = conn.poll_reply(cx) {
                        return Poll::Ready(frame);
                    }
                }
                Poll::Pending
            })
            .await?;
            if let Value::SimpleString(line) = &frame {
                if !shown(line) {
                    continue;
                }
            }
            return Ok(frame);
        }
    }
}

/// Whether a MONITOR line (`1700000000.123456 [0 10.0.0.1:5000] "set" "k" "v"`) is a
/// database client's command rather than the cluster's own traffic.
fn shown(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    let Some(after) = text.split_once("] \"").map(|(_, rest)| rest) else {
        return true;
    };
    let name = after
        .split('"')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if INTERNAL.contains(&name.as_str()) {
        return false;
    }
    !(name == "publish" && after.contains("__flotilla__"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clusters_own_commands_are_left_out() {
        assert!(shown(
            b"1700000000.1 [0 127.0.0.1:5000] \"set\" \"foo\" \"bar\""
        ));
        assert!(shown(b"1700000000.1 [0 lua] \"set\" \"foo\" \"bar\""));
        assert!(!shown(
            b"1700000000.1 [0 127.0.0.1:5000] \"info\" \"replication\""
        ));
        assert!(!shown(b"1700000000.1 [0 127.0.0.1:5000] \"PING\""));
        assert!(!shown(
            b"1700000000.1 [0 127.0.0.1:5000] \"publish\" \"__flotilla__:wait-offset\" \"1\""
        ));
        assert!(shown(
            b"1700000000.1 [0 127.0.0.1:5000] \"publish\" \"news\" \"1\""
        ));
    }
}
