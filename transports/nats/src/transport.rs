//! [`NatsTransport`]: the bus's transport over NATS JetStream.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::{ConnectErrorKind, ConnectOptions, HeaderMap, ServerAddr};
use bus_core::{
    async_trait, Bytes, Destination, Outgoing, SubscribeOptions, Subscription, Topology, Transport,
    TransportError,
};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};

use crate::config::{check_subject_part, Auth, NatsConfig};
use crate::error::NatsError;
use crate::subscription::NatsSubscription;
use crate::topology;
use crate::wire;

/// The NATS JetStream transport, on async-nats.
///
/// Every send returns `Ok` only once JetStream acknowledged storing the message (publishes of
/// a batch are pipelined); each carries a `Nats-Msg-Id`, so a publish repeated after a timeout
/// or reconnect is stored once. A command to an endpoint no one declared is
/// [`TransportError::Unroutable`]; an event no one subscribes to is accepted and dropped.
/// Deliveries come from one durable pull consumer per endpoint shared by all its instances,
/// are acked explicitly (and the ack confirmed), and are kept alive by progress signals while a
/// handler runs. Delayed retries wait in a per-endpoint delay stream, so they survive a restart
/// of the service. The client reconnects by itself; subscriptions go on after it.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use bus_transport_nats::{NatsConfig, NatsTransport};
///
/// let transport =
///     NatsTransport::connect(NatsConfig::new("nats://127.0.0.1:4222").connection_name("billing"))
///         .await?;
/// let bus = bus_core::Bus::builder().transport(transport).start().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsTransport {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: NatsConfig,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    /// Counts the connections established (the first and every reconnect), so pulls can
    /// start over on a new connection instead of waiting out a request the server forgot.
    pub(crate) connections: watch::Receiver<u64>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("config", &self.inner.config)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// One message ready to publish.
struct Prepared {
    destination: Destination,
    subject: String,
    headers: HeaderMap,
    body: Bytes,
}

