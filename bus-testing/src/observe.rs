//! How the harness sees its bus, through the bus's public extension points only: a transport
//! wrapped around the real one sees every outgoing message and every delivery, and a layer
//! sees every handler attempt and its outcome. Both write one log, which the waits watch.
//!
//! Besides the log, the harness keeps the messages still to be handled: each copy of a message
//! accepted for a hosted endpoint (a command to it, an event it subscribes to) counts until an
//! attempt at it succeeds or it reaches the error queue. A delayed retry changes nothing (the
//! same message, still to be handled). That count, and the attempts running, tell
//! `wait_until_quiet` that work remains even while nothing happens (a retry's delay).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bus_core::{
    async_trait, header, Body, Declared, Delivery, Destination, EndpointInfo, Envelope, Layer,
    LayerFuture, MessageContext, MessageId, Next, Outgoing, QueueKind, ReplyChannel,
    SubscribeOptions, Subscription, Topology, Transport, TransportError, TransportLimits,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::records::{Activity, AttemptFailure, AttemptRecord, PendingMessage, Seen};

/// A message at an endpoint: the endpoint's name and the message id.
type Key = (String, String);

/// The log and what waits on it.
pub(crate) struct Shared {
    log: Mutex<Log>,
    changed: Notify,
}

struct Log {
    activity: Vec<Activity>,
    /// The last delivery of each message at each endpoint, for the attempts' records (a layer
    /// sees the headers only).
    delivered: HashMap<Key, Envelope>,
    /// Copies still to be handled, with their wire name.
    pending: HashMap<Key, (u32, String)>,
    in_flight: usize,
    last_change: Instant,
    hosted: HashSet<String>,
    /// The hosted endpoints subscribed to each event.
    subscribers: HashMap<String, Vec<String>>,
    /// Scheduled messages not yet seen again: a broker hands each back to the bus when it is
    /// due, which sends it on; that second send is the same message, counted once.
    scheduled: HashSet<String>,
}

impl Log {
    /// One copy of the message at `key` is done with.
    fn settle(&mut self, key: &Key) {
        if let Some((copies, _)) = self.pending.get_mut(key) {
            *copies -= 1;
            if *copies == 0 {
                self.pending.remove(key);
                self.delivered.remove(key);
            }
        }
    }
}

