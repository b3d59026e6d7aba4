//! Why a message failed: one vocabulary for logs, retry decisions and error-queue headers.

use std::any::Any;
use std::time::Duration;

use crate::error::{HandlerError, TransportError};

/// Why a message failed, as written to the `bus-failure-reason` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// The handler returned an error.
    HandlerError,
    /// The handler panicked.
    Panic,
    /// The handler ran past the endpoint's timeout.
    Timeout,
    /// The messages the handler emitted could not be handed to the transport.
    DispatchFailed,
    /// The body could not be decoded as the message type.
    Deserialization,
    /// No handler at this endpoint knows the message type.
    UnknownMessageType,
    /// A required header (message id, message type) is missing.
    MissingHeader,
    /// No codec for the content type.
    UnsupportedContentType,
    /// The body exceeds the size limit.
    TooLarge,
    /// The broker delivered the message as often as the queue allows without it ever being
    /// settled (the handling process crashed or hung each time); moved by the transport.
    DeliveryLimit,
    /// A layer of the handling pipeline refused the message (see [`Failure::reject`]).
    Rejected,
}

impl FailureReason {
    /// Every reason, in the order declared.
    pub const ALL: [FailureReason; 11] = [
        FailureReason::HandlerError,
        FailureReason::Panic,
        FailureReason::Timeout,
        FailureReason::DispatchFailed,
        FailureReason::Deserialization,
        FailureReason::UnknownMessageType,
        FailureReason::MissingHeader,
        FailureReason::UnsupportedContentType,
        FailureReason::TooLarge,
        FailureReason::DeliveryLimit,
        FailureReason::Rejected,
    ];

    /// The reason a `bus-failure-reason` header value names; `None` for one this version does
    /// not know.
    ///
    /// ```
    /// use bus_core::FailureReason;
    ///
    /// assert_eq!(FailureReason::parse("timeout"), Some(FailureReason::Timeout));
    /// assert!(FailureReason::ALL.iter().all(|r| FailureReason::parse(r.as_str()) == Some(*r)));
    /// assert_eq!(FailureReason::parse("unheard-of"), None);
    /// ```
    pub fn parse(text: &str) -> Option<FailureReason> {
        FailureReason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::HandlerError => "handler-error",
            FailureReason::Panic => "panic",
            FailureReason::Timeout => "timeout",
            FailureReason::DispatchFailed => "dispatch-failed",
            FailureReason::Deserialization => "deserialization-failed",
            FailureReason::UnknownMessageType => "unknown-message-type",
            FailureReason::MissingHeader => "missing-header",
            FailureReason::UnsupportedContentType => "unsupported-content-type",
            FailureReason::TooLarge => "body-too-large",
            FailureReason::DeliveryLimit => "delivery-limit",
            FailureReason::Rejected => "rejected",
        }
    }
}

/// One failed handler attempt, or a message refused before or around one: what the
/// [recoverability policy](crate::RecoverabilityPolicy) decides on and what the error-queue
/// headers record.
///
/// Layers return it (a [`HandlerError`] converts with `?` or `.into()`), and may refuse a
/// message outright with [`Failure::reject`]:
///
/// ```
/// use bus_core::{Failure, FailureReason, HandlerError};
///
/// let refused = Failure::reject("no tenant header");
/// assert_eq!(refused.reason(), FailureReason::Rejected);
/// assert!(refused.is_unrecoverable());
///
/// let failed: Failure = HandlerError::new("database busy").into();
/// assert_eq!(failed.reason(), FailureReason::HandlerError);
/// assert!(!failed.is_unrecoverable());
/// ```
#[derive(Clone, Debug)]
pub struct Failure {
    pub(crate) reason: FailureReason,
    pub(crate) error_type: String,
    pub(crate) message: String,
    pub(crate) handler: Option<String>,
    /// The texts of the error's sources, outermost first.
    pub(crate) causes: Vec<String>,
    /// Retrying cannot help.
    pub(crate) unrecoverable: bool,
    /// Not a failed attempt: the message goes back to its queue for later, uncounted (the
    /// inbox could not tell whether it was handled).
    pub(crate) requeue: bool,
}

