//! The transport contract: what every transport (in-memory, AMQP, ...) provides to the runtime.
//!
//! # Ack contract
//! A [`Delivery`] is settled exactly once, by consuming it: [`Delivery::ack`] removes the message
//! for good, [`Delivery::nack`] returns it to its queue for redelivery. A delivery dropped without
//! being settled (a handler task aborted at shutdown, a crash) is treated as a nack, so it is
//! redelivered: nothing is lost, at the cost of a possible duplicate. The runtime acks only after
//! the handler succeeded *and* [`Transport::send_batch`] accepted everything the handler emitted.
//!
//! # Send contract
//! [`Transport::send`] returns `Ok` only once the transport has taken responsibility for the
//! message (enqueued in memory; confirmed by the broker). An undeliverable command is
//! [`TransportError::Unroutable`], not a silent drop; an event nobody subscribes to is fine.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::envelope::{Envelope, MessageId};
use crate::error::TransportError;

/// Where an outgoing message goes. The names are shared (`Arc<str>`): the bus keeps one of
/// each and a send clones a reference, not the text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// The input queue of a logical endpoint (commands, delayed retries).
    Endpoint(Arc<str>),
    /// The error queue of an endpoint.
    ErrorQueue(Arc<str>),
    /// Every endpoint subscribed to this event wire name.
    Event(Arc<str>),
    /// The reply address of one bus instance (see [`Transport::open_replies`]). A reply to an
    /// address that no longer exists is dropped, not an error: its caller is gone.
    Reply(Arc<str>),
}

impl Destination {
    /// The destination as the header [`header::DESTINATION`](crate::header::DESTINATION)
    /// carries it: `endpoint:NAME`, `errors:NAME`, `event:NAME` or `reply:ADDRESS`.
    ///
    /// ```
    /// use bus_core::Destination;
    /// let d = Destination::Event("shop.OrderPlaced".into());
    /// assert_eq!(d.to_header(), "event:shop.OrderPlaced");
    /// assert_eq!(Destination::from_header("event:shop.OrderPlaced"), Some(d));
    /// ```
    pub fn to_header(&self) -> String {
        let (kind, name) = match self {
            Destination::Endpoint(n) => ("endpoint", n),
            Destination::ErrorQueue(n) => ("errors", n),
            Destination::Event(n) => ("event", n),
            Destination::Reply(n) => ("reply", n),
        };
        format!("{kind}:{name}")
    }

    /// Read a destination written by [`Destination::to_header`]; `None` for anything else.
    pub fn from_header(text: &str) -> Option<Destination> {
        let (kind, name) = text.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        let name: Arc<str> = Arc::from(name);
        Some(match kind {
            "endpoint" => Destination::Endpoint(name),
            "errors" => Destination::ErrorQueue(name),
            "event" => Destination::Event(name),
            "reply" => Destination::Reply(name),
            _ => return None,
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Endpoint(e) => write!(f, "endpoint `{e}`"),
            Destination::ErrorQueue(e) => write!(f, "error queue of `{e}`"),
            Destination::Event(e) => write!(f, "event `{e}`"),
            Destination::Reply(a) => write!(f, "reply address `{a}`"),
        }
    }
}

/// A message on its way out.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Where it goes.
    pub destination: Destination,
    /// What it carries.
    pub envelope: Envelope,
    /// Deliver no sooner than this (delayed retries): the transport's retry delays.
    pub delay: Option<Duration>,
    /// A scheduled message: deliver it no sooner than this time (see
    /// [`crate::SendOptions::deliver_at`]). A transport keeps it durably where its broker can,
    /// and delivers it at once when the time has passed.
    pub deliver_at: Option<SystemTime>,
}

impl Outgoing {
    /// A message for `destination`, neither delayed nor scheduled.
    pub fn new(destination: Destination, envelope: Envelope) -> Self {
        Outgoing {
            destination,
            envelope,
            delay: None,
            deliver_at: None,
        }
    }