/// A send on its way: what it will be recorded as, and the copies counted for it ahead of the
/// transport (a consumer may finish one before the send returns).
pub(crate) struct Ticket {
    activity: Activity,
    counted: Vec<Key>,
    settles: Option<Key>,
    /// The id of a scheduled message the broker handed back when due: recorded and counted
    /// when it was scheduled, so not again.
    forwarded: Option<String>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Shared {
            log: Mutex::new(Log {
                activity: Vec::new(),
                delivered: HashMap::new(),
                pending: HashMap::new(),
                in_flight: 0,
                last_change: Instant::now(),
                hosted: HashSet::new(),
                subscribers: HashMap::new(),
                scheduled: HashSet::new(),
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A panic elsewhere while it was held leaves a log that is still worth reading.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a change and wake the waits.
    fn changed(&self, mut log: MutexGuard<'_, Log>) {
        log.last_change = Instant::now();
        drop(log);
        self.changed.notify_waiters();
    }

    /// Which endpoints this bus hosts and which events they subscribe to.
    pub(crate) fn set_topology(&self, topology: &Topology) {
        let mut log = self.lock();
        for ep in &topology.endpoints {
            log.hosted.insert(ep.name.clone());
            for event in &ep.events {
                log.subscribers
                    .entry(event.clone())
                    .or_default()
                    .push(ep.name.clone());
            }
        }
    }

    /// Before a message goes to the transport.
    pub(crate) fn before_send(&self, out: &Outgoing) -> Ticket {
        let envelope = out.envelope.clone();
        let id = envelope.headers.message_id.to_string();
        let mut log = self.lock();
        let mut counted = Vec::new();
        let mut settles = None;
        let scheduled = out.scheduled_after(std::time::SystemTime::now()).is_some();
        let forwarded = !scheduled && log.scheduled.remove(&id);
        let id_again = id.clone();
        if scheduled {
            log.scheduled.insert(id.clone());
        }
        let activity = match &out.destination {
            Destination::Endpoint(endpoint) => {
                if envelope.headers.get(header::DELAYED_RETRIES).is_some() {
                    Activity::Retried {
                        endpoint: endpoint.to_string(),
                        delay: out.delay,
                        envelope,
                    }
                } else {
                    if log.hosted.contains(&**endpoint) {
                        counted.push((endpoint.to_string(), id));
                    }
                    Activity::Sent {
                        endpoint: endpoint.to_string(),
                        envelope,
                    }
                }
            }
            Destination::Event(event) => {
                if let Some(endpoints) = log.subscribers.get(&**event) {
                    counted.extend(endpoints.iter().map(|e| (e.clone(), id.clone())));
                }
                Activity::Published { envelope }
            }
            Destination::Reply(_) => Activity::Replied { envelope },
            Destination::ErrorQueue(endpoint) => {
                settles = Some((endpoint.to_string(), id));
                Activity::Failed {
                    endpoint: endpoint.to_string(),
                    envelope,
                }
            }
        };
        if forwarded {
            counted.clear();
        }
        let message_type = activity.envelope().headers.message_type.to_string();
        for key in &counted {
            log.pending
                .entry(key.clone())
                .or_insert_with(|| (0, message_type.clone()))
                .0 += 1;
        }
        Ticket {
            activity,
            counted,
            settles,
            forwarded: forwarded.then_some(id_again),
        }
    }

    /// After the transport took the message (`accepted`) or refused it.
    pub(crate) fn after_send(&self, ticket: Ticket, accepted: bool) {
        let mut log = self.lock();
        if accepted {
            if let Some(key) = &ticket.settles {
                log.settle(key);
            }
            if ticket.forwarded.is_none() {
                log.activity.push(ticket.activity);
            }
        } else {
            for key in &ticket.counted {
                log.settle(key);
            }
            if let Some(id) = ticket.forwarded {
                log.scheduled.insert(id);
            }
        }
        self.changed(log);
    }

    /// The transport gave the message back untouched: as if it had never been sent.
    fn cancel(&self, ticket: Ticket) {
        let mut log = self.lock();
        for key in &ticket.counted {
            log.settle(key);
        }
        if let Some(id) = ticket.forwarded {
            log.scheduled.insert(id);
        }
    }

    /// An endpoint's subscription handed out a delivery.
    fn delivered(&self, endpoint: &str, envelope: &Envelope) {
        let mut log = self.lock();
        let key = (
            endpoint.to_string(),
            envelope.headers.message_id.to_string(),
        );
        log.delivered.insert(key, envelope.clone());
        log.last_change = Instant::now();
    }

    /// A handler attempt begins; it ends when the guard drops.
    fn attempt_started(self: &Arc<Self>) -> InFlight {
        let mut log = self.lock();
        log.in_flight += 1;
        self.changed(log);
        InFlight(self.clone())
    }

    fn attempt_finished(&self, ctx: &MessageContext, outcome: Result<(), AttemptFailure>) {
        let mut log = self.lock();
        let key = (ctx.endpoint().to_string(), ctx.message_id().to_string());
        let envelope = log
            .delivered
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Envelope {
                headers: Arc::new(ctx.headers().clone()),
                body: Body::Bytes(Default::default()),
            });
        let handled = outcome.is_ok();
        log.activity.push(Activity::Attempted(AttemptRecord {
            endpoint: key.0.clone(),
            attempt: ctx.attempt(),
            envelope,
            outcome,
        }));
        if handled {
            log.settle(&key);
        }
        self.changed(log);
    }

    /// Everything seen so far.
    pub(crate) fn activity(&self) -> Vec<Activity> {
        self.lock().activity.clone()
    }

    /// Run `f` over the activity without copying it.
    pub(crate) fn with_activity<T>(&self, f: impl FnOnce(&[Activity]) -> T) -> T {
        f(&self.lock().activity)
    }

    /// The summary a timed-out wait reports.
    pub(crate) fn seen(&self) -> Seen {
        let log = self.lock();
        let mut pending: Vec<PendingMessage> = log
            .pending
            .iter()
            .map(|((endpoint, id), (_, message_type))| PendingMessage {
                endpoint: endpoint.clone(),
                message_type: message_type.clone(),
                message_id: id.clone(),
            })
            .collect();
        pending.sort_by(|a, b| (&a.endpoint, &a.message_id).cmp(&(&b.endpoint, &b.message_id)));
        Seen {
            activity: log.activity.clone(),
            in_flight: log.in_flight,
            pending,
        }
    }

    /// Whether work remains (attempts running, messages to handle), and when the log last
    /// changed.
    pub(crate) fn busy(&self) -> (bool, Instant) {
        let log = self.lock();
        (
            log.in_flight > 0 || !log.pending.is_empty(),
            log.last_change,
        )
    }

    /// Completes at the next change; enable it before checking, so no change is missed.
    pub(crate) fn change(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// An attempt running; dropping it (at the attempt's end, or when a shutdown abandons it)
/// ends it.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut log = self.0.lock();
        log.in_flight -= 1;
        self.0.changed(log);
    }
}

/// The layer that records every attempt. Added first, so it runs outside the layers the test
/// adds and sees what they refuse.
pub(crate) struct Observer(pub(crate) Arc<Shared>);

impl Layer for Observer {
    fn call<'a>(&'a self, ctx: &'a MessageContext, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            let _running = self.0.attempt_started();
            match CatchUnwind(Box::pin(next.run(ctx))).await {
                Ok(outcome) => {
                    let recorded = outcome.as_ref().map_err(AttemptFailure::from).copied();
                    self.0.attempt_finished(ctx, recorded);
                    outcome
                }
                // A layer inside this one panicked: the pipeline turns that into a failed
                // attempt, which is recorded here as such before it goes on its way.
                Err(panic) => {
                    self.0
                        .attempt_finished(ctx, Err(AttemptFailure::panic(panic.as_ref())));
                    std::panic::resume_unwind(panic)
                }
            }
        })
    }

    fn name(&self) -> &str {
        "bus-testing"
    }
}