impl Failure {
    /// Refuse the message: no retries, straight to the error queue with reason `rejected`
    /// and this text.
    pub fn reject(message: impl Into<String>) -> Self {
        Failure::rejected(FailureReason::Rejected, message)
    }

    /// Why it failed.
    pub fn reason(&self) -> FailureReason {
        self.reason
    }

    /// The Rust type of the error (or the reason, for failures that are not errors).
    pub fn error_type(&self) -> &str {
        &self.error_type
    }

    /// The error's text.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The texts of the error's sources, outermost first, as the `bus-failure-causes` header
    /// records them.
    pub fn causes(&self) -> &[String] {
        &self.causes
    }

    /// The handler (or layer) it came from, where known.
    pub fn handler(&self) -> Option<&str> {
        self.handler.as_deref()
    }

    /// Whether retrying cannot help (an unrecoverable handler error, a rejected message).
    pub fn is_unrecoverable(&self) -> bool {
        self.unrecoverable
    }

    /// The same failure, attributed to a handler or layer.
    pub fn with_handler(mut self, handler: &str) -> Self {
        self.handler = Some(handler.to_string());
        self
    }

    pub(crate) fn rejected(reason: FailureReason, message: impl Into<String>) -> Self {
        Failure {
            reason,
            error_type: reason.as_str().to_string(),
            message: message.into(),
            handler: None,
            causes: Vec::new(),
            unrecoverable: true,
            requeue: false,
        }
    }

    pub(crate) fn from_handler(error: &HandlerError) -> Self {
        Failure {
            reason: FailureReason::HandlerError,
            error_type: error.type_name().to_string(),
            message: error.message().to_string(),
            handler: None,
            causes: error.causes(),
            unrecoverable: error.is_unrecoverable(),
            requeue: false,
        }
    }

    pub(crate) fn panic(payload: &(dyn Any + Send)) -> Self {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-string payload".to_string());
        Failure {
            reason: FailureReason::Panic,
            error_type: "panic".into(),
            message: text,
            handler: None,
            causes: Vec::new(),
            unrecoverable: false,
            requeue: false,
        }
    }

    pub(crate) fn timeout(limit: Duration) -> Self {
        Failure {
            reason: FailureReason::Timeout,
            error_type: "timeout".into(),
            message: format!("the handler did not finish within {limit:?}"),
            handler: None,
            causes: Vec::new(),
            unrecoverable: false,
            requeue: false,
        }
    }

    pub(crate) fn requeue(message: impl Into<String>) -> Self {
        Failure {
            reason: FailureReason::HandlerError,
            error_type: "bus_core::Inbox".into(),
            message: message.into(),
            handler: Some("inbox".into()),
            causes: Vec::new(),
            unrecoverable: false,
            requeue: true,
        }
    }

    /// The unit of work's storage failed: retried like a handler's error (a conflict on a
    /// saga, a lost connection), except what the storage can never do, which goes to the
    /// error queue at once.
    pub(crate) fn storage(error: &crate::StorageError) -> Self {
        Failure {
            reason: FailureReason::HandlerError,
            error_type: "bus_core::StorageError".into(),
            message: error.to_string(),
            handler: None,
            causes: Vec::new(),
            unrecoverable: matches!(error, crate::StorageError::Unsupported { .. }),
            requeue: false,
        }
    }

    pub(crate) fn dispatch(error: &TransportError) -> Self {
        Failure {
            reason: FailureReason::DispatchFailed,
            error_type: "bus_core::TransportError".into(),
            message: format!("releasing the handler's outgoing messages failed: {error}"),
            handler: None,
            causes: Vec::new(),
            unrecoverable: false,
            requeue: false,
        }
    }
}

impl From<HandlerError> for Failure {
    fn from(error: HandlerError) -> Self {
        Failure::from_handler(&error)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}
