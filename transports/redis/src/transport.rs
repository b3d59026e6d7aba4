//! [`RedisTransport`]: the bus's transport over Redis Streams.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bus_core::probe::{self, Protocol};
use bus_core::{
    async_trait, Declared, Destination, EndpointInfo, EndpointTopology, Envelope, MessageId,
    Outgoing, QueueKind, ReplyChannel, SubscribeOptions, Subscription, Topology, Transport,
    TransportError,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, ErrorKind, RedisResult, ServerErrorKind};
use tokio::time::{timeout, Instant};

use crate::config::RedisConfig;
use crate::error::RedisError;
use crate::subscription::RedisSubscription;
use crate::{replies, schedule, scripts, wire};

/// The Redis Streams transport.
///
/// Each endpoint has a stream read by a consumer group of the same name; every subscription
/// is a consumer of its own, so instances compete. Commands are appended to the owning
/// endpoint's stream, if the endpoint is declared (else [`TransportError::Unroutable`]);
/// events are appended to the stream of every subscribed endpoint. A send returns `Ok` once
/// Redis has executed the write. See the crate docs for keys, delays and reclaiming.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use bus_transport_redis::{RedisConfig, RedisTransport};
///
/// let transport = RedisTransport::connect(
///     RedisConfig::new("redis://127.0.0.1:6379").consumer_name("billing"),
/// )
/// .await?;
/// let bus = bus_core::Bus::builder().transport(transport).start().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisTransport {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    client: redis::Client,
    conn: ConnectionManager,
    connected: AtomicBool,
    instance: String,
    next_consumer: AtomicU64,
    /// Everything declared through this transport, declared again if Redis lost it (a
    /// restart without persistence); teardown removes what it deletes.
    pub(crate) declared: Mutex<Vec<EndpointTopology>>,
}

