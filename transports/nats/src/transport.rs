//! [`NatsTransport`]: the bus's transport over NATS JetStream.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::{ConnectErrorKind, ConnectOptions, HeaderMap, ServerAddr};
use bus_core::probe::{self, Protocol};
use bus_core::{
    async_trait, Bytes, Declared, Destination, EndpointInfo, Envelope, MessageId, Outgoing,
    QueueKind, ReplyChannel, SubscribeOptions, Subscription, Topology, Transport, TransportError,
    TransportLimits,
};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};

use crate::config::{check_subject_part, Auth, NatsConfig};
use crate::error::NatsError;
use crate::subscription::NatsSubscription;
use crate::{browse, endpoints, remove, replies, schedule, topology, wire};

/// The NATS JetStream transport, on async-nats.
///
/// Every send returns `Ok` only once JetStream acknowledged storing the message (publishes of
/// a batch are pipelined); each carries a `Nats-Msg-Id`, so a publish repeated after a timeout
/// or reconnect is stored once. A command to an endpoint no one declared is
/// [`TransportError::Unroutable`]; an event no one subscribes to is accepted and dropped.
/// Deliveries come from one durable pull consumer per endpoint shared by all its instances,
/// are acked explicitly (the acks confirmed, in batches), and are kept alive by progress
/// signals while a handler runs. Delayed retries wait in a per-endpoint delay stream, so they
/// survive a restart of the service. The client reconnects by itself; subscriptions go on
/// after it.
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
    /// The server's `max_payload`, read once per connection: the client library hands out
    /// the server's information only as a copy of all of it, several allocations per send.
    max_payload: MaxPayload,
    /// Whether the scheduled stream is known to exist, so that scheduling a message needs
    /// no request to make sure of it (cleared when a publish finds it missing).
    pub(crate) scheduled_stream: AtomicBool,
}

/// The `max_payload` of the server of the current connection.
struct MaxPayload {
    /// Connections established so far, counted by the client's event callback.
    connected: Arc<AtomicU64>,
    /// The connection count `bytes` was read at; `u64::MAX` before the first read.
    read_at: AtomicU64,
    bytes: AtomicUsize,
}

impl MaxPayload {
    fn get(&self, client: &async_nats::Client) -> usize {
        let connected = self.connected.load(Ordering::Acquire);
        if self.read_at.load(Ordering::Acquire) != connected {
            self.bytes
                .store(client.server_info().max_payload, Ordering::Relaxed);
            self.read_at.store(connected, Ordering::Release);
        }
        self.bytes.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("config", &self.inner.config)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// One message checked and ready to publish, and what it takes to publish it again.
struct Prepared<'a> {
    out: &'a Outgoing,
    subject: String,
    /// When a delayed message is due (milliseconds since the Unix epoch), fixed at the first
    /// try.
    due: Option<u128>,
    body: Bytes,
}

impl Prepared<'_> {
    /// The NATS headers: each try hands its own map to the client library.
    fn headers(&self) -> HeaderMap {
        let headers = &self.out.envelope.headers;
        let dedup = wire::dedup_id(&self.out.destination, headers);
        let mut map = wire::headers(headers, dedup.as_deref());
        if let Some(due) = self.due {
            map.insert(wire::DELIVER_AT_NAME, due.to_string());
        }
        map
    }
}

