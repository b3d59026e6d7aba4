//! A worker process for the outbox fault tests: hosts endpoint `ledger` with its units of work
//! in PostgreSQL. Its handler of `Deposit { n }` inserts `n` into `{tables}effects` in the
//! attempt's transaction and sends `Recorded { n }` to `audit` through the outbox; a refused
//! deposit (see `bus_tests::outbox_run::refused`) does both and then fails for good, so both
//! must roll back. SIGTERM shuts it down gracefully.
//!
//! Its transport is wrapped to inject faults without touching the bus: with
//! `WORKER_CRASH=after-commit:K` the process kills itself (SIGKILL) on the K-th transport call carrying a
//! `Recorded` before passing it on (committed, not sent); with `after-send:K`, once that call
//! returned `Ok` (sent, its outbox rows not deleted). While the file `WORKER_HOLD_FILE`
//! exists, calls carrying a `Recorded` fail, so committed rows pile up in the outbox.
//!
//! Settings from the environment: the broker as for `bus-test-worker` (`WORKER_AMQP_URL`, or
//! `WORKER_REDIS_URL` with `WORKER_RECLAIM_IDLE_MS`, or `WORKER_NATS_URL` with
//! `WORKER_ACK_WAIT_MS`; `WORKER_PREFIX` for the names), `WORKER_NAME` (connection and
//! consumer name), `WORKER_POSTGRES` (libpq configuration), `WORKER_TABLES` (table prefix),
//! `WORKER_RELAY_BATCH` (default 500), `WORKER_READY` (a file created once the bus consumes),
//! and `WORKER_REPORT` (a file written at a graceful exit: what the process sent).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_core::{
    async_trait, Bus, Declared, EndpointInfo, Envelope, HandlerError, Message, MessageContext,
    MessageId, Outgoing, QueueKind, ReplyChannel, State, SubscribeOptions, Subscription, Topology,
    Transport, TransportError, TransportLimits,
};
use bus_postgres::{PostgresContext, PostgresStorage};
use bus_tests::outbox_run::{refused, Crash, Deposit, Recorded, AUDIT, LEDGER};
use bus_transport_amqp::{AmqpConfig, AmqpTransport, Naming};
use bus_transport_config::ConfiguredTransport;
use bus_transport_nats::{NatsConfig, NatsTransport};
use bus_transport_redis::{RedisConfig, RedisTransport};

/// The ledger's transport with the crash points and the hold.
struct Faulty {
    inner: Arc<dyn Transport>,
    crash: Option<Crash>,
    hold: Option<PathBuf>,
    /// Calls carrying a `Recorded` so far, the one in progress included.
    calls: AtomicU64,
    /// `Recorded` messages the broker confirmed.
    sent: AtomicU64,
    /// Confirmed calls of more than one `Recorded`: a dispatch hands over what one attempt
    /// sent (one here), so these are the relay's.
    batches: AtomicU64,
}

