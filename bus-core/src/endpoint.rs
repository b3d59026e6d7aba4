//! Per-endpoint settings: concurrency, prefetch, handler timeout and recoverability.

use std::sync::Arc;
use std::time::Duration;

use crate::inbox::Inbox;

/// How failed messages are retried before they go to the error queue.
///
/// An attempt that fails is retried at once up to `immediate_retries` times; if all fail, the
/// message is scheduled again after a delay, up to `delayed_retries` times, each delay
/// `initial_delay * multiplier^n` capped at `max_delay`. Each delayed retry starts another
/// round of immediate retries, so a message gets
/// `(immediate_retries + 1) * (delayed_retries + 1)` attempts in all.
#[derive(Clone, Debug, PartialEq)]
pub struct Recoverability {
    /// Retries made at once, in process.
    pub immediate_retries: u32,
    /// Retries made after a delay, through the transport.
    pub delayed_retries: u32,
    /// The first delay.
    pub initial_delay: Duration,
    /// Factor applied to the delay after each delayed retry.
    pub multiplier: f64,
    /// Longest delay.
    pub max_delay: Duration,
}

impl Default for Recoverability {
    fn default() -> Self {
        Recoverability {
            immediate_retries: 2,
            delayed_retries: 2,
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(60),
        }
    }
}

impl Recoverability {
    /// No retries at all: the first failure goes to the error queue.
    pub fn none() -> Self {
        Recoverability {
            immediate_retries: 0,
            delayed_retries: 0,
            ..Recoverability::default()
        }
    }

    /// The delay before delayed retry number `n` (starting at 0).
    ///
    /// ```
    /// use std::time::Duration;
    /// use bus_core::Recoverability;
    ///
    /// let r = Recoverability { initial_delay: Duration::from_millis(100), ..Recoverability::default() };
    /// assert_eq!(r.delay_for(0), Duration::from_millis(100));
    /// assert_eq!(r.delay_for(2), Duration::from_millis(400));
    /// ```
    pub fn delay_for(&self, n: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(n.min(64) as i32);
        let millis =
            (self.initial_delay.as_millis() as f64 * factor).min(self.max_delay.as_millis() as f64);
        Duration::from_millis(millis as u64)
    }

    /// Attempts per delivery round.
    pub(crate) fn attempts_per_round(&self) -> u32 {
        self.immediate_retries.saturating_add(1)
    }
}

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
    /// Retry policy.
    pub recoverability: Recoverability,
    /// Idempotent consumer: skip messages whose id this endpoint already handled.
    pub inbox: Option<Arc<dyn Inbox>>,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("handler_timeout", &self.handler_timeout)
            .field("recoverability", &self.recoverability)
            .field("inbox", &self.inbox.is_some())
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
            inbox: None,
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

    /// Make the endpoint an idempotent consumer: a message whose id is in the inbox is acked
    /// without running its handlers again.
    pub fn inbox(mut self, inbox: impl Inbox) -> Self {
        self.inbox = Some(Arc::new(inbox));
        self
    }

    /// Replace the whole retry policy.
    pub fn recoverability(mut self, recoverability: Recoverability) -> Self {
        self.recoverability = recoverability;
        self
    }
}
