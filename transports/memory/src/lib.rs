//! # bus-transport-memory: the embedded, in-process transport
//!
//! A real transport, not a shortcut: it keeps the semantics the brokers have, so code proven
//! here behaves the same on RabbitMQ.
//!
//! - One bounded queue per endpoint: `send` waits while the queue is full (backpressure), so
//!   memory stays proportional to the bound, not to what producers send. Error queues are not
//!   bounded: a failed message must always have somewhere to go.
//! - Competing consumers: several subscriptions on one queue share its messages; a new message
//!   goes to the consumer that has waited longest, so none is starved.
//! - Fan-out: an event goes to the queue of every endpoint that subscribes to its wire name.
//! - Acks: a delivery is acked, nacked (back to the head of the queue, marked redelivered) or
//!   dropped unsettled (treated as a nack). Prefetch bounds unsettled deliveries; like a
//!   broker's, it counts the ready messages a consumer took ahead in one go (a few at a time,
//!   under one lock), which go back to the head of the queue when the consumer stops.
//! - Delayed delivery for delayed retries (a timer; it does not outlive the process).
//! - Typed bodies: messages stay Rust values, no serialization round trip, unless
//!   [`MemoryTransport::serialize`] asks for bytes.
//!
//! ```
//! use bus_transport_memory::MemoryTransport;
//! let transport = MemoryTransport::new().capacity(1_000);
//! let same_broker = transport.clone(); // clones share queues, like two clients of one broker
//! # drop(same_broker);
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bus_core::{
    async_trait, Acker, Delivery, Destination, Envelope, Outgoing, SubscribeOptions, Subscription,
    Topology, Transport, TransportError,
};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// The in-memory transport. Clones share the same queues.
#[derive(Clone)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    typed: bool,
    send_timeout: Duration,
    queues: RwLock<NameMap<Arc<Queue>>>,
    bindings: RwLock<NameMap<Vec<Arc<Queue>>>>,
}

/// Queues and bindings by name, looked up on every send.
type NameMap<V> = fnv::FnvHashMap<String, V>;

impl Default for MemoryTransport {
    fn default() -> Self {
        MemoryTransport::new()
    }
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("capacity", &self.inner.capacity)
            .field("typed", &self.inner.typed)
            .finish()
    }
}

impl MemoryTransport {
    /// A transport with queues of 10,000 messages, typed bodies and a 30 s send timeout.
    pub fn new() -> Self {
        MemoryTransport::with_settings(10_000, true, Duration::from_secs(30))
    }

