//! Errors. [`BusError`] is what bus calls return; [`TransportError`] is what transports return;
//! [`CodecError`] is what codecs return; [`HandlerError`] is what handlers return.

use std::fmt;
use std::time::Duration;

/// An error from a bus operation: building, sending, publishing, shutting down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// No transport was given to the builder.
    #[error(
        "no transport configured: call `BusBuilder::transport` with e.g. `MemoryTransport::new()`"
    )]
    NoTransport,
    /// A command has no handler in the endpoint that owns it.
    #[error("command `{message}` is owned by endpoint `{endpoint}` but no handler for it is registered there; add a `#[handler(endpoint = \"{endpoint}\")]` for it")]
    NoHandler {
        /// Wire name of the command.
        message: String,
        /// The owning endpoint.
        endpoint: String,
    },
    /// A command has several handlers.
    #[error("command `{message}` has {} handlers ({}); a command must have exactly one handler in its owning endpoint", handlers.len(), handlers.join(", "))]
    DuplicateHandler {
        /// Wire name of the command.
        message: String,
        /// The conflicting handlers, as `endpoint::handler`.
        handlers: Vec<String>,
    },
    /// A command handler sits in another endpoint than the one the command names as owner.
    #[error("handler `{handler}` for command `{message}` is in endpoint `{endpoint}`, but the command is owned by `{owner}`; move the handler or change the command's `endpoint`")]
    MisplacedHandler {
        /// Wire name of the command.
        message: String,
        /// The handler.
        handler: String,
        /// Where the handler is.
        endpoint: String,
        /// The owning endpoint.
        owner: String,
    },
    /// Two message types claim the same wire name.
    #[error(
        "wire name `{name}` is used by both `{first}` and `{second}`; wire names must be unique"
    )]
    DuplicateWireName {
        /// The wire name.
        name: String,
        /// One Rust type.
        first: String,
        /// The other.
        second: String,
    },
    /// A handler asks for state that was not provided.
    #[error("handler `{handler}` extracts `State<{state}>`, but no such state was given; call `BusBuilder::state` with a `{state}`")]
    MissingState {
        /// The handler.
        handler: String,
        /// The state's type.
        state: String,
    },
    /// A command was sent but nothing says which endpoint owns it.
    #[error("no route for command `{0}`: declare `#[command(endpoint = \"...\")]` on it, or call `BusBuilder::route`")]
    NoRoute(String),
    /// The message could not be serialized, or is too large.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The transport refused or failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A handler context was used after its handler finished; its sends would be lost.
    #[error("this message context belongs to a handler that has already finished; messages sent through it would be lost")]
    ContextClosed,
    /// The bus is shutting down or stopped.
    #[error("the bus has been shut down")]
    ShutDown,
}

/// An error from a codec.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// Serialization failed.
    #[error("could not serialize the message: {0}")]
    Encode(String),
    /// The body is not a valid message of the expected type.
    #[error("could not deserialize the body: {0}")]
    Decode(String),
    /// No codec is registered for the envelope's content type.
    #[error("unsupported content type `{0}`; register a codec for it with `BusBuilder::codec`")]
    UnsupportedContentType(String),
    /// The body is larger than the configured limit.
    #[error("message body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Body size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// An error from a transport.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Nothing is bound to receive this message: an unknown endpoint, or no queue declared yet.
    #[error("unroutable: no queue receives messages for `{0}`; is the owning endpoint declared (started once) on this transport?")]
    Unroutable(String),
    /// An operation did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was attempted.
        operation: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The connection to the broker is down or was refused.
    #[error("connection error: {0}")]
    Connection(String),
    /// The broker refused the operation.
    #[error("the broker refused the operation: {0}")]
    Refused(String),
    /// The transport or subscription has been closed.
    #[error("the transport is closed")]
    Closed,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Why a handler attempt failed, as handlers report it.
///
/// Any `std::error::Error` converts into it with `?`, keeping its type name for the error-queue
/// headers. [`HandlerError::unrecoverable`] skips the remaining retries.
///
/// ```
/// use bus_core::HandlerError;
///
/// fn check(qty: u32) -> Result<(), HandlerError> {
///     let parsed: u32 = "12".parse()?; // ParseIntError converts
///     if qty > parsed {
///         return Err(HandlerError::unrecoverable("quantity above limit"));
///     }
///     Ok(())
/// }
/// assert!(check(1).is_ok());
/// assert!(check(100).unwrap_err().is_unrecoverable());
/// ```
pub struct HandlerError {
    type_name: String,
    message: String,
    unrecoverable: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl HandlerError {
    /// A failure with a message; retried according to the endpoint's policy.
    pub fn new(message: impl fmt::Display) -> Self {
        HandlerError {
            type_name: "bus_core::HandlerError".into(),
            message: message.to_string(),
            unrecoverable: false,
            source: None,
        }
    }

    /// A failure that retrying cannot fix: the message goes straight to the error queue.
    pub fn unrecoverable(message: impl fmt::Display) -> Self {
        HandlerError {
            unrecoverable: true,
            ..HandlerError::new(message)
        }
    }

    /// Mark this error as unrecoverable.
    pub fn into_unrecoverable(mut self) -> Self {
        self.unrecoverable = true;
        self
    }

    /// Whether retries are skipped.
    pub fn is_unrecoverable(&self) -> bool {
        self.unrecoverable
    }

    /// The Rust type of the original error.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// The error's text.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The original error, when there was one.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError {
            type_name: std::any::type_name::<E>().to_string(),
            message: error.to_string(),
            unrecoverable: false,
            source: Some(Box::new(error)),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("type_name", &self.type_name)
            .field("message", &self.message)
            .field("unrecoverable", &self.unrecoverable)
            .finish()
    }
}
