//! `fastchat-balancer keygen` and `fastchat-balancer tls`: make the cluster's key and
//! certificate files, keeping any that exist.

use fastchat_common::ticket::generate_ticket_keys;
use fastchat_common::tls::pki::{self, PemPair};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `DIR/ticket.key` (mode 0600) and `DIR/ticket.pub` unless they exist.
pub fn run(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    fs::create_dir_all(dir)?;
    let key = dir.join("ticket.key");
    let public = dir.join("ticket.pub");
    if key.exists() && public.exists() {
        log::info!("ticket keys exist in {}", dir.display());
        return Ok(());
    }
    let (private_pem, public_pem) = generate_ticket_keys()?;
    write_private(&key, &private_pem)?;
    fs::write(&public, public_pem)?;
    log::info!("wrote {} and {}", key.display(), public.display());
    Ok(())
}

/// Makes the cluster CA (`DIR/ca.pem`, `DIR/ca.key`) unless it exists, then a
/// certificate and key (`DIR/NAME.pem`, `DIR/NAME.key`) for each name that has none.
pub fn tls(dir: &Path, names: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    fs::create_dir_all(dir)?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let ca = if ca_cert.exists() && ca_key.exists() {
        PemPair {
            cert: fs::read_to_string(&ca_cert)?,
            key: fs::read_to_string(&ca_key)?,
        }
    } else {
        let ca = pki::make_ca(&fastchat_common::ids::random_hex(4))?;
        write_private(&ca_key, ca.key.as_bytes())?;
        fs::write(&ca_cert, &ca.cert)?;
        log::info!("made the cluster CA {}", ca_cert.display());
        ca
    };
    for name in names {
        if !fastchat_common::names::is_valid_name(name) || name == "ca" {
            return Err(format!("bad certificate name {name:?}").into());
        }
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        if cert.exists() && key.exists() {
            continue;
        }
        let pair = pki::issue(&ca, name)?;
        write_private(&key, pair.key.as_bytes())?;
        fs::write(&cert, &pair.cert)?;
        log::info!("issued {}", cert.display());
    }
    Ok(())
}

/// Writes a secret file readable only by its owner.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
