//! A consumer of one queue: its subscription, which takes messages within its prefetch and
//! hands them out as deliveries, and the consumer's acker, which settles each of them with the
//! queue.
//!
//! Prefetch bounds the deliveries taken and not settled, like a broker's: it counts the ready
//! messages a subscription took ahead in one go (a few at a time, under one lock), which go
//! back to the head of the queue when the subscription is cancelled or dropped. A delivery
//! dropped unsettled is a nack.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bus_core::{async_trait, Delivery, Envelope, SharedAcker, Subscription, TransportError};
use tokio::sync::Notify;

use crate::queue::{Queue, Stored};

/// Most ready messages a consumer takes from the queue under one lock, within its prefetch.
const TAKE_AT_ONCE: usize = 16;

/// What a subscription shares with the acks of its deliveries.
struct Consumer {
    queue: Arc<Queue>,
    /// Most deliveries taken and not settled (handed out or taken ahead).
    prefetch: usize,
    /// Deliveries taken from the queue and not settled yet. Only the subscription adds to
    /// it; settling subtracts.
    taken: AtomicUsize,
    /// A settle that frees a full prefetch wakes the subscription's waiting `next`.
    freed: Notify,
}

impl Consumer {
    /// One delivery settled: acked, or returned to the queue.
    fn settled(&self, requeue: Option<Stored>) {
        match requeue {
            Some(stored) => self.queue.settle(0, std::iter::once(stored)),
            None => self.queue.settle(1, std::iter::empty()),
        }
        if self.taken.fetch_sub(1, Ordering::AcqRel) == self.prefetch {
            self.freed.notify_one();
        }
    }
}

/// A subscription to one queue.
pub(crate) struct MemorySubscription {
    consumer: Arc<Consumer>,
    /// Messages taken from the queue ahead, under one lock, and not handed out yet; oldest
    /// first. They count against the prefetch, as a broker's prefetched messages do.
    buffer: VecDeque<Stored>,
    cancelled: bool,
}

impl MemorySubscription {
    /// A consumer of `queue` with at most `prefetch` deliveries unsettled (at least 1).
    pub(crate) fn new(queue: Arc<Queue>, prefetch: usize) -> Self {
        queue.count_consumer(true);
        MemorySubscription {
            consumer: Arc::new(Consumer {
                queue,
                prefetch: prefetch.max(1),
                taken: AtomicUsize::new(0),
                freed: Notify::new(),
            }),
            buffer: VecDeque::new(),
            cancelled: false,
        }
    }

    /// Stop reading: no longer counted as a consumer of the queue, and what was taken ahead
    /// goes back to its head, in order.
    fn stop(&mut self) {
        if !self.cancelled {
            self.cancelled = true;
            self.consumer.queue.count_consumer(false);
        }
        let n = self.buffer.len();
        if n > 0 {
            self.consumer.queue.settle(0, self.buffer.drain(..));
            self.consumer.taken.fetch_sub(n, Ordering::AcqRel);
        }
    }

    fn deliver(&self, mut stored: Stored) -> Delivery {
        stored.delivery_count += 1;
        let count = stored.delivery_count;
        Delivery::shared(
            stored.envelope,
            self.consumer.clone(),
            u64::from(count),
            count > 1,
            count,
        )
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn cancel(&mut self) {
        // No more deliveries: `next` returns `None` from now on, and what was taken ahead goes
        // back to the queue for other consumers. Deliveries already handed out are settled as
        // usual.
        self.stop();
    }

    fn next_now(&mut self) -> Option<Delivery> {
        if self.cancelled {
            return None;
        }
        if let Some(stored) = self.buffer.pop_front() {
            return Some(self.deliver(stored));
        }
        // Only this subscription adds to `taken`: what it reads here can only shrink meanwhile.
        let room = self
            .consumer
            .prefetch
            .saturating_sub(self.consumer.taken.load(Ordering::Acquire));
        if room == 0 {
            return None;
        }
        let taken = self
            .consumer
            .queue
            .take_ready(&mut self.buffer, room.min(TAKE_AT_ONCE));
        if taken == 0 {
            return None;
        }
        self.consumer.taken.fetch_add(taken, Ordering::AcqRel);
        let stored = self.buffer.pop_front()?;
        Some(self.deliver(stored))
    }

    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        loop {
            if let Some(ready) = self.next_now() {
                return Some(Ok(ready));
            }
            if self.cancelled {
                return None;
            }
            // Registered before the check, so a settle right after it is not missed.
            let freed = self.consumer.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if self.consumer.taken.load(Ordering::Acquire) >= self.consumer.prefetch {
                freed.await;
                continue;
            }
            // Room in the prefetch and nothing ready: wait in line for the next message.
            let mut waiting = match self.consumer.queue.pop_or_wait() {
                Ok(stored) => {
                    self.consumer.taken.fetch_add(1, Ordering::AcqRel);
                    return Some(Ok(self.deliver(stored)));
                }
                Err(waiting) => waiting,
            };
            if let Some(stored) = waiting.handed().await {
                self.consumer.taken.fetch_add(1, Ordering::AcqRel);
                return Some(Ok(self.deliver(stored)));
            }
            // The line was cleared without a message for us: take a place again.
        }
    }
}

