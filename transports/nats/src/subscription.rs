//! Subscriptions: pulling an endpoint's deliveries from its shared durable consumer, bounded by
//! prefetch, and handing them out.
//!
//! A background task pulls batches within the room the prefetch leaves (see the `flight`
//! module), reads each message into an envelope and passes it through a channel, so
//! [`Subscription::next`] is cancel-safe (dropping it loses nothing) and a worker takes a
//! ready delivery without a future ([`Subscription::next_now`]). From the pull until it is
//! settled a message is in the subscription's registry, whose task signals its progress, so a
//! long handler (or a message waiting for a free handler) is not redelivered to another
//! instance at the end of the ack wait; the deliveries are settled through it (the `acks`
//! module). When the client reconnects, the pull in progress ends and a new one starts at
//! once: the server may have forgotten the old request (a restart) or dropped it while the
//! connection was gone.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use bus_core::{async_trait, Delivery, Envelope, SubscribeOptions, Subscription, TransportError};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use crate::acks::Acks;
use crate::config::check_subject_part;
use crate::flight::Ticks;
use crate::topology::{ensure_consumer, ConsumerKind};
use crate::transport::NatsTransport;
use crate::{delay, limit, wire};

/// Longest wait of a cancel for the delayed retry being moved (it takes milliseconds unless
/// the server is unreachable; an unfinished move is done again later, stored once).
const MOVE_WAIT: Duration = Duration::from_secs(2);
/// First pause after a failed pull; doubles up to [`PAUSE_MAX`].
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(5);

/// A subscription on an endpoint's input consumer.
pub(crate) struct NatsSubscription {
    rx: mpsc::Receiver<Pulled>,
    stop: watch::Sender<bool>,
    /// The messages in flight, and the acker of the deliveries.
    acks: Arc<Acks>,
    /// The task moving due delayed retries: a cancel waits for the move in progress, so the
    /// retry is acked in its delay stream before the service stops.
    mover: Option<JoinHandle<()>>,
    request_timeout: Duration,
}

impl NatsSubscription {
    /// Check the endpoint's consumer exists, then start pulling, moving due delayed retries,
    /// and watching for messages past the delivery limit.
    pub(crate) async fn start(
        transport: NatsTransport,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Self, TransportError> {
        check_subject_part("endpoint name", endpoint)?;
        let inner = &transport.inner;
        let config = &inner.config;
        let consumer = ensure_consumer(&inner.js, config, endpoint, ConsumerKind::Input).await?;
        let prefetch = options.prefetch.max(1);
        let ticks = Ticks::new(
            progress_every(&transport),
            config.confirm_acks.then_some(config.request_timeout),
        );
        let acks = Acks::start(
            inner.client.clone(),
            inner.connections.clone(),
            prefetch,
            config.confirm_acks,
            config.request_timeout,
            ticks,
        )
        .await?;
        let (tx, rx) = mpsc::channel(prefetch);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(pull_loop(
            transport.clone(),
            endpoint.to_string(),
            consumer,
            tx,
            acks.clone(),
            stop_rx.clone(),
        ));
        let mover = tokio::spawn(delay::move_due(
            transport.clone(),
            endpoint.to_string(),
            stop_rx.clone(),
        ));
        // Listening before the subscription is handed out: an advisory sent before the
        // watcher subscribed would be lost, and its message left invisible in the stream.
        let advisories = limit::listen(&transport, endpoint).await;
        tokio::spawn(limit::watch_delivery_limit(
            transport.clone(),
            endpoint.to_string(),
            advisories,
            stop_rx,
        ));
        Ok(NatsSubscription {
            rx,
            stop,
            acks,
            mover: Some(mover),
            request_timeout: config.request_timeout,
        })
    }

    /// Stop the background tasks and return every message pulled but not handed out.
    fn stop_and_return(&mut self) {
        self.stop.send_replace(true);
        self.rx.close();
        while let Ok(pulled) = self.rx.try_recv() {
            self.acks.give_back(pulled.slot);
        }
    }

    /// A pulled message as a delivery, settled through the registry.
    fn delivery(&self, pulled: Pulled) -> Delivery {
        Delivery::shared(
            pulled.envelope,
            self.acks.clone(),
            u64::from(pulled.slot),
            pulled.delivered > 1,
            pulled.delivered,
        )
    }
}

impl Drop for NatsSubscription {
    fn drop(&mut self) {
        self.stop_and_return();
    }
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        let pulled = self.rx.recv().await?;
        Some(Ok(self.delivery(pulled)))
    }

