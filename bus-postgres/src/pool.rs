//! A small pool of connections of the storage's own.
//!
//! What the storage needs from a pool is little: a bound on connections, a wait for one with a
//! deadline, and the rule that a connection goes back only when its owner says it is clean
//! (no transaction left open). A connection dropped any other way is closed, and PostgreSQL
//! rolls back what it had open. That rule is easiest to keep in a few lines here, with no
//! other pool crate to follow across tokio-postgres versions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::StorageError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

/// Extra time the client gives a statement beyond the server's own `statement_timeout`, so
/// that the server's clearer error comes first when it can.
const CLIENT_MARGIN: Duration = Duration::from_secs(2);

/// The deadlines every wait of the storage keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) statement: Duration,
    pub(crate) acquire: Duration,
}

pub(crate) struct Pool {
    config: tokio_postgres::Config,
    /// The server as logs may show it: hosts, port, database, user; never the password.
    pub(crate) server: String,
    idle: Mutex<Vec<Idle>>,
    permits: Arc<Semaphore>,
    size: usize,
    pub(crate) timeouts: Timeouts,
}

struct Idle {
    client: Arc<Client>,
    statements: HashMap<String, Statement>,
}

/// A connection taken from the pool. Dropped without [`Conn::release`], it is closed.
pub(crate) struct Conn {
    client: Arc<Client>,
    statements: HashMap<String, Statement>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// The connection settings (the listening connection of the relay uses them too).
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub(crate) fn new(
        config: tokio_postgres::Config,
        server: String,
        size: usize,
        timeouts: Timeouts,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            config,
            server,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
            size,
            timeouts,
        })
    }

    /// A connection: an idle one still open, else a new one; waiting for a free slot no
    /// longer than the acquire timeout.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<Conn, StorageError> {
        let permit =
            tokio::time::timeout(self.timeouts.acquire, self.permits.clone().acquire_owned())
                .await
                .map_err(|_| StorageError::Other {
                    context: format!(
                        "all {} connections to PostgreSQL ({}) stayed busy for {:?}; raise \
                 `PostgresStorageBuilder::pool_size` or shorten the units of work",
                        self.size, self.server, self.timeouts.acquire
                    ),
                    source: None,
                })?
                .expect("the pool's semaphore is never closed");
        let reused = loop {
            let next = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                Some(idle) if idle.client.is_closed() => continue,
                other => break other,
            }
        };
        let idle = match reused {
            Some(idle) => idle,
            None => Idle {
                client: Arc::new(self.connect().await?),
                statements: HashMap::new(),
            },
        };
        Ok(Conn {
            client: idle.client,
            statements: idle.statements,
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// A new connection with the statement timeout set, driven by a task of its own.
    pub(crate) async fn connect(&self) -> Result<Client, StorageError> {
        let (client, connection) = self.timed_connect(self.config.connect(NoTls)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a PostgreSQL connection of the bus storage ended");
            }
        });
        let set = format!(
            "SET statement_timeout = {}",
            self.timeouts.statement.as_millis().max(1)
        );
        self.timed("setting the statement timeout", client.batch_execute(&set))
            .await?;
        Ok(client)
    }

    /// `connecting` within the connect timeout.
    pub(crate) async fn timed_connect<T>(
        &self,
        connecting: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(self.timeouts.connect, connecting).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(error)) => Err(crate::error::database("connecting", &self.server, error)),
            Err(_) => Err(StorageError::Other {
                context: format!(
                    "connecting to PostgreSQL ({}) got no answer within {:?}",
                    self.server, self.timeouts.connect
                ),
                source: None,
            }),
        }
    }

    /// `call` within the statement timeout (and a margin): every wait has a deadline, also
    /// when the network, not the server, stalls.
    pub(crate) async fn timed<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StorageError> {
        let limit = self.timeouts.statement + CLIENT_MARGIN;
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(error)) => Err(crate::error::database(what, &self.server, error)),
            Err(_) => Err(StorageError::Other {
                context: format!(
                    "{what} on PostgreSQL ({}) got no answer within {limit:?}",
                    self.server
                ),
                source: None,
            }),
        }
    }
}

impl Conn {
    /// The connection's client, shared with a [`crate::PgTransaction`] while one is held.
    pub(crate) fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// `sql` prepared on this connection, once per connection.
    async fn statement(&mut self, what: &str, sql: &str) -> Result<Statement, StorageError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.pool.timed(what, self.client.prepare(sql)).await?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub(crate) async fn query(
        &mut self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StorageError> {
        let statement = self.statement(what, sql).await?;
        self.pool
            .timed(what, self.client.query(&statement, params))
            .await
    }

    pub(crate) async fn execute(
        &mut self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StorageError> {
        let statement = self.statement(what, sql).await?;
        self.pool
            .timed(what, self.client.execute(&statement, params))
            .await
    }

    /// Statements without parameters (`BEGIN`, `COMMIT`, `NOTIFY`).
    pub(crate) async fn batch(&self, what: &str, sql: &str) -> Result<(), StorageError> {
        self.pool.timed(what, self.client.batch_execute(sql)).await
    }

    /// Give the connection back for reuse: its owner ended every transaction on it.
    pub(crate) fn release(self) {
        let Conn {
            client,
            statements,
            pool,
            _permit,
        } = self;
        // Shared still (a transaction guard kept past its unit of work): not clean to reuse.
        if client.is_closed() || Arc::strong_count(&client) != 1 {
            return;
        }
        pool.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Idle { client, statements });
    }
}
