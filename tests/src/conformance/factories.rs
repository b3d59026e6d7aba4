//! The factories of the four transports: how each one is built for a test of the suite, in
//! its own corner of its broker, and cleaned up after it.
//!
//! Each has an opener for [`conformance_suite!`](crate::conformance_suite), taking the test's
//! name and returning `None` when the test is skipped: a broker that is unreachable prints why
//! and skips, or fails the test instead when `BUS_REQUIRE_BROKERS=1` (see [`crate::broker`]).

use std::sync::Arc;
use std::time::Duration;

use bus_core::{async_trait, Transport};
use bus_transport_memory::MemoryTransport;

use super::factory::{Features, TransportFactory};
use crate::broker::AmqpScope;
use crate::nats_broker::NatsScope;
use crate::redis_broker::RedisScope;

/// The in-memory transport: every client is a clone of one [`MemoryTransport`].
pub struct MemoryFactory {
    name: &'static str,
    transport: MemoryTransport,
}

impl MemoryFactory {
    /// Typed bodies (the transport's default).
    pub fn typed() -> Self {
        MemoryFactory {
            name: "memory",
            transport: MemoryTransport::new(),
        }
    }

    /// Bodies serialized to bytes, as a broker would carry them.
    pub fn serialized() -> Self {
        MemoryFactory {
            name: "memory-serialized",
            transport: MemoryTransport::new().serialize(true),
        }
    }

    /// [`MemoryFactory::typed`] for a test of the suite; never skips, as there is no broker to
    /// reach.
    pub async fn open_typed(_test: &str) -> Option<Self> {
        Some(Self::typed())
    }

    /// [`MemoryFactory::serialized`] for a test of the suite; never skips.
    pub async fn open_serialized(_test: &str) -> Option<Self> {
        Some(Self::serialized())
    }

    /// The transport every client clones.
    pub fn memory(&self) -> &MemoryTransport {
        &self.transport
    }
}

#[async_trait]
impl TransportFactory for MemoryFactory {
    fn name(&self) -> &str {
        self.name
    }

    fn features(&self) -> Features {
        Features {
            typed_bodies: self.transport.carries_typed_messages(),
            ordered_per_key: true,
            exact_delivery_count: true,
            prefetch: true,
            delayed_delivery: true,
            sent_at_whole_seconds: false,
            survives_restart: false,
            cancels_scheduled: true,
            schedule_precision: Duration::from_millis(500),
        }
    }

    async fn transport(&self, _label: &str) -> Arc<dyn Transport> {
        Arc::new(self.transport.clone())
    }

    async fn queue_depth(&self, endpoint: &str) -> Option<usize> {
        self.transport.depth(endpoint)
    }

    fn quiet_period(&self) -> Duration {
        Duration::from_millis(100)
    }
}

/// RabbitMQ: every client is a new connection in one test's [`AmqpScope`] (unique queue and
/// exchange names; the connection name is the scope's prefix plus the label).
/// [`TransportFactory::cleanup`] deletes the scope's queues and exchange.
pub struct AmqpFactory {
    scope: AmqpScope,
}

impl AmqpFactory {
    /// Clients in this scope.
    pub fn new(scope: AmqpScope) -> Self {
        AmqpFactory { scope }
    }

    /// Clients in a new scope named after `test`, or `None` (skipped) when RabbitMQ is
    /// unreachable.
    pub async fn open(test: &str) -> Option<Self> {
        AmqpScope::new(test).await.map(Self::new)
    }

    /// The scope.
    pub fn scope(&self) -> &AmqpScope {
        &self.scope
    }

    fn prefix(&self) -> &str {
        &self.scope.naming.queue_prefix
    }
}

#[async_trait]
impl TransportFactory for AmqpFactory {
    fn name(&self) -> &str {
        "amqp"
    }

    fn features(&self) -> Features {
        Features {
            typed_bodies: false,
            ordered_per_key: true,
            exact_delivery_count: false,
            prefetch: true,
            delayed_delivery: true,
            sent_at_whole_seconds: true,
            survives_restart: true,
            cancels_scheduled: false,
            schedule_precision: Duration::from_secs(2),
        }
    }

    async fn transport(&self, label: &str) -> Arc<dyn Transport> {
        Arc::new(
            self.scope
                .transport(&format!("{}{label}", self.prefix()))
                .await,
        )
    }

    /// Channels of this scope's connections, from `rabbitmqctl list_connections`.
    async fn open_resources(&self) -> Option<usize> {
        let out = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "-q",
                "client_properties",
                "channels",
                "--formatter",
                "json",
            ])
            .output()
            .await
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let mut channels = 0;
        for row in rows.as_array()? {
            let name = connection_name(&row["client_properties"]);
            if name.is_some_and(|n| n.starts_with(self.prefix())) {
                channels += row["channels"].as_u64().unwrap_or(0) as usize;
            }
        }
        Some(channels)
    }

    async fn queue_depth(&self, endpoint: &str) -> Option<usize> {
        Some(self.scope.ready(&self.scope.naming.queue(endpoint)).await as usize)
    }

    fn quiet_period(&self) -> Duration {
        Duration::from_millis(300)
    }

    async fn cleanup(&self) {
        self.scope.cleanup().await;
    }
}

