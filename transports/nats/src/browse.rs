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

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
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
    let mut found = Vec::new();
    if limit == 0 {
        // The stream must still exist.
        Reader::open(transport, endpoint, queue).await?;
        return Ok(found);
    }
    let Some(mut reader) = Reader::open(transport, endpoint, queue).await? else {
        return Ok(found);
    };
    while found.len() < limit {
        let Some((_, envelope)) = reader.next().await? else {
            break;
        };
        found.push(envelope);
    }
    Ok(found)
}

/// The messages of an endpoint's stream, read one by one by sequence, oldest first, up to
/// the last one stored when the reader opened: messages stored later are not waited for.
pub(crate) struct Reader {
    /// The stream's name, for errors.
    pub(crate) name: String,
    pub(crate) stream: Stream<()>,
    next: u64,
    last: u64,
    request_timeout: std::time::Duration,
}

impl Reader {
    /// A reader of `endpoint`'s `queue`; `None` when its stream holds nothing.
    /// [`TransportError::Unroutable`] when the stream does not exist.
    pub(crate) async fn open(
        transport: &NatsTransport,
        endpoint: &str,
        queue: QueueKind,
    ) -> Result<Option<Reader>, TransportError> {
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
        if info.state.messages == 0 {
            return Ok(None);
        }
        let stream = inner
            .js
            .get_stream_no_info(&name)
            .await
            .map_err(|e| api_error(format!("reading stream `{name}`"), e))?;
        Ok(Some(Reader {
            name,
            stream,
            next: info.state.first_sequence.max(1),
            last: info.state.last_sequence,
            request_timeout: config.request_timeout,
        }))
    }

    /// The next message, with its sequence; `None` past the last one. Acks and deletions
    /// leave gaps, which the "next message from" request skips. Each read waits at most the
    /// request timeout.
    pub(crate) async fn next(&mut self) -> Result<Option<(u64, Envelope)>, TransportError> {
        if self.next > self.last {
            return Ok(None);
        }
        let reading = self
            .stream
            .get_first_raw_message_by_subject(ANY_SUBJECT, self.next);
        let message = match TransportError::within(
            "reading a message of a stream",
            self.request_timeout,
            reading,
        )
        .await?
        {
            Ok(m) => m,
            // Nothing from `next` on: the rest was acked or removed meanwhile.
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                self.next = self.last + 1;
                return Ok(None);
            }
            Err(e) => return Err(api_error(format!("reading stream `{}`", self.name), e)),
        };
        if message.sequence > self.last {
            self.next = self.last + 1;
            return Ok(None);
        }
        self.next = message.sequence + 1;
        let envelope = wire::envelope(Some(&message.headers), message.payload);
        Ok(Some((message.sequence, envelope)))
    }
}

impl JetStreamError for async_nats::jetstream::stream::RawMessageError {
    fn is_server_answer(&self) -> bool {
        matches!(self.kind(), LastRawMessageErrorKind::JetStream(_))
    }
    fn into_source(self) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(self)
    }
}
