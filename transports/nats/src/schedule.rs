//! Scheduled messages: kept in one work-queue stream of the naming until they are due, then
//! handed to the bus, which sends each to its destination.
//!
//! Servers before 2.12 cannot schedule a message, so a scheduled message is published to the
//! bus-wide stream `[<NAMESPACE>_]<PREFIX>_SCHEDULED` with two more headers:
//! `bus-deliver-at` (when it is due, milliseconds since the Unix epoch) and `bus-destination`
//! (`endpoint:E` or `event:W`). Its subject, `[<namespace>.]<prefix>.scheduled.<token>`, is made
//! of its message id ([`subject_token`]), and the stream keeps one message per subject: sending
//! it again replaces it, and cancelling finds it by subject and deletes it by sequence.
//!
//! Every running bus that hosts endpoints pulls from the stream's one durable consumer, as
//! the delay stream's consumer is pulled for delayed retries: a message that is not due yet
//! is parked with a nak delayed until it is (JetStream keeps the timer, so no process holds
//! it in memory and a crash loses nothing), a due one is handed to the bus, which sends it
//! and then acks it (removing it for good). The buses compete: each message is handed to one
//! at a time, and one handed out and never settled comes back after the ack wait.

use std::borrow::Cow;
use std::future::IntoFuture;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::header::HeaderName;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, LastRawMessageErrorKind};
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_nats::{Client, Subject};
use bus_core::header::DESTINATION;
use bus_core::{
    async_trait, Acker, Bytes, Delivery, Destination, Envelope, MessageId, Outgoing, Subscription,
    TransportError,
};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::acks::{settle, signal, ACK, NAK};
use crate::config::check_subject_part;
use crate::subscription::{is_stopped, pause_or_stop, reconnected, stopped};
use crate::topology::{ensure_consumer, ensure_scheduled_stream, ConsumerKind};
use crate::transport::{is_api_error, NatsTransport};
use crate::wire;

/// Largest batch of scheduled messages pulled at once.
const BATCH: usize = 64;
/// Due messages pulled and not yet taken by the bus. Few: each one waits here with its ack
/// wait running, and one not handed out is returned when the subscription ends.
const HANDED_OUT: usize = 16;
/// First pause after a failed pull; doubles up to [`PAUSE_MAX`].
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(5);
/// The header naming a scheduled message's destination, as the client library keeps it.
const DESTINATION_NAME: HeaderName = HeaderName::from_static(DESTINATION);

/// A message id as one subject token: the id itself when it is made of ASCII letters, digits,
/// `-` and `_` only (every id the bus makes); otherwise `=` followed by the id's bytes in hex,
/// which no id of the first kind can give, so two ids never share a token.
pub(crate) fn subject_token(id: &str) -> Cow<'_, str> {
    let plain = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return Cow::Borrowed(id);
    }
    let mut token = String::with_capacity(1 + 2 * id.len());
    token.push('=');
    for b in id.bytes() {
        token.push_str(&format!("{b:02x}"));
    }
    Cow::Owned(token)
}

