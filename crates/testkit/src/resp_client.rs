//! A plain RESP client over one TCP connection that never reconnects: tests use it to see
//! that a client keeps the same connection (local port, `CLIENT ID`) across an in-place
//! upgrade, and that a subscription or an open MULTI lives on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use flotilla_resp::{Decoder, Limits, Value};

/// One client connection.
pub struct RespClient {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl RespClient {
    /// Connects to `addr`; replies are awaited at most `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<RespClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RespClient {
            stream,
            decoder: Decoder::new(Limits::default()),
            buf: BytesMut::with_capacity(4096),
        })
    }

    /// This end's port: the same number before and after means the same connection.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().map_or(0, |a| a.port())
    }

    /// Sends one command without waiting for its reply.
    pub fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out)
    }

    /// The next value the server sends (a reply or a pushed message).
    pub fn read(&mut self) -> std::io::Result<Value> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one command and returns its reply.
    pub fn call(&mut self, args: &[&str]) -> std::io::Result<Value> {
        self.send(args)?;
        self.read()
    }

    /// The reply's integer (panics with the reply otherwise).
    pub fn integer(&mut self, args: &[&str]) -> i64 {
        match self.call(args) {
            Ok(Value::Integer(n)) => n,
            other => panic!("{args:?} answered {other:?}, not an integer"),
        }
    }
}
