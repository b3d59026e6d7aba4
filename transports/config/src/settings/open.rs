//! Opening the transport the settings name: [`TransportSettings::open`] for the
//! concrete transport, [`TransportSettings::connect`] and [`transport_from_env`] for a bus.

use std::sync::Arc;

use bus_core::Transport;
use bus_transport_amqp::AmqpTransport;
use bus_transport_nats::NatsTransport;
use bus_transport_redis::RedisTransport;

use super::{TransportKind, TransportSettings};
use crate::error::{ConfigError, ConnectCause};
use crate::transport::ConfiguredTransport;

impl TransportSettings {
    /// Open the configured transport: a new in-memory transport, or a connection to the
    /// broker (RabbitMQ, NATS or Redis). `connection_name` names the connection unless the
    /// settings name one. Use it to reach transport-specific features
    /// ([`ConfiguredTransport::as_memory`], [`ConfiguredTransport::as_nats`], ...), else prefer
    /// [`TransportSettings::connect`].
    ///
    /// ```
    /// use bus_transport_config::TransportSettings;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let transport = TransportSettings::default().open("shop").await?;
    /// assert!(transport.as_memory().is_some());
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub async fn open(&self, connection_name: &str) -> Result<ConfiguredTransport, ConfigError> {
        match self.kind()? {
            TransportKind::Memory => {
                self.validate()?;
                Ok(ConfiguredTransport::Memory(self.memory_transport()))
            }
            TransportKind::Amqp | TransportKind::Amqps => {
                let config = self.amqp_config(connection_name)?;
                let batched = self.batched_acks.unwrap_or(false);
                AmqpTransport::connect(config)
                    .await
                    .map(|t| ConfiguredTransport::Amqp(t.with_batched_acks(batched)))
                    .map_err(|cause| self.connect_error(cause.into()))
            }
            TransportKind::Nats | TransportKind::NatsTls => {
                let config = self.nats_config(connection_name)?;
                NatsTransport::connect(config)
                    .await
                    .map(ConfiguredTransport::Nats)
                    .map_err(|cause| self.connect_error(cause.into()))
            }
            TransportKind::Redis | TransportKind::RedisTls => {
                let config = self.redis_config(connection_name)?;
                RedisTransport::connect(config)
                    .await
                    .map(ConfiguredTransport::Redis)
                    .map_err(|cause| self.connect_error(cause.into()))
            }
        }
    }

    fn connect_error(&self, cause: ConnectCause) -> ConfigError {
        ConfigError::Connect {
            url: self.redacted_url(),
            cause,
        }
    }

    /// Open the configured transport, ready for [`bus_core::BusBuilder::transport_arc`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use bus_transport_config::TransportSettings;
    ///
    /// let transport = TransportSettings::load()?.connect("billing").await?;
    /// let bus = bus_core::Bus::builder()
    ///     .transport_arc(transport)
    ///     .host(["billing"])
    ///     .start()
    ///     .await?;
    /// # drop(bus); Ok(()) }
    /// ```
    pub async fn connect(&self, connection_name: &str) -> Result<Arc<dyn Transport>, ConfigError> {
        Ok(self.open(connection_name).await?.shared())
    }
}

/// [`TransportSettings::load`] then [`TransportSettings::connect`]: the transport that
/// `bus.toml` and the `BUS_*` environment variables choose.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = bus_transport_config::transport_from_env("order-service").await?;
/// let bus = bus_core::Bus::builder().transport_arc(transport).start().await?;
/// # drop(bus); Ok(()) }
/// ```
pub async fn transport_from_env(connection_name: &str) -> Result<Arc<dyn Transport>, ConfigError> {
    TransportSettings::load()?.connect(connection_name).await
}
