//! One connection from the proxy to a shard's engine: connected and authenticated with the
//! internal password, speaking the client's protocol, with a write buffer that collects a whole
//! pipeline before one flush and a reply decoder that reads the replies back in order.
//!
//! Each client connection owns at most one of these per shard, opened on first use (see the
//! crate docs for why connections are dedicated rather than shared).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flotilla_resp::{Decoder, Limits, Protocol, ProtocolError, Request, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::outcome::{Replication, StreamPosition};
use crate::topology::ShardLogin;

/// How long opening and authenticating a shard connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection that logged in with the fallback (the engine had no proxy user yet)
/// is used before it is replaced by one that tries the user again; the engine's agent moves it
/// to the users within a reconcile round of the cluster version becoming 0.2.0.
pub(crate) const RELOGIN_AFTER: Duration = Duration::from_secs(1);

/// Free room made in the read buffer before a non-blocking read.
const READ_RESERVE: usize = 4096;

/// Why a shard connection failed. The text says whether the client's command may have run;
/// [`crate::verdict::Verdict::of_shard_error`] says it to the code. Shards are named by uid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The shard could not be reached or refused the handshake: nothing was sent.
    #[error("shard {shard} at {addr} is unavailable ({reason}); the command was not executed")]
    Unavailable {
        /// Shard uid.
        shard: u64,
        /// The address tried.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The connection broke after the command was sent: it may or may not have run.
    #[error(
        "lost the connection to shard {shard} at {addr} ({reason}); the command may have executed"
    )]
    Lost {
        /// Shard uid.
        shard: u64,
        /// The shard's address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
        /// Where the master's replication stream stood before the request was sent, when the
        /// connection tracks it (see `outcome.rs`): the request lies after it.
        position: Option<Box<StreamPosition>>,
    },
}

impl ShardError {
    /// The error reply the client gets.
    pub fn reply(&self) -> Value {
        Value::error(format!("ERR {self}"))
    }
}

/// An authenticated connection to one shard's primary.
///
/// Exists so a client's pipeline reaches each shard as one write and its replies come back in
/// order: requests are appended with [`ShardConn::send`], written by [`ShardConn::flush`], and
/// their replies taken one by one with [`ShardConn::reply`].
#[derive(Debug)]
pub struct ShardConn {
    shard: u64,
    addr: SocketAddr,
    stream: TcpStream,
    protocol: Protocol,
    out: BytesMut,
    input: BytesMut,
    decoder: Decoder,
    broken: Option<ShardError>,
    generation: u64,
    /// How it logged in (`None`: taken over from another process, login unknown), and when
    /// it had to fall back to the default user.
    login: Option<(ShardLogin, Option<Instant>)>,
}

