//! TLS for a connection served by two threads: OpenSSL runs over in-memory buffers, so
//! the reader thread can wait on the socket while the writer thread seals and sends.
//!
//! An `SslStream` cannot be shared by two threads, and a reader blocked in `SSL_read`
//! under a lock would starve the writer: a message pushed to an idle peer would wait
//! until that peer spoke. Here the SSL object sits over a [`MemoryIo`] behind a mutex
//! that is held for memory work only. [`TlsReader`] reads raw bytes from its own handle
//! on the socket without any lock, feeds them in and takes plaintext out; [`TlsWriter`]
//! seals under the lock and writes the raw bytes through the shared write half.
//!
//! Lock order: the engine, then the write half. Whoever drained sealed bytes from the
//! engine takes the write half before letting the engine go, so records reach the socket
//! in the order they were sealed. Nothing takes the engine while holding the write half.
//!
//! This module does no I/O of its own: it works on the `Read`/`Write` handles it is given.

use openssl::error::ErrorStack;
use openssl::ssl::{
    ErrorCode as SslErrorCode, Ssl, SslAcceptor, SslConnector, SslMethod, SslMode, SslStream,
    SslVerifyMode, SslVersion,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509VerifyResult, X509};
use parking_lot::Mutex;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

pub mod pki;

/// Why a TLS set-up or handshake failed.
#[derive(Debug)]
pub enum TlsError {
    /// A certificate or key could not be loaded, or a context could not be built.
    Config(String),
    /// The peer's certificate did not verify: not signed by the trusted CA, or not
    /// naming the host we asked for.
    Untrusted(String),
    /// The handshake failed otherwise: the peer refused us, spoke no TLS, or the
    /// connection ended or timed out.
    Handshake(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Config(e) => write!(f, "TLS configuration: {e}"),
            TlsError::Untrusted(e) => write!(f, "untrusted certificate: {e}"),
            TlsError::Handshake(e) => write!(f, "TLS handshake: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn config_err(e: ErrorStack) -> TlsError {
    TlsError::Config(e.to_string())
}

/// A process's place in the cluster's PKI: its certificate and key, and the cluster CA.
pub struct TlsIdentity {
    cert: X509,
    key: openssl::pkey::PKey<openssl::pkey::Private>,
    ca: X509,
}

impl TlsIdentity {
    /// Loads PEM texts: the certificate, its private key, and the cluster CA certificate.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<TlsIdentity, TlsError> {
        Ok(TlsIdentity {
            cert: X509::from_pem(cert).map_err(config_err)?,
            key: openssl::pkey::PKey::private_key_from_pem(key).map_err(config_err)?,
            ca: X509::from_pem(ca).map_err(config_err)?,
        })
    }
}

fn restrict_versions(builder: &mut openssl::ssl::SslContextBuilder) -> Result<(), TlsError> {
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_3))
        .map_err(config_err)?;
    // Session tickets would be written to us after the handshake for nothing: every
    // connection is long-lived and resumption is not used.
    builder.set_options(openssl::ssl::SslOptions::NO_TICKET);
    builder.set_num_tickets(0).map_err(config_err)?;
    Ok(())
}

/// Whether the engine frees its record buffers whenever they are empty
/// (`SSL_MODE_RELEASE_BUFFERS`, which openssl's builders turn on). For a server's many
/// mostly idle client connections, that is about 34 KiB less per connection. For a busy
/// connection it is a malloc and a free of 17 KiB for every read and every write (the
/// glibc allocator was a fifth of the `dm` benchmark's CPU), so clients and the mesh
/// keep their buffers.
fn release_buffers(builder: &mut openssl::ssl::SslContextBuilder, release: bool) {
    if release {
        builder.set_mode(SslMode::RELEASE_BUFFERS);
    } else {
        // The openssl crate has `set_mode` but no `clear_mode`; `SSL_CTX_clear_mode`
        // is a macro over this control call (`SSL_CTRL_CLEAR_MODE`, 78 in ssl.h).
        const SSL_CTRL_CLEAR_MODE: std::os::raw::c_int = 78;
        // SAFETY: the context pointer is valid for the builder's lifetime, and this
        // control only clears mode bits.
        unsafe {
            openssl_sys::SSL_CTX_ctrl(
                builder.as_ptr(),
                SSL_CTRL_CLEAR_MODE,
                SslMode::RELEASE_BUFFERS.bits(),
                std::ptr::null_mut(),
            );
        }
    }
}

fn trust_only(ca: &X509) -> Result<openssl::x509::store::X509Store, TlsError> {
    let mut store = X509StoreBuilder::new().map_err(config_err)?;
    store.add_cert(ca.clone()).map_err(config_err)?;
    Ok(store.build())
}

