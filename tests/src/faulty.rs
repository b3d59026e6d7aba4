//! A transport decorator that injects failures, for tests of what the runtime does when the
//! transport refuses part of its work.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bus_core::{
    async_trait, Destination, Outgoing, SubscribeOptions, Subscription, Topology, Transport,
    TransportError,
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
            return Err(TransportError::Connection(
                "injected error-queue failure".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for FailingErrorQueue {
    fn name(&self) -> &str {
        self.inner.name()
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
