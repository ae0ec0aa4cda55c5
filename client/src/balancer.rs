//! Asking the balancer which server to use.

use crate::error::ClientError;
use fastchat_common::frame::{read_frame, write_frame, MAX_CLIENT_FRAME};
use fastchat_common::protocol::balancer::{BalancerReply, BalancerRequest, ServerStatus};
use fastchat_common::protocol::PROTOCOL_VERSION;
use fastchat_common::ticket::Ticket;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Time allowed for connecting and for each answer.
pub(crate) const NET_TIMEOUT: Duration = Duration::from_secs(10);

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

pub(crate) fn connect(addr: &str) -> Result<TcpStream, ClientError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| ClientError::disconnected(format!("bad address {addr}: {e}")))?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, NET_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ClientError::disconnected(format!(
        "cannot connect to {addr}: {}",
        last.map(|e| e.to_string())
            .unwrap_or_else(|| "no address".into())
    )))
}

fn exchange(
    stream: &mut TcpStream,
    request: &BalancerRequest,
) -> Result<BalancerReply, ClientError> {
    let body = serde_json::to_vec(request).expect("wire types serialize");
    write_frame(stream, &body)
        .and_then(|_| stream.flush())
        .map_err(ClientError::disconnected)?;
    let reply = read_frame(stream, MAX_CLIENT_FRAME)
        .map_err(ClientError::disconnected)?
        .ok_or_else(|| ClientError::disconnected("the balancer closed the connection"))?;
    let reply: BalancerReply = serde_json::from_slice(&reply)
        .map_err(|e| ClientError::disconnected(format!("unreadable balancer reply: {e}")))?;
    if let BalancerReply::Error { code, message } = reply {
        return Err(ClientError::new(code, message));
    }
    Ok(reply)
}

fn open(balancer: &str) -> Result<TcpStream, ClientError> {
    let mut stream = connect(balancer)?;
    let _ = stream.set_read_timeout(Some(NET_TIMEOUT));
    exchange(
        &mut stream,
        &BalancerRequest::Hello {
            version: PROTOCOL_VERSION,
        },
    )?;
    Ok(stream)
}

/// Asks the balancer at `balancer` (`HOST:PORT`) for a server.
pub fn ask_balancer(balancer: &str) -> Result<Assignment, ClientError> {
    let mut stream = open(balancer)?;
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
pub fn balancer_status(balancer: &str) -> Result<(Vec<ServerStatus>, String), ClientError> {
    let mut stream = open(balancer)?;
    match exchange(&mut stream, &BalancerRequest::Status)? {
        BalancerReply::Status { servers, strategy } => Ok((servers, strategy)),
        other => Err(ClientError::disconnected(format!(
            "unexpected balancer reply {other:?}"
        ))),
    }
}
