//! The FastChat client library: finds a server through the balancer, speaks the
//! protocol, matches replies to requests, acknowledges and de-duplicates messages.
//! The terminal program, the tests and the load tester all use it.
#![deny(missing_docs)]

mod appender;
mod balancer;
mod connection;
mod error;
mod files;
mod handover;
mod history;
mod inbox;
mod keyring;
mod link;
mod payload;
mod transport;

pub use appender::flush_all as flush_history;
pub use balancer::{ask_balancer, balancer_status, Assignment};
pub use connection::{
    Client, ClientConfig, Event, EventHandler, Reply, ReplyHandle, SentFile, FILE_WINDOW,
};
pub use error::ClientError;
pub use fastchat_common::protocol::client::OkResult;
pub use fastchat_common::ErrorCode;
pub use files::{safe_name, CHUNK_BYTES};
pub use history::{Conversation, HistoryEntry};
