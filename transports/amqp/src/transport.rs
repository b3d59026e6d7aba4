//! [`AmqpTransport`]: the bus's transport over RabbitMQ.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bus_core::{
    async_trait, Declared, Destination, EndpointInfo, Envelope, MessageId, Outgoing, QueueKind,
    ReplyChannel, SubscribeOptions, Subscription, Topology, Transport, TransportError,
};
use lapin::{Channel, Connection};
use tokio::time::Instant;

use crate::ack_batch::AckBatch;
use crate::config::AmqpConfig;
use crate::connection::{open, publisher_channel};
use crate::error::AmqpError;
use crate::subscription::AmqpSubscription;

/// The AMQP 0-9-1 transport (RabbitMQ), on lapin.
///
/// Commands go through the default exchange to the owning endpoint's queue with `mandatory`,
/// so an unroutable command is [`TransportError::Unroutable`]; events go through a topic
/// exchange keyed by wire name, and every subscribing endpoint binds its own queue. Messages
/// are persistent; every publish waits for the broker's confirm (pipelined within a batch);
/// deliveries are acked manually after the handler succeeded. Delayed retries go through a
/// per-delay queue whose TTL dead-letters back into the endpoint queue, so they survive a
/// restart of the service. The connection recovers by itself after a drop or a broker restart.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use bus_transport_amqp::{AmqpConfig, AmqpTransport};
///
/// let transport = AmqpTransport::connect(
///     AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f").connection_name("billing"),
/// )
/// .await?;
/// let bus = bus_core::Bus::builder().transport(transport).start().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmqpTransport {
    pub(crate) inner: Arc<Inner>,
}

/// What the clones of a transport share.
pub(crate) struct Inner {
    pub(crate) config: AmqpConfig,
    /// The URL with credentials applied, to open a fresh connection when recovery gives up.
    pub(crate) url: String,
    /// The current connection; replaced when the client library's own recovery gives up.
    pub(crate) connection: Mutex<Arc<Connection>>,
    /// Since when the connection has been down, as seen by [`AmqpTransport::reconnect_if_dead`].
    pub(crate) down_since: Mutex<Option<Instant>>,
    /// One fresh connection at a time.
    pub(crate) reconnecting: tokio::sync::Mutex<()>,
    pub(crate) publisher: Mutex<Channel>,
    /// Delay queues known to exist, so each is declared once.
    pub(crate) delay_queues: Mutex<HashSet<String>>,
    /// Set once the queues of scheduled messages (delay levels and due queue) are declared.
    pub(crate) schedule_declared: AtomicBool,
    /// One declaration of the queues of scheduled messages at a time.
    pub(crate) schedule_declaring: tokio::sync::Mutex<()>,
    /// Hold consumer acks back and send them as one `multiple` ack (see [`AckBatch`]).
    batched_acks: AtomicBool,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("config", &self.inner.config)
            .field("connected", &self.connection().status().connected())
            .finish()
    }
}

impl AmqpTransport {
    /// Connect, open the publisher channel (confirms on), and return the transport.
    ///
    /// Wrong credentials or vhost fail at once with [`AmqpError::Authentication`]; an
    /// unreachable broker fails within the connect timeout. A URL that points at another kind
    /// of server (the NATS or Redis port) fails with [`AmqpError::WrongProtocol`], which says
    /// what answered, instead of the client library's parse error or a timeout. A namespace
    /// the broker would refuse (see [`AmqpConfig::namespace`]) is [`AmqpError::Config`].
    pub async fn connect(config: AmqpConfig) -> Result<Self, AmqpError> {
        let url = config.effective_url()?;
        config.naming.check()?;
        // First a plain connection, without recovery, so a bad login or vhost is reported at
        // once instead of being retried in the background.
        let probe = open(&config, &url, false).await?;
        let _ = probe.close(200, "connection checked".into()).await;

        let connection = open(&config, &url, true).await?;
        let publisher = publisher_channel(&connection, &config).await?;
        tracing::info!(url = %config.redacted_url(), name = %config.connection_name, "connected to the AMQP broker");
        Ok(AmqpTransport {
            inner: Arc::new(Inner {
                config,
                url,
                connection: Mutex::new(Arc::new(connection)),
                down_since: Mutex::new(None),
                reconnecting: tokio::sync::Mutex::new(()),
                publisher: Mutex::new(publisher),
                delay_queues: Mutex::new(HashSet::new()),
                schedule_declared: AtomicBool::new(false),
                schedule_declaring: tokio::sync::Mutex::new(()),
                batched_acks: AtomicBool::new(false),
            }),
        })
    }

