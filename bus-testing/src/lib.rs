//! # bus-testing: test your handlers and flows
//!
//! Two tools, for two kinds of test (the guide is `docs/testing.md`):
//!
//! - [`TestHarness`] runs a real bus inside a `#[tokio::test]` (on the in-memory transport by
//!   default, encoding every message as a broker would; or on any transport; or on the
//!   configured broker under a namespace of its own) and records everything it does: what it
//!   sent, published, each handler attempt and its outcome, what it moved to an error queue.
//!   Read it typed ([`TestHarness::published`], [`TestHarness::failed`]...), wait for it with a
//!   deadline ([`TestHarness::wait_for_handled`], [`TestHarness::wait_until_quiet`]...; a
//!   timeout is an error listing what was seen, never a hang), read an error queue
//!   ([`TestHarness::error_queue`]) and [`stop`](TestHarness::stop), which also removes what
//!   the bus declared on the broker.
//! - [`TestContext`] runs one handler without a bus: hand it the context, call the handler,
//!   read what it sent and published.
//!
//! ```
//! use bus_core::{Command, Event, HandlerError, MessageContext};
//! use bus_testing::TestHarness;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
//! #[command(name = "doc.lib.PlaceOrder", endpoint = "doc-lib-sales")]
//! struct PlaceOrder { id: u32, quantity: u32 }
//!
//! #[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
//! #[event(name = "doc.lib.OrderPlaced")]
//! struct OrderPlaced { id: u32 }
//!
//! #[bus_core::handler]
//! async fn place(cmd: PlaceOrder, ctx: MessageContext) -> Result<(), HandlerError> {
//!     if cmd.quantity == 0 {
//!         return Err(HandlerError::unrecoverable(format!("order {} is empty", cmd.id)));
//!     }
//!     ctx.publish(OrderPlaced { id: cmd.id }).await?;
//!     Ok(())
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let harness = TestHarness::start(["doc-lib-sales"]).await?;
//! harness.send(PlaceOrder { id: 1, quantity: 2 }).await?;
//! harness.send(PlaceOrder { id: 2, quantity: 0 }).await?;
//!
//! assert_eq!(harness.wait_for_published::<OrderPlaced>().await?, OrderPlaced { id: 1 });
//! let failed = harness.wait_for_failed::<PlaceOrder>().await?;
//! assert_eq!(failed.message.id, 2);
//! assert_eq!(failed.failure.reason, "handler-error");
//! assert_eq!(failed.failure.error, "order 2 is empty");
//!
//! // The error queue itself, read through the transport.
//! let queued = harness.error_queue::<PlaceOrder>("doc-lib-sales").await?;
//! assert_eq!(queued.len(), 1);
//! assert_eq!(queued[0].message, PlaceOrder { id: 2, quantity: 0 });
//!
//! harness.wait_until_quiet().await?;
//! harness.stop().await?;
//! # Ok::<(), bus_testing::HarnessError>(())
//! # }).unwrap();
//! ```
//!
//! How it sees the bus: only through the bus's public extension points. The harness wraps the
//! transport it runs on (every outgoing message: a send, a publish, a delayed retry, a move to
//! an error queue; every delivery) and adds a [layer](bus_core::Layer) to the bus, outermost,
//! which sees every handler attempt and its outcome.
//!
//! Where things live: `harness` ([`TestHarness`], [`HarnessBuilder`]), `wait` ([`Wait`]),
//! `records` (what is recorded: [`Activity`], [`Attempt`], [`Failed`], [`Seen`]),
//! `observe` (the recording transport and layer), `context` ([`TestContext`]), `error`
//! ([`HarnessError`]).

mod context;
mod error;
mod harness;
mod observe;
mod records;
mod wait;

pub use context::TestContext;
pub use error::{HarnessError, TimedOut};
pub use harness::{HarnessBuilder, StopReport, TestHarness, DEFAULT_SETTLE, DEFAULT_WAIT};
pub use records::{
    Activity, Attempt, AttemptFailure, AttemptRecord, Failed, FailureDetails, PendingMessage, Seen,
};
pub use wait::Wait;

/// The testing guide's code blocks, compiled and run as doctests so the guide never rots.
#[cfg(doctest)]
#[doc = include_str!("../../docs/testing.md")]
pub struct TestingGuideDoctests;
