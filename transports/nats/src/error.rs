//! Errors of the NATS transport.

use std::time::Duration;

use bus_core::TransportError;

/// An error setting up or using the NATS transport. Texts never contain a password or token.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The configuration is unusable.
    #[error("NATS configuration: {0}")]
    Config(String),
    /// Could not connect, or the connection failed.
    #[error("NATS connection to {url} failed: {reason}")]
    Connection {
        /// The URL, secrets redacted.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the credentials.
    #[error("the NATS server at {url} refused the login: {reason}; check the user and password or token")]
    Authentication {
        /// The URL, secrets redacted.
        url: String,
        /// What the server said.
        reason: String,
    },
    /// JetStream is not enabled on the server (or not for this account).
    #[error("JetStream is not available at {url}: {reason}; start nats-server with `-js`")]
    JetStreamUnavailable {
        /// The URL, secrets redacted.
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

impl From<NatsError> for TransportError {
    fn from(e: NatsError) -> Self {
        // The transport's own error is the source, and its text says it all: no context.
        match e {
            NatsError::Timeout { operation, after } => TransportError::timeout(operation, after),
            NatsError::Config(_) => TransportError::other("", e),
            NatsError::Authentication { .. } => TransportError::refused("", e),
            NatsError::Connection { .. } | NatsError::JetStreamUnavailable { .. } => {
                TransportError::connection("", e)
            }
        }
    }
}
