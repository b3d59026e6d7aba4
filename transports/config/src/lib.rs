//! # bus-transport-config: choose the transport by configuration
//!
//! The same binary runs on the in-memory transport or on RabbitMQ without recompiling: the
//! choice comes from the environment (`BUS_TRANSPORT=memory`,
//! `BUS_TRANSPORT=amqp://user:password@host:5672/vhost`, `amqps://...`) and from a
//! configuration file (`bus.toml` in the working directory, or the file `BUS_CONFIG` names),
//! the environment winning. [`TransportSettings`] lists every setting.
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
//! Credentials never appear in `Debug` output or in a [`ConfigError`]. Supported schemes:
//! `memory`, `amqp`, `amqps`; `nats://` and `redis://` are recognised and reported as not
//! supported yet.
//!
//! - `settings`: [`TransportSettings`], where it is read from, how it opens a transport.
//! - `transport`: [`ConfiguredTransport`], the opened transport with its concrete type.
//! - `error`: [`ConfigError`].

mod env;
mod error;
mod redact;
mod settings;
mod transport;

pub use error::{ConfigError, SUPPORTED_SCHEMES};
pub use settings::{
    transport_from_env, QueueKind, TransportKind, TransportSettings, DEFAULT_CONFIG_FILE,
    DEFAULT_DELIVERY_LIMIT,
};
pub use transport::ConfiguredTransport;

#[cfg(test)]
mod tests;
