//! The bounded fair queue behind each endpoint: its messages, its room, and the two lines that
//! wait on it, producers for room and consumers for messages.
//!
//! The contract the rest of the crate builds on:
//!
//! - The bound: ready, unacked (taken and not settled) and reserved (promised to a producer)
//!   messages together never exceed the capacity. An unbounded queue (an error queue) always
//!   has room.
//! - Producers: a slot is taken at once only when no blocked producer waits. Blocked producers
//!   are served first come first served, and a freed slot is granted to the first of them (it
//!   is reserved for that producer, not raced for), so neither a newcomer nor a no-wait send
//!   takes it. A producer that gives up leaves the line, and a slot granted to it meanwhile
//!   goes on to the next.
//! - Consumers: a new message is handed to the consumer that has waited longest; ready messages
//!   are taken oldest first, a batch at a time under one lock; a settled message is acked or
//!   goes back to the head of the queue, in order, ahead of newer ones.
//!
//! Everything is kept under one lock per queue, so a send, a take and an ack each take that
//! one lock. A reserved slot and a place in either line are held by guards (`guards`), which
//! give them back when dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bus_core::{Envelope, MessageId};
use tokio::sync::oneshot;
use tokio::time::Instant;

mod guards;

use guards::InLine;
pub(crate) use guards::{Reserved, Waiting};

/// A message in a queue, with the number of times it has been delivered.
pub(crate) struct Stored {
    pub(crate) envelope: Envelope,
    pub(crate) delivery_count: u32,
}

impl Stored {
    /// A message not delivered yet.
    pub(crate) fn fresh(envelope: Envelope) -> Self {
        Stored {
            envelope,
            delivery_count: 0,
        }
    }
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Stored>,
    /// Taken by consumers and not settled yet.
    unacked: usize,
    /// Slots held by producers that have not pushed yet.
    reserved: usize,
    /// Consumers waiting for a message, first come first served.
    waiters: VecDeque<oneshot::Sender<Stored>>,
    /// Producers waiting for room, first come first served.
    blocked: VecDeque<Blocked>,
    /// The id the next blocked producer gets.
    next_blocked: u64,
}

/// A producer waiting for room: its place in line, the free slots it waits for, and how it
/// is told that one of them is now reserved for it.
struct Blocked {
    id: u64,
    want: usize,
    granted: oneshot::Sender<()>,
}

/// One queue. Its room (bounded queues only), its consumers' and its producers' lines and its
/// messages are all kept under one lock.
pub(crate) struct Queue {
    pub(crate) name: String,
    /// Most messages ready, unacked or reserved at once; `None` for unbounded (error) queues.
    capacity: Option<usize>,
    /// How many free slots a producer blocked on a full queue waits for before it goes on.
    refill: usize,
    state: Mutex<QueueState>,
    /// Subscriptions reading the queue and not cancelled. Kept apart from the state: only
    /// listing endpoints reads it, and subscribing must not wait on the queue's lock for it.
    consumers: AtomicUsize,
}

/// How long a producer blocked on a full queue waits for `refill` slots before it settles for one.
const REFILL_WAIT: Duration = Duration::from_millis(1);

/// Slots a blocked producer waits for: an eighth of the bound, at most 64, at least 1.
fn refill_for(capacity: usize) -> usize {
    (capacity / 8).clamp(1, 64)
}

impl Queue {
    /// An empty queue of at most `capacity` messages; `None` for no bound.
    pub(crate) fn new(name: &str, capacity: Option<usize>) -> Self {
        Queue {
            name: name.to_string(),
            capacity,
            // An unbounded queue always has room: nobody ever waits for a refill there.
            refill: capacity.map_or(1, refill_for),
            state: Mutex::new(QueueState::default()),
            consumers: AtomicUsize::new(0),
        }
    }

    /// Whether the queue is bounded: an endpoint's input queue, not an error queue.
    pub(crate) fn bounded(&self) -> bool {
        self.capacity.is_some()
    }

    /// Subscriptions reading the queue now.
    pub(crate) fn consumers(&self) -> usize {
        self.consumers.load(Ordering::Relaxed)
    }

