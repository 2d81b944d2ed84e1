//! An authenticated async client for one shard, with the commands the agent and the upgrade
//! flows need (INFO, REPLICAOF, CLIENT PAUSE WRITE, CONFIG SET) and bounded waits on replication.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::acl::EngineLogin;
use crate::error::{EngineError, Result};
use crate::info::{InfoMap, LinkStatus, MemoryInfo, ReplicationInfo, Role, ServerInfo, StatsInfo};

/// How often bounded waits poll the engines.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Timeouts for an [`EngineClient`].
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Time allowed for the TCP connect and AUTH.
    pub connect_timeout: Duration,
    /// Time allowed for any one reply; `None` waits forever (for commands a pause may block).
    pub response_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Some(Duration::from_secs(5)),
        }
    }
}

/// One authenticated connection to a shard. Cheap to clone (the connection is multiplexed).
#[derive(Clone)]
pub struct EngineClient {
    addr: String,
    conn: MultiplexedConnection,
    fell_back: bool,
}

impl std::fmt::Debug for EngineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineClient")
            .field("addr", &self.addr)
            .finish()
    }
}

impl EngineClient {
    /// Connects to `host:port` and logs in with `login`.
    pub async fn connect(host: IpAddr, port: u16, login: &EngineLogin) -> Result<Self> {
        Self::connect_with(host, port, login, ClientOptions::default()).await
    }

    /// [`connect`](Self::connect) with explicit timeouts. When the engine refuses the login and
    /// `login` has a fallback, connects again as the default user with it (an engine a 0.1.0
    /// daemon started has no Flotilla users); [`fell_back`](Self::fell_back) then says so.
    pub async fn connect_with(
        host: IpAddr,
        port: u16,
        login: &EngineLogin,
        options: ClientOptions,
    ) -> Result<Self> {
        let first = Self::open(host, port, login.user.as_deref(), &login.password, options).await;
        match (first, &login.fallback) {
            (Err(EngineError::Redis { source, .. }), Some(secret))
                if source.kind() == redis::ErrorKind::AuthenticationFailed =>
            {
                let mut client = Self::open(host, port, None, secret, options).await?;
                client.fell_back = true;
                Ok(client)
            }
            (result, _) => result,
        }
    }

    async fn open(
        host: IpAddr,
        port: u16,
        user: Option<&str>,
        password: &str,
        options: ClientOptions,
    ) -> Result<Self> {
        let addr = format!("{host}:{port}");
        let wrap = |source| EngineError::Redis {
            addr: addr.clone(),
            source,
        };
        let mut settings = RedisConnectionInfo::default()
            .set_password(password)
            .set_skip_set_lib_name();
        if let Some(user) = user {
            settings = settings.set_username(user);
        }
        let info = ConnectionAddr::Tcp(host.to_string(), port)
            .into_connection_info()
            .map_err(wrap)?
            .set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(wrap)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(options.response_timeout);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(wrap)?;
        Ok(EngineClient {
            addr,
            conn,
            fell_back: false,
        })
    }

    /// True when the login was refused and the client logged in as the default user with the
    /// fallback password: the engine has not moved to the Flotilla users yet.
    pub fn fell_back(&self) -> bool {
        self.fell_back
    }