    fn next_now(&mut self) -> Option<Delivery> {
        let pulled = self.rx.try_recv().ok()?;
        Some(self.delivery(pulled))
    }

    async fn cancel(&mut self) {
        self.stop_and_return();
        if let Some(mover) = self.mover.take() {
            let _ = timeout(self.request_timeout.min(MOVE_WAIT), mover).await;
        }
    }
}

/// A message pulled and not yet handed out: read from the wire already (by the pull loop, so
/// that a worker handling one message at a time spends no time on it), and its slot in the
/// registry.
struct Pulled {
    envelope: Envelope,
    /// Deliveries of the message so far, this one included.
    delivered: u32,
    slot: u32,
}

/// How often a message has been delivered, from its ack subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, or
/// with a domain and an account hash after `$JS.ACK.` (and possibly more tokens at the end).
/// The client library's `Message::info` reads the same, and parses every other field too.
pub(crate) fn delivered(reply: &str) -> Option<u32> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    let mut tokens = [""; 9];
    let mut n = 0;
    for token in rest.split('.') {
        if n == tokens.len() {
            break;
        }
        tokens[n] = token;
        n += 1;
    }
    let token = match n {
        9 => tokens[4],
        7 => tokens[2],
        _ => return None,
    };
    let count: u64 = token.parse().ok()?;
    Some(u32::try_from(count.max(1)).unwrap_or(u32::MAX))
}

/// Wait until the stop flag is raised (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleep, unless the stop comes first; returns whether it did.
pub(crate) async fn pause_or_stop(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stopped(stop) => true,
        _ = tokio::time::sleep(pause) => false,
    }
}

