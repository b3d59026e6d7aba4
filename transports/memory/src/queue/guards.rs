//! What holds something of a queue: a slot reserved in it, or a place in one of its two lines
//! (a producer's, waiting for room; a consumer's, waiting for a message). Each gives back what
//! it holds when dropped, so a send or a receive cancelled at any point (a timeout, a dropped
//! future) loses no message and no slot, and holds up no one behind it.

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Queue, Stored};

/// A slot reserved in a queue; given back when dropped unused.
pub(crate) struct Reserved<'q> {
    pub(super) queue: Option<&'q Queue>,
}

impl Reserved<'_> {
    /// Put the message into the reserved slot.
    pub(crate) fn push(mut self, stored: Stored) {
        if let Some(queue) = self.queue.take() {
            let mut state = queue.lock();
            state.reserved -= 1;
            Queue::hand_over(&mut state, stored, false);
        }
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            let mut state = queue.lock();
            state.reserved -= 1;
            queue.grant(&mut state);
        }
    }
}

/// A blocked producer's place in line for room. Leaving it (a timeout, or the send dropped)
/// takes it out of the line; a slot granted meanwhile goes back to the queue.
pub(super) struct InLine<'q> {
    pub(super) queue: &'q Queue,
    pub(super) id: u64,
    pub(super) rx: Option<oneshot::Receiver<()>>,
}

impl InLine<'_> {
    /// Whether a slot was granted by `deadline`. Once it was, the slot is the caller's.
    pub(super) async fn granted_by(&mut self, deadline: Instant) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(())) => {
                self.rx = None;
                true
            }
            // Not granted in time, or taken out of the line (only this place does that).
            Ok(Err(_)) | Err(_) => false,
        }
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut state = self.queue.lock();
        state.blocked.retain(|b| b.id != self.id);
        rx.close();
        if rx.try_recv().is_ok() {
            // Granted just as it gave up: the slot goes to the next in line, or back to the room.
            state.reserved -= 1;
        }
        self.queue.grant(&mut state);
    }
}

/// A consumer's place in line for the next message. If it stops waiting (its `next` is
/// dropped) just as a message was handed to it, the message goes back to the head of the
/// queue: never lost.
pub(crate) struct Waiting<'q> {
    pub(super) queue: &'q Queue,
    pub(super) rx: Option<oneshot::Receiver<Stored>>,
}

impl Waiting<'_> {
    /// The message handed to this consumer, counted as unacked; `None` if the line was cleared
    /// without one for it (then it takes a place again).
    pub(crate) async fn handed(&mut self) -> Option<Stored> {
        let stored = self.rx.as_mut()?.await.ok()?;
        self.rx = None;
        Some(stored)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(stored) = rx.try_recv() {
                self.queue.settle(0, std::iter::once(stored));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::tests::{ack_one, full, ids, producer, stored, until_in_line, LONG};
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_producer_that_times_out_leaves_the_line() {
        let q = full(2);
        let quitter = producer(&q, 2, Duration::from_millis(50));
        until_in_line(&q, 1).await;
        let next = producer(&q, 3, LONG);
        until_in_line(&q, 2).await;
        assert!(!quitter.await.expect("quitter"), "no room by its deadline");
        assert_eq!(q.lock().blocked.len(), 1, "it left the line");
        ack_one(&q);
        assert!(next.await.expect("next"), "the next in line is served");
        assert_eq!(ids(&q), ["m-1", "m-3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_granted_to_a_producer_that_gives_up_goes_to_the_next() {
        let q = full(2);
        let quitter = producer(&q, 2, LONG);
        until_in_line(&q, 1).await;
        let next = producer(&q, 3, LONG);
        until_in_line(&q, 2).await;
        ack_one(&q);
        // Granted, and dropped before it could take the slot.
        quitter.abort();
        assert!(quitter.await.expect_err("aborted").is_cancelled());
        assert!(next.await.expect("next"), "the slot went on to the next");
        assert_eq!(ids(&q), ["m-1", "m-3"]);
        assert!(q.try_push(stored(4)).is_err(), "no slot made up");
        ack_one(&q);
        ack_one(&q);
        assert!(q.try_push(stored(5)).is_ok() && q.try_push(stored(6)).is_ok());
        assert!(q.try_push(stored(7)).is_err(), "no slot lost");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_given_back_unused_goes_to_the_first_in_line() {
        let q = Arc::new(Queue::new("q", Some(1)));
        let slot = q.try_reserve().expect("the only slot");
        let blocked = producer(&q, 1, LONG);
        until_in_line(&q, 1).await;
        drop(slot);
        assert!(blocked.await.expect("producer"));
        assert_eq!(ids(&q), ["m-1"]);
    }

    #[test]
    fn a_consumer_that_stops_as_a_message_is_handed_to_it_puts_it_back_first() {
        let q = Queue::new("q", Some(8));
        let Err(waiting) = q.pop_or_wait() else {
            panic!("nothing is ready yet")
        };
        assert!(
            q.try_push(stored(0)).is_ok(),
            "handed to the waiting consumer"
        );
        assert!(q.try_push(stored(1)).is_ok(), "ready");
        drop(waiting);
        assert_eq!(ids(&q), ["m-0", "m-1"], "back at the head, not lost");
        assert_eq!(q.depth(), 2);
    }
}
