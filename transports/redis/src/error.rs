//! Errors of the Redis transport.

use std::time::Duration;

use bus_core::TransportError;

/// An error setting up or using the Redis transport. Texts never contain the password.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The configuration is unusable.
    #[error("Redis configuration: {0}")]
    Config(String),
    /// Could not connect, or the connection failed.
    #[error("Redis connection to {url} failed: {reason}")]
    Connection {
        /// The URL, password redacted.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the credentials.
    #[error("Redis at {url} refused the login: {reason}; check the user and password in the URL")]
    Authentication {
        /// The URL, password redacted.
        url: String,
        /// What the server said.
        reason: String,
    },
    /// An operation did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was attempted.
        operation: &'static str,
        /// The limit.
        after: Duration,
    },
}

impl From<RedisError> for TransportError {
    fn from(e: RedisError) -> Self {
        // The transport's own error is the source, and its text says it all: no context.
        match e {
            RedisError::Timeout { operation, after } => TransportError::timeout(operation, after),
            RedisError::Config(_) => TransportError::other("", e),
            RedisError::Authentication { .. } => TransportError::refused("", e),
            RedisError::Connection { .. } => TransportError::connection("", e),
        }
    }
}
