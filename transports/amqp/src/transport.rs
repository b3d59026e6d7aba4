//! [`AmqpTransport`]: the bus's transport over RabbitMQ.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{
    async_trait, Acker, Delivery, Destination, Envelope, Outgoing, SubscribeOptions, Subscription,
    Topology, Transport, TransportError,
};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Confirmation;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::time::{timeout, timeout_at, Instant};

use crate::config::{AmqpConfig, QueueType};
use crate::error::AmqpError;
use crate::wire;

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
    inner: Arc<Inner>,
}

struct Inner {
    config: AmqpConfig,
    connection: Connection,
    publisher: Mutex<Channel>,
    delay_queues: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("config", &self.inner.config)
            .field("connected", &self.inner.connection.status().connected())
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
                connection,
                publisher: Mutex::new(publisher),
                delay_queues: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// Close the connection gracefully.
    pub async fn close(&self) -> Result<(), TransportError> {
        let c = &self.inner.config;
        timeout(
            c.connect_timeout,
            self.inner.connection.close(200, "bye".into()),
        )
        .await
        .map_err(|_| TransportError::Timeout {
            operation: "closing the AMQP connection",
            after: c.connect_timeout,
        })?
        .map_err(|e| TransportError::Connection(c.scrub(&e.to_string())))
    }

    fn lapin_error(&self, what: &str, e: &lapin::Error) -> TransportError {
        let text = self.inner.config.scrub(&e.to_string());
        if text.contains("NOT_FOUND") || text.contains("NOT-FOUND") {
            return TransportError::Unroutable(format!("{what}: {text}"));
        }
        if text.contains("PRECONDITION") {
            return TransportError::Refused(format!(
                "{what}: {text} (does it exist with other settings, e.g. another queue type?)"
            ));
        }
        TransportError::Connection(format!("{what}: {text}"))
    }

