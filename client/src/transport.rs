//! TLS connections to the balancer and the servers, verified against the cluster CA.

use crate::error::ClientError;
use fastchat_common::tls::{self, TlsError, TlsReader, TlsWriter};
use fastchat_common::ErrorCode;
use openssl::ssl::SslConnector;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

/// Time allowed for connecting, the handshake, and each answer of a set-up exchange.
pub(crate) const NET_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write to a server may make no progress before it fails and the link ends
/// (then reconnection sends again what can be). A thread that sends a frame itself
/// (`link::LinkOut`) waits at most this long for a server that stopped reading.
pub(crate) const WRITE_STALL: Duration = Duration::from_secs(30);

/// Plaintext in from the server.
pub(crate) type TlsRead = TlsReader<SharedSocket, SharedSocket>;
/// Plaintext out to the server.
pub(crate) type TlsWrite = TlsWriter<SharedSocket>;

/// An open TLS connection: the socket (to set timeouts and shut it down) and its halves.
pub(crate) struct TlsConn {
    pub socket: SharedSocket,
    pub reader: TlsRead,
    pub writer: TlsWrite,
}

/// One socket, shared by a connection's reader, its writer and whoever may cut it:
/// `&TcpStream` reads and writes, so the halves need no descriptor of their own.
/// (`try_clone` gave each its own: four descriptors per connection, and 5,000 clients
/// in one process ran out of them.)
#[derive(Clone)]
pub(crate) struct SharedSocket(Arc<TcpStream>);

impl Read for SharedSocket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SharedSocket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}

impl Deref for SharedSocket {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

/// What a connection trusts: the cluster CA, loaded once.
#[derive(Clone)]
pub(crate) struct Trust {
    connector: SslConnector,
}

impl Trust {
    pub fn from_ca_pem(ca_pem: &[u8]) -> Result<Trust, ClientError> {
        let connector = tls::connector(ca_pem, None)
            .map_err(|e| ClientError::new(ErrorCode::LocalError, format!("cluster CA: {e}")))?;
        Ok(Trust { connector })
    }
}

fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn tcp_connect(addr: &str) -> Result<TcpStream, ClientError> {
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

/// Connects to `addr` (`HOST:PORT`) and runs the TLS handshake; the server's certificate
/// must be signed by the cluster CA and name `HOST`. Reads time out after
/// [`NET_TIMEOUT`] until the caller clears it; writes after [`WRITE_STALL`] without
/// progress, always.
pub(crate) fn connect(trust: &Trust, addr: &str) -> Result<TlsConn, ClientError> {
    let socket = SharedSocket(Arc::new(tcp_connect(addr)?));
    let _ = socket.set_read_timeout(Some(NET_TIMEOUT));
    let _ = socket.set_write_timeout(Some(WRITE_STALL));
    match tls::connect(
        &trust.connector,
        host_of(addr),
        socket.clone(),
        socket.clone(),
    ) {
        Ok((reader, writer)) => Ok(TlsConn {
            socket,
            reader,
            writer,
        }),
        Err(TlsError::Untrusted(why)) => Err(ClientError::new(
            ErrorCode::UntrustedServer,
            format!("{addr} is not a server of the cluster we trust: {why}"),
        )),
        Err(e) => Err(ClientError::disconnected(format!("{addr}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_is_the_address_without_its_port() {
        assert_eq!(host_of("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7001"), "::1");
        assert_eq!(host_of("localhost:1"), "localhost");
    }
}
