//! Subscriptions: pulling an endpoint's deliveries from its shared durable consumer, bounded by
//! prefetch, and settling them.
//!
//! A background task pulls batches no larger than the free prefetch slots and passes messages
//! through a channel, so [`Subscription::next`] is cancel-safe: dropping it loses nothing.
//! From the moment a message is pulled until it is settled, progress signals tell JetStream
//! that work is going on, so a long handler (or a message waiting for a free handler) is not
//! redelivered to another instance at the end of the ack wait. When the client reconnects,
//! the pull in progress ends and a new one starts at once: the server may have forgotten the
//! old request (a restart) or dropped it while the connection was gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::{jetstream, Client, Subject};
use bus_core::{
    async_trait, Acker, Bytes, Delivery, Envelope, SubscribeOptions, Subscription, TransportError,
};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, Instant};

use crate::config::check_subject_part;
use crate::topology::{ensure_consumer, ConsumerKind};
use crate::transport::NatsTransport;
use crate::{delay, limit, wire};

/// Largest pull request.
const MAX_BATCH: usize = 256;
/// First pause after a failed pull; doubles up to [`PAUSE_MAX`].
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(5);

const ACK: &[u8] = b"+ACK";
const NAK: &[u8] = b"-NAK";
const PROGRESS: &[u8] = b"+WPI";

/// A subscription on an endpoint's input consumer.
pub(crate) struct NatsSubscription {
    rx: mpsc::Receiver<Pulled>,
    stop: watch::Sender<bool>,
    /// Acks wait for the server's confirmation.
    confirm_acks: bool,
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
        let consumer =
            ensure_consumer(&inner.js, &inner.config, endpoint, ConsumerKind::Input).await?;
        let prefetch = options.prefetch.max(1);
        let (tx, rx) = mpsc::channel(prefetch);
        let (stop, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(prefetch));
        tokio::spawn(pull_loop(
            transport.clone(),
            endpoint.to_string(),
            consumer,
            tx,
            permits,
            stop_rx.clone(),
        ));
        tokio::spawn(delay::move_due(
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
            confirm_acks: inner.config.confirm_acks,
        })
    }

    /// Stop the background tasks and return every message pulled but not handed out.
    fn stop_and_return(&mut self) {
        self.stop.send_replace(true);
        self.rx.close();
        while let Ok(pulled) = self.rx.try_recv() {
            pulled.inflight.abandon();
        }
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
        let Pulled { message, inflight } = self.rx.recv().await?;
        let delivered = message
            .info()
            .map(|i| u32::try_from(i.delivered.max(1)).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let envelope = wire::envelope(message.headers.as_ref(), message.payload.clone());
        Some(Ok(Delivery::new(
            envelope,
            Box::new(NatsAcker {
                inflight,
                confirm: self.confirm_acks,
            }),
            delivered > 1,
            delivered,
        )))
    }

    async fn cancel(&mut self) {
        self.stop_and_return();
    }
}

/// A message pulled and not yet handed out.
struct Pulled {
    message: jetstream::Message,
    inflight: Inflight,
}

/// Progress signals for every message a subscription has pulled and not settled: one task per
/// subscription sends them, rather than a timer task per message (a spawn, a timer and an abort
/// for every delivery, which cost more than the delivery itself).
///
/// The task wakes every half interval and signals each message that has gone a quarter interval
/// or more without one (so a tick that comes a little early skips nothing), so every message
/// hears from us at most three quarters of an interval after it was pulled or last signalled,
/// sooner than a per-message ticker would. It ends once the registry is dropped.
pub(crate) struct Progress {
    pending: Mutex<Pending>,
    /// Dropped with the registry, which ends its task at once.
    _alive: oneshot::Sender<()>,
}

#[derive(Default)]
struct Pending {
    next_id: u64,
    /// Ack subject and the last time it was pulled or signalled, by registration.
    messages: HashMap<u64, (Subject, Instant)>,
}

