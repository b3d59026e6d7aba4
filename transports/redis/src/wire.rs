//! The wire format: how an envelope maps onto the fields of a stream entry, and how the
//! replies of the stream commands are read.
//!
//! An entry carries the well-known headers under the names of [`bus_core::header`] (the same
//! as the NATS headers), every custom header as a field of its own name, and the body, byte
//! for byte, in `body`:
//!
//! | field | header | notes |
//! |---|---|---|
//! | `bus-message-id` | message id | required on receive |
//! | `bus-message-type` | message type (wire name) | required on receive |
//! | `bus-content-type` | content type | required on receive |
//! | `bus-correlation-id` | correlation id | optional |
//! | `bus-sent-time` | sent time | RFC 3339, UTC, nanoseconds (`2026-01-02T03:04:05.123456789Z`); on receive also milliseconds since the Unix epoch; optional |
//! | `body` | the serialized message | binary-safe |
//! | any other | custom header, e.g. `bus-conversation-id` | UTF-8 text |
//!
//! Entries written before these names were shared used `message_id`, `type`, `content_type`,
//! `correlation_id` and `timestamp`; they are still read (see [`legacy`]), so entries already
//! in a stream decode. A custom header may not use one of the field names above, old or new.
//! Missing required fields become empty headers, which the runtime moves to the error queue
//! with the reason.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_core::header::{CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID, MESSAGE_TYPE, SENT_TIME};
use bus_core::{Body, Envelope, Headers, TransportError};
use redis::Value;

/// The field holding the body.
pub(crate) const BODY: &str = "body";

/// The field names of the well-known headers in entries written before they became the shared
/// names of [`bus_core::header`]. Read when an entry lacks the new name; never written.
mod legacy {
    pub(super) const MESSAGE_ID: &str = "message_id";
    pub(super) const MESSAGE_TYPE: &str = "type";
    pub(super) const CONTENT_TYPE: &str = "content_type";
    pub(super) const CORRELATION_ID: &str = "correlation_id";
    pub(super) const SENT_TIME: &str = "timestamp";
}

/// The fields that may hold the message id, the current name first.
pub(crate) const MESSAGE_ID_FIELDS: [&str; 2] = [MESSAGE_ID, legacy::MESSAGE_ID];

/// Field names a custom header cannot take. The old names stay reserved, so that a new entry
/// never has a custom header an old entry's reader (this one) would take for a well-known one.
const RESERVED: &[&str] = &[
    BODY,
    MESSAGE_ID,
    MESSAGE_TYPE,
    CONTENT_TYPE,
    CORRELATION_ID,
    SENT_TIME,
    legacy::MESSAGE_ID,
    legacy::MESSAGE_TYPE,
    legacy::CONTENT_TYPE,
    legacy::CORRELATION_ID,
    legacy::SENT_TIME,
];

/// The field-value list of an entry for an envelope, flattened: `[f1, v1, f2, v2, ...]`.
pub(crate) fn fields(envelope: &Envelope) -> Result<Vec<Vec<u8>>, TransportError> {
    let h = &envelope.headers;
    let body = match &envelope.body {
        Body::Bytes(b) => b.to_vec(),
        Body::Message(m) => {
            return Err(TransportError::Other {
                context: format!(
                    "message `{}` has a typed in-process body; the Redis transport needs bytes",
                    m.message_name()
                ),
                source: None,
            })
        }
    };
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(12 + 2 * h.custom.len());
    let mut put = |k: &str, v: &[u8]| {
        out.push(k.as_bytes().to_vec());
        out.push(v.to_vec());
    };
    put(MESSAGE_ID, h.message_id.as_bytes());
    put(MESSAGE_TYPE, h.message_type.as_bytes());
    put(CONTENT_TYPE, h.content_type.as_bytes());
    if let Some(c) = &h.correlation_id {
        put(CORRELATION_ID, c.as_bytes());
    }
    // RFC 3339 covers the years 1970 to 9999; a time outside them is not sent.
    if let Some(t) = h.sent_at.filter(|t| {
        t.duration_since(UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() < 253_402_300_800)
    }) {
        put(
            SENT_TIME,
            humantime::format_rfc3339_nanos(t).to_string().as_bytes(),
        );
    }
    for (k, v) in &h.custom {
        if RESERVED.contains(&k.as_str()) {
            return Err(TransportError::Other {
                context: format!(
                    "custom header `{k}` clashes with a field of the Redis wire format; rename it"
                ),
                source: None,
            });
        }
        put(k, v.as_bytes());
    }
    put(BODY, &body);
    Ok(out)
}