    fn current_publisher(&self) -> Channel {
        self.inner
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After a channel error that recovery cannot fix, open a new publisher channel.
    async fn replace_publisher(&self) -> Result<(), TransportError> {
        let ch = publisher_channel(&self.inner.connection, &self.inner.config).await?;
        *self
            .inner
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ch;
        Ok(())
    }

    async fn topology_channel(&self) -> Result<Channel, TransportError> {
        self.inner
            .connection
            .create_channel()
            .await
            .map_err(|e| self.lapin_error("opening a channel", &e))
    }

    fn queue_args(&self, endpoint: &str) -> FieldTable {
        let mut args = FieldTable::default();
        if let QueueType::Quorum { delivery_limit } = self.inner.config.queue_type {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(i32::try_from(delivery_limit).unwrap_or(i32::MAX)),
            );
            // Past the delivery limit the broker moves the message to the error queue.
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(
                    self.inner.config.naming.error_queue(endpoint),
                )),
            );
        }
        args
    }

    async fn ensure_delay_queue(
        &self,
        endpoint: &str,
        delay: Duration,
    ) -> Result<String, TransportError> {
        let naming = &self.inner.config.naming;
        let name = naming.delay_queue(endpoint, delay);
        if self
            .inner
            .delay_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&name)
        {
            return Ok(name);
        }
        let mut args = FieldTable::default();
        let ttl = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(ttl));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(naming.queue(endpoint))),
        );
        let ch = self.topology_channel().await?;
        let declared = timeout(
            self.inner.config.connect_timeout,
            ch.queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args),
        )
        .await;
        let _ = ch.close(200, "declared".into()).await;
        match declared {
            Err(_) => {
                return Err(TransportError::Timeout {
                    operation: "declaring a delay queue",
                    after: self.inner.config.connect_timeout,
                })
            }
            Ok(Err(e)) => {
                return Err(self.lapin_error(&format!("declaring delay queue `{name}`"), &e))
            }
            Ok(Ok(_)) => {}
        }
        self.inner
            .delay_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        Ok(name)
    }

    /// Exchange, routing key and mandatory flag for a message.
    async fn route(&self, out: &Outgoing) -> Result<(String, String, bool), TransportError> {
        let naming = &self.inner.config.naming;
        Ok(
            match (&out.destination, out.delay.filter(|d| !d.is_zero())) {
                (Destination::Endpoint(e), Some(delay)) => (
                    String::new(),
                    self.ensure_delay_queue(e, delay).await?,
                    true,
                ),
                (Destination::Endpoint(e), None) => (String::new(), naming.queue(e), true),
                (Destination::ErrorQueue(e), _) => (String::new(), naming.error_queue(e), true),
                (Destination::Event(name), None) => {
                    (naming.events_exchange.clone(), name.clone(), false)
                }
                (Destination::Event(name), Some(_)) => {
                    return Err(TransportError::Other(format!(
                        "event `{name}` cannot be delayed; only endpoint messages can"
                    )))
                }
            },
        )
    }

    /// Publish everything, then wait for every confirm.
    async fn publish_all(&self, ch: &Channel, messages: &[Outgoing]) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(messages.len());
        for out in messages {
            let (exchange, key, mandatory) = self.route(out).await.map_err(PublishError::Final)?;
            let props = wire::properties(&out.envelope.headers).map_err(PublishError::Final)?;
            let body = wire::body(&out.envelope).map_err(PublishError::Final)?;
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    props,
                )
                .await
                .map_err(PublishError::Broker)?;
            confirms.push(confirm);
        }
        for (confirm, out) in confirms.into_iter().zip(messages) {
            match confirm.await.map_err(PublishError::Broker)? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_returned)) => {
                    return Err(PublishError::Final(TransportError::Unroutable(
                        out.destination.to_string(),
                    )))
                }
                Confirmation::Nack(_) => {
                    return Err(PublishError::Final(TransportError::Refused(format!(
                        "the broker did not accept the message for {}",
                        out.destination
                    ))))
                }
                Confirmation::NotRequested => {
                    return Err(PublishError::Final(TransportError::Other(
                        "publisher confirms are off on this channel".into(),
                    )))
                }
            }
        }
        Ok(())
    }
}

enum PublishError {
    /// Retrying cannot help (unroutable, refused, bad message).
    Final(TransportError),
    /// The channel or connection failed; after recovery the batch is published again with the
    /// same message ids.
    Broker(lapin::Error),
}

async fn open(config: &AmqpConfig, url: &str, recover: bool) -> Result<Connection, AmqpError> {
    let mut props = ConnectionProperties::default()
        .with_connection_name(config.connection_name.as_str().into());
    if recover {
        props = props
            .configure_backoff(|b| {
                b.with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(usize::MAX)
            })
            .enable_auto_recover();
    }
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: config.tls_ca_pem.clone(),
    };
    let runtime =
        lapin::runtime::default_runtime().map_err(|e| AmqpError::Config(e.to_string()))?;
    let connecting = Connection::connect_with_config(url, props, tls, runtime);
    match timeout(config.connect_timeout, connecting).await {
        Err(_) => Err(AmqpError::Timeout {
            operation: "connecting to the AMQP broker",
            after: config.connect_timeout,
        }),
        Ok(Err(e)) => {
            let reason = config.scrub(&e.to_string());
            let url = config.redacted_url();
            if [
                "ACCESS-REFUSED",
                "ACCESS_REFUSED",
                "NOT-ALLOWED",
                "NOT_ALLOWED",
                "403",
                "530",
            ]
            .iter()
            .any(|k| reason.contains(k))
            {
                Err(AmqpError::Authentication { url, reason })
            } else {
                Err(AmqpError::Connection { url, reason })
            }
        }
        Ok(Ok(c)) => Ok(c),
    }
}