/// A future whose panic is returned, not unwound.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// The real transport, with every message in and out recorded.
pub(crate) struct Recording {
    pub(crate) inner: Arc<dyn Transport>,
    pub(crate) shared: Arc<Shared>,
}

#[async_trait]
impl Transport for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn carries_typed_messages(&self) -> bool {
        self.inner.carries_typed_messages()
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        self.inner.declare(topology).await
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        let ticket = self.shared.before_send(&message);
        let sent = self.inner.send(message).await;
        self.shared.after_send(ticket, sent.is_ok());
        sent
    }

    fn send_now(&self, message: Outgoing) -> Result<Result<(), TransportError>, Outgoing> {
        let ticket = self.shared.before_send(&message);
        match self.inner.send_now(message) {
            Ok(sent) => {
                self.shared.after_send(ticket, sent.is_ok());
                Ok(sent)
            }
            Err(message) => {
                self.shared.cancel(ticket);
                Err(message)
            }
        }
    }

    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<(), TransportError> {
        let tickets: Vec<Ticket> = messages
            .iter()
            .map(|m| self.shared.before_send(m))
            .collect();
        let sent = self.inner.send_batch(messages).await;
        for ticket in tickets {
            self.shared.after_send(ticket, sent.is_ok());
        }
        sent
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let inner = self.inner.subscribe(endpoint, options).await?;
        Ok(Box::new(RecordingSubscription {
            inner,
            endpoint: endpoint.to_string(),
            shared: self.shared.clone(),
        }))
    }

    fn limits(&self) -> TransportLimits {
        self.inner.limits()
    }

    async fn browse(
        &self,
        endpoint: &str,
        queue: QueueKind,
        limit: usize,
    ) -> Result<Vec<Envelope>, TransportError> {
        self.inner.browse(endpoint, queue, limit).await
    }

    async fn teardown(
        &self,
        topology: &Topology,
        dry_run: bool,
    ) -> Result<Vec<Declared>, TransportError> {
        self.inner.teardown(topology, dry_run).await
    }

    async fn remove(
        &self,
        endpoint: &str,
        queue: QueueKind,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, TransportError> {
        self.inner.remove(endpoint, queue, ids).await
    }

    async fn endpoints(&self) -> Result<Vec<EndpointInfo>, TransportError> {
        self.inner.endpoints().await
    }

    async fn open_replies(&self, instance: &str) -> Result<ReplyChannel, TransportError> {
        self.inner.open_replies(instance).await
    }

    async fn subscribe_due(&self) -> Result<Option<Box<dyn Subscription>>, TransportError> {
        self.inner.subscribe_due().await
    }

    async fn cancel_scheduled(&self, id: &MessageId) -> Result<bool, TransportError> {
        self.inner.cancel_scheduled(id).await
    }
}

/// An endpoint's subscription, with every delivery recorded.
struct RecordingSubscription {
    inner: Box<dyn Subscription>,
    endpoint: String,
    shared: Arc<Shared>,
}

#[async_trait]
impl Subscription for RecordingSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        let next = self.inner.next().await;
        if let Some(Ok(delivery)) = &next {
            self.shared.delivered(&self.endpoint, delivery.envelope());
        }
        next
    }

    fn next_now(&mut self) -> Option<Delivery> {
        let delivery = self.inner.next_now()?;
        self.shared.delivered(&self.endpoint, delivery.envelope());
        Some(delivery)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}
