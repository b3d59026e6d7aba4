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
//!   dropped unsettled (treated as a nack). Prefetch bounds unsettled deliveries.
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
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bus_core::{
    async_trait, Acker, Delivery, Destination, Envelope, Outgoing, SubscribeOptions, Subscription,
    Topology, Transport, TransportError,
};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, SemaphorePermit, TryAcquireError};

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

    /// Messages in a queue (ready plus unacked). `None` if it does not exist.
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
            Some(q) => q.lock().ready.drain(..).map(|m| m.envelope).collect(),
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
                    state: Mutex::new(QueueState::default()),
                    room: bounded.then(|| Arc::new(Semaphore::new(self.inner.capacity))),
                    refill: refill_for(self.inner.capacity),
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

    async fn enqueue(&self, queue: &Queue, envelope: Envelope) -> Result<(), TransportError> {
        let deadline = tokio::time::Instant::now() + self.inner.send_timeout;
        if let Some(slot) = self.reserve(queue, deadline).await? {
            // The slot is given back when the message is acked.
            slot.forget();
        }
        queue.push(Stored::fresh(envelope), false);
        Ok(())
    }

    /// A slot in `queue` for one message (`None` for an unbounded queue), waiting for room
    /// until `deadline`. Dropping the slot gives it back.
    async fn reserve<'q>(
        &self,
        queue: &'q Queue,
        deadline: tokio::time::Instant,
    ) -> Result<Option<SemaphorePermit<'q>>, TransportError> {
        let Some(room) = &queue.room else {
            return Ok(None);
        };
        // Room at once is the common case: no timer for it.
        let slot = match room.try_acquire() {
            Ok(slot) => slot,
            Err(TryAcquireError::Closed) => return Err(TransportError::Closed),
            Err(TryAcquireError::NoPermits) => {
                // Full: wait a moment for a few slots, not just one, so a producer that
                // outruns its consumers is woken once per `refill` acks rather than on every
                // ack (a cross-thread wake-up each, which cost more than the ack). A slow
                // consumer does not free that many in a moment: then wait for one slot, until
                // the deadline. The bound is unchanged: slots beyond this message's are given
                // back at once. Producers blocked on one queue are served in order to within
                // that moment, not strictly.
                let refill_wait = tokio::time::Instant::now() + REFILL_WAIT;
                match tokio::time::timeout_at(
                    refill_wait.min(deadline),
                    room.acquire_many(queue.refill),
                )
                .await
                {
                    Ok(Ok(mut slots)) => {
                        let mine = slots.split(1).expect("refill is at least 1");
                        drop(slots);
                        mine
                    }
                    Ok(Err(_)) => return Err(TransportError::Closed),
                    Err(_) => tokio::time::timeout_at(deadline, room.acquire())
                        .await
                        .map_err(|_| TransportError::Timeout {
                            operation: "waiting for room in a full in-memory queue",
                            after: self.inner.send_timeout,
                        })?
                        .map_err(|_| TransportError::Closed)?,
                }
            }
        };
        Ok(Some(slot))
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
        let mut slots = Vec::with_capacity(targets.len());
        for q in targets {
            if let Some(room) = &q.room {
                match room.try_acquire() {
                    Ok(permit) => slots.push(permit),
                    Err(TryAcquireError::Closed) => return Ok(Err(TransportError::Closed)),
                    // Taken slots go back as `slots` drops.
                    Err(TryAcquireError::NoPermits) => {
                        return Err(Outgoing {
                            destination: Destination::Event(name),
                            envelope,
                            delay: None,
                        })
                    }
                }
            }
        }
        // Each slot is given back when its copy is acked.
        slots.into_iter().for_each(|permit| permit.forget());
        push_copies(targets, envelope);
        Ok(Ok(()))
    }
}

/// A copy of `envelope` to each of `targets` (the envelope itself to the last), their slots
/// already taken.
fn push_copies(targets: &[Arc<Queue>], envelope: Envelope) {
    if let Some((last, rest)) = targets.split_last() {
        for q in rest {
            q.push(Stored::fresh(envelope.clone()), false);
        }
        last.push(Stored::fresh(envelope), false);
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
        let Some(q) = self.queue(&e) else {
            return Ok(Err(TransportError::Unroutable(e)));
        };
        if let Some(room) = &q.room {
            match room.try_acquire() {
                // The slot is given back when the message is acked.
                Ok(permit) => permit.forget(),
                Err(TryAcquireError::Closed) => return Ok(Err(TransportError::Closed)),
                Err(TryAcquireError::NoPermits) => {
                    return Err(Outgoing {
                        destination: Destination::Endpoint(e),
                        envelope,
                        delay: None,
                    })
                }
            }
        }
        q.push(Stored::fresh(envelope), false);
        Ok(Ok(()))
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        if let (Destination::Endpoint(e), None) =
            (&message.destination, message.delay.filter(|d| !d.is_zero()))
        {
            // One queue, now: no list of targets, no copy of the envelope.
            let q = self
                .queue(e)
                .ok_or_else(|| TransportError::Unroutable(e.clone()))?;
            return self.enqueue(&q, message.envelope).await;
        }
        let targets = self.targets(&message.destination)?;
        if let Some(delay) = message.delay.filter(|d| !d.is_zero()) {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                for q in targets {
                    if let Err(error) = this.enqueue(&q, message.envelope.clone()).await {
                        tracing::error!(queue = %q.name, %error, "delayed message could not be enqueued");
                    }
                }
            });
            return Ok(());
        }
        // Room in every queue first, then a copy to each: an event that cannot get into one
        // queue in time gets into none (its slots go back as `slots` drops), so a caller's
        // retry does not duplicate it where it did get in.
        let deadline = tokio::time::Instant::now() + self.inner.send_timeout;
        let mut slots = Vec::with_capacity(targets.len());
        for q in &targets {
            slots.push(self.reserve(q, deadline).await?);
        }
        // Each slot is given back when its copy is acked.
        slots.into_iter().flatten().for_each(|slot| slot.forget());
        push_copies(&targets, message.envelope);
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
            queue,
            prefetch: Arc::new(Semaphore::new(options.prefetch.max(1))),
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
    unacked: usize,
    /// Consumers waiting for a message, first come first served.
    waiters: VecDeque<oneshot::Sender<Stored>>,
}

