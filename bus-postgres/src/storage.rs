//! [`PostgresStorage`] and its builder: connecting, migrating, dispatching.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bus_core::{Outgoing, SagaRecord, Session, Storage, StorageError, Transport};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use crate::outbox;
use crate::pool::{Conn, Pool, Timeouts};
use crate::session::PostgresSession;
use crate::sql::{Sql, MIGRATIONS};

/// What every clone of a storage, its sessions and its relay share.
pub(crate) struct Shared {
    pub(crate) pool: Arc<Pool>,
    pub(crate) sql: Sql,
    pub(crate) settings: Settings,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) send_timeout: Duration,
    pub(crate) relay_interval: Duration,
    pub(crate) relay_grace: Duration,
    pub(crate) relay_batch: usize,
}

/// Units of work in PostgreSQL: the transactional outbox, the inbox and saga state (see the
/// crate docs). Clones share one pool.
#[derive(Clone)]
pub struct PostgresStorage {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("server", &self.shared.pool.server)
            .field("outbox", &self.shared.sql.outbox)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`PostgresStorage`]: [`PostgresStorage::builder`].
#[derive(Clone)]
pub struct PostgresStorageBuilder {
    config: String,
    schema: Option<String>,
    prefix: String,
    pool_size: usize,
    timeouts: Timeouts,
    settings: Settings,
}

impl std::fmt::Debug for PostgresStorageBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorageBuilder")
            .field("schema", &self.schema)
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PostgresStorageBuilder {
    /// Create the tables in `schema` (created if missing) instead of the connection's
    /// search path.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Put `prefix` before every table name (`{prefix}bus_outbox`, ...) and the notification
    /// channel's: several buses, or tests, each with tables of their own in one database.
    /// Letters, digits and underscores; upper case is folded to lower case.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// At most this many connections (10 by default), each held by one unit of work while it
    /// runs, or by a dispatch; the relay's listening connection comes on top.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long connecting may take (10 s by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = timeout;
        self
    }

    /// The server's `statement_timeout` on the storage's connections, user statements
    /// included (30 s by default); the client waits this long plus a small margin.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.statement = timeout;
        self
    }

    /// How long opening a unit of work waits for a free connection (30 s by default).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.acquire = timeout;
        self
    }

    /// How long handing a batch of entries to the transport may take while their rows are
    /// locked (30 s by default); past it the entries stay for the relay.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.settings.send_timeout = timeout;
        self
    }

    /// How often the relay looks for entries nobody sent, notified or not (1 s by default).
    pub fn relay_interval(mut self, interval: Duration) -> Self {
        self.settings.relay_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How old an entry must be before the relay takes it (500 ms by default): the unit of
    /// work that committed it dispatches it at once, and the relay does not compete with that
    /// for fresh entries. Zero takes every committed entry (locked rows are skipped either
    /// way: an entry is never sent by two at once).
    pub fn relay_grace(mut self, grace: Duration) -> Self {
        self.settings.relay_grace = grace;
        self
    }

    /// How many entries the relay sends per transaction (500 by default).
    pub fn relay_batch(mut self, batch: usize) -> Self {
        self.settings.relay_batch = batch.max(1);
        self
    }

    /// Connect, and create or migrate the tables.
    pub async fn connect(self) -> Result<PostgresStorage, StorageError> {
        let mut config: tokio_postgres::Config = self.config.parse().map_err(|e| {
            // The parser's errors name options, never their values.
            StorageError::other("the PostgreSQL configuration does not parse", e)
        })?;
        if config.get_application_name().is_none() {
            config.application_name("bus-postgres");
        }
        let sql = Sql::new(self.schema.as_deref(), &self.prefix).map_err(|context| {
            StorageError::Other {
                context,
                source: None,
            }
        })?;
        let server = crate::error::describe(&config);
        let pool = Pool::new(config, server, self.pool_size, self.timeouts);
        let storage = PostgresStorage {
            shared: Arc::new(Shared {
                pool,
                sql,
                settings: self.settings,
            }),
        };
        storage.migrate().await?;
        Ok(storage)
    }
}

impl PostgresStorage {
    /// Connect with a libpq-style configuration (`host=127.0.0.1 user=postgres dbname=app`,
    /// or a `postgresql://` URL) and the default settings, and create or migrate the tables.
    pub async fn connect(config: &str) -> Result<Self, StorageError> {
        PostgresStorage::builder(config).connect().await
    }