    /// When a scheduled message is due, if it is scheduled for later than now.
    pub fn scheduled_after(&self, now: SystemTime) -> Option<SystemTime> {
        self.deliver_at.filter(|at| *at > now)
    }
}

/// The reply address of one bus instance, and the replies that reach it.
pub struct ReplyChannel {
    /// Where replies go: [`Destination::Reply`] with this address reaches `replies`.
    pub address: String,
    /// The replies, as deliveries (settling them removes them where the transport keeps
    /// them). It ends when the transport closes it.
    pub replies: Box<dyn Subscription>,
}

impl fmt::Debug for ReplyChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyChannel")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// What an endpoint needs from the transport: its queue, its error queue, its subscriptions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointTopology {
    /// The endpoint's name.
    pub name: String,
    /// Wire names of the events this endpoint subscribes to.
    pub events: Vec<String>,
    /// Wire names of the commands it handles.
    pub commands: Vec<String>,
}

/// Everything a bus declares when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// The endpoints hosted by the bus.
    pub endpoints: Vec<EndpointTopology>,
}

/// Which of an endpoint's queues an operation is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// Its input queue: commands sent to it, events it subscribes to, delayed retries due.
    Input,
    /// Its error queue: messages that failed for good.
    Errors,
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueKind::Input => "input queue",
            QueueKind::Errors => "error queue",
        })
    }
}

/// What the broker behind a transport allows, as far as the transport can tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportLimits {
    /// The largest message the broker takes, headers included, when it says so (NATS
    /// `max_payload`). The bus lowers its own body limit to fit it.
    pub max_message_size: Option<usize>,
}

impl TransportLimits {
    /// Limits with the broker's largest message size.
    pub fn with_max_message_size(max: usize) -> Self {
        TransportLimits {
            max_message_size: Some(max),
        }
    }
}

/// An endpoint as the broker knows it, as [`Transport::endpoints`] reports it. A figure the
/// transport cannot tell is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointInfo {
    /// The endpoint's name (without the transport's namespace).
    pub name: String,
    /// Messages waiting in its input queue (ready, and taken but not settled where the
    /// broker counts those).
    pub depth: Option<u64>,
    /// Consumers reading its input queue.
    pub consumers: Option<u64>,
    /// Messages in its error queue.
    pub error_depth: Option<u64>,
}

impl EndpointInfo {
    /// An endpoint with nothing known about it but its name.
    pub fn named(name: impl Into<String>) -> Self {
        EndpointInfo {
            name: name.into(),
            ..EndpointInfo::default()
        }
    }
}

/// Something a transport declared for an endpoint, as [`Transport::teardown`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Declared {
    /// What it is in the broker's words: `queue`, `exchange`, `stream`, `consumer`, `key`.
    pub kind: &'static str,
    /// Its name on the broker.
    pub name: String,
}

impl fmt::Display for Declared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.kind, self.name)
    }
}

/// Options for a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Most deliveries handed out and not yet settled.
    pub prefetch: usize,
}

