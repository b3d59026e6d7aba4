//! [`ConfiguredTransport`]: the transport the configuration opened, with its concrete type.

use std::sync::Arc;

use bus_core::{Transport, TransportError};
use bus_transport_amqp::AmqpTransport;
use bus_transport_memory::MemoryTransport;

/// The transport [`crate::TransportSettings::open`] opened.
///
/// [`ConfiguredTransport::shared`] gives it to a bus; the variants reach what only one kind
/// offers (the in-memory error queues, closing an AMQP connection).
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
}

impl ConfiguredTransport {
    /// The transport as a bus takes it ([`bus_core::BusBuilder::transport_arc`]). Clones
    /// share one connection (or, in memory, one set of queues).
    pub fn shared(&self) -> Arc<dyn Transport> {
        match self {
            ConfiguredTransport::Memory(t) => Arc::new(t.clone()),
            ConfiguredTransport::Amqp(t) => Arc::new(t.clone()),
        }
    }

    /// A short name for logs: `memory` or `amqp`.
    pub fn name(&self) -> &str {
        match self {
            ConfiguredTransport::Memory(t) => t.name(),
            ConfiguredTransport::Amqp(t) => t.name(),
        }
    }

    /// The in-memory transport, if that is what the configuration chose.
    pub fn as_memory(&self) -> Option<&MemoryTransport> {
        match self {
            ConfiguredTransport::Memory(t) => Some(t),
            ConfiguredTransport::Amqp(_) => None,
        }
    }

    /// The AMQP transport, if that is what the configuration chose.
    pub fn as_amqp(&self) -> Option<&AmqpTransport> {
        match self {
            ConfiguredTransport::Amqp(t) => Some(t),
            ConfiguredTransport::Memory(_) => None,
        }
    }

    /// Close the broker connection gracefully (after [`bus_core::Bus::shutdown`]); the
    /// broker then returns anything still unacknowledged to its queue at once. Nothing to do
    /// in memory.
    pub async fn close(&self) -> Result<(), TransportError> {
        match self {
            ConfiguredTransport::Memory(_) => Ok(()),
            ConfiguredTransport::Amqp(t) => t.close().await,
        }
    }
}
