//! A subscription on a queue (an endpoint's, the reply queue of a bus instance, the queue of
//! due scheduled messages): a lapin consumer that re-opens itself after the connection or the
//! channel failed, and the ackers of its deliveries.

use std::sync::Arc;
use std::time::Duration;

use bus_core::{
    async_trait, Acker, Delivery, Destination, Envelope, SharedAcker, Subscription, TransportError,
};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::time::timeout;

use crate::ack_batch::AckBatch;
use crate::error::{broker_error, queue_error};
use crate::transport::AmqpTransport;
use crate::wire;

/// A consumer on a queue, on a channel of its own.
pub(crate) struct AmqpSubscription {
    transport: AmqpTransport,
    queue: String,
    /// Whose queue it is, as a missing queue's error names it.
    target: Destination,
    prefetch: u16,
    channel: Option<Channel>,
    consumer: Option<Consumer>,
    cancelled: bool,
    /// Held-back acks, when batching is on.
    batch: Option<Arc<AckBatch>>,
    /// For a reply queue: the subscription declares the queue itself (exclusive to its
    /// connection, gone with its consumer) and reads it without acks, settling each delivery
    /// with this no-op.
    replies: Option<Arc<NoAck>>,
    /// What the consumer yielded while [`AmqpSubscription::next_buffered`] looked for a
    /// delivery and found something else (an error, its end), for `next` to handle.
    stashed: Option<Option<Result<lapin::message::Delivery, lapin::Error>>>,
}

impl AmqpSubscription {
    /// Start consuming from `queue`, which receives the messages for `target` (as a missing
    /// queue's error names it); with `batch`, acks are batched.
    pub(crate) async fn start(
        transport: AmqpTransport,
        target: Destination,
        queue: String,
        prefetch: u16,
        batch: Option<Arc<AckBatch>>,
    ) -> Result<Self, TransportError> {
        let mut sub = AmqpSubscription {
            transport,
            queue,
            target,
            prefetch,
            channel: None,
            consumer: None,
            cancelled: false,
            batch,
            replies: None,
            stashed: None,
        };
        sub.open().await?;
        Ok(sub)
    }

    /// Declare the reply queue `queue` (non-durable, exclusive to this connection, deleted
    /// once its consumer goes) and consume it without acks: a reply is settled by arriving.
    pub(crate) async fn start_replies(
        transport: AmqpTransport,
        queue: String,
    ) -> Result<Self, TransportError> {
        let mut sub = AmqpSubscription {
            transport,
            target: Destination::Reply(queue.as_str().into()),
            queue,
            prefetch: 0,
            channel: None,
            consumer: None,
            cancelled: false,
            batch: None,
            replies: Some(Arc::new(NoAck)),
            stashed: None,
        };
        sub.open().await?;
        Ok(sub)
    }

    /// Open a channel and a consumer on it, as at the start and after either was lost.
    async fn open(&mut self) -> Result<(), TransportError> {
        let t = &self.transport;
        let limit = t.inner.config.connect_timeout;
        let work = async {
            let ch = t.topology_channel().await?;
            let no_ack = self.replies.is_some();
            if no_ack {
                // Declared on this channel, the queue is declared again by the client library
                // when it recovers the channel after a connection drop.
                ch.queue_declare(
                    self.queue.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broker_error(format!("declaring reply queue `{}`", self.queue), e))?;
            } else {
                ch.basic_qos(self.prefetch, BasicQosOptions::default())
                    .await
                    .map_err(|e| broker_error("setting prefetch", e))?;
            }
            let tag = format!("{}-{}", t.inner.config.connection_name, consumer_tag());
            let consumer = ch
                .basic_consume(
                    self.queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions {
                        no_ack,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    queue_error(format!("consuming from `{}`", self.queue), &self.target, e)
                })?;
            Ok::<_, TransportError>((ch, consumer))
        };
        let (ch, consumer) = TransportError::within("subscribing", limit, work).await??;
        self.channel = Some(ch);
        self.consumer = Some(consumer);
        Ok(())
    }

