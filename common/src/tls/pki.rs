//! The cluster's small PKI: a CA made on first start, and one certificate per process
//! (the balancer and each server), all as standard PEM that the `openssl` tool reads.
//!
//! Keys are ECDSA P-256. A process certificate names the process (`server-1`) and
//! `localhost` as DNS names and 127.0.0.1 as an IP address, and is good both as a TLS
//! server and as a TLS client, since servers dial each other with mutual TLS.

use super::TlsError;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509};

/// How long certificates are valid, in days.
const VALID_DAYS: u32 = 3650;

/// A certificate and its private key, as PEM text.
pub struct PemPair {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert: String,
    /// The PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
    pub key: String,
}

fn err(e: openssl::error::ErrorStack) -> TlsError {
    TlsError::Config(e.to_string())
}

fn new_key() -> Result<PKey<Private>, TlsError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(err)?;
    PKey::from_ec_key(EcKey::generate(&group).map_err(err)?).map_err(err)
}

fn serial() -> Result<Asn1Integer, TlsError> {
    let mut bn = BigNum::new().map_err(err)?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false).map_err(err)?;
    bn.to_asn1_integer().map_err(err)
}

fn subject(common_name: &str) -> Result<X509Name, TlsError> {
    let mut name = X509NameBuilder::new().map_err(err)?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "FastChat cluster")
        .map_err(err)?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .map_err(err)?;
    Ok(name.build())
}

fn builder_for(common_name: &str, key: &PKey<Private>) -> Result<X509Builder, TlsError> {
    let name = subject(common_name)?;
    let mut b = X509Builder::new().map_err(err)?;
    b.set_version(2).map_err(err)?;
    let serial = serial()?;
    b.set_serial_number(&serial).map_err(err)?;
    b.set_subject_name(&name).map_err(err)?;
    b.set_pubkey(key).map_err(err)?;
    let not_before = Asn1Time::days_from_now(0).map_err(err)?;
    let not_after = Asn1Time::days_from_now(VALID_DAYS).map_err(err)?;
    b.set_not_before(&not_before).map_err(err)?;
    b.set_not_after(&not_after).map_err(err)?;
    Ok(b)
}

fn to_pem(cert: &X509, key: &PKey<Private>) -> Result<PemPair, TlsError> {
    let cert = String::from_utf8(cert.to_pem().map_err(err)?).expect("PEM is ASCII");
    let key =
        String::from_utf8(key.private_key_to_pem_pkcs8().map_err(err)?).expect("PEM is ASCII");
    Ok(PemPair { cert, key })
}

/// Makes a self-signed cluster CA.
pub fn make_ca(cluster: &str) -> Result<PemPair, TlsError> {
    let key = new_key()?;
    let common_name = format!("FastChat CA {cluster}");
    let mut b = builder_for(&common_name, &key)?;
    let issuer = subject(&common_name)?;
    b.set_issuer_name(&issuer).map_err(err)?;
    b.append_extension(
        BasicConstraints::new()
            .critical()
            .ca()
            .build()
            .map_err(err)?,
    )
    .map_err(err)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .map_err(err)?,
    )
    .map_err(err)?;
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(None, None))
        .map_err(err)?;
    b.append_extension(ski).map_err(err)?;
    b.sign(&key, MessageDigest::sha256()).map_err(err)?;
    to_pem(&b.build(), &key)
}

/// Issues a certificate for the process `name`, signed by the CA given as PEM.
pub fn issue(ca: &PemPair, name: &str) -> Result<PemPair, TlsError> {
    let ca_cert = X509::from_pem(ca.cert.as_bytes()).map_err(err)?;
    let ca_key = PKey::private_key_from_pem(ca.key.as_bytes()).map_err(err)?;
    let key = new_key()?;
    let mut b = builder_for(name, &key)?;
    b.set_issuer_name(ca_cert.subject_name()).map_err(err)?;
    b.append_extension(BasicConstraints::new().critical().build().map_err(err)?)
        .map_err(err)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_agreement()
            .build()
            .map_err(err)?,
    )
    .map_err(err)?;
    b.append_extension(
        ExtendedKeyUsage::new()
            .server_auth()
            .client_auth()
            .build()
            .map_err(err)?,
    )
    .map_err(err)?;
    let san = SubjectAlternativeName::new()
        .dns(name)
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&b.x509v3_context(Some(&ca_cert), None))
        .map_err(err)?;
    b.append_extension(san).map_err(err)?;
    b.sign(&ca_key, MessageDigest::sha256()).map_err(err)?;
    to_pem(&b.build(), &key)
}

