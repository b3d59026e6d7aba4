//! The idempotent-consumer option: an inbox of handled message ids per endpoint.
//!
//! At-least-once delivery means a message can arrive twice (a crash between handling and
//! acking, a connection lost before the ack reached the broker). With an inbox, an endpoint
//! records the id of every message it handled successfully and acks a second copy without
//! running its handlers again. Enable it with [`crate::EndpointConfig::inbox`].
//!
//! The record is written after the handler succeeded and its outgoing messages were accepted,
//! before the ack; a crash between the handler's side effect and the record can still let one
//! duplicate through. For exactly-once side effects, keep the side effect and the record in one
//! database transaction.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::TransportError;

/// A store of handled message ids, per endpoint.
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Whether `message_id` was already handled by `endpoint`.
    async fn contains(&self, endpoint: &str, message_id: &str) -> Result<bool, TransportError>;
    /// Remember that `endpoint` handled `message_id`.
    async fn record(&self, endpoint: &str, message_id: &str) -> Result<(), TransportError>;
}

/// An in-memory inbox remembering the last `capacity` ids (per process; oldest forgotten first).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use bus_core::{Inbox, MemoryInbox};
///
/// let inbox = MemoryInbox::new(2);
/// inbox.record("billing", "a").await.unwrap();
/// inbox.record("billing", "b").await.unwrap();
/// assert!(inbox.contains("billing", "a").await.unwrap());
/// assert!(!inbox.contains("shipping", "a").await.unwrap());
/// inbox.record("billing", "c").await.unwrap(); // forgets "a"
/// assert!(!inbox.contains("billing", "a").await.unwrap());
/// # });
/// ```
pub struct MemoryInbox {
    capacity: usize,
    state: Mutex<Remembered>,
}

/// (endpoint, message id) pairs: a set to look up, and their order to forget the oldest.
type Remembered = (HashSet<(String, String)>, VecDeque<(String, String)>);

impl MemoryInbox {
    /// An inbox keeping at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        MemoryInbox {
            capacity: capacity.max(1),
            state: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }
}

impl std::fmt::Debug for MemoryInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryInbox")
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[async_trait]
impl Inbox for MemoryInbox {
    async fn contains(&self, endpoint: &str, message_id: &str) -> Result<bool, TransportError> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(state
            .0
            .contains(&(endpoint.to_string(), message_id.to_string())))
    }

    async fn record(&self, endpoint: &str, message_id: &str) -> Result<(), TransportError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = (endpoint.to_string(), message_id.to_string());
        if state.0.insert(key.clone()) {
            state.1.push_back(key);
            while state.1.len() > self.capacity {
                if let Some(old) = state.1.pop_front() {
                    state.0.remove(&old);
                }
            }
        }
        Ok(())
    }
}

/// An inbox in PostgreSQL (feature `postgres`): survives restarts and is shared by every
/// instance of an endpoint.
#[cfg(feature = "postgres")]
pub mod postgres {
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::Mutex;
    use tokio_postgres::{Client, NoTls};

    use super::Inbox;
    use crate::error::TransportError;

    /// Handled message ids in a table `(endpoint, message_id, handled_at)`, created if missing.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), bus_core::TransportError> {
    /// use bus_core::postgres::PostgresInbox;
    /// let inbox = PostgresInbox::connect("host=127.0.0.1 user=postgres dbname=test", "bus_inbox").await?;
    /// let config = bus_core::EndpointConfig::default().inbox(inbox);
    /// # Ok(()) }
    /// ```
    pub struct PostgresInbox {
        config: String,
        table: String,
        client: Mutex<Option<Client>>,
    }

    impl std::fmt::Debug for PostgresInbox {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PostgresInbox")
                .field("table", &self.table)
                .finish()
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    impl PostgresInbox {
        /// Connect with a libpq-style configuration string and make sure the table exists.
        /// The table name must be a plain identifier.
        pub async fn connect(config: &str, table: &str) -> Result<Self, TransportError> {
            if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(TransportError::Other {
                    context: format!(
                        "inbox table name `{table}` must be letters, digits and underscores"
                    ),
                    source: None,
                });
            }
            let inbox = PostgresInbox {
                config: config.to_string(),
                table: table.to_string(),
                client: Mutex::new(None),
            };
            let client = inbox.open().await?;
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {table} (endpoint TEXT NOT NULL, message_id TEXT NOT NULL, \
                 handled_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (endpoint, message_id))"
            );
            timed(client.batch_execute(&ddl)).await?;
            *inbox.client.lock().await = Some(client);
            Ok(inbox)
        }

        async fn open(&self) -> Result<Client, TransportError> {
            let (client, connection) = timed(tokio_postgres::connect(&self.config, NoTls)).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "inbox database connection ended");
                }
            });
            Ok(client)
        }

        /// Run `f` on a live client, reconnecting once if the connection was lost.
        async fn with_client<T>(
            &self,
            f: impl for<'c> Fn(
                &'c Client,
            )
                -> futures_util::future::BoxFuture<'c, Result<T, tokio_postgres::Error>>,
        ) -> Result<T, TransportError> {
            let mut guard = self.client.lock().await;
            if guard.as_ref().is_none_or(Client::is_closed) {
                *guard = Some(self.open().await?);
            }
            let client = guard.as_ref().expect("a client was just opened");
            timed(f(client)).await
        }
    }

    async fn timed<T>(
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, TransportError> {
        TransportError::within("an inbox database call", TIMEOUT, f)
            .await?
            .map_err(|e| TransportError::connection("inbox database", e))
    }

    #[async_trait]
    impl Inbox for PostgresInbox {
        async fn contains(&self, endpoint: &str, message_id: &str) -> Result<bool, TransportError> {
            let sql = format!(
                "SELECT 1 FROM {} WHERE endpoint = $1 AND message_id = $2",
                self.table
            );
            let rows = self
                .with_client(|c| {
                    let sql = sql.clone();
                    let (e, m) = (endpoint.to_string(), message_id.to_string());
                    Box::pin(async move { c.query(&sql, &[&e, &m]).await })
                })
                .await?;
            Ok(!rows.is_empty())
        }

        async fn record(&self, endpoint: &str, message_id: &str) -> Result<(), TransportError> {
            let sql = format!(
                "INSERT INTO {} (endpoint, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                self.table
            );
            self.with_client(|c| {
                let sql = sql.clone();
                let (e, m) = (endpoint.to_string(), message_id.to_string());
                Box::pin(async move { c.execute(&sql, &[&e, &m]).await })
            })
            .await?;
            Ok(())
        }
    }
}
