//! The transport itself: endpoint queues and event bindings by name, the ways a message goes
//! into them (now, after waiting for room, or after a delay), and subscriptions to them.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bus_core::{
    async_trait, Declared, Destination, Envelope, Outgoing, QueueKind, SubscribeOptions,
    Subscription, Topology, Transport, TransportError,
};
use tokio::time::Instant;

use crate::queue::{Queue, Reserved, Stored};
use crate::subscription::MemorySubscription;

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
type NameMap<V> = rustc_hash::FxHashMap<String, V>;

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
        Some(self.queue(queue)?.depth())
    }

    /// Ready messages of an endpoint's error queue, oldest first, without removing them.
    pub fn error_queue(&self, endpoint: &str) -> Vec<Envelope> {
        self.browse(&error_queue_name(endpoint))
    }

    /// Ready messages of a queue, oldest first, without removing them.
    pub fn browse(&self, queue: &str) -> Vec<Envelope> {
        match self.queue(queue) {
            Some(q) => q.browse(),
            None => Vec::new(),
        }
    }

    /// Remove and return every ready message of an endpoint's error queue (e.g. to replay them).
    pub fn drain_error_queue(&self, endpoint: &str) -> Vec<Envelope> {
        match self.queue(&error_queue_name(endpoint)) {
            Some(q) => q.drain_ready(),
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
            .or_insert_with(|| Arc::new(Queue::new(name, bounded.then_some(self.inner.capacity))))
            .clone()
    }

    fn targets(&self, destination: &Destination) -> Result<Vec<Arc<Queue>>, TransportError> {
        match destination {
            Destination::Endpoint(e) => self.queue(e).map(|q| vec![q]).ok_or_else(|| unroutable(e)),
            Destination::ErrorQueue(e) => Ok(vec![self.declare_queue(&error_queue_name(e), false)]),
            Destination::Event(name) => Ok(self
                .inner
                .bindings
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&**name)
                .cloned()
                .unwrap_or_default()),
        }
    }

    /// A slot in `queue` for one message, waiting for room until `deadline` (see
    /// [`Queue::reserve`]); past it, a timeout error. Dropping the slot unused gives it back.
    async fn reserve<'q>(
        &self,
        queue: &'q Queue,
        deadline: Instant,
    ) -> Result<Reserved<'q>, TransportError> {
        queue.reserve(deadline).await.ok_or_else(|| {
            TransportError::timeout(
                "waiting for room in a full in-memory queue",
                self.inner.send_timeout,
            )
        })
    }

    /// An event to every bound queue at once, if each has room; otherwise given back whole,
    /// with no queue served, for `send` to wait for room.
    fn publish_now(
        &self,
        name: Arc<str>,
        envelope: Envelope,
    ) -> Result<Result<(), TransportError>, Outgoing> {
        let bindings = self
            .inner
            .bindings
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let targets = bindings.get(&*name).map(Vec::as_slice).unwrap_or_default();
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

/// No queue for `endpoint`: nothing has declared it on this transport.
fn unroutable(endpoint: &str) -> TransportError {
    TransportError::Unroutable(format!("endpoint `{endpoint}`"))
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

    async fn browse(
        &self,
        endpoint: &str,
        queue: QueueKind,
        limit: usize,
    ) -> Result<Vec<Envelope>, TransportError> {
        let mut found = match queue {
            QueueKind::Input => MemoryTransport::browse(self, endpoint),
            QueueKind::Errors => self.error_queue(endpoint),
        };
        found.truncate(limit);
        Ok(found)
    }

    async fn teardown(
        &self,
        topology: &Topology,
        dry_run: bool,
    ) -> Result<Vec<Declared>, TransportError> {
        let mut queues = self.inner.queues.write().unwrap_or_else(|p| p.into_inner());
        let mut bindings = self
            .inner
            .bindings
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut removed = Vec::new();
        for ep in &topology.endpoints {
            let input = queues.get(ep.name.as_str()).cloned();
            for name in [ep.name.clone(), error_queue_name(&ep.name)] {
                if queues.contains_key(name.as_str()) {
                    if !dry_run {
                        queues.remove(name.as_str());
                    }
                    removed.push(Declared {
                        kind: "queue",
                        name,
                    });
                }
            }
            for event in &ep.events {
                let Some(bound) = bindings.get_mut(event.as_str()) else {
                    continue;
                };
                let Some(queue) = input
                    .as_ref()
                    .filter(|q| bound.iter().any(|b| Arc::ptr_eq(b, q)))
                else {
                    continue;
                };
                removed.push(Declared {
                    kind: "binding",
                    name: format!("{event} -> {}", ep.name),
                });
                if !dry_run {
                    bound.retain(|q| !Arc::ptr_eq(q, queue));
                    if bound.is_empty() {
                        bindings.remove(event.as_str());
                    }
                }
            }
        }
        removed.sort();
        removed.dedup();
        Ok(removed)
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
            queues.get(&*e).map(|q| q.try_push(Stored::fresh(envelope)))
        };
        match pushed {
            None => Ok(Err(unroutable(&e))),
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
            let q = self.queue(e).ok_or_else(|| unroutable(e))?;
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
        let queue = self.queue(endpoint).ok_or_else(|| unroutable(endpoint))?;
        Ok(Box::new(MemorySubscription::new(queue, options.prefetch)))
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
