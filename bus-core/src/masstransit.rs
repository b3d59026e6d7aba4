//! MassTransit interop: reading MassTransit's JSON envelope as bus messages, and sending bus
//! messages in it.
//!
//! The envelope is the one MassTransit's `SystemTextJsonMessageSerializer` and
//! `NewtonsoftJsonMessageSerializer` write, content type `application/vnd.masstransit+json`
//! (<https://masstransit.io/documentation/configuration/serialization>, "Envelope"):
//! `messageId`, `requestId`, `correlationId`, `conversationId`, `initiatorId`,
//! `sourceAddress`, `destinationAddress`, `responseAddress`, `faultAddress`, `messageType`
//! (message URNs, `urn:message:Namespace:Type`, most specific first; see
//! <https://masstransit.io/documentation/concepts/messages#message-names>), `message`,
//! `sentTime`, `headers` and `host`.
//!
//! # Receiving
//!
//! Every endpoint reads the envelope before routing, with no configuration: a delivery whose
//! content type (the native property, or a `Content-Type` header) is
//! `application/vnd.masstransit+json` becomes a plain bus message whose body is `message`.
//! The message type is the wire name the first URN of `messageType` is mapped to
//! ([`MassTransit::map`], [`crate::BusBuilder::masstransit`]); an unmapped URN stands for the
//! wire name after its last `:` (`urn:message:Shop.Contracts:OrderPlaced` is
//! `OrderPlaced`). `messageId`, `correlationId`, `conversationId`, `initiatorId` and
//! `sentTime` become the bus's message id, correlation id, conversation id, causation id and
//! sent time; the envelope's `headers` become custom headers of the same names; the rest
//! custom headers named in [`header`]. An envelope that is not JSON, lacks `messageId`,
//! `messageType` or `message`, or has an unreadable `sentTime` goes to the error queue with
//! the reason.
//!
//! # Sending
//!
//! Opt-in per message type ([`crate::BusBuilder::masstransit_for`]): the body becomes
//! `message` of an envelope with the configured URN, sent as
//! `application/vnd.masstransit+json`, the bus headers kept beside it so that a bus reads it
//! as its own. MassTransit reads `messageId`, `correlationId` and `conversationId` as GUIDs:
//! the bus's own ids are UUIDs, an id given with [`crate::SendOptions::message_id`] must be
//! one too for MassTransit to accept the message.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::codec::Codecs;
use crate::envelope::{header as bus, Body, Envelope, Headers, MessageId};
use crate::failure::{Failure, FailureReason};
use crate::runtime::{NameMap, Runtime};
use crate::transport::Destination;

/// The media type of MassTransit's JSON envelope.
pub const CONTENT_TYPE: &str = "application/vnd.masstransit+json";

/// Names of the custom headers that hold the envelope fields a bus message has no field for.
pub mod header {
    /// `requestId`.
    pub const REQUEST_ID: &str = "bus-mt-request-id";
    /// `sourceAddress`.
    pub const SOURCE_ADDRESS: &str = "bus-mt-source-address";
    /// `destinationAddress`.
    pub const DESTINATION_ADDRESS: &str = "bus-mt-destination-address";
    /// `responseAddress`.
    pub const RESPONSE_ADDRESS: &str = "bus-mt-response-address";
    /// `faultAddress`.
    pub const FAULT_ADDRESS: &str = "bus-mt-fault-address";
    /// Every URN of `messageType`, comma-separated (a URN has no comma).
    pub const MESSAGE_TYPES: &str = "bus-mt-message-type";
    /// `host`, as JSON text.
    pub const HOST: &str = "bus-mt-host";
}

/// MassTransit configuration: how a message type is sent in the envelope, and which URNs
/// stand for which wire names on receiving.
///
/// ```
/// use bus_core::MassTransit;
/// let mt = MassTransit::new()
///     .message_type("urn:message:Shop.Contracts:OrderPlaced")
///     .source_address("rabbitmq://localhost/sales");
/// let mapped = MassTransit::new().map("urn:message:Shop.Contracts:OrderPlaced", "shop.OrderPlaced");
/// # drop((mt, mapped));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MassTransit {
    message_type: Option<String>,
    source_address: Option<String>,
    destination_address: Option<String>,
    fault_address: Option<String>,
    maps: Vec<(String, String)>,
}

impl MassTransit {
    /// The source address written when none is configured: MassTransit requires one.
    pub const DEFAULT_SOURCE_ADDRESS: &'static str = "urn:bus";

    /// Nothing configured.
    pub fn new() -> Self {
        Self::default()
    }

    /// The message URN written in `messageType` (default: `urn:message:` and the wire name
    /// with its last `.` as `:`, which is MassTransit's own convention for a .NET type of that
    /// namespace and name).
    pub fn message_type(mut self, urn: impl Into<String>) -> Self {
        self.message_type = Some(urn.into());
        self
    }

