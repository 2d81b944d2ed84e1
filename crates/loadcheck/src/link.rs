//! One load client's connection to the endpoint: connects lazily, bounds every operation by the
//! per-operation timeout (connect time included), and reconnects after the connection breaks.
//!
//! It never retries a command: whether a failed write may be sent again is the caller's choice,
//! and a load check's answer is "no" (the outcome is unknown and recorded as such).

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionInfo, FromRedisValue};

use crate::stats::ErrorKind;

/// Pause between connection attempts while the endpoint refuses connections.
const CONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// A request to send: one command or a pipeline of them.
pub(crate) enum Request<'a> {
    /// A single command.
    Cmd(&'a redis::Cmd),
    /// Several commands sent together, replies returned as one array.
    Pipe(&'a redis::Pipeline),
}

/// Why an operation did not complete.
#[derive(Debug)]
pub(crate) enum OpError {
    /// No connection within the timeout: the command was never sent, so it did not execute.
    NotSent(String),
    /// The command was sent and failed; a write's outcome is unknown.
    Failed(ErrorKind, String),
}

impl OpError {
    /// The client error kind to count.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Self::NotSent(_) => ErrorKind::Connect,
            Self::Failed(kind, _) => *kind,
        }
    }

    /// A one-line description for examples in the report.
    pub(crate) fn message(&self) -> &str {
        match self {
            Self::NotSent(m) | Self::Failed(_, m) => m,
        }
    }
}

/// A lazily (re)connected client connection with a per-operation deadline.
pub(crate) struct Link {
    client: Client,
    conn: Option<MultiplexedConnection>,
    op_timeout: Duration,
    connects: u64,
}

impl Link {
    /// A link that will connect on first use.
    pub(crate) fn new(
        info: ConnectionInfo,
        op_timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: Client::open(info)?,
            conn: None,
            op_timeout,
            connects: 0,
        })
    }

    /// How many connections this link has made (the first one included).
    pub(crate) fn connects(&self) -> u64 {
        self.connects
    }

    /// Sends `req` and parses its reply, all within the per-operation timeout.
    pub(crate) async fn query<T: FromRedisValue>(
        &mut self,
        req: Request<'_>,
    ) -> Result<T, OpError> {
        let deadline = Instant::now() + self.op_timeout;
        let mut conn = self.connected(deadline).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let reply = match req {
            Request::Cmd(cmd) => tokio::time::timeout(remaining, cmd.query_async(&mut conn)).await,
            Request::Pipe(pipe) => {
                tokio::time::timeout(remaining, pipe.query_async(&mut conn)).await
            }
        };
        let err = match reply {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => OpError::Failed(ErrorKind::of(&e), e.to_string()),
            Err(_) => OpError::Failed(ErrorKind::Timeout, format!("no reply within {remaining:?}")),
        };
        if err.kind().needs_reconnect() {
            self.conn = None;
        }
        Err(err)
    }

    /// The current connection, or a new one made before `deadline`.
    async fn connected(&mut self, deadline: Instant) -> Result<MultiplexedConnection, OpError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let mut last = String::from("no time left to connect");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(OpError::NotSent(last));
            }
            match self.connect_once(remaining).await {
                Ok(conn) => {
                    self.connects += 1;
                    self.conn = Some(conn.clone());
                    return Ok(conn);
                }
                Err(e) => last = e,
            }
            let pause = CONNECT_BACKOFF.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }

    async fn connect_once(&self, limit: Duration) -> Result<MultiplexedConnection, String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(limit))
            .set_response_timeout(None);
        let attempt = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("connect: {e}")),
            Err(_) => Err(format!("connect: no connection within {limit:?}")),
        }
    }
}
