//! NServiceBus interop: reading messages NServiceBus endpoints send, and sending messages
//! with the headers NServiceBus reads.
//!
//! On RabbitMQ NServiceBus carries its headers as AMQP headers and the message, serialized
//! by its JSON serializer, as the body
//! (<https://docs.particular.net/nservicebus/messaging/headers>,
//! <https://docs.particular.net/transports/rabbitmq/>). The headers read and written:
//!
//! | NServiceBus header | bus |
//! |---|---|
//! | `NServiceBus.MessageId` | message id |
//! | `NServiceBus.EnclosedMessageTypes` | message type (see below) |
//! | `NServiceBus.CorrelationId` | correlation id |
//! | `NServiceBus.ConversationId` | `bus-conversation-id` |
//! | `NServiceBus.RelatedTo` | `bus-causation-id` |
//! | `NServiceBus.TimeSent` (`yyyy-MM-dd HH:mm:ss:ffffff Z`) | sent time |
//! | `NServiceBus.ContentType` | content type |
//! | `NServiceBus.MessageIntent`, `NServiceBus.ReplyToAddress`, others | kept as they are |
//!
//! # Receiving
//!
//! Every endpoint reads these headers before routing, with no configuration, when a delivery
//! has an `NServiceBus.MessageId` or `NServiceBus.EnclosedMessageTypes` header. The first
//! type of `NServiceBus.EnclosedMessageTypes` (assembly-qualified .NET names,
//! `Namespace.Type, Assembly, Version=...`, several separated by `;`) is the message type:
//! the wire name it is mapped to ([`NServiceBus::map`], by the full name before the first
//! comma, so that an assembly's version does not matter), or, unmapped, that full name
//! itself. Every header is kept as it is, for handlers and for the error queue. A delivery
//! with neither a message id nor a type, or an unreadable `NServiceBus.TimeSent`, goes to
//! the error queue with the reason.
//!
//! A message that arrived with NServiceBus headers and fails, for whatever reason, goes to
//! the error queue with the headers ServicePulse reads as well
//! (`NServiceBus.ExceptionInfo.*`, `NServiceBus.FailedQ`, `NServiceBus.TimeOfFailure`, see
//! [`header`]).
//!
//! # Sending
//!
//! Opt-in per message type ([`crate::BusBuilder::nservicebus_for`]): the headers above are
//! written beside the bus's own, `NServiceBus.MessageIntent` being `Send` for commands and
//! replies and `Publish` for events. NServiceBus reads `NServiceBus.MessageId` as any
//! string, but its conversation and correlation ids as GUIDs by default: the bus's own ids
//! are UUIDs.

use std::borrow::Cow;
use std::time::SystemTime;

use crate::envelope::{header as bus, Envelope, Headers, MessageId};
use crate::failure::{Failure, FailureReason};
use crate::runtime::{NameMap, Runtime};
use crate::transport::Destination;

/// The NServiceBus header names.
pub mod header {
    /// The message id.
    pub const MESSAGE_ID: &str = "NServiceBus.MessageId";
    /// The assembly-qualified .NET types of the message, `;`-separated.
    pub const ENCLOSED_MESSAGE_TYPES: &str = "NServiceBus.EnclosedMessageTypes";
    /// The conversation id.
    pub const CONVERSATION_ID: &str = "NServiceBus.ConversationId";
    /// The correlation id.
    pub const CORRELATION_ID: &str = "NServiceBus.CorrelationId";
    /// The id of the message that caused this one.
    pub const RELATED_TO: &str = "NServiceBus.RelatedTo";
    /// `Send`, `Publish`, `Reply`, `Subscribe`, `Unsubscribe`.
    pub const MESSAGE_INTENT: &str = "NServiceBus.MessageIntent";
    /// Where replies go.
    pub const REPLY_TO_ADDRESS: &str = "NServiceBus.ReplyToAddress";
    /// When the message was sent, `yyyy-MM-dd HH:mm:ss:ffffff Z` in UTC.
    pub const TIME_SENT: &str = "NServiceBus.TimeSent";
    /// The body's content type.
    pub const CONTENT_TYPE: &str = "NServiceBus.ContentType";
    /// The sending endpoint.
    pub const ORIGINATING_ENDPOINT: &str = "NServiceBus.OriginatingEndpoint";
    /// On a failed message: the error's type.
    pub const EXCEPTION_TYPE: &str = "NServiceBus.ExceptionInfo.ExceptionType";
    /// On a failed message: the error's text.
    pub const EXCEPTION_MESSAGE: &str = "NServiceBus.ExceptionInfo.Message";
    /// On a failed message: the handler that failed, or the endpoint.
    pub const EXCEPTION_SOURCE: &str = "NServiceBus.ExceptionInfo.Source";
    /// On a failed message: the error and its causes (there is no stack trace to give).
    pub const EXCEPTION_STACK_TRACE: &str = "NServiceBus.ExceptionInfo.StackTrace";
    /// On a failed message: where it failed, and where ServiceControl sends it back.
    pub const FAILED_Q: &str = "NServiceBus.FailedQ";
    /// On a failed message: the endpoint that failed it.
    pub const PROCESSING_ENDPOINT: &str = "NServiceBus.ProcessingEndpoint";
    /// On a failed message: when, in the [`super::format_time`] format.
    pub const TIME_OF_FAILURE: &str = "NServiceBus.TimeOfFailure";
}