/// The consumer settles its deliveries with the queue; a delivery's token is its delivery
/// count, which a requeued message keeps. The runtime settles each delivery once.
#[async_trait]
impl SharedAcker for Consumer {
    async fn ack(self: Arc<Self>, _: u64) -> Result<(), TransportError> {
        self.settled(None);
        Ok(())
    }

    fn ack_now(&self, _: u64) -> Option<Result<(), TransportError>> {
        self.settled(None);
        Some(Ok(()))
    }

    async fn nack(self: Arc<Self>, count: u64, envelope: Envelope) -> Result<(), TransportError> {
        self.abandon(count, envelope);
        Ok(())
    }

    fn abandon(&self, count: u64, envelope: Envelope) {
        let stored = Stored {
            envelope,
            delivery_count: u32::try_from(count).unwrap_or(u32::MAX),
        };
        self.settled(Some(stored));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bus_core::Headers;

    use super::*;

    /// A queue of `capacity` with messages `0..n` ready.
    fn queue(capacity: usize, n: usize) -> Arc<Queue> {
        let q = Arc::new(Queue::new("q", Some(capacity)));
        for n in 0..n {
            let envelope = Envelope::from_bytes(
                Headers {
                    message_id: format!("m-{n}").into(),
                    message_type: "t".into(),
                    ..Headers::default()
                },
                "{}",
            );
            assert!(q.try_push(Stored::fresh(envelope)).is_ok());
        }
        q
    }

    fn id(d: &Delivery) -> String {
        d.envelope().headers.message_id.to_string()
    }

    fn ready(q: &Queue) -> usize {
        q.browse(usize::MAX).len()
    }

    #[tokio::test]
    async fn a_subscription_takes_ahead_within_its_prefetch() {
        let q = queue(64, 40);
        let mut sub = MemorySubscription::new(q.clone(), 3);
        let first = sub.next_now().expect("ready");
        assert_eq!(ready(&q), 37, "three taken ahead in one go: the prefetch");
        let held = [
            sub.next_now().expect("taken ahead"),
            sub.next_now().expect("taken ahead"),
        ];
        assert!(
            sub.next_now().is_none(),
            "three unsettled: the prefetch is full"
        );
        first.ack().await.expect("acked");
        let fourth = sub.next_now().expect("an ack makes room for one more");
        assert_eq!(id(&fourth), "m-3", "in queue order");
        assert_eq!(ready(&q), 36);
        drop((held, fourth));
        assert_eq!(
            ready(&q),
            39,
            "dropped deliveries are back; the acked one is gone"
        );

        let mut wide = MemorySubscription::new(q.clone(), 100);
        let d = wide.next_now().expect("ready");
        assert_eq!(
            ready(&q),
            39 - TAKE_AT_ONCE,
            "a wide prefetch takes a bounded batch under one lock"
        );
        assert_eq!(q.depth(), 39, "taken ahead still counts in the queue");
        drop(d);
    }

    #[tokio::test]
    async fn cancel_gives_back_what_was_taken_ahead_and_hands_out_nothing_more() {
        let q = queue(16, 6);
        let mut sub = MemorySubscription::new(q.clone(), 4);
        let handed = sub.next_now().expect("ready");
        assert_eq!(ready(&q), 2, "four taken ahead");
        sub.cancel().await;
        let ids: Vec<_> = q
            .browse(usize::MAX)
            .iter()
            .map(|e| e.headers.message_id.to_string())
            .collect();
        assert_eq!(
            ids,
            ["m-1", "m-2", "m-3", "m-4", "m-5"],
            "back at the head, in order"
        );
        assert!(sub.next_now().is_none());
        assert!(sub.next().await.is_none(), "a cancelled subscription ends");
        handed
            .ack()
            .await
            .expect("what was handed out is still settled");
        assert_eq!(q.depth(), 5);
    }

    #[tokio::test]
    async fn a_delivery_dropped_unsettled_comes_back_counted_as_redelivered() {
        let q = queue(16, 2);
        let mut sub = MemorySubscription::new(q.clone(), 1);
        let d = sub.next().await.expect("a delivery").expect("not an error");
        assert!((id(&d) == "m-0") && !d.redelivered() && d.delivery_count() == 1);
        drop(d);
        let d = sub.next().await.expect("a delivery").expect("not an error");
        assert_eq!(id(&d), "m-0", "back at the head");
        assert!(d.redelivered() && d.delivery_count() == 2);
        d.nack().await.expect("nacked");
        let d = sub.next().await.expect("a delivery").expect("not an error");
        assert_eq!((id(&d).as_str(), d.delivery_count()), ("m-0", 3));
        d.ack().await.expect("acked");
        assert_eq!(q.depth(), 1, "acked once, gone");
    }

    #[tokio::test]
    async fn next_waits_for_a_settle_when_the_prefetch_is_full() {
        let q = queue(16, 3);
        let mut sub = MemorySubscription::new(q.clone(), 1);
        let first = sub.next().await.expect("a delivery").expect("not an error");
        let waiting = tokio::time::timeout(Duration::from_millis(50), sub.next()).await;
        assert!(waiting.is_err(), "nothing more while the one is unsettled");
        first.ack().await.expect("acked");
        let second = sub.next().await.expect("a delivery").expect("not an error");
        assert_eq!(id(&second), "m-1");
    }
}
