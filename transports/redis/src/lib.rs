//! # bus-transport-redis: Redis Streams for bus-core
//!
//! [`RedisTransport`] carries the bus over Redis Streams (Redis 6.2 or later; 7 recommended),
//! on the `redis` crate with a reconnecting connection manager and a timeout on every call.
//!
//! ## Keys and groups
//! Every key starts with a prefix (`bus` by default), under a namespace when one is set
//! ([`RedisConfig::namespace`]: `<ns>:bus:...`, so buses with different namespaces on one
//! Redis never see each other's commands or events; see [`Keys`]). Without a namespace:
//! - `bus:ep:E`, the input stream of endpoint `E`, read by the consumer group `E`. Each
//!   subscription is a consumer of its own (`<consumer_name>-<pid>-<random>-<n>`), so the
//!   instances of an endpoint compete for its entries. Acked entries are deleted (`XACK` +
//!   `XDEL`): one group reads the stream, so what remains is what is still to be done.
//! - `bus:endpoints`, the set of declared endpoints. A command is appended to its endpoint's
//!   stream by a script that checks this set first, so a command to an endpoint nobody
//!   declared is [`bus_core::TransportError::Unroutable`], not a write to a stream no one
//!   reads. Declaring creates the group (reading from the stream's start, so nothing sent in
//!   between is skipped) before registering the endpoint.
//! - `bus:subs:W`, the set of endpoints subscribed to event `W`, maintained by declare. A
//!   publish appends the event to the stream of every member, in one script: fan-out across
//!   endpoints, competition within each. An event with no subscriber goes nowhere, which is
//!   fine. Subscriptions are never removed automatically (as with AMQP bindings).
//! - `bus:ep:E:error`, the error stream: failed messages, body and headers kept, plus the
//!   failure headers. Nobody consumes it; read it with `XRANGE`.
//! - `bus:delayed:E`, delayed messages (delayed retries) in a sorted set scored by due time
//!   in milliseconds of the Redis server's clock. The subscriptions of `E` move due ones into
//!   the stream with a script that appends and removes each in one step, so none is lost or
//!   doubled however many instances run it. A due message waits at most the block timeout.
//! - `bus:reply:I`, the reply stream of bus instance `I` (see below).
//! - `bus:scheduled`, `bus:scheduled:claimed`, `bus:scheduled:messages` and
//!   `bus:scheduled:wake`: the scheduled messages of every endpoint and event (see below).
//!
//! | key | type | created by | gone |
//! |---|---|---|---|
//! | `<root>:endpoints` | set | declare | teardown (when empty) |
//! | `<root>:subs:W` | set | declare | teardown (when empty) |
//! | `<root>:ep:E` (group `E`) | stream | declare | teardown |
//! | `<root>:ep:E:error` | stream | the first failed message | teardown |
//! | `<root>:delayed:E` | sorted set | the first delayed retry | teardown; empty: by itself |
//! | `<root>:reply:I` | stream | the first request of bus instance `I` | when its channel closes; a crashed process's after 60 s (`PEXPIRE`) |
//! | `<root>:scheduled` | sorted set | the first scheduled message | empty: by itself |
//! | `<root>:scheduled:claimed` | sorted set | the first due message taken | empty: by itself |
//! | `<root>:scheduled:messages` | hash | the first scheduled message | empty: by itself |
//! | `<root>:scheduled:wake` | stream (16 entries at most) | the first scheduled message | a day after the last scheduled message (`PEXPIRE`) |
//!
//! The scheduler keys are shared by the whole bus (every endpoint and event under the root):
//! [`bus_core::Transport::teardown`] and [`bus_core::Transport::endpoints`] leave them out.
//!
//! ## Replies (request/response)
//! [`bus_core::Transport::open_replies`] creates the stream `<root>:reply:<instance>` (an
//! entry added and trimmed away at once, `XADD ... MAXLEN 0`) with an expiry of 60 s that its
//! reader renews every 20 s; the reply address is `<instance>`. The reader waits with
//! `XREAD BLOCK` (at most the block timeout) from the last id it saw, on a connection of its
//! own, and trims what it read (`XTRIM MINID`) in the same round trip as its next read.
//! Replies are settled by doing nothing: they are never redelivered, to this instance or
//! another. Cancelling or dropping the channel deletes the stream; a process that crashed
//! leaves it to its expiry (if the expiry passed during a long outage, the reader creates it
//! again). A reply ([`bus_core::Destination::Reply`]) is one `XADD ... NOMKSTREAM` to the
//! address's stream: a reply to an address that is gone creates nothing, is dropped, and the
//! send is `Ok`.
//!
//! ## Scheduled messages
//! A message sent with a `deliver_at` in the future, to an endpoint or an event, is stored in
//! one script (a command to an undeclared endpoint is unroutable at once, as if sent now): its
//! message id in the sorted set `<root>:scheduled`, scored by its due time (milliseconds since
//! the Unix epoch, rounded up), and the message in the hash `<root>:scheduled:messages` (its
//! stream-entry fields as netstrings, with `bus-deliver-at` and `bus-destination` added). The
//! send returns `Ok` once Redis executed the script; the message then lives as long as Redis
//! keeps its data (see below), whatever happens to the sending process. A `deliver_at` in
//! the past sends at once. Delayed retries keep their own delay sets. Due times are the
//! sender's clock, compared with the Redis server's: keep the clocks in sync (NTP), or a
//! message comes early or late by their difference.
//!
//! [`bus_core::Transport::subscribe_due`] starts a taker per bus: a script moves due ids
//! (score at or before the server's `TIME`) into `<root>:scheduled:claimed`, scored by the end
//! of a lease (the reclaim time, [`RedisConfig::reclaim_idle`]), and returns their messages;
//! the taker hands them out as deliveries. Buses compete on the same keys, and the script
//! moves each id once, so each due message goes to one bus at a time. Ack: out of the
//! claimed set and the hash, for good. Nack (or a delivery dropped unsettled): due again at
//! once. The taker renews the leases of what it still holds every third of the lease; those of
//! a bus that crashed run out, and the next look of any bus makes them due again. Nothing not
//! yet due is held in memory.
//!
//! When to look: the script answers how long until the next message is due (or the next
//! lease ends), and the taker sleeps that long on a local timer (a blocking command's timeout
//! in Redis is only as fine as its `hz`, 100 ms by default). Scheduling a message also appends
//! to `<root>:scheduled:wake`, which every taker watches with `XREAD BLOCK` on a connection of
//! its own, so a message due earlier than planned, scheduled by any process, is seen at once.
//! With nothing scheduled, a taker looks once per block timeout. Measured on a local Redis 7.0
//! (the conformance check `scheduled_precision`: 1,000 commands due at random times within
//! 5 s; debug build, 2 cores, alongside the rest of the suite): none early; after due, p50
//! 3 to 4 ms, p99 8 to 57 ms, max 11 to 62 ms over three runs.
//!
//! [`bus_core::Transport::cancel_scheduled`] takes a waiting id out of `<root>:scheduled` and
//! the hash in one script: `true`. An id handed out already (being delivered right now) or
//! unknown (delivered, cancelled, never scheduled) is left alone: `false`.
//!
//! ## Deliveries
//! A subscription reads with `XREADGROUP ... COUNT <free prefetch slots> BLOCK
//! <block_timeout>` on a connection of its own. The delivery count is 1 for a new entry;
//! entries taken over come with their count from the pending list (`XPENDING`).
//! - Ack: `XACK` and `XDEL`, atomically.
//! - Nack (and a delivery dropped unsettled): the entry stays pending, marked idle since long
//!   ago (`XCLAIM ... TIME 1 JUSTID`); the next `XAUTOCLAIM` of any consumer of the group
//!   takes it over, which counts a delivery. A nack also makes its own subscription look at
//!   once; others look every `claim_interval`.
//! - Crashed consumers: their pending entries, idle longer than `reclaim_idle`, are taken over
//!   by `XAUTOCLAIM`. A live subscription renews the idle time of its deliveries still in
//!   progress every third of `reclaim_idle`, so a slow handler keeps its message.
//! - Consumers that left with nothing pending are removed from the group (atomically checked).
//! - An ack or nack that fails on the connection (dropped, or Redis still loading its data
//!   after a restart) is tried again until it succeeds or the operation timeout is spent, so a
//!   brief outage does not turn handled messages into redeliveries. A subscription never hands
//!   out again a delivery it still holds, even when `XAUTOCLAIM` returns it because its
//!   renewal failed during an outage longer than `reclaim_idle`.
//!
//! ## Looking and cleaning up
//! [`bus_core::Transport::browse`] lists up to `limit` messages of an endpoint's queue,
//! oldest first, decoded as a delivery decodes them, and leaves them where they are (no
//! delivery is counted):
//! - the error stream: its entries. Nobody consumes it, so it holds every message that failed
//!   for good until someone deletes it.
//! - the input stream: what is still to be handled: entries handed out to a consumer and not
//!   acked yet (in a handler, or nacked and waiting to be taken over), then entries not handed
//!   out yet. An ack deletes its entry, so that is all the stream holds; an entry acked but
//!   left in the stream (by another tool) is skipped all the same. Delayed messages (delayed
//!   retries, delayed sends) wait in the delay set until they are due and are not listed
//!   until they have moved into the stream.
//!
//! An endpoint never declared has nothing to list.
//!
//! [`bus_core::Transport::remove`] takes chosen messages out of the same streams by message
//! id: for each id, the oldest entry with it is deleted (`XDEL`), and in the input stream also
//! acked in the group (`XACK`), so no consumer takes over an entry that is gone. A script
//! matches and deletes a range of entries at a time, in one step. An entry being handled right
//! now is removed too; its handler still finishes.
//!
//! [`bus_core::Transport::endpoints`] lists the members of the endpoint registry, sorted, with
//! the entries of each input stream (still to handle: acked entries are deleted), the
//! consumers of its group (`XINFO GROUPS`: a subscription joins the group when it starts and
//! leaves it when it stops; one that stopped without leaving counts until it is pruned) and
//! the entries of its error stream.
//!
//! [`bus_core::Transport::teardown`] deletes what declaring the endpoints created, messages
//! included, and reports each thing that existed as a [`bus_core::Declared`], in this order
//! (`<root>` is `bus`, or `<namespace>:bus`; see [`Keys`]):
//!
//! | kind | name | what it is |
//! |---|---|---|
//! | `stream` | `<root>:ep:E` | the input stream of `E` |
//! | `consumer group` | `<root>:ep:E E` | its consumer group (stream key, space, group), gone with the stream |
//! | `stream` | `<root>:ep:E:error` | the error stream of `E` |
//! | `sorted set` | `<root>:delayed:E` | the delayed messages of `E` |
//! | `set member` | `<root>:endpoints E` | `E` in the endpoint registry (set key, space, member) |
//! | `set member` | `<root>:subs:W E` | the subscription of `E` to event `W` |
//! | `set` | `<root>:endpoints`, `<root>:subs:W` | a registry set left without members, which Redis deletes |
//!
//! Subscriptions are looked for in every subscriber set under the root, not only those of
//! the events the topology names, so none is left behind to append events to a deleted
//! stream. A subscriber set shared with endpoints that stay only loses the torn-down members;
//! one left empty existed only for them and goes. With `dry_run` nothing is deleted and the
//! report says what would be; a second teardown reports nothing. Stop the buses hosting the
//! endpoints first: a subscription still running finds its group missing and declares its
//! endpoint again.
//!
//! ## Connecting
//! Connecting has a deadline (the connect timeout). When the server at the URL answers but
//! not as Redis, [`RedisError::WrongProtocol`] says what answered ("127.0.0.1:5672 answered,
//! but not as a Redis server: it speaks AMQP (is this the AMQP port?)"); it converts to a
//! [`bus_core::TransportError::Connection`] with that text and the client's error as source.
//!
//! ## What survives a Redis restart
//! Redis's own persistence settings decide: with RDB snapshots or AOF, streams, pending
//! lists, registries and delayed messages come back as of the last write saved; with
//! persistence off (`--save "" --appendonly no`), everything not yet consumed is lost,
//! scheduled messages included. A send
//! returns `Ok` once Redis executed the write, not once it reached disk (`appendfsync` decides
//! that). After a restart that lost the data, subscriptions find their group missing and
//! declare again what their transport declared, so consuming resumes by itself; senders see
//! unroutable commands until then. While Redis loads its data after a restart it answers
//! `LOADING`: calls then fail with [`bus_core::TransportError::Connection`], as when it is
//! unreachable.
//!
//! ## Wire format
//! One stream entry per message: the body in field `body`, byte for byte, and one field per
//! header: the well-known ones under the names of [`bus_core::header`] (`bus-message-id`,
//! `bus-message-type`, `bus-content-type`, `bus-correlation-id`, `bus-sent-time`), then custom
//! headers by name. Entries with the names of earlier versions (`message_id`, `type`, ...)
//! still decode. See the `wire` module.
//!
//! ## Where things live
//! - `config`: [`RedisConfig`] (URL, timeouts, reclaim settings) and [`Keys`].
//! - `transport`: [`RedisTransport`]: connect, declare, send.
//! - `replies`: reply addresses: open, read, send a reply.
//! - `schedule`: scheduled messages: store, take when due, settle, cancel.
//! - `admin`: browse, remove, the endpoint list and teardown.
//! - `subscription`: the reader task of a subscription, and its ackers.
//! - `scripts`: the Lua scripts for the steps that must be atomic.
//! - `wire`: envelope to stream entry and back; reading stream replies.

mod admin;
mod config;
mod error;
mod replies;
mod schedule;
mod scripts;
mod subscription;
mod transport;
mod wire;

pub use config::{Keys, RedisConfig};
pub use error::RedisError;
pub use transport::RedisTransport;