    /// `ip:port` of the shard, as errors name it.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The underlying connection, for data commands this wrapper does not cover.
    pub fn connection(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// Sends one command and converts the reply.
    pub async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|source| EngineError::Redis {
                addr: self.addr.clone(),
                source,
            })
    }

    /// `PING`; succeeds once the engine answers `PONG` (not while it is still loading data).
    pub async fn ping(&self) -> Result<()> {
        let reply: String = self.command(&redis::cmd("PING")).await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(self.protocol(format!("PING answered {reply:?}")))
        }
    }

    /// Asks this replica to acknowledge its offset to its primary at once (`REPLCONF GETACK
    /// *`), instead of at its next once-a-second acknowledgement.
    ///
    /// Why: after a diskless full sync a primary sends its replica nothing more (writes pile up
    /// in its output buffer) until the replica's first `REPLCONF ACK` that arrives once the
    /// primary has marked it online. The replica sends one right after loading, which often
    /// arrives before the primary has reaped its fork and marked it online (every engine; the
    /// fork reaps on a 100 ms cron): then nothing streams until the next ACK, up to a second
    /// later, and a primary that dies meanwhile loses every write it acknowledged since the
    /// sync. Called once the primary lists the replica `online`, the ACK it triggers starts
    /// the stream.
    ///
    /// `REPLCONF GETACK` has no reply, so it goes in one packet with a `PING` whose `PONG` is
    /// the only reply read: the connection stays in step.
    pub async fn request_ack(&self) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("REPLCONF").arg("GETACK").arg("*").cmd("PING");
        let mut conn = self.conn.clone();
        let replies = redis::aio::ConnectionLike::req_packed_commands(&mut conn, &pipe, 0, 1)
            .await
            .map_err(|source| EngineError::Redis {
                addr: self.addr.clone(),
                source,
            })?;
        match replies.as_slice() {
            [redis::Value::SimpleString(pong)] if pong == "PONG" => Ok(()),
            other => Err(self.protocol(format!("REPLCONF GETACK + PING answered {other:?}"))),
        }
    }

    /// `INFO <section>` as a key/value map.
    pub async fn info(&self, section: &str) -> Result<InfoMap> {
        let text: String = self.command(redis::cmd("INFO").arg(section)).await?;
        Ok(InfoMap::parse(&text))
    }

    /// `INFO replication`, typed.
    pub async fn replication(&self) -> Result<ReplicationInfo> {
        let map = self.info("replication").await?;
        ReplicationInfo::from_map(&map)
            .ok_or_else(|| self.protocol("INFO replication without role"))
    }

    /// `INFO memory`, typed.
    pub async fn memory(&self) -> Result<MemoryInfo> {
        let map = self.info("memory").await?;
        MemoryInfo::from_map(&map).ok_or_else(|| self.protocol("INFO memory without used_memory"))
    }

    /// `INFO server`, typed.
    pub async fn server(&self) -> Result<ServerInfo> {
        let map = self.info("server").await?;
        ServerInfo::from_map(&map)
            .ok_or_else(|| self.protocol("INFO server without version/pid/run_id"))
    }

    /// `INFO stats` replication counters, typed.
    pub async fn stats(&self) -> Result<StatsInfo> {
        let map = self.info("stats").await?;
        StatsInfo::from_map(&map).ok_or_else(|| self.protocol("INFO stats without sync counters"))
    }

    /// `REPLICAOF host port`: make this shard follow a primary.
    pub async fn replicaof(&self, host: IpAddr, port: u16) -> Result<()> {
        self.expect_ok(redis::cmd("REPLICAOF").arg(host.to_string()).arg(port))
            .await
    }

    /// `REPLICAOF NO ONE`: promote this shard to primary (keeps its data and, with PSYNC2, its
    /// replication history so the old primary can partially resync from it).
    pub async fn replicaof_no_one(&self) -> Result<()> {
        self.expect_ok(redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
            .await
    }

    /// `CLIENT PAUSE <ms> WRITE`: fence writes (reads still answer) for at most `ms`.
    pub async fn client_pause_write(&self, ms: u64) -> Result<()> {
        self.expect_ok(redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("WRITE"))
            .await
    }

    /// `CLIENT UNPAUSE`: lift a pause early (the switchover's abort path).
    pub async fn client_unpause(&self) -> Result<()> {
        self.expect_ok(redis::cmd("CLIENT").arg("UNPAUSE")).await
    }

    /// `CONFIG SET name value` at run time (the config file is rewritten from the spec on the
    /// next start, so callers change the spec too).
    pub async fn config_set(&self, name: &str, value: &str) -> Result<()> {
        self.expect_ok(redis::cmd("CONFIG").arg("SET").arg(name).arg(value))
            .await
    }

    /// Makes this primary's next full sync wait, up to `wait`, until `replicas` replicas ask
    /// for one, so that they all load the same RDB stream (`repl-diskless-sync-max-replicas`,
    /// Redis 7.0+ and Valkey). Returns false, changing nothing, on an engine without it (Redis
    /// 6.2), where a delay alone would cost its full length on every sync.
    pub async fn share_next_full_sync(&self, replicas: u32, wait: Duration) -> Result<bool> {
        let max_replicas = "repl-diskless-sync-max-replicas";
        if self
            .config_set(max_replicas, &replicas.to_string())
            .await
            .is_err()
        {
            return Ok(false);
        }
        let delay = wait.as_secs().max(1).to_string();
        self.config_set("repl-diskless-sync-delay", &delay).await?;
        Ok(true)
    }

    /// Puts back the full-sync settings of the engine's config file (see
    /// [`crate::FULL_SYNC_DELAY_SECS`]): a full sync starts as soon as a replica asks.
    pub async fn start_full_syncs_at_once(&self) -> Result<()> {
        let delay = crate::FULL_SYNC_DELAY_SECS.to_string();
        self.config_set("repl-diskless-sync-delay", &delay).await?;
        // Absent on Redis 6.2, where the delay alone already says it.
        let _ = self
            .config_set("repl-diskless-sync-max-replicas", "0")
            .await;
        Ok(())
    }

    /// Whether the engine's default user is on and takes `password` (or any password): a
    /// 0.1.0 node could still log in with it (`ACL GETUSER default`, whose `passwords` are
    /// SHA-256 hashes).
    pub async fn default_user_takes(&self, password: &str) -> Result<bool> {
        let reply: redis::Value = self
            .command(redis::cmd("ACL").arg("GETUSER").arg("default"))
            .await?;
        let fields: Vec<redis::Value> = match reply {
            redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => redis::from_redis_value(other)
                .map_err(|e| self.protocol(format!("ACL GETUSER default: {e}")))?,
        };
        let mut flags = None;
        let mut passwords = Vec::new();
        let mut fields = fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            let name: String = redis::from_redis_value(name).unwrap_or_default();
            let strings = || -> Result<Vec<String>> {
                redis::from_redis_value(value)
                    .map_err(|e| self.protocol(format!("ACL GETUSER default {name}: {e}")))
            };
            match name.as_str() {
                "flags" => flags = Some(strings()?),
                "passwords" => passwords = strings()?,
                _ => {}
            }
        }
        let flags = flags.ok_or_else(|| self.protocol("ACL GETUSER default without flags"))?;
        let on = flags.iter().any(|f| f == "on");
        let nopass = flags.iter().any(|f| f == "nopass");
        let hash = sha256_hex(password);
        Ok(on && (nopass || passwords.iter().any(|p| p.eq_ignore_ascii_case(&hash))))
    }

    /// Moves a running engine to the Flotilla users without restarting it: `ACL SETUSER` of
    /// every user (as [`crate::ShardSpec`] renders them), the replica's `masteruser` and
    /// `masterauth`, then the default user off. Connections already logged in as the default
    /// user keep working (Redis and Valkey check a login only when it is made). Each step is
    /// safe to run again.
    pub async fn move_to_users(
        &self,
        users: &flotilla_model::EngineUsers,
        version: crate::EngineVersion,
    ) -> Result<()> {
        for (name, rules) in crate::acl::users(users, version) {
            self.expect_ok(redis::cmd("ACL").arg("SETUSER").arg(name).arg(rules))
                .await?;
        }
        self.config_set("masteruser", flotilla_model::REPLICATION_USER)
            .await?;
        self.config_set("masterauth", &users.replication).await?;
        self.expect_ok(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg(crate::acl::DEFAULT_OFF_RUNNING),
        )
        .await
    }

    /// `CONFIG GET name`, the single value.
    pub async fn config_get(&self, name: &str) -> Result<Option<String>> {
        let pairs: Vec<String> = self
            .command(redis::cmd("CONFIG").arg("GET").arg(name))
            .await?;
        Ok(pairs.into_iter().nth(1))
    }

    /// Polls this replica until its link to the primary is up and no full sync runs, bounded
    /// by `timeout`. Returns the last replication view.
    pub async fn wait_link_up(&self, timeout: Duration) -> Result<ReplicationInfo> {
        let what = format!("replica {} link up", self.addr);
        poll_until(&what, timeout, || async {
            let info = self.replication().await?;
            let done = info.role == Role::Replica
                && info.master_link_status == Some(LinkStatus::Up)
                && !info.master_sync_in_progress;
            Ok((done, info))
        })
        .await
    }

    /// Polls this replica until its processed offset reaches `offset` (the paused primary's
    /// offset, in a switchover), bounded by `timeout`.
    pub async fn wait_offset(&self, offset: i64, timeout: Duration) -> Result<ReplicationInfo> {
        let what = format!("replica {} to reach offset {offset}", self.addr);
        poll_until(&what, timeout, || async {
            let info = self.replication().await?;
            let done = info.master_link_status == Some(LinkStatus::Up) && info.offset() >= offset;
            Ok((done, info))
        })
        .await
    }

    fn protocol(&self, detail: impl Into<String>) -> EngineError {
        EngineError::Protocol {
            addr: self.addr.clone(),
            detail: detail.into(),
        }
    }

    async fn expect_ok(&self, cmd: &redis::Cmd) -> Result<()> {
        let reply: String = self.command(cmd).await?;
        if reply == "OK" {
            Ok(())
        } else {
            Err(self.protocol(format!("expected OK, got {reply:?}")))
        }
    }
}

