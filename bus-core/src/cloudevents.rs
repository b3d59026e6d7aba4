//! CloudEvents 1.0: reading CloudEvents as bus messages, and sending bus messages as
//! CloudEvents, in binary and in structured content mode, on every transport.
//!
//! # Receiving
//!
//! Every endpoint reads CloudEvents before routing, with no configuration: a delivery whose
//! content type is `application/cloudevents+json` (structured mode), or whose headers carry a
//! `specversion` attribute under one of the binding prefixes (binary mode), is turned into a
//! plain bus message: `type` becomes the message type (the wire name handlers are found by),
//! `id` the message id, `time` the sent time, `datacontenttype` the content type, and every
//! other attribute (`source`, `subject`, `specversion`, `dataschema`, extensions) a custom
//! header named `bus-ce-<attribute>` (see [`header`]), which handlers read with
//! [`Headers::get`]. A CloudEvent lacking a required attribute, with a `specversion` other
//! than 1.0, or with a structured body that is not a CloudEvent goes to the error queue with
//! the reason; it never reaches a handler.
//!
//! The binding prefixes read on every transport: `cloudEvents_` and `cloudEvents:` (AMQP
//! application properties), `ce_` (Kafka style) and `ce-` (HTTP and NATS style, values
//! percent-decoded), in any letter case. `docs/interop.md` has the tables.
//!
//! # Sending
//!
//! Opt-in, per bus, per message type or per receiving endpoint (see
//! [`crate::BusBuilder::cloudevents`]):
//!
//! ```
//! use bus_core::{Bus, CloudEvents};
//! let builder = Bus::builder().cloudevents(CloudEvents::binary().source("urn:shop:sales"));
//! # drop(builder);
//! ```
//!
//! A binary CloudEvent keeps every bus header and adds the attributes under the prefix of the
//! transport the bus runs on ([`Binding::for_transport`]); a structured one is a JSON object of
//! the attributes and the body (`data`, or `data_base64` for a body that is not JSON), sent as
//! `application/cloudevents+json` with the bus headers beside it. A header `bus-ce-<name>` on
//! an outgoing message (given with [`crate::SendOptions::header`], e.g. [`header::SUBJECT`])
//! becomes the attribute `<name>`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::codec::Codecs;
use crate::envelope::{Body, Envelope, Headers, MessageId};
use crate::failure::{Failure, FailureReason};
use crate::runtime::NameMap;
use crate::transport::Destination;

/// The media type of a structured CloudEvent in the JSON event format.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The CloudEvents version read and written.
pub const SPEC_VERSION: &str = "1.0";

/// The content type assumed for data that declares none (JSON event format, section 3.1).
const DEFAULT_DATA_CONTENT_TYPE: &str = "application/json";

/// Names of the custom headers that hold the attributes a bus message has no field for.
pub mod header {
    /// What every such header starts with; `bus-ce-<name>` holds attribute `<name>`.
    pub const PREFIX: &str = "bus-ce-";
    /// The `source` attribute (required by CloudEvents).
    pub const SOURCE: &str = "bus-ce-source";
    /// The `specversion` attribute of a received CloudEvent.
    pub const SPECVERSION: &str = "bus-ce-specversion";
    /// The `subject` attribute (optional).
    pub const SUBJECT: &str = "bus-ce-subject";
    /// The `dataschema` attribute (optional).
    pub const DATASCHEMA: &str = "bus-ce-dataschema";
}

/// How attributes are named in message headers: the protocol binding a transport follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// AMQP binding: application properties `cloudEvents_<name>`; `datacontenttype` is the
    /// native `content-type` property.
    Amqp,
    /// HTTP and NATS bindings: headers `ce-<name>`, values percent-encoded.
    Http,
    /// Kafka binding: headers `ce_<name>`.
    Kafka,
}

impl Binding {
    /// The binding a transport's messages are written with, by [`crate::Transport::name`]:
    /// `amqp` uses the AMQP binding, every other transport (`nats`, `redis`, `memory`) the
    /// HTTP/NATS one.
    pub fn for_transport(name: &str) -> Binding {
        match name {
            "amqp" => Binding::Amqp,
            _ => Binding::Http,
        }
    }