impl NatsTransport {
    /// Connect, check that JetStream answers, and return the transport.
    ///
    /// Wrong credentials fail at once with [`NatsError::Authentication`]; an unreachable server
    /// fails within the connect timeout; a server without JetStream with
    /// [`NatsError::JetStreamUnavailable`]. A server that answers but is no NATS server (the
    /// AMQP or Redis port, say) fails with [`NatsError::WrongProtocol`], which names what
    /// answered, within a few seconds rather than at the end of the connect timeout. An invalid
    /// [namespace](NatsConfig::namespace) is a [`NatsError::Config`].
    pub async fn connect(config: NatsConfig) -> Result<Self, NatsError> {
        config.naming.check()?;
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
        let connected_count = Arc::new(AtomicU64::new(0));
        let counted = connected_count.clone();
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
                    counted.fetch_add(1, Ordering::AcqRel);
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
        let client = connect_client(&config, options, addrs, &url).await?;
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
                max_payload: MaxPayload {
                    connected: connected_count,
                    read_at: AtomicU64::new(u64::MAX),
                    bytes: AtomicUsize::new(0),
                },
                scheduled_stream: AtomicBool::new(false),
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

    /// Check a message and build what its first try sends: the subject and body, and its
    /// headers.
    fn prepare<'a>(&self, out: &'a Outgoing) -> Result<(Prepared<'a>, HeaderMap), TransportError> {
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
            // Replies never take the JetStream path: `send` hands them to the `replies` module.
            (Destination::Reply(address), _) => {
                return Err(TransportError::Other {
                    context: format!("a reply to `{address}` is no JetStream publish"),
                    source: None,
                })
            }
        };
        let due = delay.map(|d| {
            (SystemTime::now() + d)
                .duration_since(UNIX_EPOCH)
                .map(|t| t.as_millis())
                .unwrap_or(0)
        });
        let prepared = Prepared {
            out,
            subject,
            due,
            body: wire::body(&out.envelope)?,
        };
        let map = prepared.headers();
        self.check_size(&map, &prepared.body)?;
        Ok((prepared, map))
    }

    /// Refuse a message larger than the server takes. JetStream publishes bypass the client's
    /// own size check, and the server drops the whole connection on an oversized message.
    pub(crate) fn check_size(&self, map: &HeaderMap, body: &[u8]) -> Result<(), TransportError> {
        let size = wire::size(map, body);
        let limit = self.inner.max_payload.get(&self.inner.client);
        if limit > 0 && size > limit {
            return Err(TransportError::Refused {
                context: format!(
                    "a message of {size} bytes (body and headers) exceeds the NATS server's max_payload of {limit} bytes; send a smaller message, or raise `max_payload` in the nats-server configuration (at most 64 MB) and reconnect"
                ),
                source: None,
            });
        }
        Ok(())
    }

    /// Send a message that takes no JetStream publish of the usual kind: a reply, or a message
    /// scheduled for later (delayed retries keep their own path). `None` gives it back (its
    /// time has come meanwhile).
    async fn send_special(&self, message: &Outgoing) -> Option<Result<(), TransportError>> {
        if let Destination::Reply(address) = &message.destination {
            return Some(replies::send(self, message, address).await);
        }
        let at = scheduled_at(message)?;
        Some(schedule::schedule(self, message, at).await)
    }

    /// No stream took a message: is that because none exists for its subject (a final answer),
    /// or because JetStream is not answering right now (worth another try)?
    async fn no_stream(&self, p: &Prepared<'_>, deadline: Instant) -> Missing {
        let until = deadline.min(Instant::now() + self.inner.config.request_timeout);
        match timeout_at(until, self.inner.js.stream_by_subject(p.subject.as_str())).await {
            Ok(Err(e)) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                match &p.out.destination {
                    Destination::Event(_) => Missing::NoSubscriber,
                    other => Missing::Unroutable(TransportError::Unroutable(other.to_string())),
                }
            }
            _ => Missing::Transient,
        }
    }

    /// Hand one message to the client library; `None` when it did not take it (try again).
    async fn start_publish(
        &self,
        p: &Prepared<'_>,
        headers: HeaderMap,
        deadline: Instant,
    ) -> Result<Option<PublishAckFuture>, TransportError> {
        let publish = PublishMessage::build()
            .payload(p.body.clone())
            .headers(headers);
        let sending = self.inner.js.send_publish(p.subject.clone(), publish);
        let sent = timeout_at(deadline, sending)
            .await
            .map_err(|_| self.publish_timed_out())?;
        match sent {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                tracing::debug!(error = %e, subject = %p.subject, "publish not sent; will retry");
                Ok(None)
            }
        }
    }

    /// Wait for a publish's ack: `true` when the message is stored (or, as an event nobody
    /// subscribes to, dropped), `false` to try again.
    async fn finish_publish(
        &self,
        p: &Prepared<'_>,
        ack: PublishAckFuture,
        deadline: Instant,
    ) -> Result<bool, TransportError> {
        // The client library ends the wait itself after the request timeout: when that comes
        // before the deadline, a timer of our own would only be armed and cancelled again.
        let acked = if Instant::now() + self.inner.config.request_timeout <= deadline {
            ack.await
        } else {
            timeout_at(deadline, ack.into_future())
                .await
                .map_err(|_| self.publish_timed_out())?
        };
        match acked {
            Ok(ack) => {
                if ack.duplicate {
                    // Stored before: a repeated publish, or the same message id sent again
                    // within the duplicate window.
                    tracing::debug!(subject = %p.subject, stream = %ack.stream, "JetStream already had this message");
                }
                Ok(true)
            }
            Err(e) => match e.kind() {
                // No stream answered. A plain subscriber on the subject (a monitoring
                // `nats sub`, say) takes the request without answering, which looks like a
                // timeout: ask JetStream in both cases.
                PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut => {
                    match self.no_stream(p, deadline).await {
                        Missing::NoSubscriber => {
                            tracing::debug!(subject = %p.subject, "event without subscribers dropped");
                            Ok(true)
                        }
                        Missing::Unroutable(err) => Err(err),
                        Missing::Transient => Ok(false),
                    }
                }
                PublishErrorKind::Other if is_api_error(&e) => {
                    let storing = format!(
                        "JetStream did not store the message for {}",
                        p.out.destination
                    );
                    Err(TransportError::refused(storing, e))
                }
                _ => {
                    tracing::debug!(error = %e, subject = %p.subject, "no publish ack; will retry");
                    Ok(false)
                }
            },
        }
    }

    /// Publish the messages, then wait for their acks (pipelined). Returns the ones to try
    /// again.
    async fn publish_round<'a>(
        &self,
        pending: Vec<(Prepared<'a>, HeaderMap)>,
        deadline: Instant,
    ) -> Result<Vec<Prepared<'a>>, TransportError> {
        let mut started = Vec::with_capacity(pending.len());
        for (p, headers) in pending {
            let ack = self.start_publish(&p, headers, deadline).await?;
            started.push((p, ack));
        }
        let mut again = Vec::new();
        for (p, ack) in started {
            let stored = match ack {
                Some(ack) => self.finish_publish(&p, ack, deadline).await?,
                None => false,
            };
            if !stored {
                again.push(p);
            }
        }
        Ok(again)
    }

    /// Try the messages that were not stored again, with growing pauses, until all are or the
    /// deadline passes. Each try carries the same `Nats-Msg-Id`: JetStream stores each message
    /// once.
    async fn publish_again(
        &self,
        mut pending: Vec<Prepared<'_>>,
        deadline: Instant,
    ) -> Result<(), TransportError> {
        let mut pause = Duration::from_millis(50);
        while !pending.is_empty() {
            if Instant::now() + pause >= deadline {
                return Err(self.publish_timed_out());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            let round = pending
                .into_iter()
                .map(|p| {
                    let headers = p.headers();
                    (p, headers)
                })
                .collect();
            pending = self.publish_round(round, deadline).await?;
        }
        Ok(())
    }

    fn publish_timed_out(&self) -> TransportError {
        TransportError::timeout(
            "publishing (waiting for the JetStream ack)",
            self.inner.config.publish_timeout,
        )
    }
}