/// NServiceBus configuration: how a message type is sent, and which .NET types stand for
/// which wire names on receiving.
///
/// ```
/// use bus_core::NServiceBus;
/// let nsb = NServiceBus::new()
///     .message_type("Shop.Contracts.OrderPlaced, Shop.Contracts, Version=1.0.0.0")
///     .reply_to_address("sales")
///     .map("Shop.Contracts.OrderShipped, Shop.Contracts", "shop.OrderShipped");
/// # drop(nsb);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NServiceBus {
    message_type: Option<String>,
    reply_to_address: Option<String>,
    originating_endpoint: Option<String>,
    maps: Vec<(String, String)>,
}

impl NServiceBus {
    /// Nothing configured.
    pub fn new() -> Self {
        Self::default()
    }

    /// The .NET type written in `NServiceBus.EnclosedMessageTypes` (default: the wire name).
    pub fn message_type(mut self, type_name: impl Into<String>) -> Self {
        self.message_type = Some(type_name.into());
        self
    }

    /// `NServiceBus.ReplyToAddress` (default: none).
    pub fn reply_to_address(mut self, address: impl Into<String>) -> Self {
        self.reply_to_address = Some(address.into());
        self
    }

    /// `NServiceBus.OriginatingEndpoint` (default: none).
    pub fn originating_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.originating_endpoint = Some(endpoint.into());
        self
    }

    /// Read messages of .NET type `type_name` (assembly-qualified or not: only the part before
    /// the first comma counts) as the bus message type `wire_name`.
    pub fn map(mut self, type_name: impl Into<String>, wire_name: impl Into<String>) -> Self {
        self.maps.push((type_name.into(), wire_name.into()));
        self
    }
}

/// Why a message could not be read as an NServiceBus message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NServiceBusError {
    /// A required header is absent or empty.
    #[error("the NServiceBus message has no `{0}` header")]
    MissingHeader(&'static str),
    /// A header that cannot be read.
    #[error("{0}")]
    Invalid(String),
}

impl NServiceBusError {
    fn failure(self) -> Failure {
        let reason = match self {
            NServiceBusError::MissingHeader(_) => FailureReason::MissingHeader,
            NServiceBusError::Invalid(_) => FailureReason::Deserialization,
        };
        Failure::rejected(reason, self.to_string())
    }
}

/// The configuration a bus runs with: full type name to wire name, and per type how it is
/// sent.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rules {
    pub(crate) types: NameMap<String>,
    pub(crate) by_type: NameMap<NServiceBus>,
}

impl Rules {
    fn add_maps(&mut self, config: &NServiceBus) {
        for (type_name, wire) in &config.maps {
            self.types
                .insert(full_name(type_name).to_string(), wire.clone());
        }
    }

    /// `None` when nothing is configured.
    pub(crate) fn built(&self) -> Option<Box<Rules>> {
        (!self.types.is_empty() || !self.by_type.is_empty()).then(|| Box::new(self.clone()))
    }
}

impl crate::BusBuilder {
    /// Read NServiceBus message types as wire names per `config`'s [`NServiceBus::map`]
    /// entries (see [`crate::nservicebus`]). Unmapped, a type's full name is its wire name.
    ///
    /// ```
    /// use bus_core::{Bus, NServiceBus};
    /// let builder = Bus::builder().nservicebus(
    ///     NServiceBus::new().map("Shop.Contracts.OrderPlaced, Shop.Contracts", "shop.sales.OrderPlaced"),
    /// );
    /// # drop(builder);
    /// ```
    pub fn nservicebus(mut self, config: NServiceBus) -> Self {
        self.nservicebus.add_maps(&config);
        self
    }

    /// Send messages of type `M` with NServiceBus headers per `config`; its .NET type (and
    /// every [`NServiceBus::map`] entry) is read back as `M`.
    pub fn nservicebus_for<M: crate::Message>(mut self, config: NServiceBus) -> Self {
        self.nservicebus.add_maps(&config);
        if let Some(type_name) = &config.message_type {
            self.nservicebus
                .types
                .insert(full_name(type_name).to_string(), M::NAME.to_string());
        }
        self.nservicebus.by_type.insert(M::NAME.to_string(), config);
        self
    }
}

