//! Why a client connection of the discovery service ended early.

use flotilla_resp::ProtocolError;

/// Why a discovery client connection ended before the client closed it.
///
/// Exists for logs: the listener keeps serving other clients whatever one connection does.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Reading from or writing to the client failed.
    #[error("discovery client connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The client sent bytes that are not RESP; it was told so and disconnected.
    #[error("discovery client sent malformed input: {0}")]
    Protocol(#[from] ProtocolError),
}
