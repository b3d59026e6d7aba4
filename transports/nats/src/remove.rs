//! Taking chosen messages out of an endpoint's queue, by message id.
//!
//! The stream is read as browsing reads it (by sequence, nothing delivered or counted), and
//! each message to remove is deleted by its sequence (`STREAM.MSG.DELETE`), which leaves the
//! others in place and in order. For each id asked for, the oldest message with that id is
//! removed (an id asked for twice removes two), so a resent message that failed again while its
//! first copy was still in the error queue is not taken out with it. The walk stops once every
//! id is found; messages stored after it started are not looked at.
//!
//! In the input stream, every message not acked yet is there, those being handled right now
//! included: one of those removed is still handled by the instance that has it (its ack then
//! finds it gone). A message acked between the read and the delete is not counted as removed.

use std::collections::HashMap;

use async_nats::jetstream::stream::{DeleteMessageError, DeleteMessageErrorKind};
use async_nats::jetstream::ErrorCode;
use bus_core::{MessageId, QueueKind, TransportError};

use crate::browse::Reader;
use crate::topology::{api_error, JetStreamError};
use crate::transport::NatsTransport;

/// See the module docs. [`TransportError::Unroutable`] when the stream does not exist.
pub(crate) async fn remove(
    transport: &NatsTransport,
    endpoint: &str,
    queue: QueueKind,
    ids: &[MessageId],
) -> Result<Vec<MessageId>, TransportError> {
    let mut removed = Vec::new();
    let Some(mut reader) = Reader::open(transport, endpoint, queue).await? else {
        return Ok(removed);
    };
    let limit = transport.inner.config.request_timeout;
    let mut wanted: HashMap<&str, usize> = HashMap::new();
    for id in ids {
        *wanted.entry(id.as_str()).or_default() += 1;
    }
    let mut left = ids.len();
    while left > 0 {
        let Some((sequence, envelope)) = reader.next().await? else {
            break;
        };
        let id = envelope.headers.message_id.clone();
        match wanted.get_mut(id.as_str()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                left -= 1;
            }
            _ => continue,
        }
        let deleting = reader.stream.delete_message(sequence);
        match TransportError::within("deleting a message of a stream", limit, deleting).await? {
            Ok(_) => removed.push(id),
            // Acked or removed since it was read: not removed by this call, and the id may
            // match a later message.
            Err(e) if is_gone(&e) => {
                if let Some(n) = wanted.get_mut(id.as_str()) {
                    *n += 1;
                    left += 1;
                }
            }
            Err(e) => {
                return Err(api_error(
                    format!("deleting message `{id}` from stream `{}`", reader.name),
                    e,
                ))
            }
        }
    }
    Ok(removed)
}

/// The message was not there any more.
fn is_gone(e: &DeleteMessageError) -> bool {
    matches!(e.kind(), DeleteMessageErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED)
}

impl JetStreamError for DeleteMessageError {
    fn is_server_answer(&self) -> bool {
        matches!(self.kind(), DeleteMessageErrorKind::JetStream(_))
    }
    fn into_source(self) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(self)
    }
}
