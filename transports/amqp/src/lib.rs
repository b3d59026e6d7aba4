//! # bus-transport-amqp: RabbitMQ for bus-core
//!
//! [`AmqpTransport`] carries the bus over AMQP 0-9-1 with lapin: persistent messages, durable
//! queues (classic, or quorum with a delivery limit), publisher confirms on every publish,
//! manual acks, prefetch, `mandatory` commands (an unroutable command is an error), delayed
//! retries through TTL + dead-letter queues (no plugin), automatic reconnect, and `amqps://`
//! through rustls. The wire format is documented in `docs/wire-format.md`.
//!
//! ## Where things live
//! - `config`: [`AmqpConfig`] (URL, credentials, timeouts, queue type) and [`Naming`].
//! - `transport`: [`AmqpTransport`] itself: connect, close, and the `Transport` contract, which
//!   hands each part to the modules below.
//! - `connection`: opening the connection and the publisher channel; a fresh connection when
//!   the client library's own recovery gives up.
//! - `topology`: the events exchange, endpoint queues, error queues, bindings, delay queues.
//! - `publish`: routing a message, publishing a batch with confirms, again after recovery.
//! - `subscription`: the consumer of an endpoint's queue, and the ackers of its deliveries.
//! - `ack_batch`: consumer acks held back and sent as one `multiple` ack.
//! - `error`: [`AmqpError`], and what the broker's reply codes mean for the bus.
//! - `wire`: envelope to AMQP properties and back.

mod ack_batch;
mod config;
mod connection;
mod error;
mod publish;
mod subscription;
mod topology;
mod transport;
mod wire;

pub use wire::{decode as decode_amqp_message, encode as encode_amqp_properties};

pub use config::{AmqpConfig, Naming, QueueType};
pub use error::AmqpError;
pub use transport::AmqpTransport;
