//! The context a handler runs in: the incoming message's metadata and an outbox.
//!
//! Messages sent or published through the context are *held back* in the outbox and released
//! only after the handler succeeded, before the incoming message is acked. A failed attempt's
//! messages are discarded, so a retried handler never emits twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::envelope::Headers;
use crate::error::BusError;
use crate::message::{Command, Event};
use crate::outgoing::SendOptions;
use crate::runtime::Runtime;
use crate::transport::Outgoing;

/// Metadata of the message being handled, and the way to send messages from a handler.
#[derive(Clone)]
pub struct MessageContext {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<Runtime>,
    headers: Arc<Headers>,
    endpoint: Arc<str>,
    attempt: u32,
    redelivered: bool,
    outbox: Mutex<Option<Vec<Outgoing>>>,
    /// The inbox found the message handled before: the attempt succeeded without handlers.
    duplicate: AtomicBool,
}

impl MessageContext {
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        headers: Arc<Headers>,
        endpoint: Arc<str>,
        attempt: u32,
        redelivered: bool,
    ) -> Self {
        MessageContext {
            inner: Arc::new(Inner {
                runtime,
                headers,
                endpoint,
                attempt,
                redelivered,
                outbox: Mutex::new(Some(Vec::new())),
                duplicate: AtomicBool::new(false),
            }),
        }
    }

    /// A context for one handler attempt, in `spare`'s allocation when nothing else holds
    /// that any more (a worker hands its previous context back for each message; a handler
    /// that kept a clone of it makes a new one necessary).
    pub(crate) fn for_attempt(
        spare: Option<MessageContext>,
        runtime: &Arc<Runtime>,
        headers: &Arc<Headers>,
        endpoint: &Arc<str>,
        attempt: u32,
        redelivered: bool,
    ) -> Self {
        if let Some(mut ctx) = spare {
            if let Some(inner) = Arc::get_mut(&mut ctx.inner) {
                if Arc::ptr_eq(&inner.runtime, runtime) && Arc::ptr_eq(&inner.endpoint, endpoint) {
                    inner.headers = headers.clone();
                    inner.attempt = attempt;
                    inner.redelivered = redelivered;
                    *inner.duplicate.get_mut() = false;
                    let outbox = inner.outbox.get_mut().unwrap_or_else(|p| p.into_inner());
                    match outbox {
                        Some(list) => list.clear(),
                        None => *outbox = Some(Vec::new()),
                    }
                    return ctx;
                }
            }
        }
        MessageContext::new(
            runtime.clone(),
            headers.clone(),
            endpoint.clone(),
            attempt,
            redelivered,
        )
    }

    /// The incoming message's headers.
    pub fn headers(&self) -> &Headers {
        &self.inner.headers
    }

    /// The incoming message's id.
    pub fn message_id(&self) -> &str {
        &self.inner.headers.message_id
    }

    /// The correlation id (given to the root message, or its message id; copied to everything
    /// it causes).
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner.headers.correlation_id()
    }

    /// The conversation id.
    pub fn conversation_id(&self) -> Option<&str> {
        self.inner.headers.conversation_id()
    }

    /// The id of the message whose handler sent this one.
    pub fn causation_id(&self) -> Option<&str> {
        self.inner.headers.causation_id()
    }

    /// The endpoint handling the message.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Which attempt this is, starting at 1, counting immediate and delayed retries.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Whether the transport delivered this message before without it being acked.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// Shared state of type `T`, as given to [`crate::BusBuilder::state`].
    pub fn state<T: Clone + 'static>(&self) -> Option<T> {
        self.inner.runtime.state.get::<T>()
    }

    /// Send a command; it leaves only if the handler succeeds.
    pub async fn send<C: Command>(&self, command: C) -> Result<(), BusError> {
        self.send_with(command, SendOptions::default()).await
    }

    /// Send a command with options; it leaves only if the handler succeeds.
    pub async fn send_with<C: Command>(
        &self,
        command: C,
        options: SendOptions,
    ) -> Result<(), BusError> {
        let destination = self.inner.runtime.route::<C>()?;
        let out = self.inner.runtime.outgoing(
            command,
            destination,
            Some(&self.inner.headers),
            options,
        )?;
        self.stage(out)
    }

    /// Publish an event; it leaves only if the handler succeeds.
    pub async fn publish<E: Event>(&self, event: E) -> Result<(), BusError> {
        self.publish_with(event, SendOptions::default()).await
    }

    /// Publish an event with options; it leaves only if the handler succeeds.
    pub async fn publish_with<E: Event>(
        &self,
        event: E,
        options: SendOptions,
    ) -> Result<(), BusError> {
        let destination = self.inner.runtime.event(E::NAME);
        let out =
            self.inner
                .runtime
                .outgoing(event, destination, Some(&self.inner.headers), options)?;
        self.stage(out)
    }

    fn stage(&self, out: Outgoing) -> Result<(), BusError> {
        let mut outbox = self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner());
        match outbox.as_mut() {
            Some(list) => {
                list.push(out);
                Ok(())
            }
            None => Err(BusError::ContextClosed),
        }
    }

    /// Close the outbox and take what the handler staged, while others may hold the context
    /// (a layer's attempt).
    pub(crate) fn close_outbox(&self) -> Vec<Outgoing> {
        let mut outbox = self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner());
        outbox.take().unwrap_or_default()
    }

    /// Mark the attempt as a duplicate the inbox skipped.
    pub(crate) fn mark_duplicate(&self) {
        self.inner.duplicate.store(true, Ordering::Relaxed);
    }

    /// Whether the inbox skipped this attempt as a duplicate.
    pub(crate) fn is_duplicate(&self) -> bool {
        self.inner.duplicate.load(Ordering::Relaxed)
    }

    /// The runtime the context belongs to.
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// Close the outbox and take what the handler staged.
    pub(crate) fn take_outbox(&mut self) -> Vec<Outgoing> {
        // Nobody else holds the context (the handler's clone is gone, as it usually is by
        // now): no lock needed.
        let outbox = match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.outbox.get_mut().unwrap_or_else(|p| p.into_inner()),
            None => &mut *self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner()),
        };
        outbox.take().unwrap_or_default()
    }
}

impl std::fmt::Debug for MessageContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageContext")
            .field("message_id", &self.message_id())
            .field("message_type", &self.inner.headers.message_type)
            .field("endpoint", &self.endpoint())
            .field("attempt", &self.attempt())
            .finish()
    }
}