    /// Settings first: table prefix and schema, pool size, timeouts, relay pace.
    pub fn builder(config: &str) -> PostgresStorageBuilder {
        PostgresStorageBuilder {
            config: config.to_string(),
            schema: None,
            prefix: String::new(),
            pool_size: 10,
            timeouts: Timeouts {
                connect: Duration::from_secs(10),
                statement: Duration::from_secs(30),
                acquire: Duration::from_secs(30),
            },
            settings: Settings {
                send_timeout: Duration::from_secs(30),
                relay_interval: Duration::from_secs(1),
                relay_grace: Duration::from_millis(500),
                relay_batch: 500,
            },
        }
    }

    /// The outbox table's name, as SQL names it (schema-qualified when there is one).
    pub fn outbox_table(&self) -> &str {
        &self.shared.sql.outbox
    }

    /// The inbox table's name.
    pub fn inbox_table(&self) -> &str {
        &self.shared.sql.inbox
    }

    /// The saga table's name.
    pub fn saga_table(&self) -> &str {
        &self.shared.sql.sagas
    }

    /// The migrations table's name.
    pub fn migrations_table(&self) -> &str {
        &self.shared.sql.migrations
    }

    /// The channel that commits notify and relays listen on.
    pub fn channel(&self) -> &str {
        &self.shared.sql.channel
    }

    /// Outbox entries committed and not yet handed to the transport.
    pub async fn undispatched(&self) -> Result<u64, StorageError> {
        let mut conn = self.shared.pool.get().await?;
        let rows = conn
            .query(
                "counting outbox entries",
                &self.shared.sql.count_outbox,
                &[],
            )
            .await?;
        conn.release();
        Ok(rows[0].get::<_, i64>(0) as u64)
    }

    /// The stored state of saga instance `id` of `saga`, if it is running.
    pub async fn saga(&self, saga: &str, id: &str) -> Result<Option<SagaRecord>, StorageError> {
        let mut conn = self.shared.pool.get().await?;
        let rows = conn
            .query(
                "loading a saga instance",
                &self.shared.sql.load_saga,
                &[&saga, &id],
            )
            .await?;
        conn.release();
        Ok(rows.first().map(|row| SagaRecord {
            state: row.get::<_, String>(0).into_bytes(),
            version: row.get(1),
        }))
    }

    /// Forget inbox records older than `age`; the number forgotten. A copy of a message
    /// redelivered after its record is gone runs again: keep records longer than any
    /// redelivery can take (the inbox is never purged on its own).
    pub async fn purge_inbox(&self, age: Duration) -> Result<u64, StorageError> {
        let mut conn = self.shared.pool.get().await?;
        let purged = conn
            .execute(
                "purging old inbox records",
                &self.shared.sql.purge_inbox,
                &[&age.as_secs_f64()],
            )
            .await?;
        conn.release();
        Ok(purged)
    }

    /// Drop the storage's tables, entries and all (e.g. at the end of a test).
    pub async fn drop_tables(&self) -> Result<(), StorageError> {
        let sql = &self.shared.sql;
        let conn = self.shared.pool.get().await?;
        conn.batch(
            "dropping the storage's tables",
            &format!(
                "DROP TABLE IF EXISTS {}, {}, {}, {}",
                sql.outbox, sql.inbox, sql.sagas, sql.migrations
            ),
        )
        .await?;
        conn.release();
        Ok(())
    }