/// The `connection_name` client property, as `rabbitmqctl ... --formatter json` prints it:
/// a list of `[name, type, value]` triples.
fn connection_name(properties: &serde_json::Value) -> Option<String> {
    properties.as_array()?.iter().find_map(|p| {
        let p = p.as_array()?;
        if p.first()?.as_str()? != "connection_name" {
            return None;
        }
        p.get(2)?.as_str().map(String::from)
    })
}

/// NATS JetStream: every client is a new connection under one test's [`NatsScope`] (unique
/// subject and stream prefix), as another process would be. [`TransportFactory::cleanup`]
/// deletes the scope's streams.
pub struct NatsFactory {
    scope: NatsScope,
}

impl NatsFactory {
    /// Clients in this scope.
    pub fn new(scope: NatsScope) -> Self {
        NatsFactory { scope }
    }

    /// Clients in a new scope named after `test`, or `None` (skipped) when NATS is unusable.
    pub async fn open(test: &str) -> Option<Self> {
        NatsScope::new(test).await.map(Self::new)
    }

    /// The scope.
    pub fn scope(&self) -> &NatsScope {
        &self.scope
    }
}

#[async_trait]
impl TransportFactory for NatsFactory {
    fn name(&self) -> &str {
        "nats"
    }

    fn features(&self) -> Features {
        Features {
            typed_bodies: false,
            // One pull consumer hands out a stream in order.
            ordered_per_key: true,
            // JetStream counts every delivery, nacks included.
            exact_delivery_count: true,
            prefetch: true,
            // Through the endpoint's delay stream.
            delayed_delivery: true,
            // The sent time travels as RFC 3339 with nanoseconds.
            sent_at_whole_seconds: false,
            // File-backed streams and durable consumers.
            survives_restart: true,
            cancels_scheduled: true,
            schedule_precision: Duration::from_secs(2),
        }
    }

    async fn transport(&self, label: &str) -> Arc<dyn Transport> {
        Arc::new(self.scope.transport(label).await)
    }

    /// Messages in the endpoint's work-queue stream: acked ones are removed, so this is what is
    /// ready plus what is handed out and not yet settled.
    async fn queue_depth(&self, endpoint: &str) -> Option<usize> {
        let n = self
            .scope
            .stored(&self.scope.naming.endpoint_stream(endpoint))
            .await;
        usize::try_from(n).ok()
    }

    /// Longer than a pull round trip plus a nak's redelivery.
    fn quiet_period(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn cleanup(&self) {
        self.scope.cleanup().await;
    }
}

/// Redis Streams: every client is a new transport (its own connections) under one test's
/// [`RedisScope`] (unique key prefix), as another process would be.
/// [`TransportFactory::cleanup`] deletes the scope's keys.
pub struct RedisFactory {
    scope: RedisScope,
}

impl RedisFactory {
    /// Clients in this scope.
    pub fn new(scope: RedisScope) -> Self {
        RedisFactory { scope }
    }

    /// Clients in a new scope named after `test`, or `None` (skipped) when Redis is
    /// unreachable.
    pub async fn open(test: &str) -> Option<Self> {
        RedisScope::new(test).await.map(Self::new)
    }

    /// The scope.
    pub fn scope(&self) -> &RedisScope {
        &self.scope
    }
}

#[async_trait]
impl TransportFactory for RedisFactory {
    fn name(&self) -> &str {
        "redis"
    }

    fn features(&self) -> Features {
        Features {
            typed_bodies: false,
            // One consumer reads a stream in entry order.
            ordered_per_key: true,
            // New entries count 1; a nack is not counted, the take-over that follows is.
            exact_delivery_count: true,
            prefetch: true,
            delayed_delivery: true,
            // The sent time travels as RFC 3339 with nanoseconds.
            sent_at_whole_seconds: false,
            // Redis's persistence decides; the test server keeps nothing on disk.
            survives_restart: false,
            cancels_scheduled: true,
            schedule_precision: Duration::from_secs(2),
        }
    }

    async fn transport(&self, label: &str) -> Arc<dyn Transport> {
        Arc::new(self.scope.transport(label).await)
    }

    /// Entries in the endpoint's stream: acked entries are deleted, so this is what is ready
    /// plus what is handed out and not yet settled.
    async fn queue_depth(&self, endpoint: &str) -> Option<usize> {
        let mut raw = self.scope.raw().await;
        redis::cmd("XLEN")
            .arg(self.scope.keys.stream(endpoint))
            .query_async(&mut raw)
            .await
            .ok()
    }

    /// Longer than a blocking read plus a look for nacked deliveries (200 ms each here).
    fn quiet_period(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn cleanup(&self) {
        self.scope.cleanup().await;
    }
}
