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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::header::{HeaderName, NATS_MESSAGE_ID};
use async_nats::HeaderMap;
use base64::Engine;
use bus_core::header::{CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID, MESSAGE_TYPE, SENT_TIME};
use bus_core::{Body, Bytes, Destination, Envelope, Headers, MessageId, TransportError, JSON};

/// JetStream's deduplication header.
pub(crate) const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// When a delayed retry or a scheduled message is due (milliseconds since the Unix epoch).
pub(crate) const DELIVER_AT: &str = bus_core::header::DELIVER_AT;

// The names as the client library keeps them: a `&str` name is copied into a new buffer on
// every insert, a static one is not.
const MESSAGE_ID_NAME: HeaderName = HeaderName::from_static(MESSAGE_ID);
const MESSAGE_TYPE_NAME: HeaderName = HeaderName::from_static(MESSAGE_TYPE);
const CONTENT_TYPE_NAME: HeaderName = HeaderName::from_static(CONTENT_TYPE);
const CORRELATION_ID_NAME: HeaderName = HeaderName::from_static(CORRELATION_ID);
const SENT_TIME_NAME: HeaderName = HeaderName::from_static(SENT_TIME);
pub(crate) const DELIVER_AT_NAME: HeaderName = HeaderName::from_static(DELIVER_AT);

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
/// same stream, within the window), so a retry carries its round, a message an operator sent
/// back from the error queue its count of such resends, and an error-queue entry its failure
/// time (an entry replayed and failed again is a new entry). A repeated publish of the same
/// send (after a timeout or reconnect) has the same key, so it is stored once.
pub(crate) fn dedup_id<'a>(
    destination: &Destination,
    headers: &'a Headers,
) -> Option<Cow<'a, str>> {
    if headers.message_id.is_empty() {
        return None;
    }
    let id = &headers.message_id;
    match destination {
        Destination::Endpoint(_) => {
            let resent = headers.get(bus_core::header::OPERATOR_RETRIES);
            match (headers.delayed_retries(), resent) {
                (0, None) => Some(Cow::Borrowed(id.as_str())),
                (n, None) => Some(Cow::Owned(format!("{id}/retry-{n}"))),
                (n, Some(r)) => Some(Cow::Owned(format!("{id}/resent-{r}/retry-{n}"))),
            }
        }
        Destination::Event(_) => Some(Cow::Borrowed(id.as_str())),
        Destination::ErrorQueue(_) => headers
            .get(bus_core::header::FAILURE_TIME)
            .map(|t| Cow::Owned(format!("{id}/error/{t}"))),
        // A reply is a plain NATS message: no stream, nothing to deduplicate.
        Destination::Reply(_) => None,
    }
}

/// NATS headers for an envelope.
pub(crate) fn headers(headers: &Headers, dedup_id: Option<&str>) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Some(id) = dedup_id {
        map.insert(NATS_MESSAGE_ID, encode_value(id));
    }
    map.insert(MESSAGE_ID_NAME, encode_value(&headers.message_id));
    map.insert(MESSAGE_TYPE_NAME, encode_value(&headers.message_type));
    map.insert(CONTENT_TYPE_NAME, encode_value(&headers.content_type));
    if let Some(c) = &headers.correlation_id {
        map.insert(CORRELATION_ID_NAME, encode_value(c));
    }
    if let Some(t) = headers.sent_at.and_then(rfc3339_nanos) {
        map.insert(SENT_TIME_NAME, t);
    }
    for (name, value) in &headers.custom {
        map.insert(encode_name(name), encode_value(value));
    }
    map
}

/// A time as RFC 3339 in UTC with nanoseconds (`2026-01-02T03:04:05.123456789Z`), the text
/// `humantime::format_rfc3339_nanos` writes, straight into its `String`. `None` for a time
/// that format cannot show (before 1970 or after 9999).
pub(crate) fn rfc3339_nanos(time: SystemTime) -> Option<String> {
    let since = time.duration_since(UNIX_EPOCH).ok()?;
    let secs = since.as_secs();
    if secs >= 253_402_300_800 {
        return None;
    }
    let nanos = since.subsec_nanos();
    let (year, month, day) = civil_date(secs / 86_400);
    let of_day = secs % 86_400;
    let mut buf = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3_600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 9, u64::from(nanos));
    std::str::from_utf8(&buf).ok().map(str::to_owned)
}

/// Year, month and day of a day count since 1970-01-01 (proleptic Gregorian calendar).
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Counted from 0000-03-01, so that the leap day ends each 4-, 100- and 400-year cycle.
    let z = days + 719_468;
    let era = z / 146_097;
    let of_era = z % 146_097;
    let year_of_era = (of_era - of_era / 1_460 + of_era / 36_524 - of_era / 146_096) / 365;
    let day_of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
    if is_plain(value.as_bytes()) {
        return value.to_string();
    }
    let needs = has_control(value)
        || value.starts_with(char::is_whitespace)
        || value.ends_with(char::is_whitespace)
        || value.starts_with("=?");
    if needs {
        encoded_word(value)
    } else {
        value.to_string()
    }
}