    /// `sourceAddress` (default [`MassTransit::DEFAULT_SOURCE_ADDRESS`]).
    pub fn source_address(mut self, address: impl Into<String>) -> Self {
        self.source_address = Some(address.into());
        self
    }

    /// `destinationAddress` (default: MassTransit's short address of the destination,
    /// `queue:<endpoint>` or `exchange:<event>`).
    pub fn destination_address(mut self, address: impl Into<String>) -> Self {
        self.destination_address = Some(address.into());
        self
    }

    /// `faultAddress` (default: none; MassTransit then publishes faults).
    pub fn fault_address(mut self, address: impl Into<String>) -> Self {
        self.fault_address = Some(address.into());
        self
    }

    /// Read messages of URN `urn` as the bus message type `wire_name`.
    pub fn map(mut self, urn: impl Into<String>, wire_name: impl Into<String>) -> Self {
        self.maps.push((urn.into(), wire_name.into()));
        self
    }
}

/// Why a message could not be read or written as a MassTransit envelope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MassTransitError {
    /// A required field is absent, empty or of the wrong JSON type.
    #[error("the MassTransit envelope has no valid `{0}`; MassTransit envelopes need messageId, messageType and message")]
    MissingField(&'static str),
    /// Anything else: a body that is not JSON, an unreadable `sentTime`.
    #[error("{0}")]
    Invalid(String),
}

impl MassTransitError {
    fn failure(self) -> Failure {
        let reason = match self {
            MassTransitError::MissingField(_) => FailureReason::MissingHeader,
            MassTransitError::Invalid(_) => FailureReason::Deserialization,
        };
        Failure::rejected(reason, self.to_string())
    }
}

/// The configuration a bus runs with: URN to wire name, and per type how it is sent.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rules {
    pub(crate) urns: NameMap<String>,
    pub(crate) by_type: NameMap<MassTransit>,
}

impl Rules {
    fn add_maps(&mut self, config: &MassTransit) {
        for (urn, wire) in &config.maps {
            self.urns.insert(urn.clone(), wire.clone());
        }
    }

    /// `None` when nothing is configured: receiving then needs no lookup.
    pub(crate) fn built(&self) -> Option<Box<Rules>> {
        (!self.urns.is_empty() || !self.by_type.is_empty()).then(|| Box::new(self.clone()))
    }
}

impl crate::BusBuilder {
    /// Read MassTransit URNs as wire names per `config`'s [`MassTransit::map`] entries (see
    /// [`crate::masstransit`]). Receiving needs no configuration otherwise: an unmapped URN
    /// stands for the part after its last `:`.
    ///
    /// ```
    /// use bus_core::{Bus, MassTransit};
    /// let builder = Bus::builder().masstransit(
    ///     MassTransit::new().map("urn:message:Shop.Contracts:OrderPlaced", "shop.sales.OrderPlaced"),
    /// );
    /// # drop(builder);
    /// ```
    pub fn masstransit(mut self, config: MassTransit) -> Self {
        self.masstransit.add_maps(&config);
        self
    }

    /// Send messages of type `M` in MassTransit's envelope per `config`; its URN (and every
    /// [`MassTransit::map`] entry) is read back as `M`.
    pub fn masstransit_for<M: crate::Message>(mut self, config: MassTransit) -> Self {
        self.masstransit.add_maps(&config);
        let urn = urn_of(&config, M::NAME);
        self.masstransit.urns.insert(urn, M::NAME.to_string());
        self.masstransit.by_type.insert(M::NAME.to_string(), config);
        self
    }
}

fn is_masstransit(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(CONTENT_TYPE)
}

/// The content type a delivery declares: the native property, else a `Content-Type` header
/// (MassTransit writes both on RabbitMQ; other transports carry only the header).
fn declared_content_type(h: &Headers) -> &str {
    if !h.content_type.is_empty() {
        return &h.content_type;
    }
    h.custom
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map_or("", |(_, v)| v.as_str())
}

/// The wire name a URN stands for: the mapped one, else the part after the last `:`.
fn wire_name(lookup: &dyn Fn(&str) -> Option<String>, urn: &str) -> String {
    lookup(urn).unwrap_or_else(|| urn.rsplit(':').next().unwrap_or(urn).to_string())
}

/// The bus message a received MassTransit envelope stands for, its URNs mapped by
/// `config`'s [`MassTransit::map`] entries; `None` for a delivery that is none (decided by
/// its content type alone).
pub fn read(
    envelope: &Envelope,
    config: &MassTransit,
) -> Result<Option<Envelope>, MassTransitError> {
    read_with(envelope, &|urn: &str| {
        config
            .maps
            .iter()
            .find(|(u, _)| u == urn)
            .map(|(_, w)| w.clone())
    })
}