    fn with_settings(capacity: usize, typed: bool, send_timeout: Duration) -> Self {
        MemoryTransport {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                typed,
                send_timeout,
                queues: RwLock::new(NameMap::default()),
                bindings: RwLock::new(NameMap::default()),
            }),
        }
    }

    /// Bound each endpoint queue to `capacity` messages (ready plus unacked).
    /// Set it before the transport is shared.
    pub fn capacity(self, capacity: usize) -> Self {
        MemoryTransport::with_settings(capacity, self.inner.typed, self.inner.send_timeout)
    }

    /// Serialize every message to bytes, as a broker would (off by default).
    pub fn serialize(self, yes: bool) -> Self {
        MemoryTransport::with_settings(self.inner.capacity, !yes, self.inner.send_timeout)
    }

    /// How long a send may wait for room in a full queue before failing.
    pub fn send_timeout(self, timeout: Duration) -> Self {
        MemoryTransport::with_settings(self.inner.capacity, self.inner.typed, timeout)
    }

    /// Messages in a queue (ready, unacked, or taken ahead by a consumer). `None` if it does
    /// not exist.
    pub fn depth(&self, queue: &str) -> Option<usize> {
        let q = self.queue(queue)?;
        let state = q.lock();
        Some(state.ready.len() + state.unacked)
    }

    /// Ready messages of an endpoint's error queue, oldest first, without removing them.
    pub fn error_queue(&self, endpoint: &str) -> Vec<Envelope> {
        self.browse(&error_queue_name(endpoint))
    }

    /// Ready messages of a queue, oldest first, without removing them.
    pub fn browse(&self, queue: &str) -> Vec<Envelope> {
        match self.queue(queue) {
            Some(q) => q.lock().ready.iter().map(|m| m.envelope.clone()).collect(),
            None => Vec::new(),
        }
    }

    /// Remove and return every ready message of an endpoint's error queue (e.g. to replay them).
    pub fn drain_error_queue(&self, endpoint: &str) -> Vec<Envelope> {
        match self.queue(&error_queue_name(endpoint)) {
            Some(q) => {
                let mut state = q.lock();
                let drained = state.ready.drain(..).map(|m| m.envelope).collect();
                q.grant(&mut state);
                drained
            }
            None => Vec::new(),
        }
    }

    fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.inner
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn declare_queue(&self, name: &str, bounded: bool) -> Arc<Queue> {
        let mut queues = self.inner.queues.write().unwrap_or_else(|p| p.into_inner());
        queues
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Queue {
                    name: name.to_string(),
                    capacity: bounded.then_some(self.inner.capacity),
                    refill: refill_for(self.inner.capacity),
                    state: Mutex::new(QueueState::default()),
                })
            })
            .clone()
    }

    fn targets(&self, destination: &Destination) -> Result<Vec<Arc<Queue>>, TransportError> {
        match destination {
            Destination::Endpoint(e) => self
                .queue(e)
                .map(|q| vec![q])
                .ok_or_else(|| TransportError::Unroutable(e.clone())),
            Destination::ErrorQueue(e) => Ok(vec![self.declare_queue(&error_queue_name(e), false)]),
            Destination::Event(name) => Ok(self
                .inner
                .bindings
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned()
                .unwrap_or_default()),
        }
    }

    /// A slot in `queue` for one message, waiting for room until `deadline`. Dropping the slot
    /// unused gives it back.
    ///
    /// Blocked producers wait in line, and a freed slot is given to the first of them, not
    /// raced for: a producer that just arrived (or a no-wait send) never takes room from one
    /// that waits. The first in line waits a moment for a few free slots, not just one, so a
    /// producer that outruns its consumers is woken once per `refill` acks rather than on every
    /// ack (a cross-thread wake-up each, which cost more than the ack). A slow consumer does
    /// not free that many in a moment: it then takes the first slot freed, until the deadline.
    async fn reserve<'q>(
        &self,
        queue: &'q Queue,
        deadline: Instant,
    ) -> Result<Reserved<'q>, TransportError> {
        let timeout = || TransportError::Timeout {
            operation: "waiting for room in a full in-memory queue",
            after: self.inner.send_timeout,
        };
        let mut place = {
            let mut state = queue.lock();
            if state.blocked.is_empty() && queue.free(&state) > 0 {
                state.reserved += 1;
                return Ok(Reserved { queue: Some(queue) });
            }
            if Instant::now() >= deadline {
                return Err(timeout());
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_blocked;
            state.next_blocked += 1;
            state.blocked.push_back(Blocked {
                id,
                want: queue.refill,
                granted: tx,
            });
            // The line may have moved on without a wake-up for it (a producer ahead gave up).
            queue.grant(&mut state);
            InLine {
                queue,
                id,
                rx: Some(rx),
            }
        };
        let refill_until = (Instant::now() + REFILL_WAIT).min(deadline);
        if place.granted_by(refill_until).await {
            return Ok(Reserved { queue: Some(queue) });
        }
        // The moment is over: the first slot freed will do.
        {
            let mut state = queue.lock();
            if let Some(me) = state.blocked.iter_mut().find(|b| b.id == place.id) {
                me.want = 1;
            }
            queue.grant(&mut state);
        }
        if place.granted_by(deadline).await {
            return Ok(Reserved { queue: Some(queue) });
        }
        Err(timeout())
    }
}