/// Milliseconds since the Unix epoch (0 before it).
fn epoch_ms(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Store a message scheduled for `at` in the scheduled stream; `Ok` once JetStream has it.
pub(crate) async fn schedule(
    transport: &NatsTransport,
    out: &Outgoing,
    at: SystemTime,
) -> Result<(), TransportError> {
    match &out.destination {
        Destination::Endpoint(e) => check_subject_part("endpoint name", e)?,
        Destination::Event(w) => check_subject_part("event wire name", w)?,
        other => {
            return Err(TransportError::Other {
                context: format!(
                    "a message to the {other} cannot be scheduled; only commands and events can"
                ),
                source: None,
            })
        }
    }
    let inner = &transport.inner;
    let config = &inner.config;
    let headers = &out.envelope.headers;
    let subject = config
        .naming
        .scheduled_subject(&subject_token(&headers.message_id));
    let body = wire::body(&out.envelope)?;
    // No deduplication id: the stream keeps one message per id anyway, and a window would
    // swallow an id scheduled again after a cancel.
    let mut map = wire::headers(headers, None);
    // Rounded up: due no sooner than asked.
    let due = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros().div_ceil(1_000))
        .unwrap_or(0);
    map.insert(wire::DELIVER_AT_NAME, due.to_string());
    map.insert(DESTINATION_NAME, out.destination.to_header());
    transport.check_size(&map, &body)?;

    let deadline = Instant::now() + config.publish_timeout;
    let timed_out = || {
        TransportError::timeout(
            "scheduling a message (waiting for the JetStream ack)",
            config.publish_timeout,
        )
    };
    let mut pause = Duration::from_millis(50);
    loop {
        if !inner.scheduled_stream.load(Ordering::Acquire) {
            match timeout_at(deadline, ensure_scheduled_stream(&inner.js, config)).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(())) => inner.scheduled_stream.store(true, Ordering::Release),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "the scheduled stream is not there yet; will retry")
                }
            }
        }
        let publish = PublishMessage::build()
            .payload(body.clone())
            .headers(map.clone());
        let stored = async {
            inner
                .js
                .send_publish(subject.clone(), publish)
                .await?
                .into_future()
                .await
        };
        match timeout_at(deadline, stored).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => match e.kind() {
                // Deleted since (or never created, when the step above failed): again.
                PublishErrorKind::StreamNotFound => {
                    inner.scheduled_stream.store(false, Ordering::Release);
                }
                PublishErrorKind::Other if is_api_error(&e) => {
                    let storing = format!(
                        "JetStream did not store the scheduled message for {}",
                        out.destination
                    );
                    return Err(TransportError::refused(storing, e));
                }
                _ => tracing::debug!(error = %e, %subject, "no publish ack; will retry"),
            },
        }
        if Instant::now() + pause >= deadline {
            return Err(timed_out());
        }
        sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Cancel the scheduled message with this id: `true` when it waited and now never will be
/// delivered. One already due is the delivering buses' to hand out (it may be on its way
/// right now): it is left alone, and the answer is `false`.
pub(crate) async fn cancel(
    transport: &NatsTransport,
    id: &MessageId,
) -> Result<bool, TransportError> {
    const FINDING: &str = "finding a scheduled message";
    const DELETING: &str = "deleting a scheduled message";
    let inner = &transport.inner;
    let config = &inner.config;
    let limit = config.request_timeout;
    let stream = inner
        .js
        .get_stream_no_info(config.naming.scheduled_stream())
        .await
        .map_err(|e| TransportError::other(FINDING, e))?;
    let subject = config.naming.scheduled_subject(&subject_token(id));
    let finding = stream.get_last_raw_message_by_subject(&subject);
    let found = match TransportError::within(FINDING, limit, finding).await? {
        Ok(found) => found,
        Err(e) => {
            return match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(false),
                LastRawMessageErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(false)
                }
                LastRawMessageErrorKind::JetStream(_) => Err(TransportError::refused(FINDING, e)),
                _ => Err(TransportError::connection(FINDING, e)),
            }
        }
    };
    let due_ms: u128 = found
        .headers
        .get(wire::DELIVER_AT)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0);
    if due_ms <= epoch_ms(SystemTime::now()) {
        return Ok(false);
    }
    let deleting = stream.delete_message(found.sequence);
    match TransportError::within(DELETING, limit, deleting).await? {
        Ok(deleted) => Ok(deleted),
        Err(e) => match e.kind() {
            // Taken and acked between the two requests: delivered, not cancelled.
            DeleteMessageErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
                    || j.error_code() == ErrorCode::NO_MESSAGE_FOUND
                    || j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(false)
            }
            DeleteMessageErrorKind::JetStream(_) => Err(TransportError::refused(DELETING, e)),
            _ => Err(TransportError::connection(DELETING, e)),
        },
    }
}

/// Start handing out the due scheduled messages, creating the stream and its consumer if they
/// are missing.
pub(crate) async fn subscribe_due(
    transport: &NatsTransport,
) -> Result<Box<dyn Subscription>, TransportError> {
    let inner = &transport.inner;
    let config = &inner.config;
    ensure_scheduled_stream(&inner.js, config).await?;
    inner.scheduled_stream.store(true, Ordering::Release);
    let consumer = ensure_consumer(&inner.js, config, "", ConsumerKind::Scheduled).await?;
    let (tx, rx) = mpsc::channel(HANDED_OUT);
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(pull_due(transport.clone(), consumer, tx, stop_rx));
    Ok(Box::new(DueSubscription {
        rx,
        stop,
        client: inner.client.clone(),
        request_timeout: config.request_timeout,
    }))
}

