//! Storage a handler's work commits with: the transactional outbox, the inbox in the same
//! transaction, and saga state.
//!
//! Without storage, a handler that writes to its database and sends a message makes two
//! commits, and a crash between them loses the message or sends one for a change that was
//! rolled back. With a [`Storage`] on the endpoint, each handler attempt runs in a
//! [`Session`]: one database transaction holding the user's own writes (reached through
//! [`crate::MessageContext::session`]), the saga state the handler changed, the record that
//! the message was handled (an inbox: a redelivered copy finds it and is acked without
//! running again), and the messages the handler sent, stored as outbox entries. They commit
//! together or not at all. Once committed, the entries are handed to the transport and then
//! forgotten ([`Storage::dispatch`]); entries a crash left behind are sent by the storage's
//! relay ([`Storage::relay`]), which a running bus keeps going. A crash between the send and
//! the forgetting sends an entry twice; the receiving endpoint's inbox drops the copy.
//!
//! Outside a handler (an HTTP handler of the service), [`crate::Bus::unit_of_work`] opens the
//! same kind of session: the user's writes and the messages sent through it commit together.
//!
//! [`MemoryStorage`](crate::MemoryStorage) keeps all of it in process, for tests; a database
//! crate provides the durable one (`bus-postgres`).

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::StorageError;
use crate::transport::{Outgoing, Transport};

/// A saga instance's state as stored, with the version that guards concurrent changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaRecord {
    /// The serialized state (JSON).
    pub state: Vec<u8>,
    /// Bumped by every save; a save names the version it read.
    pub version: i64,
}

/// One unit of work: a transaction of the storage, open while a handler attempt (or a
/// [`crate::UnitOfWork`]) runs.
#[async_trait]
pub trait Session: Send + 'static {
    /// Whether the message this session handles was handled before (its record committed by
    /// an earlier session). Always `false` for a session outside a handler.
    async fn handled_before(&mut self) -> Result<bool, StorageError>;

    /// The saga instance `id` of saga `saga`, if one is stored.
    async fn load_saga(&mut self, saga: &str, id: &str)
        -> Result<Option<SagaRecord>, StorageError>;

    /// Store the saga instance's state: a new instance when `read` is `None`, else a change of
    /// the version read. Another session having changed (or created) it first is
    /// [`StorageError::Conflict`], at once or at commit.
    async fn save_saga(
        &mut self,
        saga: &str,
        id: &str,
        state: Vec<u8>,
        read: Option<i64>,
    ) -> Result<(), StorageError>;

    /// Remove the finished saga instance whose version `read` was loaded (a conflict as for
    /// [`Session::save_saga`]).
    async fn complete_saga(&mut self, saga: &str, id: &str, read: i64) -> Result<(), StorageError>;

    /// Commit everything: the user's writes, the saga changes, the record that the message
    /// was handled, and `outgoing` as outbox entries; the ids of those entries, in order, to
    /// hand them to [`Storage::dispatch`].
    async fn commit(self: Box<Self>, outgoing: Vec<Outgoing>) -> Result<Vec<i64>, StorageError>;

    /// Undo everything.
    async fn rollback(self: Box<Self>);

    /// The session as its concrete type, for the storage crate's own access (e.g. its
    /// database transaction).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Where units of work keep their writes, outbox entries, inbox records and saga state.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// A short name for logs, e.g. `postgres`.
    fn name(&self) -> &str;

    /// Open a session: for handling `message_id` at `endpoint` (`handling`), whose record is
    /// committed with it, or outside any handler (`None`).
    async fn open(&self, handling: Option<(&str, &str)>) -> Result<Box<dyn Session>, StorageError>;

    /// Hand the committed outbox entries `ids` to `transport` and forget them. An entry another
    /// dispatcher (a relay) is sending right now is left to it, so none is sent twice in
    /// normal operation. An error leaves the entries for the relay.
    async fn dispatch(&self, ids: &[i64], transport: &dyn Transport) -> Result<(), StorageError>;

    /// Send committed entries that were not dispatched (a crash, a failed send), until `stop`
    /// is cancelled. Several relays (one per running bus) share the work.
    async fn relay(&self, transport: Arc<dyn Transport>, stop: CancellationToken);
}
