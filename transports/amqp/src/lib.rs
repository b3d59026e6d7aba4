//! # bus-transport-amqp: RabbitMQ for bus-core
//!
//! [`AmqpTransport`] carries the bus over AMQP 0-9-1 with lapin: persistent messages, durable
//! queues (classic, or quorum with a delivery limit), publisher confirms on every publish,
//! manual acks, prefetch, `mandatory` commands (an unroutable command is an error), delayed
//! retries through TTL + dead-letter queues (no plugin), automatic reconnect, and `amqps://`
//! through rustls. The wire format is documented in `docs/wire-format.md`.
//!
//! Buses that share a broker stay apart under a namespace ([`AmqpConfig::namespace`]). Through
//! the `Transport` contract a tool or test can browse an endpoint's input or error queue
//! without taking its messages, remove chosen messages from it by id, list the endpoints with
//! their depths (through the RabbitMQ management API: [`AmqpConfig::management_url`]), and tear
//! down what a bus declared.
//!
//! ## Where things live
//! - `config`: [`AmqpConfig`] (URL, credentials, timeouts, queue type, namespace) and
//!   [`Naming`].
//! - `transport`: [`AmqpTransport`] itself: connect, close, and the `Transport` contract, which
//!   hands each part to the modules below.
//! - `connection`: opening the connection and the publisher channel; a fresh connection when
//!   the client library's own recovery gives up.
//! - `topology`: the events exchange, endpoint queues, error queues, bindings, delay queues.
//! - `publish`: routing a message, publishing a batch with confirms, again after recovery.
//! - `subscription`: the consumer of an endpoint's queue, and the ackers of its deliveries.
//! - `ack_batch`: consumer acks held back and sent as one `multiple` ack.
//! - `browse`: the messages waiting in a queue, lent and given back.
//! - `remove`: taking chosen messages out of a queue: lent, the chosen ones acked, the others
//!   given back.
//! - `management`: listing the endpoints, through the management HTTP API.
//! - `teardown`: deleting what `declare` created, after checking what exists.
//! - `error`: [`AmqpError`], and what the broker's reply codes mean for the bus.
//! - `wire`: envelope to AMQP properties and back.

mod ack_batch;
mod browse;
mod config;
mod connection;
mod error;
mod management;
mod publish;
mod remove;
mod subscription;
mod teardown;
mod topology;
mod transport;
mod wire;

pub use wire::{decode as decode_amqp_message, encode as encode_amqp_properties};

pub use config::{AmqpConfig, Naming, QueueType};
pub use error::AmqpError;
pub use transport::AmqpTransport;
