//! Outbox entries: an [`Outgoing`] as a row, and back.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_core::{Body, Bytes, Destination, Envelope, Headers, Outgoing, StorageError};
use serde_json::{json, Value};
use tokio_postgres::Row;

/// The columns of the rows to insert, one vector per column.
#[derive(Default)]
pub(crate) struct Rows {
    pub(crate) destinations: Vec<String>,
    pub(crate) headers: Vec<String>,
    pub(crate) bodies: Vec<Bytes>,
    pub(crate) deliver_at: Vec<Option<SystemTime>>,
}

impl Rows {
    /// The rows for `outgoing`; a typed in-process body cannot be stored.
    pub(crate) fn of(outgoing: &[Outgoing]) -> Result<Rows, StorageError> {
        let mut rows = Rows::default();
        for out in outgoing {
            let body = match &out.envelope.body {
                Body::Bytes(bytes) => bytes.clone(),
                Body::Message(_) => {
                    return Err(StorageError::Unsupported {
                        operation: "store a typed in-process message body in its outbox: use a \
                                    broker transport, or `MemoryTransport::new().serialize(true)` \
                                    for the in-memory one",
                        storage: "postgres".into(),
                    })
                }
            };
            rows.destinations.push(out.destination.to_header());
            rows.headers
                .push(headers_json(&out.envelope.headers).to_string());
            rows.bodies.push(body);
            rows.deliver_at.push(out.deliver_at);
        }
        Ok(rows)
    }

    pub(crate) fn bodies(&self) -> Vec<&[u8]> {
        self.bodies.iter().map(|b| &b[..]).collect()
    }
}

/// All of the headers: the envelope's own fields and the custom map.
fn headers_json(headers: &Headers) -> Value {
    let sent_at = headers
        .sent_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64);
    json!({
        "message_id": headers.message_id.as_str(),
        "message_type": headers.message_type,
        "content_type": headers.content_type,
        "correlation_id": headers.correlation_id,
        "sent_at_unix_ns": sent_at,
        "custom": headers.custom,
    })
}

fn headers_from(text: &str) -> Result<Headers, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let text_of = |key: &str| -> Option<String> { value.get(key)?.as_str().map(str::to_string) };
    let custom = match value.get("custom") {
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(Headers {
        message_id: text_of("message_id")
            .ok_or("no message_id in the headers")?
            .into(),
        message_type: Cow::Owned(text_of("message_type").unwrap_or_default()),
        content_type: Cow::Owned(text_of("content_type").unwrap_or_default()),
        correlation_id: text_of("correlation_id"),
        sent_at: value
            .get("sent_at_unix_ns")
            .and_then(Value::as_u64)
            .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns)),
        custom,
    })
}

/// A taken row as the message to send, or why it cannot be one.
pub(crate) fn outgoing(row: &Row) -> Result<(i64, Outgoing), (i64, String)> {
    let id: i64 = row.get(0);
    let read = || -> Result<Outgoing, String> {
        let destination: String = row.try_get(1).map_err(|e| e.to_string())?;
        let headers: String = row.try_get(2).map_err(|e| e.to_string())?;
        let body: Vec<u8> = row.try_get(3).map_err(|e| e.to_string())?;
        let deliver_at: Option<SystemTime> = row.try_get(4).map_err(|e| e.to_string())?;
        let destination = Destination::from_header(&destination)
            .ok_or_else(|| format!("destination `{destination}` is not one the bus writes"))?;
        Ok(Outgoing {
            destination,
            envelope: Envelope {
                headers: Arc::new(headers_from(&headers)?),
                body: Body::Bytes(Bytes::from(body)),
            },
            delay: None,
            deliver_at,
        })
    };
    read().map(|out| (id, out)).map_err(|why| (id, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_their_json() {
        let mut custom = BTreeMap::new();
        custom.insert("bus-causation-id".to_string(), "m-0".to_string());
        let headers = Headers {
            message_id: "m-1".into(),
            message_type: "shop.Ship".into(),
            content_type: "application/json".into(),
            correlation_id: Some("order-7".into()),
            sent_at: Some(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789)),
            custom,
        };
        let json = headers_json(&headers).to_string();
        assert_eq!(headers_from(&json).unwrap(), headers);
        let bare = Headers {
            message_id: "m-2".into(),
            ..Headers::default()
        };
        assert_eq!(
            headers_from(&headers_json(&bare).to_string()).unwrap(),
            bare
        );
    }
}