/// The common case, decided in one pass over the bytes: visible ASCII and inner spaces only,
/// not starting with `=?` (every value the bus makes itself: ids, type names, times).
fn is_plain(bytes: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return true;
    };
    first != b' '
        && last != b' '
        && !bytes.starts_with(b"=?")
        && bytes.iter().all(|&b| (b' '..=b'~').contains(&b))
}

/// Whether a text holds a control character (`char::is_control`: U+0000-U+001F, U+007F and
/// U+0080-U+009F, the last encoded as `0xC2 0x80..=0x9F`), read byte by byte.
fn has_control(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b < 0x20 || b == 0x7f || (b == 0xc2 && matches!(bytes.get(i + 1), Some(0x80..=0x9f)))
    })
}

/// A header value as the sender meant it.
pub(crate) fn decode_value(value: &str) -> Cow<'_, str> {
    match decode_word(value) {
        Some(text) => Cow::Owned(text),
        None => Cow::Borrowed(value),
    }
}

/// The envelope of a received message. Missing headers become empty strings: the runtime then
/// moves the message to the error queue with the reason, instead of dropping it. A message
/// from a plain NATS client that sets only `Nats-Msg-Id` gets that as its message id.
pub(crate) fn envelope(map: Option<&HeaderMap>, payload: Bytes) -> Envelope {
    read_envelope(map, payload, false)
}

/// The envelope of a scheduled message that fell due: as [`envelope`] reads it, but keeping
/// `bus-deliver-at` among its custom headers, as the bus expects of it while it waits.
pub(crate) fn scheduled_envelope(map: Option<&HeaderMap>, payload: Bytes) -> Envelope {
    read_envelope(map, payload, true)
}

fn read_envelope(map: Option<&HeaderMap>, payload: Bytes, keep_deliver_at: bool) -> Envelope {
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
                MESSAGE_ID => h.message_id = MessageId::from(&*value),
                MESSAGE_TYPE => h.message_type = Cow::Owned(value.into_owned()),
                // The codec's own name, as the bus writes it when it sends: no copy to keep.
                CONTENT_TYPE if value == JSON => h.content_type = Cow::Borrowed(JSON),
                CONTENT_TYPE => h.content_type = Cow::Owned(value.into_owned()),
                CORRELATION_ID => h.correlation_id = Some(value.into_owned()),
                SENT_TIME => h.sent_at = parse_time(&value),
                DELIVER_AT if keep_deliver_at => {
                    custom.insert(DELIVER_AT.to_string(), value.into_owned());
                }
                DELIVER_AT => {}
                n if n.eq_ignore_ascii_case(NATS_MSG_ID) => nats_msg_id = Some(value),
                n if is_nats_header(n) => {}
                n => {
                    let n = decode_word(n).unwrap_or_else(|| n.to_string());
                    custom.insert(n, value.into_owned());
                }
            }
        }
    }
    if h.message_id.is_empty() {
        if let Some(id) = nats_msg_id {
            h.message_id = MessageId::from(&*id);
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
    fn sent_times_read_as_humantime_writes_them() {
        let mut times = vec![
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(951_782_400, 1), // 2000-02-29
            UNIX_EPOCH + Duration::new(4_107_542_399, 999_999_999), // 2100-02-28T23:59:59
            UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999), // 9999-12-31T23:59:59
            SystemTime::now(),
        ];
        // Every day of four centuries, at a time of day that moves along.
        let mut t = 946_684_800u64;
        for i in 0..146_097u64 {
            times.push(UNIX_EPOCH + Duration::new(t + i * 7, (i * 7_919) as u32 % 1_000_000_000));
            t += 86_400;
        }
        for time in times {
            assert_eq!(
                rfc3339_nanos(time).as_deref(),
                Some(humantime::format_rfc3339_nanos(time).to_string().as_str())
            );
        }
        assert_eq!(rfc3339_nanos(UNIX_EPOCH - Duration::from_secs(1)), None);
        assert_eq!(
            rfc3339_nanos(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
            None
        );
    }

    #[test]
    fn plain_values_travel_as_they_are() {
        for value in [
            "",
            "x",
            "0190b6e4-5c1a-7cc2-9d6e-1a2b3c4d5e6f",
            "a b",
            "a=?b",
        ] {
            assert!(is_plain(value.as_bytes()), "{value:?}");
            assert_eq!(encode_value(value), value);
        }
        for value in [" a", "a ", "=?x", "a\tb", "grüße", "a\u{7f}"] {
            assert!(!is_plain(value.as_bytes()), "{value:?}");
        }
    }

    #[test]
    fn control_characters_are_found_byte_by_byte() {
        for c in (0..=0x3000u32).filter_map(char::from_u32) {
            let text = format!("a{c}b");
            assert_eq!(has_control(&text), c.is_control(), "{c:?}");
        }
        assert!(!has_control("grüße, 世界 ✓ \u{c2}"));
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
        // Sent back by an operator: a new key for each resend, then for its retries.
        h.custom.remove(bus_core::header::DELAYED_RETRIES);
        h.custom
            .insert(bus_core::header::OPERATOR_RETRIES.into(), "1".into());
        assert_eq!(
            dedup_id(&ep, &h).as_deref(),
            Some("0190-abc/resent-1/retry-0")
        );
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
