//! The transport conformance suite: RELIABILITY.md part A (tests 1 to 12, plus 11b on
//! [`Subscription::cancel`](bus_core::Subscription::cancel)), written once against the
//! [`Transport`](bus_core::Transport) contract so every transport runs the same checks.
//!
//! A transport takes part through a [`TransportFactory`]: each call to
//! [`TransportFactory::transport`] returns a new client of the same broker, and
//! [`TransportFactory::features`] says what the transport can do, so a test that needs a missing
//! feature prints why it is skipped instead of failing. Each test is one `pub async fn` taking
//! the factory; it has a hard deadline (a hang is a failure) and prints one summary line:
//!
//! ```text
//! conformance round_trip                 [memory] sent=14 confirmed=14 handled=14 lost=0 duplicates=0 phantom=0 in 12ms
//! ```
//!
//! - `sent`: publishes attempted; `confirmed`: publishes that returned `Ok`;
//! - `handled`: settled with a successful ack (raw tests) or handled by a handler (bus tests);
//! - `lost`: confirmed but never handled; `phantom`: handled but never sent;
//! - `duplicates`: handlings beyond the first of one message.
//!
//! Most tests drive the raw contract (declare, send, subscribe, ack/nack); competing consumers,
//! retries, continuing after errors and fan-out with groups also go through
//! [`Bus`](bus_core::Bus).
//!
//! A transport's test binary is one call of [`conformance_suite!`](crate::conformance_suite)
//! with the opener of its factory (e.g. `AmqpFactory::open`), which expands to every test. A
//! single test can also be run by hand:
//!
//! ```no_run
//! # async fn demo() {
//! use bus_tests::conformance::{self, MemoryFactory};
//! conformance::round_trip(&MemoryFactory::typed()).await;
//! # }
//! ```
//!
//! Where things live: [`TransportFactory`] and [`Features`] in `factory`; the factories of the
//! four transports in `factories`; the macro and [`run`] in `suite`; the tests' bookkeeping in
//! `tally` and their steps in `kit` and `bus_kit`; the tests themselves, grouped by what they
//! check, in `round_trip` (1), `routing` (2, 3, 12), `failures` (4, 8), `flow` (5, 9), `churn`
//! (6, 7, 10) and `cancel` (11, 11b); browsing, removing by id, listing endpoints, teardown
//! and batch sends in `operations`; request/response in `requests`; scheduled messages in
//! `scheduling`.

mod bus_kit;
mod cancel;
mod churn;
mod factories;
mod factory;
mod failures;
mod flow;
mod kit;
mod operations;
mod requests;
mod round_trip;
mod routing;
mod scheduling;
mod suite;
mod tally;

pub use cancel::{cancel_stops_deliveries, cancellation};
pub use churn::{concurrent_subscribe_close, publisher_close, subscriber_restarts};
pub use factories::{AmqpFactory, MemoryFactory, NatsFactory, RedisFactory};
pub use factory::{Features, TransportFactory};
pub use failures::{continue_after_errors, redelivery};
pub use flow::{per_key_order, prefetch};
pub use operations::{
    browse_queues, endpoints_listed, remove_by_id, send_all_batches, teardown_declared,
};
pub use requests::{
    request_failure, request_from_handler, request_late_reply, request_reply_concurrent,
    request_timeout,
};
pub use round_trip::round_trip;
pub use routing::{competing_consumers, fan_out_groups, many_topics};
pub use scheduling::{scheduled_cancel, scheduled_events, scheduled_precision};
pub use suite::run;