/// Wait for the next connection to be established (a reconnect); never returns once the
/// client is gone.
pub(crate) async fn reconnected(connections: &mut watch::Receiver<u64>) {
    if connections.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(crate) fn is_stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// How often each message in flight hears from us when progress signals are on: every
/// quarter of the ack wait (at least every 50 ms), well before JetStream gives up on it.
pub(crate) fn progress_every(transport: &NatsTransport) -> Option<Duration> {
    let c = &transport.inner.config;
    c.progress
        .then(|| (c.ack_wait / 4).max(Duration::from_millis(50)))
}

/// Pull batches as the prefetch leaves room for them, until stopped.
async fn pull_loop(
    transport: NatsTransport,
    endpoint: String,
    consumer: PullConsumer,
    tx: mpsc::Sender<Pulled>,
    acks: Arc<Acks>,
    mut stop: watch::Receiver<bool>,
) {
    let inner = &transport.inner;
    let config = &inner.config;
    let mut connections = inner.connections.clone();
    let mut consumer = Some(consumer);
    let mut pause = PAUSE_MIN;
    loop {
        let size = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            size = acks.room() => size,
        };
        let c = match &consumer {
            Some(c) => c.clone(),
            None => {
                match ensure_consumer(&inner.js, config, &endpoint, ConsumerKind::Input).await {
                    Ok(c) => {
                        consumer = Some(c.clone());
                        c
                    }
                    Err(error) => {
                        tracing::warn!(%endpoint, %error, "cannot reach the endpoint's consumer; retrying");
                        acks.end_pull();
                        if pause_or_stop(pause, &mut stop).await {
                            break;
                        }
                        pause = (pause * 2).min(PAUSE_MAX);
                        continue;
                    }
                }
            }
        };
        // A reconnect from here on ends this pull at once: a restarted server forgot the
        // request, and a server that saw the connection go dropped it for lack of interest,
        // so waiting for its end (the client's timer, fetch_wait + 5 s) would idle the
        // endpoint that long after every reconnect.
        connections.mark_unchanged();
        let request = c
            .batch()
            .max_messages(size)
            .expires(config.fetch_wait)
            .messages();
        let mut batch = match timeout(config.request_timeout, request).await {
            Ok(Ok(b)) => b,
            Ok(Err(error)) => {
                tracing::warn!(%endpoint, %error, "pull request failed; retrying");
                consumer = None;
                acks.end_pull();
                if pause_or_stop(pause, &mut stop).await {
                    break;
                }
                pause = (pause * 2).min(PAUSE_MAX);
                continue;
            }
            Err(_) => {
                tracing::warn!(%endpoint, "pull request not sent in time; retrying");
                acks.end_pull();
                if pause_or_stop(pause, &mut stop).await {
                    break;
                }
                pause = (pause * 2).min(PAUSE_MAX);
                continue;
            }
        };
        let mut failed = false;
        // The batch ends by itself (the server expires it, or a timer in the client ends it
        // when the server went silent); this limit only guards against a stalled client. It
        // and the reconnect watch are armed once per batch, not for every message.
        let deadline = Instant::now() + config.fetch_wait + Duration::from_secs(10);
        let mut stalled = std::pin::pin!(tokio::time::sleep_until(deadline));
        let mut reconnect = std::pin::pin!(reconnected(&mut connections));
        loop {
            // Messages that arrived come first. The server skips a request whose inbox has
            // no subscriber, so ending the pull strands nothing, short of a message already
            // on its way, which comes back after the ack wait.
            let item = tokio::select! {
                biased;
                next = batch.next() => match next {
                    Some(item) => item,
                    None => break,
                },
                () = &mut reconnect => {
                    tracing::debug!(%endpoint, "connection re-established; pulling again");
                    break;
                }
                () = &mut stalled => break,
            };
            match item {
                Ok(message) => hand_over(message, &acks, &tx, &stop).await,
                Err(error) => {
                    tracing::debug!(%endpoint, %error, "pull ended with an error");
                    failed = true;
                }
            }
        }
        acks.end_pull();
        if failed {
            consumer = None;
            if pause_or_stop(pause, &mut stop).await {
                break;
            }
            pause = (pause * 2).min(PAUSE_MAX);
        } else {
            pause = PAUSE_MIN;
        }
    }
    tracing::debug!(%endpoint, "stopped pulling");
}

/// Register a pulled message and pass it on to the subscription (or give it back when the
/// subscription is gone).
async fn hand_over(
    message: async_nats::jetstream::Message,
    acks: &Acks,
    tx: &mpsc::Sender<Pulled>,
    stop: &watch::Receiver<bool>,
) {
    let message = message.message;
    let Some(reply) = message.reply else {
        return;
    };
    let delivered = delivered(reply.as_str()).unwrap_or(1);
    let envelope = wire::envelope(message.headers.as_ref(), message.payload);
    let slot = acks.insert(reply);
    if is_stopped(stop) {
        acks.give_back(slot);
        return;
    }
    let pulled = Pulled {
        envelope,
        delivered,
        slot,
    };
    if let Err(mpsc::error::SendError(p)) = tx.send(pulled).await {
        acks.give_back(p.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delivery_count_comes_from_the_ack_subject() {
        assert_eq!(
            delivered("$JS.ACK.BUS_EP_a.bus.3.10.7.1700000000000000000.0"),
            Some(3)
        );
        assert_eq!(
            delivered("$JS.ACK.hub.ACCHASH.BUS_EP_a.bus.2.10.7.1700000000000000000.0.tok"),
            Some(2)
        );
        assert_eq!(
            delivered("$JS.ACK._.ACCHASH.S.C.5.1.1.1.0.tok.more.tokens"),
            Some(5)
        );
        assert_eq!(delivered("$JS.ACK.S.C.0.1.1.1.0"), Some(1), "at least one");
        assert_eq!(delivered("_INBOX.x.y"), None);
        assert_eq!(delivered("$JS.ACK.S.C.x.1.1.1.0"), None);
        assert_eq!(delivered("$JS.ACK.S.C.1"), None);
    }
}
