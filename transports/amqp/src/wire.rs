//! The wire format: how an envelope maps onto AMQP properties and headers (see
//! `docs/wire-format.md`). The body is the serialized message alone.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use bus_core::{Body, Envelope, Headers, TransportError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// Headers the broker adds; they are not part of the message.
const BROKER_HEADERS: &[&str] = &[
    "x-death",
    "x-delivery-count",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// AMQP properties for an envelope's headers: persistent, with the well-known headers as native
/// properties and the rest in the headers table as long strings (no table at all when there
/// are no other headers, as on a root message).
pub fn encode(headers: &Headers) -> Result<BasicProperties, TransportError> {
    properties(headers)
}

/// The envelope the transport makes of a received AMQP message (properties and body), as the
/// runtime then sees it. Never fails: what is missing is left empty for the runtime to reject.
pub fn decode(props: &BasicProperties, data: Vec<u8>) -> Envelope {
    envelope(props, data)
}

pub(crate) fn properties(headers: &Headers) -> Result<BasicProperties, TransportError> {
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(short(&headers.message_id, "message id")?)
        .with_type(short(&headers.message_type, "message type")?)
        .with_content_type(short(&headers.content_type, "content type")?);
    // No custom headers (a root message): no table at all, rather than an empty one.
    if !headers.custom.is_empty() {
        let mut table = FieldTable::default();
        for (k, v) in &headers.custom {
            let key = ShortString::try_new(k.clone()).map_err(|e| {
                TransportError::other(format!("header name `{k:.40}...` is too long"), e)
            })?;
            table.insert(key, AMQPValue::LongString(LongString::from(v.as_str())));
        }
        props = props.with_headers(table);
    }
    if let Some(c) = &headers.correlation_id {
        props = props.with_correlation_id(short(c, "correlation id")?);
    }
    if let Some(t) = headers.sent_at {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        props = props.with_timestamp(secs);
    }
    Ok(props)
}

fn short(value: &str, what: &str) -> Result<ShortString, TransportError> {
    ShortString::try_new(value.to_string())
        .map_err(|e| TransportError::other(format!("the {what} is too long"), e))
}

/// The envelope of a received message. Missing properties become empty strings: the runtime
/// then moves the message to the error queue with the reason, instead of dropping it.
pub(crate) fn envelope(props: &BasicProperties, data: Vec<u8>) -> Envelope {
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_string());
    let mut custom = BTreeMap::new();
    if let Some(table) = props.headers() {
        for (k, v) in table.inner() {
            if BROKER_HEADERS.contains(&k.as_str()) {
                continue;
            }
            custom.insert(k.as_str().to_string(), value_text(v));
        }
    }
    let headers = Headers {
        message_id: props
            .message_id()
            .as_ref()
            .map(|id| id.as_str().into())
            .unwrap_or_default(),
        message_type: text(props.kind()).unwrap_or_default().into(),
        content_type: text(props.content_type()).unwrap_or_default().into(),
        correlation_id: text(props.correlation_id()),
        sent_at: props
            .timestamp()
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))),
        custom,
    };
    Envelope::from_bytes(headers, data)
}

/// The deliveries count a quorum queue reports (`x-delivery-count`, 0 on first delivery).
pub(crate) fn delivery_count(props: &BasicProperties, redelivered: bool) -> u32 {
    let counted = props
        .headers()
        .as_ref()
        .and_then(|t| t.inner().get("x-delivery-count"))
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(*n),
            _ => None,
        });
    match counted {
        Some(n) => n + 1,
        None if redelivered => 2,
        None => 1,
    }
}

/// A header value as text: strings as they are, other AMQP types in a readable form.
fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        other => format!("{other:?}"),
    }
}

/// The body bytes of an outgoing envelope.
pub(crate) fn body(envelope: &Envelope) -> Result<&[u8], TransportError> {
    match &envelope.body {
        Body::Bytes(b) => Ok(b.as_ref()),
        Body::Message(m) => Err(TransportError::Other {
            context: format!(
                "message `{}` has a typed in-process body; the AMQP transport needs bytes",
                m.message_name()
            ),
            source: None,
        }),
    }
}
