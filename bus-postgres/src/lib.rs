//! # bus-postgres: units of work in PostgreSQL
//!
//! [`PostgresStorage`] is a [`bus_core::Storage`]: every handler attempt of an endpoint (and
//! every [`bus_core::Bus::unit_of_work`]) runs in one PostgreSQL transaction holding
//!
//! - the handler's own writes, through [`PostgresContext::transaction`] in a handler or
//!   [`PostgresSession::client`],
//! - the saga state it changed,
//! - the record that the message was handled (the inbox),
//! - and the messages it sent, as outbox entries,
//!
//! which commit together or not at all. After the commit the entries are handed to the
//! transport and deleted ([`bus_core::Storage::dispatch`]); entries left behind (a failed
//! send, a crash) are sent by the relay the running bus keeps going.
//!
//! ## Tables
//!
//! Created by migrations shipped in the crate (`migrations/*.sql`), applied at
//! [`PostgresStorageBuilder::connect`] under an advisory lock and recorded in
//! `{prefix}bus_migrations`, so that connecting again, or from many buses at once, changes
//! nothing. Names take the builder's [`prefix`](PostgresStorageBuilder::prefix) and
//! [`schema`](PostgresStorageBuilder::schema):
//!
//! | table | columns |
//! |---|---|
//! | `{prefix}bus_outbox` | `id BIGSERIAL` key, `destination TEXT` (as [`bus_core::Destination::to_header`] writes it), `headers JSONB` (message id, type, content type, correlation id, sent time in ns since the epoch, custom headers), `body BYTEA`, `deliver_at TIMESTAMPTZ NULL` (a scheduled message), `created_at` |
//! | `{prefix}bus_inbox` | `(endpoint, message_id)` key, `handled_at` |
//! | `{prefix}bus_sagas` | `(saga, id)` key, `state JSONB`, `version BIGINT`, `updated_at` |
//!
//! A retry's delay is never stored: it is the transport's to apply when the message fails.
//! Bodies are stored as the bytes they are; a typed in-process body (the in-memory
//! transport's default) cannot be, and committing one fails with advice
//! (`MemoryTransport::new().serialize(true)`, or a broker).
//!
//! ## Guarantees
//!
//! - No loss: a message a handler sent is committed with the handler's work, and stays in the
//!   outbox until the transport confirmed it.
//! - No phantom: a rolled-back attempt (a failing handler, a saga conflict) sends nothing.
//! - No double send in normal operation: a dispatch and the relays take entries with
//!   `FOR UPDATE SKIP LOCKED`, and each entry is deleted in the transaction that sent it.
//!   Only a crash (or a lost connection) between the send and that commit sends an entry
//!   again; the receiving endpoint's inbox drops the copy.
//! - Exactly-once handling: a redelivered message finds its inbox record and is acked
//!   without running; two copies handled at once cannot both commit (the second's inbox
//!   insert finds the first's: it rolls back and its retry sees the message handled).
//! - Sagas: optimistic concurrency. A save names the version it read; a concurrent change
//!   makes it [`bus_core::StorageError::Conflict`] at once (PostgreSQL makes the second writer
//!   wait for the first's transaction), and the attempt is retried on the new state.
//!
//! ## Connections and deadlines
//!
//! The storage keeps a small pool of its own (`pool_size`, 10 by default) rather than
//! depending on a pool crate: all it needs is a bounded number of connections, a deadline to
//! get one, and the rule that only a connection whose transaction ended cleanly goes back.
//! A session dropped without commit or rollback closes its connection, and the server rolls
//! back. Each unit of work holds a connection while it runs: a handler that opens another
//! unit of work of the same storage needs two. The relay listens on a connection of its own.
//!
//! Every wait has a deadline: connecting (`connect_timeout`), getting a connection
//! (`acquire_timeout`), each statement (`statement_timeout`, set on the server and kept by
//! the client with a small margin), each send to the transport (`send_timeout`). Errors are
//! [`bus_core::StorageError`]s naming what failed and the server by host, port, database and
//! user: never the password. Connections are plain TCP (`NoTls`).
//!
//! The relay sends entries older than a grace (`relay_grace`, 500 ms) so it does not compete
//! with the committer's own dispatch, wakes on the commits' `NOTIFY`, and looks at least every
//! `relay_interval` (1 s) for what a notification did not announce. A lost connection (the
//! server restarted) is logged, and the relay reconnects with a backoff up to 5 s.
//!
//! The inbox grows with every handled message: [`PostgresStorage::purge_inbox`] forgets old
//! records.
//!
//! ## Example
//!
//! ```no_run
//! use bus_core::{Bus, Command, HandlerError, MessageContext};
//! use bus_postgres::{PostgresContext, PostgresStorage};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Command, Serialize, Deserialize, Clone, Debug)]
//! #[command(name = "shop.PlaceOrder", endpoint = "sales")]
//! struct PlaceOrder { order: i64 }
//!
//! #[derive(Command, Serialize, Deserialize, Clone, Debug)]
//! #[command(name = "shop.ShipOrder", endpoint = "shipping")]
//! struct ShipOrder { order: i64 }
//!
//! async fn place(cmd: PlaceOrder, ctx: MessageContext) -> Result<(), HandlerError> {
//!     let tx = ctx.transaction().await?;
//!     tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&cmd.order]).await?;
//!     drop(tx);
//!     // Leaves only if the insert commits.
//!     ctx.send(ShipOrder { order: cmd.order }).await?;
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let storage = PostgresStorage::builder("host=127.0.0.1 user=postgres dbname=shop")
//!     .prefix("shop_")
//!     .pool_size(16)
//!     .connect()
//!     .await?;
//! let bus = Bus::builder()
//!     .transport(bus_transport_memory::MemoryTransport::new().serialize(true))
//!     .storage(storage)
//!     .without_discovery()
//!     .handler("sales", place)
//!     .start()
//!     .await?;
//!
//! // Outside handlers: the service's own writes and its messages, together.
//! let mut work = bus.unit_of_work().await?;
//! let session = work
//!     .downcast::<bus_postgres::PostgresSession>()
//!     .expect("the bus's storage is PostgreSQL");
//! session.client().execute("INSERT INTO orders (id) VALUES (8)", &[]).await?;
//! work.send(ShipOrder { order: 8 })?;
//! work.commit().await?;
//! # Ok(()) }
//! ```

mod context;
mod error;
mod outbox;
mod pool;
mod relay;
mod session;
mod sql;
mod storage;

pub use context::{PgTransaction, PostgresContext};
pub use session::PostgresSession;
pub use storage::{PostgresStorage, PostgresStorageBuilder};
pub use tokio_postgres;
