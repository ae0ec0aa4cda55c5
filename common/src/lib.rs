//! FastChat's shared vocabulary: wire types, the frame codec, error codes and the crypto
//! helpers. This crate does no I/O of its own: sockets, threads and files belong to the
//! binaries.
#![deny(missing_docs)]

pub mod blob;
pub mod burst;
pub mod channel;
pub mod e2e;
pub mod error;
pub mod frame;
pub mod ids;
pub mod names;
pub mod password;
pub mod protocol;
pub mod ticket;
pub mod tls;

pub use blob::Blob;
pub use error::ErrorCode;