impl std::fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTransport")
            .field("config", &self.inner.config)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl RedisTransport {
    /// Connect and return the transport. Wrong credentials fail at once with
    /// [`RedisError::Authentication`]; an unreachable server within the connect timeout. A
    /// server that answers but does not speak Redis (the port of another broker) fails with
    /// [`RedisError::WrongProtocol`], which names the protocol that answered when it is one
    /// [`bus_core::probe::identify`] knows; finding out takes at most two more seconds, within
    /// the connect timeout.
    pub async fn connect(config: RedisConfig) -> Result<Self, RedisError> {
        let url = config.checked_url()?;
        let client = match (&config.tls_ca_file, config.is_tls()) {
            (Some(ca), true) => {
                let pem = std::fs::read(ca).map_err(|e| {
                    RedisError::Config(format!("reading the CA file {}: {e}", ca.display()))
                })?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            (Some(_), false) => {
                return Err(RedisError::Config(
                    "a CA file is set but the URL is redis://; use rediss:// for TLS".into(),
                ))
            }
            (None, _) => redis::Client::open(url),
        }
        .map_err(|e| RedisError::Config(config.scrub(&e.to_string())))?;
        // One plain connection first, without retries, so a bad password or an unreachable
        // server is reported at once.
        let first = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.operation_timeout));
        let deadline = Instant::now() + config.connect_timeout;
        match timeout(
            config.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&first),
        )
        .await
        {
            Err(_) => {
                return Err(RedisError::Timeout {
                    operation: "connecting to Redis",
                    after: config.connect_timeout,
                })
            }
            Ok(Err(e)) => return Err(connect_failure(&config, e, deadline).await),
            Ok(Ok(_)) => {}
        }
        let conn = manager(&client, &config, config.operation_timeout).await?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        tracing::info!(url = %config.redacted_url(), keys = %config.keys.root(), "connected to Redis");
        Ok(RedisTransport {
            inner: Arc::new(Inner {
                instance: format!("{}-{}", std::process::id(), &id[id.len() - 8..]),
                config,
                client,
                conn,
                connected: AtomicBool::new(true),
                next_consumer: AtomicU64::new(1),
                declared: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// A handle on the shared connection (cheap: connections are multiplexed).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// A connection of its own, for a subscription's blocking reads, which would hold up
    /// every other command on a shared connection.
    pub(crate) async fn dedicated_connection(&self) -> Result<ConnectionManager, TransportError> {
        let c = &self.inner.config;
        manager(&self.inner.client, c, c.block_timeout + c.operation_timeout)
            .await
            .map_err(TransportError::from)
    }

    /// A consumer name no other subscription uses.
    pub(crate) fn consumer_name(&self) -> String {
        format!(
            "{}-{}-{}",
            self.inner.config.consumer_name,
            self.inner.instance,
            self.inner.next_consumer.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Run one Redis call within the operation timeout, keeping the connection state fresh.
    pub(crate) async fn run<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, TransportError> {
        self.run_within(operation, self.inner.config.operation_timeout, call)
            .await
            .map_err(|e| e.into_transport(operation, None))
    }

    /// Like [`RedisTransport::run`] with another limit, keeping the client's error.
    pub(crate) async fn run_within<T>(
        &self,
        operation: &'static str,
        limit: Duration,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, CallError> {
        match timeout(limit, call).await {
            Err(_) => {
                self.set_connected(false);
                Err(CallError::Transport(TransportError::timeout(
                    operation, limit,
                )))
            }
            Ok(Err(e)) => {
                if is_connection_error(&e) {
                    self.set_connected(false);
                } else {
                    self.set_connected(true);
                }
                if e.code() == Some("NOGROUP") {
                    return Err(CallError::NoGroup);
                }
                Err(CallError::Transport(redis_error(operation, e)))
            }
            Ok(Ok(v)) => {
                self.set_connected(true);
                Ok(v)
            }
        }
    }

    pub(crate) fn set_connected(&self, up: bool) {
        let was = self.inner.connected.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!(url = %self.inner.config.redacted_url(), "Redis reachable again");
            } else {
                tracing::warn!(url = %self.inner.config.redacted_url(), "Redis unreachable; reconnecting");
            }
        }
    }

    /// Create the consumer group (reading from the start of the stream, so nothing appended
    /// before it is skipped) and register the endpoint and its event subscriptions.
    pub(crate) async fn declare_endpoint(
        &self,
        ep: &EndpointTopology,
    ) -> Result<(), TransportError> {
        let keys = &self.inner.config.keys;
        self.ensure_group(&ep.name).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(keys.endpoints())
            .arg(&ep.name)
            .ignore();
        for event in &ep.events {
            pipe.cmd("SADD")
                .arg(keys.subscribers(event))
                .arg(&ep.name)
                .ignore();
        }
        let mut conn = self.conn();
        self.run("registering an endpoint", pipe.query_async::<()>(&mut conn))
            .await
    }

    async fn ensure_group(&self, endpoint: &str) -> Result<(), TransportError> {
        let keys = &self.inner.config.keys;
        let mut conn = self.conn();
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(keys.stream(endpoint))
            .arg(keys.group(endpoint))
            .arg("0")
            .arg("MKSTREAM");
        let create = async {
            match cmd.query_async::<()>(&mut conn).await {
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                other => other,
            }
        };
        self.run("creating a consumer group", create).await
    }

    /// After Redis lost its data (a restart without persistence): declare again what this
    /// transport declared, and in any case `endpoint`, which a subscription only reads once
    /// it was declared.
    pub(crate) async fn redeclare(&self, endpoint: &str) -> Result<(), TransportError> {
        let known = self
            .inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tracing::warn!(
            endpoint,
            "the consumer group is gone (Redis lost its data?); declaring the topology again"
        );
        for ep in &known {
            self.declare_endpoint(ep).await?;
        }
        if known.iter().any(|ep| ep.name == endpoint) {
            return Ok(());
        }
        self.declare_endpoint(&EndpointTopology {
            name: endpoint.to_string(),
            ..EndpointTopology::default()
        })
        .await
    }

    async fn send_one(&self, out: &Outgoing) -> Result<(), TransportError> {
        if let (Some(at), Destination::Endpoint(_) | Destination::Event(_)) =
            (out.scheduled_after(SystemTime::now()), &out.destination)
        {
            return schedule::store(self, out, at).await;
        }
        let keys = &self.inner.config.keys;
        let fields = wire::fields(&out.envelope)?;
        let mut conn = self.conn();
        match (&out.destination, out.delay.filter(|d| !d.is_zero())) {
            (Destination::Endpoint(endpoint), delay) => {
                let mut call = scripts::SEND.key(keys.endpoints());
                call.arg(&**endpoint);
                match delay {
                    None => {
                        call.key(keys.stream(endpoint)).arg("");
                        for f in &fields {
                            call.arg(f.as_slice());
                        }
                    }
                    Some(d) => {
                        let token = uuid::Uuid::now_v7().simple().to_string();
                        call.key(keys.delayed(endpoint))
                            .arg(d.as_millis().max(1).to_string())
                            .arg(wire::delayed_member(&token, &fields));
                    }
                }
                let routed: i64 = self
                    .run("sending a command", call.invoke_async(&mut conn))
                    .await?;
                if routed == 0 {
                    // Reads "... for endpoint `billing`; ..." in the error's message.
                    return Err(TransportError::Unroutable(out.destination.to_string()));
                }
                Ok(())
            }
            (Destination::ErrorQueue(endpoint), _) => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(keys.error_stream(endpoint)).arg("*");
                for f in &fields {
                    cmd.arg(f.as_slice());
                }
                self.run(
                    "writing to the error stream",
                    cmd.query_async::<redis::Value>(&mut conn),
                )
                .await
                .map(drop)
            }
            (Destination::Event(name), None) => {
                let mut call = scripts::PUBLISH.key(keys.subscribers(name));
                call.arg(keys.stream_prefix());
                for f in &fields {
                    call.arg(f.as_slice());
                }
                let subscribers: i64 = self
                    .run("publishing an event", call.invoke_async(&mut conn))
                    .await?;
                tracing::trace!(event = %name, subscribers, "event published");
                Ok(())
            }
            (Destination::Reply(address), _) => replies::send(self, address, out, &fields).await,
            (Destination::Event(name), Some(_)) => Err(TransportError::Other {
                context: format!("event `{name}` cannot be delayed; only endpoint messages can"),
                source: None,
            }),
        }
    }
}

/// A failed call: the consumer group is missing (handled by declaring again), or anything else.
pub(crate) enum CallError {
    NoGroup,
    Transport(TransportError),
}

impl CallError {
    /// The error for the bus. A missing group of a known `endpoint` means its queue is gone
    /// (Redis lost its data, or the endpoint was torn down): unroutable, like a send to it.
    pub(crate) fn into_transport(
        self,
        operation: &'static str,
        endpoint: Option<&str>,
    ) -> TransportError {
        match (self, endpoint) {
            (CallError::NoGroup, Some(endpoint)) => {
                TransportError::Unroutable(Destination::Endpoint(endpoint.into()).to_string())
            }
            (CallError::NoGroup, None) => TransportError::Refused {
                context: format!(
                    "{operation}: the consumer group does not exist; declare the endpoint"
                ),
                source: None,
            },
            (CallError::Transport(e), _) => e,
        }
    }
}

impl From<TransportError> for CallError {
    fn from(e: TransportError) -> Self {
        CallError::Transport(e)
    }
}

/// What a failed call while doing `operation` means for the bus, by the client's error kind;
/// the client's error is kept as the source.
fn redis_error(operation: &'static str, e: redis::RedisError) -> TransportError {
    if e.kind() == ErrorKind::AuthenticationFailed {
        TransportError::refused(operation, e)
    } else if is_connection_error(&e) || is_unavailable(&e) {
        TransportError::connection(operation, e)
    } else if matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension) {
        TransportError::refused(operation, e)
    } else {
        TransportError::other(operation, e)
    }
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Redis answers but does not serve for the moment: it is loading its data after a restart
/// (`LOADING`), or `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`; also when it aborted a transaction
/// for one of these. Worth trying again shortly, like a dropped connection.
fn is_unavailable(e: &redis::RedisError) -> bool {
    let transient = |kind: Option<ServerErrorKind>| {
        matches!(
            kind,
            Some(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
            )
        )
    };
    match e.kind() {
        ErrorKind::Server(kind) if transient(Some(kind)) => true,
        _ => e
            .clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, s)| transient(s.kind()))),
    }
}

