//! # bus-transport-amqp: RabbitMQ for bus-core
//!
//! [`AmqpTransport`] carries the bus over AMQP 0-9-1 with lapin: persistent messages, durable
//! queues (classic, or quorum with a delivery limit), publisher confirms on every publish,
//! manual acks, prefetch, `mandatory` commands (an unroutable command is an error), delayed
//! retries through TTL + dead-letter queues (no plugin), request/response through a reply
//! queue per bus instance, scheduled messages through a cascade of delay levels (no plugin),
//! automatic reconnect, and `amqps://` through rustls. The wire format is documented in `docs/wire-format.md`.
//!
//! Buses that share a broker stay apart under a namespace ([`AmqpConfig::namespace`]). Through
//! the `Transport` contract a tool or test can browse an endpoint's input or error queue
//! without taking its messages, remove chosen messages from it by id, list the endpoints with
//! their depths (through the RabbitMQ management API: [`AmqpConfig::management_url`]), and tear
//! down what a bus declared.
//!
//! ## Topology on the broker
//! With namespace `N` (names without one drop the `N.`; a queue prefix goes after it):
//!
//! | what | kind | name | lifetime |
//! |---|---|---|---|
//! | input queue of endpoint `E` | queue (classic or quorum) | `N.E` | durable |
//! | error queue of `E` | queue | `N.E.error` | durable |
//! | delayed retries of `E` for `D` ms | queue, TTL `D` dead-lettering to `N.E` | `N.E.delay.D` | durable |
//! | events | topic exchange, routing key = wire name; bindings of the input queues | `N.bus.events` | durable |
//! | replies to bus instance `I` | queue, read without acks | `N.bus.reply.I` | exclusive to its connection, auto-delete |
//! | scheduled messages waiting 2^n ms, n = 0..=31 | queue, TTL 2^n ms dead-lettering to the due queue | `N.bus.schedule.Ln` | durable |
//! | scheduled messages that may be due | queue | `N.bus.schedule.due` | durable |
//!
//! ## Request/response
//! [`Transport::open_replies`](bus_core::Transport::open_replies) declares the instance's reply
//! queue on a channel of its own: not durable, exclusive (only its connection may read it;
//! the broker deletes it when the connection goes, a crashed process included) and
//! auto-delete (gone once its consumer is cancelled or its channel closed). Its name is the
//! reply address. It is consumed without acks, so a reply costs no settle round trip and is
//! never redelivered elsewhere. A reply goes through the default exchange with the address
//! as routing key, not `mandatory` and not persistent: when the queue is gone its caller is
//! gone, and the broker drops the reply (the send still succeeds once confirmed).
//!
//! ## Scheduled messages
//! RabbitMQ has no per-message timer without a plugin (`rabbitmq_delayed_message_exchange`,
//! not assumed here), and a queue's TTL expires messages in order only when they all share it;
//! the per-delay queues of delayed retries would make a queue per distinct due time. So a
//! scheduled message ([`Outgoing::deliver_at`](bus_core::Outgoing::deliver_at)) waits in a
//! cascade of 32 durable delay levels: level `n` has a message TTL of 2^n ms (2^31 ms, about
//! 24.8 days, is the longest TTL RabbitMQ takes below its 2^32 - 1 ms limit) and dead-letters
//! into one durable due queue. The message, persistent and confirmed, goes to the longest
//! level that does not outlast its remaining wait, with `bus-deliver-at` (ms since the Unix
//! epoch, rounded up) and `bus-destination` added. The queues are declared, idempotently,
//! once per transport on the first scheduled send or due subscription.
//!
//! [`Transport::subscribe_due`](bus_core::Transport::subscribe_due) consumes the due queue
//! (manual acks, prefetch 256; buses compete) in a task of its own. A message with more than
//! 32 ms left is published again (confirmed) to the level for what is left less 16 ms of
//! slack, and then acked, in the background, never handed out: a wait of `r` ms takes about
//! one hop per set bit of `r`, and nothing that waits longer is kept in process memory. A
//! message with 32 ms or less left (sent so, or back from its last hop) is held, unacked,
//! until due: the shortest levels would cost a broker round trip each for less than the
//! trip's jitter, and a crash returns an unacked message to the due queue. A due one is
//! handed out, acked once the bus delivered it; a nack or a crash returns it to the due
//! queue. Everything is durable and persistent, so scheduled messages survive a restart of
//! the sender and of the broker. A message is never handed out before its due time. Measured
//! against a local RabbitMQ 3.10 (debug build, two cores), 1,000 messages due at random within
//! 5 s reached their handler p50 2 ms, p99 6 to 19 ms and at most 8 to 36 ms after their due
//! time over four runs. With the cores also busy compiling, this transport still handed the
//! due messages out within 15 ms (p99 8 ms), but the bus forwards them one at a time, each
//! send waiting for its confirm, and they queued there: p99 up to about 575 ms.
//!
//! The levels and the due queue are shared by every bus under the same naming and are not
//! endpoint resources: [`Transport::teardown`](bus_core::Transport::teardown) and
//! [`Transport::endpoints`](bus_core::Transport::endpoints) leave them out.
//!
//! **Cancelling a scheduled message is not supported**
//! ([`Transport::cancel_scheduled`](bus_core::Transport::cancel_scheduled) is
//! [`TransportError::Unsupported`](bus_core::TransportError::Unsupported)): AMQP 0-9-1 cannot
//! take one message out of the middle of a queue, and a scheduled message moves between
//! levels while it waits, so it cannot be found and removed reliably; a bus that must cancel
//! can check a flag of its own in the handler.
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
//! - `replies`: the reply queue of a bus instance.
//! - `schedule`: the delay levels of scheduled messages, and the subscription on the due
//!   queue.
//! - `subscription`: the consumer of a queue (an endpoint's, a reply queue, the due queue),
//!   and the ackers of its deliveries.
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
mod replies;
mod schedule;
mod subscription;
mod teardown;
mod topology;
mod transport;
mod wire;

pub use wire::{decode as decode_amqp_message, encode as encode_amqp_properties};

pub use config::{AmqpConfig, Naming, QueueType};
pub use error::AmqpError;
pub use transport::AmqpTransport;
