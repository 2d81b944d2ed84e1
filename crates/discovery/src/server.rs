//! The listener: accepts discovery clients and answers each connection's commands, pipelined,
//! from the latest snapshot.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use flotilla_resp::{write_error, RequestDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::sentinel::View;
use crate::session::Session;
use crate::{Databases, DiscoveryError};

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Replies are sent once this many bytes are pending, even mid-pipeline, so a client that
/// pipelines many commands cannot make the write buffer grow without bound.
const FLUSH_AT: usize = 64 * 1024;

/// Most bytes of a request not yet decoded: every command the service answers is a few words
/// (Sentinel commands name a database), so 64 KB is generous; a client past it is answered
/// an error and closed.
const QUERY_BUFFER_LIMIT: usize = 64 * 1024;

/// Source of connection ids (reported by `HELLO` and `CLIENT ID`).
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Serves the discovery protocol on `listener` until `shutdown` completes.
///
/// Every command is answered from the latest value of `snapshot`, so a database created or
/// renamed is visible to the next command after the daemon publishes it. On shutdown the
/// listener stops accepting and open client connections are closed.
pub async fn serve(
    listener: TcpListener,
    snapshot: watch::Receiver<Databases>,
    shutdown: impl Future<Output = ()>,
) {
    let mut clients = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let snapshot = snapshot.clone();
                    clients.spawn(
                        async move {
                            if let Err(e) = serve_connection(stream, snapshot).await {
                                tracing::debug!(%peer, error = %e, "discovery client connection ended");
                            }
                        }
                        .in_current_span(),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "discovery accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Answers one client connection until the client closes it, sends `QUIT`, or sends malformed
/// input (answered with `-ERR Protocol error: ...` before closing).
pub async fn serve_connection(
    mut stream: TcpStream,
    snapshot: watch::Receiver<Databases>,
) -> Result<(), DiscoveryError> {
    let me = stream.local_addr()?;
    let mut session = Session::new(NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed));
    let mut decoder = bounded_decoder();
    let mut input = BytesMut::with_capacity(4096);
    let mut output = BytesMut::new();
    loop {
        let step = answer_pending(
            &mut session,
            &mut decoder,
            &mut input,
            &mut output,
            &snapshot,
            me,
        );
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        match step? {
            Step::Close => return Ok(()),
            Step::Flushed => continue,
            Step::NeedInput => {}
        }
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
    }
}

/// A request decoder with the bounds Redis sets on clients that have not authenticated (10
/// arguments, 16 KB per argument, checked at each header before its payload is read) and a
/// query buffer of [`QUERY_BUFFER_LIMIT`]: no client of the service, which answers every
/// command from a snapshot, needs more, and none can make the daemon buffer more.
fn bounded_decoder() -> RequestDecoder {
    let mut decoder = RequestDecoder::default();
    decoder.set_unauthenticated(true);
    decoder.set_query_buffer_limit(Some(QUERY_BUFFER_LIMIT));
    decoder
}

/// What [`answer_pending`] stopped for.
enum Step {
    /// Every complete request was answered; read more.
    NeedInput,
    /// The output buffer is full; send it, then go on answering.
    Flushed,
    /// The client asked to close (`QUIT`); send the output, then close.
    Close,
}

/// Answers the complete requests in `input` into `output`, until more input is needed, the
/// output should be sent, or the connection must close. Malformed input is answered with the
/// protocol error, then returned as the error.
fn answer_pending(
    session: &mut Session,
    decoder: &mut RequestDecoder,
    input: &mut BytesMut,
    output: &mut BytesMut,
    snapshot: &watch::Receiver<Databases>,
    me: SocketAddr,
) -> Result<Step, DiscoveryError> {
    while output.len() < FLUSH_AT {
        let request = match decoder.decode(input) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(Step::NeedInput),
            Err(e) => {
                write_error(output, &format!("ERR {e}"));
                return Err(e.into());
            }
        };
        let outcome = {
            let all = snapshot.borrow();
            let dbs = all.visible_to(session.password());
            session.handle(&request, &View { dbs: &dbs, me })
        };
        outcome.reply.encode_as(output, session.protocol());
        if outcome.close {
            return Ok(Step::Close);
        }
    }
    Ok(Step::Flushed)
}
