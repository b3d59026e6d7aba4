//! Waiting, always with a deadline: for a message to be sent, published, handled or to fail,
//! for a condition of your own, or for the bus to go quiet.

use std::time::Duration;

use bus_core::{Command, Event, Message};
use tokio::time::Instant;

use crate::error::HarnessError;
use crate::harness::TestHarness;
use crate::records::Failed;

/// The waits of a harness with one deadline: what [`TestHarness::within`] returns. The
/// harness's own `wait_*` methods are these with its default deadline.
///
/// A wait returns as soon as what it waits for has happened (also when it happened before the
/// wait began), or [`HarnessError::TimedOut`] at the deadline, listing what the harness saw.
#[derive(Clone, Copy, Debug)]
pub struct Wait<'h> {
    harness: &'h TestHarness,
    timeout: Duration,
}

impl<'h> Wait<'h> {
    pub(crate) fn new(harness: &'h TestHarness, timeout: Duration) -> Self {
        Wait { harness, timeout }
    }

    /// Wait until `check` finds what it looks for in the harness, and return it. Checked now,
    /// then after every change the harness records.
    async fn find<T>(
        &self,
        what: impl FnOnce() -> String,
        mut check: impl FnMut(&TestHarness) -> Option<T>,
    ) -> Result<T, HarnessError> {
        let shared = self.harness.shared();
        let deadline = Instant::now() + self.timeout;
        loop {
            let change = shared.change();
            tokio::pin!(change);
            change.as_mut().enable();
            if let Some(found) = check(self.harness) {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::timed_out(what(), self.timeout, shared.seen()));
            }
            tokio::select! {
                _ = change => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Wait until `condition` holds, checked now and after every change the harness records.
    /// `what` names the condition in the timeout error.
    pub async fn wait_until(
        &self,
        what: &str,
        mut condition: impl FnMut(&TestHarness) -> bool,
    ) -> Result<(), HarnessError> {
        self.find(|| what.to_string(), |h| condition(h).then_some(()))
            .await
    }

    /// Wait for a `C` to be sent, and return the first one sent.
    pub async fn wait_for_sent<C: Command>(&self) -> Result<C, HarnessError> {
        self.find(
            || format!("a sent {}", C::NAME),
            |h| h.sent::<C>().into_iter().next(),
        )
        .await
    }

    /// Wait for a `C` matching `predicate` to be sent, and return the first one.
    pub async fn wait_for_sent_where<C: Command>(
        &self,
        mut predicate: impl FnMut(&C) -> bool,
    ) -> Result<C, HarnessError> {
        self.find(
            || format!("a sent {} matching the predicate", C::NAME),
            |h| h.sent::<C>().into_iter().find(|c| predicate(c)),
        )
        .await
    }

    /// Wait for an `E` to be published, and return the first one published.
    pub async fn wait_for_published<E: Event>(&self) -> Result<E, HarnessError> {
        self.find(
            || format!("a published {}", E::NAME),
            |h| h.published::<E>().into_iter().next(),
        )
        .await
    }

    /// Wait for an `E` matching `predicate` to be published, and return the first one.
    pub async fn wait_for_published_where<E: Event>(
        &self,
        mut predicate: impl FnMut(&E) -> bool,
    ) -> Result<E, HarnessError> {
        self.find(
            || format!("a published {} matching the predicate", E::NAME),
            |h| h.published::<E>().into_iter().find(|e| predicate(e)),
        )
        .await
    }

    /// Wait for an `M` to be handled (an attempt at it succeeded), and return the first one.
    pub async fn wait_for_handled<M: Message>(&self) -> Result<M, HarnessError> {
        self.find(
            || format!("a handled {}", M::NAME),
            |h| h.handled::<M>().into_iter().next(),
        )
        .await
    }

    /// Wait for an `M` matching `predicate` to be handled, and return the first one.
    pub async fn wait_for_handled_where<M: Message>(
        &self,
        mut predicate: impl FnMut(&M) -> bool,
    ) -> Result<M, HarnessError> {
        self.find(
            || format!("a handled {} matching the predicate", M::NAME),
            |h| h.handled::<M>().into_iter().find(|m| predicate(m)),
        )
        .await
    }

    /// Wait for an `M` to be moved to an error queue, and return the first one with why.
    pub async fn wait_for_failed<M: Message>(&self) -> Result<Failed<M>, HarnessError> {
        self.find(
            || format!("a failed {}", M::NAME),
            |h| h.failed::<M>().into_iter().next(),
        )
        .await
    }

    /// Wait for an `M` matching `predicate` to be moved to an error queue, and return the
    /// first one.
    pub async fn wait_for_failed_where<M: Message>(
        &self,
        mut predicate: impl FnMut(&Failed<M>) -> bool,
    ) -> Result<Failed<M>, HarnessError> {
        self.find(
            || format!("a failed {} matching the predicate", M::NAME),
            |h| h.failed::<M>().into_iter().find(|f| predicate(f)),
        )
        .await
    }

    /// Wait until the bus is quiet: no handler attempt running, no message sent to a hosted
    /// endpoint still to be handled (a delayed retry's message included), and nothing new for
    /// the harness's settle window (see [`crate::HarnessBuilder::settle`]).
    ///
    /// Messages that a consumer outside this bus takes from a hosted endpoint's queue are
    /// never handled here: the wait then times out and lists them as not handled.
    pub async fn wait_until_quiet(&self) -> Result<(), HarnessError> {
        let shared = self.harness.shared();
        let settle = self.harness.settle_window();
        let deadline = Instant::now() + self.timeout;
        loop {
            let change = shared.change();
            tokio::pin!(change);
            change.as_mut().enable();
            let (busy, last_change) = shared.busy();
            let now = Instant::now();
            let quiet_at = last_change + settle;
            if !busy && now >= quiet_at {
                return Ok(());
            }
            if now >= deadline {
                return Err(HarnessError::timed_out(
                    format!(
                        "the bus to be quiet (nothing running or left to handle, nothing new for {settle:?})"
                    ),
                    self.timeout,
                    shared.seen(),
                ));
            }
            let wake = if busy {
                deadline
            } else {
                quiet_at.min(deadline)
            };
            tokio::select! {
                _ = change => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}