/// A due message pulled and not yet handed to the bus.
struct Due {
    envelope: Envelope,
    reply: Subject,
    delivered: u32,
}

/// The due scheduled messages, as the bus takes them.
struct DueSubscription {
    rx: mpsc::Receiver<Due>,
    stop: watch::Sender<bool>,
    client: Client,
    request_timeout: Duration,
}

impl DueSubscription {
    /// Stop pulling, and return at once what was pulled and not handed out.
    fn stop_and_return(&mut self) {
        self.stop.send_replace(true);
        self.rx.close();
        while let Ok(due) = self.rx.try_recv() {
            give_back(&self.client, due.reply);
        }
    }
}

impl Drop for DueSubscription {
    fn drop(&mut self) {
        self.stop_and_return();
    }
}

#[async_trait]
impl Subscription for DueSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        let due = self.rx.recv().await?;
        let acker = DueAcker {
            client: self.client.clone(),
            reply: due.reply,
            request_timeout: self.request_timeout,
        };
        Some(Ok(Delivery::new(
            due.envelope,
            Box::new(acker),
            due.delivered > 1,
            due.delivered,
        )))
    }

    async fn cancel(&mut self) {
        self.stop_and_return();
    }
}

/// Return a message to the consumer now (a nak), from wherever this is called; without a
/// runtime to send it, the ack wait returns it.
fn give_back(client: &Client, reply: Subject) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let client = client.clone();
        runtime.spawn(async move { signal(&client, reply, Bytes::from_static(NAK)).await });
    }
}

/// Settles one due message: the ack (confirmed, as the input's) removes it for good, a nak
/// has it handed out again at once (the bus waits before it nacks).
struct DueAcker {
    client: Client,
    reply: Subject,
    request_timeout: Duration,
}

#[async_trait]
impl Acker for DueAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        settle(&self.client, self.reply, ACK, self.request_timeout).await
    }

    async fn nack(self: Box<Self>, _envelope: Envelope) -> Result<(), TransportError> {
        signal(&self.client, self.reply, Bytes::from_static(NAK)).await;
        Ok(())
    }

    fn abandon(self: Box<Self>, _envelope: Envelope) {
        give_back(&self.client, self.reply);
    }
}

/// Pull the scheduled messages: park those not due, pass the due ones on, until stopped.
async fn pull_due(
    transport: NatsTransport,
    consumer: PullConsumer,
    tx: mpsc::Sender<Due>,
    mut stop: watch::Receiver<bool>,
) {
    let inner = &transport.inner;
    let config = &inner.config;
    let mut connections = inner.connections.clone();
    let mut consumer = Some(consumer);
    let mut pause = PAUSE_MIN;
    while !is_stopped(&stop) {
        let c = match &consumer {
            Some(c) => c.clone(),
            None => match reach_consumer(&transport).await {
                Ok(c) => {
                    consumer = Some(c.clone());
                    c
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot reach the consumer of scheduled messages; retrying");
                    if pause_or_stop(pause, &mut stop).await {
                        break;
                    }
                    pause = (pause * 2).min(PAUSE_MAX);
                    continue;
                }
            },
        };
        // As for an endpoint's input: a reconnect ends the pull, which the server may have
        // forgotten, instead of idling until the client's own timer ends it.
        connections.mark_unchanged();
        let request = c
            .batch()
            .max_messages(BATCH)
            .expires(config.fetch_wait)
            .messages();
        let mut batch = match timeout(config.request_timeout, request).await {
            Ok(Ok(b)) => b,
            other => {
                if let Ok(Err(error)) = other {
                    tracing::debug!(%error, "pulling scheduled messages failed; retrying");
                }
                consumer = None;
                if pause_or_stop(pause, &mut stop).await {
                    break;
                }
                pause = (pause * 2).min(PAUSE_MAX);
                continue;
            }
        };
        pause = PAUSE_MIN;
        // The batch ends by itself; this only guards against a stalled client.
        let deadline = Instant::now() + config.fetch_wait + Duration::from_secs(10);
        let mut stalled = std::pin::pin!(tokio::time::sleep_until(deadline));
        loop {
            let item = tokio::select! {
                biased;
                next = batch.next() => match next {
                    Some(item) => item,
                    None => break,
                },
                () = reconnected(&mut connections) => break,
                () = stopped(&mut stop) => break,
                () = &mut stalled => break,
            };
            match item {
                Ok(message) => {
                    if !take(&inner.client, message, &tx, &mut stop).await {
                        break;
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "pull of scheduled messages ended with an error");
                    consumer = None;
                }
            }
        }
    }
    tracing::debug!("stopped handing out scheduled messages");
}