/// The DNS subject alternative names of a certificate, then its common name.
pub fn names_of(cert: &X509) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for entry in cert.subject_name().entries_by_nid(Nid::COMMONNAME) {
        if let Ok(cn) = std::str::from_utf8(entry.data().as_slice()) {
            names.push(cn.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{accept, acceptor, connect, connector, TlsIdentity};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn identity(ca: &PemPair, pair: &PemPair) -> TlsIdentity {
        TlsIdentity::from_pem(
            pair.cert.as_bytes(),
            pair.key.as_bytes(),
            ca.cert.as_bytes(),
        )
        .unwrap()
    }

    /// Whether a context frees its record buffers when they are empty.
    fn releases_buffers(ctx: &openssl::ssl::SslContextRef) -> bool {
        use foreign_types::ForeignTypeRef;
        const SSL_CTRL_MODE: std::os::raw::c_int = 33;
        // SAFETY: a valid context; SSL_CTRL_MODE with 0 only reads the mode bits.
        let mode = unsafe {
            openssl_sys::SSL_CTX_ctrl(ctx.as_ptr(), SSL_CTRL_MODE, 0, std::ptr::null_mut())
        };
        mode & openssl::ssl::SslMode::RELEASE_BUFFERS.bits() != 0
    }

    #[test]
    fn only_the_servers_client_connections_give_their_buffers_back() {
        let ca = make_ca("test").unwrap();
        let id = identity(&ca, &issue(&ca, "server-1").unwrap());
        assert!(releases_buffers(acceptor(&id, false).unwrap().context()));
        assert!(!releases_buffers(acceptor(&id, true).unwrap().context()));
        let ca_pem = ca.cert.as_bytes();
        assert!(!releases_buffers(
            connector(ca_pem, None).unwrap().context()
        ));
        assert!(!releases_buffers(
            connector(ca_pem, Some(&id)).unwrap().context()
        ));
    }

    /// Both halves over a real loopback socket: the server pushes to an idle client
    /// while the client's reader is blocked, and mutual TLS reports the peer's name.
    #[test]
    fn split_halves_push_to_an_idle_reader_and_verify_peers() {
        let ca = make_ca("test").unwrap();
        let server_pair = issue(&ca, "server-1").unwrap();
        let client_pair = issue(&ca, "server-2").unwrap();
        let server_id = identity(&ca, &server_pair);
        let client_id = identity(&ca, &client_pair);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acc = acceptor(&server_id, true).unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let (reader, mut writer) = accept(&acc, sock.try_clone().unwrap(), sock).unwrap();
            assert!(reader.peer_names().contains(&"server-2".to_string()));
            // The client's reader is already waiting: push without any request.
            std::thread::sleep(Duration::from_millis(200));
            writer.write_all(b"pushed").unwrap();
            let mut reader = reader;
            let mut got = [0u8; 4];
            reader.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"pong");
        });
        let conn = connector(ca.cert.as_bytes(), Some(&client_id)).unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut reader, mut writer) =
            connect(&conn, "server-1", sock.try_clone().unwrap(), sock).unwrap();
        let mut got = [0u8; 6];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pushed");
        writer.write_all(b"pong").unwrap();
        server.join().unwrap();
    }

    /// `try_write_with` while another thread writes to the socket seals nothing: the
    /// peer gets the next record as if that call had not been made.
    #[test]
    fn try_write_with_seals_nothing_while_the_socket_is_being_written() {
        let ca = make_ca("test").unwrap();
        let server_id = identity(&ca, &issue(&ca, "server-1").unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acc = acceptor(&server_id, false).unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let (_reader, mut writer) = accept(&acc, sock.try_clone().unwrap(), sock).unwrap();
            // Another thread holds the socket's write half for a while.
            let shared = writer.shared.clone();
            let (held, holding) = std::sync::mpsc::channel();
            let other = std::thread::spawn(move || {
                let _writing = shared.sink.lock();
                held.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            });
            holding.recv().unwrap();
            let send = |sink: &mut TcpStream, bytes: &[u8]| sink.write_all(bytes);
            assert!(writer.try_write_with(b"skipped", send).is_none());
            other.join().unwrap();
            writer.try_write_with(b"after", send).unwrap().unwrap();
        });
        let conn = connector(ca.cert.as_bytes(), None).unwrap();
        let sock = dial(addr);
        let (mut reader, _writer) =
            connect(&conn, "server-1", sock.try_clone().unwrap(), sock).unwrap();
        let mut got = [0u8; 5];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"after");
        server.join().unwrap();
    }

    /// A server that accepts one connection; its thread returns whether the
    /// handshake was refused.
    fn one_handshake(
        acc: openssl::ssl::SslAcceptor,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            accept(&acc, sock.try_clone().unwrap(), sock).is_err()
        });
        (addr, server)
    }

    /// A socket to `addr` whose reads give up after 10 s.
    fn dial(addr: std::net::SocketAddr) -> TcpStream {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock
    }

    #[test]
    fn a_client_refuses_a_server_outside_the_cluster_ca() {
        let ca = make_ca("ours").unwrap();
        let other_ca = make_ca("theirs").unwrap();
        let rogue = issue(&other_ca, "server-1").unwrap();
        let (addr, server) = one_handshake(acceptor(&identity(&other_ca, &rogue), false).unwrap());
        let conn = connector(ca.cert.as_bytes(), None).unwrap();
        let sock = dial(addr);
        let result = connect(&conn, "127.0.0.1", sock.try_clone().unwrap(), sock);
        assert!(matches!(result, Err(TlsError::Untrusted(_))));
        assert!(server.join().unwrap());
    }

    #[test]
    fn a_peer_without_a_cluster_certificate_is_refused() {
        let ca = make_ca("ours").unwrap();
        let server_pair = issue(&ca, "server-1").unwrap();
        let (addr, server) = one_handshake(acceptor(&identity(&ca, &server_pair), true).unwrap());
        // Trusts the CA, but presents no certificate of its own.
        let conn = connector(ca.cert.as_bytes(), None).unwrap();
        let sock = dial(addr);
        if let Ok((mut reader, _w)) = connect(&conn, "server-1", sock.try_clone().unwrap(), sock) {
            // TLS 1.3 clients finish before the server checks; the refusal shows on read.
            let mut b = [0u8; 1];
            assert!(!matches!(reader.read(&mut b), Ok(1)));
        }
        assert!(server.join().unwrap());
    }
}
