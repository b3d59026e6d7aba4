//! Per-endpoint settings: concurrency, prefetch, handler timeout, recoverability, inbox and
//! layers.

use std::sync::Arc;
use std::time::Duration;

use crate::inbox::Inbox;
use crate::layer::Layer;
use crate::recoverability::{Recoverability, RecoverabilityPolicy};
use crate::storage::Storage;

/// Settings of one endpoint (logical service) hosted by a bus.
///
/// ```
/// use std::time::Duration;
/// use bus_core::EndpointConfig;
///
/// let config = EndpointConfig::default()
///     .concurrency(8)
///     .immediate_retries(1)
///     .delayed_retries(3, Duration::from_millis(500))
///     .handler_timeout(Duration::from_secs(5));
/// assert_eq!(config.recoverability.delayed_retries, 3);
/// ```
#[derive(Clone)]
pub struct EndpointConfig {
    /// Handlers running at once on this endpoint, per bus instance.
    pub concurrency: usize,
    /// Deliveries taken from the transport ahead of handling (at least `concurrency`).
    pub prefetch: usize,
    /// A handler attempt running longer is abandoned and counted as a failure. It is timed
    /// from the moment it first waits (a handler done in its first poll, as most are, is never
    /// timed; a blocking first poll cannot be cut short by a timeout anyway).
    pub handler_timeout: Option<Duration>,
    /// The default retry policy's settings (used unless [`EndpointConfig::policy`] replaced
    /// the policy).
    pub recoverability: Recoverability,
    /// A policy replacing the default one built from `recoverability`.
    pub policy: Option<Arc<dyn RecoverabilityPolicy>>,
    /// Idempotent consumer: skip messages whose id this endpoint already handled.
    pub inbox: Option<Arc<dyn Inbox>>,
    /// This endpoint's own layers, run inside the bus-wide ones, in the order added.
    pub layers: Vec<Arc<dyn Layer>>,
    /// Where each handler attempt's unit of work commits (outbox, inbox, saga state); set
    /// for every endpoint by [`crate::BusBuilder::storage`].
    pub storage: Option<Arc<dyn Storage>>,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("handler_timeout", &self.handler_timeout)
            .field("recoverability", &self.recoverability)
            .field("policy", &self.policy.is_some())
            .field("inbox", &self.inbox.is_some())
            .field(
                "storage",
                &self.storage.as_ref().map(|s| s.name().to_string()),
            )
            .field(
                "layers",
                &self.layers.iter().map(|l| l.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            concurrency: 16,
            prefetch: 32,
            handler_timeout: Some(Duration::from_secs(60)),
            recoverability: Recoverability::default(),
            policy: None,
            inbox: None,
            layers: Vec::new(),
            storage: None,
        }
    }
}

impl EndpointConfig {
    /// Handlers running at once. Prefetch is raised to match if lower.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self.prefetch = self.prefetch.max(self.concurrency);
        self
    }

    /// Deliveries taken ahead (never below concurrency).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self.concurrency = self.concurrency.min(self.prefetch);
        self
    }

    /// Abandon a handler attempt after this long, counted from its first wait: a handler done
    /// in its first poll is never timed, and time spent blocking in that first poll (which no
    /// timeout could cut short) is not counted.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// Let handlers run as long as they like.
    pub fn no_handler_timeout(mut self) -> Self {
        self.handler_timeout = None;
        self
    }

    /// Immediate retries after a failed attempt.
    pub fn immediate_retries(mut self, n: u32) -> Self {
        self.recoverability.immediate_retries = n;
        self
    }

    /// Delayed retries and the first delay (doubling after each).
    pub fn delayed_retries(mut self, n: u32, initial_delay: Duration) -> Self {
        self.recoverability.delayed_retries = n;
        self.recoverability.initial_delay = initial_delay;
        self
    }

    /// The random share added to each delayed retry's delay (see [`Recoverability::jitter`]);
    /// 0 for exact delays.
    pub fn retry_jitter(mut self, share: f64) -> Self {
        self.recoverability.jitter = share;
        self
    }

    /// Make the endpoint an idempotent consumer: a message whose id is in the inbox is acked
    /// without running its handlers again.
    pub fn inbox(mut self, inbox: impl Inbox) -> Self {
        self.inbox = Some(Arc::new(inbox));
        self
    }

    /// Run each handler attempt in a unit of work of `storage` (outbox, inbox and saga state
    /// in one transaction); see [`crate::BusBuilder::storage`] to give every endpoint one.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Replace the default policy's settings.
    pub fn recoverability(mut self, recoverability: Recoverability) -> Self {
        self.recoverability = recoverability;
        self
    }

    /// Replace the retry policy: what happens after a failed attempt (see
    /// [`RecoverabilityPolicy`]).
    pub fn policy(mut self, policy: impl RecoverabilityPolicy) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// Add a layer around every handler attempt of this endpoint (see [`crate::Layer`]).
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// The policy in force.
    pub(crate) fn policy_in_force(&self) -> &dyn RecoverabilityPolicy {
        match &self.policy {
            Some(policy) => policy.as_ref(),
            None => &self.recoverability,
        }
    }
}