/// The envelope of a received entry. Fields are read leniently: text that is not UTF-8 is
/// converted lossily, a missing body is empty.
pub(crate) fn envelope(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Envelope {
    let mut new = WellKnown::default();
    let mut old = WellKnown::default();
    let mut custom = BTreeMap::new();
    let mut body = Vec::new();
    let text = |v: Vec<u8>| String::from_utf8(v).unwrap_or_else(|e| lossy(e.as_bytes()));
    for (k, v) in fields {
        let slot = match std::str::from_utf8(&k) {
            Ok(BODY) => {
                body = v;
                continue;
            }
            Ok(MESSAGE_ID) => &mut new.message_id,
            Ok(MESSAGE_TYPE) => &mut new.message_type,
            Ok(CONTENT_TYPE) => &mut new.content_type,
            Ok(CORRELATION_ID) => &mut new.correlation_id,
            Ok(SENT_TIME) => &mut new.sent_time,
            Ok(legacy::MESSAGE_ID) => &mut old.message_id,
            Ok(legacy::MESSAGE_TYPE) => &mut old.message_type,
            Ok(legacy::CONTENT_TYPE) => &mut old.content_type,
            Ok(legacy::CORRELATION_ID) => &mut old.correlation_id,
            Ok(legacy::SENT_TIME) => &mut old.sent_time,
            _ => {
                custom.insert(text(k), text(v));
                continue;
            }
        };
        *slot = Some(text(v));
    }
    let headers = Headers {
        message_id: new.message_id.or(old.message_id).unwrap_or_default().into(),
        message_type: new
            .message_type
            .or(old.message_type)
            .unwrap_or_default()
            .into(),
        content_type: new
            .content_type
            .or(old.content_type)
            .unwrap_or_default()
            .into(),
        correlation_id: new.correlation_id.or(old.correlation_id),
        sent_at: new
            .sent_time
            .or(old.sent_time)
            .as_deref()
            .and_then(timestamp),
        custom,
    };
    Envelope::from_bytes(headers, body)
}

/// The well-known fields of an entry, as read.
#[derive(Default)]
struct WellKnown {
    message_id: Option<String>,
    message_type: Option<String>,
    content_type: Option<String>,
    correlation_id: Option<String>,
    sent_time: Option<String>,
}

/// A sent time: RFC 3339, or milliseconds since the Unix epoch (what many clients write).
fn timestamp(text: &str) -> Option<SystemTime> {
    match text.parse::<u64>() {
        Ok(ms) => UNIX_EPOCH.checked_add(Duration::from_millis(ms)),
        Err(_) => humantime::parse_rfc3339(text).ok(),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A delayed message as stored in the sorted set: netstrings (`<len>:<bytes>,`) of a unique
/// token, then of every field and value. The token keeps two equal messages apart; the move
/// script decodes the rest back into the `XADD` arguments.
pub(crate) fn delayed_member(token: &str, fields: &[Vec<u8>]) -> Vec<u8> {
    netstrings(std::iter::once(token.as_bytes()).chain(fields.iter().map(Vec::as_slice)))
}

/// A scheduled message as stored in the hash of scheduled messages: netstrings of every
/// field and value, as [`fields`] writes them (the envelope already carries
/// `bus-deliver-at` and `bus-destination`). Read back with [`stored_fields`].
pub(crate) fn stored_message(fields: &[Vec<u8>]) -> Vec<u8> {
    netstrings(fields.iter().map(Vec::as_slice))
}

fn netstrings<'a>(parts: impl Iterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.clone().map(|p| p.len() + 8).sum::<usize>());
    for part in parts {
        out.extend_from_slice(part.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(part);
        out.push(b',');
    }
    out
}

/// The field-value pairs of a message stored by [`stored_message`]; `None` when the bytes are
/// not netstrings of pairs (not written by this transport).
pub(crate) fn stored_fields(mut bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut parts = Vec::new();
    while !bytes.is_empty() {
        let colon = bytes.iter().position(|b| *b == b':')?;
        let len: usize = std::str::from_utf8(&bytes[..colon]).ok()?.parse().ok()?;
        let rest = &bytes[colon + 1..];
        if rest.len() <= len || rest[len] != b',' {
            return None;
        }
        parts.push(rest[..len].to_vec());
        bytes = &rest[len + 1..];
    }
    if parts.len() % 2 != 0 {
        return None;
    }
    let mut it = parts.into_iter();
    let mut pairs = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    Some(pairs)
}

/// One entry of a stream reply. `fields` is `None` when the entry was deleted while pending.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// The entries of an `XREADGROUP` reply over one stream (nil when the block timed out).
pub(crate) fn read_reply(v: Value) -> Result<Vec<Entry>, String> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                match s {
                    Value::Array(mut pair) if pair.len() == 2 => {
                        out.extend(entries(pair.pop().unwrap_or(Value::Nil))?)
                    }
                    other => return Err(format!("unexpected XREADGROUP stream item: {other:?}")),
                }
            }
            Ok(out)
        }
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (_, v) in streams {
                out.extend(entries(v)?);
            }
            Ok(out)
        }
        other => Err(format!("unexpected XREADGROUP reply: {other:?}")),
    }
}

