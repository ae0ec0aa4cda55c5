//! `RawConn`: a TLS connection speaking frames by hand, to send what a real client never
//! would (garbage, oversized frames, forged tickets) inside a proper TLS session.

use fastchat_common::frame::{read_frame, write_frame, MAX_PEER_FRAME};
use fastchat_common::tls::{self, TlsReader, TlsWriter};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// A hand-driven connection.
pub struct RawConn {
    reader: TlsReader<TcpStream, TcpStream>,
    writer: TlsWriter<TcpStream>,
}

impl RawConn {
    /// Connects to `addr` over TLS, trusting the CA in `ca`; reads time out after 10 s.
    pub fn connect(addr: &str, ca: &Path) -> RawConn {
        let ca = std::fs::read(ca).expect("cluster CA");
        RawConn::connect_with(addr, &ca, None)
    }

    /// Connects to a server's peer listener as the server `name`, with that name's
    /// certificate from `tls_dir` (as `make_pki` writes them): a hand-driven peer.
    pub fn connect_as_peer(addr: &str, tls_dir: &Path, name: &str) -> RawConn {
        let read = |file: &str| std::fs::read(tls_dir.join(file)).expect("certificate files");
        let ca = read("ca.pem");
        let identity = tls::TlsIdentity::from_pem(
            &read(&format!("{name}.pem")),
            &read(&format!("{name}.key")),
            &ca,
        )
        .expect("peer identity");
        RawConn::connect_with(addr, &ca, Some(&identity))
    }

    fn connect_with(addr: &str, ca: &[u8], identity: Option<&tls::TlsIdentity>) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        let connector = tls::connector(ca, identity).expect("TLS connector");
        let (reader, writer) = tls::connect(
            &connector,
            "127.0.0.1",
            stream.try_clone().expect("clone"),
            stream,
        )
        .unwrap_or_else(|e| panic!("TLS to {addr}: {e}"));
        RawConn { reader, writer }
    }

    /// Sends bytes as they are (inside TLS).
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.writer.write_all(bytes);
    }

    /// Sends one frame with this body.
    pub fn send_frame(&mut self, body: &[u8]) {
        let _ = write_frame(&mut self.writer, body);
    }

    /// Sends a JSON value as one frame.
    pub fn send_json(&mut self, value: &serde_json::Value) {
        self.send_frame(value.to_string().as_bytes());
    }

    /// The next frame as JSON; `None` when the connection closed (or broke). Panics if
    /// nothing comes within the read timeout.
    pub fn recv(&mut self) -> Option<serde_json::Value> {
        self.recv_frame()
            .map(|body| serde_json::from_slice(&body).expect("server sent JSON"))
    }

    /// The next frame's bytes as they came; `None` when the connection closed (or
    /// broke). Panics if nothing comes within the read timeout.
    pub fn recv_frame(&mut self) -> Option<Vec<u8>> {
        match read_frame(&mut self.reader, MAX_PEER_FRAME) {
            Ok(Some(body)) => Some(body),
            Ok(None) => None,
            Err(fastchat_common::frame::FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("no frame within the read timeout")
            }
            Err(_) => None,
        }
    }

    /// The next frame `wanted` accepts, skipping the others (pushed events, say).
    /// Panics if the connection closes or nothing comes within the read timeout.
    pub fn recv_until(&mut self, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let frame = self.recv().expect("the connection stays open");
            if wanted(&frame) {
                return frame;
            }
        }
    }

    /// Reads until the server closes the connection (bounded by the read timeout);
    /// returns the frames seen.
    pub fn recv_until_closed(&mut self) -> Vec<serde_json::Value> {
        let mut frames = Vec::new();
        while let Some(f) = self.recv() {
            frames.push(f);
            assert!(
                frames.len() < 100,
                "the server keeps talking instead of closing"
            );
        }
        frames
    }
}
