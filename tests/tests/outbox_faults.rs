//! The transactional outbox in PostgreSQL through crashes and restarts (RELIABILITY.md part
//! E): a worker process (`bus-outbox-worker`) hosts endpoint `ledger`, whose handler of
//! `Deposit { n }` writes `n` to a business table and sends `Recorded { n }` to endpoint
//! `audit` in one unit of work; the test process hosts `audit`, which writes each `n` to a
//! table of its own in its unit of work (its inbox in the same transaction). Every deposit
//! divisible by 97 is refused after its write and its send, so both must roll back.
//!
//! Checked at the end, from the tables and the ledger's error queue: every accepted deposit is
//! in both tables exactly once (lost 0, business duplicates 0), no refused one is in either
//! (phantom 0) and each is in the error queue. Copies of `Recorded` the audit's inbox
//! absorbed are reported in the faults text.
//!
//! - E34 the worker is killed (it sends itself SIGKILL at its crash point) between the commit
//!   and the send, then between the send and the outbox delete, a few times, each time
//!   replaced by a new one whose relay sends what the dead one left: on RabbitMQ and Redis.
//! - E35 PostgreSQL stopped and started again while the relay has rows pending and commits
//!   are under way; and two workers whose relays and dispatches compete for one outbox, none
//!   crashing: no row sent twice. On RabbitMQ.
//!
//! The tests run one at a time (a lock): one of them stops PostgreSQL, and a guard starts it
//! again, also when the test fails. Each has tables of its own (a prefix), dropped at its
//! end, and names of its own on the broker, deleted likewise. Skipped with a printed reason
//! when a service is unreachable; failed instead when `BUS_REQUIRE_BROKERS=1`.
//! `BUS_RELIABILITY=full` runs the counts of RELIABILITY.md; by default the quick tier runs.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{
    Body, Bus, BusStats, HandlerError, Message, MessageContext, QueueKind, SendOptions, State,
    Transport,
};
use bus_postgres::{PostgresContext, PostgresStorage};
use bus_tests::broker::{brokers_required, postgres_or_skip, unique, AmqpScope};
use bus_tests::fault_run::{logs, within, TempDir};
use bus_tests::outbox_run::{refused, Crash, Deposit, Recorded, AUDIT, LEDGER};
use bus_tests::redis_broker::RedisScope;
use bus_tests::reliability::{report, Summary, Tally, Tier, BROKER_LOCK};
use tokio_postgres::{Client, NoTls};

// ---- the broker ------------------------------------------------------------------------------

/// A test's names on the shared broker.
#[derive(Clone)]
enum Broker {
    Amqp(AmqpScope),
    Redis(RedisScope),
}

#[derive(Clone, Copy)]
enum Kind {
    Amqp,
    Redis,
}

impl Broker {
    /// `None` (skipped, or a panic when brokers are required) when it is unreachable.
    async fn new(kind: Kind, test: &str) -> Option<Broker> {
        match kind {
            Kind::Amqp => AmqpScope::new(test).await.map(Broker::Amqp),
            Kind::Redis => RedisScope::new(test).await.map(Broker::Redis),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Broker::Amqp(_) => "amqp",
            Broker::Redis(_) => "redis",
        }
    }

    async fn transport(&self, name: &str) -> Arc<dyn Transport> {
        match self {
            Broker::Amqp(scope) => Arc::new(scope.transport(name).await),
            Broker::Redis(scope) => Arc::new(scope.transport(name).await),
        }
    }

    /// The worker's settings for reaching the same names.
    fn worker_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Broker::Amqp(scope) => vec![
                ("WORKER_AMQP_URL", scope.url.clone()),
                ("WORKER_PREFIX", scope.naming.queue_prefix.clone()),
            ],
            // A dead worker's deliveries are taken over after this idle time.
            Broker::Redis(scope) => vec![
                ("WORKER_REDIS_URL", scope.url.clone()),
                ("WORKER_PREFIX", scope.keys.prefix.clone()),
                ("WORKER_RECLAIM_IDLE_MS", "2000".into()),
            ],
        }
    }

    async fn cleanup(&self) {
        match self {
            Broker::Amqp(scope) => scope.cleanup().await,
            Broker::Redis(scope) => {
                if tokio::time::timeout(Duration::from_secs(60), scope.cleanup())
                    .await
                    .is_err()
                {
                    eprintln!("cleanup of {} did not finish in time", scope.keys.prefix);
                }
            }
        }
    }
}

