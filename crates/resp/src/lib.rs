//! RESP2 and RESP3 for Flotilla: the wire format spoken between Redis clients, the proxy and the
//! engine shards.
//!
//! This crate owns the protocol only, no I/O: a [`Value`] type for every RESP2/RESP3 type, an
//! incremental [`Decoder`] for replies, a [`RequestDecoder`] for client requests (arrays of bulk
//! strings and inline commands) producing a [`Request`], and encoders for both directions.
//!
//! Both decoders consume bytes from a caller-owned `BytesMut` as soon as a piece of a frame is
//! complete and keep a small resumable state, so feeding a frame one byte at a time costs the
//! same as feeding it whole (no re-scanning). Payloads are handed out as `Bytes` slices of the
//! read buffer (no copy). Hostile input meets [`Limits`]: malformed or oversized frames are a
//! [`ProtocolError`], never a panic, and nothing is allocated in proportion to a length that the
//! peer merely claims.

mod decode;
mod encode;
mod error;
mod limits;
mod line;
mod request;
pub mod slot;
mod value;

pub use decode::Decoder;
pub use encode::{
    write_array_header, write_bulk, write_error, write_integer, write_map_header, write_null,
    write_null_array, write_ok, write_simple,
};
pub use error::ProtocolError;
pub use limits::Limits;
pub use request::{
    CommandName, Request, RequestDecoder, UNAUTHENTICATED_MAX_ARGS, UNAUTHENTICATED_MAX_BULK,
};
pub use value::{Protocol, Value};
