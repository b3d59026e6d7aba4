//! The wire format: how an envelope maps onto NATS headers. NATS has no message properties, so
//! every bus header is a NATS header; the body is the serialized message alone.
//!
//! | bus header | NATS header (from [`bus_core::header`]) |
//! |---|---|
//! | message id | `bus-message-id` (and the dedup key `Nats-Msg-Id`, see [`dedup_id`]) |
//! | message type | `bus-message-type` |
//! | content type | `bus-content-type` |
//! | correlation id | `bus-correlation-id` |
//! | sent time | `bus-sent-time`, RFC 3339 UTC with nanoseconds |
//! | custom headers (`bus-conversation-id`, failure headers, ...) | the same name |
//!
//! NATS header values are single lines and lose leading and trailing blanks, so a value that
//! would not survive (line breaks, other control characters, blanks at either end, or a value
//! that itself looks encoded) travels as an RFC 2047 encoded word: `=?UTF-8?B?<base64>?=`.
//! Header names must be visible ASCII without `:`; a custom header name that is not, or that
//! would read as one of the names above or as a server header (`Nats-*`), is encoded the same
//! way. Receivers decode both.

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_nats::HeaderMap;
use base64::Engine;
use bus_core::header::{CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID, MESSAGE_TYPE, SENT_TIME};
use bus_core::{Body, Bytes, Destination, Envelope, Headers, TransportError};

/// JetStream's deduplication header.
pub(crate) const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// When a delayed message is due (milliseconds since the Unix epoch). Internal to the transport.
pub(crate) const DELIVER_AT: &str = "bus-deliver-at";

/// Header names the envelope's own fields use; a custom header cannot take them.
const RESERVED: &[&str] = &[
    MESSAGE_ID,
    MESSAGE_TYPE,
    CONTENT_TYPE,
    CORRELATION_ID,
    SENT_TIME,
    DELIVER_AT,
];

const ENCODED_PREFIX: &str = "=?UTF-8?B?";
const ENCODED_SUFFIX: &str = "?=";

/// The JetStream deduplication key of a message.
///
/// The message id alone would make JetStream drop the runtime's delayed-retry copy (same id,
/// same stream, within the window), so a retry carries its round, and an error-queue entry its
/// failure time (an entry replayed and failed again is a new entry). A repeated publish of the
/// same send (after a timeout or reconnect) has the same key, so it is stored once.
pub(crate) fn dedup_id(destination: &Destination, headers: &Headers) -> Option<String> {
    if headers.message_id.is_empty() {
        return None;
    }
    let id = &headers.message_id;
    match destination {
        Destination::Endpoint(_) => match headers.delayed_retries() {
            0 => Some(id.to_string()),
            n => Some(format!("{id}/retry-{n}")),
        },
        Destination::Event(_) => Some(id.to_string()),
        Destination::ErrorQueue(_) => headers
            .get(bus_core::header::FAILURE_TIME)
            .map(|t| format!("{id}/error/{t}")),
    }
}

/// NATS headers for an envelope.
pub(crate) fn headers(headers: &Headers, dedup_id: Option<&str>) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Some(id) = dedup_id {
        map.insert(NATS_MSG_ID, encode_value(id));
    }
    map.insert(MESSAGE_ID, encode_value(&headers.message_id));
    map.insert(MESSAGE_TYPE, encode_value(&headers.message_type));
    map.insert(CONTENT_TYPE, encode_value(&headers.content_type));
    if let Some(c) = &headers.correlation_id {
        map.insert(CORRELATION_ID, encode_value(c));
    }
    if let Some(t) = headers.sent_at {
        map.insert(
            SENT_TIME,
            humantime::format_rfc3339_nanos(t).to_string().as_str(),
        );
    }
    for (name, value) in &headers.custom {
        map.insert(encode_name(name).as_str(), encode_value(value));
    }
    map
}

/// Headers set by the NATS server or client library (`Nats-Msg-Id`, `Nats-Stream-Source`, ...):
/// not part of the message.
fn is_nats_header(name: &str) -> bool {
    name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-")
}

/// A custom header's name as it can travel: as it is when it is visible ASCII without `:`
/// and cannot be mistaken for a header of the transport or the server; otherwise encoded.
pub(crate) fn encode_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
        && !RESERVED.contains(&name)
        && !is_nats_header(name)
        && !name.starts_with("=?");
    if plain {
        name.to_string()
    } else {
        encoded_word(name)
    }
}

fn encoded_word(text: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    format!("{ENCODED_PREFIX}{b64}{ENCODED_SUFFIX}")
}

