//! `ClientError`: every failure as a stable code plus a message, whether the server
//! refused or something failed locally.

use fastchat_common::ErrorCode;
use std::fmt;

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// Stable code (the server's, or a local one such as `disconnected`).
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl ClientError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError {
            code,
            message: message.into(),
        }
    }

    /// The cluster could not be reached or the connection broke.
    pub fn disconnected(message: impl fmt::Display) -> ClientError {
        ClientError::new(ErrorCode::Disconnected, message.to_string())
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ClientError {}