    /// The header name prefix of the attributes.
    pub fn prefix(self) -> &'static str {
        match self {
            Binding::Amqp => "cloudEvents_",
            Binding::Http => "ce-",
            Binding::Kafka => "ce_",
        }
    }
}

/// Whether, and how, outgoing messages are sent as CloudEvents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudEventsMode {
    /// Attributes in headers, the body as it is.
    Binary,
    /// Attributes and body in one JSON object, `application/cloudevents+json`.
    Structured,
    /// Not as CloudEvents (to exempt a type or endpoint from a bus-wide setting).
    Off,
}

/// How messages are sent as CloudEvents: the mode and the attributes configuration gives.
///
/// ```
/// use bus_core::{CloudEvents, CloudEventsMode};
/// let ce = CloudEvents::structured().source("urn:shop:sales").extension("tenant", "acme");
/// assert_eq!(ce.mode(), CloudEventsMode::Structured);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEvents {
    mode: CloudEventsMode,
    source: Option<String>,
    subject: Option<String>,
    extensions: BTreeMap<String, String>,
}

impl CloudEvents {
    /// The source written when none is configured: a CloudEvent must have one.
    pub const DEFAULT_SOURCE: &'static str = "urn:bus";

    fn new(mode: CloudEventsMode) -> Self {
        CloudEvents {
            mode,
            source: None,
            subject: None,
            extensions: BTreeMap::new(),
        }
    }

    /// Binary content mode.
    pub fn binary() -> Self {
        Self::new(CloudEventsMode::Binary)
    }

    /// Structured content mode (JSON event format).
    pub fn structured() -> Self {
        Self::new(CloudEventsMode::Structured)
    }

    /// Not as CloudEvents.
    pub fn off() -> Self {
        Self::new(CloudEventsMode::Off)
    }

    /// The `source` attribute, a URI reference naming the producer (default
    /// [`CloudEvents::DEFAULT_SOURCE`]); a message's own [`header::SOURCE`] wins.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// A `subject` attribute for every message; a message's own [`header::SUBJECT`] wins.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// An extension attribute for every message. CloudEvents names are lower-case letters and
    /// digits; a message with another name fails to send.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }

    /// The mode.
    pub fn mode(&self) -> CloudEventsMode {
        self.mode
    }
}

/// Why a message could not be read or written as a CloudEvent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloudEventsError {
    /// A required attribute is absent or empty.
    #[error("the CloudEvent has no `{attribute}` attribute ({where_}); CloudEvents 1.0 requires id, source, specversion and type")]
    MissingAttribute {
        /// The attribute.
        attribute: &'static str,
        /// Where it was looked for.
        where_: String,
    },
    /// Anything else: a bad `specversion`, `time`, body or name.
    #[error("{0}")]
    Invalid(String),
}

impl CloudEventsError {
    fn failure(self) -> Failure {
        let reason = match self {
            CloudEventsError::MissingAttribute { .. } => FailureReason::MissingHeader,
            CloudEventsError::Invalid(_) => FailureReason::Deserialization,
        };
        Failure::rejected(reason, self.to_string())
    }
}

/// Whether a content type is a CloudEvents event format (`application/cloudevents`, with
/// or without a `+format` suffix and parameters).
fn is_cloudevents_media(content_type: &str) -> bool {
    let prefix = "application/cloudevents";
    content_type.len() >= prefix.len()
        && content_type.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The attribute named by a header, and whether its value is percent-encoded.
fn attribute_of(name: &str) -> Option<(String, bool)> {
    const PREFIXES: [(&str, bool); 4] = [
        ("cloudEvents_", false),
        ("cloudEvents:", false),
        ("ce_", false),
        ("ce-", true),
    ];
    PREFIXES.iter().find_map(|(prefix, encoded)| {
        let head = name.get(..prefix.len())?;
        let rest = &name[prefix.len()..];
        (head.eq_ignore_ascii_case(prefix) && !rest.is_empty())
            .then(|| (rest.to_ascii_lowercase(), *encoded))
    })
}

fn is_content_type_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-type")
}