async fn publisher_channel(
    connection: &Connection,
    config: &AmqpConfig,
) -> Result<Channel, AmqpError> {
    let setup = async {
        let ch = connection.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok::<_, lapin::Error>(ch)
    };
    match timeout(config.connect_timeout, setup).await {
        Err(_) => Err(AmqpError::Timeout {
            operation: "opening the publisher channel",
            after: config.connect_timeout,
        }),
        Ok(Err(e)) => Err(AmqpError::Connection {
            url: config.redacted_url(),
            reason: config.scrub(&e.to_string()),
        }),
        Ok(Ok(ch)) => Ok(ch),
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    fn name(&self) -> &str {
        "amqp"
    }

    fn is_connected(&self) -> bool {
        self.inner.connection.status().connected()
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        let naming = self.inner.config.naming.clone();
        let ch = self.topology_channel().await?;
        let work = async {
            ch.exchange_declare(
                naming.events_exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.lapin_error("declaring the events exchange", &e))?;
            for ep in &topology.endpoints {
                let queue = naming.queue(&ep.name);
                let error_queue = naming.error_queue(&ep.name);
                let mut error_args = FieldTable::default();
                if let QueueType::Quorum { .. } = self.inner.config.queue_type {
                    error_args.insert(
                        "x-queue-type".into(),
                        AMQPValue::LongString("quorum".into()),
                    );
                }
                ch.queue_declare(
                    error_queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    error_args,
                )
                .await
                .map_err(|e| self.lapin_error(&format!("declaring queue `{error_queue}`"), &e))?;
                ch.queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    self.queue_args(&ep.name),
                )
                .await
                .map_err(|e| self.lapin_error(&format!("declaring queue `{queue}`"), &e))?;
                for event in &ep.events {
                    ch.queue_bind(
                        queue.as_str().into(),
                        naming.events_exchange.as_str().into(),
                        event.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        self.lapin_error(&format!("binding `{queue}` to `{event}`"), &e)
                    })?;
                }
            }
            Ok::<(), TransportError>(())
        };
        let result = timeout(self.inner.config.connect_timeout, work).await;
        let _ = ch.close(200, "declared".into()).await;
        result.map_err(|_| TransportError::Timeout {
            operation: "declaring the topology",
            after: self.inner.config.connect_timeout,
        })?
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<(), TransportError> {
        let limit = self.inner.config.publish_timeout;
        let deadline = Instant::now() + limit;
        let timed_out = || TransportError::Timeout {
            operation: "publishing (waiting for the broker's confirm)",
            after: limit,
        };
        loop {
            let ch = self.current_publisher();
            let error = match timeout_at(deadline, self.publish_all(&ch, &messages)).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(())) => return Ok(()),
                Ok(Err(PublishError::Final(e))) => return Err(e),
                Ok(Err(PublishError::Broker(e))) => e,
            };
            tracing::warn!(error = %self.inner.config.scrub(&error.to_string()), "publish failed; waiting for the connection to recover");
            match timeout_at(deadline, ch.wait_for_recovery(error)).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // Not recoverable on this channel (e.g. it was closed by a channel error):
                    // open another one, if the connection is up, and try again.
                    tracing::debug!(error = %self.inner.config.scrub(&e.to_string()), "publisher channel lost; opening a new one");
                    if timeout_at(deadline, self.replace_publisher())
                        .await
                        .is_err()
                    {
                        return Err(timed_out());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            if Instant::now() >= deadline {
                return Err(timed_out());
            }
        }
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let mut sub = AmqpSubscription {
            transport: self.clone(),
            queue: self.inner.config.naming.queue(endpoint),
            prefetch: u16::try_from(options.prefetch).unwrap_or(u16::MAX).max(1),
            channel: None,
            consumer: None,
            cancelled: false,
        };
        sub.open().await?;
        Ok(Box::new(sub))
    }
}

struct AmqpSubscription {
    transport: AmqpTransport,
    queue: String,
    prefetch: u16,
    channel: Option<Channel>,
    consumer: Option<Consumer>,
    cancelled: bool,
}