// ---- PostgreSQL ------------------------------------------------------------------------------

/// The audit's storage has tables of its own, so that only ledger workers relay the ledger's
/// outbox.
fn audit_tables(tables: &str) -> String {
    format!("{tables}a_")
}

/// A connection of the test's own, or `None` while PostgreSQL does not answer.
async fn client(postgres: &str) -> Option<Client> {
    let connecting = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(postgres, NoTls),
    );
    let (client, connection) = connecting.await.ok()?.ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// Drop every table of the test (best effort: the storages' own, the business tables).
async fn drop_tables(postgres: &str, tables: &str) {
    for prefix in [tables.to_string(), audit_tables(tables)] {
        match PostgresStorage::builder(postgres)
            .prefix(prefix.clone())
            .connect()
            .await
        {
            Ok(storage) => {
                if let Err(e) = storage.drop_tables().await {
                    eprintln!("dropping the tables {prefix}*: {e}");
                }
            }
            Err(e) => eprintln!("dropping the tables {prefix}*: {e}"),
        }
    }
    if let Some(c) = client(postgres).await {
        let drop = format!("DROP TABLE IF EXISTS {tables}effects, {tables}audit");
        if let Err(e) = c.batch_execute(&drop).await {
            eprintln!("dropping the business tables of {tables}: {e}");
        }
    }
}

/// The local cluster `pg_ctlcluster` manages (version, name), as `.ci/services` starts it.
fn local_cluster() -> Option<(String, String)> {
    Command::new("pg_ctlcluster").arg("--help").output().ok()?;
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .max()?;
    Some((version, "main".into()))
}

fn pg_ctlcluster(cluster: &(String, String), action: &str) -> Result<(), String> {
    let out = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &cluster.0, &cluster.1, action])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Whether the server takes connections (`pg_isready` against the port the tests use).
fn postgres_ready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", "5432", "-t", "2"])
        .status()
        .map(|s| s.success())
        .unwrap_or_else(|_| {
            std::net::TcpStream::connect_timeout(
                &"127.0.0.1:5432".parse().unwrap(),
                Duration::from_secs(1),
            )
            .is_ok()
        })
}