    /// A subscription started (`true`) or stopped reading the queue.
    pub(crate) fn count_consumer(&self, started: bool) {
        if started {
            self.consumers.fetch_add(1, Ordering::Relaxed);
        } else {
            self.consumers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages ready or taken and not settled yet.
    pub(crate) fn depth(&self) -> usize {
        let state = self.lock();
        state.ready.len() + state.unacked
    }

    /// The ready messages, oldest first, left in place.
    pub(crate) fn browse(&self, limit: usize) -> Vec<Envelope> {
        self.lock()
            .ready
            .iter()
            .take(limit)
            .map(|m| m.envelope.clone())
            .collect()
    }

    /// Remove and return the ready messages, oldest first; their room goes to blocked
    /// producers.
    pub(crate) fn drain_ready(&self) -> Vec<Envelope> {
        let mut state = self.lock();
        let drained = state.ready.drain(..).map(|m| m.envelope).collect();
        self.grant(&mut state);
        drained
    }

    /// Take ready messages out by id, the oldest first: one message for each time an id is
    /// listed in `ids`. The others keep their order; messages taken by a consumer are not
    /// looked at. Returns the ids of those removed, in queue order; their room goes to
    /// blocked producers.
    pub(crate) fn remove(&self, ids: &[MessageId]) -> Vec<MessageId> {
        // How many messages to remove for each id.
        let mut wanted: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for id in ids {
            *wanted.entry(id.as_str()).or_default() += 1;
        }
        let mut removed = Vec::new();
        let mut state = self.lock();
        state.ready.retain(|m| {
            let id = &m.envelope.headers.message_id;
            match wanted.get_mut(id.as_str()) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    removed.push(id.clone());
                    false
                }
                _ => true,
            }
        });
        if !removed.is_empty() {
            self.grant(&mut state);
        }
        removed
    }

    /// Free slots (unbounded: always some).
    fn free(&self, state: &QueueState) -> usize {
        match self.capacity {
            Some(capacity) => {
                capacity.saturating_sub(state.ready.len() + state.unacked + state.reserved)
            }
            None => usize::MAX,
        }
    }

    /// Whether a producer may take a slot now: there is room, and no blocked producer waits
    /// for it first.
    fn room_now(&self, state: &QueueState) -> bool {
        state.blocked.is_empty() && self.free(state) > 0
    }

    /// Queue a message if there is room now, under one lock; otherwise give it back.
    pub(crate) fn try_push(&self, stored: Stored) -> Result<(), Stored> {
        let mut state = self.lock();
        if !self.room_now(&state) {
            return Err(stored);
        }
        Queue::hand_over(&mut state, stored, false);
        Ok(())
    }