/// A list of `[id, [field, value, ...]]` entries.
pub(crate) fn entries(v: Value) -> Result<Vec<Entry>, String> {
    let items = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(format!("unexpected entry list: {other:?}")),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut parts) = item else {
            return Err(format!("unexpected entry: {item:?}"));
        };
        if parts.len() != 2 {
            return Err(format!("unexpected entry of {} parts", parts.len()));
        }
        let raw = parts.pop().unwrap_or(Value::Nil);
        let id = text(parts.pop().unwrap_or(Value::Nil)).ok_or("entry without id")?;
        let fields = match raw {
            Value::Nil => None,
            Value::Array(flat) => {
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((bytes(k), bytes(v)));
                }
                Some(pairs)
            }
            Value::Map(map) => Some(map.into_iter().map(|(k, v)| (bytes(k), bytes(v))).collect()),
            other => return Err(format!("unexpected entry fields: {other:?}")),
        };
        out.push(Entry { id, fields });
    }
    Ok(out)
}

/// An `XAUTOCLAIM` reply: the next cursor and the claimed entries (the ids of entries deleted
/// meanwhile, which Redis 7 lists third and drops from the pending list itself, are ignored).
pub(crate) fn autoclaim_reply(v: Value) -> Result<(String, Vec<Entry>), String> {
    let Value::Array(parts) = v else {
        return Err(format!("unexpected XAUTOCLAIM reply: {v:?}"));
    };
    let mut it = parts.into_iter();
    let cursor = it
        .next()
        .and_then(text)
        .ok_or("XAUTOCLAIM without cursor")?;
    let claimed = entries(it.next().unwrap_or(Value::Nil))?;
    Ok((cursor, claimed))
}

/// Delivery counts by id from an extended `XPENDING` reply (`[[id, consumer, idle, count]]`).
pub(crate) fn pending_counts(v: Value) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    if let Value::Array(rows) = v {
        for row in rows {
            if let Value::Array(cols) = row {
                let mut it = cols.into_iter();
                let id = it.next().and_then(text);
                let count = it.nth(2).and_then(int);
                if let (Some(id), Some(count)) = (id, count) {
                    out.insert(id, u32::try_from(count).unwrap_or(u32::MAX));
                }
            }
        }
    }
    out
}

fn bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        Value::VerbatimString { text, .. } => text.into_bytes(),
        _ => Vec::new(),
    }
}