fn read_with(
    envelope: &Envelope,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Envelope>, MassTransitError> {
    let h = &envelope.headers;
    if !is_masstransit(declared_content_type(h)) {
        return Ok(None);
    }
    let bytes = match &envelope.body {
        Body::Bytes(bytes) => bytes,
        Body::Message(_) => return Ok(None),
    };
    let root: Map<String, Value> = match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(MassTransitError::Invalid(
                "the MassTransit envelope is not a JSON object".into(),
            ))
        }
        Err(e) => {
            return Err(MassTransitError::Invalid(format!(
                "the MassTransit envelope is not JSON: {e}"
            )))
        }
    };
    let text = |name: &str| -> Option<String> {
        match root.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    };
    let message_id = text("messageId").ok_or(MassTransitError::MissingField("messageId"))?;
    let types: Vec<&str> = match root.get("messageType") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(one)) => vec![one.as_str()],
        _ => Vec::new(),
    };
    let first = *types
        .iter()
        .find(|urn| lookup(urn).is_some())
        .or(types.first())
        .filter(|urn| !urn.is_empty())
        .ok_or(MassTransitError::MissingField("messageType"))?;
    let message = root
        .get("message")
        .filter(|m| !m.is_null())
        .ok_or(MassTransitError::MissingField("message"))?;
    let sent_at = match text("sentTime") {
        Some(time) => Some(parse_time(&time).ok_or_else(|| {
            MassTransitError::Invalid(format!(
                "the MassTransit envelope's `sentTime` `{time}` is not an ISO 8601 UTC time"
            ))
        })?),
        None => h.sent_at,
    };
    let mut custom: BTreeMap<String, String> = h
        .custom
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(Value::Object(headers)) = root.get("headers") {
        for (name, value) in headers {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            custom.insert(name.clone(), value);
        }
    }
    for (field, name) in [
        ("conversationId", bus::CONVERSATION_ID),
        ("initiatorId", bus::CAUSATION_ID),
        ("requestId", header::REQUEST_ID),
        ("sourceAddress", header::SOURCE_ADDRESS),
        ("destinationAddress", header::DESTINATION_ADDRESS),
        ("responseAddress", header::RESPONSE_ADDRESS),
        ("faultAddress", header::FAULT_ADDRESS),
    ] {
        if let Some(value) = text(field) {
            custom.insert(name.to_string(), value);
        }
    }
    custom.insert(header::MESSAGE_TYPES.to_string(), types.join(","));
    if let Some(host) = root.get("host").filter(|h| h.is_object()) {
        custom.insert(header::HOST.to_string(), host.to_string());
    }
    let body = serde_json::to_vec(message)
        .map_err(|e| MassTransitError::Invalid(format!("the envelope's `message`: {e}")))?;
    let headers = Headers {
        message_id: MessageId::from(message_id),
        message_type: Cow::Owned(wire_name(lookup, first)),
        content_type: Cow::Borrowed("application/json"),
        correlation_id: text("correlationId").or_else(|| h.correlation_id.clone()),
        sent_at,
        custom,
    };
    Ok(Some(Envelope {
        headers: Arc::new(headers),
        body: Body::Bytes(Bytes::from(body)),
    }))
}

/// The pipeline's reading: `mapped` is what an earlier format made of `received`, if anything.
pub(crate) fn incoming(
    runtime: &Runtime,
    received: &Envelope,
    mapped: Option<Box<Envelope>>,
) -> Result<Option<Box<Envelope>>, Failure> {
    let urns = runtime.masstransit.as_deref().map(|r| &r.urns);
    let lookup = |urn: &str| urns.and_then(|m| m.get(urn)).cloned();
    match read_with(mapped.as_deref().unwrap_or(received), &lookup) {
        Ok(Some(envelope)) => Ok(Some(Box::new(envelope))),
        Ok(None) => Ok(mapped),
        Err(e) => Err(e.failure()),
    }
}

fn urn_of(config: &MassTransit, wire_name: &str) -> String {
    if let Some(urn) = &config.message_type {
        return urn.clone();
    }
    match wire_name.rsplit_once('.') {
        Some((namespace, name)) => format!("urn:message:{namespace}:{name}"),
        None => format!("urn:message:{wire_name}"),
    }
}