/// A .NET type's full name: an assembly-qualified name before its first comma.
fn full_name(type_name: &str) -> &str {
    type_name.split(',').next().unwrap_or("").trim()
}

/// Whether a delivery carries NServiceBus headers: one ordered-map lookup, as the bus's own
/// messages have no header starting with `NServiceBus.`.
fn has_marker(h: &Headers) -> bool {
    has_marker_in(&h.custom)
}

fn has_marker_in(custom: &std::collections::BTreeMap<String, String>) -> bool {
    custom
        .range::<str, _>((
            std::ops::Bound::Included("NServiceBus."),
            std::ops::Bound::Excluded("NServiceBus/"),
        ))
        .next()
        .is_some()
}

/// The bus message a received NServiceBus message stands for, its types mapped by
/// `config`'s [`NServiceBus::map`] entries; `None` for a delivery with no NServiceBus header.
pub fn read(
    envelope: &Envelope,
    config: &NServiceBus,
) -> Result<Option<Envelope>, NServiceBusError> {
    read_with(envelope, &|name: &str| {
        config
            .maps
            .iter()
            .find(|(t, _)| full_name(t) == name)
            .map(|(_, w)| w.clone())
    })
}

fn read_with(
    envelope: &Envelope,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Envelope>, NServiceBusError> {
    let h = &envelope.headers;
    if !has_marker(h) {
        return Ok(None);
    }
    let get = |name: &str| h.get(name).filter(|v| !v.is_empty());
    let message_id = get(header::MESSAGE_ID)
        .or((!h.message_id.is_empty()).then_some(h.message_id.as_str()))
        .ok_or(NServiceBusError::MissingHeader(header::MESSAGE_ID))?;
    let message_type = match get(header::ENCLOSED_MESSAGE_TYPES) {
        Some(types) => {
            let first = full_name(types.split(';').next().unwrap_or(""));
            if first.is_empty() {
                return Err(NServiceBusError::Invalid(format!(
                    "`{}` `{types}` names no .NET type",
                    header::ENCLOSED_MESSAGE_TYPES
                )));
            }
            lookup(first).unwrap_or_else(|| first.to_string())
        }
        None if !h.message_type.is_empty() => h.message_type.to_string(),
        None => {
            return Err(NServiceBusError::MissingHeader(
                header::ENCLOSED_MESSAGE_TYPES,
            ))
        }
    };
    let sent_at = match get(header::TIME_SENT) {
        Some(time) => Some(parse_time(time).ok_or_else(|| {
            NServiceBusError::Invalid(format!(
                "`{}` `{time}` is not in NServiceBus's `yyyy-MM-dd HH:mm:ss:ffffff Z` format",
                header::TIME_SENT
            ))
        })?),
        None => h.sent_at,
    };
    let content_type = match get(header::CONTENT_TYPE) {
        Some(ct) => Cow::Owned(ct.to_string()),
        None if h.content_type.is_empty() => Cow::Borrowed("application/json"),
        None => h.content_type.clone(),
    };
    let mut custom = h.custom.clone();
    for (from, to) in [
        (header::CONVERSATION_ID, bus::CONVERSATION_ID),
        (header::RELATED_TO, bus::CAUSATION_ID),
    ] {
        if let Some(value) = get(from) {
            custom.insert(to.to_string(), value.to_string());
        }
    }
    let headers = Headers {
        message_id: MessageId::from(message_id),
        message_type: Cow::Owned(message_type),
        content_type,
        correlation_id: get(header::CORRELATION_ID)
            .map(str::to_string)
            .or_else(|| h.correlation_id.clone()),
        sent_at,
        custom,
    };
    Ok(Some(Envelope {
        headers: std::sync::Arc::new(headers),
        body: envelope.body.clone(),
    }))
}

/// The pipeline's reading: `mapped` is what an earlier format made of `received`, if anything.
pub(crate) fn incoming(
    runtime: &Runtime,
    received: &Envelope,
    mapped: Option<Box<Envelope>>,
) -> Result<Option<Box<Envelope>>, Failure> {
    let envelope = mapped.as_deref().unwrap_or(received);
    if !has_marker(&envelope.headers) {
        return Ok(mapped);
    }
    let types = runtime.nservicebus.as_deref().map(|r| &r.types);
    let lookup = |name: &str| types.and_then(|m| m.get(name)).cloned();
    match read_with(envelope, &lookup) {
        Ok(Some(envelope)) => Ok(Some(Box::new(envelope))),
        Ok(None) => Ok(mapped),
        Err(e) => Err(e.failure()),
    }
}

/// Write the NServiceBus headers of a bus message beside its own.
pub fn write(config: &NServiceBus, destination: &Destination, mut headers: Headers) -> Headers {
    let type_name = config
        .message_type
        .clone()
        .unwrap_or_else(|| headers.message_type.to_string());
    let intent = match destination {
        Destination::Event(_) => "Publish",
        Destination::Reply(_) => "Reply",
        Destination::Endpoint(_) | Destination::ErrorQueue(_) => "Send",
    };
    let written = [
        (header::MESSAGE_ID, Some(headers.message_id.to_string())),
        (header::ENCLOSED_MESSAGE_TYPES, Some(type_name)),
        (
            header::CONVERSATION_ID,
            headers.conversation_id().map(str::to_string),
        ),
        (
            header::CORRELATION_ID,
            headers.correlation_id().map(str::to_string),
        ),
        (
            header::RELATED_TO,
            headers.causation_id().map(str::to_string),
        ),
        (header::MESSAGE_INTENT, Some(intent.to_string())),
        (header::REPLY_TO_ADDRESS, config.reply_to_address.clone()),
        (
            header::ORIGINATING_ENDPOINT,
            config.originating_endpoint.clone(),
        ),
        (header::TIME_SENT, headers.sent_at.map(format_time)),
        (
            header::CONTENT_TYPE,
            (!headers.content_type.is_empty()).then(|| headers.content_type.to_string()),
        ),
    ];
    for (name, value) in written {
        if let Some(value) = value {
            headers.custom.insert(name.to_string(), value);
        }
    }
    headers
}

/// The sending hook: the headers where the message's type is configured for them.
pub(crate) fn apply(runtime: &Runtime, destination: &Destination, headers: Headers) -> Headers {
    match runtime
        .nservicebus
        .as_deref()
        .and_then(|r| r.by_type.get(headers.message_type.as_ref()))
    {
        Some(config) => write(config, destination, headers),
        None => headers,
    }
}

/// The error-queue headers ServicePulse reads
/// (<https://docs.particular.net/nservicebus/messaging/headers#error-forwarding-headers>),
/// beside the bus's own failure headers, on a failed message that arrived with NServiceBus
/// headers: so that a ServiceControl instance reading the error queue can show and retry it.
/// `NServiceBus.FailedQ` is the logical endpoint name: ServiceControl returns the message
/// there, and an endpoint's queue name is what the transport's naming makes of it.
pub(crate) fn failed(
    custom: &mut std::collections::BTreeMap<String, String>,
    failure: &Failure,
    endpoint: &str,
) {
    if !has_marker_in(custom) {
        return;
    }
    let mut trace = format!("{}: {}", failure.error_type, failure.message);
    for cause in &failure.causes {
        trace.push_str("\n ---> ");
        trace.push_str(cause);
    }
    let source = failure
        .handler
        .clone()
        .unwrap_or_else(|| endpoint.to_string());
    for (name, value) in [
        (header::EXCEPTION_TYPE, failure.error_type.clone()),
        (header::EXCEPTION_MESSAGE, failure.message.clone()),
        (header::EXCEPTION_SOURCE, source),
        (header::EXCEPTION_STACK_TRACE, trace),
        (header::FAILED_Q, endpoint.to_string()),
        (header::PROCESSING_ENDPOINT, endpoint.to_string()),
        (header::TIME_OF_FAILURE, format_time(SystemTime::now())),
    ] {
        custom.insert(name.to_string(), value);
    }
}

/// `yyyy-MM-dd HH:mm:ss:ffffff Z` (NServiceBus `DateTimeOffsetHelper`), always UTC.
pub fn format_time(time: SystemTime) -> String {
    // `2026-01-02T03:04:05.123456Z`: the same fields at the same places.
    let iso = humantime::format_rfc3339_micros(time).to_string();
    format!("{} {}:{} Z", &iso[..10], &iso[11..19], &iso[20..26])
}

/// The inverse of [`format_time`]; fewer fraction digits are accepted too.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let rest = text.strip_suffix(" Z")?;
    if b.len() < 21 || b[10] != b' ' || b[19] != b':' {
        return None;
    }
    let fraction = rest.get(20..)?;
    if fraction.is_empty() || !fraction.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let iso = format!("{}T{}.{fraction}Z", &rest[..10], &rest[11..19]);
    humantime::parse_rfc3339(&iso).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_sent_round_trips_in_the_nservicebus_format() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_767_323_045, 123_456_000);
        assert_eq!(format_time(t), "2026-01-02 03:04:05:123456 Z");
        assert_eq!(parse_time("2026-01-02 03:04:05:123456 Z"), Some(t));
        assert_eq!(parse_time("2026-01-02T03:04:05.123456Z"), None);
        assert_eq!(parse_time("2026-01-02 03:04:05:123456"), None);
        assert_eq!(parse_time(""), None);
        assert_eq!(full_name("A.B, A, Version=1.0.0.0"), "A.B");
    }
}
