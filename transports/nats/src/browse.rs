//! Browsing an endpoint's queue: its stream read message by message, by sequence, with the
//! stream's own get request, so nothing is delivered, acked or counted. A consumer would not
//! do: an endpoint stream has work-queue retention, which allows only the endpoint's own
//! consumer on it.
//!
//! What a browse shows:
//!
//! - of the input queue, every message still in the endpoint's stream, which, with work-queue
//!   retention, is every message not acked yet: the waiting ones and those being handled right
//!   now (and one past the delivery limit until it is moved to the error queue). Delayed
//!   retries that are not due yet wait in the delay stream and are not shown;
//! - of the error queue, every message in the endpoint's error stream.
//!
//! Each message is read into an envelope exactly as a delivery is (the `wire` module).

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bus_core::{Destination, Envelope, QueueKind, TransportError};

use crate::config::check_subject_part;
use crate::topology::{api_error, get_stream, JetStreamError};
use crate::transport::NatsTransport;
use crate::wire;

/// Matches every subject: the next message of the stream, whatever its subject.
const ANY_SUBJECT: &str = ">";

/// Up to `limit` messages of an endpoint's queue, oldest first, left in place.
/// [`TransportError::Unroutable`] when its stream does not exist.
pub(crate) async fn browse(
    transport: &NatsTransport,
    endpoint: &str,
    queue: QueueKind,
    limit: usize,
) -> Result<Vec<Envelope>, TransportError> {
    check_subject_part("endpoint name", endpoint)?;
    let inner = &transport.inner;
    let config = &inner.config;
    let (name, destination) = match queue {
        QueueKind::Input => (
            config.naming.endpoint_stream(endpoint),
            Destination::Endpoint(endpoint.into()),
        ),
        QueueKind::Errors => (
            config.naming.error_stream(endpoint),
            Destination::ErrorQueue(endpoint.into()),
        ),
    };
    let Some(info) = get_stream(&inner.js, config, &name).await? else {
        return Err(TransportError::Unroutable(format!(
            "{destination} (no stream `{name}`)"
        )));
    };
    let mut found = Vec::with_capacity(limit.min(info.state.messages as usize));
    if limit == 0 || info.state.messages == 0 {
        return Ok(found);
    }
    let stream = inner
        .js
        .get_stream_no_info(&name)
        .await
        .map_err(|e| api_error(format!("reading stream `{name}`"), e))?;
    // Messages stored after the browse started are not waited for: the last sequence bounds
    // the walk. Acks (and deletions) leave gaps, which the "next message from" request skips.
    let last = info.state.last_sequence;
    let mut next = info.state.first_sequence.max(1);
    while found.len() < limit && next <= last {
        let reading = stream.get_first_raw_message_by_subject(ANY_SUBJECT, next);
        let message = match TransportError::within(
            "reading a message of a stream",
            config.request_timeout,
            reading,
        )
        .await?
        {
            Ok(m) => m,
            // Nothing from `next` on: the rest was acked or removed meanwhile.
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(api_error(format!("reading stream `{name}`"), e)),
        };
        if message.sequence > last {
            break;
        }
        next = message.sequence + 1;
        found.push(wire::envelope(Some(&message.headers), message.payload));
    }
    Ok(found)
}

impl JetStreamError for async_nats::jetstream::stream::RawMessageError {
    fn is_server_answer(&self) -> bool {
        matches!(self.kind(), LastRawMessageErrorKind::JetStream(_))
    }
    fn into_source(self) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(self)
    }
}
