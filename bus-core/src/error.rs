//! Errors. [`BusError`] is what bus calls return; [`TransportError`] is what transports return;
//! [`CodecError`] is what codecs return; [`HandlerError`] is what handlers return.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::redact::scrub_urls;

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
    /// A hosted endpoint has no handlers: nothing in the binary handles its messages.
    #[error("endpoint `{endpoint}` is hosted but no handler in this binary belongs to it{}; if its handlers live in another crate, that crate is not linked because nothing in the binary uses it: add `use <that_crate> as _;` to the binary's main.rs (see `bus_core::BusBuilder::host`)", others_text(.others))]
    EmptyEndpoint {
        /// The endpoint.
        endpoint: String,
        /// The endpoints that do have handlers, to spot a misspelled name.
        others: Vec<String>,
    },
    /// [`crate::Bus::send_all`] or [`crate::Bus::publish_all`] stopped: the first `accepted`
    /// messages were accepted, the rest may not have been.
    #[error("sending a batch stopped after {accepted} accepted messages: {error}")]
    Batch {
        /// How many messages, from the first, were accepted.
        accepted: usize,
        /// What stopped it.
        #[source]
        error: Box<BusError>,
    },
    /// The body limit set on the builder is above what the broker takes.
    #[error("the body limit of {limit} bytes is above what the {transport} broker takes ({broker} bytes for the body, its message limit less room for headers); lower `BusBuilder::max_body_size`, or raise the broker's limit (NATS: `max_payload` in the server configuration)")]
    BodyLimitAboveBroker {
        /// The limit set.
        limit: usize,
        /// What the broker takes for a body.
        broker: usize,
        /// The transport's name.
        transport: String,
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
    /// The storage of a unit of work (outbox, inbox, saga state) failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The bus has no storage, and what was asked needs one.
    #[error("this needs storage for units of work (an outbox): give the bus one with `BusBuilder::storage`, e.g. `bus_postgres::PostgresStorage`")]
    NoStorage,
    /// A saga runs in an endpoint without storage for its state.
    #[error("saga handler `{handler}` runs in endpoint `{endpoint}`, which has no storage for its state; give the bus one with `BusBuilder::storage` (e.g. `bus_postgres::PostgresStorage`, or `MemoryStorage` in tests)")]
    SagaWithoutStorage {
        /// The saga's handler.
        handler: String,
        /// The endpoint.
        endpoint: String,
    },
    /// No answer to a request came within its timeout.
    #[error("no answer to request `{request}` from {endpoint} within {timeout:?}; is a bus hosting that endpoint running? (raise the wait with `RequestOptions::timeout`)")]
    RequestTimeout {
        /// The request's wire name.
        request: String,
        /// Where it was sent.
        endpoint: String,
        /// How long the caller waited.
        timeout: std::time::Duration,
    },
    /// The request's handler failed for good: the request went to the error queue of its
    /// endpoint, and the handler's error came back instead of an answer.
    #[error("request `{request}` failed at {endpoint} ({}): {error}", reason.map_or("unknown reason", |r| r.as_str()))]
    RequestFailed {
        /// The request's wire name.
        request: String,
        /// Where it was handled.
        endpoint: String,
        /// Why it failed, as the error queue records it (`None` for a reason this version
        /// does not know).
        reason: Option<crate::FailureReason>,
        /// The Rust type of the handler's error, or `panic` / `timeout`.
        error_type: String,
        /// The error's text.
        error: String,
    },
}

