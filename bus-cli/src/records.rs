//! What the operations return, as serde types: the `--json` output of the `bus` command and
//! the lines of an export file.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use bus_core::{header, Body, EndpointInfo, Envelope, FailedMessage, Headers};
use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// An endpoint as `bus endpoints` shows it; a figure the transport cannot tell is `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRow {
    /// The endpoint's name.
    pub name: String,
    /// Messages waiting in its input queue.
    pub depth: Option<u64>,
    /// Consumers reading its input queue.
    pub consumers: Option<u64>,
    /// Messages in its error queue.
    pub error_depth: Option<u64>,
}

impl From<EndpointInfo> for EndpointRow {
    fn from(info: EndpointInfo) -> Self {
        EndpointRow {
            name: info.name,
            depth: info.depth,
            consumers: info.consumers,
            error_depth: info.error_depth,
        }
    }
}

/// One failed message as `bus errors list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRow {
    /// Its message id.
    pub id: String,
    /// Its wire name.
    pub message_type: String,
    /// Why it failed (`handler-error`, `panic`, `timeout`, ...).
    pub reason: Option<String>,
    /// Handler attempts made.
    pub attempts: Option<u32>,
    /// When it was moved to the error queue (RFC 3339).
    pub failed_at: Option<String>,
    /// The error's first line.
    pub error: Option<String>,
}

impl From<&FailedMessage> for FailedRow {
    fn from(failed: &FailedMessage) -> Self {
        FailedRow {
            id: failed.message_id().to_string(),
            message_type: failed.message_type().to_string(),
            reason: failed.reason().map(str::to_string),
            attempts: failed.attempts(),
            failed_at: failed.failed_at().map(str::to_string),
            error: failed
                .error()
                .map(|e| e.lines().next().unwrap_or("").to_string()),
        }
    }
}

/// A message with every header and its body: what `bus errors show` prints and what an export
/// file holds, one per line. The body is kept byte-exact in `body_base64`; `body` repeats it as
/// JSON when it is JSON, for reading and editing (an import takes `body` when it is present,
/// so an edited file sends the edited message).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The endpoint whose error queue it is in.
    pub endpoint: String,
    /// Its message id.
    pub message_id: String,
    /// Its wire name.
    pub message_type: String,
    /// The body's content type.
    pub content_type: String,
    /// Its correlation id, when it carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// When it was sent (RFC 3339, nanoseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// Every other header, the failure headers included.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON, when it is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// The body, byte-exact, base64.
    pub body_base64: String,
}

impl MessageRecord {
    /// The record of `envelope` in the error queue of `endpoint`.
    pub fn of(endpoint: &str, envelope: &Envelope) -> Self {
        let h = &envelope.headers;
        let bytes: Vec<u8> = match &envelope.body {
            Body::Bytes(b) => b.to_vec(),
            // A typed body (the in-memory transport) is shown as the JSON it would be on a
            // broker.
            Body::Message(m) => bus_core::Codec::encode(&bus_core::JsonCodec, m.as_serialize())
                .map(|b| b.to_vec())
                .unwrap_or_default(),
        };
        MessageRecord {
            endpoint: endpoint.to_string(),
            message_id: h.message_id.to_string(),
            message_type: h.message_type.to_string(),
            content_type: h.content_type.to_string(),
            correlation_id: h.correlation_id.clone(),
            sent_at: h
                .sent_at
                .map(|t| humantime::format_rfc3339_nanos(t).to_string()),
            headers: h.custom.clone(),
            body: serde_json::from_slice(&bytes).ok(),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        }
    }

