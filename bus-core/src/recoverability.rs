//! Recoverability: what happens after a failed attempt. A [`RecoverabilityPolicy`] maps the
//! failure (its reason, error type, how many attempts were made) to a [`Decision`]: retry now,
//! retry after a delay, or the error queue. The runtime carries the decision out (settlement
//! is not the policy's business). [`Recoverability`] is the default: immediate retries, then
//! delayed retries with exponential backoff and jitter.

use std::time::Duration;

use crate::failure::Failure;

/// Decides what happens to a message after a failed attempt; set per endpoint with
/// [`crate::EndpointConfig::policy`]. A policy that panics sends the message to the error
/// queue (the endpoint goes on).
///
/// A policy that never retries validation errors and gives timeouts more tries, and leaves
/// everything else to the default:
///
/// ```
/// use std::time::Duration;
/// use bus_core::{Attempts, Decision, Failure, FailureReason, Recoverability, RecoverabilityPolicy};
///
/// struct Orders(Recoverability);
///
/// impl RecoverabilityPolicy for Orders {
///     fn decide(&self, failure: &Failure, attempts: Attempts) -> Decision {
///         if failure.error_type().ends_with("ValidationError") {
///             return Decision::ErrorQueue;
///         }
///         if failure.reason() == FailureReason::Timeout && attempts.total < 10 {
///             return Decision::RetryAfter(Duration::from_secs(1));
///         }
///         self.0.decide(failure, attempts)
///     }
/// }
///
/// let config = bus_core::EndpointConfig::default().policy(Orders(Recoverability::default()));
/// # drop(config);
/// ```
pub trait RecoverabilityPolicy: Send + Sync + 'static {
    /// What to do after `failure`, the `attempts.in_round`-th failed attempt of this delivery.
    fn decide(&self, failure: &Failure, attempts: Attempts) -> Decision;
}

/// How many attempts a message has had, the failed one included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempts {
    /// Attempts made in this delivery round: 1 after the first failure. A delayed retry
    /// starts a new round.
    pub in_round: u32,
    /// Delayed retries already made: 0 on the first delivery.
    pub delayed: u32,
    /// Attempts made in all, across delayed retries.
    pub total: u32,
}

impl Attempts {
    /// Attempt counts, e.g. to test a policy.
    pub fn new(in_round: u32, delayed: u32, total: u32) -> Self {
        Attempts {
            in_round,
            delayed,
            total,
        }
    }
}

/// What a [`RecoverabilityPolicy`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Attempt again at once, in process.
    RetryNow,
    /// Send the message back to the endpoint's queue, to be delivered after this delay (a
    /// new round of attempts; durable on brokers). RabbitMQ keeps a queue per distinct delay:
    /// keep the set of delays a policy returns small.
    RetryAfter(Duration),
    /// Give up: move the message to the endpoint's error queue with the failure headers.
    ErrorQueue,
}

/// The steps of jitter above a delay (see [`Recoverability::jitter`]).
const JITTER_STEPS: u8 = 8;

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
    /// How much random time is added to each delay, as a share of it from 0 (none) to 1: a
    /// delay `d` becomes one of `d`, `d * (1 + jitter / 8)`, ... `d * (1 + jitter)`, so
    /// messages that failed together (a database restart) do not all come back at the same
    /// moment. Never shorter than `d`: a retry does not come back before its backoff. Nine
    /// steps rather than any value, because a broker may keep a queue per delay (RabbitMQ's
    /// delay queues).
    pub jitter: f64,
}

impl Default for Recoverability {
    fn default() -> Self {
        Recoverability {
            immediate_retries: 2,
            delayed_retries: 2,
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(60),
            jitter: 0.2,
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

    /// [`Recoverability::delay_for`] with its random part (see [`Recoverability::jitter`]).
    pub fn jittered_delay_for(&self, n: u32) -> Duration {
        let delay = self.delay_for(n);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return delay;
        }
        let step = f64::from(fastrand::u8(0..=JITTER_STEPS)) / f64::from(JITTER_STEPS);
        let jittered = delay.mul_f64(1.0 + jitter * step);
        Duration::from_millis(jittered.as_millis().try_into().unwrap_or(u64::MAX))
    }

    /// Attempts per delivery round.
    pub(crate) fn attempts_per_round(&self) -> u32 {
        self.immediate_retries.saturating_add(1)
    }
}

impl RecoverabilityPolicy for Recoverability {
    fn decide(&self, failure: &Failure, attempts: Attempts) -> Decision {
        if failure.is_unrecoverable() {
            Decision::ErrorQueue
        } else if attempts.in_round < self.attempts_per_round() {
            Decision::RetryNow
        } else if attempts.delayed < self.delayed_retries {
            Decision::RetryAfter(self.jittered_delay_for(attempts.delayed))
        } else {
            Decision::ErrorQueue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HandlerError;

    fn failed() -> Failure {
        HandlerError::new("boom").into()
    }

    #[test]
    fn the_default_policy_retries_at_once_then_after_a_delay_then_gives_up() {
        let r = Recoverability {
            immediate_retries: 1,
            delayed_retries: 1,
            jitter: 0.0,
            ..Recoverability::default()
        };
        assert_eq!(
            r.decide(&failed(), Attempts::new(1, 0, 1)),
            Decision::RetryNow
        );
        assert_eq!(
            r.decide(&failed(), Attempts::new(2, 0, 2)),
            Decision::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            r.decide(&failed(), Attempts::new(1, 1, 3)),
            Decision::RetryNow
        );
        assert_eq!(
            r.decide(&failed(), Attempts::new(2, 1, 4)),
            Decision::ErrorQueue
        );
        let fatal: Failure = HandlerError::unrecoverable("bad").into();
        assert_eq!(
            r.decide(&fatal, Attempts::new(1, 0, 1)),
            Decision::ErrorQueue
        );
    }

    #[test]
    fn jitter_lengthens_a_delay_by_at_most_its_share() {
        let r = Recoverability {
            initial_delay: Duration::from_secs(10),
            jitter: 0.5,
            ..Recoverability::default()
        };
        let delays: std::collections::BTreeSet<Duration> =
            (0..500).map(|_| r.jittered_delay_for(0)).collect();
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_secs(10) && *d <= Duration::from_secs(15)));
        assert!(delays.len() > 1, "some randomness");
        assert!(delays.len() <= 9, "few distinct delays: {delays:?}");
        let none = Recoverability {
            jitter: 0.0,
            ..r.clone()
        };
        assert_eq!(none.jittered_delay_for(1), Duration::from_secs(20));
    }
}