/// The server side of TLS. With `require_peer_cert`, a client must present a
/// certificate signed by the cluster CA (server-to-server links); without, any client
/// may connect (clients authenticate with passwords inside the tunnel).
pub fn acceptor(identity: &TlsIdentity, require_peer_cert: bool) -> Result<SslAcceptor, TlsError> {
    let mut builder =
        SslAcceptor::mozilla_modern_v5(SslMethod::tls_server()).map_err(config_err)?;
    restrict_versions(&mut builder)?;
    // Client connections are many and mostly idle; peer links are few and busy.
    release_buffers(&mut builder, !require_peer_cert);
    builder
        .set_certificate(&identity.cert)
        .map_err(config_err)?;
    builder.set_private_key(&identity.key).map_err(config_err)?;
    builder.check_private_key().map_err(config_err)?;
    if require_peer_cert {
        builder
            .set_verify_cert_store(trust_only(&identity.ca)?)
            .map_err(config_err)?;
        builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(builder.build())
}

/// The client side of TLS: trusts only the cluster CA given as PEM. With `identity`,
/// presents that certificate (server-to-server links).
pub fn connector(ca_pem: &[u8], identity: Option<&TlsIdentity>) -> Result<SslConnector, TlsError> {
    let ca = X509::from_pem(ca_pem).map_err(config_err)?;
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(config_err)?;
    restrict_versions(&mut builder)?;
    release_buffers(&mut builder, false);
    builder.set_cert_store(trust_only(&ca)?);
    builder.set_verify(SslVerifyMode::PEER);
    if let Some(id) = identity {
        builder.set_certificate(&id.cert).map_err(config_err)?;
        builder.set_private_key(&id.key).map_err(config_err)?;
        builder.check_private_key().map_err(config_err)?;
    }
    Ok(builder.build())
}

/// The SSL engine's view of the network: bytes received but not yet consumed, and sealed
/// bytes not yet sent.
#[derive(Default)]
pub struct MemoryIo {
    incoming: Vec<u8>,
    consumed: usize,
    outgoing: Vec<u8>,
}

impl Read for MemoryIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = &self.incoming[self.consumed..];
        if available.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consumed += n;
        if self.consumed == self.incoming.len() {
            self.incoming.clear();
            self.consumed = 0;
        }
        Ok(n)
    }
}

impl Write for MemoryIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Shared<W> {
    engine: Mutex<SslStream<MemoryIo>>,
    sink: Mutex<W>,
}

impl<W: Write> Shared<W> {
    /// Sends whatever the engine has sealed. Takes the write half before releasing the
    /// engine so that records keep their order on the wire.
    fn send_sealed(
        &self,
        mut engine: parking_lot::MutexGuard<'_, SslStream<MemoryIo>>,
    ) -> io::Result<()> {
        if engine.get_ref().outgoing.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut engine.get_mut().outgoing);
        let mut sink = self.sink.lock();
        drop(engine);
        sink.write_all(&bytes)?;
        sink.flush()
    }
}

/// Largest size of the buffer raw socket reads go into.
const RAW_READ: usize = 32 * 1024;
/// Its first size: it doubles (up to [`RAW_READ`]) each time a read fills it, so an
/// idle connection keeps 4 KiB and a busy one reads 32 KiB per syscall.
const RAW_READ_FIRST: usize = 4 * 1024;

/// The reading half of a TLS connection: `Read` gives plaintext.
pub struct TlsReader<R, W> {
    raw: R,
    scratch: Vec<u8>,
    shared: Arc<Shared<W>>,
}

/// The writing half of a TLS connection: `Write` seals and sends.
pub struct TlsWriter<W> {
    shared: Arc<Shared<W>>,
}

enum Side {
    Connect,
    Accept,
}

fn handshake<R: Read, W: Write>(
    ssl: Ssl,
    mut raw: R,
    sink: W,
    side: Side,
) -> Result<(TlsReader<R, W>, TlsWriter<W>), TlsError> {
    let mut stream = SslStream::new(ssl, MemoryIo::default()).map_err(config_err)?;
    let mut sink = sink;
    let mut scratch = vec![0u8; RAW_READ_FIRST];
    loop {
        let result = match side {
            Side::Connect => stream.connect(),
            Side::Accept => stream.accept(),
        };
        let pending = std::mem::take(&mut stream.get_mut().outgoing);
        if !pending.is_empty() {
            sink.write_all(&pending)
                .and_then(|_| sink.flush())
                .map_err(|e| TlsError::Handshake(e.to_string()))?;
        }
        match result {
            Ok(()) => break,
            Err(e) if e.code() == SslErrorCode::WANT_READ => {
                let n = raw
                    .read(&mut scratch)
                    .map_err(|e| TlsError::Handshake(e.to_string()))?;
                if n == 0 {
                    return Err(TlsError::Handshake("connection closed".into()));
                }
                stream.get_mut().incoming.extend_from_slice(&scratch[..n]);
            }
            Err(e) => {
                let verdict = stream.ssl().verify_result();
                if verdict != X509VerifyResult::OK {
                    return Err(TlsError::Untrusted(verdict.error_string().to_string()));
                }
                return Err(TlsError::Handshake(describe(&e)));
            }
        }
    }
    let shared = Arc::new(Shared {
        engine: Mutex::new(stream),
        sink: Mutex::new(sink),
    });
    Ok((
        TlsReader {
            raw,
            scratch,
            shared: shared.clone(),
        },
        TlsWriter { shared },
    ))
}