/// How long a connection attempt runs before the servers are asked, on the side, what they
/// speak: a NATS server greets a client at once.
const PROBE_AFTER: Duration = Duration::from_millis(500);
/// Longest wait for a server to say what it speaks.
const PROBE_WITHIN: Duration = Duration::from_secs(2);

/// Connect the client within the connect timeout, explaining a failure.
///
/// A server that is no NATS server (an AMQP broker, Redis) never sends the greeting a NATS
/// client waits for, so the attempt alone would end at the connect timeout with nothing said
/// about why. Once it runs longer than a NATS server takes to greet, each server is asked what
/// it speaks ([`bus_core::probe::identify`]); when none speaks NATS and one speaks something
/// else, the attempt ends there with [`NatsError::WrongProtocol`]. A failure of any other kind
/// (not a refused login) is explained the same way, with the probe's own short limit.
async fn connect_client(
    config: &NatsConfig,
    options: ConnectOptions,
    addrs: Vec<ServerAddr>,
    url: &str,
) -> Result<async_nats::Client, NatsError> {
    let targets: Vec<String> = addrs.iter().map(host_port).collect();
    let connecting = timeout(config.connect_timeout, options.connect(addrs));
    let mut connecting = std::pin::pin!(connecting);
    let probing = async {
        tokio::time::sleep(PROBE_AFTER.min(config.connect_timeout / 2)).await;
        identify_all(&targets).await
    };
    let mut probing = std::pin::pin!(probing);
    let mut probed = false;
    let outcome = loop {
        tokio::select! {
            biased;
            outcome = &mut connecting => break outcome,
            found = &mut probing, if !probed => {
                probed = true;
                // Another server of the list may still be a NATS server: wait for it then.
                if !found.iter().any(|(_, p)| *p == Some(Protocol::Nats)) {
                    if let Some(wrong) = wrong_server(found) {
                        return Err(wrong);
                    }
                }
            }
        }
    };
    let timed_out = || NatsError::Timeout {
        operation: "connecting to the NATS server",
        after: config.connect_timeout,
    };
    let failure = match outcome {
        Ok(Ok(client)) => return Ok(client),
        Err(_) => timed_out(),
        Ok(Err(e)) => {
            let reason = config.scrub(&e.to_string());
            match e.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    return Err(NatsError::Authentication {
                        url: url.to_string(),
                        reason,
                    })
                }
                ConnectErrorKind::TimedOut => timed_out(),
                _ => NatsError::Connection {
                    url: url.to_string(),
                    reason,
                },
            }
        }
    };
    if !probed {
        if let Some(wrong) = wrong_server(identify_all(&targets).await) {
            return Err(wrong);
        }
    }
    Err(failure)
}