/// The bus message a received CloudEvent stands for; `None` for a message that is none (the
/// common case, decided by a look at the content type and at the custom headers that start
/// with a `c`, which a bus's own messages do not have).
pub fn read(envelope: &Envelope) -> Result<Option<Envelope>, CloudEventsError> {
    let h = &envelope.headers;
    let maybe = is_cloudevents_media(&h.content_type)
        || starting(&h.custom, "C", "D")
        || starting(&h.custom, "c", "d");
    if !maybe {
        return Ok(None);
    }
    read_slow(envelope)
}

/// Whether a key lies in `from..to`, found in the map's order without a scan.
fn starting(map: &BTreeMap<String, String>, from: &str, to: &str) -> bool {
    map.range::<str, _>((Bound::Included(from), Bound::Excluded(to)))
        .next()
        .is_some()
}

fn read_slow(envelope: &Envelope) -> Result<Option<Envelope>, CloudEventsError> {
    let h = &envelope.headers;
    let mut attributes = BTreeMap::new();
    let mut header_content_type = None;
    for (name, value) in &h.custom {
        if let Some((attribute, encoded)) = attribute_of(name) {
            let value = if encoded {
                percent_decode(value)
            } else {
                value.clone()
            };
            attributes.insert(attribute, value);
        } else if is_content_type_header(name) {
            header_content_type = Some(value.as_str());
        }
    }
    let content_type = match (h.content_type.as_ref(), header_content_type) {
        ("", Some(header)) => header,
        (native, _) => native,
    };
    let custom = || -> BTreeMap<String, String> {
        h.custom
            .iter()
            .filter(|(name, _)| attribute_of(name).is_none() && !is_content_type_header(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    if is_cloudevents_media(content_type) {
        let bytes = match &envelope.body {
            Body::Bytes(bytes) => bytes,
            Body::Message(_) => return Ok(None),
        };
        let (attributes, data) = structured(content_type, bytes)?;
        let headers = to_headers(h, attributes, None, custom(), "the structured body")?;
        return Ok(Some(Envelope {
            headers: Arc::new(headers),
            body: Body::Bytes(data),
        }));
    }
    if !attributes.contains_key("specversion") {
        // Headers of this shape on a complete bus message are the application's own.
        if attributes.is_empty() || (!h.message_id.is_empty() && !h.message_type.is_empty()) {
            return Ok(None);
        }
        return Err(CloudEventsError::MissingAttribute {
            attribute: "specversion",
            where_: format!(
                "headers {} are there",
                attributes
                    .keys()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let native = (!content_type.is_empty()).then_some(content_type);
    let headers = to_headers(h, attributes, native, custom(), "the message headers")?;
    Ok(Some(Envelope {
        headers: Arc::new(headers),
        body: envelope.body.clone(),
    }))
}

/// Bus headers of a CloudEvent's attributes. `native` is the content type the transport
/// itself carried, which wins over a `datacontenttype` header (AMQP binding, section 3.1.1).
fn to_headers(
    received: &Headers,
    mut attributes: BTreeMap<String, String>,
    native: Option<&str>,
    mut custom: BTreeMap<String, String>,
    where_: &str,
) -> Result<Headers, CloudEventsError> {
    let mut required = |attribute: &'static str| {
        attributes
            .remove(attribute)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| CloudEventsError::MissingAttribute {
                attribute,
                where_: where_.to_string(),
            })
    };
    let specversion = required("specversion")?;
    if specversion != SPEC_VERSION {
        return Err(CloudEventsError::Invalid(format!(
            "CloudEvents specversion `{specversion}` is not supported; this bus reads {SPEC_VERSION}"
        )));
    }
    let id = required("id")?;
    let source = required("source")?;
    let message_type = required("type")?;
    let sent_at =
        match attributes.remove("time") {
            Some(time) => Some(parse_time(&time).or_else(|| epoch_time(&time)).ok_or_else(
                || {
                    CloudEventsError::Invalid(format!(
                        "the CloudEvent's `time` attribute `{time}` is not an RFC 3339 timestamp"
                    ))
                },
            )?),
            None => received.sent_at,
        };
    let declared = attributes.remove("datacontenttype");
    let content_type = match native.map(str::to_string).or(declared) {
        Some(ct) if ct == DEFAULT_DATA_CONTENT_TYPE => Cow::Borrowed(DEFAULT_DATA_CONTENT_TYPE),
        Some(ct) => Cow::Owned(ct),
        None => Cow::Borrowed(DEFAULT_DATA_CONTENT_TYPE),
    };
    custom.insert(header::SPECVERSION.to_string(), specversion);
    custom.insert(header::SOURCE.to_string(), source);
    for (name, value) in attributes {
        custom.insert(format!("{}{name}", header::PREFIX), value);
    }
    Ok(Headers {
        message_id: MessageId::from(id),
        message_type: Cow::Owned(message_type),
        content_type,
        correlation_id: received.correlation_id.clone(),
        sent_at,
        custom,
    })
}

/// The attributes and data of a structured CloudEvent (JSON event format).
fn structured(
    content_type: &str,
    body: &[u8],
) -> Result<(BTreeMap<String, String>, Bytes), CloudEventsError> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE) {
        return Err(CloudEventsError::Invalid(format!(
            "CloudEvents event format `{essence}` is not supported; this bus reads {STRUCTURED_CONTENT_TYPE}"
        )));
    }
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| {
            CloudEventsError::Invalid(format!(
                "the structured CloudEvent is not a JSON object: {e}"
            ))
        })?;
    let mut attributes = BTreeMap::new();
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in object {
        match (name.as_str(), value) {
            ("data", value) => data = Some(value),
            ("data_base64", serde_json::Value::String(text)) => data_base64 = Some(text),
            ("data_base64", _) => {
                return Err(CloudEventsError::Invalid(
                    "the CloudEvent's `data_base64` is not a string".into(),
                ))
            }
            // JSON event format 2.2: a null attribute is an absent one.
            (_, serde_json::Value::Null) => {}
            (_, serde_json::Value::String(text)) => {
                attributes.insert(name, text);
            }
            (_, value @ (serde_json::Value::Bool(_) | serde_json::Value::Number(_))) => {
                attributes.insert(name, value.to_string());
            }
            (_, _) => {
                return Err(CloudEventsError::Invalid(format!(
                    "the CloudEvent's attribute `{name}` is not a string, number or boolean"
                )))
            }
        }
    }
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(CloudEventsError::Invalid(
                "the CloudEvent has both `data` and `data_base64`".into(),
            ))
        }
        (None, Some(text)) => Bytes::from(base64_decode(&text).ok_or_else(|| {
            CloudEventsError::Invalid("the CloudEvent's `data_base64` is not base64".into())
        })?),
        // JSON event format 3.1: JSON data is the value itself; other data, a string.
        (Some(serde_json::Value::String(text)), None)
            if !is_json(attributes.get("datacontenttype").map(String::as_str)) =>
        {
            Bytes::from(text)
        }
        (Some(value), None) => Bytes::from(
            serde_json::to_vec(&value)
                .map_err(|e| CloudEventsError::Invalid(format!("the CloudEvent's `data`: {e}")))?,
        ),
        (None, None) => Bytes::new(),
    };
    Ok((attributes, data))
}

