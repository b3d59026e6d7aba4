//! The envelope: headers plus body, as every transport carries it.
//!
//! The body is the serialized message alone (so other languages can read it); everything else is
//! a header. Transports map the well-known headers onto native properties (AMQP `message_id`,
//! `type`, `content_type`, `correlation_id`, `timestamp`) and the rest onto a header table.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::message::AnyMessage;

/// Header names: the one table every transport uses.
///
/// The first five name the envelope's own fields ([`Headers::message_id`] and the others) on
/// transports that have no native property for them: NATS headers, Redis stream fields. (AMQP
/// carries them as the properties `message_id`, `type`, `content_type`, `correlation_id` and
/// `timestamp`.) They never appear in [`Headers::custom`]. The others are headers the bus
/// reads and writes in the custom header table.
///
/// [`Headers::message_id`]: crate::Headers::message_id
/// [`Headers::custom`]: crate::Headers::custom
pub mod header {
    /// The message id ([`Headers::message_id`](crate::Headers::message_id)).
    pub const MESSAGE_ID: &str = "bus-message-id";
    /// The message type, i.e. its wire name
    /// ([`Headers::message_type`](crate::Headers::message_type)).
    pub const MESSAGE_TYPE: &str = "bus-message-type";
    /// The body's content type ([`Headers::content_type`](crate::Headers::content_type)).
    pub const CONTENT_TYPE: &str = "bus-content-type";
    /// The correlation id ([`Headers::correlation_id`](crate::Headers::correlation_id)).
    pub const CORRELATION_ID: &str = "bus-correlation-id";
    /// When the message was sent ([`Headers::sent_at`](crate::Headers::sent_at)), RFC 3339,
    /// UTC, with nanoseconds: `2026-01-02T03:04:05.123456789Z`.
    pub const SENT_TIME: &str = "bus-sent-time";
    /// Conversation id: shared by every message caused, directly or not, by one root message.
    /// A root message does not carry it: its own message id is the conversation id.
    pub const CONVERSATION_ID: &str = "bus-conversation-id";
    /// Causation id: the message id of the message whose handler sent this one.
    pub const CAUSATION_ID: &str = "bus-causation-id";
    /// On a request: the reply address of the bus instance that waits for the answer (see
    /// [`crate::Bus::request`]). A handler's reply goes there.
    pub const REPLY_TO: &str = "bus-reply-to";
    /// On a reply: the message id of the request it answers.
    pub const IN_REPLY_TO: &str = "bus-in-reply-to";
    /// On a scheduled message while it waits on a broker: when it is due, in milliseconds since
    /// the Unix epoch (see [`crate::SendOptions::deliver_at`]).
    pub const DELIVER_AT: &str = "bus-deliver-at";
    /// On a scheduled message while it waits on a broker: where it goes once due, as
    /// [`crate::Destination::to_header`] writes it (`endpoint:sales`, `event:shop.OrderPlaced`).
    pub const DESTINATION: &str = "bus-destination";
    /// How many delayed retries this message has already been through.
    pub const DELAYED_RETRIES: &str = "bus-delayed-retries";
    /// How many handler attempts it had before its current round, written with each delayed
    /// retry.
    pub const ATTEMPTS: &str = "bus-attempts";
    /// Why the message was moved to the error queue (see [`crate::FailureReason`]).
    pub const FAILURE_REASON: &str = "bus-failure-reason";
    /// The Rust type of the error, or `panic` / `timeout`.
    pub const FAILURE_ERROR_TYPE: &str = "bus-failure-error-type";
    /// The error's text.
    pub const FAILURE_ERROR: &str = "bus-failure-error";
    /// What caused the error: the texts of its sources, outermost first, each followed by
    /// `: ` and the next (as `anyhow` prints a chain with `{:#}`). Absent when the error had
    /// no source.
    pub const FAILURE_CAUSES: &str = "bus-failure-causes";
    /// The handler that failed, when one ran.
    pub const FAILURE_HANDLER: &str = "bus-failure-handler";
    /// The endpoint whose queue the message came from.
    pub const FAILURE_ENDPOINT: &str = "bus-failure-endpoint";
    /// Total handler attempts made.
    pub const FAILURE_ATTEMPTS: &str = "bus-failure-attempts";
    /// When the message was moved (RFC 3339, UTC).
    pub const FAILURE_TIME: &str = "bus-failure-time";
    /// How many times an operator sent the message back from the error queue to its endpoint
    /// (the `bus` command's `errors retry`). Its failure headers stay as the history of its
    /// last failure.
    pub const OPERATOR_RETRIES: &str = "bus-operator-retries";
    /// When an operator last sent it back (RFC 3339, UTC).
    pub const OPERATOR_RETRY_TIME: &str = "bus-operator-retry-time";
    /// The W3C trace context of the span that sent the message
    /// (`00-<trace id>-<parent span id>-<flags>`), so that its handling joins the sender's
    /// trace. Written with the `opentelemetry` feature, from any sender that has one.
    pub const TRACEPARENT: &str = "traceparent";
    /// Vendor-specific trace data that goes with [`TRACEPARENT`], as W3C trace context defines
    /// it.
    pub const TRACESTATE: &str = "tracestate";
}

/// A message's id: text (a UUIDv7 when the bus makes it), kept inline up to 36 bytes, the
/// length of a UUID as text, so a message id costs no allocation of its own. Longer ids, as
/// other senders may use, live on the heap. Reads as a `&str` (it derefs to `str`) and compares
/// with string types.
///
/// ```
/// use bus_core::MessageId;
///
/// let id = MessageId::from("0190b6e4-5c1a-7cc2-9d6e-1a2b3c4d5e6f");
/// assert_eq!(id, "0190b6e4-5c1a-7cc2-9d6e-1a2b3c4d5e6f");
/// assert_eq!(id.len(), 36);
/// let text: String = id.to_string();
/// assert_eq!(MessageId::from(text), id);
/// ```
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(smallstr::SmallString<[u8; 36]>);

