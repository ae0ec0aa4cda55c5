//! `StoreError`: what can go wrong in a domain function, told apart by `SqlState`.

use postgres::error::SqlState;
use std::fmt;

/// A failed database operation.
#[derive(Debug)]
pub enum StoreError {
    /// A unique constraint refused the row (the name is taken).
    NameTaken,
    /// A referenced row does not exist (e.g. a message to an unknown user).
    NotFound,
    /// The database cannot be reached (connection refused or lost, pool timeout, a
    /// statement past its timeout or cancelled); the caller may retry later.
    Unavailable(String),
    /// Any other database error: a bug or a broken schema. Logged, never sent to clients.
    Db(postgres::Error),
}

impl StoreError {
    /// Whether retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NameTaken => f.write_str("name taken"),
            StoreError::NotFound => f.write_str("referenced row not found"),
            StoreError::Unavailable(e) => write!(f, "database unavailable: {e}"),
            // postgres::Error says only "db error"; the server's message is the useful part.
            StoreError::Db(e) => match e.as_db_error() {
                Some(db) => write!(f, "database error: {}: {}", db.code().code(), db.message()),
                None => write!(f, "database error: {e}"),
            },
        }
    }
}

impl std::error::Error for StoreError {}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match e.code() {
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => StoreError::NameTaken,
            Some(code) if *code == SqlState::FOREIGN_KEY_VIOLATION => StoreError::NotFound,
            Some(code)
                if code.code().starts_with("08")
                    || *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
                    // A statement past its timeout, or cancelled by an operator.
                    || *code == SqlState::QUERY_CANCELED =>
            {
                StoreError::Unavailable(e.to_string())
            }
            Some(_) => StoreError::Db(e),
            // No SQLSTATE: the failure happened below SQL (I/O, closed connection).
            None => StoreError::Unavailable(e.to_string()),
        }
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}