/// `host:port` of a server, as [`bus_core::probe::identify`] connects to it (never with
/// credentials).
fn host_port(addr: &ServerAddr) -> String {
    let host = addr.host();
    if host.contains(':') {
        format!("[{host}]:{}", addr.port())
    } else {
        format!("{host}:{}", addr.port())
    }
}

/// What each server speaks, asked all at once.
async fn identify_all(targets: &[String]) -> Vec<(String, Option<Protocol>)> {
    let asking = targets.iter().map(|t| probe::identify(t, PROBE_WITHIN));
    let found = futures_util::future::join_all(asking).await;
    targets.iter().cloned().zip(found).collect()
}

/// The first server that answered in another protocol than NATS.
fn wrong_server(found: Vec<(String, Option<Protocol>)>) -> Option<NatsError> {
    found.into_iter().find_map(|(addr, p)| match p {
        Some(p) if p != Protocol::Nats => Some(NatsError::WrongProtocol {
            addr,
            found: Some(p),
        }),
        _ => None,
    })
}

enum Missing {
    NoSubscriber,
    Unroutable(TransportError),
    Transient,
}

/// When a message is scheduled for, if it is scheduled for later than now (and is no delayed
/// retry, which keeps its own mechanism).
fn scheduled_at(message: &Outgoing) -> Option<SystemTime> {
    if message.delay.is_some_and(|d| !d.is_zero()) {
        return None;
    }
    message.scheduled_after(SystemTime::now())
}

/// Whether a message does not take the usual JetStream publish (see `send_special`).
fn is_special(message: &Outgoing) -> bool {
    matches!(message.destination, Destination::Reply(_))
        || (message.deliver_at.is_some() && scheduled_at(message).is_some())
}

