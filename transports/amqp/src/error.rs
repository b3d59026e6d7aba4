//! Errors of the AMQP transport, and what the broker's errors mean for the bus.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bus_core::probe::Protocol;
use bus_core::{Destination, TransportError};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// An error setting up or using the AMQP transport. Texts never contain the password.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AmqpError {
    /// The configuration is unusable.
    Config(String),
    /// Could not connect, or the connection failed.
    Connection {
        /// The URL, password redacted.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The broker refused credentials or the virtual host.
    Authentication {
        /// The URL, password redacted.
        url: String,
        /// What the broker said.
        reason: String,
    },
    /// Something answered at the broker's address, but not as an AMQP broker: the URL names
    /// another server's port (NATS, Redis, ...).
    WrongProtocol {
        /// The URL, password redacted.
        url: String,
        /// What answered and the likely mix-up (see [`bus_core::probe::wrong_protocol`]).
        context: String,
        /// The protocol that answered, when it was recognized.
        found: Option<Protocol>,
        /// The client library's error, when the connection failed with one (not when it
        /// timed out); also the [`source`](std::error::Error::source).
        source: Option<Arc<lapin::Error>>,
    },
    /// An operation did not finish in time.
    Timeout {
        /// What was attempted.
        operation: &'static str,
        /// The limit.
        after: Duration,
    },
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmqpError::Config(what) => write!(f, "AMQP configuration: {what}"),
            AmqpError::Connection { url, reason } => {
                write!(f, "AMQP connection to {url} failed: {reason}")
            }
            AmqpError::Authentication { url, reason } => write!(
                f,
                "the broker at {url} refused the login: {reason}; check the user, password and vhost"
            ),
            // The client library's parse error says nothing the context does not say better.
            AmqpError::WrongProtocol { url, context, .. } => {
                write!(f, "AMQP connection to {url} failed: {context}")
            }
            AmqpError::Timeout { operation, after } => {
                write!(f, "{operation} timed out after {after:?}")
            }
        }
    }
}

// Written out rather than derived: the source is the client library's error itself, which a
// caller can downcast, not the `Arc` that keeps this error small and `Clone`.
impl std::error::Error for AmqpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AmqpError::WrongProtocol {
                source: Some(source),
                ..
            } => Some(&**source),
            _ => None,
        }
    }
}

impl From<AmqpError> for TransportError {
    fn from(e: AmqpError) -> Self {
        // The transport's own error is the source, and its text says it all: no context.
        match e {
            AmqpError::Timeout { operation, after } => TransportError::timeout(operation, after),
            AmqpError::Config(_) => TransportError::other("", e),
            AmqpError::Authentication { .. } => TransportError::refused("", e),
            AmqpError::Connection { .. } => TransportError::connection("", e),
            // The context says it all; the client library's parse error stays the source.
            AmqpError::WrongProtocol {
                context, source, ..
            } => TransportError::Connection {
                context,
                source: source.map(|s| s as Arc<dyn std::error::Error + Send + Sync>),
            },
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

/// Whether the broker closed the channel because what was named does not exist
/// (`NOT_FOUND`): a passive declare of a missing queue or exchange, or a queue consumed from
/// or read that is not there.
pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    matches!(
        reply_code(e),
        Some(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

/// Whether the broker refused a call because something is not as asked
/// (`PRECONDITION_FAILED`): declared with other settings, or still in use.
pub(crate) fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        reply_code(e),
        Some(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

/// What a failed broker call while doing `what` means for the bus: something declared with
/// other settings, or missing, is [`TransportError::Refused`]; anything else is a connection
/// problem, worth trying again.
pub(crate) fn broker_error(what: impl Into<String>, e: lapin::Error) -> TransportError {
    let what = what.into();
    match reply_code(&e) {
        Some(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)) => TransportError::refused(
            format!("{what} (does it exist with other settings, e.g. another queue type?)"),
            e,
        ),
        Some(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) => TransportError::refused(what, e),
        _ => TransportError::connection(what, e),
    }
}

/// [`broker_error`] for a call on the queue of `target`: that the queue does not exist is
/// [`TransportError::Unroutable`], naming the target as its message reads it ("no queue
/// receives messages for endpoint `billing`").
pub(crate) fn queue_error(
    what: impl Into<String>,
    target: &Destination,
    e: lapin::Error,
) -> TransportError {
    if is_not_found(&e) {
        TransportError::Unroutable(target.to_string())
    } else {
        broker_error(what, e)
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
    fn a_missing_queue_is_unroutable_and_names_its_target() {
        let e = closed_with(
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
            "NOT_FOUND - no queue 'q' in vhost '/'",
        );
        let err = queue_error("consuming from `q`", &Destination::Endpoint("q".into()), e);
        assert!(matches!(err, TransportError::Unroutable(ref t) if t == "endpoint `q`"));
        assert_eq!(
            err.to_string(),
            "unroutable: no queue receives messages for endpoint `q`; start a bus that hosts it once on this transport (starting declares its queue)"
        );
    }

    #[test]
    fn something_missing_elsewhere_is_refused_not_unroutable() {
        let e = closed_with(
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
            "NOT_FOUND - no exchange 'bus.events' in vhost '/'",
        );
        let err = broker_error("binding `q` to `e`", e);
        assert!(matches!(err, TransportError::Refused { .. }), "{err}");
        assert!(
            err.to_string().contains("no exchange 'bus.events'"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_protocol_is_a_connection_error_with_the_client_error_as_source() {
        let parse: lapin::Error = std::io::Error::other("Parsing Error").into();
        let amqp = AmqpError::WrongProtocol {
            url: "amqp://guest:***@127.0.0.1:4222/%2f".into(),
            context: "127.0.0.1:4222 answered, but not as an AMQP broker: it speaks NATS (is this the NATS port?)".into(),
            found: Some(Protocol::Nats),
            source: Some(Arc::new(parse)),
        };
        assert!(amqp.source().is_some_and(|s| s.is::<lapin::Error>()));
        assert!(!amqp.to_string().contains("Parsing Error"), "{amqp}");
        let err = TransportError::from(amqp);
        assert!(
            matches!(&err, TransportError::Connection { context, .. } if context.contains("it speaks NATS")),
            "{err}"
        );
        assert!(err.source().is_some_and(|s| s.is::<lapin::Error>()));
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
