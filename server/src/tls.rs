//! This server's TLS contexts, loaded once from `--tls-dir`: one for clients, one for
//! peers (mutual TLS: a peer must show a cluster certificate), and one to dial peers.

use crate::conn::Sink;
use fastchat_common::tls::{self, TlsIdentity, TlsReader, TlsWriter};
use openssl::ssl::{SslAcceptor, SslConnector};
use std::net::TcpStream;
use std::path::Path;

/// Plaintext in from a TLS socket.
pub type TlsRead = TlsReader<TcpStream, Sink>;
/// Plaintext out to a TLS socket.
pub type TlsWrite = TlsWriter<Sink>;

/// The contexts every connection of this server is made with.
pub struct ServerTls {
    clients: SslAcceptor,
    peers: SslAcceptor,
    dial: SslConnector,
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, String> {
    let path = dir.join(file);
    std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl ServerTls {
    /// Loads `DIR/NAME.pem`, `DIR/NAME.key` and `DIR/ca.pem`.
    pub fn load(dir: &Path, name: &str) -> Result<ServerTls, String> {
        let ca = read(dir, "ca.pem")?;
        let identity = TlsIdentity::from_pem(
            &read(dir, &format!("{name}.pem"))?,
            &read(dir, &format!("{name}.key"))?,
            &ca,
        )
        .map_err(|e| e.to_string())?;
        Ok(ServerTls {
            clients: tls::acceptor(&identity, false).map_err(|e| e.to_string())?,
            peers: tls::acceptor(&identity, true).map_err(|e| e.to_string())?,
            dial: tls::connector(&ca, Some(&identity)).map_err(|e| e.to_string())?,
        })
    }

    /// The server side of a client's handshake (bounded by the socket's read timeout).
    pub fn accept_client(&self, stream: &TcpStream) -> Result<(TlsRead, TlsWrite), String> {
        let (r, w) = halves(stream)?;
        tls::accept(&self.clients, r, w).map_err(|e| e.to_string())
    }

    /// The server side of a peer's handshake: the peer must show a cluster certificate.
    pub fn accept_peer(&self, stream: &TcpStream) -> Result<(TlsRead, TlsWrite), String> {
        let (r, w) = halves(stream)?;
        tls::accept(&self.peers, r, w).map_err(|e| e.to_string())
    }

    /// Dials into `peer`'s handshake; its certificate must name `peer`.
    pub fn connect_peer(
        &self,
        stream: &TcpStream,
        peer: &str,
    ) -> Result<(TlsRead, TlsWrite), String> {
        let (r, w) = halves(stream)?;
        tls::connect(&self.dial, peer, r, w).map_err(|e| e.to_string())
    }
}

fn halves(stream: &TcpStream) -> Result<(TcpStream, Sink), String> {
    let r = stream.try_clone().map_err(|e| e.to_string())?;
    let w = stream.try_clone().map_err(|e| e.to_string())?;
    Ok((r, Sink::new(w)))
}