/// A blocked producer's place in line for room. Leaving it (a timeout, or the send dropped)
/// takes it out of the line; a slot granted meanwhile goes back to the queue.
struct InLine<'q> {
    queue: &'q Queue,
    id: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl InLine<'_> {
    /// Whether a slot was granted by `deadline`. Once it was, the slot is the caller's.
    async fn granted_by(&mut self, deadline: Instant) -> bool {
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

impl MemoryTransport {
    /// An event to every bound queue at once, if each has room; otherwise given back whole,
    /// with no queue served, for `send` to wait for room.
    fn publish_now(
        &self,
        name: String,
        envelope: Envelope,
    ) -> Result<Result<(), TransportError>, Outgoing> {
        let bindings = self
            .inner
            .bindings
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let targets = bindings.get(&name).map(Vec::as_slice).unwrap_or_default();
        if let [only] = targets {
            // One queue: room checked and the copy pushed under one lock.
            return match only.try_push(Stored::fresh(envelope)) {
                Ok(()) => Ok(Ok(())),
                Err(stored) => Err(Outgoing {
                    destination: Destination::Event(name),
                    envelope: stored.envelope,
                    delay: None,
                }),
            };
        }
        let mut slots = Vec::with_capacity(targets.len());
        for q in targets {
            match q.try_reserve() {
                Some(slot) => slots.push(slot),
                // Taken slots go back as `slots` drops.
                None => {
                    return Err(Outgoing {
                        destination: Destination::Event(name),
                        envelope,
                        delay: None,
                    })
                }
            }
        }
        push_copies(slots, envelope);
        Ok(Ok(()))
    }
}

/// A copy of `envelope` into each reserved slot (the envelope itself into the last).
fn push_copies(slots: Vec<Reserved<'_>>, envelope: Envelope) {
    let mut slots = slots.into_iter().peekable();
    while let Some(slot) = slots.next() {
        if slots.peek().is_some() {
            slot.push(Stored::fresh(envelope.clone()));
        } else {
            slot.push(Stored::fresh(envelope));
            return;
        }
    }
}

/// The error queue's name for an endpoint: `<endpoint>.error`.
pub fn error_queue_name(endpoint: &str) -> String {
    format!("{endpoint}.error")
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &str {
        "memory"
    }

    fn carries_typed_messages(&self) -> bool {
        self.inner.typed
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        for ep in &topology.endpoints {
            let queue = self.declare_queue(&ep.name, true);
            self.declare_queue(&error_queue_name(&ep.name), false);
            let mut bindings = self
                .inner
                .bindings
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for event in &ep.events {
                let bound = bindings.entry(event.clone()).or_default();
                if !bound.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                    bound.push(queue.clone());
                }
            }
        }
        Ok(())
    }

    fn send_now(&self, message: Outgoing) -> Result<Result<(), TransportError>, Outgoing> {
        // A command or an event for now, with room in every queue it goes to: enqueue it here
        // and now. Anything else (delays, error queues, a full queue) goes the way of `send`.
        let Outgoing {
            destination,
            envelope,
            delay: None,
        } = message
        else {
            return Err(message);
        };
        let e = match destination {
            Destination::Endpoint(e) => e,
            Destination::Event(name) => return self.publish_now(name, envelope),
            other => {
                return Err(Outgoing {
                    destination: other,
                    envelope,
                    delay: None,
                })
            }
        };
        // The queue is used under the map's read lock, not cloned out of it: its reference
        // count is shared with every consumer's acks, and touching it here would pull that
        // cache line over to the producer's thread and back on every message.
        let pushed = {
            let queues = self.inner.queues.read().unwrap_or_else(|p| p.into_inner());
            queues.get(&e).map(|q| q.try_push(Stored::fresh(envelope)))
        };
        match pushed {
            None => Ok(Err(TransportError::Unroutable(e))),
            Some(Ok(())) => Ok(Ok(())),
            Some(Err(stored)) => Err(Outgoing {
                destination: Destination::Endpoint(e),
                envelope: stored.envelope,
                delay: None,
            }),
        }
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.inner.send_timeout;
        if let (Destination::Endpoint(e), None) =
            (&message.destination, message.delay.filter(|d| !d.is_zero()))
        {
            // One queue, now: no list of targets, no copy of the envelope.
            let q = self
                .queue(e)
                .ok_or_else(|| TransportError::Unroutable(e.clone()))?;
            let slot = self.reserve(&q, deadline).await?;
            slot.push(Stored::fresh(message.envelope));
            return Ok(());
        }
        let targets = self.targets(&message.destination)?;
        if let Some(delay) = message.delay.filter(|d| !d.is_zero()) {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let deadline = Instant::now() + this.inner.send_timeout;
                for q in targets {
                    match this.reserve(&q, deadline).await {
                        Ok(slot) => slot.push(Stored::fresh(message.envelope.clone())),
                        Err(error) => {
                            tracing::error!(queue = %q.name, %error, "delayed message could not be enqueued");
                        }
                    }
                }
            });
            return Ok(());
        }
        // Room in every queue first, then a copy to each: an event that cannot get into one
        // queue in time gets into none (its slots go back as `slots` drops), so a caller's
        // retry does not duplicate it where it did get in.
        let mut slots = Vec::with_capacity(targets.len());
        for q in &targets {
            slots.push(self.reserve(q, deadline).await?);
        }
        push_copies(slots, message.envelope);
        Ok(())
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let queue = self
            .queue(endpoint)
            .ok_or_else(|| TransportError::Unroutable(endpoint.to_string()))?;
        Ok(Box::new(MemorySubscription {
            consumer: Arc::new(Consumer {
                queue,
                prefetch: options.prefetch.max(1),
                taken: AtomicUsize::new(0),
                freed: Notify::new(),
            }),
            buffer: VecDeque::new(),
            cancelled: false,
        }))
    }
}

