//! # bus-transport-nats: NATS JetStream for bus-core
//!
//! [`NatsTransport`] carries the bus over NATS JetStream with async-nats: file-backed streams,
//! publish acks awaited on every send, deduplication by `Nats-Msg-Id`, one durable pull
//! consumer per endpoint shared by all its instances (competing consumers), explicit and
//! confirmed acks, progress signals for long handlers, a delivery limit, delayed retries that
//! survive a restart, an error stream per endpoint, scheduled messages kept on the server
//! (and cancellable), request/response over core NATS reply subjects, automatic reconnect,
//! and credentials in the URL that never show up in logs or errors. It needs a server with JetStream (`-js`);
//! it works with 2.9 and later (it uses no feature of 2.10+).
//!
//! ## Topology (default names; see [`Naming`])
//!
//! | what | subject | stream |
//! |---|---|---|
//! | commands to endpoint `E` | `bus.cmd.E` | `BUS_EP_E` (work queue) |
//! | event with wire name `W` | `bus.evt.W` | `BUS_EVT_W` (kept [`NatsConfig::event_max_age`]), sourced into `BUS_EP_E` of every endpoint `E` subscribing to `W` |
//! | delayed retries of `E` while they wait | `bus.delay.E` | `BUS_DELAY_E` (work queue) |
//! | error queue of `E` | `bus.error.E` | `BUS_ERR_E` |
//! | scheduled messages while they wait (any destination), one per message id | `bus.scheduled.<token>` | `BUS_SCHEDULED` (work queue, one message per subject), consumer `bus` |
//! | reply address of bus instance `I` | `bus.reply.I` | none: core NATS |
//!
//! Each endpoint stream has one durable pull consumer, `bus`, that every instance of the
//! endpoint pulls from: each message goes to one instance, and events reach each subscribing
//! endpoint once (fan-out across endpoints, competing within one). Why sources instead of one
//! consumer filtering several subjects: JetStream puts a subject in one stream only, and
//! filtering a consumer on several subjects needs server 2.10. A command to an endpoint whose
//! stream does not exist is [`bus_core::TransportError::Unroutable`]; an event no endpoint
//! subscribes to is accepted (there is no stream for it until someone subscribes) and dropped.
//! Both are known when no stream answers a publish and JetStream confirms that no stream holds
//! the subject. A plain (non-JetStream) subscriber on these subjects, such as a monitoring
//! `nats sub`, sees every message too; where no stream exists it swallows the publish request,
//! so the answer then comes after [`NatsConfig::request_timeout`].
//!
//! ## Namespaces
//!
//! [`NatsConfig::namespace`] puts every subject and stream under a namespace, so that several
//! buses (environments, tenants, test runs) share one server without seeing each other's
//! commands, events or streams: with namespace `staging`, commands to `E` go to subject
//! `staging.bus.cmd.E` in stream `STAGING_BUS_EP_E`, events to `staging.bus.evt.W` in
//! `STAGING_BUS_EVT_W`, and so on for the delay and error streams ([`Naming`] has the rules for
//! namespaces with other characters). Without a namespace the names are those of the table
//! above. The JetStream API (`$JS.API.>`) and the client's reply inboxes (`_INBOX.>`, unique
//! to each connection) are the server's own and stay as they are.
//!
//! ## Operating
//!
//! - `limits()` reports the server's `max_payload`, so the bus keeps its bodies under it; a
//!   larger message is refused before it is sent ([`bus_core::TransportError::Refused`],
//!   naming its size, the limit and how to raise it).
//! - `browse` reads an endpoint's input or error stream by sequence, oldest first, leaving the
//!   messages where they are (see [`NatsTransport`]'s `Transport` implementation); `remove`
//!   deletes chosen messages from it by sequence, found by message id the same way.
//! - `endpoints` lists the input streams under the naming, with their messages and those of
//!   their error streams (consumers are not counted: instances share one pull consumer).
//! - `teardown` deletes what declaring endpoints created: their input, delay and error streams,
//!   their consumers, and the streams of the events they subscribe to that no other endpoint
//!   takes; a dry run lists them.
//! - Connecting to a server that is not a NATS server (the AMQP or Redis port) fails within
//!   seconds with [`NatsError::WrongProtocol`], which says what answered.
//!
//! ## Headers
//!
//! NATS has no message properties: every bus header is a NATS header (`wire` module docs):
//! `bus-message-id`, `bus-message-type`, `bus-content-type`, `bus-correlation-id`,
//! `bus-sent-time` (RFC 3339 UTC, nanoseconds), and custom headers under their own names
//! (`bus-conversation-id`, `bus-failure-*`, ...). Values that a NATS header cannot carry as
//! they are (line breaks, leading or trailing blanks) travel as RFC 2047 encoded words
//! (`=?UTF-8?B?...?=`). Headers named `Nats-*` belong to the server and client library.
//!
//! `Nats-Msg-Id` is the deduplication key, *not* the message id: it is the message id for
//! commands and events, `<id>/retry-<n>` for the n-th delayed retry (else JetStream would drop
//! the retry as a duplicate of the original), and `<id>/error/<failure time>` for error-queue
//! entries. Sending twice the same message id to the same endpoint within
//! [`NatsConfig::duplicate_window`] stores it once. A plain NATS client may send a command
//! by publishing to `bus.cmd.E` with `bus-message-type`, `bus-content-type` and either
//! `bus-message-id` or just `Nats-Msg-Id`.
//!
//! ## Acks
//!
//! A delivery is acked only after its handler succeeded (the runtime's contract). The ack goes
//! to the client's command queue at once, with no future or task of its own, and by default
//! ([`NatsConfig::confirm_acks`]) it is confirmed: the server answers an ack that asks, and
//! its answer confirms every ack sent before it on the same connection too (a server reads a
//! connection in order), so about one ack per round trip asks instead of each one. After a
//! reconnect the acks not confirmed yet are sent again; one still unconfirmed after the
//! request timeout is logged. Until confirmed, an acked delivery keeps counting against the
//! prefetch. A lost ack, confirmed or not, means a redelivery after the ack wait, never a lost
//! message. See the `flight` module for the details.
//!
//! ## Delayed retries
//!
//! See the `delay` module: the copy waits in the delay stream with a `bus-deliver-at` header
//! (milliseconds since the Unix epoch); the instances of the endpoint park it with a delayed
//! nak until it is due, then republish it to the command subject. Nothing waits in memory.
//!
//! ## Request/response
//!
//! A bus instance's reply address ([`bus_core::Transport::open_replies`]) is the subject
//! `[<namespace>.]bus.reply.<instance>` (the address is the subject itself), on which the
//! instance holds a plain core NATS subscription: no stream, no consumer. A reply is a core
//! publish to it with the usual bus headers, returned as soon as the client took it: there
//! is no publish ack on the request's round trip, and a reply to an address nobody listens on
//! any more (its caller gave up, or its process is gone) is dropped by the server, neither an
//! error nor unroutable. The address is gone when its subscription is cancelled, and with the
//! connection of a process that crashed. A reply address that is not a reply subject of the
//! transport's naming is not published to (it is logged and dropped): a request cannot make a
//! handler publish anywhere else on the server. A reply sent while the client reconnects
//! waits in the client's buffer; one lost with a connection leaves its caller to its timeout.
//!
//! ## Scheduled messages
//!
//! Servers before 2.12 cannot schedule a message, so a scheduled command or event
//! ([`bus_core::SendOptions::deliver_at`]) is stored in one work-queue stream for the whole
//! naming, `BUS_SCHEDULED` (`STAGING_BUS_SCHEDULED` in namespace `staging`), on subject
//! `bus.scheduled.<token>`, where the token is the message id when it is made of ASCII
//! letters, digits, `-` and `_` (every id the bus makes), else `=` and the id's bytes in hex.
//! The stored copy carries the envelope's headers plus `bus-deliver-at` (milliseconds since the
//! Unix epoch) and `bus-destination` (`endpoint:E`, `event:W`); `send` returns once JetStream
//! acknowledged storing it, so it survives a restart of the sender and of the server (file
//! storage). The stream keeps one message per subject: the same message id scheduled twice is
//! stored once (the second replaces the first). A time already past sends the message at once,
//! as without a schedule; delayed retries keep the delay streams.
//!
//! Every bus that hosts endpoints takes the due messages ([`bus_core::Transport::subscribe_due`])
//! from the stream's durable pull consumer `bus` (created with the stream, idempotently, when
//! the first bus starts), as instances of an endpoint take its delayed retries: a message not
//! due yet is parked with a nak delayed until it is due, so the server keeps the timer and no
//! process holds it (a crash loses nothing, nothing polls); a due one is handed to the bus,
//! which sends it to its destination and then acks it (confirmed). The buses compete for them:
//! each goes to one at a time, and one handed out and never settled comes back after the ack
//! wait. Up to 100,000 messages may be parked at once; more wait in the stream until room is
//! made. A scheduled command to an endpoint that does not exist when it is due is dropped by
//! the bus with a log line.
//!
//! Precision (server 2.9.10 on loopback, 1,000 commands due at random times within 5 s, one
//! delivering bus, four runs): none early; late by p50 3 ms, p99 7 to 11 ms, max 8 to 16 ms,
//! which is mostly the server's redelivery timer. Due times are whole milliseconds, rounded up.
//!
//! [`bus_core::Transport::cancel_scheduled`] works: it finds the message by its subject (the
//! stream's last message on it) and deletes it by sequence. It says `false` when nothing with
//! that id waits, and for a message whose due time has come: that one is the delivering
//! buses' now and may be on its way already, so it is left alone.
//!
//! ## Where things live
//! - `config`: [`NatsConfig`] (URL, credentials, timeouts, limits) and [`Naming`].
//! - `transport`: [`NatsTransport`]: connecting, declaring, sending.
//! - `topology`: streams, sources and consumers of an endpoint.
//! - `subscription`: pulling with prefetch, handing out deliveries.
//! - `flight`: the registry of messages pulled and not settled: prefetch room, what to signal
//!   progress on, acks waiting for their confirmation.
//! - `acks`: acks and their confirmations, naks, progress signals.
//! - `delay`: moving due delayed retries; `limit`: messages past the delivery limit.
//! - `replies`: reply addresses and replies; `schedule`: storing, handing out and cancelling
//!   scheduled messages.
//! - `browse`: reading a queue's messages without consuming them; `remove`: deleting chosen
//!   ones; `endpoints`: listing the endpoints with their depths.
//! - `wire`: envelope to NATS headers and back.

mod acks;
mod browse;
mod config;
mod delay;
mod endpoints;
mod error;
mod flight;
mod limit;
mod remove;
mod replies;
mod schedule;
mod subscription;
mod topology;
mod transport;
mod wire;

pub use config::{Naming, NatsConfig};
pub use error::NatsError;
pub use transport::NatsTransport;

/// The `bus-failure-reason` of a message past the delivery limit.
#[deprecated(note = "use `bus_core::FailureReason::DeliveryLimit.as_str()`")]
pub const DELIVERY_LIMIT_REASON: &str = bus_core::FailureReason::DeliveryLimit.as_str();

/// The NATS client library, for direct access through [`NatsTransport::client`] and
/// [`NatsTransport::jetstream`] (reading error streams, tools, tests) without a second copy.
pub use async_nats;