/// The longest look at what answered when connecting failed (see [`probe::identify`]).
const PROBE_TIME: Duration = Duration::from_secs(2);

/// The error for a first connection that failed with `e`. When the server answered something
/// that is not Redis (the client could not parse it, or it closed the connection on the
/// client's first command), ask it what it speaks, within what is left before `deadline`.
async fn connect_failure(
    config: &RedisConfig,
    e: redis::RedisError,
    deadline: Instant,
) -> RedisError {
    let plain = connect_error(config, &e);
    // Nothing listens, or nothing answers: nobody to ask. Refused credentials: it is Redis.
    if matches!(plain, RedisError::Authentication { .. })
        || e.is_connection_refusal()
        || e.is_timeout()
    {
        return plain;
    }
    let Some(address) = config.address() else {
        return plain;
    };
    let within = deadline
        .saturating_duration_since(Instant::now())
        .min(PROBE_TIME);
    if within < Duration::from_millis(100) {
        return plain;
    }
    match probe::identify(&address, within).await {
        Some(Protocol::Redis) => plain,
        Some(found) => RedisError::WrongProtocol {
            address,
            found: Some(found),
            source: e,
        },
        // Not recognized, but what came back was not Redis either.
        None if e.kind() == ErrorKind::Parse => RedisError::WrongProtocol {
            address,
            found: None,
            source: e,
        },
        None => plain,
    }
}

