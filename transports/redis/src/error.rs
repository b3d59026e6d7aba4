//! Errors of the Redis transport.

use std::time::Duration;

use bus_core::probe::{wrong_protocol, Protocol};
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
    /// The server answered, but not as Redis: the URL points at another service (the port of
    /// another broker). The message says what answered, when it is known.
    #[error("{}", wrong_protocol(address, Protocol::Redis, *found))]
    WrongProtocol {
        /// `host:port` of the server.
        address: String,
        /// What the server speaks, when [`bus_core::probe::identify`] recognized it.
        found: Option<Protocol>,
        /// The client library's error, e.g. a parse error on the server's first bytes.
        source: redis::RedisError,
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
            // What answered is the context; the client's error stays the source.
            RedisError::WrongProtocol {
                address,
                found,
                source,
            } => {
                TransportError::connection(wrong_protocol(&address, Protocol::Redis, found), source)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_wrong_protocol_is_a_connection_error_saying_what_answered() {
        let client = redis::RedisError::from((redis::ErrorKind::Parse, "Unexpected `77`"));
        let err = RedisError::WrongProtocol {
            address: "127.0.0.1:5672".into(),
            found: Some(Protocol::Amqp),
            source: client,
        };
        let expected =
            "127.0.0.1:5672 answered, but not as a Redis server: it speaks AMQP (is this the AMQP port?)";
        assert_eq!(err.to_string(), expected);
        let err = TransportError::from(err);
        match &err {
            TransportError::Connection { context, .. } => assert_eq!(context, expected),
            other => panic!("{other:?}"),
        }
        let source = err.source().expect("the client's error");
        assert!(source.downcast_ref::<redis::RedisError>().is_some());
    }
}