/// End this process with SIGKILL, as an operator's `kill -9` or the OOM killer would: no
/// destructor, no flush, no graceful anything. The calling thread stops here until the signal
/// lands, so the call that reached the crash point goes no further.
fn die() -> ! {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn carries_recorded(message: &Outgoing) -> bool {
    message.envelope.headers.message_type == Recorded::NAME
}

impl Faulty {
    /// Whether this call may go on; kills the process at an after-commit crash point.
    fn before(&self, count: usize) -> Result<u64, TransportError> {
        if self.hold.as_ref().is_some_and(|hold| hold.exists()) {
            return Err(TransportError::Connection {
                context: format!("{count} `Recorded` held back by the test"),
                source: None,
            });
        }
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(Crash::AfterCommit(k)) = self.crash {
            if call >= k {
                eprintln!("bus-outbox-worker: killed before send call {call} ({count} Recorded)");
                die();
            }
        }
        Ok(call)
    }

    fn after(&self, call: u64, count: usize, sent: &Result<(), TransportError>) {
        if sent.is_err() {
            return;
        }
        self.sent.fetch_add(count as u64, Ordering::SeqCst);
        if count > 1 {
            self.batches.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(Crash::AfterSend(k)) = self.crash {
            // A failed K-th call sent nothing: the next one that succeeds is the crash point.
            if call >= k {
                eprintln!("bus-outbox-worker: killed after send call {call} ({count} Recorded)");
                die();
            }
        }
    }
}

#[async_trait]
impl Transport for Faulty {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn carries_typed_messages(&self) -> bool {
        self.inner.carries_typed_messages()
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        self.inner.declare(topology).await
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        if !carries_recorded(&message) {
            return self.inner.send(message).await;
        }
        let call = self.before(1)?;
        let sent = self.inner.send(message).await;
        self.after(call, 1, &sent);
        sent
    }

    fn send_now(&self, message: Outgoing) -> Result<Result<(), TransportError>, Outgoing> {
        // A `Recorded` must pass the crash points: given back, it comes through `send`.
        if carries_recorded(&message) {
            return Err(message);
        }
        self.inner.send_now(message)
    }

    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<(), TransportError> {
        let count = messages.iter().filter(|m| carries_recorded(m)).count();
        if count == 0 {
            return self.inner.send_batch(messages).await;
        }
        let call = self.before(count)?;
        let sent = self.inner.send_batch(messages).await;
        self.after(call, count, &sent);
        sent
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.inner.subscribe(endpoint, options).await
    }

    async fn open_replies(&self, instance: &str) -> Result<ReplyChannel, TransportError> {
        self.inner.open_replies(instance).await
    }

    async fn subscribe_due(&self) -> Result<Option<Box<dyn Subscription>>, TransportError> {
        self.inner.subscribe_due().await
    }

    async fn cancel_scheduled(&self, id: &MessageId) -> Result<bool, TransportError> {
        self.inner.cancel_scheduled(id).await
    }

    fn limits(&self) -> TransportLimits {
        self.inner.limits()
    }

    async fn browse(
        &self,
        endpoint: &str,
        queue: QueueKind,
        limit: usize,
    ) -> Result<Vec<Envelope>, TransportError> {
        self.inner.browse(endpoint, queue, limit).await
    }

    async fn remove(
        &self,
        endpoint: &str,
        queue: QueueKind,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, TransportError> {
        self.inner.remove(endpoint, queue, ids).await
    }

    async fn endpoints(&self) -> Result<Vec<EndpointInfo>, TransportError> {
        self.inner.endpoints().await
    }

    async fn teardown(
        &self,
        topology: &Topology,
        dry_run: bool,
    ) -> Result<Vec<Declared>, TransportError> {
        self.inner.teardown(topology, dry_run).await
    }
}

/// The insert of the ledger's business row.
#[derive(Clone)]
struct Effects(Arc<str>);

async fn deposit(
    cmd: Deposit,
    ctx: MessageContext,
    State(effects): State<Effects>,
) -> Result<(), HandlerError> {
    let tx = ctx.transaction().await?;
    tx.execute(&*effects.0, &[&(cmd.n as i64)]).await?;
    drop(tx);
    ctx.send(Recorded { n: cmd.n }).await?;
    if refused(cmd.n) {
        return Err(HandlerError::unrecoverable(format!(
            "deposit {} refused after its row and its Recorded were staged",
            cmd.n
        )));
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set"));
    let number = |k: &str, default: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let prefix = var("WORKER_PREFIX");
    let name = var("WORKER_NAME");
    let tables = var("WORKER_TABLES");
    let crash = std::env::var("WORKER_CRASH").ok().map(|c| {
        Crash::from_env(&c).unwrap_or_else(|| panic!("WORKER_CRASH={c} is not a crash point"))
    });

    let transport = if let Ok(url) = std::env::var("WORKER_REDIS_URL") {
        let config = RedisConfig::new(url)
            .key_prefix(prefix)
            .consumer_name(name.clone())
            .reclaim_idle(Duration::from_millis(number(
                "WORKER_RECLAIM_IDLE_MS",
                30_000,
            )))
            .claim_interval(Duration::from_millis(200))
            .block_timeout(Duration::from_millis(200))
            .operation_timeout(Duration::from_secs(10));
        ConfiguredTransport::Redis(RedisTransport::connect(config).await.expect("connect"))
    } else if let Ok(url) = std::env::var("WORKER_NATS_URL") {
        let naming = bus_transport_nats::Naming {
            subject_prefix: prefix.clone(),
            stream_prefix: prefix.to_uppercase(),
            ..bus_transport_nats::Naming::default()
        };
        let config = NatsConfig::new(url)
            .connection_name(name.clone())
            .naming(naming)
            .ack_wait(Duration::from_millis(number("WORKER_ACK_WAIT_MS", 30_000)));
        ConfiguredTransport::Nats(NatsTransport::connect(config).await.expect("connect"))
    } else {
        let naming = Naming {
            queue_prefix: prefix.clone(),
            events_exchange: format!("{prefix}bus.events"),
            ..Naming::default()
        };
        let config = AmqpConfig::new(var("WORKER_AMQP_URL"))
            .connection_name(name.clone())
            .naming(naming)
            .publish_timeout(Duration::from_secs(10));
        ConfiguredTransport::Amqp(AmqpTransport::connect(config).await.expect("connect"))
    };
    let faulty = Arc::new(Faulty {
        inner: transport.shared(),
        crash,
        hold: std::env::var_os("WORKER_HOLD_FILE").map(PathBuf::from),
        calls: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        batches: AtomicU64::new(0),
    });

    // Short deadlines everywhere: a test restarting PostgreSQL wants failures, not hangs.
    let storage = PostgresStorage::builder(&var("WORKER_POSTGRES"))
        .prefix(tables.clone())
        .pool_size(12)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .statement_timeout(Duration::from_secs(10))
        .send_timeout(Duration::from_secs(10))
        .relay_batch(number("WORKER_RELAY_BATCH", 500) as usize)
        .connect()
        .await
        .expect("connect the storage");
    let effects = Effects(format!("INSERT INTO {tables}effects (n) VALUES ($1)").into());

    let bus = Bus::builder()
        .transport_arc(faulty.clone())
        .storage(storage)
        .without_discovery()
        .handler(LEDGER, deposit)
        .route::<Deposit>(LEDGER)
        .route::<Recorded>(AUDIT)
        .state(effects)
        .endpoint(LEDGER, |e| {
            // Enough delayed retries to outlast a restart of PostgreSQL.
            e.concurrency(8)
                .prefetch(32)
                .immediate_retries(2)
                .delayed_retries(10, Duration::from_millis(250))
        })
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("start the bus");
    if let Ok(ready) = std::env::var("WORKER_READY") {
        std::fs::write(ready, b"ready").expect("write the ready file");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    bus.shutdown().await;
    let _ = transport.close().await;
    if let Ok(report) = std::env::var("WORKER_REPORT") {
        let text = format!(
            "sent={} batches={} calls={}\n",
            faulty.sent.load(Ordering::SeqCst),
            faulty.batches.load(Ordering::SeqCst),
            faulty.calls.load(Ordering::SeqCst),
        );
        std::fs::write(report, text).expect("write the report");
    }
}
