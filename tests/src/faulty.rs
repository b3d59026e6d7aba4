//! Transport decorators for tests of what the runtime does when the transport refuses part of
//! its work, or takes its time with it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bus_core::{
    async_trait, Acker, Delivery, Destination, Envelope, Outgoing, SubscribeOptions, Subscription,
    Topology, Transport, TransportError,
};

/// Wraps a transport; the first `failures` sends to any error queue fail.
pub struct FailingErrorQueue {
    inner: Arc<dyn Transport>,
    left: AtomicU32,
    refused: AtomicU32,
}

impl FailingErrorQueue {
    /// Fail the first `failures` error-queue writes.
    pub fn new(inner: Arc<dyn Transport>, failures: u32) -> Self {
        FailingErrorQueue {
            inner,
            left: AtomicU32::new(failures),
            refused: AtomicU32::new(0),
        }
    }

    /// How many error-queue writes were refused.
    pub fn refused(&self) -> u32 {
        self.refused.load(Ordering::SeqCst)
    }

    fn check(&self, message: &Outgoing) -> Result<(), TransportError> {
        if matches!(message.destination, Destination::ErrorQueue(_))
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                .is_ok()
        {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(TransportError::Connection {
                context: "injected error-queue failure".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for FailingErrorQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn open_replies(&self, instance: &str) -> Result<bus_core::ReplyChannel, TransportError> {
        self.inner.open_replies(instance).await
    }

    async fn subscribe_due(&self) -> Result<Option<Box<dyn Subscription>>, TransportError> {
        self.inner.subscribe_due().await
    }

    async fn cancel_scheduled(&self, id: &bus_core::MessageId) -> Result<bool, TransportError> {
        self.inner.cancel_scheduled(id).await
    }

    fn carries_typed_messages(&self) -> bool {
        self.inner.carries_typed_messages()
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        self.inner.declare(topology).await
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        self.check(&message)?;
        self.inner.send(message).await
    }

    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<(), TransportError> {
        for m in &messages {
            self.check(m)?;
        }
        self.inner.send_batch(messages).await
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.inner.subscribe(endpoint, options).await
    }
}

/// Wraps a transport; every ack waits until [`GatedAcks::release`] lets it through before it reaches
/// the transport, as a broker's confirmed ack waits for the broker's answer. Nacks and
/// abandoned deliveries pass through at once.
pub struct GatedAcks {
    inner: Arc<dyn Transport>,
    gate: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicU32>,
}

impl GatedAcks {
    /// Acks held until permits are added to the gate.
    pub fn new(inner: Arc<dyn Transport>) -> Self {
        GatedAcks {
            inner,
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            waiting: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Let `n` more acks through.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Acks started and not let through yet.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Transport for GatedAcks {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn open_replies(&self, instance: &str) -> Result<bus_core::ReplyChannel, TransportError> {
        self.inner.open_replies(instance).await
    }

    async fn subscribe_due(&self) -> Result<Option<Box<dyn Subscription>>, TransportError> {
        self.inner.subscribe_due().await
    }

    async fn cancel_scheduled(&self, id: &bus_core::MessageId) -> Result<bool, TransportError> {
        self.inner.cancel_scheduled(id).await
    }

    fn carries_typed_messages(&self) -> bool {
        self.inner.carries_typed_messages()
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        self.inner.declare(topology).await
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        self.inner.send(message).await
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        Ok(Box::new(GatedSubscription {
            inner: self.inner.subscribe(endpoint, options).await?,
            gate: self.gate.clone(),
            waiting: self.waiting.clone(),
        }))
    }
}

struct GatedSubscription {
    inner: Box<dyn Subscription>,
    gate: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicU32>,
}

impl GatedSubscription {
    fn wrap(&self, inner: Delivery) -> Delivery {
        let envelope = inner.envelope().clone();
        let (redelivered, count) = (inner.redelivered(), inner.delivery_count());
        let acker = GatedAcker {
            inner,
            gate: self.gate.clone(),
            waiting: self.waiting.clone(),
        };
        Delivery::new(envelope, Box::new(acker), redelivered, count)
    }
}

#[async_trait]
impl Subscription for GatedSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        let next = self.inner.next().await?;
        Some(next.map(|d| self.wrap(d)))
    }

    fn next_now(&mut self) -> Option<Delivery> {
        let next = self.inner.next_now()?;
        Some(self.wrap(next))
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

/// The inner transport's delivery, settled through the gate.
struct GatedAcker {
    inner: Delivery,
    gate: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicU32>,
}

#[async_trait]
impl Acker for GatedAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        let permit = {
            let _waiting = Waiting::start(&self.waiting);
            self.gate.acquire().await
        };
        permit
            .map_err(|e| TransportError::connection("the ack gate closed", e))?
            .forget();
        self.inner.ack().await
    }

    async fn nack(self: Box<Self>, _envelope: Envelope) -> Result<(), TransportError> {
        self.inner.nack().await
    }

    fn abandon(self: Box<Self>, _envelope: Envelope) {
        // Dropping the inner delivery unsettled makes it available again.
    }
}

/// Counts one ack waiting at the gate while it lives (also when the ack is dropped).
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