impl Progress {
    /// A registry whose task signals progress every `every`.
    pub(crate) fn start(client: Client, every: Duration) -> Arc<Self> {
        let (progress, mut gone) = Progress::new();
        let registry = Arc::downgrade(&progress);
        let half = (every / 2).max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(half);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut gone => break,
                }
                let due = match registry.upgrade() {
                    Some(progress) => progress.due(half / 2),
                    None => break,
                };
                for reply in due {
                    if let Err(error) = client.publish(reply, Bytes::from_static(PROGRESS)).await {
                        tracing::debug!(%error, "progress signal not sent");
                    }
                }
            }
        });
        progress
    }

    /// A registry, and what completes once it is dropped.
    fn new() -> (Arc<Self>, oneshot::Receiver<()>) {
        let (alive, gone) = oneshot::channel();
        let progress = Arc::new(Progress {
            pending: Mutex::new(Pending::default()),
            _alive: alive,
        });
        (progress, gone)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signal `reply`'s progress until the returned guard is dropped.
    fn track(self: &Arc<Self>, reply: Subject) -> Tracked {
        let mut pending = self.lock();
        let id = pending.next_id;
        pending.next_id += 1;
        pending.messages.insert(id, (reply, Instant::now()));
        Tracked {
            progress: self.clone(),
            id,
        }
    }

    /// The messages last signalled at least `after` ago, marked as signalled now.
    fn due(&self, after: Duration) -> Vec<Subject> {
        let now = Instant::now();
        let mut pending = self.lock();
        pending
            .messages
            .values_mut()
            .filter(|(_, last)| now.duration_since(*last) >= after)
            .map(|(reply, last)| {
                *last = now;
                reply.clone()
            })
            .collect()
    }

    /// Messages whose progress is being signalled.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().messages.len()
    }
}

/// One message's place in a [`Progress`] registry; dropping it stops the signals.
struct Tracked {
    progress: Arc<Progress>,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.progress.lock().messages.remove(&self.id);
    }
}

/// What it takes to settle one pulled message: its ack subject, its prefetch slot, and its
/// place among the messages whose progress is signalled (which keeps it from being redelivered
/// meanwhile).
pub(crate) struct Inflight {
    client: Client,
    reply: Subject,
    request_timeout: Duration,
    ticker: Option<Tracked>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Inflight {
    /// Track a pulled message; with `progress`, its progress is signalled until it is settled.
    pub(crate) fn new(
        client: Client,
        reply: Subject,
        request_timeout: Duration,
        progress: Option<&Arc<Progress>>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let ticker = progress.map(|p| p.track(reply.clone()));
        Inflight {
            client,
            reply,
            request_timeout,
            ticker,
            _permit: permit,
        }
    }

    fn stop_ticker(&mut self) {
        self.ticker = None;
    }

    /// Send an ack kind and wait for the server to confirm it.
    pub(crate) async fn settle(mut self, kind: &'static [u8]) -> Result<(), TransportError> {
        self.stop_ticker();
        const SETTLING: &str = "settling a delivery (JetStream will redeliver it)";
        let request = self
            .client
            .request(self.reply.clone(), Bytes::from_static(kind));
        TransportError::within(SETTLING, self.request_timeout, request)
            .await?
            .map(drop)
            .map_err(|e| TransportError::connection(SETTLING, e))
    }

    /// Send an ack kind without waiting for a confirmation.
    pub(crate) async fn signal(mut self, kind: Bytes) {
        self.stop_ticker();
        if let Err(error) = self.client.publish(self.reply.clone(), kind).await {
            tracing::debug!(%error, "ack signal not sent; JetStream redelivers after the ack wait");
        }
    }

    /// Return the message for redelivery now, from a context that cannot wait.
    pub(crate) fn abandon(mut self) {
        self.stop_ticker();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(self.signal(Bytes::from_static(NAK)));
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.stop_ticker();
    }
}

struct NatsAcker {
    inflight: Inflight,
    /// Wait for the server to confirm the ack.
    confirm: bool,
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        if self.confirm {
            self.inflight.settle(ACK).await
        } else {
            self.inflight.signal(Bytes::from_static(ACK)).await;
            Ok(())
        }
    }

    async fn nack(self: Box<Self>, _envelope: Envelope) -> Result<(), TransportError> {
        self.inflight.settle(NAK).await
    }