/// A message transport.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs, e.g. `memory` or `amqp`.
    fn name(&self) -> &str;

    /// Whether bodies may stay typed values ([`crate::Body::Message`]) instead of bytes.
    /// Only an in-process transport can say yes.
    fn carries_typed_messages(&self) -> bool {
        false
    }

    /// Whether the transport is connected to its broker right now (always for in-process).
    fn is_connected(&self) -> bool {
        true
    }

    /// Create (idempotently) the queues, error queues and event bindings of the endpoints.
    async fn declare(&self, topology: &Topology) -> Result<(), TransportError>;

    /// Hand one message to the transport. See the send contract in the module docs.
    async fn send(&self, message: Outgoing) -> Result<(), TransportError>;

    /// Hand one message over at once if that needs no waiting, skipping the boxed future of
    /// [`Transport::send`]: `Ok(result)` when the transport took it (`Ok(())` then means what
    /// it means for `send`) or refused it for good, `Err(message)` to give it back untouched
    /// (not even partly enqueued), and the runtime then calls `send`. The default gives every
    /// message back; an in-process transport overrides it for its common case.
    fn send_now(&self, message: Outgoing) -> Result<Result<(), TransportError>, Outgoing> {
        Err(message)
    }

    /// Hand several messages over; `Ok` means all were accepted. Transports with confirms
    /// override it to pipeline them.
    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<(), TransportError> {
        for message in messages {
            self.send(message).await?;
        }
        Ok(())
    }

    /// Start consuming an endpoint's queue. Several subscriptions on one queue compete.
    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError>;

    /// Open this bus instance's own reply address (`instance` is unique to it): replies sent
    /// to [`Destination::Reply`] with the address arrive on the channel, and nowhere else.
    /// The address goes away with the channel (or, for a crashed process, by the broker's own
    /// expiry). The default has none.
    async fn open_replies(&self, instance: &str) -> Result<ReplyChannel, TransportError> {
        let _ = instance;
        Err(TransportError::Unsupported {
            operation: "request/response (a reply address)",
            transport: self.name().to_string(),
        })
    }

    /// Scheduled messages ([`Outgoing::deliver_at`]) that fell due, for the bus to hand to
    /// their destination, which each carries in [`header::DESTINATION`](crate::header::DESTINATION):
    /// the bus sends it there, then acks the delivery (so one that was due while no bus ran
    /// is delivered once one does, and a crash between the two duplicates it, never loses it).
    /// Several buses taking them compete. `None` when the transport delivers scheduled
    /// messages by itself (in process), which is the default.
    async fn subscribe_due(&self) -> Result<Option<Box<dyn Subscription>>, TransportError> {
        Ok(None)
    }

    /// Cancel the scheduled message with this message id before it is due: `true` when it was
    /// waiting and will not be delivered, `false` when no such message waits (never scheduled,
    /// already delivered, or cancelled before). The default cannot.
    async fn cancel_scheduled(&self, id: &MessageId) -> Result<bool, TransportError> {
        let _ = id;
        Err(TransportError::Unsupported {
            operation: "cancelling a scheduled message",
            transport: self.name().to_string(),
        })
    }

    /// What the broker allows. Read once the transport is connected; the bus asks when it is
    /// built. The default knows of no limit.
    fn limits(&self) -> TransportLimits {
        TransportLimits::default()
    }

    /// Up to `limit` messages waiting in one of an endpoint's queues, oldest first, left where
    /// they are (on brokers that can only lend a message, it is put back; it may then count as
    /// redelivered). For looking at an error queue from a test or a tool.
    async fn browse(
        &self,
        endpoint: &str,
        queue: QueueKind,
        limit: usize,
    ) -> Result<Vec<Envelope>, TransportError> {
        let _ = (endpoint, queue, limit);
        Err(TransportError::Unsupported {
            operation: "browsing a queue",
            transport: self.name().to_string(),
        })
    }

    /// Take the messages with these ids out of one of an endpoint's queues, leaving the others
    /// where they are, in their order; the ids of those removed (an id not there is skipped).
    /// For tools that resend a failed message and then remove it from the error queue: a
    /// crash between the two duplicates it, never loses it.
    async fn remove(
        &self,
        endpoint: &str,
        queue: QueueKind,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, TransportError> {
        let _ = (endpoint, queue, ids);
        Err(TransportError::Unsupported {
            operation: "removing messages from a queue",
            transport: self.name().to_string(),
        })
    }

    /// The endpoints the broker knows (under this transport's namespace), with their queue
    /// depths and consumers as far as the transport can tell, sorted by name.
    async fn endpoints(&self) -> Result<Vec<EndpointInfo>, TransportError> {
        Err(TransportError::Unsupported {
            operation: "listing endpoints",
            transport: self.name().to_string(),
        })
    }

    /// Delete what [`Transport::declare`] created for these endpoints (their queues, error and
    /// delay queues, consumers and bindings) and what exists only for the events they
    /// subscribe to, messages included, and say what that was. With `dry_run` nothing is
    /// deleted: the answer says what would be. What is not there is skipped.
    async fn teardown(
        &self,
        topology: &Topology,
        dry_run: bool,
    ) -> Result<Vec<Declared>, TransportError> {
        let _ = (topology, dry_run);
        Err(TransportError::Unsupported {
            operation: "tearing down endpoints",
            transport: self.name().to_string(),
        })
    }
}