fn connect_error(config: &RedisConfig, e: &redis::RedisError) -> RedisError {
    let reason = config.scrub(&e.to_string());
    let url = config.redacted_url();
    // `WRONGPASS` and `NOAUTH` have no error kind of their own in the client: their codes.
    let auth = matches!(
        e.kind(),
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm)
    ) || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"));
    if auth {
        RedisError::Authentication { url, reason }
    } else {
        RedisError::Connection { url, reason }
    }
}

/// A connection manager: reconnects by itself (a few quick attempts per failure; the next
/// call after a failed round starts another).
async fn manager(
    client: &redis::Client,
    config: &RedisConfig,
    response_timeout: Duration,
) -> Result<ConnectionManager, RedisError> {
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(3)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    match timeout(
        config.connect_timeout,
        ConnectionManager::new_with_config(client.clone(), settings),
    )
    .await
    {
        Err(_) => Err(RedisError::Timeout {
            operation: "connecting to Redis",
            after: config.connect_timeout,
        }),
        Ok(Err(e)) => Err(connect_error(config, &e)),
        Ok(Ok(m)) => Ok(m),
    }
}

#[async_trait]
impl Transport for RedisTransport {
    fn name(&self) -> &str {
        "redis"
    }

    fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        for ep in &topology.endpoints {
            self.declare_endpoint(ep).await?;
            let mut known = self
                .inner
                .declared
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match known.iter_mut().find(|k| k.name == ep.name) {
                Some(k) => {
                    for e in &ep.events {
                        if !k.events.contains(e) {
                            k.events.push(e.clone());
                        }
                    }
                }
                None => known.push(ep.clone()),
            }
        }
        Ok(())
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        self.send_one(&message).await
    }

    /// Sent one after the other, in order: each returns once Redis has executed it.
    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<(), TransportError> {
        for m in &messages {
            self.send_one(m).await?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let keys = &self.inner.config.keys;
        let mut conn = self.conn();
        let declared: bool = self
            .run(
                "checking the endpoint registry",
                redis::cmd("SISMEMBER")
                    .arg(keys.endpoints())
                    .arg(endpoint)
                    .query_async(&mut conn),
            )
            .await?;
        if !declared {
            return Err(TransportError::Unroutable(
                Destination::Endpoint(endpoint.into()).to_string(),
            ));
        }
        // Bounded so the reader's channel and slots stay sane whatever is asked.
        let prefetch = options.prefetch.clamp(1, 65_536);
        let sub = RedisSubscription::start(self.clone(), endpoint, prefetch).await?;
        Ok(Box::new(sub))
    }

    /// A stream of this instance's own, `<root>:reply:<instance>`, with an expiry renewed
    /// while the channel is open and deleted when it closes; the address is `instance`. See
    /// the crate docs.
    async fn open_replies(&self, instance: &str) -> Result<ReplyChannel, TransportError> {
        replies::open(self, instance).await
    }

    /// Takes due messages from `<root>:scheduled`, competing with the other buses on the same
    /// keys; each handed out is leased, and due again when its lease runs out unsettled. See
    /// the crate docs.
    async fn subscribe_due(&self) -> Result<Option<Box<dyn Subscription>>, TransportError> {
        let due = schedule::DueSubscription::start(self).await?;
        Ok(Some(Box::new(due)))
    }

    /// Takes a scheduled message out of `<root>:scheduled` and its hash while it waits; one
    /// already handed out to a bus is being delivered and is not cancelled (`false`).
    async fn cancel_scheduled(&self, id: &MessageId) -> Result<bool, TransportError> {
        schedule::cancel(self, id).await
    }

    /// Up to `limit` entries of the endpoint's input or error stream, oldest first, left in
    /// place (`XRANGE`) and decoded as a delivery would be. For the input stream: what is
    /// still to be handled (handed out and not acked, then not handed out yet); delayed
    /// messages not yet due are in the delay set, not listed. See the crate docs.
    async fn browse(
        &self,
        endpoint: &str,
        queue: QueueKind,
        limit: usize,
    ) -> Result<Vec<Envelope>, TransportError> {
        self.browse_stream(endpoint, queue, limit).await
    }

    /// For each id, the oldest entry with that id in the endpoint's input or error stream,
    /// deleted (`XDEL`), and, in the input stream, acked in the group so no consumer takes it
    /// over; the others stay in place and in order. Each range of the stream is matched and
    /// deleted in one script call, so a consumer never sees half of it. An entry of the input
    /// stream being handled right now is removed too (its handler still finishes). A stream
    /// that does not exist has nothing to remove. See the crate docs.
    async fn remove(
        &self,
        endpoint: &str,
        queue: QueueKind,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, TransportError> {
        self.remove_entries(endpoint, queue, ids).await
    }

    /// The endpoints of the registry under this transport's keys, with the entries of their
    /// input streams (those still to handle: acked entries are deleted), the consumers of their
    /// groups, and the entries of their error streams. See the crate docs.
    async fn endpoints(&self) -> Result<Vec<EndpointInfo>, TransportError> {
        self.list_endpoints().await
    }

    /// Delete the endpoints' streams (consumer groups included), error streams and delay sets,
    /// take them out of the endpoint registry and every subscriber set, and delete the sets
    /// that leaves empty; each reported as a `stream`, `consumer group`, `sorted set`, `set`
    /// or `set member` (see the crate docs). Messages in them are lost.
    async fn teardown(
        &self,
        topology: &Topology,
        dry_run: bool,
    ) -> Result<Vec<Declared>, TransportError> {
        self.teardown_endpoints(topology, dry_run).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_is_loading_counts_as_unavailable_not_as_a_refusal() {
        let loading = redis::RedisError::from((
            ErrorKind::Server(ServerErrorKind::BusyLoading),
            "Redis is loading the dataset in memory",
        ));
        assert!(is_unavailable(&loading));
        let wrong_type = redis::RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "WRONGTYPE",
        ));
        assert!(!is_unavailable(&wrong_type));
    }
}