    /// Apply the migrations not recorded yet, under a lock, so that buses starting together
    /// do not race to create the tables.
    async fn migrate(&self) -> Result<(), StorageError> {
        let sql = &self.shared.sql;
        let mut conn = self.shared.pool.get().await?;
        conn.batch("beginning the migrations", "BEGIN").await?;
        let applied = async {
            conn.query(
                "locking the migrations",
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                &[&sql.migrations],
            )
            .await?;
            if let Some(schema) = &sql.schema {
                conn.batch(
                    "creating the schema",
                    &format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
                )
                .await?;
            }
            conn.batch(
                "creating the migrations table",
                &format!(
                    "CREATE TABLE IF NOT EXISTS {} (version INT PRIMARY KEY, name TEXT NOT NULL, \
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                    sql.migrations
                ),
            )
            .await?;
            let done: Vec<i32> = conn
                .query(
                    "reading the applied migrations",
                    &format!("SELECT version FROM {}", sql.migrations),
                    &[],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for (version, name, text) in MIGRATIONS {
                if done.contains(version) {
                    continue;
                }
                conn.batch(
                    &format!("applying migration {version} ({name})"),
                    &sql.migration(text),
                )
                .await?;
                conn.execute(
                    "recording a migration",
                    &format!(
                        "INSERT INTO {} (version, name) VALUES ($1, $2)",
                        sql.migrations
                    ),
                    &[version, name],
                )
                .await?;
                tracing::info!(version, name, table = %sql.migrations, "applied a bus storage migration");
            }
            conn.batch("committing the migrations", "COMMIT").await
        }
        .await;
        match applied {
            Ok(()) => {
                conn.release();
                Ok(())
            }
            // Dropped, the connection closes and the server rolls back.
            Err(error) => Err(error),
        }
    }

    /// In one transaction: take the rows `select` finds (locked; rows another dispatcher
    /// holds are skipped), send them, delete them. The number sent.
    pub(crate) async fn send_taken(
        &self,
        transport: &dyn Transport,
        select: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<usize, StorageError> {
        let mut conn = self.shared.pool.get().await?;
        conn.batch("beginning a dispatch", "BEGIN").await?;
        match self.send_locked(&mut conn, transport, select, params).await {
            Ok(sent) => {
                conn.batch("committing a dispatch", "COMMIT").await?;
                conn.release();
                Ok(sent)
            }
            Err(error) => {
                if conn
                    .batch("rolling back a dispatch", "ROLLBACK")
                    .await
                    .is_ok()
                {
                    conn.release();
                }
                Err(error)
            }
        }
    }

    async fn send_locked(
        &self,
        conn: &mut Conn,
        transport: &dyn Transport,
        select: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<usize, StorageError> {
        let rows = conn.query("taking outbox entries", select, params).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut messages: Vec<Outgoing> = Vec::with_capacity(rows.len());
        for row in &rows {
            match outbox::outgoing(row) {
                Ok((id, out)) => {
                    ids.push(id);
                    messages.push(out);
                }
                // Left in place, for someone to look at: sending it cannot succeed.
                Err((id, why)) => tracing::error!(
                    table = %self.shared.sql.outbox,
                    id,
                    %why,
                    "an outbox entry does not read as a message; it is left unsent"
                ),
            }
        }
        if messages.is_empty() {
            return Ok(0);
        }
        let count = messages.len();
        let limit = self.shared.settings.send_timeout;
        match tokio::time::timeout(limit, transport.send_batch(messages)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(StorageError::other(
                    format!(
                        "sending {count} outbox entries through {} failed ({error}); they stay \
                         in the outbox for the relay",
                        transport.name()
                    ),
                    error,
                ))
            }
            Err(_) => {
                return Err(StorageError::Other {
                    context: format!(
                        "sending {count} outbox entries through {} took longer than {limit:?}; \
                         they stay in the outbox for the relay",
                        transport.name()
                    ),
                    source: None,
                })
            }
        }
        conn.execute(
            "deleting sent outbox entries",
            &self.shared.sql.delete_ids,
            &[&ids],
        )
        .await?;
        Ok(count)
    }

    /// Send up to a batch of entries older than the grace; the number sent.
    pub(crate) async fn sweep_once(
        &self,
        transport: &dyn Transport,
    ) -> Result<usize, StorageError> {
        let settings = self.shared.settings;
        let grace = settings.relay_grace.as_secs_f64();
        let batch = settings.relay_batch as i64;
        self.send_taken(transport, &self.shared.sql.take_due, &[&grace, &batch])
            .await
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    fn name(&self) -> &str {
        "postgres"
    }

    async fn open(&self, handling: Option<(&str, &str)>) -> Result<Box<dyn Session>, StorageError> {
        let handling = handling.map(|(e, m)| (e.to_string(), m.to_string()));
        Ok(Box::new(
            PostgresSession::begin(self.shared.clone(), handling).await?,
        ))
    }

    async fn dispatch(&self, ids: &[i64], transport: &dyn Transport) -> Result<(), StorageError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.send_taken(transport, &self.shared.sql.take_ids, &[&ids])
            .await
            .map(drop)
    }

    async fn relay(&self, transport: Arc<dyn Transport>, stop: CancellationToken) {
        crate::relay::run(self.clone(), transport, stop).await
    }
}
