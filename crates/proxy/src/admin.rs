//! The commands an endpoint runs on its shards as the engines' admin user (SLOWLOG, LATENCY;
//! [`crate::Class::Admin`]): the engines keep these logs per process, and reading them is
//! `@admin`, which the proxy's data-path user may not run, also not from scripts. So the
//! endpoint opens a short-lived connection of its own to each primary, as the admin user, runs
//! the one request there, and merges the replies; nothing else ever travels on it.
//!
//! The request runs when it is dispatched, not after the earlier requests of the client's
//! pipeline reached their shards: a SLOWLOG GET pipelined right behind a slow command may not
//! see it yet (as a second client would not).

use std::time::Duration;

use flotilla_resp::{Protocol, Request, Value};

use crate::command::Merge;
use crate::merge::merge_replies;
use crate::shard::ShardConn;
use crate::slot::ShardIndex;
use crate::topology::{ShardLogin, Topology};

/// How long one shard may take to connect, log in and answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// SLOWLOG GET's count when the request gives none (Redis's default).
const SLOWLOG_DEFAULT_COUNT: usize = 10;

/// Runs `request` on every primary of `topology` as the admin user, in the client's
/// `protocol`, and merges the replies as `merge` says.
pub(crate) async fn ask(
    topology: &Topology,
    merge: Merge,
    request: &Request,
    protocol: Protocol,
) -> Value {
    let Some(login) = topology.admin_login() else {
        return Value::error(format!(
            "ERR {} is not available on this endpoint: it has no admin login to its shards",
            request.name()
        ));
    };
    let mut replies = Vec::with_capacity(usize::from(topology.shard_count()));
    for shard in 0..topology.shard_count() {
        replies.push(ask_one(topology, ShardIndex(shard), login, request, protocol).await);
    }
    let merged = merge_replies(merge, replies);
    match (merge, merged) {
        (Merge::NewestFirst, Value::Array(mut entries)) => {
            entries.truncate(requested_count(request));
            Value::Array(entries)
        }
        (_, merged) => merged,
    }
}

/// Runs `request` on the first shard's primary as the admin user (RESP2); `None` when the
/// endpoint has no admin login. For what one engine describes of itself (its CLIENT INFO line).
pub(crate) async fn ask_shard(topology: &Topology, request: &Request) -> Option<Value> {
    let login = topology.admin_login()?;
    let shard = ShardIndex(0);
    Some(ask_one(topology, shard, login, request, Protocol::Resp2).await)
}

async fn ask_one(
    topology: &Topology,
    shard: ShardIndex,
    login: &ShardLogin,
    request: &Request,
    protocol: Protocol,
) -> Value {
    let uid = topology.shard_uid(shard);
    let Some(addr) = topology.primary(shard) else {
        return Value::error(format!("ERR shard {uid} has no primary"));
    };
    let exchange = async {
        let mut conn = ShardConn::connect(uid, addr, login, protocol, 0).await?;
        conn.send(request);
        conn.flush().await;
        conn.reply().await
    };
    match tokio::time::timeout(ADMIN_TIMEOUT, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => e.reply(),
        Err(_) => Value::error(format!(
            "ERR shard {uid} at {addr} did not answer {} within {}s",
            request.name(),
            ADMIN_TIMEOUT.as_secs()
        )),
    }
}

/// SLOWLOG GET's count: the argument after GET, 10 without one, everything when negative.
fn requested_count(request: &Request) -> usize {
    let count = request
        .arg(2)
        .and_then(|raw| std::str::from_utf8(raw).ok()?.parse::<i64>().ok());
    match count {
        None => SLOWLOG_DEFAULT_COUNT,
        Some(n) if n < 0 => usize::MAX,
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowlog_count_like_redis() {
        let req =
            |words: &[&str]| Request::new("SLOWLOG", words.iter().map(|w| w.to_string().into()));
        assert_eq!(requested_count(&req(&["GET"])), 10);
        assert_eq!(requested_count(&req(&["GET", "3"])), 3);
        assert_eq!(requested_count(&req(&["GET", "-1"])), usize::MAX);
    }

    #[test]
    fn slow_entries_merge_newest_first() {
        let entry = |id: i64, time: i64| {
            Value::Array(vec![
                Value::Integer(id),
                Value::Integer(time),
                Value::Integer(15000),
                Value::Array(vec![Value::bulk("DEBUG")]),
            ])
        };
        let merged = merge_replies(
            Merge::NewestFirst,
            vec![
                Value::Array(vec![entry(1, 300), entry(0, 100)]),
                Value::Array(vec![entry(0, 200)]),
            ],
        );
        assert_eq!(
            merged,
            Value::Array(vec![entry(1, 300), entry(0, 200), entry(0, 100)])
        );
    }
}