    /// What the consumer yielded, as `next` answers it: `None` to look again (the consumer
    /// re-opened if need be), a delivery, or an error when it could not be recovered.
    async fn handle(
        &mut self,
        next: Option<Result<lapin::message::Delivery, lapin::Error>>,
    ) -> Option<Result<Delivery, TransportError>> {
        match next {
            None => {
                tracing::warn!(queue = %self.queue, "the broker ended the consumer; subscribing again");
                self.consumer = None;
                self.channel = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
            Some(Ok(d)) => Some(Ok(self.delivery(d))),
            Some(Err(e)) => {
                let text = self.transport.inner.config.scrub(&e.to_string());
                tracing::warn!(queue = %self.queue, error = %text, "consumer error; waiting for recovery");
                let ch = self.channel.clone();
                let recovered = match ch {
                    Some(ch) => timeout(
                        self.transport.inner.config.connect_timeout,
                        ch.wait_for_recovery(e.clone()),
                    )
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false),
                    None => false,
                };
                if recovered {
                    return None;
                }
                self.consumer = None;
                self.channel = None;
                let consuming = format!("consuming from `{}`", self.queue);
                Some(Err(TransportError::connection(consuming, e)))
            }
        }
    }

    /// A delivery of the bus made of one of the consumer's.
    fn delivery(&self, d: lapin::message::Delivery) -> Delivery {
        let lapin::message::Delivery {
            properties,
            data,
            acker,
            redelivered,
            ..
        } = d;
        let envelope = wire::envelope(&properties, data);
        if let Some(no_ack) = &self.replies {
            return Delivery::shared(envelope, no_ack.clone(), 0, redelivered, 1);
        }
        let count = wire::delivery_count(&properties, redelivered);
        let settle = match &self.batch {
            None => Settle::Alone(acker),
            Some(batch) => Settle::Batched {
                seq: batch.handed_out(acker),
                batch: batch.clone(),
            },
        };
        let acker = AmqpAcker {
            settle,
            _transport: self.transport.clone(),
        };
        Delivery::new(envelope, Box::new(acker), redelivered, count)
    }

    /// A delivery the consumer already holds, without waiting for one; `None` when it holds
    /// none (or has an error or its end to report, which the next `next` does).
    pub(crate) async fn next_buffered(&mut self) -> Option<Delivery> {
        if self.cancelled || self.stashed.is_some() {
            return None;
        }
        let consumer = self.consumer.as_mut()?;
        match futures_lite::future::poll_once(consumer.next()).await? {
            Some(Ok(d)) => Some(self.delivery(d)),
            other => {
                self.stashed = Some(other);
                None
            }
        }
    }

    /// A consumer whose connection died without an error (the library's recovery gave up):
    /// open a fresh connection if need be, and drop the consumer so it is opened again.
    async fn check_connection(&mut self) {
        if self.transport.connection().status().connected() {
            return;
        }
        self.transport.reconnect_if_dead().await;
        if self.transport.connection().status().connected()
            && !self
                .channel
                .as_ref()
                .is_some_and(|c| c.status().connected())
        {
            self.consumer = None;
            self.channel = None;
        }
    }
}