/// Whether data of this content type is JSON (absent means JSON in the JSON event format).
fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The failure of a delivery that claims to be a CloudEvent and is not a valid one.
pub(crate) fn incoming(envelope: &Envelope) -> Result<Option<Box<Envelope>>, Failure> {
    read(envelope)
        .map(|mapped| mapped.map(Box::new))
        .map_err(CloudEventsError::failure)
}

/// Write a bus message as a CloudEvent: `headers` and `body` as the bus made them, returned
/// as the transport is to carry them. `codecs` encodes a typed in-process body, which
/// structured mode needs as bytes.
pub fn write(
    config: &CloudEvents,
    binding: Binding,
    mut headers: Headers,
    body: Body,
    codecs: &Codecs,
) -> Result<(Headers, Body), CloudEventsError> {
    if config.mode == CloudEventsMode::Off {
        return Ok((headers, body));
    }
    let mut attributes: Vec<(String, String)> = Vec::with_capacity(8);
    let mut own: BTreeMap<String, String> = BTreeMap::new();
    let names: Vec<String> = headers
        .custom
        .range::<str, _>((Bound::Included(header::PREFIX), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(header::PREFIX))
        .map(|(k, _)| k.clone())
        .collect();
    for name in names {
        if let Some(value) = headers.custom.remove(&name) {
            own.insert(name[header::PREFIX.len()..].to_string(), value);
        }
    }
    // A `specversion` header of a message read before says nothing about this one.
    own.remove("specversion");
    let source = own
        .remove("source")
        .or_else(|| config.source.clone())
        .unwrap_or_else(|| CloudEvents::DEFAULT_SOURCE.to_string());
    attributes.push(("specversion".into(), SPEC_VERSION.into()));
    attributes.push(("id".into(), headers.message_id.to_string()));
    attributes.push(("source".into(), source));
    attributes.push(("type".into(), headers.message_type.to_string()));
    if let Some(time) = headers.sent_at {
        attributes.push((
            "time".into(),
            humantime::format_rfc3339_nanos(time).to_string(),
        ));
    }
    if let Some(subject) = own.remove("subject").or_else(|| config.subject.clone()) {
        attributes.push(("subject".into(), subject));
    }
    let mut extensions = config.extensions.clone();
    extensions.extend(own);
    for (name, value) in extensions {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(CloudEventsError::Invalid(format!(
                "`{name}` is not a CloudEvents attribute name (lower-case letters and digits only)"
            )));
        }
        attributes.push((name, value));
    }
    match config.mode {
        CloudEventsMode::Binary => {
            let prefix = binding.prefix();
            // AMQP binding 3.1.1: the content-type property is `datacontenttype`.
            if binding != Binding::Amqp && !headers.content_type.is_empty() {
                attributes.push(("datacontenttype".into(), headers.content_type.to_string()));
            }
            for (name, value) in attributes {
                let value = match binding {
                    Binding::Http => percent_encode(&value),
                    _ => value,
                };
                headers.custom.insert(format!("{prefix}{name}"), value);
            }
            Ok((headers, body))
        }
        CloudEventsMode::Structured => {
            let data = match body {
                Body::Bytes(bytes) => bytes,
                Body::Message(message) => codecs
                    .default_codec()
                    .encode(message.as_serialize())
                    .map_err(|e| CloudEventsError::Invalid(e.to_string()))?,
            };
            let content_type = std::mem::replace(
                &mut headers.content_type,
                Cow::Borrowed(STRUCTURED_CONTENT_TYPE),
            );
            let json_data = is_json(Some(&content_type))
                && serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_ok();
            let mut out = String::with_capacity(data.len() * 4 / 3 + 256);
            out.push('{');
            for (name, value) in &attributes {
                push_member(&mut out, name, value);
            }
            push_member(&mut out, "datacontenttype", &content_type);
            if json_data {
                out.push_str("\"data\":");
                // Checked to be JSON above; its bytes are UTF-8 by definition.
                out.push_str(&String::from_utf8_lossy(&data));
            } else {
                out.push_str("\"data_base64\":\"");
                base64_encode(&data, &mut out);
                out.push('"');
            }
            out.push('}');
            Ok((headers, Body::Bytes(Bytes::from(out))))
        }
        CloudEventsMode::Off => Ok((headers, body)),
    }
}