impl Clone for MessageId {
    /// A copy of the bytes: `SmallString`'s own `clone` extends byte by byte.
    fn clone(&self) -> Self {
        MessageId(smallstr::SmallString::from_str(self.as_str()))
    }
}

impl MessageId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Default for MessageId {
    /// The empty id (a message without one is rejected on receive).
    fn default() -> Self {
        MessageId(smallstr::SmallString::new())
    }
}

impl std::ops::Deref for MessageId {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for MessageId {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

impl std::borrow::Borrow<str> for MessageId {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl From<&str> for MessageId {
    fn from(id: &str) -> Self {
        MessageId(id.into())
    }
}

impl From<&String> for MessageId {
    fn from(id: &String) -> Self {
        MessageId(id.as_str().into())
    }
}

impl From<String> for MessageId {
    /// Inline when it fits (the `String`'s buffer is then freed), else the `String`'s own
    /// buffer is kept.
    fn from(id: String) -> Self {
        if id.len() <= 36 {
            MessageId(id.as_str().into())
        } else {
            MessageId(id.into())
        }
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> Self {
        id.0.into_string()
    }
}

impl PartialEq<str> for MessageId {
    fn eq(&self, other: &str) -> bool {
        self.0.as_str() == other
    }
}

impl PartialEq<&str> for MessageId {
    fn eq(&self, other: &&str) -> bool {
        self.0.as_str() == *other
    }
}

impl PartialEq<String> for MessageId {
    fn eq(&self, other: &String) -> bool {
        self.0.as_str() == other.as_str()
    }
}

impl PartialEq<MessageId> for str {
    fn eq(&self, other: &MessageId) -> bool {
        self == other.0.as_str()
    }
}

impl PartialEq<MessageId> for &str {
    fn eq(&self, other: &MessageId) -> bool {
        *self == other.0.as_str()
    }
}

impl PartialEq<MessageId> for String {
    fn eq(&self, other: &MessageId) -> bool {
        self.as_str() == other.0.as_str()
    }
}

/// The metadata that travels with every message.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Headers {
    /// Unique id of this message (UUIDv7 when the bus creates it). Kept across retries.
    pub message_id: MessageId,
    /// The message's wire name, e.g. `sales.PlaceOrder`. Routing reads only this.
    ///
    /// Borrowed from the message type's `NAME` when the bus builds the headers (no allocation
    /// per message); owned when read from the wire.
    pub message_type: Cow<'static, str>,
    /// The body's content type, e.g. `application/json`. Borrowed for the built-in codecs.
    pub content_type: Cow<'static, str>,
    /// Correlation id: given to a root message (or absent: then its message id is the
    /// correlation id) and copied to everything it causes. Read it with
    /// [`Headers::correlation_id()`], which knows that rule.
    pub correlation_id: Option<String>,
    /// When the message was sent.
    pub sent_at: Option<SystemTime>,
    /// Every other header, including the `bus-*` ones in [`header`].
    pub custom: BTreeMap<String, String>,
}

impl Headers {
    /// A custom header's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.custom.get(name).map(String::as_str)
    }

    /// The correlation id: the `correlation_id` field, or, on a root message sent without one,
    /// the message id.
    ///
    /// ```
    /// use bus_core::Headers;
    ///
    /// let root = Headers { message_id: "m-1".into(), ..Headers::default() };
    /// assert_eq!(root.correlation_id(), Some("m-1"));
    /// let given = Headers { correlation_id: Some("order-7".into()), ..root };
    /// assert_eq!(given.correlation_id(), Some("order-7"));
    /// ```
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id
            .as_deref()
            .or_else(|| (!self.message_id.is_empty()).then_some(self.message_id.as_str()))
    }

    /// The conversation id: the `bus-conversation-id` header, or, on a root message (which
    /// does not carry the header: it starts its own conversation), the message id.
    ///
    /// ```
    /// use bus_core::Headers;
    ///
    /// let root = Headers { message_id: "m-1".into(), ..Headers::default() };
    /// assert_eq!(root.conversation_id(), Some("m-1"));
    /// ```
    pub fn conversation_id(&self) -> Option<&str> {
        self.get(header::CONVERSATION_ID)
            .or_else(|| (!self.message_id.is_empty()).then_some(self.message_id.as_str()))
    }

    /// The causation id.
    pub fn causation_id(&self) -> Option<&str> {
        self.get(header::CAUSATION_ID)
    }

    /// Delayed retries already made (0 when the header is absent or unreadable).
    pub fn delayed_retries(&self) -> u32 {
        self.get(header::DELAYED_RETRIES)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// The message body: bytes from the wire, or a typed value carried in-process.
#[derive(Clone)]
pub enum Body {
    /// Serialized bytes, exactly as they arrived.
    Bytes(Bytes),
    /// A typed message, when the transport is in-process and no serialization was asked for.
    Message(Arc<dyn AnyMessage>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => write!(f, "Bytes({s:?})"),
                Err(_) => write!(f, "Bytes({} bytes, not UTF-8)", b.len()),
            },
            Body::Message(m) => write!(f, "Message({m:?})"),
        }
    }
}

/// Headers and body.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Metadata.
    pub headers: Arc<Headers>,
    /// The message.
    pub body: Body,
}

impl Envelope {
    /// An envelope around raw bytes, e.g. to feed a transport from a test or a bridge.
    pub fn from_bytes(headers: Headers, body: impl Into<Bytes>) -> Self {
        Envelope {
            headers: Arc::new(headers),
            body: Body::Bytes(body.into()),
        }
    }
}
