//! Balancer tickets: the balancer signs (Ed25519) which server a client was sent to, so a
//! server can refuse clients that did not come through the balancer.

use crate::protocol::{now_millis, UnixMillis};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use openssl::pkey::{PKey, Private, Public};
use openssl::sign::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How long a ticket stays valid after the balancer signs it.
pub const TICKET_LIFETIME_MS: i64 = 60_000;

/// A signed statement "the balancer sent this client to `server` until `expires`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The server's name.
    pub server: String,
    /// Expiry time.
    pub expires: UnixMillis,
    /// Random hex, so that no two tickets are alike.
    pub nonce: String,
    /// Base64 Ed25519 signature over [`Ticket::signed_bytes`].
    pub sig: String,
}

impl Ticket {
    fn signed_bytes(server: &str, expires: UnixMillis, nonce: &str) -> Vec<u8> {
        format!("fastchat-ticket/1\n{server}\n{expires}\n{nonce}").into_bytes()
    }
}

/// Why a ticket or key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketError {
    /// The signature does not verify under the balancer's key.
    BadSignature,
    /// The ticket's time is past.
    Expired,
    /// The ticket names another server.
    WrongServer,
    /// A key could not be loaded or used (the text says why).
    Key(String),
}

impl fmt::Display for TicketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TicketError::BadSignature => f.write_str("ticket signature does not verify"),
            TicketError::Expired => f.write_str("ticket has expired"),
            TicketError::WrongServer => f.write_str("ticket is for another server"),
            TicketError::Key(e) => write!(f, "ticket key: {e}"),
        }
    }
}

impl std::error::Error for TicketError {}

fn key_err(e: openssl::error::ErrorStack) -> TicketError {
    TicketError::Key(e.to_string())
}

/// Makes a new Ed25519 key pair; returns (private PEM in PKCS#8, public PEM in SPKI).
pub fn generate_ticket_keys() -> Result<(Vec<u8>, Vec<u8>), TicketError> {
    let key = PKey::generate_ed25519().map_err(key_err)?;
    Ok((
        key.private_key_to_pem_pkcs8().map_err(key_err)?,
        key.public_key_to_pem().map_err(key_err)?,
    ))
}

/// The balancer's side: signs tickets.
pub struct TicketSigner {
    key: PKey<Private>,
}

impl TicketSigner {
    /// Loads the private key from PEM.
    pub fn from_pem(pem: &[u8]) -> Result<TicketSigner, TicketError> {
        Ok(TicketSigner {
            key: PKey::private_key_from_pem(pem).map_err(key_err)?,
        })
    }

    /// Signs a ticket for `server`, valid for [`TICKET_LIFETIME_MS`].
    pub fn sign(&self, server: &str) -> Result<Ticket, TicketError> {
        self.sign_with_expiry(server, now_millis() + TICKET_LIFETIME_MS)
    }

    /// Signs a ticket with an explicit expiry (tests use it to make expired tickets).
    pub fn sign_with_expiry(
        &self,
        server: &str,
        expires: UnixMillis,
    ) -> Result<Ticket, TicketError> {
        let nonce = crate::ids::random_hex(8);
        let mut signer = Signer::new_without_digest(&self.key).map_err(key_err)?;
        let sig = signer
            .sign_oneshot_to_vec(&Ticket::signed_bytes(server, expires, &nonce))
            .map_err(key_err)?;
        Ok(Ticket {
            server: server.to_string(),
            expires,
            nonce,
            sig: STANDARD.encode(sig),
        })
    }
}

/// A server's side: checks tickets against the balancer's public key.
pub struct TicketVerifier {
    key: PKey<Public>,
}

impl TicketVerifier {
    /// Loads the public key from PEM.
    pub fn from_pem(pem: &[u8]) -> Result<TicketVerifier, TicketError> {
        Ok(TicketVerifier {
            key: PKey::public_key_from_pem(pem).map_err(key_err)?,
        })
    }

    /// Accepts the ticket only if it verifies, is unexpired and names `server`.
    pub fn verify(&self, ticket: &Ticket, server: &str) -> Result<(), TicketError> {
        let sig = STANDARD
            .decode(ticket.sig.as_bytes())
            .map_err(|_| TicketError::BadSignature)?;
        let mut verifier = Verifier::new_without_digest(&self.key).map_err(key_err)?;
        let bytes = Ticket::signed_bytes(&ticket.server, ticket.expires, &ticket.nonce);
        if !verifier.verify_oneshot(&sig, &bytes).unwrap_or(false) {
            return Err(TicketError::BadSignature);
        }
        if ticket.expires <= now_millis() {
            return Err(TicketError::Expired);
        }
        if ticket.server != server {
            return Err(TicketError::WrongServer);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let (private, public) = generate_ticket_keys().unwrap();
        let signer = TicketSigner::from_pem(&private).unwrap();
        let verifier = TicketVerifier::from_pem(&public).unwrap();
        let ticket = signer.sign("server-1").unwrap();
        assert_eq!(verifier.verify(&ticket, "server-1"), Ok(()));
        assert_eq!(
            verifier.verify(&ticket, "server-2"),
            Err(TicketError::WrongServer)
        );

        let mut forged = ticket.clone();
        forged.server = "server-2".into();
        assert_eq!(
            verifier.verify(&forged, "server-2"),
            Err(TicketError::BadSignature)
        );

        let expired = signer
            .sign_with_expiry("server-1", now_millis() - 1)
            .unwrap();
        assert_eq!(
            verifier.verify(&expired, "server-1"),
            Err(TicketError::Expired)
        );

        let (other_private, _) = generate_ticket_keys().unwrap();
        let other = TicketSigner::from_pem(&other_private).unwrap();
        let foreign = other.sign("server-1").unwrap();
        assert_eq!(
            verifier.verify(&foreign, "server-1"),
            Err(TicketError::BadSignature)
        );
    }
}