/// An error from the storage of units of work (outbox, inbox, saga state).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Another unit of work changed (or created) the saga instance first; the attempt is
    /// retried and then sees the other's change.
    #[error("saga `{saga}` instance `{id}` was changed by another message at the same time; the attempt is retried")]
    Conflict {
        /// The saga's name.
        saga: String,
        /// The instance's id.
        id: String,
    },
    /// The storage cannot do this.
    #[error("the {storage} storage cannot {operation}")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
        /// The storage's name.
        storage: String,
    },
    /// The store failed (connection lost, statement refused).
    #[error("{context}")]
    Other {
        /// What failed, and what to do about it; never a password.
        context: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl StorageError {
    /// An error of the store, with its source.
    pub fn other(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError::Other {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }
}

fn others_text(others: &[String]) -> String {
    if others.is_empty() {
        String::new()
    } else {
        format!(" (endpoints with handlers: {})", others.join(", "))
    }
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
///
/// [`Connection`](TransportError::Connection), [`Refused`](TransportError::Refused) and
/// [`Other`](TransportError::Other) keep the client library's error as
/// [`source`](std::error::Error::source), so that a caller can downcast it; their constructors
/// ([`TransportError::connection`], [`TransportError::refused`], [`TransportError::other`])
/// fill it in. The source is shared, so the error stays `Clone`.
///
/// The message shows the source's text too, with the password of any URL in it hidden (see
/// [`crate::scrub_urls`]): logs print only the message.
///
/// ```
/// use std::error::Error;
/// use bus_core::TransportError;
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let err = TransportError::connection("connecting to the broker at 127.0.0.1:5672", io);
/// assert_eq!(
///     err.to_string(),
///     "connection error: connecting to the broker at 127.0.0.1:5672: refused"
/// );
/// assert!(err.source().unwrap().downcast_ref::<std::io::Error>().is_some());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TransportError {
    /// Nothing is bound to receive this message: an unknown endpoint, or no queue declared yet.
    Unroutable(String),
    /// An operation did not finish in time; see [`TransportError::within`].
    Timeout {
        /// What was attempted.
        operation: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The connection to the broker is down or was refused.
    Connection {
        /// What was being done, and what to check; never a password.
        context: String,
        /// The client library's error, when there is one.
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// The broker refused the operation.
    Refused {
        /// What was refused, and what to check; never a password.
        context: String,
        /// The client library's error, when there is one.
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// The transport or subscription has been closed.
    Closed,
    /// This transport cannot do what was asked.
    Unsupported {
        /// What was asked, e.g. `browsing a queue`.
        operation: &'static str,
        /// The transport's name.
        transport: String,
    },
    /// Anything else.
    Other {
        /// What went wrong; never a password.
        context: String,
        /// The underlying error, when there is one.
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl TransportError {
    /// The connection to the broker failed while doing `context`, because of `source`.
    ///
    /// `source` is the client library's error, kept as it is so that it can be downcast; as
    /// with [`std::io::Error::new`], a message does too. `context` says what was being done
    /// and, where it helps, what to check; it may be empty when the source says it all.
    pub fn connection(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        TransportError::Connection {
            context: context.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// The broker refused `context`, saying `source`.
    pub fn refused(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        TransportError::Refused {
            context: context.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// Some other failure while doing `context`, because of `source`.
    pub fn other(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        TransportError::Other {
            context: context.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// `operation` did not finish within `after`.
    pub fn timeout(operation: &'static str, after: Duration) -> Self {
        TransportError::Timeout { operation, after }
    }

    /// Run `future` for at most `after`; past that it is dropped and the result is
    /// [`TransportError::Timeout`] naming `operation`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bus_core::TransportError;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let slow = tokio::time::sleep(Duration::from_secs(60));
    /// let err = TransportError::within("waiting", Duration::from_millis(1), slow)
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "waiting timed out after 1ms");
    /// # });
    /// ```
    pub async fn within<F: std::future::Future>(
        operation: &'static str,
        after: Duration,
        future: F,
    ) -> Result<F::Output, TransportError> {
        tokio::time::timeout(after, future)
            .await
            .map_err(|_| TransportError::timeout(operation, after))
    }
}

impl fmt::Display for TransportError {
    // The source's text is part of the message (and also `source()`): the bus logs errors with
    // `%error`, which shows only the top of the chain, and a cause that appears only further
    // down would never reach the log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, context, source) = match self {
            TransportError::Unroutable(target) => {
                return write!(
                    f,
                    "unroutable: no queue receives messages for {target}; start a bus that hosts it once on this transport (starting declares its queue)"
                )
            }
            TransportError::Timeout { operation, after } => {
                return write!(f, "{operation} timed out after {after:?}")
            }
            TransportError::Closed => return f.write_str("the transport is closed"),
            TransportError::Unsupported {
                operation,
                transport,
            } => return write!(f, "the {transport} transport does not support {operation}"),
            TransportError::Connection { context, source } => {
                ("connection error: ", context, source)
            }
            TransportError::Refused { context, source } => {
                ("the broker refused the operation: ", context, source)
            }
            TransportError::Other { context, source } => ("", context, source),
        };
        f.write_str(prefix)?;
        f.write_str(context)?;
        let Some(source) = source else {
            return Ok(());
        };
        // An empty context: the source (a transport's own error) says it all.
        if !context.is_empty() {
            f.write_str(": ")?;
        }
        // Client libraries may quote the URL they were given, password and all.
        f.write_str(&scrub_urls(&source.to_string()))
    }
}

// Written out rather than derived: thiserror would hand out the `Arc` itself as the source,
// which no caller can downcast to the client library's error.
impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Connection { source, .. }
            | TransportError::Refused { source, .. }
            | TransportError::Other { source, .. } => source
                .as_deref()
                .map(|s| s as &(dyn std::error::Error + 'static)),
            _ => None,
        }
    }
}

/// The error type handlers may return, and what every other error converts into.
///
/// A handler returns `Result<(), E>` for any `E` that a Rust service commonly uses: this
/// type, your own error type (`thiserror` or hand-written, anything `std::error::Error + Send +
/// Sync + 'static`), `Box<dyn std::error::Error + Send + Sync>`, `anyhow::Error`, `String` or
/// `&'static str`. Each converts into a `HandlerError` keeping its Rust type name and its
/// chain of sources for the error-queue headers, and `?` converts any of them inside a
/// handler that returns `HandlerError`.
///
/// A failure that retrying cannot fix skips the remaining retries: build it with
/// [`HandlerError::unrecoverable`], or wrap any error in [`Unrecoverable`] (which also works
/// through `anyhow` and boxed errors).
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
///
/// // Boxed errors and strings convert with `?` too.
/// fn boxed() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     Err("disk full".into())
/// }
/// fn handler_body() -> Result<(), HandlerError> {
///     boxed()?;
///     Ok(())
/// }
/// assert_eq!(handler_body().unwrap_err().message(), "disk full");
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

    /// The texts of the original error's sources, outermost first (not the error's own text).
    ///
    /// ```
    /// use bus_core::HandlerError;
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("loading the price list")]
    /// struct Load(#[source] std::io::Error);
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "prices.csv not found");
    /// let error = HandlerError::from(Load(io));
    /// assert_eq!(error.message(), "loading the price list");
    /// assert_eq!(error.causes(), vec!["prices.csv not found".to_string()]);
    /// ```
    pub fn causes(&self) -> Vec<String> {
        let mut causes = Vec::new();
        let mut next = self.source.as_deref().and_then(|e| e.source());
        while let Some(cause) = next {
            causes.push(cause.to_string());
            next = cause.source();
        }
        causes
    }
}

/// Every error a handler may return converts: anything that converts into a boxed error
/// (every `std::error::Error + Send + Sync + 'static`, `Box<dyn Error + Send + Sync>`,
/// `anyhow::Error`, `String`, `&str`). `HandlerError` itself is not an `Error`, which keeps
/// this from overlapping the identity conversion.
impl<E> From<E> for HandlerError
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    fn from(error: E) -> Self {
        let boxed: Box<dyn std::error::Error + Send + Sync + 'static> = error.into();
        let mut type_name = readable_type_name(std::any::type_name::<E>());
        let mut unrecoverable = false;
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&*boxed);
        while let Some(e) = next {
            if let Some(marked) = e.downcast_ref::<Unrecoverable>() {
                unrecoverable = true;
                if std::ptr::addr_eq(e, &*boxed) {
                    type_name = marked.type_name.to_string();
                }
            }
            next = e.source();
        }
        HandlerError {
            type_name,
            message: boxed.to_string(),
            unrecoverable,
            source: Some(boxed),
        }
    }
}

/// Type names as a reader writes them: `Box<dyn Error + Send + Sync>`, not
/// `alloc::boxed::Box<dyn core::error::Error + core::marker::Send + core::marker::Sync>`.
fn readable_type_name(name: &str) -> String {
    name.replace("alloc::boxed::", "")
        .replace("alloc::string::", "")
        .replace("core::error::", "")
        .replace("core::marker::", "")
}

/// An error that retrying cannot fix, whatever its type: a handler returning it (directly,
/// inside `anyhow::Error` or a boxed error, or as the source of another error) sends the
/// message straight to the error queue. Its text and sources are the wrapped error's.
///
/// ```
/// use bus_core::{HandlerError, Unrecoverable};
///
/// fn validate(qty: u32) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     if qty == 0 {
///         return Err(Unrecoverable::new("a quantity of zero").into());
///     }
///     Ok(())
/// }
/// let error = HandlerError::from(validate(0).unwrap_err());
/// assert!(error.is_unrecoverable());
/// assert_eq!(error.message(), "a quantity of zero");
/// ```
pub struct Unrecoverable {
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
    type_name: String,
}

impl Unrecoverable {
    /// Mark `error` as unrecoverable.
    pub fn new<E>(error: E) -> Self
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        Unrecoverable {
            inner: error.into(),
            type_name: readable_type_name(std::any::type_name::<E>()),
        }
    }

    /// The wrapped error.
    pub fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.inner
    }
}

impl fmt::Display for Unrecoverable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl fmt::Debug for Unrecoverable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Unrecoverable").field(&self.inner).finish()
    }
}