    fn abandon(self: Box<Self>, _envelope: Envelope) {
        self.inflight.abandon();
    }
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

/// The progress interval for the configured ack wait, when progress signals are on.
pub(crate) fn progress_every(transport: &NatsTransport) -> Option<Duration> {
    let c = &transport.inner.config;
    c.progress
        .then(|| (c.ack_wait / 2).max(Duration::from_millis(100)))
}

/// Pull batches as prefetch slots free up, until stopped.
async fn pull_loop(
    transport: NatsTransport,
    endpoint: String,
    consumer: PullConsumer,
    tx: mpsc::Sender<Pulled>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let inner = &transport.inner;
    let config = &inner.config;
    let progress =
        progress_every(&transport).map(|every| Progress::start(inner.client.clone(), every));
    let mut connections = inner.connections.clone();
    let mut consumer = Some(consumer);
    let mut pause = PAUSE_MIN;
    loop {
        let first = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let mut held = vec![first];
        while held.len() < MAX_BATCH {
            match permits.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
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
                        drop(held);
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
            .max_messages(held.len())
            .expires(config.fetch_wait)
            .messages();
        let mut batch = match timeout(config.request_timeout, request).await {
            Ok(Ok(b)) => b,
            Ok(Err(error)) => {
                tracing::warn!(%endpoint, %error, "pull request failed; retrying");
                consumer = None;
                drop(held);
                if pause_or_stop(pause, &mut stop).await {
                    break;
                }
                pause = (pause * 2).min(PAUSE_MAX);
                continue;
            }
            Err(_) => {
                tracing::warn!(%endpoint, "pull request not sent in time; retrying");
                drop(held);
                if pause_or_stop(pause, &mut stop).await {
                    break;
                }
                pause = (pause * 2).min(PAUSE_MAX);
                continue;
            }
        };
        let mut failed = false;
        // The batch ends by itself (server timeout, or a timer in the client when the server
        // went silent); the outer limit only guards against a stalled client.
        let limit = config.fetch_wait + Duration::from_secs(10);
        loop {
            // Messages that arrived come first. The server skips a request whose inbox has
            // no subscriber, so ending the pull strands nothing, short of a message already
            // on its way, which comes back after the ack wait.
            let next = tokio::select! {
                biased;
                next = timeout(limit, batch.next()) => next,
                () = reconnected(&mut connections) => {
                    tracing::debug!(%endpoint, "connection re-established; pulling again");
                    break;
                }
            };
            let item = match next {
                Err(_) | Ok(None) => break,
                Ok(Some(item)) => item,
            };
            match item {
                Ok(message) => {
                    let Some(reply) = message.reply.clone() else {
                        continue;
                    };
                    let inflight = Inflight::new(
                        inner.client.clone(),
                        reply,
                        config.request_timeout,
                        progress.as_ref(),
                        held.pop(),
                    );
                    if is_stopped(&stop) {
                        inflight.abandon();
                        continue;
                    }
                    if let Err(mpsc::error::SendError(p)) =
                        tx.send(Pulled { message, inflight }).await
                    {
                        p.inflight.abandon();
                    }
                }
                Err(error) => {
                    tracing::debug!(%endpoint, %error, "pull ended with an error");
                    failed = true;
                }
            }
        }
        drop(held);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_signalled_while_tracked_and_not_after() {
        let (progress, mut gone) = Progress::new();
        let a = progress.track(Subject::from("ack.a"));
        let b = progress.track(Subject::from("ack.b"));
        assert_eq!(progress.len(), 2);
        // Nothing has gone a whole interval unsignalled yet.
        assert!(progress.due(Duration::from_secs(60)).is_empty());
        // Everything is due after no time at all; once signalled, not again at once.
        let mut due = progress.due(Duration::ZERO);
        due.sort();
        assert_eq!(due, vec![Subject::from("ack.a"), Subject::from("ack.b")]);
        assert!(progress.due(Duration::from_secs(60)).is_empty());
        drop(a);
        assert_eq!(progress.due(Duration::ZERO), vec![Subject::from("ack.b")]);
        drop(b);
        assert_eq!(progress.len(), 0);
        assert!(progress.due(Duration::ZERO).is_empty());
        // Its task learns at once that the registry is gone.
        assert!(gone
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        drop(progress);
        assert_eq!(gone.try_recv(), Err(oneshot::error::TryRecvError::Closed));
    }
}