/// Write a bus message as a MassTransit envelope: `headers` and `body` as the bus made them,
/// returned as the transport is to carry them.
pub fn write(
    config: &MassTransit,
    destination: &Destination,
    mut headers: Headers,
    body: Body,
    codecs: &Codecs,
) -> Result<(Headers, Body), MassTransitError> {
    let data = match body {
        Body::Bytes(bytes) => bytes,
        Body::Message(message) => codecs
            .default_codec()
            .encode(message.as_serialize())
            .map_err(|e| MassTransitError::Invalid(e.to_string()))?,
    };
    let message: Value = serde_json::from_slice(&data).map_err(|e| {
        MassTransitError::Invalid(format!(
            "a MassTransit message is JSON, and this body is not ({e}); use the JSON codec"
        ))
    })?;
    let mut root = Map::new();
    let put = |root: &mut Map<String, Value>, name: &str, value: Option<&str>| {
        if let Some(value) = value {
            root.insert(name.to_string(), Value::String(value.to_string()));
        }
    };
    put(&mut root, "messageId", Some(&headers.message_id));
    put(&mut root, "requestId", headers.get(header::REQUEST_ID));
    put(
        &mut root,
        "correlationId",
        headers.correlation_id.as_deref(),
    );
    put(&mut root, "conversationId", headers.conversation_id());
    put(&mut root, "initiatorId", headers.causation_id());
    put(
        &mut root,
        "sourceAddress",
        Some(
            config
                .source_address
                .as_deref()
                .unwrap_or(MassTransit::DEFAULT_SOURCE_ADDRESS),
        ),
    );
    let short_address = match destination {
        Destination::Endpoint(name) | Destination::ErrorQueue(name) | Destination::Reply(name) => {
            format!("queue:{name}")
        }
        Destination::Event(name) => format!("exchange:{name}"),
    };
    put(
        &mut root,
        "destinationAddress",
        Some(
            config
                .destination_address
                .as_deref()
                .unwrap_or(&short_address),
        ),
    );
    put(&mut root, "responseAddress", headers.get(bus::REPLY_TO));
    put(&mut root, "faultAddress", config.fault_address.as_deref());
    root.insert(
        "messageType".into(),
        Value::Array(vec![Value::String(urn_of(config, &headers.message_type))]),
    );
    root.insert("message".into(), message);
    if let Some(time) = headers.sent_at {
        put(
            &mut root,
            "sentTime",
            Some(&humantime::format_rfc3339_micros(time).to_string()),
        );
    }
    let own: Map<String, Value> = headers
        .custom
        .iter()
        .filter(|(k, _)| !k.starts_with("bus-mt-"))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    root.insert("headers".into(), Value::Object(own));
    let mut host = Map::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(name) = exe.file_stem().and_then(|s| s.to_str()) {
            host.insert("processName".into(), Value::String(name.to_string()));
        }
    }
    host.insert("processId".into(), Value::from(std::process::id()));
    host.insert(
        "operatingSystemVersion".into(),
        Value::String(std::env::consts::OS.to_string()),
    );
    root.insert("host".into(), Value::Object(host));
    let out = serde_json::to_vec(&Value::Object(root))
        .map_err(|e| MassTransitError::Invalid(e.to_string()))?;
    headers.content_type = Cow::Borrowed(CONTENT_TYPE);
    Ok((headers, Body::Bytes(Bytes::from(out))))
}

/// The sending hook: `headers` and `body` in the envelope where the message's type is
/// configured for it.
pub(crate) fn apply(
    runtime: &Runtime,
    destination: &Destination,
    headers: Headers,
    body: Body,
) -> Result<(Headers, Body), crate::error::CodecError> {
    match runtime
        .masstransit
        .as_deref()
        .and_then(|r| r.by_type.get(headers.message_type.as_ref()))
    {
        Some(config) => write(config, destination, headers, body, &runtime.codecs)
            .map_err(|e| crate::error::CodecError::Encode(e.to_string())),
        None => Ok((headers, body)),
    }
}

/// `sentTime` as MassTransit writes it: ISO 8601 in UTC, `Z` or `+00:00`, up to 7 fraction
/// digits (.NET ticks).
fn parse_time(text: &str) -> Option<std::time::SystemTime> {
    let text = text
        .strip_suffix("+00:00")
        .map_or(Cow::Borrowed(text), |t| Cow::Owned(format!("{t}Z")));
    humantime::parse_rfc3339_weak(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmapped_urns_stand_for_their_last_part_and_sent_time_reads_with_ticks() {
        let none = |_: &str| None;
        assert_eq!(
            wire_name(&none, "urn:message:Shop.Contracts:OrderPlaced"),
            "OrderPlaced"
        );
        let one = |urn: &str| (urn == "urn:message:A:B").then(|| "a.B".to_string());
        assert_eq!(wire_name(&one, "urn:message:A:B"), "a.B");
        assert!(parse_time("2026-01-02T03:04:05.1234567Z").is_some());
        assert_eq!(
            parse_time("2026-01-02T03:04:05+00:00"),
            parse_time("2026-01-02T03:04:05Z")
        );
        assert_eq!(
            urn_of(&MassTransit::new(), "shop.sales.OrderPlaced"),
            "urn:message:shop.sales:OrderPlaced"
        );
    }
}