struct Queue {
    name: String,
    state: Mutex<QueueState>,
    /// Free slots; `None` for unbounded (error) queues.
    room: Option<Arc<Semaphore>>,
    /// How many free slots a producer blocked on a full queue waits for before it goes on.
    refill: u32,
}

/// How long a producer blocked on a full queue waits for `refill` slots before it settles for one.
const REFILL_WAIT: Duration = Duration::from_millis(1);

/// Slots a blocked producer waits for: an eighth of the bound, at most 64, at least 1.
fn refill_for(capacity: usize) -> u32 {
    u32::try_from((capacity / 8).clamp(1, 64)).unwrap_or(1)
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand a message to the consumer waiting longest, or queue it if none waits.
    ///
    /// Handing it over (rather than waking a consumer to come and take it) keeps competing
    /// consumers fair: a consumer already running would otherwise win nearly every race against
    /// one just woken, and could starve it.
    fn push(&self, mut stored: Stored, front: bool) {
        let mut state = self.lock();
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

    /// The oldest ready message, counted as unacked, if there is one.
    fn pop_ready(&self) -> Option<Stored> {
        let mut state = self.lock();
        let stored = state.ready.pop_front()?;
        state.unacked += 1;
        Some(stored)
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

    fn settle(&self, requeue: Option<Stored>) {
        {
            let mut state = self.lock();
            state.unacked -= 1;
        }
        match requeue {
            Some(stored) => self.push(stored, true),
            None => {
                if let Some(room) = &self.room {
                    room.add_permits(1);
                }
            }
        }
    }
}

struct MemorySubscription {
    queue: Arc<Queue>,
    prefetch: Arc<Semaphore>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn cancel(&mut self) {
        // No more deliveries: `next` returns `None` from now on. Deliveries already handed out
        // keep their permits and are settled as usual.
        self.prefetch.close();
    }

    fn next_now(&mut self) -> Option<Delivery> {
        let permit = self.prefetch.clone().try_acquire_owned().ok()?;
        let stored = self.queue.pop_ready()?;
        Some(self.deliver(stored, permit))
    }

    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        let permit = self.prefetch.clone().acquire_owned().await.ok()?;
        let stored = loop {
            let rx = match self.queue.pop_or_wait() {
                Ok(stored) => break stored,
                Err(rx) => rx,
            };
            let mut waiting = Waiting {
                queue: &self.queue,
                rx: Some(rx),
            };
            let handed = match waiting.rx.as_mut() {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            if let Some(stored) = handed {
                waiting.rx = None;
                break stored;
            }
            // The line was cleared without a message for us: take a place again.
        };
        Some(Ok(self.deliver(stored, permit)))
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
                self.queue.lock().unacked -= 1;
                self.queue.push(stored, true);
            }
        }
    }
}

impl MemorySubscription {
    fn deliver(&self, mut stored: Stored, permit: OwnedSemaphorePermit) -> Delivery {
        stored.delivery_count += 1;
        let count = stored.delivery_count;
        let acker = MemoryAcker {
            queue: self.queue.clone(),
            delivery_count: count,
            settled: false,
            _permit: permit,
        };
        Delivery::new(stored.envelope, Box::new(acker), count > 1, count)
    }
}

struct MemoryAcker {
    queue: Arc<Queue>,
    delivery_count: u32,
    /// Acked through `ack_now`: nothing more to settle.
    settled: bool,
    _permit: OwnedSemaphorePermit,
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
        self.queue.settle(Some(stored));
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
            self.queue.settle(None);
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
                    message_id: format!("m-{n}"),
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

    /// A producer blocked on a full queue gets in soon after one slot frees, although it would
    /// rather wait for several; and the bound holds throughout.
    #[tokio::test]
    async fn a_blocked_send_takes_a_single_freed_slot_well_within_its_timeout() {
        let t = full_queue(100, Duration::from_secs(10)).await;
        let mut sub = t
            .subscribe("ep", SubscribeOptions { prefetch: 1 })
            .await
            .expect("subscribed");
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
        let mut sub = t
            .subscribe("ep", SubscribeOptions { prefetch: 1 })
            .await
            .expect("subscribed");
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

    /// Several acks in a moment serve a blocked producer's refill: it takes one slot and leaves
    /// the rest free, and the bound still holds.
    #[tokio::test]
    async fn a_refill_takes_one_slot_and_leaves_the_others_free() {
        let t = full_queue(16, Duration::from_secs(10)).await; // refill: 2 slots
        let mut sub = t
            .subscribe("ep", SubscribeOptions { prefetch: 16 })
            .await
            .expect("subscribed");
        let producer = {
            let t = t.clone();
            tokio::spawn(async move { t.send(message(16)).await })
        };
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
