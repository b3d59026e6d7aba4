//! [`ConfiguredTransport`]: the transport the configuration opened, with its concrete type.

use std::sync::Arc;

use bus_core::{Transport, TransportError};
use bus_transport_amqp::AmqpTransport;
use bus_transport_memory::MemoryTransport;
use bus_transport_nats::NatsTransport;
use bus_transport_redis::RedisTransport;

/// The transport [`crate::TransportSettings::open`] opened.
///
/// [`ConfiguredTransport::shared`] gives it to a bus; the variants reach what only one kind
/// offers (the in-memory error queues, closing an AMQP or NATS connection, the NATS client,
/// the Redis key names).
///
/// ```
/// use bus_transport_config::{ConfiguredTransport, TransportSettings};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let transport = TransportSettings::default().open("demo").await?;
/// let bus = bus_core::Bus::builder()
///     .transport_arc(transport.shared())
///     .start()
///     .await?;
/// if let ConfiguredTransport::Memory(memory) = &transport {
///     assert!(memory.error_queue("sales").is_empty());
/// }
/// bus.shutdown().await;
/// transport.close().await?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ConfiguredTransport {
    /// The embedded in-memory transport.
    Memory(MemoryTransport),
    /// RabbitMQ.
    Amqp(AmqpTransport),
    /// NATS JetStream.
    Nats(NatsTransport),
    /// Redis Streams.
    Redis(RedisTransport),
}

impl ConfiguredTransport {
    /// The transport as a bus takes it ([`bus_core::BusBuilder::transport_arc`]). Clones
    /// share one connection (or, in memory, one set of queues).
    pub fn shared(&self) -> Arc<dyn Transport> {
        match self {
            ConfiguredTransport::Memory(t) => Arc::new(t.clone()),
            ConfiguredTransport::Amqp(t) => Arc::new(t.clone()),
            ConfiguredTransport::Nats(t) => Arc::new(t.clone()),
            ConfiguredTransport::Redis(t) => Arc::new(t.clone()),
        }
    }

    /// A short name for logs: `memory`, `amqp`, `nats` or `redis`.
    pub fn name(&self) -> &str {
        match self {
            ConfiguredTransport::Memory(t) => t.name(),
            ConfiguredTransport::Amqp(t) => t.name(),
            ConfiguredTransport::Nats(t) => t.name(),
            ConfiguredTransport::Redis(t) => t.name(),
        }
    }

    /// The in-memory transport, if that is what the configuration chose.
    pub fn as_memory(&self) -> Option<&MemoryTransport> {
        match self {
            ConfiguredTransport::Memory(t) => Some(t),
            _ => None,
        }
    }

    /// The AMQP transport, if that is what the configuration chose.
    pub fn as_amqp(&self) -> Option<&AmqpTransport> {
        match self {
            ConfiguredTransport::Amqp(t) => Some(t),
            _ => None,
        }
    }

    /// The NATS transport, if that is what the configuration chose.
    pub fn as_nats(&self) -> Option<&NatsTransport> {
        match self {
            ConfiguredTransport::Nats(t) => Some(t),
            _ => None,
        }
    }

    /// The Redis transport, if that is what the configuration chose.
    pub fn as_redis(&self) -> Option<&RedisTransport> {
        match self {
            ConfiguredTransport::Redis(t) => Some(t),
            _ => None,
        }
    }

    /// Close the broker connection gracefully (after [`bus_core::Bus::shutdown`]): AMQP
    /// returns anything still unacknowledged to its queue at once, NATS flushes what is
    /// buffered and drains the connection. Nothing to do in memory, nor on Redis, whose
    /// connections close when the last clone of the transport is dropped (its unsettled
    /// deliveries are taken over by another consumer after the reclaim idle time).
    pub async fn close(&self) -> Result<(), TransportError> {
        match self {
            ConfiguredTransport::Memory(_) | ConfiguredTransport::Redis(_) => Ok(()),
            ConfiguredTransport::Amqp(t) => t.close().await,
            ConfiguredTransport::Nats(t) => t.close().await,
        }
    }
}
