//! Errors of the AMQP transport, and what the broker's errors mean for the bus.

use std::time::Duration;

use bus_core::TransportError;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

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
        // The transport's own error is the source, and its text says it all: no context.
        match e {
            AmqpError::Timeout { operation, after } => TransportError::timeout(operation, after),
            AmqpError::Config(_) => TransportError::other("", e),
            AmqpError::Authentication { .. } => TransportError::refused("", e),
            AmqpError::Connection { .. } => TransportError::connection("", e),
        }
    }
}

/// The AMQP reply code the broker closed a channel or the connection with, if that is what
/// the error is.
fn reply_code(e: &lapin::Error) -> Option<&AMQPErrorKind> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.kind()),
        _ => None,
    }
}

/// Whether the broker refused to open the connection for who we are: wrong user or password
/// (`ACCESS_REFUSED`), or a virtual host the user may not use (`NOT_ALLOWED`).
pub(crate) fn is_login_refused(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::AuthProviderError(_))
        || matches!(
            reply_code(e),
            Some(
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            )
        )
}

/// What a failed broker call while doing `what` means for the bus: a queue that does not
/// exist is [`TransportError::Unroutable`], one declared with other settings is
/// [`TransportError::Refused`], anything else is a connection problem, worth trying again.
pub(crate) fn broker_error(what: impl Into<String>, e: lapin::Error) -> TransportError {
    let what = what.into();
    match reply_code(&e) {
        Some(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) => {
            TransportError::Unroutable(format!("{what}: {e}"))
        }
        Some(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)) => TransportError::refused(
            format!("{what} (does it exist with other settings, e.g. another queue type?)"),
            e,
        ),
        _ => TransportError::connection(what, e),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use lapin::protocol::AMQPError;

    use super::*;

    fn closed_with(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
    }

    #[test]
    fn a_missing_queue_is_unroutable() {
        let e = closed_with(
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
            "NOT_FOUND - no queue 'q' in vhost '/'",
        );
        let err = broker_error("consuming from `q`", e);
        assert!(matches!(err, TransportError::Unroutable(ref t) if t.contains("no queue 'q'")));
    }

    #[test]
    fn a_queue_declared_otherwise_is_refused_and_keeps_the_broker_error() {
        let e = closed_with(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type'",
        );
        let err = broker_error("declaring queue `q`", e);
        assert!(matches!(err, TransportError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("another queue type"), "{err}");
        let source = err.source().and_then(|s| s.downcast_ref::<lapin::Error>());
        assert!(source.is_some(), "the lapin error is the source");
    }

    #[test]
    fn text_that_merely_mentions_a_code_is_a_connection_error() {
        // A queue named after a reply code must not change the meaning of an unrelated error.
        let e = closed_with(
            AMQPErrorKind::Hard(AMQPHardError::CHANNELERROR),
            "CHANNEL_ERROR - on queue NOT_FOUND.PRECONDITION",
        );
        let err = broker_error("consuming", e);
        assert!(matches!(err, TransportError::Connection { .. }), "{err}");
        let io: lapin::Error = std::io::Error::other("reset").into();
        assert!(matches!(
            broker_error("publishing", io),
            TransportError::Connection { .. }
        ));
    }

    #[test]
    fn a_refused_login_is_told_apart() {
        let refused = closed_with(
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            "ACCESS_REFUSED - Login was refused",
        );
        let vhost = closed_with(
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            "NOT_ALLOWED - vhost x not found",
        );
        assert!(is_login_refused(&refused) && is_login_refused(&vhost));
        let io: lapin::Error = std::io::Error::other("connection refused").into();
        assert!(!is_login_refused(&io));
    }
}