/// An encoded word's text, if it is one.
fn decode_word(text: &str) -> Option<String> {
    let inner = text
        .strip_prefix(ENCODED_PREFIX)?
        .strip_suffix(ENCODED_SUFFIX)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// A value as it can travel in a NATS header.
pub(crate) fn encode_value(value: &str) -> String {
    let needs = value.chars().any(char::is_control)
        || value.starts_with(char::is_whitespace)
        || value.ends_with(char::is_whitespace)
        || value.starts_with("=?");
    if needs {
        encoded_word(value)
    } else {
        value.to_string()
    }
}

/// A header value as the sender meant it.
pub(crate) fn decode_value(value: &str) -> String {
    decode_word(value).unwrap_or_else(|| value.to_string())
}

/// The envelope of a received message. Missing headers become empty strings: the runtime then
/// moves the message to the error queue with the reason, instead of dropping it. A message
/// from a plain NATS client that sets only `Nats-Msg-Id` gets that as its message id.
pub(crate) fn envelope(map: Option<&HeaderMap>, payload: Bytes) -> Envelope {
    let mut h = Headers::default();
    let mut nats_msg_id = None;
    let mut custom = BTreeMap::new();
    if let Some(map) = map {
        for (name, values) in map.iter() {
            let name: &str = name.as_ref();
            let Some(value) = values.first() else {
                continue;
            };
            let value = decode_value(value.as_str());
            match name {
                MESSAGE_ID => h.message_id = value.into(),
                MESSAGE_TYPE => h.message_type = value.into(),
                CONTENT_TYPE => h.content_type = value.into(),
                CORRELATION_ID => h.correlation_id = Some(value),
                SENT_TIME => h.sent_at = parse_time(&value),
                DELIVER_AT => {}
                n if n.eq_ignore_ascii_case(NATS_MSG_ID) => nats_msg_id = Some(value),
                n if is_nats_header(n) => {}
                n => {
                    let n = decode_word(n).unwrap_or_else(|| n.to_string());
                    custom.insert(n, value);
                }
            }
        }
    }
    if h.message_id.is_empty() {
        if let Some(id) = nats_msg_id {
            h.message_id = id.into();
        }
    }
    h.custom = custom;
    Envelope::from_bytes(h, payload)
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

/// Bytes a message takes on the wire, headers included, as the server counts it against its
/// `max_payload`.
pub(crate) fn size(map: &HeaderMap, body: &[u8]) -> usize {
    let headers: usize = map
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    // `NATS/1.0\r\n` before the headers and an empty line after them.
    headers + 12 + body.len()
}

/// The body bytes of an outgoing envelope.
pub(crate) fn body(envelope: &Envelope) -> Result<Bytes, TransportError> {
    match &envelope.body {
        Body::Bytes(b) => Ok(b.clone()),
        Body::Message(m) => Err(TransportError::Other {
            context: format!(
                "message `{}` has a typed in-process body; the NATS transport needs bytes",
                m.message_name()
            ),
            source: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn sample() -> Headers {
        let mut custom = BTreeMap::new();
        custom.insert("bus-conversation-id".into(), "conv-1".into());
        custom.insert("unicode".into(), "grüße, 世界 ✓".into());
        custom.insert("empty".into(), String::new());
        custom.insert("multi-line".into(), "line one\r\nline two\n".into());
        custom.insert("padded".into(), "  spaced  ".into());
        custom.insert("looks-encoded".into(), "=?UTF-8?B?eA==?=".into());
        custom.insert("long".into(), "x".repeat(4096));
        Headers {
            message_id: "0190-abc".into(),
            message_type: "tests.Work".into(),
            content_type: "application/json".into(),
            correlation_id: Some("corr".into()),
            sent_at: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)),
            custom,
        }
    }

    #[test]
    fn headers_round_trip() {
        let h = sample();
        let map = headers(&h, Some("0190-abc"));
        for (_, values) in map.iter() {
            for v in values {
                assert!(!v.as_str().contains(['\r', '\n']));
                assert_eq!(v.as_str().trim(), v.as_str());
            }
        }
        let back = envelope(Some(&map), Bytes::from_static(b"{}"));
        assert_eq!(*back.headers, h);
    }

    #[test]
    fn plain_clients_may_send_only_nats_msg_id() {
        let mut map = HeaderMap::new();
        map.insert("Nats-Msg-Id", "ext-1");
        map.insert(MESSAGE_TYPE, "tests.Work");
        map.insert("Nats-Stream-Source", "x");
        let e = envelope(Some(&map), Bytes::new());
        assert_eq!(e.headers.message_id, "ext-1");
        assert!(e.headers.custom.is_empty());
    }

    #[test]
    fn dedup_keys_tell_retries_and_error_entries_apart() {
        let mut h = sample();
        let ep = Destination::Endpoint("e".into());
        assert_eq!(dedup_id(&ep, &h).as_deref(), Some("0190-abc"));
        h.custom
            .insert(bus_core::header::DELAYED_RETRIES.into(), "2".into());
        assert_eq!(dedup_id(&ep, &h).as_deref(), Some("0190-abc/retry-2"));
        let err = Destination::ErrorQueue("e".into());
        assert_eq!(dedup_id(&err, &h), None);
        h.custom
            .insert(bus_core::header::FAILURE_TIME.into(), "T1".into());
        assert_eq!(dedup_id(&err, &h).as_deref(), Some("0190-abc/error/T1"));
    }

    #[test]
    fn names_nats_cannot_carry_are_encoded() {
        let mut h = sample();
        for name in [
            "with space",
            "ключ",
            "a:b",
            "",
            "Nats-Expected-Stream",
            "bus-message-id",
            "=?odd",
        ] {
            h.custom.insert(name.into(), format!("value of {name}"));
        }
        let map = headers(&h, None);
        for (name, _) in map.iter() {
            let n: &str = name.as_ref();
            assert!(
                n.bytes().all(|b| (33..=126).contains(&b) && b != b':'),
                "{n}"
            );
            assert!(!n.starts_with("Nats-Expected"), "{n}");
        }
        let back = envelope(Some(&map), Bytes::new());
        assert_eq!(*back.headers, h);
    }
}