/// Start the cluster if it is down, and wait (at most a minute) until it takes connections.
fn ensure_postgres_up(cluster: &(String, String)) {
    if postgres_ready() {
        return;
    }
    if let Err(e) = pg_ctlcluster(cluster, "start") {
        eprintln!("starting PostgreSQL: {e}");
    }
    let started = Instant::now();
    while !postgres_ready() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "PostgreSQL did not come back within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// PostgreSQL is stopped while this guard lives; dropping it, also during a panic, starts it
/// again and waits until it takes connections.
struct PostgresStopped {
    cluster: (String, String),
    restored: bool,
}

impl PostgresStopped {
    fn stop(cluster: &(String, String)) -> PostgresStopped {
        let guard = PostgresStopped {
            cluster: cluster.clone(),
            restored: false,
        };
        pg_ctlcluster(cluster, "stop").expect("stop PostgreSQL");
        guard
    }

    fn restore(mut self) {
        self.start();
    }

    fn start(&mut self) {
        if !self.restored {
            self.restored = true;
            ensure_postgres_up(&self.cluster);
        }
    }
}

impl Drop for PostgresStopped {
    fn drop(&mut self) {
        self.start();
    }
}

// ---- the worker process ----------------------------------------------------------------------

/// A `bus-outbox-worker` process, killed when dropped (also when the test fails).
struct OutboxWorker {
    name: String,
    child: Child,
    ready: PathBuf,
    report: PathBuf,
}

/// What a worker sent, written at its graceful exit.
#[derive(Debug, Default)]
struct Sent {
    recorded: u64,
    relay_batches: u64,
}

impl OutboxWorker {
    /// The exit status, once it ended.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait until its bus consumes; its exit status instead if it ended first (a crash point
    /// can come before the bus says it is ready).
    async fn ready(&mut self, limit: Duration) -> Result<(), ExitStatus> {
        let started = Instant::now();
        loop {
            if self.ready.exists() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(status);
            }
            assert!(
                started.elapsed() < limit,
                "worker {} not ready within {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Shut it down with SIGTERM (a `kill -9` after 30 s); its exit status.
    async fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                return self.child.wait().expect("reap the worker");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Shut it down and check it exited by itself, cleanly.
    async fn stop_cleanly(&mut self) -> Sent {
        let status = self.terminate().await;
        assert!(
            status.success(),
            "worker {} did not exit cleanly: {status}",
            self.name
        );
        let text = std::fs::read_to_string(&self.report).unwrap_or_default();
        let field = |key: &str| {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                .unwrap_or(0)
        };
        Sent {
            recorded: field("sent"),
            relay_batches: field("batches"),
        }
    }
}

impl Drop for OutboxWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- one test's rig --------------------------------------------------------------------------

/// The insert of the audit's business row.
#[derive(Clone)]
struct AuditInsert(Arc<str>);

async fn audit(
    cmd: Recorded,
    ctx: MessageContext,
    State(insert): State<AuditInsert>,
) -> Result<(), HandlerError> {
    let tx = ctx.transaction().await?;
    tx.execute(&*insert.0, &[&(cmd.n as i64)]).await?;
    drop(tx);
    Ok(())
}

/// What the tables say at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    effects_rows: i64,
    effects_accepted: i64,
    audit_accepted: i64,
    outbox: i64,
}

/// Accepted (not refused) deposits among `0..n`.
fn accepted(n: u64) -> i64 {
    (0..n).filter(|&i| !refused(i)).count() as i64
}

/// The services, names and buses of one test.
struct Rig {
    test: &'static str,
    broker: Broker,
    postgres: String,
    tables: String,
    dir: TempDir,
    audit: Bus,
    producer: Bus,
    sender: Arc<dyn Transport>,
    run: String,
    workers: u32,
}

impl Rig {
    async fn start(test: &'static str, setup: Setup) -> Rig {
        let Setup {
            broker,
            postgres,
            tables,
        } = setup;
        let c = client(&postgres).await.expect("connect to PostgreSQL");
        // No key on `n`: a second write of one deposit shows as a second row.
        c.batch_execute(&format!(
            "CREATE TABLE {tables}effects (n BIGINT NOT NULL); \
             CREATE TABLE {tables}audit (n BIGINT NOT NULL)"
        ))
        .await
        .expect("create the business tables");
        // The ledger's tables exist before any worker starts (its migrations run here).
        PostgresStorage::builder(&postgres)
            .prefix(tables.clone())
            .connect()
            .await
            .expect("create the ledger's tables");
        let audit_storage = PostgresStorage::builder(&postgres)
            .prefix(audit_tables(&tables))
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(10))
            .statement_timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("connect the audit's storage");
        let audit = Bus::builder()
            .transport_arc(broker.transport("audit").await)
            .storage(audit_storage)
            .without_discovery()
            .handler(AUDIT, audit)
            .route::<Recorded>(AUDIT)
            .state(AuditInsert(
                format!("INSERT INTO {tables}audit (n) VALUES ($1)").into(),
            ))
            .endpoint(AUDIT, |e| {
                // Enough delayed retries to outlast a restart of PostgreSQL.
                e.concurrency(8)
                    .prefetch(32)
                    .immediate_retries(2)
                    .delayed_retries(10, Duration::from_millis(250))
            })
            .shutdown_grace(Duration::from_secs(5))
            .start()
            .await
            .expect("start the audit");
        let sender = broker.transport("producer").await;
        let producer = Bus::builder()
            .transport_arc(sender.clone())
            .without_discovery()
            .route::<Deposit>(LEDGER)
            .build()
            .await
            .expect("build the producer");
        Rig {
            test,
            broker,
            postgres,
            tables,
            dir: TempDir::new("outbox"),
            audit,
            producer,
            sender,
            run: unique("dep"),
            workers: 0,
        }
    }

    /// A new worker process with `env` on top of the rig's settings.
    fn worker(&mut self, env: &[(&str, String)]) -> OutboxWorker {
        let i = self.workers;
        self.workers += 1;
        let name = format!("ledger-{i}");
        let ready = self.dir.path().join(format!("{name}.ready"));
        let report = self.dir.path().join(format!("{name}.report"));
        let child = Command::new(env!("CARGO_BIN_EXE_bus-outbox-worker"))
            .envs(self.broker.worker_env())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("WORKER_NAME", &name)
            .env("WORKER_POSTGRES", &self.postgres)
            .env("WORKER_TABLES", &self.tables)
            .env("WORKER_READY", &ready)
            .env("WORKER_REPORT", &report)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn bus-outbox-worker");
        OutboxWorker {
            name,
            child,
            ready,
            report,
        }
    }

    /// Send `Deposit`s `ns` from 8 senders, `pace` apart per sender, each tried again with
    /// its id until the broker confirmed it (at most 30 s).
    fn produce(
        &self,
        ns: std::ops::Range<u64>,
        tally: &Tally,
        pace: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let tasks = 8;
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (bus, tally, run) = (self.producer.clone(), tally.clone(), self.run.clone());
            let ns = ns.clone();
            handles.push(tokio::spawn(async move {
                for n in (ns.start + t..ns.end).step_by(tasks as usize) {
                    tally.sent(n);
                    let first = Instant::now();
                    loop {
                        let options = SendOptions::new().message_id(format!("{run}-{n}"));
                        match bus.send_with(Deposit { n }, options).await {
                            Ok(()) => break,
                            Err(e) => {
                                assert!(
                                    first.elapsed() < Duration::from_secs(30),
                                    "deposit {n} not confirmed within 30 s: {e}"
                                );
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    tally.confirmed(n);
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                }
            }));
        }
        tokio::spawn(async move {
            for h in handles {
                h.await.expect("a sender panicked");
            }
        })
    }

    /// The tables' counts, or `None` while PostgreSQL does not answer.
    async fn progress(&self) -> Option<Progress> {
        let c = client(&self.postgres).await?;
        let t = &self.tables;
        let sql = format!(
            "SELECT (SELECT count(*) FROM {t}effects), \
                    (SELECT count(DISTINCT n) FROM {t}effects WHERE n % 97 <> 0), \
                    (SELECT count(DISTINCT n) FROM {t}audit WHERE n % 97 <> 0), \
                    (SELECT count(*) FROM {t}bus_outbox)"
        );
        let row = tokio::time::timeout(Duration::from_secs(5), c.query_one(&sql, &[]))
            .await
            .ok()?
            .ok()?;
        Some(Progress {
            effects_rows: row.get(0),
            effects_accepted: row.get(1),
            audit_accepted: row.get(2),
            outbox: row.get(3),
        })
    }

    /// Wait until `done` holds of the tables, at most `limit`; the last progress seen.
    async fn until(&self, limit: Duration, done: impl Fn(&Progress) -> bool) -> Progress {
        let started = Instant::now();
        let mut last = Progress::default();
        loop {
            if let Some(p) = self.progress().await {
                if done(&p) {
                    return p;
                }
                last = p;
            }
            assert!(
                started.elapsed() < limit,
                "{}: not there within {limit:?}; last seen {last:?}",
                self.test
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The deposits in the ledger's error queue.
    async fn dead_lettered(&self, n: u64) -> HashMap<u64, u32> {
        let browsed = tokio::time::timeout(
            Duration::from_secs(20),
            self.sender
                .browse(LEDGER, QueueKind::Errors, n as usize + 1_000),
        )
        .await;
        let mut out = HashMap::new();
        let Ok(Ok(envelopes)) = browsed else {
            return out;
        };
        for envelope in envelopes {
            if envelope.headers.message_type != Deposit::NAME {
                continue;
            }
            if let Body::Bytes(bytes) = &envelope.body {
                if let Ok(d) = serde_json::from_slice::<Deposit>(bytes) {
                    *out.entry(d.n).or_default() += 1;
                }
            }
        }
        out
    }

    /// Whether deposits `0..n` all came through: every accepted one in both tables, nothing
    /// left in the outbox, every refused one in the error queue.
    async fn finished(&self, n: u64) -> bool {
        let Some(p) = self.progress().await else {
            return false;
        };
        if p.effects_accepted < accepted(n) || p.audit_accepted < accepted(n) || p.outbox > 0 {
            return false;
        }
        let dead = self.dead_lettered(n).await;
        (0..n)
            .filter(|&i| refused(i))
            .all(|i| dead.contains_key(&i))
    }

    /// Wait until [`Rig::finished`], at most `limit`, while `alive` holds (a worker that ends
    /// ends the wait: `false`).
    async fn until_finished(
        &self,
        n: u64,
        limit: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> bool {
        let started = Instant::now();
        loop {
            if self.finished(n).await {
                return true;
            }
            if !alive() {
                return false;
            }
            assert!(
                started.elapsed() < limit,
                "{}: deposits not all through within {limit:?}; last seen {:?}",
                self.test,
                self.progress().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The audit's figures once nothing more arrives (copies sent again included): unchanged
    /// for a second, at most 30 s.
    async fn audit_settled(&self) -> BusStats {
        let started = Instant::now();
        let mut last = self.audit.stats();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.audit.stats();
            if now == last || started.elapsed() > Duration::from_secs(30) {
                return now;
            }
            last = now;
        }
    }

    /// Every row of `{tables}{table}`, counted by `n`.
    async fn rows(&self, table: &str) -> HashMap<u64, u32> {
        let c = client(&self.postgres)
            .await
            .expect("PostgreSQL answers at the end");
        let sql = format!("SELECT n, count(*) FROM {}{table} GROUP BY n", self.tables);
        c.query(&sql, &[])
            .await
            .expect("read the business rows")
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u32))
            .collect()
    }

    /// The figures of deposits `0..n` from the tables and the error queue: lost (an accepted
    /// deposit missing from a table, a refused one missing from the error queue), phantom (a
    /// refused deposit, or one never sent, in a table), duplicates (rows beyond the first).
    async fn summary(&self, n: u64, tally: &Tally) -> Summary {
        let effects = self.rows("effects").await;
        let audited = self.rows("audit").await;
        let dead = self.dead_lettered(n).await;
        let lost = (0..n)
            .filter(|&i| match refused(i) {
                true => !dead.contains_key(&i),
                false => !effects.contains_key(&i) || !audited.contains_key(&i),
            })
            .count();
        let phantom = effects
            .keys()
            .chain(audited.keys())
            .filter(|&&i| refused(i) || i >= n)
            .collect::<HashSet<_>>()
            .len();
        let duplicates = effects
            .values()
            .chain(audited.values())
            .map(|&c| c.saturating_sub(1) as usize)
            .sum();
        let handled = (0..n)
            .filter(|&i| match refused(i) {
                true => dead.contains_key(&i),
                false => audited.contains_key(&i),
            })
            .count();
        let sent = tally.summary();
        Summary {
            sent: sent.sent,
            confirmed: sent.confirmed,
            handled,
            lost,
            phantom,
            duplicates,
            redelivered: 0,
            max_attempt: 0,
        }
    }

    async fn shutdown(self) {
        self.audit.shutdown().await;
        self.producer.shutdown().await;
    }
}

/// What a test body gets: its broker names, PostgreSQL, and its table prefix.
struct Setup {
    broker: Broker,
    postgres: String,
    tables: String,
}

/// Run `body` holding the lock, with PostgreSQL and the broker reachable (skipped otherwise),
/// then drop the test's tables and delete its broker names, also when it panicked.
async fn scoped<F, Fut>(test: &'static str, kind: Kind, body: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(postgres) = postgres_or_skip(test).await else {
        return;
    };
    let Some(broker) = Broker::new(kind, test).await else {
        return;
    };
    let tables = format!("{}_", unique("ob").replace('-', "_"));
    let setup = Setup {
        broker: broker.clone(),
        postgres: postgres.clone(),
        tables: tables.clone(),
    };
    let cleanup = async move {
        if let Some(cluster) = local_cluster() {
            ensure_postgres_up(&cluster);
        }
        drop_tables(&postgres, &tables).await;
        broker.cleanup().await;
    };
    bus_tests::then_clean(body(setup), cleanup).await;
}

// ---- E34 -------------------------------------------------------------------------------------

/// The crash points of E34: alternating after-commit and after-send, spread over the run,
/// then none.
fn crash_plan(n: u64, crashes: u64) -> Vec<Option<Crash>> {
    let base = (n / (2 * (crashes + 1))).max(1);
    (0..crashes)
        .map(|i| {
            let k = base + 31 * i;
            Some(match i % 2 {
                0 => Crash::AfterCommit(k),
                _ => Crash::AfterSend(k),
            })
        })
        .chain([None])
        .collect()
}

async fn killed_between_commit_send_and_delete(test: &'static str, setup: Setup) {
    let tier = Tier::current();
    let (n, crashes) = (tier.pick(2_000u64, 10_000), tier.pick(4u64, 6));
    let limit = tier.pick(Duration::from_secs(240), Duration::from_secs(1200));
    within(test, limit, async move {
        let mut rig = Rig::start(test, setup).await;
        let transport = rig.broker.name();
        let tally = Tally::new();
        let mut producing = None;
        let mut happened = Vec::new();
        let (mut killed, mut after_send) = (0u64, 0u64);
        for crash in crash_plan(n, crashes) {
            let env: Vec<(&str, String)> = crash
                .map(|c| vec![("WORKER_CRASH", c.to_env())])
                .unwrap_or_default();
            let mut worker = rig.worker(&env);
            let ready = worker.ready(Duration::from_secs(30)).await;
            // The queue exists once the first worker consumes: deposits sent now are kept.
            if producing.is_none() {
                producing = Some(rig.produce(0..n, &tally, Duration::ZERO));
            }
            let Some(crash) = crash else {
                assert!(ready.is_ok(), "the last worker ended: {ready:?}");
                let done = rig
                    .until_finished(n, limit, || worker.exited().is_none())
                    .await;
                assert!(done, "the last worker ended: {:?}", worker.exited());
                worker.stop_cleanly().await;
                break;
            };
            let done = match ready {
                Err(_) => false,
                Ok(()) => {
                    rig.until_finished(n, limit, || worker.exited().is_none())
                        .await
                }
            };
            if done {
                happened.push(format!("{crash} never reached"));
                worker.stop_cleanly().await;
                break;
            }
            let status = worker.exited().expect("the worker ended");
            assert_eq!(
                status.signal(),
                Some(9),
                "{test}: worker {} ended otherwise than by its crash point: {status}",
                worker.name
            );
            happened.push(crash.to_string());
            killed += 1;
            after_send += u64::from(matches!(crash, Crash::AfterSend(_)));
        }
        if let Some(p) = producing {
            p.await.expect("producing");
        }
        let stats = rig.audit_settled().await;
        let summary = rig.summary(n, &tally).await;
        report(
            test,
            transport,
            &format!(
                "worker killed (SIGKILL) at: {}; each replaced by a new one, the last without a crash \
                 point; audit inbox absorbed {} duplicate Recorded",
                happened.join(", "),
                stats.duplicates_skipped
            ),
            &summary,
            0,
        );
        assert_eq!(killed, crashes, "every planned crash point was reached");
        // Each after-send kill left a sent batch in the outbox, sent again by the next
        // worker's relay: its copies reached the audit and only its inbox kept them out.
        assert!(
            stats.duplicates_skipped >= after_send,
            "{} duplicates absorbed after {after_send} after-send kills",
            stats.duplicates_skipped
        );
        rig.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e34_outbox_worker_killed_between_commit_and_send_and_between_send_and_delete_amqp() {
    let test = "E34 outbox worker killed between commit and send, and between send and delete";
    scoped(test, Kind::Amqp, |setup| {
        killed_between_commit_send_and_delete(test, setup)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e34_outbox_worker_killed_between_commit_and_send_and_between_send_and_delete_redis() {
    let test = "E34 outbox worker killed between commit and send, and between send and delete";
    scoped(test, Kind::Redis, |setup| {
        killed_between_commit_send_and_delete(test, setup)
    })
    .await;
}

// ---- E35 -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e35_postgres_restarted_while_the_outbox_relay_has_rows_pending_amqp() {
    let test = "E35 PostgreSQL restarted while the outbox relay has rows pending";
    let Some(cluster) = local_cluster() else {
        let why = "pg_ctlcluster or /etc/postgresql is missing: this test restarts the local \
                   PostgreSQL";
        if brokers_required() {
            panic!("{test}: {why}, and BUS_REQUIRE_BROKERS=1");
        }
        eprintln!("skipping {test}: {why}; set BUS_REQUIRE_BROKERS=1 to fail instead");
        return;
    };
    scoped(test, Kind::Amqp, move |setup| async move {
        let tier = Tier::current();
        let n = tier.pick(2_000u64, 10_000);
        let limit = tier.pick(Duration::from_secs(240), Duration::from_secs(1200));
        within(test, limit, async move {
            let mut rig = Rig::start(test, setup).await;
            let hold = rig.dir.path().join("hold");
            let tally = Tally::new();
            let mut worker = rig.worker(&[("WORKER_HOLD_FILE", hold.display().to_string())]);
            worker
                .ready(Duration::from_secs(30))
                .await
                .expect("the worker starts");
            // Paced, so that deposits still arrive while PostgreSQL is down and after.
            let pace = tier.pick(Duration::from_millis(40), Duration::from_millis(10));
            let producing = rig.produce(0..n, &tally, pace);
            rig.until(Duration::from_secs(60), |p| {
                p.effects_accepted >= accepted(n) / 5
            })
            .await;
            // From now on the worker's sends of `Recorded` fail: its commits stay in the
            // outbox, for the relay once the hold ends.
            std::fs::write(&hold, b"hold").unwrap();
            rig.until(Duration::from_secs(60), |p| p.outbox >= 20).await;
            let before = rig.progress().await.expect("PostgreSQL answers");
            let down = Instant::now();
            let stopped = PostgresStopped::stop(&cluster);
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(
                worker.exited().is_none(),
                "the worker survives PostgreSQL going away"
            );
            stopped.restore();
            let down = down.elapsed();
            let restarted = Instant::now();
            let back = rig.until(Duration::from_secs(60), |_| true).await;
            // Commits resume (into the outbox, the hold still on) before the relay may send.
            let after = rig
                .until(Duration::from_secs(60), |p| {
                    p.effects_rows > back.effects_rows || p.effects_accepted >= accepted(n)
                })
                .await;
            let resumed_in = restarted.elapsed();
            std::fs::remove_file(&hold).unwrap();
            producing.await.expect("producing");
            let done = rig
                .until_finished(n, limit, || worker.exited().is_none())
                .await;
            assert!(done, "the worker ended: {:?}", worker.exited());
            let sent = worker.stop_cleanly().await;
            let stats = rig.audit_settled().await;
            let summary = rig.summary(n, &tally).await;
            report(
                test,
                "amqp",
                &format!(
                    "PostgreSQL stopped with {} outbox rows pending (sends held back) and \
                     commits under way, ready again {:.1} s later with {} pending; commits \
                     resumed within {} ms ({} pending then); hold lifted, the relay sent the \
                     rest ({} relay batches); audit inbox absorbed {} duplicate Recorded",
                    before.outbox,
                    down.as_secs_f64(),
                    back.outbox,
                    resumed_in.as_millis(),
                    after.outbox,
                    sent.relay_batches,
                    stats.duplicates_skipped
                ),
                &summary,
                0,
            );
            // Nothing was sent while PostgreSQL went away (the hold): no send lost its delete.
            assert_eq!(
                sent.recorded,
                accepted(n) as u64,
                "each accepted deposit's Recorded sent once"
            );
            rig.shutdown().await;
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e35_two_workers_relays_compete_and_send_every_outbox_row_once_amqp() {
    let test = "E35 two workers' relays and dispatches compete for one outbox";
    scoped(test, Kind::Amqp, |setup| async move {
        let tier = Tier::current();
        let n = tier.pick(2_000u64, 10_000);
        let half = n / 2;
        let limit = tier.pick(Duration::from_secs(240), Duration::from_secs(1200));
        within(test, limit, async move {
            let mut rig = Rig::start(test, setup).await;
            let tally = Tally::new();
            // A backlog first: a worker whose sends of `Recorded` all fail commits the first
            // half into the outbox, then stops gracefully.
            let hold = rig.dir.path().join("hold");
            std::fs::write(&hold, b"hold").unwrap();
            let mut first = rig.worker(&[("WORKER_HOLD_FILE", hold.display().to_string())]);
            first
                .ready(Duration::from_secs(30))
                .await
                .expect("the worker starts");
            rig.produce(0..half, &tally, Duration::ZERO)
                .await
                .expect("producing");
            let backlog = rig
                .until(Duration::from_secs(120), |p| {
                    p.effects_accepted >= accepted(half) && p.outbox >= accepted(half)
                })
                .await;
            first.stop_cleanly().await;
            // Small relay batches: many short transactions, so the two relays overlap.
            let env = [("WORKER_RELAY_BATCH", "25".to_string())];
            let mut workers = [rig.worker(&env), rig.worker(&env)];
            let producing = rig.produce(half..n, &tally, Duration::ZERO);
            for w in &mut workers {
                w.ready(Duration::from_secs(30))
                    .await
                    .expect("the worker starts");
            }
            producing.await.expect("producing");
            let done = rig
                .until_finished(n, limit, || {
                    workers.iter_mut().all(|w| w.exited().is_none())
                })
                .await;
            assert!(done, "a worker ended before the end");
            let mut sent = Vec::new();
            for w in &mut workers {
                sent.push(w.stop_cleanly().await);
            }
            let stats = rig.audit_settled().await;
            let summary = rig.summary(n, &tally).await;
            report(
                test,
                "amqp",
                &format!(
                    "backlog of {} outbox rows left by a stopped worker, then two workers \
                     relaying it (batches of 25) while dispatching new commits: one sent {} \
                     Recorded ({} relay batches), the other {} ({}); no crash; audit inbox \
                     absorbed {} duplicate Recorded",
                    backlog.outbox,
                    sent[0].recorded,
                    sent[0].relay_batches,
                    sent[1].recorded,
                    sent[1].relay_batches,
                    stats.duplicates_skipped
                ),
                &summary,
                0,
            );
            assert_eq!(
                stats.duplicates_skipped, 0,
                "a row was sent twice with no process crashed"
            );
            assert_eq!(
                sent[0].recorded + sent[1].recorded,
                accepted(n) as u64,
                "each accepted deposit's Recorded sent once, by one of the two"
            );
            rig.shutdown().await;
        })
        .await;
    })
    .await;
}
