//! [`PostgresSession`]: one unit of work, a connection with its transaction open.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bus_core::{Outgoing, SagaRecord, Session, StorageError};
use tokio_postgres::Client;

use crate::outbox::Rows;
use crate::pool::Conn;
use crate::storage::Shared;

/// A unit of work of [`crate::PostgresStorage`]: one connection of its pool, with a
/// transaction open from the start. The handler's own SQL goes through [`client`]
/// (`ctx.transaction()` with [`crate::PostgresContext`] in a handler), and commits with the
/// saga state, the inbox record and the outbox entries, or not at all.
///
/// A session dropped without commit or rollback closes its connection instead of returning it
/// to the pool, and PostgreSQL rolls the transaction back.
///
/// [`client`]: PostgresSession::client
pub struct PostgresSession {
    conn: Conn,
    shared: Arc<Shared>,
    handling: Option<(String, String)>,
}

impl std::fmt::Debug for PostgresSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSession")
            .field("handling", &self.handling)
            .finish_non_exhaustive()
    }
}

impl PostgresSession {
    pub(crate) async fn begin(
        shared: Arc<Shared>,
        handling: Option<(String, String)>,
    ) -> Result<Self, StorageError> {
        let conn = shared.pool.get().await?;
        conn.batch("beginning a unit of work", "BEGIN").await?;
        Ok(PostgresSession {
            conn,
            shared,
            handling,
        })
    }

    /// The connection, inside the session's transaction: the unit of work's own SQL goes
    /// here and commits with it. Do not `COMMIT` or `ROLLBACK` through it; the session does.
    pub fn client(&self) -> &Client {
        self.conn.client()
    }

    pub(crate) fn shared_client(&self) -> Arc<Client> {
        self.conn.client().clone()
    }

    /// The message this session handles, as `(endpoint, message id)`; `None` outside a
    /// handler.
    pub fn handling(&self) -> Option<(&str, &str)> {
        self.handling
            .as_ref()
            .map(|(e, m)| (e.as_str(), m.as_str()))
    }

    async fn commit_inner(&mut self, outgoing: &[Outgoing]) -> Result<Vec<i64>, StorageError> {
        let sql = &self.shared.sql;
        let rows = Rows::of(outgoing)?;
        let mut checked = false;
        if let Some((endpoint, message_id)) = &self.handling {
            let inserted = self
                .conn
                .execute(
                    "recording the handled message in the inbox",
                    &sql.record_handled,
                    &[endpoint, message_id],
                )
                .await?;
            if inserted == 0 {
                return Err(StorageError::Other {
                    context: format!(
                        "message `{message_id}` was handled at endpoint `{endpoint}` by another \
                         unit of work at the same time (a redelivered copy); this one is rolled \
                         back, and the retry finds it handled"
                    ),
                    source: None,
                });
            }
            checked = true;
        }
        let mut ids = Vec::new();
        if !outgoing.is_empty() {
            let bodies = rows.bodies();
            let inserted = self
                .conn
                .query(
                    "storing outgoing messages in the outbox",
                    &sql.insert_outbox,
                    &[&rows.destinations, &rows.headers, &bodies, &rows.deliver_at],
                )
                .await?;
            ids = inserted.iter().map(|r| r.get::<_, i64>(0)).collect();
            // Ids ascend in insertion order, which is the order given.
            ids.sort_unstable();
            self.conn
                .batch(
                    "notifying the outbox relays",
                    &format!("NOTIFY {}", sql.channel),
                )
                .await?;
            checked = true;
        }
        if !checked {
            // PostgreSQL answers COMMIT of a failed transaction with a rollback, not an
            // error: a statement first makes such a transaction fail loudly.
            self.conn
                .batch("checking the unit of work's transaction", "SELECT 1")
                .await?;
        }
        self.conn
            .batch("committing the unit of work", "COMMIT")
            .await?;
        Ok(ids)
    }
}

#[async_trait]
impl Session for PostgresSession {
    async fn handled_before(&mut self) -> Result<bool, StorageError> {
        let Some((endpoint, message_id)) = &self.handling else {
            return Ok(false);
        };
        let rows = self
            .conn
            .query(
                "reading the inbox",
                &self.shared.sql.handled,
                &[endpoint, message_id],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn load_saga(
        &mut self,
        saga: &str,
        id: &str,
    ) -> Result<Option<SagaRecord>, StorageError> {
        let rows = self
            .conn
            .query(
                "loading a saga instance",
                &self.shared.sql.load_saga,
                &[&saga, &id],
            )
            .await?;
        Ok(rows.first().map(|row| SagaRecord {
            state: row.get::<_, String>(0).into_bytes(),
            version: row.get(1),
        }))
    }

    async fn save_saga(
        &mut self,
        saga: &str,
        id: &str,
        state: Vec<u8>,
        read: Option<i64>,
    ) -> Result<(), StorageError> {
        let state = String::from_utf8(state).map_err(|e| {
            StorageError::other(
                format!("the state of saga `{saga}` instance `{id}` is not JSON text"),
                e,
            )
        })?;
        let sql = &self.shared.sql;
        // A concurrent insert or update of the instance makes these wait for its transaction,
        // and then find nothing to change: the conflict shows at once.
        let changed = match read {
            None => {
                self.conn
                    .execute(
                        "storing a new saga instance",
                        &sql.insert_saga,
                        &[&saga, &id, &state],
                    )
                    .await?
            }
            Some(version) => {
                self.conn
                    .execute(
                        "storing a saga instance",
                        &sql.update_saga,
                        &[&saga, &id, &state, &version],
                    )
                    .await?
            }
        };
        if changed == 0 {
            return Err(conflict(saga, id));
        }
        Ok(())
    }

    async fn complete_saga(&mut self, saga: &str, id: &str, read: i64) -> Result<(), StorageError> {
        let deleted = self
            .conn
            .execute(
                "removing a completed saga instance",
                &self.shared.sql.delete_saga,
                &[&saga, &id, &read],
            )
            .await?;
        if deleted == 0 {
            return Err(conflict(saga, id));
        }
        Ok(())
    }

    async fn commit(
        mut self: Box<Self>,
        outgoing: Vec<Outgoing>,
    ) -> Result<Vec<i64>, StorageError> {
        match self.commit_inner(&outgoing).await {
            Ok(ids) => {
                self.conn.release();
                Ok(ids)
            }
            Err(error) => {
                self.rollback().await;
                Err(error)
            }
        }
    }

    async fn rollback(self: Box<Self>) {
        let this = *self;
        match this
            .conn
            .batch("rolling back the unit of work", "ROLLBACK")
            .await
        {
            Ok(()) => this.conn.release(),
            // The connection closes as it drops, and the server rolls back with it.
            Err(error) => tracing::debug!(%error, "rolling back failed; closing the connection"),
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

fn conflict(saga: &str, id: &str) -> StorageError {
    StorageError::Conflict {
        saga: saga.to_string(),
        id: id.to_string(),
    }
}
