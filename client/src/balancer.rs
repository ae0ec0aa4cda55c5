//! Asking the balancer which server to use.

use crate::connection::ClientConfig;
use crate::error::ClientError;
use crate::transport::{connect, TlsConn};
use fastchat_common::frame::{read_frame, write_frame, MAX_CLIENT_FRAME};
use fastchat_common::protocol::balancer::{BalancerReply, BalancerRequest, ServerStatus};
use fastchat_common::protocol::PROTOCOL_VERSION;
use fastchat_common::ticket::Ticket;
use std::io::Write;

/// The balancer's choice.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// Server name.
    pub server: String,
    /// Its address.
    pub addr: String,
    /// The signed ticket to present in the hello.
    pub ticket: Ticket,
}

fn exchange(conn: &mut TlsConn, request: &BalancerRequest) -> Result<BalancerReply, ClientError> {
    let body = serde_json::to_vec(request).expect("wire types serialize");
    write_frame(&mut conn.writer, &body)
        .and_then(|_| conn.writer.flush())
        .map_err(ClientError::disconnected)?;
    let reply = read_frame(&mut conn.reader, MAX_CLIENT_FRAME)
        .map_err(ClientError::disconnected)?
        .ok_or_else(|| ClientError::disconnected("the balancer closed the connection"))?;
    let reply: BalancerReply = serde_json::from_slice(&reply)
        .map_err(|e| ClientError::disconnected(format!("unreadable balancer reply: {e}")))?;
    if let BalancerReply::Error { code, message } = reply {
        return Err(ClientError::new(code, message));
    }
    Ok(reply)
}

fn open(config: &ClientConfig) -> Result<TlsConn, ClientError> {
    let mut stream = connect(&config.trust, &config.balancer)?;
    exchange(
        &mut stream,
        &BalancerRequest::Hello {
            version: PROTOCOL_VERSION,
        },
    )?;
    Ok(stream)
}

/// Asks the configured balancer for a server.
pub fn ask_balancer(config: &ClientConfig) -> Result<Assignment, ClientError> {
    let mut stream = open(config)?;
    match exchange(&mut stream, &BalancerRequest::Assign)? {
        BalancerReply::Assigned {
            server,
            addr,
            ticket,
        } => Ok(Assignment {
            server,
            addr,
            ticket,
        }),
        other => Err(ClientError::disconnected(format!(
            "unexpected balancer reply {other:?}"
        ))),
    }
}

/// The balancer's list of live servers and its strategy.
pub fn balancer_status(config: &ClientConfig) -> Result<(Vec<ServerStatus>, String), ClientError> {
    let mut stream = open(config)?;
    match exchange(&mut stream, &BalancerRequest::Status)? {
        BalancerReply::Status { servers, strategy } => Ok((servers, strategy)),
        other => Err(ClientError::disconnected(format!(
            "unexpected balancer reply {other:?}"
        ))),
    }
}