pub(crate) fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Value::SimpleString(s) => Some(s),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn int(v: Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(n),
        Value::BulkString(b) => std::str::from_utf8(&b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pairs(flat: Vec<Vec<u8>>) -> Vec<(Vec<u8>, Vec<u8>)> {
        flat.chunks(2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect()
    }

    #[test]
    fn an_envelope_survives_the_round_trip() {
        let mut h = Headers {
            message_id: "m-1".into(),
            message_type: "tests.Work".into(),
            content_type: "application/octet-stream".into(),
            correlation_id: Some("c-1".into()),
            sent_at: Some(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789)),
            custom: BTreeMap::new(),
        };
        h.custom
            .insert("bus-conversation-id".into(), "ünï €".into());
        h.custom.insert("empty".into(), String::new());
        let body: Vec<u8> = (0..=255).collect();
        let env = Envelope::from_bytes(h.clone(), body.clone());
        let back = envelope(pairs(fields(&env).unwrap()));
        assert_eq!(*back.headers, h);
        match back.body {
            Body::Bytes(b) => assert_eq!(b.as_ref(), body.as_slice()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sent_times_are_read_in_both_forms() {
        assert_eq!(
            timestamp("1700000000123"),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(
            timestamp("2023-11-14T22:13:20.5Z"),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_500))
        );
        assert_eq!(timestamp("soon"), None);
        let before_1970 = Envelope::from_bytes(
            Headers {
                sent_at: UNIX_EPOCH.checked_sub(Duration::from_secs(5)),
                ..Headers::default()
            },
            Vec::new(),
        );
        let f = fields(&before_1970).unwrap();
        assert!(!f.iter().any(|x| x == SENT_TIME.as_bytes()));
    }

    #[test]
    fn a_custom_header_may_not_shadow_a_field() {
        let mut h = Headers::default();
        h.custom.insert("body".into(), "x".into());
        let env = Envelope {
            headers: Arc::new(h),
            body: Body::Bytes(Default::default()),
        };
        assert!(fields(&env).is_err());
    }

    #[test]
    fn missing_fields_become_empty_headers() {
        let env = envelope(vec![(b"other".to_vec(), vec![0xff, 0xfe])]);
        assert_eq!(env.headers.message_id, "");
        assert_eq!(env.headers.get("other"), Some("\u{fffd}\u{fffd}"));
    }

    #[test]
    fn entries_with_the_old_field_names_still_decode() {
        let field = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        let env = envelope(vec![
            field("message_id", "m-old"),
            field("type", "tests.Work"),
            field("content_type", "application/json"),
            field("correlation_id", "c-old"),
            field("timestamp", "1700000000123"),
            field("bus-conversation-id", "conv"),
            field("body", "{}"),
        ]);
        let h = &env.headers;
        assert_eq!(h.message_id, "m-old");
        assert_eq!(h.message_type, "tests.Work");
        assert_eq!(h.content_type, "application/json");
        assert_eq!(h.correlation_id.as_deref(), Some("c-old"));
        assert_eq!(
            h.sent_at,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(h.custom.len(), 1, "{:?}", h.custom);
        // Where both are present, the shared name wins.
        let env = envelope(vec![
            field("type", "old.Name"),
            field(MESSAGE_TYPE, "new.Name"),
        ]);
        assert_eq!(env.headers.message_type, "new.Name");
    }

    #[test]
    fn entries_use_the_shared_header_names() {
        let env = Envelope::from_bytes(
            Headers {
                message_id: "m-1".into(),
                message_type: "tests.Work".into(),
                content_type: "application/json".into(),
                ..Headers::default()
            },
            Vec::new(),
        );
        let names: Vec<Vec<u8>> = fields(&env).unwrap().into_iter().step_by(2).collect();
        for name in [MESSAGE_ID, MESSAGE_TYPE, CONTENT_TYPE, BODY] {
            assert!(names.contains(&name.as_bytes().to_vec()), "{name}");
        }
        let mut h = Headers::default();
        h.custom.insert("type".into(), "x".into());
        let old_name = Envelope::from_bytes(h, Vec::new());
        assert!(fields(&old_name).is_err(), "old names stay reserved");
    }

    #[test]
    fn delayed_members_are_netstrings() {
        let m = delayed_member("t1", &[b"body".to_vec(), b"a,b:c".to_vec()]);
        assert_eq!(m, b"2:t1,4:body,5:a,b:c,".to_vec());
    }

    #[test]
    fn stored_messages_come_back_as_they_went() {
        let mut h = Headers {
            message_id: "m-1".into(),
            message_type: "tests.Work".into(),
            content_type: "application/json".into(),
            ..Headers::default()
        };
        h.custom
            .insert("bus-deliver-at".into(), "1700000000123".into());
        h.custom
            .insert("bus-destination".into(), "event:a:b,c".into());
        let body: Vec<u8> = b"12:x,y:{}".iter().copied().chain(0..=255).collect();
        let env = Envelope::from_bytes(h.clone(), body.clone());
        let stored = stored_message(&fields(&env).unwrap());
        let back = envelope(stored_fields(&stored).expect("decodes"));
        assert_eq!(*back.headers, h);
        match back.body {
            Body::Bytes(b) => assert_eq!(b.as_ref(), body.as_slice()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stored_messages_not_written_here_do_not_decode() {
        assert_eq!(stored_fields(b""), Some(vec![]));
        assert_eq!(stored_fields(b"1:a,"), None, "a field without value");
        assert_eq!(stored_fields(b"5:a,"), None, "too short");
        assert_eq!(stored_fields(b"1:a;1:b,"), None, "no comma");
        assert_eq!(stored_fields(b"x:a,1:b,"), None, "no length");
        assert_eq!(
            stored_fields(b"1:a,0:,"),
            Some(vec![(b"a".to_vec(), Vec::new())])
        );
    }

    #[test]
    fn replies_are_parsed() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("bus:ep:a"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("body"), bulk("x")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let got = read_reply(reply).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "1-0");
        assert_eq!(got[0].fields, Some(vec![(b"body".to_vec(), b"x".to_vec())]));
        assert_eq!(got[1].fields, None);
        assert!(read_reply(Value::Nil).unwrap().is_empty());

        let claim = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ]);
        assert_eq!(autoclaim_reply(claim).unwrap(), ("0-0".to_string(), vec![]));

        let pending = Value::Array(vec![Value::Array(vec![
            bulk("5-1"),
            bulk("c"),
            Value::Int(10),
            Value::Int(3),
        ])]);
        assert_eq!(pending_counts(pending).get("5-1"), Some(&3));
    }
}