fn describe(e: &openssl::ssl::Error) -> String {
    match e.ssl_error() {
        Some(stack) => stack.to_string(),
        None => e.to_string(),
    }
}

/// Runs the client side of a handshake over `raw` (read) and `sink` (write), two handles
/// on one socket. `host` is the name or IP address the peer's certificate must carry.
/// Bound the wait with the socket's read timeout.
pub fn connect<R: Read, W: Write>(
    connector: &SslConnector,
    host: &str,
    raw: R,
    sink: W,
) -> Result<(TlsReader<R, W>, TlsWriter<W>), TlsError> {
    let ssl = connector
        .configure()
        .and_then(|c| c.into_ssl(host))
        .map_err(config_err)?;
    handshake(ssl, raw, sink, Side::Connect)
}

/// Runs the server side of a handshake; see [`connect`].
pub fn accept<R: Read, W: Write>(
    acceptor: &SslAcceptor,
    raw: R,
    sink: W,
) -> Result<(TlsReader<R, W>, TlsWriter<W>), TlsError> {
    let ssl = Ssl::new(acceptor.context()).map_err(config_err)?;
    handshake(ssl, raw, sink, Side::Accept)
}

impl<R, W> TlsReader<R, W> {
    /// The handle on the raw socket this half reads from.
    pub fn get_ref(&self) -> &R {
        &self.raw
    }

    /// The names in the peer's verified certificate: its DNS subject alternative names,
    /// then its common name. Empty when the peer presented none.
    pub fn peer_names(&self) -> Vec<String> {
        let engine = self.shared.engine.lock();
        let Some(cert) = engine.ssl().peer_certificate() else {
            return Vec::new();
        };
        pki::names_of(&cert)
    }
}

impl<R: Read, W: Write> Read for TlsReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let mut engine = self.shared.engine.lock();
            match engine.ssl_read(buf) {
                Ok(n) => {
                    self.shared.send_sealed(engine)?;
                    return Ok(n);
                }
                Err(e) if e.code() == SslErrorCode::ZERO_RETURN => return Ok(0),
                Err(e) if e.code() == SslErrorCode::WANT_READ => {
                    self.shared.send_sealed(engine)?;
                }
                Err(e) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, describe(&e)));
                }
            }
            let n = self.raw.read(&mut self.scratch)?;
            if n == 0 {
                return Ok(0);
            }
            self.shared
                .engine
                .lock()
                .get_mut()
                .incoming
                .extend_from_slice(&self.scratch[..n]);
            if n == self.scratch.len() && n < RAW_READ {
                self.scratch.resize(n * 2, 0);
            }
        }
    }
}

/// Seals all of `buf` into the engine's outgoing records.
fn seal(engine: &mut SslStream<MemoryIo>, buf: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < buf.len() {
        written += engine
            .ssl_write(&buf[written..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, describe(&e)))?;
    }
    Ok(())
}

impl<W: Write> TlsWriter<W> {
    /// Seals `buf` and hands the records to `send` with the write half held, unless
    /// another thread holds it (it is writing to the socket): then nothing is sealed and
    /// the answer is `None`. So a caller that must not wait on a peer (a server thread
    /// routing a message) waits at most for the engine's memory work, never for another
    /// thread's write, and `send` decides how to write.
    pub fn try_write_with<T>(
        &mut self,
        buf: &[u8],
        send: impl FnOnce(&mut W, &[u8]) -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        let mut engine = self.shared.engine.lock();
        let mut sink = self.shared.sink.try_lock()?;
        if let Err(e) = seal(&mut engine, buf) {
            return Some(Err(e));
        }
        let bytes = std::mem::take(&mut engine.get_mut().outgoing);
        drop(engine);
        Some(send(&mut sink, &bytes))
    }
}

impl<W: Write> Write for TlsWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut engine = self.shared.engine.lock();
        seal(&mut engine, buf)?;
        self.shared.send_sealed(engine)?;
        Ok(buf.len())
    }

    /// Flushes the write half (a socket has nothing to flush; a sink that keeps bytes
    /// back, like the server's, writes them).
    fn flush(&mut self) -> io::Result<()> {
        self.shared.sink.lock().flush()
    }
}
