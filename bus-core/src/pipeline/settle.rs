//! Settlement: the runtime carries out what a delivery's handling came to. A handled
//! message is acked (or its ack handed back to the worker to overlap with what it does next);
//! a failed one goes back to the endpoint's queue after a delay, or to its error queue with
//! the failure headers; when neither can be sent, it is returned to its queue: never lost.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use super::EndpointRuntime;
use crate::envelope::{header, Body, Envelope, Headers};
use crate::error::TransportError;
use crate::failure::Failure;
use crate::runtime::Counters;
use crate::transport::{Delivery, Destination, Outgoing};

/// Ack a handled delivery: done here when the transport acks at once, otherwise returned
/// pending for the worker to drive (see [`PendingAck`]).
pub(super) fn ack(ep: &EndpointRuntime, delivery: Delivery) -> Option<PendingAck> {
    let message_id = delivery.envelope().headers.message_id.clone();
    match delivery.ack_or_pending() {
        Ok(Ok(())) => None,
        Ok(Err(error)) => {
            tracing::warn!(endpoint = %ep.name, %message_id, %error, "ack failed; the message may be redelivered");
            None
        }
        Err(pending) => Some(PendingAck {
            ack: pending,
            endpoint: ep.name.clone(),
            message_id,
        }),
    }
}

/// The ack of a handled delivery that the transport has to wait for (a broker's confirmation),
/// with what its failure is logged with.
pub(crate) struct PendingAck {
    ack: crate::BoxFuture<Result<(), TransportError>>,
    endpoint: Arc<str>,
    message_id: crate::MessageId,
}

impl Future for PendingAck {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match self.ack.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(error)) => {
                tracing::warn!(endpoint = %self.endpoint, message_id = %self.message_id, %error, "ack failed; the message may be redelivered");
                Poll::Ready(())
            }
        }
    }
}

/// Send the message back to the endpoint's own queue after `delay`, then ack the original;
/// `false` when it could not be sent back and was returned to its queue instead. `round`
/// delayed retries were made before, and `attempts` attempts in all.
pub(super) async fn schedule_retry(
    ep: &EndpointRuntime,
    delivery: Delivery,
    round: u32,
    attempts: u32,
    delay: Duration,
) -> bool {
    let envelope = delivery.envelope().clone();
    let mut headers: Headers = (*envelope.headers).clone();
    headers
        .custom
        .insert(header::DELAYED_RETRIES.to_string(), (round + 1).to_string());
    headers
        .custom
        .insert(header::ATTEMPTS.to_string(), attempts.to_string());
    let out = Outgoing {
        destination: Destination::Endpoint(ep.name.clone()),
        envelope: Envelope {
            headers: Arc::new(headers),
            body: envelope.body.clone(),
        },
        delay: Some(delay),
        deliver_at: None,
    };
    match ep.runtime.transport.send(out).await {
        Ok(()) => {
            Counters::bump(&ep.runtime.counters.delayed_retries);
            tracing::info!(endpoint = %ep.name, message_id = %envelope.headers.message_id, retry = round + 1, ?delay, "delayed retry scheduled");
            if let Err(error) = delivery.ack().await {
                tracing::warn!(endpoint = %ep.name, %error, "ack after scheduling a retry failed; the message may be handled twice");
            }
            true
        }
        Err(error) => {
            tracing::error!(endpoint = %ep.name, %error, "could not schedule a delayed retry; returning the message to the queue");
            requeue_later(delivery).await;
            false
        }
    }
}

/// Move the message to the error queue with failure headers, body unchanged, then ack it.
/// If the error queue refuses it, the original is returned to its queue instead (never lost),
/// and this returns `false`.
pub(super) async fn dead_letter(
    ep: &EndpointRuntime,
    delivery: Delivery,
    failure: Failure,
    attempts: u32,
) -> bool {
    let envelope = delivery.envelope().clone();
    let mut headers: Headers = (*envelope.headers).clone();
    let body = match &envelope.body {
        Body::Bytes(b) => Body::Bytes(b.clone()),
        Body::Message(m) => {
            let codec = ep.runtime.codecs.default_codec();
            match codec.encode(m.as_serialize()) {
                Ok(bytes) => {
                    headers.content_type = ep.runtime.codecs.default_content_type();
                    Body::Bytes(bytes)
                }
                Err(_) => Body::Message(m.clone()),
            }
        }
    };
    let h = &mut headers.custom;
    h.insert(
        header::FAILURE_REASON.into(),
        failure.reason.as_str().into(),
    );
    h.insert(
        header::FAILURE_ERROR_TYPE.into(),
        failure.error_type.clone(),
    );
    h.insert(header::FAILURE_ERROR.into(), failure.message.clone());
    if !failure.causes.is_empty() {
        h.insert(header::FAILURE_CAUSES.into(), failure.causes.join(": "));
    }
    if let Some(handler) = &failure.handler {
        h.insert(header::FAILURE_HANDLER.into(), handler.clone());
    }
    h.insert(header::FAILURE_ENDPOINT.into(), ep.name.to_string());
    h.insert(header::FAILURE_ATTEMPTS.into(), attempts.to_string());
    h.insert(
        header::FAILURE_TIME.into(),
        humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    );
    crate::nservicebus::failed(h, &failure, &ep.name);
    let failed = Arc::new(headers);
    let out = Outgoing::new(
        Destination::ErrorQueue(ep.name.clone()),
        Envelope {
            headers: failed.clone(),
            body,
        },
    );
    match ep.runtime.transport.send(out).await {
        Ok(()) => {
            // A request's caller hears of the failure now, not at its timeout.
            if let Some(reply) = ep.runtime.failure_reply(&envelope.headers, &failed) {
                if let Err(error) = ep.runtime.transport.send(reply).await {
                    tracing::warn!(endpoint = %ep.name, %error, "could not tell the caller of a failed request; it will time out");
                }
            }
            Counters::bump(&ep.runtime.counters.dead_lettered);
            tracing::error!(
                endpoint = %ep.name,
                message_type = %envelope.headers.message_type,
                message_id = %envelope.headers.message_id,
                correlation_id = envelope.headers.correlation_id().unwrap_or(""),
                reason = failure.reason.as_str(),
                error = %failure.message,
                attempts,
                "moved to the error queue"
            );
            if let Err(error) = delivery.ack().await {
                tracing::warn!(endpoint = %ep.name, %error, "ack after moving to the error queue failed; it may be there twice");
            }
            true
        }
        Err(error) => {
            tracing::error!(endpoint = %ep.name, %error, "the error queue refused the message; returning it to its queue");
            requeue_later(delivery).await;
            false
        }
    }
}

/// Nack after a pause, so a broken error queue does not turn into a hot loop.
pub(super) async fn requeue_later(delivery: Delivery) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Err(error) = delivery.nack().await {
        tracing::warn!(%error, "nack failed; the transport will redeliver when the delivery expires");
    }
}
