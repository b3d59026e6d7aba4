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
}

impl FailureReason {
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
        }
    }
}

/// One failed attempt (or a message rejected before any attempt).
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) reason: FailureReason,
    pub(crate) error_type: String,
    pub(crate) message: String,
    pub(crate) handler: Option<String>,
    /// Retrying cannot help.
    pub(crate) unrecoverable: bool,
}

impl Failure {
    pub(crate) fn rejected(reason: FailureReason, message: impl Into<String>) -> Self {
        Failure {
            reason,
            error_type: reason.as_str().to_string(),
            message: message.into(),
            handler: None,
            unrecoverable: true,
        }
    }

    pub(crate) fn from_handler(error: &HandlerError) -> Self {
        Failure {
            reason: FailureReason::HandlerError,
            error_type: error.type_name().to_string(),
            message: error.message().to_string(),
            handler: None,
            unrecoverable: error.is_unrecoverable(),
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
            unrecoverable: false,
        }
    }

    pub(crate) fn timeout(limit: Duration) -> Self {
        Failure {
            reason: FailureReason::Timeout,
            error_type: "timeout".into(),
            message: format!("the handler did not finish within {limit:?}"),
            handler: None,
            unrecoverable: false,
        }
    }

    pub(crate) fn dispatch(error: &TransportError) -> Self {
        Failure {
            reason: FailureReason::DispatchFailed,
            error_type: "bus_core::TransportError".into(),
            message: format!("releasing the handler's outgoing messages failed: {error}"),
            handler: None,
            unrecoverable: false,
        }
    }

    pub(crate) fn with_handler(mut self, handler: &str) -> Self {
        self.handler = Some(handler.to_string());
        self
    }
}