    /// A slot now, if there is room.
    pub(crate) fn try_reserve(&self) -> Option<Reserved<'_>> {
        let mut state = self.lock();
        if !self.room_now(&state) {
            return None;
        }
        state.reserved += 1;
        Some(Reserved { queue: Some(self) })
    }

    /// A slot for one message, waiting for room until `deadline`; `None` if none came by then.
    ///
    /// Blocked producers wait in line, and a freed slot is given to the first of them, not
    /// raced for: a producer that just arrived (or a no-wait send) never takes room from one
    /// that waits. The first in line waits a moment for a few free slots, not just one, so a
    /// producer that outruns its consumers is woken once per `refill` acks rather than on every
    /// ack (a cross-thread wake-up each, which cost more than the ack). A slow consumer does
    /// not free that many in a moment: it then takes the first slot freed, until the deadline.
    pub(crate) async fn reserve(&self, deadline: Instant) -> Option<Reserved<'_>> {
        let mut place = {
            let mut state = self.lock();
            if self.room_now(&state) {
                state.reserved += 1;
                return Some(Reserved { queue: Some(self) });
            }
            if Instant::now() >= deadline {
                return None;
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_blocked;
            state.next_blocked += 1;
            state.blocked.push_back(Blocked {
                id,
                want: self.refill,
                granted: tx,
            });
            // The line may have moved on without a wake-up for it (a producer ahead gave up).
            self.grant(&mut state);
            InLine {
                queue: self,
                id,
                rx: Some(rx),
            }
        };
        let refill_until = (Instant::now() + REFILL_WAIT).min(deadline);
        if place.granted_by(refill_until).await {
            return Some(Reserved { queue: Some(self) });
        }
        // The moment is over: the first slot freed will do.
        {
            let mut state = self.lock();
            if let Some(me) = state.blocked.iter_mut().find(|b| b.id == place.id) {
                me.want = 1;
            }
            self.grant(&mut state);
        }
        if place.granted_by(deadline).await {
            return Some(Reserved { queue: Some(self) });
        }
        None
    }

    /// Hand a message to the consumer waiting longest, or queue it if none waits.
    ///
    /// Handing it over (rather than waking a consumer to come and take it) keeps competing
    /// consumers fair: a consumer already running would otherwise win nearly every race against
    /// one just woken, and could starve it.
    fn hand_over(state: &mut QueueState, mut stored: Stored, front: bool) {
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(stored) {
                Ok(()) => {
                    state.unacked += 1;
                    return;
                }
                // That consumer stopped waiting: try the next one.
                Err(back) => stored = back,
            }
        }
        if front {
            state.ready.push_front(stored);
        } else {
            state.ready.push_back(stored);
        }
    }

    /// Move up to `most` of the oldest ready messages to `into`, counted as unacked; how many.
    pub(crate) fn take_ready(&self, into: &mut VecDeque<Stored>, most: usize) -> usize {
        let mut state = self.lock();
        let n = most.min(state.ready.len());
        into.extend(state.ready.drain(..n));
        state.unacked += n;
        n
    }

    /// The oldest ready message, counted as unacked; or a place in line for the next one.
    pub(crate) fn pop_or_wait(&self) -> Result<Stored, Waiting<'_>> {
        let mut state = self.lock();
        match state.ready.pop_front() {
            Some(stored) => {
                state.unacked += 1;
                Ok(stored)
            }
            None => {
                let (tx, rx) = oneshot::channel();
                state.waiters.push_back(tx);
                Err(Waiting {
                    queue: self,
                    rx: Some(rx),
                })
            }
        }
    }

    /// Settle taken messages: `acked` of them acked, and those in `requeue` returned to the
    /// head of the queue in their order.
    pub(crate) fn settle(&self, acked: usize, requeue: impl DoubleEndedIterator<Item = Stored>) {
        let mut state = self.lock();
        state.unacked -= acked;
        for stored in requeue.rev() {
            state.unacked -= 1;
            Queue::hand_over(&mut state, stored, true);
        }
        self.grant(&mut state);
    }

    /// Reserve a slot for each blocked producer in turn, first in line first, while there is
    /// as much room as the first one waits for; a producer that stopped waiting is skipped.
    fn grant(&self, state: &mut QueueState) {
        while let Some(first) = state.blocked.front() {
            if self.free(state) < first.want {
                return;
            }
            let Some(first) = state.blocked.pop_front() else {
                return;
            };
            state.reserved += 1;
            if first.granted.send(()).is_err() {
                state.reserved -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bus_core::Headers;
    use tokio::task::JoinHandle;

    use super::*;

    /// Message `n`, not delivered yet, with id `m-{n}`.
    pub(super) fn stored(n: usize) -> Stored {
        Stored::fresh(Envelope::from_bytes(
            Headers {
                message_id: format!("m-{n}").into(),
                message_type: "t".into(),
                ..Headers::default()
            },
            "{}",
        ))
    }

    /// The ids of the ready messages, oldest first.
    pub(super) fn ids(q: &Queue) -> Vec<String> {
        q.browse(usize::MAX)
            .iter()
            .map(|e| e.headers.message_id.to_string())
            .collect()
    }

    /// A queue of `capacity` holding messages `0..capacity`, ready.
    pub(super) fn full(capacity: usize) -> Arc<Queue> {
        let q = Arc::new(Queue::new("q", Some(capacity)));
        for n in 0..capacity {
            assert!(q.try_push(stored(n)).is_ok(), "room for message {n}");
        }
        q
    }

    /// Take the oldest ready message and ack it, freeing its slot.
    pub(super) fn ack_one(q: &Queue) {
        let mut taken = VecDeque::new();
        assert_eq!(q.take_ready(&mut taken, 1), 1, "a message to ack");
        q.settle(1, std::iter::empty());
    }

    /// A producer of message `n` in a task of its own, waiting for room up to `within`;
    /// whether it got in.
    pub(super) fn producer(q: &Arc<Queue>, n: usize, within: Duration) -> JoinHandle<bool> {
        let q = q.clone();
        tokio::spawn(async move {
            match q.reserve(Instant::now() + within).await {
                Some(slot) => {
                    slot.push(stored(n));
                    true
                }
                None => false,
            }
        })
    }

    /// Let the other tasks run until `n` producers wait in line.
    pub(super) async fn until_in_line(q: &Queue, n: usize) {
        for _ in 0..1_000 {
            if q.lock().blocked.len() == n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{n} producers never waited in line");
    }

    /// Let the other tasks run for a while.
    async fn let_run() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    pub(super) const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn the_bound_counts_ready_unacked_and_reserved_messages() {
        let q = Queue::new("q", Some(3));
        assert!(q.try_push(stored(0)).is_ok());
        assert!(q.try_push(stored(1)).is_ok());
        let slot = q.try_reserve().expect("a third slot");
        assert!(
            q.try_push(stored(2)).is_err(),
            "two ready and one reserved fill it"
        );
        let mut taken = VecDeque::new();
        q.take_ready(&mut taken, 1);
        assert!(
            q.try_reserve().is_none(),
            "a taken message still holds its slot"
        );
        assert_eq!(
            q.depth(),
            2,
            "one ready, one unacked; the reservation is not a message"
        );
        q.settle(1, std::iter::empty());
        assert!(q.try_push(stored(3)).is_ok(), "an ack frees a slot");
        drop(slot);
        assert!(
            q.try_push(stored(4)).is_ok(),
            "a slot dropped unused is free again"
        );
        assert!(q.try_push(stored(5)).is_err());
        assert_eq!(ids(&q), ["m-1", "m-3", "m-4"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unbounded_queue_always_has_room() {
        let q = Queue::new("q.error", None);
        for n in 0..1_000 {
            assert!(q.try_push(stored(n)).is_ok());
        }
        let past = Instant::now() - Duration::from_secs(1);
        let slot = q
            .reserve(past)
            .await
            .expect("room at once, whatever the deadline");
        slot.push(stored(1_000));
        assert_eq!(q.depth(), 1_001);
        assert_eq!(q.drain_ready().len(), 1_001);
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn blocked_producers_are_served_first_come_first_served() {
        let q = full(2); // a refill of 1: every freed slot is granted at once
        let first = producer(&q, 2, LONG);
        until_in_line(&q, 1).await;
        let second = producer(&q, 3, LONG);
        until_in_line(&q, 2).await;
        let third = producer(&q, 4, LONG);
        until_in_line(&q, 3).await;

        for (served, waiting) in [(&first, 2), (&second, 1), (&third, 0)] {
            ack_one(&q);
            let_run().await;
            assert!(served.is_finished(), "the first in line is served");
            assert_eq!(q.lock().blocked.len(), waiting, "the others still wait");
        }
        for producer in [first, second, third] {
            assert!(producer.await.expect("producer"), "got in");
        }
        assert_eq!(ids(&q), ["m-3", "m-4"], "each got in as its slot was freed");
        assert_eq!(q.depth(), 2, "the bound held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_granted_slot_is_not_taken_by_a_no_wait_send() {
        let q = full(2);
        let blocked = producer(&q, 2, LONG);
        until_in_line(&q, 1).await;
        ack_one(&q);
        // The slot is now reserved for the blocked producer, which has not run yet.
        assert!(q.try_push(stored(9)).is_err(), "not by a push");
        assert!(q.try_reserve().is_none(), "nor by a reservation");
        assert!(
            blocked.await.expect("producer"),
            "the blocked producer got in"
        );
        assert_eq!(ids(&q), ["m-1", "m-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_producer_waits_a_moment_for_a_refill_then_takes_one_slot() {
        let q = full(16); // a refill of 2
        let blocked = producer(&q, 16, LONG);
        until_in_line(&q, 1).await;
        ack_one(&q);
        let_run().await;
        assert!(
            !blocked.is_finished(),
            "one free slot: it waits for a second a moment"
        );
        assert!(
            q.try_push(stored(99)).is_err(),
            "the free slot is not there for the taking"
        );
        tokio::time::sleep(REFILL_WAIT * 2).await;
        assert!(
            blocked.await.expect("producer"),
            "after the moment, one slot does"
        );
        assert_eq!(q.depth(), 16, "the bound held");
    }

    #[tokio::test]
    async fn a_new_message_goes_to_the_consumer_waiting_longest() {
        let q = Queue::new("q", Some(8));
        let Err(mut first) = q.pop_or_wait() else {
            panic!("nothing is ready yet")
        };
        let Err(gone) = q.pop_or_wait() else {
            panic!("nothing is ready yet")
        };
        let Err(mut third) = q.pop_or_wait() else {
            panic!("nothing is ready yet")
        };
        drop(gone);
        assert!(q.try_push(stored(0)).is_ok() && q.try_push(stored(1)).is_ok());
        let got = |s: Option<Stored>| s.map(|s| s.envelope.headers.message_id.to_string());
        assert_eq!(got(first.handed().await).as_deref(), Some("m-0"));
        assert_eq!(
            got(third.handed().await).as_deref(),
            Some("m-1"),
            "a consumer that stopped waiting is passed over"
        );
        assert_eq!(q.depth(), 2, "both handed out, unacked");
        assert!(ids(&q).is_empty(), "neither left ready");
    }

    #[test]
    fn consumers_take_batches_of_the_oldest_ready_messages() {
        let q = Queue::new("q", Some(8));
        for n in 0..5 {
            assert!(q.try_push(stored(n)).is_ok());
        }
        let mut batch = VecDeque::new();
        assert_eq!(q.take_ready(&mut batch, 3), 3, "as many as asked for");
        let taken: Vec<_> = batch
            .iter()
            .map(|s| s.envelope.headers.message_id.to_string())
            .collect();
        assert_eq!(taken, ["m-0", "m-1", "m-2"], "the oldest, in order");
        assert_eq!(ids(&q), ["m-3", "m-4"]);
        assert_eq!(q.depth(), 5, "taken messages count until settled");
        assert!(q.try_push(stored(5)).is_ok());
        assert_eq!(q.take_ready(&mut batch, 10), 3, "no more than are ready");
        assert_eq!(q.take_ready(&mut batch, 10), 0);
        assert_eq!(q.depth(), 6);
    }

    #[test]
    fn settled_messages_are_acked_or_go_back_to_the_head_in_order() {
        let q = Queue::new("q", Some(8));
        for n in 0..5 {
            assert!(q.try_push(stored(n)).is_ok());
        }
        let mut batch = VecDeque::new();
        q.take_ready(&mut batch, 3);
        batch.pop_front(); // m-0: acked
        q.settle(1, batch.drain(..));
        assert_eq!(
            ids(&q),
            ["m-1", "m-2", "m-3", "m-4"],
            "ahead of newer messages"
        );
        assert_eq!(q.depth(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn removing_by_id_takes_the_oldest_ready_match_and_frees_its_room() {
        let q = full(4);
        let mut taken = VecDeque::new();
        q.take_ready(&mut taken, 1); // m-0, held by a consumer
        assert!(q.try_push(stored(1)).is_err(), "full");
        let blocked = producer(&q, 9, LONG);
        until_in_line(&q, 1).await;
        let of = |v: &[&str]| v.iter().map(|s| MessageId::from(*s)).collect::<Vec<_>>();
        let removed = q.remove(&of(&["m-2", "m-0", "nope", "m-2"]));
        assert_eq!(removed, of(&["m-2"]), "only ready messages, each once");
        assert_eq!(ids(&q), ["m-1", "m-3"], "the others in their order");
        assert!(
            blocked.await.expect("producer"),
            "the freed room went to it"
        );
        q.settle(1, std::iter::empty()); // m-0 acked
        assert!(q.try_push(stored(1)).is_ok(), "a second copy of m-1");
        assert_eq!(q.remove(&of(&["m-1"])), of(&["m-1"]));
        assert_eq!(ids(&q), ["m-3", "m-9", "m-1"], "the oldest copy went");
        assert!(
            q.remove(&of(&["m-2"])).is_empty(),
            "removing again removes nothing"
        );
    }

    #[tokio::test]
    async fn a_message_put_back_goes_to_a_waiting_consumer_first() {
        let q = Queue::new("q", Some(8));
        assert!(q.try_push(stored(0)).is_ok());
        let Ok(taken) = q.pop_or_wait() else {
            panic!("one is ready")
        };
        let Err(mut waiting) = q.pop_or_wait() else {
            panic!("nothing else is ready")
        };
        q.settle(0, std::iter::once(taken));
        let handed = waiting.handed().await.expect("handed over");
        assert_eq!(handed.envelope.headers.message_id, "m-0");
        assert_eq!(q.depth(), 1, "unacked with its new consumer");
    }
}
