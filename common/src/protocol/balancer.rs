//! Client <-> balancer frames: a hello, then `assign` (or `status`) and its answer.

use crate::error::ErrorCode;
use crate::ticket::Ticket;
use serde::{Deserialize, Serialize};

/// A request to the balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BalancerRequest {
    /// First frame: the client's protocol version.
    Hello {
        /// [`crate::protocol::PROTOCOL_VERSION`].
        version: u32,
    },
    /// Pick a server for me.
    Assign,
    /// List the live servers (for scripts and tests).
    Status,
}

/// The balancer's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BalancerReply {
    /// Answer to `hello`.
    Hello {
        /// The balancer's protocol version.
        version: u32,
    },
    /// The chosen server and a ticket signed for it.
    Assigned {
        /// Server name, e.g. `server-2`.
        server: String,
        /// Its client address, `HOST:PORT`.
        addr: String,
        /// Proof for the server that the balancer sent this client.
        ticket: Ticket,
    },
    /// The live servers the balancer knows.
    Status {
        /// One entry per live server.
        servers: Vec<ServerStatus>,
        /// The strategy in use.
        strategy: String,
    },
    /// A refusal.
    Error {
        /// Stable code (`no_server`, `bad_version`, `bad_request`, ...).
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

/// A live server as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Server name.
    pub name: String,
    /// Client address.
    pub addr: String,
    /// Connected clients at the last heartbeat.
    pub clients: i32,
    /// Mesh links up at the last heartbeat.
    pub peers: i32,
    /// Load figure at the last heartbeat.
    pub load: f32,
}