impl AmqpSubscription {
    async fn open(&mut self) -> Result<(), TransportError> {
        let t = &self.transport;
        let limit = t.inner.config.connect_timeout;
        let work = async {
            let ch = t.topology_channel().await?;
            ch.basic_qos(self.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| t.lapin_error("setting prefetch", &e))?;
            let tag = format!("{}-{}", t.inner.config.connection_name, bus_core_tag());
            let consumer = ch
                .basic_consume(
                    self.queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| t.lapin_error(&format!("consuming from `{}`", self.queue), &e))?;
            Ok::<_, TransportError>((ch, consumer))
        };
        let (ch, consumer) =
            timeout(limit, work)
                .await
                .map_err(|_| TransportError::Timeout {
                    operation: "subscribing",
                    after: limit,
                })??;
        self.channel = Some(ch);
        self.consumer = Some(consumer);
        Ok(())
    }
}

fn bus_core_tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn cancel(&mut self) {
        // Deliveries lapin already buffered are not handed out; they return to the queue
        // when the channel closes on drop.
        self.cancelled = true;
        if let (Some(ch), Some(consumer)) = (&self.channel, &self.consumer) {
            let tag = consumer.tag();
            let limit = self.transport.inner.config.connect_timeout;
            let _ = timeout(limit, ch.basic_cancel(tag, BasicCancelOptions::default())).await;
        }
    }

    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        loop {
            if self.cancelled {
                return None;
            }
            if self.consumer.is_none() {
                if let Err(e) = self.open().await {
                    return Some(Err(e));
                }
            }
            let consumer = self.consumer.as_mut()?;
            match consumer.next().await {
                None => {
                    tracing::warn!(queue = %self.queue, "the broker ended the consumer; subscribing again");
                    self.consumer = None;
                    self.channel = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(Ok(d)) => {
                    let lapin::message::Delivery {
                        properties,
                        data,
                        acker,
                        redelivered,
                        ..
                    } = d;
                    let count = wire::delivery_count(&properties, redelivered);
                    let envelope = wire::envelope(&properties, data);
                    let acker = AmqpAcker {
                        acker,
                        scrub: self.transport.clone(),
                    };
                    return Some(Ok(Delivery::new(
                        envelope,
                        Box::new(acker),
                        redelivered,
                        count,
                    )));
                }
                Some(Err(e)) => {
                    let text = self.transport.inner.config.scrub(&e.to_string());
                    tracing::warn!(queue = %self.queue, error = %text, "consumer error; waiting for recovery");
                    let ch = self.channel.clone();
                    let recovered = match ch {
                        Some(ch) => timeout(
                            self.transport.inner.config.connect_timeout,
                            ch.wait_for_recovery(e),
                        )
                        .await
                        .map(|r| r.is_ok())
                        .unwrap_or(false),
                        None => false,
                    };
                    if !recovered {
                        self.consumer = None;
                        self.channel = None;
                        return Some(Err(TransportError::Connection(text)));
                    }
                }
            }
        }
    }
}

struct AmqpAcker {
    acker: lapin::Acker,
    scrub: AmqpTransport,
}

impl AmqpAcker {
    fn stale(&self) -> TransportError {
        TransportError::Connection(
            "the delivery's channel closed before it was settled; the broker will redeliver it"
                .into(),
        )
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.stale()),
            Err(e) => Err(TransportError::Connection(
                self.scrub.inner.config.scrub(&e.to_string()),
            )),
        }
    }

    async fn nack(self: Box<Self>, _envelope: Envelope) -> Result<(), TransportError> {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        match self.acker.nack(options).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.stale()),
            Err(e) => Err(TransportError::Connection(
                self.scrub.inner.config.scrub(&e.to_string()),
            )),
        }
    }

    fn abandon(self: Box<Self>, _envelope: Envelope) {
        // Return it now rather than when the channel closes, so another consumer can take it.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let options = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let _ = self.acker.nack(options).await;
            });
        }
    }
}