/// A consumer tag unique to this process.
fn consumer_tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn cancel(&mut self) {
        // Deliveries lapin already buffered are not handed out; they return to the queue
        // when the channel closes on drop.
        self.cancelled = true;
        if let (Some(ch), Some(consumer)) = (&self.channel, &self.consumer) {
            let tag = consumer.tag();
            let limit = self.transport.inner.config.connect_timeout;
            let _ = timeout(limit, ch.basic_cancel(tag, BasicCancelOptions::default())).await;
        }
        // From now on acks go out at once: the runtime drops the subscription (and with it the
        // channel) as soon as the last in-flight handler settled its delivery.
        if let Some(batch) = &self.batch {
            let limit = self.transport.inner.config.connect_timeout;
            let _ = timeout(limit, batch.close()).await;
        }
    }

    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        loop {
            if self.cancelled {
                return None;
            }
            if self.consumer.is_none() {
                if let Err(e) = self.open().await {
                    self.transport.reconnect_if_dead().await;
                    return Some(Err(e));
                }
            }
            if let Some(stashed) = self.stashed.take() {
                match self.handle(stashed).await {
                    Some(out) => return Some(out),
                    None => continue,
                }
            }
            let consumer = self.consumer.as_mut()?;
            let next = match &self.batch {
                // A delivery already buffered (the common case on a busy queue) needs no
                // watch timer: arming one per delivery costs a timer-wheel insert and removal.
                None => match futures_lite::future::poll_once(consumer.next()).await {
                    Some(next) => next,
                    None => tokio::select! {
                        next = consumer.next() => next,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {
                            // Two quiet seconds: a consumer whose connection died without an
                            // error (the library's recovery gave up) is noticed here, off the
                            // hot path, and re-opened, on a fresh connection if need be.
                            self.check_connection().await;
                            continue;
                        }
                    },
                },
                Some(batch) => match futures_lite::future::poll_once(consumer.next()).await {
                    Some(next) => next,
                    None => {
                        // Nothing ready: send what is held back rather than let it wait for
                        // the next delivery, and again whenever acks are held back meanwhile.
                        let _ = batch.flush().await;
                        loop {
                            tokio::select! {
                                next = consumer.next() => break next,
                                _ = batch.wanted.notified() => {
                                    let _ = batch.flush().await;
                                }
                            }
                        }
                    }
                },
            };
            if let Some(out) = self.handle(next).await {
                return Some(out);
            }
        }
    }
}

/// Settles one delivery.
struct AmqpAcker {
    settle: Settle,
    /// Keeps the transport, and with it the connection, open until the delivery is settled.
    _transport: AmqpTransport,
}

/// How a delivery is settled: on its own, or through the subscription's [`AckBatch`].
enum Settle {
    Alone(lapin::Acker),
    Batched { batch: Arc<AckBatch>, seq: u64 },
}

impl AmqpAcker {
    fn outcome(&self, result: Result<bool, lapin::Error>) -> Result<(), TransportError> {
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(TransportError::Connection {
                context: "the delivery's channel closed before it was settled; the broker will redeliver it".into(),
                source: None,
            }),
            Err(e) => Err(TransportError::connection("settling a delivery", e)),
        }
    }
}

/// A nack that returns the delivery to its queue.
pub(crate) fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        let result = match &self.settle {
            Settle::Alone(acker) => acker.ack(BasicAckOptions::default()).await,
            Settle::Batched { batch, seq } => batch.ack(*seq).await,
        };
        self.outcome(result)
    }

    async fn nack(self: Box<Self>, _envelope: Envelope) -> Result<(), TransportError> {
        let result = match &self.settle {
            Settle::Alone(acker) => acker.nack(requeue()).await,
            Settle::Batched { batch, seq } => batch.nack(*seq).await,
        };
        self.outcome(result)
    }

    fn abandon(self: Box<Self>, _envelope: Envelope) {
        // Return it now rather than when the channel closes, so another consumer can take it.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = match &self.settle {
                    Settle::Alone(acker) => acker.nack(requeue()).await,
                    Settle::Batched { batch, seq } => batch.nack(*seq).await,
                };
            });
        }
    }
}

/// Settles a delivery of a consumer without acks: there is nothing to do.
pub(crate) struct NoAck;

#[async_trait]
impl SharedAcker for NoAck {
    async fn ack(self: Arc<Self>, _token: u64) -> Result<(), TransportError> {
        Ok(())
    }

    fn ack_now(&self, _token: u64) -> Option<Result<(), TransportError>> {
        Some(Ok(()))
    }

    async fn nack(self: Arc<Self>, _token: u64, _envelope: Envelope) -> Result<(), TransportError> {
        Ok(())
    }

    fn abandon(&self, _token: u64, _envelope: Envelope) {}
}
