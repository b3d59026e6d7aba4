//! Errors of the NATS transport.

use std::time::Duration;

use bus_core::probe::{wrong_protocol, Protocol};
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
    /// The server at `addr` answers, but not as a NATS server: it speaks `found` (an AMQP
    /// broker, Redis, ...). The text names what answered and the likely mix-up of ports.
    #[error("{}", wrong_protocol(addr, Protocol::Nats, *found))]
    WrongProtocol {
        /// `host:port` of the server.
        addr: String,
        /// What it speaks, when recognized.
        found: Option<Protocol>,
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
            // There is no client error worth keeping: the client only waited, or could not
            // read a greeting that was never meant for it.
            NatsError::WrongProtocol { .. } => TransportError::Connection {
                context: e.to_string(),
                source: None,
            },
            NatsError::Connection { .. } | NatsError::JetStreamUnavailable { .. } => {
                TransportError::connection("", e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_protocol_is_a_connection_error_naming_what_answered() {
        let e = NatsError::WrongProtocol {
            addr: "127.0.0.1:5672".into(),
            found: Some(Protocol::Amqp),
        };
        let expected = wrong_protocol("127.0.0.1:5672", Protocol::Nats, Some(Protocol::Amqp));
        assert_eq!(e.to_string(), expected);
        match TransportError::from(e) {
            TransportError::Connection { context, source } => {
                assert_eq!(context, expected);
                assert!(source.is_none());
            }
            other => panic!("{other:?}"),
        }
    }
}