/// Whether a publish error carries JetStream's own refusal (as opposed to a transport problem).
pub(crate) fn is_api_error(e: &jetstream::context::PublishError) -> bool {
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
        if is_special(&message) {
            if let Some(done) = self.send_special(&message).await {
                return done;
            }
        }
        // One message on its own: no batch to collect it in, and the batch's retries only
        // when the first try did not store it.
        let (p, headers) = self.prepare(&message)?;
        let deadline = Instant::now() + self.inner.config.publish_timeout;
        let stored = match self.start_publish(&p, headers, deadline).await? {
            Some(ack) => self.finish_publish(&p, ack, deadline).await?,
            None => false,
        };
        if stored {
            return Ok(());
        }
        self.publish_again(vec![p], deadline).await
    }

    /// Messages to streams are published together (pipelined); scheduled messages and
    /// replies go after them, one by one, so that a reply never reports work whose messages
    /// JetStream has not stored.
    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<(), TransportError> {
        let (special, plain): (Vec<&Outgoing>, Vec<&Outgoing>) = if messages.iter().any(is_special)
        {
            messages.iter().partition(|m| is_special(m))
        } else {
            (Vec::new(), messages.iter().collect())
        };
        let pending = plain
            .into_iter()
            .map(|m| self.prepare(m))
            .collect::<Result<Vec<_>, _>>()?;
        let deadline = Instant::now() + self.inner.config.publish_timeout;
        let again = self.publish_round(pending, deadline).await?;
        self.publish_again(again, deadline).await?;
        for message in special {
            match self.send_special(message).await {
                Some(done) => done?,
                // Its time came meanwhile: now an ordinary send.
                None => self.send(message.clone()).await?,
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let sub = NatsSubscription::start(self.clone(), endpoint, options).await?;
        Ok(Box::new(sub))
    }

    /// A core NATS subscription on `[<namespace>.]<prefix>.reply.<instance>`, which is the
    /// address. Replies are plain NATS messages, in no stream: one to an address nobody
    /// listens on any more is dropped by the server, and the address is gone with the
    /// subscription or the connection.
    async fn open_replies(&self, instance: &str) -> Result<ReplyChannel, TransportError> {
        replies::open(self, instance).await
    }

    /// The due messages of the bus-wide scheduled stream, from its durable consumer (both
    /// created if missing). See the crate docs on scheduled messages.
    async fn subscribe_due(&self) -> Result<Option<Box<dyn Subscription>>, TransportError> {
        schedule::subscribe_due(self).await.map(Some)
    }

    /// Deletes the scheduled message from the scheduled stream, found by the subject its id
    /// gives. `false` when no message with this id waits there, and when its due time has
    /// come: it is then the delivering buses' (it may be on its way already).
    async fn cancel_scheduled(&self, id: &MessageId) -> Result<bool, TransportError> {
        schedule::cancel(self, id).await
    }

    /// The `max_payload` of the server of the current connection (1 MiB unless the server is
    /// configured otherwise): the largest message, headers included, the server takes. A send
    /// of a larger one fails at once with [`TransportError::Refused`], without reaching the
    /// server (which would drop the whole connection).
    fn limits(&self) -> TransportLimits {
        match self.inner.max_payload.get(&self.inner.client) {
            0 => TransportLimits::default(),
            max => TransportLimits::with_max_message_size(max),
        }
    }

    /// Messages of the endpoint's stream (input) or error stream, oldest first, read by
    /// sequence and left in place: nothing is delivered or counted as a delivery. The input
    /// queue shows every message not acked yet, those being handled right now included (the
    /// stream's work-queue retention removes a message once it is acked); delayed retries
    /// waiting to be due are in the delay stream and not shown. A queue whose stream does not
    /// exist is [`TransportError::Unroutable`]. Each read waits at most the request timeout.
    async fn browse(
        &self,
        endpoint: &str,
        queue: QueueKind,
        limit: usize,
    ) -> Result<Vec<Envelope>, TransportError> {
        browse::browse(self, endpoint, queue, limit).await
    }

    /// For each id, the oldest message with that id in the endpoint's stream (input) or error
    /// stream, deleted by its sequence; the others stay in place and in order. Nothing is
    /// delivered or counted to find them. A message of the input stream being handled right
    /// now is removed too (its handler still finishes). A queue whose stream does not exist
    /// is [`TransportError::Unroutable`]. Each request waits at most the request timeout.
    async fn remove(
        &self,
        endpoint: &str,
        queue: QueueKind,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, TransportError> {
        remove::remove(self, endpoint, queue, ids).await
    }

    /// The endpoints whose input streams exist under this transport's naming (namespace and
    /// stream prefix), with the messages of their input and error streams. Consumers are
    /// `None`: the instances of an endpoint share one durable pull consumer, and the server
    /// does not count the clients pulling from it.
    async fn endpoints(&self) -> Result<Vec<EndpointInfo>, TransportError> {
        endpoints::endpoints(self).await
    }

    /// Deletes, for each endpoint, its input stream and the consumer on it, its delay stream
    /// and the consumer on it, and its error stream, then the stream of each event the
    /// endpoints subscribe to, unless an endpoint outside `topology` still takes that event
    /// (its stream sources the event stream): that one is kept. Reports each as
    /// `Declared { kind: "stream", name: <stream> }` or
    /// `Declared { kind: "consumer", name: "<stream>/<consumer>" }`, in that order. Messages in
    /// them are gone with them. Stop the buses hosting these endpoints first: their
    /// subscriptions would otherwise keep failing to find their consumers.
    async fn teardown(
        &self,
        topology: &Topology,
        dry_run: bool,
    ) -> Result<Vec<Declared>, TransportError> {
        topology::teardown(&self.inner.js, &self.inner.config, topology, dry_run).await
    }
}