fn push_member(out: &mut String, name: &str, value: &str) {
    // Strings always serialize.
    out.push_str(&serde_json::to_string(name).unwrap_or_default());
    out.push(':');
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
    out.push(',');
}

/// Who sends what as CloudEvents: per message type, per receiving endpoint, then the bus's
/// default, in that order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rules {
    pub(crate) default: Option<CloudEvents>,
    pub(crate) by_type: NameMap<CloudEvents>,
    pub(crate) by_endpoint: NameMap<CloudEvents>,
}

impl Rules {
    /// Whether anything is to be sent as a CloudEvent.
    pub(crate) fn any(&self) -> bool {
        let on = |c: &CloudEvents| c.mode != CloudEventsMode::Off;
        self.default.iter().any(on)
            || self.by_type.values().any(on)
            || self.by_endpoint.values().any(on)
    }

    /// The setting for a message of type `name` going to `destination`.
    fn of(&self, name: &str, destination: &Destination) -> Option<&CloudEvents> {
        self.by_type
            .get(name)
            .or_else(|| match destination {
                Destination::Endpoint(endpoint) => self.by_endpoint.get(endpoint.as_ref()),
                _ => None,
            })
            .or(self.default.as_ref())
    }

    /// `headers` and `body` as CloudEvents when the rules say so.
    pub(crate) fn apply(
        &self,
        destination: &Destination,
        binding: Binding,
        headers: Headers,
        body: Body,
        codecs: &Codecs,
    ) -> Result<(Headers, Body), crate::error::CodecError> {
        match self.of(&headers.message_type, destination) {
            Some(config) => write(config, binding, headers, body, codecs)
                .map_err(|e| crate::error::CodecError::Encode(e.to_string())),
            None => Ok((headers, body)),
        }
    }
}