    /// Acknowledge deliveries in batches: an ack is held back and sent as one `basic.ack` with
    /// `multiple` for a run of deliveries once every delivery before it on the channel is
    /// settled, when a quarter of the prefetch is waiting, when no delivery is ready, or at
    /// shutdown. Fewer frames for the broker to process; a crash before a batch is sent means
    /// those messages are delivered again (at least once, as always). Off by default. Applies to
    /// subscriptions opened afterwards, by this transport and its clones.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use bus_transport_amqp::{AmqpConfig, AmqpTransport};
    /// let transport = AmqpTransport::connect(AmqpConfig::new("amqp://127.0.0.1:5672/%2f"))
    ///     .await?
    ///     .with_batched_acks(true);
    /// # drop(transport); Ok(()) }
    /// ```
    pub fn with_batched_acks(self, on: bool) -> Self {
        self.inner.batched_acks.store(on, Ordering::Relaxed);
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// Close the connection gracefully.
    pub async fn close(&self) -> Result<(), TransportError> {
        const CLOSING: &str = "closing the AMQP connection";
        let connection = self.connection();
        let closing = connection.close(200, "bye".into());
        TransportError::within(CLOSING, self.inner.config.connect_timeout, closing)
            .await?
            .map_err(|e| TransportError::connection(CLOSING, e))
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    fn name(&self) -> &str {
        "amqp"
    }

    fn is_connected(&self) -> bool {
        self.connection().status().connected()
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        self.declare_topology(topology).await
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<(), TransportError> {
        self.publish_batch(&messages).await
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let prefetch = u16::try_from(options.prefetch).unwrap_or(u16::MAX).max(1);
        let batch = self
            .inner
            .batched_acks
            .load(Ordering::Relaxed)
            .then(|| Arc::new(AckBatch::new(usize::from(prefetch / 4).max(1))));
        let queue = self.inner.config.naming.queue(endpoint);
        let target = Destination::Endpoint(endpoint.into());
        let sub = AmqpSubscription::start(self.clone(), target, queue, prefetch, batch).await?;
        Ok(Box::new(sub))
    }

    /// Declares this instance's reply queue, `{namespace}.{prefix}bus.reply.{instance}`
    /// (its name is the address): not durable, exclusive to this transport's connection and
    /// deleted once its consumer goes, so it disappears with the channel or, for a crashed
    /// process, with its connection. It is read without acks: a reply is never redelivered.
    async fn open_replies(&self, instance: &str) -> Result<ReplyChannel, TransportError> {
        self.open_reply_queue(instance).await
    }

    /// The queue of scheduled messages that may be due, `{namespace}.{prefix}bus.schedule.due`
    /// (see the crate docs): a message not due yet is moved back into the delay level for
    /// its remaining wait, never handed out; a due one is, to be acked once delivered.
    async fn subscribe_due(&self) -> Result<Option<Box<dyn Subscription>>, TransportError> {
        Ok(Some(Box::new(self.due_subscription().await?)))
    }

    /// Always [`TransportError::Unsupported`]: AMQP 0-9-1 cannot take one message out of the
    /// middle of a queue, and a scheduled message moves from delay level to delay level while
    /// it waits (see the crate docs).
    async fn cancel_scheduled(&self, id: &MessageId) -> Result<bool, TransportError> {
        let _ = id;
        Err(TransportError::Unsupported {
            operation: "cancelling a scheduled message",
            transport: self.name().to_string(),
        })
    }

    /// Up to `limit` messages of the queue, oldest first, decoded as a delivery of them would
    /// be. They are lent and given back by closing the channel they were lent on, so they stay
    /// in their places, marked redelivered; messages a consumer holds unsettled are not seen.
    ///
    /// A queue that does not exist is [`TransportError::Unroutable`] naming it (a mistyped
    /// endpoint, or one no bus has started yet), not an empty list. With quorum queues
    /// ([`AmqpConfig::quorum_queues`]) the input queue cannot be browsed
    /// ([`TransportError::Unsupported`]): a message returned to a quorum queue counts as
    /// delivered once more, toward the delivery limit past which the broker moves it to the
    /// error queue. Error queues have no limit and can always be browsed.
    async fn browse(
        &self,
        endpoint: &str,
        queue: QueueKind,
        limit: usize,
    ) -> Result<Vec<Envelope>, TransportError> {
        self.browse_queue(endpoint, queue, limit).await
    }

    /// For each id, the oldest message with that id in the queue, taken out; the others stay
    /// in their order. AMQP 0-9-1 cannot delete one message: the messages are lent one by one
    /// (at most as many as the queue held when the call started) until every id is found,
    /// the ones to remove are acked, and the others go back to their places as a browse's do,
    /// marked redelivered. Messages a consumer holds unsettled are not found.
    ///
    /// A queue that does not exist is [`TransportError::Unroutable`]. With quorum queues the
    /// input queue is refused ([`TransportError::Unsupported`]), as for browsing: each message
    /// lent counts toward its delivery limit. Each wait on the broker has the connect timeout.
    async fn remove(
        &self,
        endpoint: &str,
        queue: QueueKind,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, TransportError> {
        self.remove_messages(endpoint, queue, ids).await
    }

    /// The endpoints under this transport's naming (namespace and queue prefix): the input
    /// queues that have an error queue beside them, named by the RabbitMQ management HTTP API
    /// (AMQP 0-9-1 cannot list queues; see [`AmqpConfig::management_url`]). The figures are
    /// those of the moment, asked of each queue over AMQP (the API's lag by a few seconds):
    /// the depth is the messages ready, without those delivered and not settled yet, which
    /// AMQP does not tell; the consumers of the input queue; the messages of the error queue.
    ///
    /// Without a management API ([`AmqpConfig::without_management`], or an `amqps://` broker
    /// without a management URL) it is [`TransportError::Unsupported`]; when the API cannot be
    /// reached, a [`TransportError::Connection`] that says to enable `rabbitmq_management`.
    /// Without a namespace or prefix, any queue of the virtual host with an `.error` queue
    /// beside it is listed, other applications' included.
    async fn endpoints(&self) -> Result<Vec<EndpointInfo>, TransportError> {
        self.list_endpoints().await
    }

    /// Deletes each endpoint's delay queues, input queue and error queue, with their messages,
    /// consumers and event bindings, and reports each queue found as `queue`. With `dry_run`
    /// it only reports them. What is not there is skipped, so a second teardown reports
    /// nothing.
    ///
    /// Delay queues are found by the names this transport (or a clone) declared: AMQP 0-9-1
    /// cannot list queues, and delays are chosen per retry. Those another process declared are
    /// left; with the input queue gone their messages are dropped when they expire.
    ///
    /// The AMQP topology has no exchange per event: events go through one topic exchange
    /// shared by every endpoint and publisher under the same naming, and an endpoint's
    /// subscriptions are bindings of its queue, removed with it. The exchange is kept; see
    /// [`AmqpTransport::delete_events_exchange`].
    async fn teardown(
        &self,
        topology: &Topology,
        dry_run: bool,
    ) -> Result<Vec<Declared>, TransportError> {
        self.teardown_topology(topology, dry_run).await
    }
}