/// A stream of deliveries from one queue.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `None` once the subscription is closed. Cancel-safe: dropping the
    /// future loses no message.
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>>;

    /// A delivery that is ready at once, without waiting and without the boxed future of
    /// [`Subscription::next`]; `None` when there is none right now, and the runtime then
    /// awaits `next`. Like `next`, it hands out nothing after [`Subscription::cancel`]. The
    /// default never has one. It must not block or take long: the runtime calls it under a
    /// plain lock the endpoint's workers share.
    fn next_now(&mut self) -> Option<Delivery> {
        None
    }

    /// Stop receiving new deliveries, while the ones handed out can still be settled; `next`
    /// returns `None` from then on (and `next_now` too). The runtime calls it at shutdown,
    /// waits for in-flight handlers, then drops the subscription (which returns anything
    /// received but not handed out).
    async fn cancel(&mut self) {}
}

/// The transport side of settling one delivery. Transports implement it; the runtime uses it
/// through [`Delivery`].
#[async_trait]
pub trait Acker: Send + Sync + 'static {
    /// Remove the message for good.
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
    /// Remove the message for good at once, if that needs no waiting: `Some(result)` when it
    /// did (the acker is then dropped with no other call), `None` to have the runtime call
    /// [`Acker::ack`] instead. The default always says `None`.
    fn ack_now(&mut self) -> Option<Result<(), TransportError>> {
        None
    }
    /// Return the message to its queue for redelivery.
    async fn nack(self: Box<Self>, envelope: Envelope) -> Result<(), TransportError>;
    /// The delivery was dropped unsettled: make the message available again.
    fn abandon(self: Box<Self>, envelope: Envelope);
}

/// The transport side of settling deliveries, one for many of them: each [`Delivery`] made
/// with [`Delivery::shared`] carries a token the acker gives meaning to (a queue position, a
/// delivery tag). It spares the allocation of a boxed [`Acker`] per delivery; the runtime
/// settles each token exactly once, like a boxed acker.
#[async_trait]
pub trait SharedAcker: Send + Sync + 'static {
    /// Remove the message for good.
    async fn ack(self: Arc<Self>, token: u64) -> Result<(), TransportError>;
    /// Remove the message for good at once, if that needs no waiting (see
    /// [`Acker::ack_now`]).
    fn ack_now(&self, token: u64) -> Option<Result<(), TransportError>> {
        let _ = token;
        None
    }
    /// Return the message to its queue for redelivery.
    async fn nack(self: Arc<Self>, token: u64, envelope: Envelope) -> Result<(), TransportError>;
    /// The delivery was dropped unsettled: make the message available again.
    fn abandon(&self, token: u64, envelope: Envelope);
}

/// How a delivery is settled.
enum Settle {
    Boxed(Box<dyn Acker>),
    Shared(Arc<dyn SharedAcker>, u64),
}

/// One message handed out by a [`Subscription`], to be settled exactly once.
pub struct Delivery {
    envelope: Option<Envelope>,
    acker: Option<Settle>,
    redelivered: bool,
    delivery_count: u32,
}