/// HTTP binding 3.1.3.2: space, `"`, `%` and everything outside printable ASCII as `%XX` of
/// its UTF-8 bytes.
fn percent_encode(value: &str) -> String {
    let plain = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%';
    if value.bytes().all(plain) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn percent_decode(value: &str) -> String {
    if !value.contains('%') {
        return value.to_string();
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8], out: &mut String) {
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = BASE64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// An RFC 3339 timestamp with any offset (`Z`, `+02:00`) and fraction, as CloudEvents
/// producers write them (the `time` attribute, spec section 3.1.4).
fn parse_time(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<u64> {
        let part = text.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let digits = &text[start..at];
        if digits.is_empty() {
            return None;
        }
        let kept = &digits[..digits.len().min(9)];
        nanos = kept.parse::<u32>().ok()? * 10u32.pow(9 - kept.len() as u32);
    }
    let offset: i64 = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == b.len() && b[at + 3] == b':' => {
            let minutes = (num(at + 1, 2)? * 60 + num(at + 4, 2)?) as i64;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3_600 + minute * 60 + second) as i64 - offset;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// A `time` as a number, which the AMQP binding allows (section 3.1.3.2: a native AMQP
/// timestamp) and SDKs send: a header table has no way to say which unit it is in, so more
/// than 11 digits are milliseconds (seconds would be past the year 5000), fewer are seconds.
fn epoch_time(text: &str) -> Option<SystemTime> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = text.parse().ok()?;
    let since = match text.len() {
        0..=11 => Duration::from_secs(n),
        _ => Duration::from_millis(n),
    };
    UNIX_EPOCH.checked_add(since)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let of_era = y - era * 400;
    let m = if month > 2 { month - 3 } else { month + 9 };
    let of_year = (153 * m + 2) / 5 + day - 1;
    let of_era_days = of_era * 365 + of_era / 4 - of_era / 100 + of_year;
    era * 146_097 + of_era_days - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_offsets_and_fractions_parse_to_the_same_instant() {
        let z = parse_time("2026-01-02T03:04:05.123456789Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339_nanos(z).to_string(),
            "2026-01-02T03:04:05.123456789Z"
        );
        assert_eq!(parse_time("2026-01-02T05:04:05.123456789+02:00"), Some(z));
        assert_eq!(
            parse_time("2026-01-02T03:04:05Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_767_323_045)
        );
        assert_eq!(parse_time("2026-01-02 03:04:05"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn base64_and_percent_encoding_round_trip() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\x00\xff\x10"] {
            let mut text = String::new();
            base64_encode(data, &mut text);
            assert_eq!(base64_decode(&text).as_deref(), Some(data), "{text}");
        }
        let mut text = String::new();
        base64_encode(b"foobar", &mut text);
        assert_eq!(text, "Zm9vYmFy");
        assert_eq!(percent_encode("a b\"%é"), "a%20b%22%25%C3%A9");
        assert_eq!(percent_decode("a%20b%22%25%C3%A9"), "a b\"%é");
    }
}
