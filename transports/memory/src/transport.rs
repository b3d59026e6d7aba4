//! The transport itself: endpoint queues and event bindings by name, the ways a message goes
//! into them (now, after waiting for room, or after a delay), and subscriptions to them.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bus_core::{
    async_trait, Declared, Delivery, Destination, EndpointInfo, Envelope, MessageId, Outgoing,
    QueueKind, ReplyChannel, SubscribeOptions, Subscription, Topology, Transport, TransportError,
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
    /// Scheduled messages waiting for their time, by message id, to cancel them.
    scheduled: Mutex<NameMap<tokio::task::AbortHandle>>,
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
                scheduled: Mutex::new(NameMap::default()),
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
            Some(q) => q.browse(usize::MAX),
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
            // A reply address that is gone: its caller went away, and the reply with it.
            Destination::Reply(address) => Ok(self
                .queue(&reply_queue_name(address))
                .map(|q| vec![q])
                .unwrap_or_default()),
        }
    }

    /// Hold `message` until `at`, then send it as if sent then (an event reaches the queues
    /// bound at that time). It lives in this process only: a restart forgets it.
    fn schedule(&self, message: Outgoing, at: SystemTime) {
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let id = message.envelope.headers.message_id.to_string();
        let this = self.clone();
        let key = id.clone();
        let mut scheduled = self
            .inner
            .scheduled
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // Whoever takes it out of the map wins: this task, or a cancel.
            let mine = this
                .inner
                .scheduled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            if mine.is_none() {
                return;
            }
            let due = Outgoing {
                deliver_at: None,
                ..message
            };
            let destination = due.destination.to_string();
            if let Err(error) = this.send(due).await {
                tracing::error!(%destination, %error, "a scheduled message fell due but could not be delivered");
            }
        });
        scheduled.insert(id, task.abort_handle());
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
                    deliver_at: None,
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
                        deliver_at: None,
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

/// The queue behind a reply address.
fn reply_queue_name(address: &str) -> String {
    format!("reply:{address}")
}

/// A reply channel's subscription, which takes its queue away when it goes.
struct ReplySubscription {
    inner: MemorySubscription,
    transport: MemoryTransport,
    queue: String,
}

#[async_trait]
impl Subscription for ReplySubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        self.inner.next().await
    }

    fn next_now(&mut self) -> Option<Delivery> {
        self.inner.next_now()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

impl Drop for ReplySubscription {
    fn drop(&mut self) {
        self.transport
            .inner
            .queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.queue);
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

    async fn browse(
        &self,
        endpoint: &str,
        queue: QueueKind,
        limit: usize,
    ) -> Result<Vec<Envelope>, TransportError> {
        let name = match queue {
            QueueKind::Input => endpoint.to_string(),
            QueueKind::Errors => error_queue_name(endpoint),
        };
        Ok(self.queue(&name).map_or_else(Vec::new, |q| q.browse(limit)))
    }

    /// Takes ready messages out of the queue: for each id listed, the oldest ready message
    /// with that id (an id listed twice removes two). Messages a consumer holds (taken ahead or
    /// being handled) are not looked at, as a broker's would not be. Their room goes to
    /// producers waiting for it. A queue that does not exist is [`TransportError::Unroutable`].
    async fn remove(
        &self,
        endpoint: &str,
        queue: QueueKind,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, TransportError> {
        let name = match queue {
            QueueKind::Input => endpoint.to_string(),
            QueueKind::Errors => error_queue_name(endpoint),
        };
        let q = self.queue(&name).ok_or_else(|| match queue {
            QueueKind::Input => unroutable(endpoint),
            QueueKind::Errors => {
                TransportError::Unroutable(Destination::ErrorQueue(endpoint.into()).to_string())
            }
        })?;
        Ok(q.remove(ids))
    }

    /// Every declared endpoint, with all three figures: its depth (ready messages, and those
    /// taken by consumers and not settled), its subscriptions not cancelled, and the messages
    /// of its error queue.
    async fn endpoints(&self) -> Result<Vec<EndpointInfo>, TransportError> {
        let queues = self.inner.queues.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<EndpointInfo> = queues
            .values()
            .filter(|q| q.bounded())
            .map(|q| {
                let mut info = EndpointInfo::named(q.name.clone());
                info.depth = Some(q.depth() as u64);
                info.consumers = Some(q.consumers() as u64);
                let errors = queues.get(&error_queue_name(&q.name));
                info.error_depth = Some(errors.map_or(0, |e| e.depth() as u64));
                info
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
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
            deliver_at: None,
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
                    deliver_at: None,
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
                deliver_at: None,
            }),
        }
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.inner.send_timeout;
        if let Some(at) = message.scheduled_after(SystemTime::now()) {
            // Unroutable now is unroutable: a command to an endpoint nobody declared.
            if let Destination::Endpoint(e) = &message.destination {
                self.queue(e).ok_or_else(|| unroutable(e))?;
            }
            self.schedule(message, at);
            return Ok(());
        }
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

    /// A queue of this process named after the instance; it goes when the channel does.
    async fn open_replies(&self, instance: &str) -> Result<ReplyChannel, TransportError> {
        let queue = reply_queue_name(instance);
        let q = self.declare_queue(&queue, false);
        Ok(ReplyChannel {
            address: instance.to_string(),
            replies: Box::new(ReplySubscription {
                inner: MemorySubscription::new(q, 1_000),
                transport: self.clone(),
                queue,
            }),
        })
    }

    /// Stops the timer of a scheduled message (which lives in this process only).
    async fn cancel_scheduled(&self, id: &MessageId) -> Result<bool, TransportError> {
        let task = self
            .inner
            .scheduled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id.as_str());
        Ok(match task {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        })
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
mod tests;
