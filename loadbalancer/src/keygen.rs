//! `fastchat-balancer keygen`: makes the cluster's key files, keeping any that exist.

use fastchat_common::ticket::generate_ticket_keys;
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
