//! Accounts: password hashes and each user's end-to-end keys (public key, sealed backup).

use crate::error::StoreError;

/// What a new account stores.
pub struct NewUser<'a> {
    /// The name.
    pub name: &'a str,
    /// The salted scrypt hash of the password.
    pub password_hash: &'a str,
    /// The RSA public key (PEM).
    pub public_key: &'a str,
    /// The private key sealed under the password (opaque).
    pub key_backup: &'a str,
}

/// A password hash and the key backup sealed under the same password.
pub struct Credentials {
    /// The salted scrypt hash of the password.
    pub password_hash: String,
    /// The private key sealed under the password (opaque).
    pub key_backup: String,
}

/// What a login checks and returns.
pub struct Account {
    /// The password hash and key backup.
    pub credentials: Credentials,
    /// The registered public key (PEM).
    pub public_key: String,
}

/// Creates an account; `StoreError::NameTaken` when the name exists.
pub fn create_user(client: &mut postgres::Client, user: &NewUser<'_>) -> Result<(), StoreError> {
    client.execute(
        "INSERT INTO users (name, password_hash, public_key, key_backup) \
         VALUES ($1, $2, $3, $4)",
        &[
            &user.name,
            &user.password_hash,
            &user.public_key,
            &user.key_backup,
        ],
    )?;
    Ok(())
}

/// The password hash, key backup and public key of `name`, or `None` for an unknown user.
pub fn account(client: &mut postgres::Client, name: &str) -> Result<Option<Account>, StoreError> {
    let row = client.query_opt(
        "SELECT password_hash, key_backup, public_key FROM users WHERE name = $1",
        &[&name],
    )?;
    Ok(row.map(|r| Account {
        credentials: Credentials {
            password_hash: r.get(0),
            key_backup: r.get(1),
        },
        public_key: r.get(2),
    }))
}

/// Replaces the password hash and the key backup together, but only if the stored hash
/// is still `old_hash` (a concurrent change wins, this one reports `NotFound`).
pub fn change_password(
    client: &mut postgres::Client,
    name: &str,
    old_hash: &str,
    new: &Credentials,
) -> Result<(), StoreError> {
    let n = client.execute(
        "UPDATE users SET password_hash = $3, key_backup = $4 \
         WHERE name = $1 AND password_hash = $2",
        &[&name, &old_hash, &new.password_hash, &new.key_backup],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// The public key (PEM) of `name`, or `None` for an unknown user.
pub fn public_key(client: &mut postgres::Client, name: &str) -> Result<Option<String>, StoreError> {
    let row = client.query_opt("SELECT public_key FROM users WHERE name = $1", &[&name])?;
    Ok(row.map(|r| r.get(0)))
}

/// Whether an account named `name` exists.
pub fn user_exists(client: &mut postgres::Client, name: &str) -> Result<bool, StoreError> {
    let row = client.query_opt("SELECT 1 FROM users WHERE name = $1", &[&name])?;
    Ok(row.is_some())
}