    /// The envelope this record describes: the edited JSON `body` when present, else the
    /// bytes of `body_base64`.
    pub fn to_envelope(&self) -> Result<Envelope, CliError> {
        let bytes = match &self.body {
            Some(json) => serde_json::to_vec(json)
                .map_err(|e| CliError::Invalid(format!("message `{}`: {e}", self.message_id)))?,
            None => base64::engine::general_purpose::STANDARD
                .decode(&self.body_base64)
                .map_err(|e| {
                    CliError::Invalid(format!(
                        "message `{}`: `body_base64` is not base64: {e}",
                        self.message_id
                    ))
                })?,
        };
        let sent_at = match &self.sent_at {
            Some(text) => Some(humantime::parse_rfc3339(text).map_err(|e| {
                CliError::Invalid(format!("message `{}`: `sent_at`: {e}", self.message_id))
            })?),
            None => None,
        };
        let headers = Headers {
            message_id: self.message_id.as_str().into(),
            message_type: self.message_type.clone().into(),
            content_type: self.content_type.clone().into(),
            correlation_id: self.correlation_id.clone(),
            sent_at,
            custom: self.headers.clone(),
        };
        Ok(Envelope::from_bytes(headers, bytes))
    }
}

/// The envelope to send back to the endpoint: the same id, body and headers, the failure
/// headers kept as the history of the last failure, the retry counts reset so the endpoint's
/// policy gives it a full round again, and the operator's retries counted.
pub(crate) fn for_retry(envelope: &Envelope) -> Envelope {
    let mut headers: Headers = (*envelope.headers).clone();
    headers.custom.remove(header::DELAYED_RETRIES);
    headers.custom.remove(header::ATTEMPTS);
    let retries = headers
        .custom
        .get(header::OPERATOR_RETRIES)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    headers
        .custom
        .insert(header::OPERATOR_RETRIES.into(), (retries + 1).to_string());
    headers.custom.insert(
        header::OPERATOR_RETRY_TIME.into(),
        humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    );
    Envelope {
        headers: Arc::new(headers),
        body: envelope.body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_envelope() -> Envelope {
        let mut headers = Headers {
            message_id: "m-1".into(),
            message_type: "shop.PlaceOrder".into(),
            content_type: "application/json".into(),
            correlation_id: Some("order-7".into()),
            sent_at: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_500)),
            ..Headers::default()
        };
        headers
            .custom
            .insert(header::FAILURE_REASON.into(), "handler-error".into());
        headers
            .custom
            .insert(header::DELAYED_RETRIES.into(), "3".into());
        Envelope::from_bytes(headers, &br#"{"id":7, "qty":0}"#[..])
    }

    #[test]
    fn a_record_round_trips_to_the_same_envelope_byte_for_byte() {
        let original = failed_envelope();
        let record = MessageRecord::of("sales", &original);
        let line = serde_json::to_string(&record).unwrap();
        let mut back: MessageRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, record);
        // Without the readable copy, the base64 bytes are used as they are.
        back.body = None;
        let envelope = back.to_envelope().unwrap();
        assert_eq!(envelope.headers, original.headers);
        let (Body::Bytes(a), Body::Bytes(b)) = (&envelope.body, &original.body) else {
            panic!("bytes");
        };
        assert_eq!(a, b, "byte-exact, spacing included");
    }

    #[test]
    fn an_edited_json_body_is_what_an_import_sends() {
        let mut record = MessageRecord::of("sales", &failed_envelope());
        record.body = Some(serde_json::json!({"id": 7, "qty": 1}));
        let Body::Bytes(bytes) = record.to_envelope().unwrap().body else {
            panic!("bytes");
        };
        assert_eq!(&bytes[..], br#"{"id":7,"qty":1}"#);
    }

    #[test]
    fn a_retry_keeps_the_id_and_history_and_resets_the_retry_counts() {
        let original = failed_envelope();
        let once = for_retry(&original);
        let twice = for_retry(&once);
        assert_eq!(twice.headers.message_id, "m-1");
        assert_eq!(
            twice.headers.get(header::FAILURE_REASON),
            Some("handler-error")
        );
        assert_eq!(twice.headers.get(header::DELAYED_RETRIES), None);
        assert_eq!(twice.headers.get(header::OPERATOR_RETRIES), Some("2"));
    }
}
