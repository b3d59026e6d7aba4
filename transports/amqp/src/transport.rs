//! [`AmqpTransport`]: the bus's transport over RabbitMQ.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bus_core::{
    async_trait, Outgoing, SubscribeOptions, Subscription, Topology, Transport, TransportError,
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
    /// unreachable broker fails within the connect timeout.
    pub async fn connect(config: AmqpConfig) -> Result<Self, AmqpError> {
        let url = config.effective_url()?;
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
        let sub = AmqpSubscription::start(self.clone(), queue, prefetch, batch).await?;
        Ok(Box::new(sub))
    }
}