impl Delivery {
    /// Wrap a received envelope. `delivery_count` is 1 for a first delivery.
    pub fn new(
        envelope: Envelope,
        acker: Box<dyn Acker>,
        redelivered: bool,
        delivery_count: u32,
    ) -> Self {
        Delivery {
            envelope: Some(envelope),
            acker: Some(Settle::Boxed(acker)),
            redelivered,
            delivery_count,
        }
    }

    /// Wrap a received envelope settled through a [`SharedAcker`] with `token`.
    pub fn shared(
        envelope: Envelope,
        acker: Arc<dyn SharedAcker>,
        token: u64,
        redelivered: bool,
        delivery_count: u32,
    ) -> Self {
        Delivery {
            envelope: Some(envelope),
            acker: Some(Settle::Shared(acker, token)),
            redelivered,
            delivery_count,
        }
    }

    /// The message.
    #[inline]
    pub fn envelope(&self) -> &Envelope {
        self.envelope
            .as_ref()
            .expect("a delivery holds its envelope until settled")
    }

    /// Whether the transport delivered this message before (and it was not acked).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// How many times the transport has delivered it, this time included, where known.
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// Settle: done with the message.
    pub async fn ack(self) -> Result<(), TransportError> {
        match self.ack_or_pending() {
            Ok(done) => done,
            Err(pending) => pending.await,
        }
    }

    /// Settle: done with the message, without waiting here. `Ok` with the outcome when the
    /// transport acked at once; otherwise the ack as a future, which sends nothing until it is
    /// polled and completes when the broker confirmed it. A runtime that drives it alongside
    /// its next deliveries overlaps the ack's round trip with their handling.
    ///
    /// ```
    /// use bus_core::{Delivery, Envelope, Headers};
    /// # use bus_core::{async_trait, Acker, TransportError};
    /// # struct Confirmed;
    /// # #[async_trait]
    /// # impl Acker for Confirmed {
    /// #     async fn ack(self: Box<Self>) -> Result<(), TransportError> { Ok(()) }
    /// #     async fn nack(self: Box<Self>, _: Envelope) -> Result<(), TransportError> { Ok(()) }
    /// #     fn abandon(self: Box<Self>, _: Envelope) {}
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let envelope = Envelope::from_bytes(Headers::default(), "{}");
    /// // An acker that has to wait for its broker (it does not implement `ack_now`).
    /// let delivery = Delivery::new(envelope, Box::new(Confirmed), false, 1);
    /// match delivery.ack_or_pending() {
    ///     Ok(done) => done.unwrap(),
    ///     Err(pending) => pending.await.unwrap(),
    /// }
    /// # });
    /// ```
    pub fn ack_or_pending(
        mut self,
    ) -> Result<Result<(), TransportError>, crate::BoxFuture<Result<(), TransportError>>> {
        let acker = self.acker.take().expect("unsettled delivery has an acker");
        self.envelope = None;
        match acker {
            Settle::Boxed(mut acker) => match acker.ack_now() {
                Some(done) => Ok(done),
                None => Err(acker.ack()),
            },
            Settle::Shared(acker, token) => match acker.ack_now(token) {
                Some(done) => Ok(done),
                None => Err(acker.ack(token)),
            },
        }
    }

    /// Settle: put the message back for redelivery.
    pub async fn nack(mut self) -> Result<(), TransportError> {
        let acker = self.acker.take().expect("unsettled delivery has an acker");
        let envelope = self
            .envelope
            .take()
            .expect("unsettled delivery has an envelope");
        match acker {
            Settle::Boxed(acker) => acker.nack(envelope).await,
            Settle::Shared(acker, token) => acker.nack(token, envelope).await,
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        match (self.acker.take(), self.envelope.take()) {
            (Some(Settle::Boxed(acker)), Some(envelope)) => acker.abandon(envelope),
            (Some(Settle::Shared(acker, token)), Some(envelope)) => acker.abandon(token, envelope),
            _ => {}
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .field("redelivered", &self.redelivered)
            .field("delivery_count", &self.delivery_count)
            .finish()
    }
}