/// SHA-256 of `text` as lowercase hex, as `ACL GETUSER` shows a password.
fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Polls until `replica` is in sync with `primary`: link up, no full sync running, and the
/// replica's processed offset equal to the primary's current offset. Bounded by `timeout`.
///
/// The primary's offset moves on its own (it pings replicas every few seconds), so equality is
/// checked on fresh readings of both sides each round.
pub async fn wait_for_sync(
    primary: &EngineClient,
    replica: &EngineClient,
    timeout: Duration,
) -> Result<ReplicationInfo> {
    let what = format!("replica {} in sync with {}", replica.addr, primary.addr);
    poll_until(&what, timeout, || async {
        let theirs = primary.replication().await?;
        let ours = replica.replication().await?;
        let done = ours.role == Role::Replica
            && ours.master_link_status == Some(LinkStatus::Up)
            && !ours.master_sync_in_progress
            && ours.offset() >= theirs.master_repl_offset;
        Ok((done, ours))
    })
    .await
}

/// Runs `check` every [`POLL_INTERVAL`] until it reports done or `timeout` passes; the error
/// names `what` and the last observed value. Errors from `check` are retried until the
/// deadline (an engine may be briefly busy) and reported if they were the last thing seen.
pub(crate) async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(bool, T)>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok((true, value)) => return Ok(value),
            Ok((false, value)) => format!("{value:?}"),
            Err(err) => err.to_string(),
        };
        if start.elapsed() >= timeout {
            return Err(EngineError::Timeout {
                what: what.to_string(),
                waited_ms: start.elapsed().as_millis(),
                last,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
