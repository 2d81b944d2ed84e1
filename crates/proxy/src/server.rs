//! The endpoint's accept loop: one task per client connection, each with its own view of the
//! topology, until shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::session::Session;
use crate::topology::Topology;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Client connection ids (CLIENT ID), unique within the process.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one database endpoint on `listener` until `shutdown` completes.
///
/// Each accepted client gets its own task; it reads the current [`Topology`] from `topology`
/// before every batch of commands, so a new primary address published there is used by the
/// next command without dropping client connections. When `shutdown` completes the listener
/// stops accepting and the client connections still open are closed.
pub async fn serve(
    listener: TcpListener,
    topology: watch::Receiver<Topology>,
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
                    let id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
                    let session = Session::new(stream, id, topology.clone());
                    clients.spawn(async move {
                        if let Err(e) = session.run().await {
                            tracing::debug!(client = id, %peer, error = %e, "client connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    clients.shutdown().await;
}