impl ShardConn {
    /// Connects to shard `shard` (its uid, for messages) at `addr`, logs in with `login` (no
    /// AUTH when its password is empty) and switches to `protocol`. `generation` tells this connection apart from earlier ones
    /// to the same shard (a WATCH does not survive a reconnect).
    pub async fn connect(
        shard: u64,
        addr: SocketAddr,
        login: &ShardLogin,
        protocol: Protocol,
        generation: u64,
    ) -> Result<Self, ShardError> {
        let unavailable = |reason: String| ShardError::Unavailable {
            shard,
            addr,
            reason,
        };
        let attempt = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            stream
                .set_nodelay(true)
                .map_err(|e| unavailable(e.to_string()))?;
            let mut conn = ShardConn::over(shard, addr, stream, Protocol::Resp2, generation, &[]);
            let fell_back = conn
                .handshake(login, protocol)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            conn.login = Some((login.clone(), fell_back.then(Instant::now)));
            Ok(conn)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(unavailable("timed out connecting".into())))
    }

    /// AUTH and HELLO, answered before any client command is sent; when the login is refused
    /// and `login` has a fallback, AUTH and HELLO again with it. Returns whether it fell back.
    async fn handshake(
        &mut self,
        login: &ShardLogin,
        protocol: Protocol,
    ) -> Result<bool, ShardError> {
        let refused = match self
            .auth_and_hello(login.user.as_deref(), &login.password, protocol)
            .await?
        {
            None => return Ok(false),
            Some(refused) => refused,
        };
        let Some(fallback) = &login.fallback else {
            return Err(self.lost(format!("handshake refused: {refused}")));
        };
        match self.auth_and_hello(None, fallback, protocol).await? {
            None => Ok(true),
            Some(refused) => Err(self.lost(format!("handshake refused: {refused}"))),
        }
    }

    /// Sends AUTH (unless `password` is empty) and HELLO (for RESP3) in one write; the first
    /// refusal's text, if any.
    async fn auth_and_hello(
        &mut self,
        user: Option<&str>,
        password: &str,
        protocol: Protocol,
    ) -> Result<Option<String>, ShardError> {
        if !password.is_empty() {
            let mut args: Vec<Bytes> = user.map(|u| u.to_owned().into()).into_iter().collect();
            args.push(password.to_owned().into());
            self.send(&Request::new("AUTH", args));
        }
        if protocol == Protocol::Resp3 {
            self.send_hello(protocol);
        }
        let expected = usize::from(!password.is_empty()) + usize::from(protocol == Protocol::Resp3);
        self.flush().await;
        let mut refused = None;
        for _ in 0..expected {
            let reply = self.reply().await?;
            if reply.is_error() && refused.is_none() {
                refused = Some(text(&reply));
            }
        }
        Ok(refused)
    }

    /// When this connection fell back to the default user at login, if it did.
    pub(crate) fn fell_back_at(&self) -> Option<Instant> {
        self.login.as_ref().and_then(|(_, at)| *at)
    }

    /// Whether this connection logged in as `login` asks, so it may carry requests: false for
    /// an older login (the cluster moved to the proxy user) and, after [`RELOGIN_AFTER`], for
    /// one that fell back to the default user. A connection taken over from another process
    /// keeps the login it had.
    pub fn logged_in_as(&self, login: &ShardLogin) -> bool {
        match &self.login {
            None => true,
            Some((used, fell_back)) => {
                used == login && fell_back.is_none_or(|at| at.elapsed() < RELOGIN_AFTER)
            }
        }
    }

    /// Appends `HELLO n` and records the protocol; the caller discards its reply.
    pub fn send_hello(&mut self, protocol: Protocol) {
        let version = match protocol {
            Protocol::Resp2 => "2",
            Protocol::Resp3 => "3",
        };
        self.send(&Request::new("HELLO", [version.into()]));
        self.protocol = protocol;
    }

    /// The protocol replies come back in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The address this connection goes to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Which connection to this shard this is, for this client.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the connection failed; it is replaced before the next batch.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Appends `request` to the pipeline; nothing is written until [`ShardConn::flush`].
    pub fn send(&mut self, request: &Request) {
        request.encode(&mut self.out);
    }

    /// Writes the pipeline. A failure marks the connection broken; the replies then come back
    /// as errors from [`ShardConn::reply`]. A connection the engine closed before the pipeline
    /// is written (the engine died between two batches) is broken as "unavailable": nothing
    /// was sent, so the requests may go again (see [`ShardConn::closed_by_engine`]).
    pub async fn flush(&mut self) {
        if self.out.is_empty() || self.broken.is_some() {
            return;
        }
        if let Some(reason) = self.closed_by_engine() {
            self.broken = Some(ShardError::Unavailable {
                shard: self.shard,
                addr: self.addr,
                reason,
            });
            self.out.clear();
            return;
        }
        if let Err(e) = self.stream.write_all(&self.out).await {
            self.broken = Some(self.lost(e.to_string()));
        }
        self.out.clear();
    }

    /// Whether the engine says it is a primary (its `HELLO` reply's `role`), asked before any
    /// request is sent on a new connection. Exists for an engine found again at the address of
    /// one that died: its agent may have restarted it as an empty replica of the shard's new
    /// primary while this endpoint's topology still names the old address; reads there would
    /// answer from the empty data set.
    pub async fn is_primary(&mut self) -> Result<bool, ShardError> {
        self.send_hello(self.protocol);
        self.flush().await;
        let reply = self.reply().await?;
        let fields: Vec<(&Value, &Value)> = match &reply {
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            Value::Array(items) => items
                .chunks_exact(2)
                .map(|pair| (&pair[0], &pair[1]))
                .collect(),
            _ => Vec::new(),
        };
        let role = fields
            .into_iter()
            .find(|(key, _)| text(key) == "role")
            .map(|(_, value)| text(value));
        // An engine without HELLO (none Flotilla runs) cannot tell: taken as it is.
        Ok(role.is_none_or(|role| role == "master"))
    }

    /// The engine's `INFO replication`, asked before any request is sent on this connection;
    /// `None` when the engine does not answer it (a login without INFO). For the proof that
    /// writes in flight on a dead master did not reach its promoted replica (`outcome.rs`).
    pub(crate) async fn replication(&mut self) -> Result<Option<Replication>, ShardError> {
        self.send(&Request::new("INFO", ["replication".into()]));
        self.flush().await;
        let text = match self.reply().await? {
            Value::VerbatimString { text, .. } | Value::BulkString(text) => text,
            _ => return Ok(None),
        };
        Ok(Replication::parse(&String::from_utf8_lossy(&text)))
    }

    /// Why the engine closed this connection, when the reactor has already seen it closed
    /// while every reply was read (between batches: the flush that asks is the one about to
    /// send). Costs no system call unless the socket became readable, which an idle data
    /// connection only does when its engine closes it.
    fn closed_by_engine(&mut self) -> Option<String> {
        if !self.input.is_empty() || self.decoder.is_mid_frame() {
            return None;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => None,
            Poll::Ready(Err(e)) => Some(e.to_string()),
            Poll::Ready(Ok(())) => {
                self.input.reserve(READ_RESERVE);
                match self.stream.try_read_buf(&mut self.input) {
                    Ok(0) => Some("connection closed by the shard".into()),
                    Ok(_) => None,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                    Err(e) => Some(e.to_string()),
                }
            }
        }
    }

    /// The next reply, in the order requests were sent.
    pub async fn reply(&mut self) -> Result<Value, ShardError> {
        if let Some(broken) = &self.broken {
            return Err(broken.clone());
        }
        match self.read_reply().await {
            Ok(value) => Ok(value),
            Err(reason) => {
                let error = self.lost(reason);
                self.broken = Some(error.clone());
                Err(error)
            }
        }
    }

    /// The next reply as the engine encoded it (in the protocol the connection spoke when its
    /// request was sent), found without decoding it; a reply the scanner does not take apart is
    /// decoded and re-encoded byte-exact.
    pub async fn reply_raw(&mut self) -> Result<Bytes, ShardError> {
        if let Some(broken) = &self.broken {
            return Err(broken.clone());
        }
        loop {
            let read = match take_raw_reply(&mut self.input, &mut self.decoder) {
                Ok(Some(raw)) => return Ok(raw),
                Ok(None) => match self.stream.read_buf(&mut self.input).await {
                    Ok(0) => Err("connection closed by the shard".to_owned()),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
                Err(reason) => Err(reason),
            };
            if let Err(reason) = read {
                let error = self.lost(reason);
                self.broken = Some(error.clone());
                return Err(error);
            }
        }
    }

    /// The connection's socket and the bytes already read from it, for a caller that takes
    /// over the connection after the handshake (a shared connection).
    pub(crate) fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.input)
    }

    /// Polls for the next reply (a pushed message on a subscriber connection), for waiting on
    /// several connections at once. Like [`ShardConn::reply`], a failure marks it broken.
    ///
    /// A frame is decoded only once it is whole in the read buffer, so between polls the
    /// buffer holds exactly the bytes not passed on yet (see [`ShardConn::handover_bytes`]).
    pub fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<Value, ShardError>> {
        if let Some(broken) = &self.broken {
            return Poll::Ready(Err(broken.clone()));
        }
        match self.poll_read_reply(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(value)) => Poll::Ready(Ok(value)),
            Poll::Ready(Err(reason)) => {
                let error = self.lost(reason);
                self.broken = Some(error.clone());
                Poll::Ready(Err(error))
            }
        }
    }

    fn poll_read_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<Value, String>> {
        loop {
            if self.frame_buffered() {
                match self.decoder.decode(&mut self.input) {
                    Ok(Some(value)) => return Poll::Ready(Ok(value)),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(protocol_reason(&e))),
                }
            }
            std::task::ready!(self.poll_fill(cx))?;
        }
    }

    /// Ready once the next reply is whole in the read buffer or the connection failed (then
    /// marked broken); reads nothing past what the socket has. Exists so a session blocked on
    /// a reply can wait for it and for something else at once without taking the reply.
    pub fn poll_frame_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.broken.is_none() && !self.frame_buffered() {
            if let Err(reason) = std::task::ready!(self.poll_fill(cx)) {
                self.broken = Some(self.lost(reason));
            }
        }
        Poll::Ready(())
    }

    /// Whether the read buffer holds a whole frame (or one the decoder is in the middle of, or
    /// one the scanner does not take apart: the decoder then decides).
    fn frame_buffered(&self) -> bool {
        self.decoder.is_mid_frame() || !matches!(crate::frame::frame_len(&self.input), Ok(None))
    }

    /// One read of what the socket has into the read buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        loop {
            if let Err(e) = std::task::ready!(self.stream.poll_read_ready(cx)) {
                return Poll::Ready(Err(e.to_string()));
            }
            self.input.reserve(READ_RESERVE);
            match self.stream.try_read_buf(&mut self.input) {
                Ok(0) => return Poll::Ready(Err("connection closed by the shard".into())),
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e.to_string())),
            }
        }
    }

    /// The bytes read from the engine and not passed on yet, for an in-place handover; `None`
    /// when they cannot travel as bytes (a frame partly decoded, requests not flushed, the
    /// connection broken).
    pub(crate) fn handover_bytes(&self) -> Option<Vec<u8>> {
        let clean = !self.decoder.is_mid_frame() && self.out.is_empty() && self.broken.is_none();
        clean.then(|| self.input.to_vec())
    }

    /// The socket, leaving this process's I/O driver, for an in-place handover.
    pub(crate) fn into_std(self) -> std::io::Result<std::net::TcpStream> {
        self.stream.into_std()
    }

    /// A connection taken over from another process (an in-place handover): `stream` is
    /// connected and authenticated already and speaks `protocol`; `buffered` are the bytes the
    /// other process read from it and had not passed on ([`ShardConn::handover_bytes`]).
    pub(crate) fn adopt(
        shard: u64,
        addr: SocketAddr,
        stream: std::net::TcpStream,
        protocol: Protocol,
        generation: u64,
        buffered: &[u8],
    ) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let stream = TcpStream::from_std(stream)?;
        stream.set_nodelay(true)?;
        Ok(ShardConn::over(
            shard, addr, stream, protocol, generation, buffered,
        ))
    }

    /// A connection over `stream`, whose first bytes read are `buffered`.
    fn over(
        shard: u64,
        addr: SocketAddr,
        stream: TcpStream,
        protocol: Protocol,
        generation: u64,
        buffered: &[u8],
    ) -> Self {
        let mut input = BytesMut::with_capacity(buffered.len().max(16 * 1024));
        input.extend_from_slice(buffered);
        ShardConn {
            shard,
            addr,
            stream,
            protocol,
            out: BytesMut::with_capacity(16 * 1024),
            input,
            decoder: Decoder::new(Limits::for_replies()),
            broken: None,
            generation,
            login: None,
        }
    }

    async fn read_reply(&mut self) -> Result<Value, String> {
        loop {
            match self.decoder.decode(&mut self.input) {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(e) => return Err(protocol_reason(&e)),
            }
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) => return Err("connection closed by the shard".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn lost(&self, reason: String) -> ShardError {
        ShardError::Lost {
            shard: self.shard,
            addr: self.addr,
            reason,
            position: None,
        }
    }
}

/// Takes the next complete reply off `input` as the engine encoded it: found by the scanner
/// when it can, else decoded (resuming a frame `decoder` is in the middle of) and re-encoded
/// byte-exact. `None` when more bytes are needed.
pub(crate) fn take_raw_reply(
    input: &mut BytesMut,
    decoder: &mut Decoder,
) -> Result<Option<Bytes>, String> {
    if !decoder.is_mid_frame() {
        match crate::frame::frame_len(input) {
            Ok(Some(len)) => return Ok(Some(input.split_to(len).freeze())),
            Ok(None) => return Ok(None),
            Err(_) => {}
        }
    }
    match decoder.decode(input) {
        Ok(Some(value)) => Ok(Some(value.to_bytes().freeze())),
        Ok(None) => Ok(None),
        Err(e) => Err(protocol_reason(&e)),
    }
}

fn protocol_reason(e: &ProtocolError) -> String {
    format!("bad reply: {e}")
}

/// The text of an error, status or bulk reply, for messages.
fn text(value: &Value) -> String {
    match value {
        Value::Error(t) | Value::SimpleString(t) | Value::BlobError(t) | Value::BulkString(t) => {
            String::from_utf8_lossy(t).into_owned()
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::net::TcpListener;

    use super::*;

    /// A subscriber connection over a loopback socket pair, and the engine's end.
    async fn pair() -> (ShardConn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = TcpStream::connect(addr).await.unwrap();
        let (engine, _) = listener.accept().await.unwrap();
        (
            ShardConn::over(7, addr, conn, Protocol::Resp2, 1, &[]),
            engine,
        )
    }

    fn message(payload: &str) -> Vec<u8> {
        Value::Array(vec![
            Value::bulk("message"),
            Value::bulk("ch"),
            Value::bulk(payload.to_owned()),
        ])
        .to_bytes()
        .to_vec()
    }

    #[tokio::test]
    async fn bytes_not_passed_on_travel_with_the_connection_and_decode_once() {
        let (mut conn, mut engine) = pair().await;
        let (first, second, third) = (message("a"), message("b"), message("c"));
        let mut sent = first.clone();
        sent.extend_from_slice(&second[..5]);
        engine.write_all(&sent).await.unwrap();
        let value = poll_fn(|cx| conn.poll_reply(cx)).await.unwrap();
        assert_eq!(value.to_bytes().to_vec(), first);

        // Whatever part of the second message was read waits whole in the buffer: nothing
        // is half decoded, so it can travel as bytes.
        let buffered = conn.handover_bytes().expect("nothing half decoded");
        assert!(second.starts_with(&buffered), "{buffered:?}");
        let socket = conn.into_std().unwrap();
        let mut adopted = ShardConn::adopt(
            7,
            engine.local_addr().unwrap(),
            socket,
            Protocol::Resp2,
            2,
            &buffered,
        )
        .unwrap();
        let mut rest = second[5..].to_vec();
        rest.extend_from_slice(&third);
        engine.write_all(&rest).await.unwrap();
        for expected in [second, third] {
            let value = poll_fn(|cx| adopted.poll_reply(cx)).await.unwrap();
            assert_eq!(value.to_bytes().to_vec(), expected);
        }
        assert_eq!(adopted.handover_bytes(), Some(Vec::new()));
    }

    #[tokio::test]
    async fn a_reply_is_ready_only_once_whole_and_is_not_taken() {
        let (mut conn, mut engine) = pair().await;
        let reply = Value::bulk("value").to_bytes().to_vec();
        engine.write_all(&reply[..3]).await.unwrap();
        let ready = tokio::time::timeout(
            Duration::from_millis(50),
            poll_fn(|cx| conn.poll_frame_ready(cx)),
        );
        assert!(ready.await.is_err(), "half a reply is not ready");
        engine.write_all(&reply[3..]).await.unwrap();
        poll_fn(|cx| conn.poll_frame_ready(cx)).await;
        assert_eq!(conn.handover_bytes(), Some(reply.clone()));
        assert_eq!(conn.reply_raw().await.unwrap().to_vec(), reply);
        drop(engine);
        poll_fn(|cx| conn.poll_frame_ready(cx)).await;
        assert!(conn.is_broken(), "a closed connection is ready, and broken");
    }
}
