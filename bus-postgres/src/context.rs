//! [`PostgresContext`]: a handler's way to its unit of work's transaction.

use std::future::Future;
use std::sync::Arc;

use bus_core::{BusError, MessageContext, SessionGuard, StorageError};
use tokio_postgres::Client;

use crate::PostgresSession;

/// The transaction of a handler's unit of work, borrowed from its [`MessageContext`]: it
/// derefs to the [`Client`], and what runs through it commits with the messages the handler
/// sends. Drop it before the handler returns (the unit of work cannot commit while it is
/// held); holding it also makes other handlers of the attempt wait for it.
pub struct PgTransaction<'a> {
    guard: SessionGuard<'a>,
    client: Arc<Client>,
}

impl PgTransaction<'_> {
    /// The session itself, e.g. for the message it handles.
    pub fn session(&mut self) -> &mut PostgresSession {
        self.guard
            .downcast::<PostgresSession>()
            .expect("checked when the transaction was borrowed")
    }
}

impl std::ops::Deref for PgTransaction<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::fmt::Debug for PgTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgTransaction")
    }
}

/// The PostgreSQL transaction of a handler's unit of work:
/// `let tx = ctx.transaction().await?; tx.execute(..).await?;`. Implemented for
/// [`MessageContext`] (a [`bus_core::SagaContext`] derefs to it).
pub trait PostgresContext {
    /// The transaction of the attempt's unit of work. [`BusError::NoStorage`] on an endpoint
    /// without storage; a storage error when the endpoint's storage is not a
    /// [`crate::PostgresStorage`].
    fn transaction(&self) -> impl Future<Output = Result<PgTransaction<'_>, BusError>> + Send;
}

impl PostgresContext for MessageContext {
    async fn transaction(&self) -> Result<PgTransaction<'_>, BusError> {
        let mut guard = self.session().await?;
        let client = match guard.downcast::<PostgresSession>() {
            Some(session) => session.shared_client(),
            None => {
                return Err(BusError::Storage(StorageError::Other {
                    context: "this endpoint's storage is not a `bus_postgres::PostgresStorage`: \
                              it has no PostgreSQL transaction"
                        .into(),
                    source: None,
                }))
            }
        };
        Ok(PgTransaction { guard, client })
    }
}