impl NatsTransport {
    /// Connect, check that JetStream answers, and return the transport.
    ///
    /// Wrong credentials fail at once with [`NatsError::Authentication`]; an unreachable server
    /// fails within the connect timeout; a server without JetStream with
    /// [`NatsError::JetStreamUnavailable`].
    pub async fn connect(config: NatsConfig) -> Result<Self, NatsError> {
        let (servers, auth) = config.servers_and_auth()?;
        let addrs = servers
            .iter()
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| NatsError::Config(format!("invalid server address: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut options = match auth {
            Auth::None => ConnectOptions::new(),
            Auth::UserPassword(user, password) => {
                ConnectOptions::with_user_and_password(user, password)
            }
            Auth::Token(token) => ConnectOptions::with_token(token),
        };
        let scrubber = config.clone();
        let (connected, connections) = watch::channel(0u64);
        options = options
            .name(&config.connection_name)
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                let ms = 100u64.saturating_mul(1 << attempts.min(5));
                Duration::from_millis(ms.min(2_000))
            })
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Connected) {
                    connected.send_modify(|n| *n += 1);
                }
                let text = scrubber.scrub(&event.to_string());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("NATS connection (re)established")
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS connection lost; reconnecting")
                        }
                        _ => tracing::debug!(event = %text, "NATS client event"),
                    }
                }
            });
        if let Some(ca) = &config.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if servers.iter().any(|s| s.starts_with("tls://")) {
            options = options.require_tls(true);
        }
        let url = config.redacted_url();
        let client = match timeout(config.connect_timeout, options.connect(addrs)).await {
            Err(_) => {
                return Err(NatsError::Timeout {
                    operation: "connecting to the NATS server",
                    after: config.connect_timeout,
                })
            }
            Ok(Err(e)) => {
                let reason = config.scrub(&e.to_string());
                return Err(match e.kind() {
                    ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                        NatsError::Authentication { url, reason }
                    }
                    ConnectErrorKind::TimedOut => NatsError::Timeout {
                        operation: "connecting to the NATS server",
                        after: config.connect_timeout,
                    },
                    _ => NatsError::Connection { url, reason },
                });
            }
            Ok(Ok(c)) => c,
        };
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        // A plain account-info request: it works with every server version (the typed one of
        // the client library expects fields that older servers do not send).
        let info = timeout(
            config.request_timeout,
            client.request("$JS.API.INFO", Bytes::new()),
        )
        .await;
        let refused = match info {
            Err(_) => Some(format!("no answer within {:?}", config.request_timeout)),
            Ok(Err(e)) => Some(config.scrub(&e.to_string())),
            Ok(Ok(reply)) => serde_json::from_slice::<serde_json::Value>(&reply.payload)
                .ok()
                .and_then(|v| v.get("error").map(|e| e.to_string())),
        };
        if let Some(reason) = refused {
            return Err(NatsError::JetStreamUnavailable { url, reason });
        }
        tracing::info!(url = %url, name = %config.connection_name, "connected to NATS JetStream");
        Ok(NatsTransport {
            inner: Arc::new(Inner {
                config,
                client,
                js,
                connections,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The underlying NATS client (e.g. to read the error streams, or for tests).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The JetStream context of the client.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// Flush what is buffered and close the connection. Subscriptions still open stop.
    pub async fn close(&self) -> Result<(), TransportError> {
        const CLOSING: &str = "closing the NATS connection";
        let work = async {
            let _ = self.inner.client.flush().await;
            self.inner.client.drain().await
        };
        TransportError::within(CLOSING, self.inner.config.connect_timeout, work)
            .await?
            .map_err(|e| TransportError::connection(CLOSING, e))
    }

    fn prepare(&self, out: &Outgoing) -> Result<Prepared, TransportError> {
        let naming = &self.inner.config.naming;
        let delay = out.delay.filter(|d| !d.is_zero());
        let subject = match (&out.destination, delay) {
            (Destination::Endpoint(e), None) => {
                check_subject_part("endpoint name", e)?;
                naming.command_subject(e)
            }
            (Destination::Endpoint(e), Some(_)) => {
                check_subject_part("endpoint name", e)?;
                naming.delay_subject(e)
            }
            (Destination::ErrorQueue(e), _) => {
                check_subject_part("endpoint name", e)?;
                naming.error_subject(e)
            }
            (Destination::Event(name), None) => {
                check_subject_part("event wire name", name)?;
                naming.event_subject(name)
            }
            (Destination::Event(name), Some(_)) => {
                return Err(TransportError::Other {
                    context: format!(
                        "event `{name}` cannot be delayed; only endpoint messages can"
                    ),
                    source: None,
                })
            }
        };
        let headers = &out.envelope.headers;
        let dedup = wire::dedup_id(&out.destination, headers);
        let mut map = wire::headers(headers, dedup.as_deref());
        if let Some(d) = delay {
            let due = SystemTime::now() + d;
            let ms = due
                .duration_since(UNIX_EPOCH)
                .map(|t| t.as_millis())
                .unwrap_or(0);
            map.insert(wire::DELIVER_AT, ms.to_string().as_str());
        }
        let body = wire::body(&out.envelope)?;
        // JetStream publishes bypass the client's own size check, and the server drops the
        // whole connection on an oversized message: refuse it here.
        let size = wire::size(&map, &body);
        let limit = self.inner.client.server_info().max_payload;
        if limit > 0 && size > limit {
            return Err(TransportError::Refused {
                context: format!(
                    "a message of {size} bytes (body and headers) exceeds the server's max_payload of {limit} bytes"
                ),
                source: None,
            });
        }
        Ok(Prepared {
            destination: out.destination.clone(),
            subject,
            headers: map,
            body,
        })
    }

    /// No stream took a message: is that because none exists for its subject (a final answer),
    /// or because JetStream is not answering right now (worth another try)?
    async fn no_stream(&self, p: &Prepared, deadline: Instant) -> Missing {
        let until = deadline.min(Instant::now() + self.inner.config.request_timeout);
        match timeout_at(until, self.inner.js.stream_by_subject(p.subject.as_str())).await {
            Ok(Err(e)) if e.kind() == GetStreamByNameErrorKind::NotFound => match &p.destination {
                Destination::Event(_) => Missing::NoSubscriber,
                other => Missing::Unroutable(TransportError::Unroutable(other.to_string())),
            },
            _ => Missing::Transient,
        }
    }

    /// Publish the messages not yet acknowledged, then wait for their acks. Returns the ones
    /// to try again.
    async fn publish_round(
        &self,
        pending: Vec<Prepared>,
        deadline: Instant,
    ) -> Result<Vec<Prepared>, TransportError> {
        let timed_out = || self.publish_timed_out();
        let mut futures: Vec<(Prepared, Option<PublishAckFuture>)> =
            Vec::with_capacity(pending.len());
        for p in pending {
            let publish = PublishMessage::build()
                .payload(p.body.clone())
                .headers(p.headers.clone());
            let sent = timeout_at(
                deadline,
                self.inner.js.send_publish(p.subject.clone(), publish),
            )
            .await
            .map_err(|_| timed_out())?;
            match sent {
                Ok(f) => futures.push((p, Some(f))),
                Err(e) => {
                    tracing::debug!(error = %e, subject = %p.subject, "publish not sent; will retry");
                    futures.push((p, None));
                }
            }
        }
        let mut again = Vec::new();
        for (p, f) in futures {
            let Some(f) = f else {
                again.push(p);
                continue;
            };
            let acked = timeout_at(deadline, f).await.map_err(|_| timed_out())?;
            match acked {
                Ok(ack) if ack.duplicate => {
                    // Stored before: a repeated publish, or the same message id sent again
                    // within the duplicate window.
                    tracing::debug!(subject = %p.subject, stream = %ack.stream, "JetStream already had this message");
                }
                Ok(_) => {}
                Err(e) => match e.kind() {
                    // No stream answered. A plain subscriber on the subject (a monitoring
                    // `nats sub`, say) takes the request without answering, which looks like a
                    // timeout: ask JetStream in both cases.
                    PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut => {
                        match self.no_stream(&p, deadline).await {
                            Missing::NoSubscriber => {
                                tracing::debug!(subject = %p.subject, "event without subscribers dropped")
                            }
                            Missing::Unroutable(err) => return Err(err),
                            Missing::Transient => again.push(p),
                        }
                    }
                    PublishErrorKind::Other if is_api_error(&e) => {
                        let storing =
                            format!("JetStream did not store the message for {}", p.destination);
                        return Err(TransportError::refused(storing, e));
                    }
                    _ => {
                        tracing::debug!(error = %e, subject = %p.subject, "no publish ack; will retry");
                        again.push(p);
                    }
                },
            }
        }
        Ok(again)
    }

    fn publish_timed_out(&self) -> TransportError {
        TransportError::timeout(
            "publishing (waiting for the JetStream ack)",
            self.inner.config.publish_timeout,
        )
    }
}

enum Missing {
    NoSubscriber,
    Unroutable(TransportError),
    Transient,
}

/// Whether a publish error carries JetStream's own refusal (as opposed to a transport problem).
fn is_api_error(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.downcast_ref::<jetstream::Error>().is_some())
}

#[async_trait]
impl Transport for NatsTransport {
    fn name(&self) -> &str {
        "nats"
    }

    fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == State::Connected
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        for ep in &topology.endpoints {
            topology::declare_endpoint(&self.inner.js, &self.inner.config, ep).await?;
        }
        Ok(())
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<(), TransportError> {
        let mut pending = messages
            .iter()
            .map(|m| self.prepare(m))
            .collect::<Result<Vec<_>, _>>()?;
        let deadline = Instant::now() + self.inner.config.publish_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            pending = self.publish_round(pending, deadline).await?;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() + pause >= deadline {
                return Err(self.publish_timed_out());
            }
            // Same `Nats-Msg-Id` on the next try: JetStream stores each message once.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let sub = NatsSubscription::start(self.clone(), endpoint, options).await?;
        Ok(Box::new(sub))
    }
}
