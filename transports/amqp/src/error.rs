//! Errors of the AMQP transport.

use std::time::Duration;

use bus_core::TransportError;

/// An error setting up or using the AMQP transport. Texts never contain the password.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The configuration is unusable.
    #[error("AMQP configuration: {0}")]
    Config(String),
    /// Could not connect, or the connection failed.
    #[error("AMQP connection to {url} failed: {reason}")]
    Connection {
        /// The URL, password redacted.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The broker refused credentials or the virtual host.
    #[error("the broker at {url} refused the login: {reason}; check the user, password and vhost")]
    Authentication {
        /// The URL, password redacted.
        url: String,
        /// What the broker said.
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

impl From<AmqpError> for TransportError {
    fn from(e: AmqpError) -> Self {
        match e {
            AmqpError::Timeout { operation, after } => TransportError::Timeout { operation, after },
            AmqpError::Config(_) => TransportError::Other(e.to_string()),
            AmqpError::Authentication { .. } => TransportError::Refused(e.to_string()),
            AmqpError::Connection { .. } => TransportError::Connection(e.to_string()),
        }
    }
}
