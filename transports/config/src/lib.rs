//! # bus-transport-config: choose the transport by configuration
//!
//! The same binary runs on the in-memory transport, on RabbitMQ, on NATS JetStream or on Redis
//! Streams without recompiling: the choice comes from the environment (`BUS_TRANSPORT=memory`,
//! `BUS_TRANSPORT=amqp://user:password@host:5672/vhost`, `amqps://...`,
//! `BUS_TRANSPORT=nats://127.0.0.1:4222`, `tls://...`, `BUS_TRANSPORT=redis://127.0.0.1:6379`)
//! and from a configuration file (`bus.toml` in the working directory, or the file
//! `BUS_CONFIG` names), the environment winning. [`TransportSettings`] lists every setting.
//!
//! ```toml
//! # bus.toml
//! [transport]
//! url = "amqp://shop:s3cret@rabbit.internal:5672/%2f"
//! connection_name = "billing-eu"
//! publish_timeout = "10s"
//! connect_timeout = "5s"
//! queue_type = "quorum"
//! delivery_limit = 10
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bus_transport_config::TransportSettings;
//!
//! let settings = TransportSettings::load()?; // bus.toml, then BUS_* variables
//! println!("transport: {}", settings.redacted_url()); // never prints the password
//! let transport = settings.connect("billing").await?;
//! let bus = bus_core::Bus::builder()
//!     .transport_arc(transport)
//!     .host(["billing"])
//!     .start()
//!     .await?;
//! # drop(bus); Ok(()) }
//! ```
//!
//! Credentials (passwords, NATS tokens) never appear in `Debug` output or in a
//! [`ConfigError`]. Supported schemes: `memory`, `amqp`, `amqps`, `nats`, `tls` (NATS with
//! TLS), `redis` and `rediss` (Redis with TLS).
//!
//! ```
//! use bus_transport_config::{TransportKind, TransportSettings};
//! use figment::providers::{Format, Toml};
//! use figment::Figment;
//!
//! let figment = Figment::from(Toml::string(r#"
//!     [transport]
//!     url = "redis://:s3cret@redis.internal:6379/0"
//!     connection_name = "billing-eu"   # the first part of the Redis consumer names
//!     publish_timeout = "3s"           # the Redis operation timeout
//! "#));
//! let settings = TransportSettings::load_from(&figment)?;
//! assert_eq!(settings.kind()?, TransportKind::Redis);
//! assert_eq!(settings.redacted_url(), "redis://:***@redis.internal:6379/0");
//! # Ok::<(), bus_transport_config::ConfigError>(())
//! ```
//!
//! Where things live:
//! - `settings`: [`TransportSettings`] and [`QueueKind`], the values the configuration holds;
//!   the methods sit beside the concept they serve, in `settings/`:
//!   - `kind`: [`TransportKind`], which transport a URL names, and the URL checks;
//!   - `sources`: reading `bus.toml` and the `BUS_*` variables ([`TransportSettings::load`]);
//!   - `de`: the deserializers for durations, flags, numbers and secrets;
//!   - `configs`: each transport's own configuration ([`TransportSettings::amqp_config`], ...);
//!   - `open`: opening the transport ([`TransportSettings::open`], [`transport_from_env`]).
//! - `env`: the `BUS_*` environment variables as a configuration source.
//! - `redact`: keeping credentials out of error texts.
//! - `transport`: [`ConfiguredTransport`], the opened transport with its concrete type.
//! - `error`: [`ConfigError`].
//! - `tests`: tests through the public surface, by theme (scheme tests sit beside `kind`).

mod env;
mod error;
mod redact;
mod settings;
mod transport;

pub use error::{ConfigError, ConnectCause, SUPPORTED_SCHEMES};
pub use settings::{
    transport_from_env, QueueKind, TransportKind, TransportSettings, DEFAULT_CONFIG_FILE,
    DEFAULT_DELIVERY_LIMIT,
};
pub use transport::ConfiguredTransport;

#[cfg(test)]
mod tests;
