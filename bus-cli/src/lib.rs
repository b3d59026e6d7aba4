//! # bus-cli: operate the bus from a terminal
//!
//! The `bus` command works the same on every transport (in-memory, RabbitMQ, NATS JetStream,
//! Redis Streams), reading the transport as the services do (`BUS_TRANSPORT`, `bus.toml`,
//! `--transport URL`; `--prefix` for a namespace):
//!
//! ```text
//! bus endpoints                                  # endpoints, queue depths, consumers
//! bus errors list sales [--limit 50] [--after ID]
//! bus errors show sales ID                       # every header, the body pretty-printed
//! bus errors retry sales ID... | --all | --reason timeout
//! bus errors delete sales ID... | --all
//! bus errors export sales failed.jsonl           # JSON lines, bodies byte-exact
//! bus errors import failed.jsonl
//! bus send sales shop.PlaceOrder '{"order_id":7}'
//! bus publish shop.OrderPlaced '{"order_id":7}'
//! ```
//!
//! Every command prints for people by default and JSON with `--json`.
//!
//! The library under it, [`Operations`], does the same through any [`bus_core::Transport`],
//! for tests and tools of your own. A retry sends the message back to its endpoint with its
//! own message id and its failure headers kept as history, and takes it out of the error
//! queue only once the transport accepted the resend: a crash in between duplicates it,
//! never loses it.
//!
//! Where things live: `ops` ([`Operations`], [`Selection`]), `records` (what is printed and
//! exported: [`EndpointRow`], [`FailedRow`], [`MessageRecord`]), `render` (the human output),
//! `error` ([`CliError`]).

mod error;
mod ops;
pub mod rates;
mod records;
pub mod render;
pub mod ui;

pub use error::CliError;
pub use ops::{Operations, Outcome, Selection, MAX_SCAN};
pub use records::{EndpointRow, FailedRow, MessageRecord};
