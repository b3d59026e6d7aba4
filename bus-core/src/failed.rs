//! Messages in an error queue, read through any transport: what failed, why, and the message
//! itself, typed.

use std::fmt;

use crate::codec::{decode_envelope, decode_envelope_as, Codecs};
use crate::envelope::{header, Envelope};
use crate::error::CodecError;
use crate::message::{AnyMessage, Message};

/// A message from an error queue, with the failure headers the bus wrote when it moved it
/// there. Read them with [`Bus::failed_messages`](crate::Bus::failed_messages), or wrap an
/// envelope from [`Transport::browse`](crate::Transport::browse).
///
/// ```
/// use bus_core::{header, Envelope, FailedMessage, Headers};
///
/// let mut headers = Headers { message_id: "m-1".into(), ..Headers::default() };
/// headers.custom.insert(header::FAILURE_REASON.into(), "handler-error".into());
/// headers.custom.insert(header::FAILURE_ERROR.into(), "carrier down".into());
/// headers.custom.insert(header::FAILURE_ATTEMPTS.into(), "5".into());
/// let failed = FailedMessage::new(Envelope::from_bytes(headers, &b"{}"[..]));
/// assert_eq!(failed.reason(), Some("handler-error"));
/// assert_eq!(failed.error(), Some("carrier down"));
/// assert_eq!(failed.attempts(), Some(5));
/// ```
#[derive(Clone)]
pub struct FailedMessage {
    envelope: Envelope,
}

impl FailedMessage {
    /// A message read from an error queue.
    pub fn new(envelope: Envelope) -> Self {
        FailedMessage { envelope }
    }

    /// The envelope as it sits in the error queue: the original headers and body, plus the
    /// failure headers.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The message's own id (the one it was sent with).
    pub fn message_id(&self) -> &str {
        &self.envelope.headers.message_id
    }

    /// The message's wire name.
    pub fn message_type(&self) -> &str {
        &self.envelope.headers.message_type
    }

    /// Why it failed: a [`FailureReason`](crate::FailureReason) as text, e.g. `handler-error`.
    pub fn reason(&self) -> Option<&str> {
        self.header(header::FAILURE_REASON)
    }

    /// The error's text.
    pub fn error(&self) -> Option<&str> {
        self.header(header::FAILURE_ERROR)
    }

    /// The error's Rust type, or `panic` / `timeout`.
    pub fn error_type(&self) -> Option<&str> {
        self.header(header::FAILURE_ERROR_TYPE)
    }

    /// What caused the error, outermost first, as one text (see
    /// [`header::FAILURE_CAUSES`]).
    pub fn causes(&self) -> Option<&str> {
        self.header(header::FAILURE_CAUSES)
    }

    /// The handler that failed, when one ran.
    pub fn handler(&self) -> Option<&str> {
        self.header(header::FAILURE_HANDLER)
    }

    /// The endpoint whose queue it came from.
    pub fn endpoint(&self) -> Option<&str> {
        self.header(header::FAILURE_ENDPOINT)
    }

    /// Handler attempts made before it was moved.
    pub fn attempts(&self) -> Option<u32> {
        self.header(header::FAILURE_ATTEMPTS)?.parse().ok()
    }

    /// When it was moved (RFC 3339, UTC).
    pub fn failed_at(&self) -> Option<&str> {
        self.header(header::FAILURE_TIME)
    }

    /// The message, decoded as `M`; an error when it is another type or does not decode.
    pub fn decode<M: Message>(&self, codecs: &Codecs) -> Result<M, CodecError> {
        decode_envelope_as(codecs, &self.envelope)
    }

    /// The message, decoded as whatever registered type its wire name names (to send it
    /// again with [`Bus::dispatch_any`](crate::Bus::dispatch_any), say).
    pub fn decode_any(&self, codecs: &Codecs) -> Result<Box<dyn AnyMessage>, CodecError> {
        decode_envelope(codecs, &self.envelope)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.envelope.headers.get(name)
    }
}

impl fmt::Debug for FailedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailedMessage")
            .field("message_id", &self.message_id())
            .field("message_type", &self.message_type())
            .field("reason", &self.reason())
            .field("error", &self.error())
            .field("attempts", &self.attempts())
            .finish()
    }
}