struct Stored {
    envelope: Envelope,
    delivery_count: u32,
}

impl Stored {
    /// A message not delivered yet.
    fn fresh(envelope: Envelope) -> Self {
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
/// messages are all kept under one lock, so a send, a take and an ack each take that one lock
/// (an ack also updates its consumer's count of deliveries taken).
struct Queue {
    name: String,
    /// Most messages ready, unacked or reserved at once; `None` for unbounded (error) queues.
    capacity: Option<usize>,
    /// How many free slots a producer blocked on a full queue waits for before it goes on.
    refill: usize,
    state: Mutex<QueueState>,
}

/// How long a producer blocked on a full queue waits for `refill` slots before it settles for one.
const REFILL_WAIT: Duration = Duration::from_millis(1);

/// Slots a blocked producer waits for: an eighth of the bound, at most 64, at least 1.
fn refill_for(capacity: usize) -> usize {
    (capacity / 8).clamp(1, 64)
}

/// Most ready messages a consumer takes from the queue under one lock, within its prefetch.
const TAKE_AT_ONCE: usize = 16;

/// A slot reserved in a queue; given back when dropped unused.
struct Reserved<'q> {
    queue: Option<&'q Queue>,
}

impl Reserved<'_> {
    /// Put the message into the reserved slot.
    fn push(mut self, stored: Stored) {
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

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
    fn try_push(&self, stored: Stored) -> Result<(), Stored> {
        let mut state = self.lock();
        if !self.room_now(&state) {
            return Err(stored);
        }
        Queue::hand_over(&mut state, stored, false);
        Ok(())
    }

    /// A slot now, if there is room.
    fn try_reserve(&self) -> Option<Reserved<'_>> {
        let mut state = self.lock();
        if !self.room_now(&state) {
            return None;
        }
        state.reserved += 1;
        Some(Reserved { queue: Some(self) })
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
    fn take_ready(&self, into: &mut VecDeque<Stored>, most: usize) -> usize {
        let mut state = self.lock();
        let n = most.min(state.ready.len());
        into.extend(state.ready.drain(..n));
        state.unacked += n;
        n
    }

    /// The oldest ready message, counted as unacked; or a place in line for the next one.
    fn pop_or_wait(&self) -> Result<Stored, oneshot::Receiver<Stored>> {
        let mut state = self.lock();
        match state.ready.pop_front() {
            Some(stored) => {
                state.unacked += 1;
                Ok(stored)
            }
            None => {
                let (tx, rx) = oneshot::channel();
                state.waiters.push_back(tx);
                Err(rx)
            }
        }
    }

    /// Settle taken messages: acked (`requeue` empty), or returned to the head of the queue in
    /// their order.
    fn settle(&self, acked: usize, requeue: impl DoubleEndedIterator<Item = Stored>) {
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

struct MemorySubscription {
    consumer: Arc<Consumer>,
    /// Messages taken from the queue ahead, under one lock, and not handed out yet; oldest
    /// first. They count against the prefetch, as a broker's prefetched messages do.
    buffer: VecDeque<Stored>,
    cancelled: bool,
}

impl MemorySubscription {
    /// Return what was taken ahead to the head of the queue, in order.
    fn give_back(&mut self) {
        let n = self.buffer.len();
        if n > 0 {
            self.consumer.queue.settle(0, self.buffer.drain(..));
            self.consumer.taken.fetch_sub(n, Ordering::AcqRel);
        }
    }

    fn deliver(&self, mut stored: Stored) -> Delivery {
        stored.delivery_count += 1;
        let count = stored.delivery_count;
        let acker = MemoryAcker {
            consumer: self.consumer.clone(),
            delivery_count: count,
            settled: false,
        };
        Delivery::new(stored.envelope, Box::new(acker), count > 1, count)
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn cancel(&mut self) {
        // No more deliveries: `next` returns `None` from now on, and what was taken ahead goes
        // back to the queue for other consumers. Deliveries already handed out are settled as
        // usual.
        self.cancelled = true;
        self.give_back();
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
            let rx = match self.consumer.queue.pop_or_wait() {
                Ok(stored) => {
                    self.consumer.taken.fetch_add(1, Ordering::AcqRel);
                    return Some(Ok(self.deliver(stored)));
                }
                Err(rx) => rx,
            };
            let mut waiting = Waiting {
                queue: &self.consumer.queue,
                rx: Some(rx),
            };
            let handed = match waiting.rx.as_mut() {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            if let Some(stored) = handed {
                waiting.rx = None;
                self.consumer.taken.fetch_add(1, Ordering::AcqRel);
                return Some(Ok(self.deliver(stored)));
            }
            // The line was cleared without a message for us: take a place again.
        }
    }
}

/// A consumer's place in line. If it stops waiting (its `next` is dropped) just as a message
/// was handed to it, the message goes back to the head of the queue: never lost.
struct Waiting<'a> {
    queue: &'a Queue,
    rx: Option<oneshot::Receiver<Stored>>,
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

struct MemoryAcker {
    consumer: Arc<Consumer>,
    delivery_count: u32,
    /// Acked through `ack_now`: nothing more to settle.
    settled: bool,
}

impl MemoryAcker {
    fn requeue(self, envelope: Envelope) {
        if self.settled {
            return;
        }
        let stored = Stored {
            envelope,
            delivery_count: self.delivery_count,
        };
        self.consumer.settled(Some(stored));
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        self.ack_now().unwrap_or(Ok(()))
    }

    fn ack_now(&mut self) -> Option<Result<(), TransportError>> {
        // Settled once, whatever a caller does after: a second settle would free a slot the
        // queue never gave.
        if !std::mem::replace(&mut self.settled, true) {
            self.consumer.settled(None);
        }
        Some(Ok(()))
    }

    async fn nack(self: Box<Self>, envelope: Envelope) -> Result<(), TransportError> {
        self.requeue(envelope);
        Ok(())
    }

    fn abandon(self: Box<Self>, envelope: Envelope) {
        self.requeue(envelope);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bus_core::{EndpointTopology, Headers};

    use super::*;

    fn message(n: usize) -> Outgoing {
        Outgoing {
            destination: Destination::Endpoint("ep".into()),
            envelope: Envelope::from_bytes(
                Headers {
                    message_id: format!("m-{n}").into(),
                    message_type: "t".into(),
                    content_type: "application/json".into(),
                    ..Headers::default()
                },
                "{}",
            ),
            delay: None,
        }
    }

    async fn full_queue(capacity: usize, send_timeout: Duration) -> MemoryTransport {
        let t = MemoryTransport::new()
            .capacity(capacity)
            .send_timeout(send_timeout);
        t.declare(&Topology {
            endpoints: vec![EndpointTopology {
                name: "ep".into(),
                ..EndpointTopology::default()
            }],
        })
        .await
        .expect("declared");
        for n in 0..capacity {
            t.send(message(n)).await.expect("room");
        }
        t
    }

    /// A consumer of `ep` with this prefetch.
    async fn consumer(t: &MemoryTransport, prefetch: usize) -> Box<dyn Subscription> {
        t.subscribe("ep", SubscribeOptions { prefetch })
            .await
            .expect("subscribed")
    }

    /// Send message `n` to `ep` from a task of its own (it may have to wait for room).
    fn send_in_task(
        t: &MemoryTransport,
        n: usize,
    ) -> tokio::task::JoinHandle<Result<(), TransportError>> {
        let t = t.clone();
        tokio::spawn(async move { t.send(message(n)).await })
    }

    /// A producer blocked on a full queue gets in soon after one slot frees, although it would
    /// rather wait for several; and the bound holds throughout.
    #[tokio::test]
    async fn a_blocked_send_takes_a_single_freed_slot_well_within_its_timeout() {
        let t = full_queue(100, Duration::from_secs(10)).await;
        let mut sub = consumer(&t, 1).await;
        let producer = {
            let t = t.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                t.send(message(100)).await.map(|()| started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!producer.is_finished(), "no room yet: the send waits");
        let d = sub.next().await.expect("a delivery").expect("not an error");
        d.ack().await.expect("acked");
        let waited = producer.await.expect("producer").expect("sent");
        assert!(
            waited < Duration::from_secs(2),
            "one freed slot let the blocked send in, after {waited:?}"
        );
        assert_eq!(t.depth("ep"), Some(100), "the bound held");
    }

    fn event(n: usize) -> Outgoing {
        Outgoing {
            destination: Destination::Event("evt".into()),
            ..message(n)
        }
    }

    fn command_to(endpoint: &str, n: usize) -> Outgoing {
        Outgoing {
            destination: Destination::Endpoint(endpoint.into()),
            ..message(n)
        }
    }

    /// The no-wait paths: a command or an event goes in at once when there is room, and comes
    /// back whole (no queue served) when there is not; a ready delivery is taken and acked
    /// without a future.
    #[tokio::test]
    async fn the_no_wait_paths_take_only_what_needs_no_waiting() {
        let t = MemoryTransport::new().capacity(2);
        let ep = |name: &str, events: &[&str]| EndpointTopology {
            name: name.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            ..EndpointTopology::default()
        };
        t.declare(&Topology {
            endpoints: vec![ep("ep", &["evt"]), ep("other", &["evt"])],
        })
        .await
        .expect("declared");
        // Commands: room, then none.
        assert!(matches!(t.send_now(message(0)), Ok(Ok(()))));
        t.send_now(event(1)).expect("room in both").expect("taken");
        assert_eq!((t.depth("ep"), t.depth("other")), (Some(2), Some(1)));
        let back = t.send_now(message(2)).expect_err("ep is full");
        assert_eq!(back.envelope.headers.message_id, "m-2");
        // An event one of whose queues is full serves neither.
        let back = t.send_now(event(3)).expect_err("ep is full");
        assert_eq!(back.envelope.headers.message_id, "m-3");
        assert_eq!((t.depth("ep"), t.depth("other")), (Some(2), Some(1)));
        // An unknown endpoint is an error, not a message given back.
        assert!(matches!(
            t.send_now(command_to("nowhere", 4)),
            Ok(Err(TransportError::Unroutable(_)))
        ));
        // A ready delivery comes at once; acking it at once frees its slot.
        let mut sub = consumer(&t, 1).await;
        let d = sub.next_now().expect("one is ready");
        assert_eq!(d.envelope().headers.message_id, "m-0");
        assert!(sub.next_now().is_none(), "prefetch 1 is taken");
        d.ack().await.expect("acked");
        assert_eq!(t.depth("ep"), Some(1));
        let d = sub.next_now().expect("the event's copy");
        assert_eq!(d.envelope().headers.message_id, "m-1");
        d.ack().await.expect("acked");
        assert!(sub.next_now().is_none(), "nothing left");
        assert!(matches!(t.send_now(message(5)), Ok(Ok(()))));
    }

    /// A full queue of 4 with a consumer, and two producers blocked on it in turn (messages 4
    /// and 5).
    async fn two_in_line() -> (
        MemoryTransport,
        Box<dyn Subscription>,
        tokio::task::JoinHandle<Result<(), TransportError>>,
        tokio::task::JoinHandle<Result<(), TransportError>>,
    ) {
        let t = full_queue(4, Duration::from_secs(10)).await;
        let sub = consumer(&t, 4).await;
        let first = send_in_task(&t, 4);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = send_in_task(&t, 5);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!first.is_finished() && !second.is_finished(), "both wait");
        (t, sub, first, second)
    }

    /// Blocked producers are served in the order they blocked, and a freed slot is theirs: a
    /// no-wait send that comes later does not take it.
    #[tokio::test]
    async fn blocked_producers_get_freed_slots_in_order_before_anyone_else() {
        let (t, mut sub, first, second) = two_in_line().await;

        sub.next_now().expect("ready").ack().await.expect("acked");
        assert!(
            t.send_now(message(6)).is_err(),
            "the freed slot is the first producer's, not a newcomer's"
        );
        first.await.expect("first").expect("sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "the second still waits");

        sub.next_now().expect("ready").ack().await.expect("acked");
        second.await.expect("second").expect("sent");
        assert_eq!(t.depth("ep"), Some(4), "the bound held");
        let ids: Vec<String> = t
            .browse("ep")
            .iter()
            .map(|e| e.headers.message_id.to_string())
            .collect();
        assert_eq!(ids, ["m-4", "m-5"], "in the order they blocked");
    }

    /// A blocked producer that gives up leaves the line: the next one is served, and no slot is
    /// lost to the one that left.
    #[tokio::test]
    async fn a_producer_that_gives_up_leaves_the_line_without_taking_a_slot() {
        let (t, mut sub, quitter, next) = two_in_line().await;
        quitter.abort();
        let _ = quitter.await;
        sub.next_now().expect("ready").ack().await.expect("acked");
        next.await.expect("next").expect("sent");
        sub.next_now().expect("ready").ack().await.expect("acked");
        assert!(matches!(t.send_now(message(6)), Ok(Ok(()))), "a slot left");
        assert_eq!(t.depth("ep"), Some(4), "no slot lost or double-counted");
    }

    /// Several acks in a moment serve a blocked producer's refill: it takes one slot and leaves
    /// the rest free, and the bound still holds.
    #[tokio::test]
    async fn a_refill_takes_one_slot_and_leaves_the_others_free() {
        let t = full_queue(16, Duration::from_secs(10)).await; // refill: 2 slots
        let mut sub = consumer(&t, 16).await;
        let producer = send_in_task(&t, 16);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!producer.is_finished(), "no room yet: the send waits");
        // Two acks back to back, within the producer's refill wait.
        for _ in 0..2 {
            let d = sub.next_now().expect("ready");
            d.ack().await.expect("acked");
        }
        producer.await.expect("producer").expect("sent");
        assert_eq!(t.depth("ep"), Some(15), "14 left, plus the new one");
        assert!(
            matches!(t.send_now(message(17)), Ok(Ok(()))),
            "one slot left free"
        );
        assert!(t.send_now(message(18)).is_err(), "and only one");
        assert_eq!(t.depth("ep"), Some(16));
    }

    /// An event whose queues cannot all take it in time gets into none of them: a retry by the
    /// caller then duplicates nothing.
    #[tokio::test]
    async fn an_event_that_times_out_on_one_queue_is_in_none() {
        let t = MemoryTransport::new()
            .capacity(2)
            .send_timeout(Duration::from_millis(200));
        let ep = |name: &str| EndpointTopology {
            name: name.into(),
            events: vec!["evt".into()],
            ..EndpointTopology::default()
        };
        t.declare(&Topology {
            endpoints: vec![ep("a"), ep("b")],
        })
        .await
        .expect("declared");
        // `b` fills up; `a` keeps room.
        for n in 0..2 {
            t.send(command_to("b", n)).await.expect("room in b");
        }
        let err = t.send(event(2)).await.expect_err("b stays full");
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
        assert_eq!((t.depth("a"), t.depth("b")), (Some(0), Some(2)));
        // And `a`'s slots were given back: it still takes two.
        for n in 3..5 {
            t.send(command_to("a", n)).await.expect("room in a");
        }
    }

    /// With no slot freed, the send fails with a timeout error after its timeout, and the queue
    /// keeps what it had.
    #[tokio::test]
    async fn a_send_to_a_queue_that_stays_full_times_out() {
        let t = full_queue(20, Duration::from_millis(200)).await;
        let started = Instant::now();
        let err = t.send(message(20)).await.expect_err("no room");
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(t.depth("ep"), Some(20));
    }
}