/// The consumer of scheduled messages, and the stream under it, created if missing.
async fn reach_consumer(transport: &NatsTransport) -> Result<PullConsumer, TransportError> {
    let inner = &transport.inner;
    ensure_scheduled_stream(&inner.js, &inner.config).await?;
    ensure_consumer(&inner.js, &inner.config, "", ConsumerKind::Scheduled).await
}

/// When a pulled message is due; a message without a readable due time is due now.
fn due_at(message: &async_nats::Message) -> SystemTime {
    let ms: u64 = message
        .headers
        .as_ref()
        .and_then(|h| h.get(wire::DELIVER_AT))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Park one pulled message until it is due, or pass it on. `false` when the subscription
/// stopped (the message is returned).
async fn take(
    client: &Client,
    message: jetstream::Message,
    tx: &mpsc::Sender<Due>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let message = message.message;
    let Some(reply) = message.reply.clone() else {
        return true;
    };
    if let Ok(wait) = due_at(&message).duration_since(SystemTime::now()) {
        if !wait.is_zero() {
            signal(client, reply, AckKind::Nak(Some(wait)).into()).await;
            return true;
        }
    }
    let delivered = message
        .reply
        .as_deref()
        .and_then(crate::subscription::delivered)
        .unwrap_or(1);
    let room = tokio::select! {
        biased;
        room = tx.reserve() => room.ok(),
        () = stopped(stop) => None,
    };
    let Some(room) = room else {
        give_back(client, reply);
        return false;
    };
    room.send(Due {
        envelope: wire::scheduled_envelope(message.headers.as_ref(), message.payload),
        reply,
        delivered,
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_their_own_token() {
        assert_eq!(
            subject_token("0193a7c2-5b1e-7c3d-9f00-1234abcd"),
            "0193a7c2-5b1e-7c3d-9f00-1234abcd"
        );
        assert_eq!(subject_token("order_42-A"), "order_42-A");
        assert!(matches!(subject_token("abc"), Cow::Borrowed(_)));
    }

    #[test]
    fn other_ids_are_hex_behind_a_mark_no_plain_id_has() {
        assert_eq!(subject_token("a.b"), "=612e62");
        assert_eq!(subject_token("x y"), "=782079");
        assert_eq!(subject_token("*"), "=2a");
        assert_eq!(subject_token(">"), "=3e");
        assert_eq!(subject_token(""), "=");
        assert_eq!(subject_token("é"), "=c3a9");
        // A plain id that reads like hex keeps its own token, apart from the encoded one.
        assert_eq!(subject_token("612e62"), "612e62");
        assert_ne!(subject_token("612e62"), subject_token("a.b"));
    }

    #[test]
    fn every_token_is_one_valid_subject_token() {
        for id in [
            "a.b.c",
            "a b",
            "tab\there",
            "new\nline",
            "*",
            ">",
            "",
            "ok-id",
            "x=y",
            "ü",
        ] {
            let token = subject_token(id);
            assert!(!token.is_empty(), "{id:?}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='),
                "{id:?} -> {token}"
            );
            assert!(
                check_subject_part("token", &token).is_ok(),
                "{id:?} -> {token}"
            );
        }
    }

    #[test]
    fn distinct_ids_get_distinct_tokens() {
        let ids = ["a.b", "a_b", "a-b", "ab", "=6162", "6162", "a", "=61", "61"];
        let tokens: std::collections::HashSet<_> = ids.iter().map(|i| subject_token(i)).collect();
        assert_eq!(tokens.len(), ids.len());
    }
}