// Transparent: the wrapped error's own text is this one's, so the chain goes on with its
// sources rather than repeating it.
impl std::error::Error for Unrecoverable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[derive(Debug, thiserror::Error)]
    #[error("socket closed")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn the_source_chain_is_kept_through_clones() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let err = TransportError::connection("publishing", Inner(io)).clone();
        let inner = err.source().expect("a source");
        assert!(
            inner.downcast_ref::<Inner>().is_some(),
            "the original type, not a wrapper"
        );
        let io = inner.source().expect("the source's own source");
        assert_eq!(io.to_string(), "broken pipe");
        assert_eq!(
            err.to_string(),
            "connection error: publishing: socket closed"
        );
        // `BusError::Transport` is transparent: its source is the transport error's.
        let bus = BusError::from(err);
        assert!(bus.source().is_some_and(|s| s.is::<Inner>()));
    }

    #[test]
    fn passwords_in_a_source_do_not_reach_the_message() {
        let err = TransportError::connection(
            "connecting",
            "failed to reach amqp://app:s3cret@rabbit:5672/%2f",
        );
        assert_eq!(
            err.to_string(),
            "connection error: connecting: failed to reach amqp://app:***@rabbit:5672/%2f"
        );
    }

    #[test]
    fn an_empty_context_leaves_the_source_alone() {
        let err = TransportError::other("", "AMQP configuration: bad URL");
        assert_eq!(err.to_string(), "AMQP configuration: bad URL");
    }

    #[test]
    fn errors_without_an_underlying_one_have_no_source() {
        let err = TransportError::Refused {
            context: "the broker did not accept the message".into(),
            source: None,
        };
        assert!(err.source().is_none());
        assert_eq!(
            err.to_string(),
            "the broker refused the operation: the broker did not accept the message"
        );
        assert!(TransportError::timeout("x", Duration::from_secs(1))
            .source()
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn within_maps_an_elapsed_deadline_to_a_timeout() {
        let after = Duration::from_secs(5);
        let ok = TransportError::within("quick", after, async { 7 }).await;
        assert_eq!(ok.unwrap(), 7);
        let slow = TransportError::within("slow", after, std::future::pending::<()>()).await;
        assert!(matches!(
            slow,
            Err(TransportError::Timeout { operation: "slow", after: a }) if a == after
        ));
    }
}
