//! Accounts.

use crate::error::StoreError;

/// Creates an account; `StoreError::NameTaken` when the name exists.
pub fn create_user(
    client: &mut postgres::Client,
    name: &str,
    password_hash: &str,
) -> Result<(), StoreError> {
    client.execute(
        "INSERT INTO users (name, password_hash) VALUES ($1, $2)",
        &[&name, &password_hash],
    )?;
    Ok(())
}

/// The stored password hash of `name`, or `None` for an unknown user.
pub fn password_hash(
    client: &mut postgres::Client,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let row = client.query_opt("SELECT password_hash FROM users WHERE name = $1", &[&name])?;
    Ok(row.map(|r| r.get(0)))
}

/// Whether an account named `name` exists.
pub fn user_exists(client: &mut postgres::Client, name: &str) -> Result<bool, StoreError> {
    let row = client.query_opt("SELECT 1 FROM users WHERE name = $1", &[&name])?;
    Ok(row.is_some())
}
