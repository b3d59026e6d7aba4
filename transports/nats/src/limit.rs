//! The delivery limit: a message delivered `max_deliver` times without being settled (the
//! process handling it crashed each time, say) is no longer redelivered by JetStream, but it
//! stays in the endpoint's work-queue stream, invisible. JetStream announces it with an
//! advisory; every running instance listens, copies the message (body byte for byte, headers
//! kept) to the endpoint's error queue with failure headers, then deletes it from the input
//! stream. The copy's `Nats-Msg-Id` names the stream sequence, so when several instances
//! react, the error queue stores it once.

use std::time::SystemTime;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::Subscriber;
use bus_core::{header, Destination, FailureReason, Headers, TransportError};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::timeout;

use crate::subscription::stopped;
use crate::transport::NatsTransport;
use crate::wire;

/// The `bus-failure-reason` of a message moved for reaching the delivery limit.
const DELIVERY_LIMIT_REASON: &str = FailureReason::DeliveryLimit.as_str();

/// Subscribe to the endpoint's max-deliveries advisories; `None` (logged) when the server
/// refuses, and messages past the limit then stay in the input stream.
pub(crate) async fn listen(transport: &NatsTransport, endpoint: &str) -> Option<Subscriber> {
    let inner = &transport.inner;
    let naming = &inner.config.naming;
    let subject = format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        naming.endpoint_stream(endpoint),
        naming.consumer
    );
    let listening = async {
        let sub = inner.client.subscribe(subject).await?;
        // The subscription reaches the server with the flush.
        inner.client.flush().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(sub)
    };
    match listening.await {
        Ok(sub) => Some(sub),
        Err(error) => {
            tracing::warn!(%endpoint, %error, "cannot watch the delivery limit; messages past it stay in the input stream");
            None
        }
    }
}

/// Handle the endpoint's max-deliveries advisories until stopped.
pub(crate) async fn watch_delivery_limit(
    transport: NatsTransport,
    endpoint: String,
    advisories: Option<Subscriber>,
    mut stop: watch::Receiver<bool>,
) {
    let inner = &transport.inner;
    let naming = &inner.config.naming;
    let stream = naming.endpoint_stream(&endpoint);
    let Some(mut sub) = advisories else {
        return;
    };
    loop {
        let advisory = tokio::select! {
            _ = stopped(&mut stop) => break,
            m = sub.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&advisory.payload) else {
            continue;
        };
        let Some(seq) = v.get("stream_seq").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        let deliveries = v
            .get("deliveries")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        match move_to_error_queue(&transport, &endpoint, &stream, seq, deliveries).await {
            Ok(()) => {
                tracing::error!(%endpoint, seq, deliveries, "message past the delivery limit moved to the error queue")
            }
            Err(error) => {
                tracing::error!(%endpoint, seq, %error, "message past the delivery limit could not be moved; it stays in the input stream")
            }
        }
    }
    let _ = sub.unsubscribe().await;
}

async fn move_to_error_queue(
    transport: &NatsTransport,
    endpoint: &str,
    stream_name: &str,
    seq: u64,
    deliveries: u64,
) -> Result<(), TransportError> {
    let inner = &transport.inner;
    let config = &inner.config;
    let limit = config.request_timeout;
    let timed_out = |operation| TransportError::timeout(operation, limit);
    let stream = inner
        .js
        .get_stream_no_info(stream_name)
        .await
        .map_err(|e| TransportError::connection(format!("reading stream `{stream_name}`"), e))?;
    let raw = match timeout(limit, stream.get_raw_message(seq)).await {
        Err(_) => return Err(timed_out("reading a message past the delivery limit")),
        // Another instance moved it already.
        Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
        Ok(Err(e)) => {
            let reading = "reading a message past the delivery limit";
            return Err(TransportError::connection(reading, e));
        }
        Ok(Ok(m)) => m,
    };
    let envelope = wire::envelope(Some(&raw.headers), raw.payload.clone());
    let mut headers: Headers = (*envelope.headers).clone();
    let h = &mut headers.custom;
    h.insert(header::FAILURE_REASON.into(), DELIVERY_LIMIT_REASON.into());
    h.insert(
        header::FAILURE_ERROR_TYPE.into(),
        DELIVERY_LIMIT_REASON.into(),
    );
    h.insert(
        header::FAILURE_ERROR.into(),
        format!(
            "delivered {deliveries} times without being settled (the consumer's max_deliver is {}); the handling process may have crashed each time",
            config.max_deliver
        ),
    );
    h.insert(header::FAILURE_ENDPOINT.into(), endpoint.to_string());
    h.insert(header::FAILURE_ATTEMPTS.into(), deliveries.to_string());
    h.insert(
        header::FAILURE_TIME.into(),
        humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    );
    let dedup = format!("{stream_name}/{seq}/{DELIVERY_LIMIT_REASON}");
    let map = wire::headers(&headers, Some(&dedup));
    let subject = config.naming.error_subject(endpoint);
    let stored = async {
        inner
            .js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(raw.payload.clone())
                    .headers(map),
            )
            .await?
            .await
    };
    const COPYING: &str = "copying a message to the error queue";
    TransportError::within(COPYING, config.publish_timeout, stored)
        .await?
        .map_err(|e| {
            let error_queue = Destination::ErrorQueue(endpoint.into());
            TransportError::other(format!("copying to the {error_queue}"), e)
        })?;
    match timeout(limit, stream.delete_message(seq)).await {
        Ok(Ok(_)) => Ok(()),
        // Deleted meanwhile by another instance, or it will be tried again by the next one.
        Ok(Err(e)) => {
            tracing::debug!(%endpoint, seq, error = %e, "delete after moving past the delivery limit");
            Ok(())
        }
        Err(_) => Err(timed_out("deleting a message moved to the error queue")),
    }
}
