//! # bus-transport-amqp: RabbitMQ for bus-core
//!
//! [`AmqpTransport`] carries the bus over AMQP 0-9-1 with lapin: persistent messages, durable
//! queues (classic, or quorum with a delivery limit), publisher confirms on every publish,
//! manual acks, prefetch, `mandatory` commands (an unroutable command is an error), delayed
//! retries through TTL + dead-letter queues (no plugin), automatic reconnect, and `amqps://`
//! through rustls. The wire format is documented in `docs/wire-format.md`.
//!
//! - `config`: [`AmqpConfig`] (URL, credentials, timeouts, queue type) and [`Naming`].
//! - `transport`: [`AmqpTransport`], its subscriptions and ackers.
//! - `wire`: envelope to AMQP properties and back.

mod config;
mod error;
mod transport;
mod wire;

pub use wire::{decode as decode_amqp_message, encode as encode_amqp_properties};

pub use config::{AmqpConfig, Naming, QueueType};
pub use error::AmqpError;
pub use transport::AmqpTransport;
