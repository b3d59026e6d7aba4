//! # bus-transport-memory: the embedded, in-process transport
//!
//! A real transport, not a shortcut: it keeps the semantics the brokers have, so code proven
//! here behaves the same on RabbitMQ.
//!
//! - One bounded queue per endpoint: `send` waits while the queue is full (backpressure), so
//!   memory stays proportional to the bound, not to what producers send. Error queues are not
//!   bounded: a failed message must always have somewhere to go.
//! - Competing consumers: several subscriptions on one queue share its messages; a new message
//!   goes to the consumer that has waited longest, so none is starved.
//! - Fan-out: an event goes to the queue of every endpoint that subscribes to its wire name.
//! - Acks: a delivery is acked, nacked (back to the head of the queue, marked redelivered) or
//!   dropped unsettled (treated as a nack). Prefetch bounds unsettled deliveries; like a
//!   broker's, it counts the ready messages a consumer took ahead in one go (a few at a time,
//!   under one lock), which go back to the head of the queue when the consumer stops.
//! - Delayed delivery for delayed retries (a timer; it does not outlive the process).
//! - Typed bodies: messages stay Rust values, no serialization round trip, unless
//!   [`MemoryTransport::serialize`] asks for bytes.
//!
//! ```
//! use bus_transport_memory::MemoryTransport;
//! let transport = MemoryTransport::new().capacity(1_000);
//! let same_broker = transport.clone(); // clones share queues, like two clients of one broker
//! # drop(same_broker);
//! ```
//!
//! Where things live: `transport` holds [`MemoryTransport`] (queues and bindings by name, and
//! the ways a message goes into them); `queue` the bounded fair queue behind each endpoint (its
//! room, its producers' and its consumers' lines, and the contract they keep), with
//! `queue/guards` for the slots and places in line that are given back when dropped;
//! `subscription` a consumer of one queue and the acker of each of its deliveries.

mod queue;
mod subscription;
mod transport;

pub use transport::{error_queue_name, MemoryTransport};
