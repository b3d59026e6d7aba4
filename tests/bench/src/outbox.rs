//! The transactional outbox on RabbitMQ: the bus with `bus_postgres::PostgresStorage` against
//! the same bus without storage, on the same work. There is no raw library to hold it against:
//! the "raw" column of these rows is the bus without the outbox.
//!
//! Two services take part. The front bus hosts [`FRONT`], whose handler sends one command to
//! [`BACK`] for every command it handles; with storage, each attempt commits that command as an
//! outbox row together with the record that its own message was handled, then dispatches the
//! row to the broker and deletes it. The back bus hosts [`BACK`] without storage and only
//! counts, so both sides are drained alike. Units of work (`Bus::unit_of_work`, one command
//! each) are timed against `Bus::send` on the front bus.
//!
//! Every run declares its queues under a unique prefix and its tables under a unique table
//! prefix, and deletes both at the end.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{Bus, Command, HandlerError, MessageContext};
use bus_postgres::tokio_postgres;
use bus_postgres::PostgresStorage;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::amqp::{bus_transport, offered, payload_of, warmed_run, windowed, Run, Scope};
use crate::probe::{handle, merged, now_ns, percentiles_us, progress, runtime, Sink};
use crate::report::Row;
use crate::Scale;

/// The endpoint whose handler sends on, with or without the outbox.
const FRONT: &str = "bench-outbox-front";
/// The endpoint that counts what the front one sent.
const BACK: &str = "bench-outbox-back";
/// Prefetch of both endpoints, as the other AMQP cases.
const PREFETCH: usize = 1_000;
/// Handlers at once on both endpoints: the bus's default. One handler at a time would measure
/// little but the database's commit latency.
const CONCURRENCY: usize = 16;
/// Longest a single measurement may take.
const LIMIT: Duration = Duration::from_secs(120);
/// Body size of every message.
const BODY: usize = 200;
/// Messages through both hops before a throughput measurement, and sends before a latency one.
const WARMUP: u64 = 500;

/// The command the front endpoint handles.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "bench.OutboxFront", endpoint = "bench-outbox-front")]
pub struct OutboxFront {
    /// Position in the run.
    pub seq: u64,
    /// Filler.
    pub payload: String,
}

/// The command the front endpoint's handler sends (and units of work send) to the back one.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "bench.OutboxBack", endpoint = "bench-outbox-back")]
pub struct OutboxBack {
    /// Position in the run.
    pub seq: u64,
    /// [`now_ns`] when it was sent (0: not timed).
    pub sent_ns: u64,
    /// Filler.
    pub payload: String,
}

/// Whether PostgreSQL answers, so the case can be skipped with a reason if not.
pub fn reachable(config: &str) -> Result<(), String> {
    runtime().block_on(async {
        let connect = tokio_postgres::connect(config, tokio_postgres::NoTls);
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok((client, connection))) => {
                let running = tokio::spawn(connection);
                let answered = client.simple_query("SELECT 1").await;
                drop(client);
                let _ = running.await;
                answered.map(drop).map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5 s".into()),
        }
    })
}

/// Where a run's storage lives: the server, and tables of its own.
struct Tables {
    config: String,
    prefix: String,
}

impl Tables {
    fn new(config: &str) -> Tables {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Tables {
            config: config.to_string(),
            prefix: format!("bench_{}_", &id[id.len() - 10..]),
        }
    }

    async fn storage(&self) -> PostgresStorage {
        PostgresStorage::builder(&self.config)
            .prefix(&self.prefix)
            .connect()
            .await
            .expect("PostgreSQL storage connects")
    }
}

/// The two buses of a run, and what has to go once it is over.
struct Services {
    front: Bus,
    back: Bus,
    storage: Option<PostgresStorage>,
    scope: Scope,
}

impl Services {
    /// The back bus first: the front one's sends need its queue.
    async fn start(url: &str, sink: &Arc<Sink>, tables: Option<&Tables>) -> Services {
        let mut scope = Scope::new(url);
        scope.bus_endpoint(BACK);
        scope.bus_endpoint(FRONT);
        let s = sink.clone();
        let back = Bus::builder()
            .without_discovery()
            // Batched acks keep the counting side from being what limits either variant.
            .transport(
                bus_transport(&scope, "bench-outbox-back")
                    .await
                    .with_batched_acks(true),
            )
            .handler(BACK, move |m: OutboxBack| handle(s.clone(), m.sent_ns))
            .endpoint(BACK, |e| e.prefetch(PREFETCH).concurrency(CONCURRENCY))
            .host([BACK])
            .start()
            .await
            .expect("back bus starts");
        let storage = match tables {
            Some(t) => Some(t.storage().await),
            None => None,
        };
        let builder = Bus::builder()
            .without_discovery()
            .transport(bus_transport(&scope, "bench-outbox-front").await)
            .handler(FRONT, forward)
            .endpoint(FRONT, |e| e.prefetch(PREFETCH).concurrency(CONCURRENCY))
            .host([FRONT]);
        let builder = match &storage {
            Some(s) => builder.storage(s.clone()),
            None => builder,
        };
        let front = builder.start().await.expect("front bus starts");
        Services {
            front,
            back,
            storage,
            scope,
        }
    }

    async fn close(self) {
        // The front bus first: its relay must not be sending while the tables go.
        self.front.shutdown().await;
        self.back.shutdown().await;
        if let Some(storage) = &self.storage {
            if let Err(e) = storage.drop_tables().await {
                progress(format!("cleanup: outbox tables left behind ({e})"));
            }
        }
        self.scope.cleanup().await;
    }
}

/// The front endpoint's handler: one command on to the back endpoint.
async fn forward(m: OutboxFront, ctx: MessageContext) -> Result<(), HandlerError> {
    ctx.send(OutboxBack {
        seq: m.seq,
        sent_ns: 0,
        payload: m.payload,
    })
    .await?;
    Ok(())
}

type Sending = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Sends of the front command, each finished on its confirm.
fn front_sends(bus: &Bus, payload: &Arc<String>) -> impl Fn(u64) -> Sending {
    let bus = bus.clone();
    let payload = payload.clone();
    move |seq| {
        let bus = bus.clone();
        let payload = payload.clone();
        Box::pin(async move {
            bus.send(OutboxFront {
                seq,
                payload: String::clone(&payload),
            })
            .await
            .map_err(|e| e.to_string())
        })
    }
}

/// Throughput through both hops: `n` front commands, counted when their sends reach the back.
fn throughput(url: &str, tables: Option<&Tables>, n: u64) -> Run {
    runtime().block_on(async {
        let sink = Sink::new();
        let services = Services::start(url, &sink, tables).await;
        let payload = payload_of(BODY);
        let what = if tables.is_some() {
            "outbox run"
        } else {
            "run without outbox"
        };
        let run = warmed_run(&sink, WARMUP, n, what, || {
            front_sends(&services.front, &payload)
        })
        .await;
        services.close().await;
        run
    })
}

/// The latencies of one run.
struct Latencies {
    /// From the call of `commit` (or `send`) to its return.
    call: Histogram<u64>,
    /// From the same moment to the back endpoint's handler.
    delivered: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds")
}

/// One command sent back, timed: through a unit of work of the storage if `outbox`, else
/// with `Bus::send`. The clock starts after the unit of work opened: what is timed is the
/// commit and what it sends.
fn timed_sends(
    bus: &Bus,
    payload: &Arc<String>,
    outbox: bool,
    calls: &Arc<Mutex<Histogram<u64>>>,
) -> impl Fn(u64) -> Sending {
    let bus = bus.clone();
    let payload = payload.clone();
    let calls = calls.clone();
    move |seq| {
        let bus = bus.clone();
        let payload = payload.clone();
        let calls = calls.clone();
        Box::pin(async move {
            let work = if outbox {
                Some(bus.unit_of_work().await.map_err(|e| e.to_string())?)
            } else {
                None
            };
            let sent_ns = now_ns();
            let message = OutboxBack {
                seq,
                sent_ns,
                payload: String::clone(&payload),
            };
            match work {
                Some(mut work) => {
                    work.send(message).map_err(|e| e.to_string())?;
                    work.commit().await.map_err(|e| e.to_string())?;
                }
                None => bus.send(message).await.map_err(|e| e.to_string())?,
            }
            let took = now_ns().saturating_sub(sent_ns).max(1);
            calls.lock().unwrap().saturating_record(took);
            Ok(())
        })
    }
}

/// Latencies of `n` timed sends offered at `rate` per second, after a warmup.
fn latency(url: &str, tables: Option<&Tables>, rate: u64, n: u64) -> Latencies {
    runtime().block_on(async {
        let sink = Sink::new();
        let services = Services::start(url, &sink, tables).await;
        let payload = payload_of(BODY);
        let outbox = tables.is_some();
        let calls = Arc::new(Mutex::new(histogram()));
        sink.arm(WARMUP, false, None);
        windowed(
            WARMUP,
            timed_sends(&services.front, &payload, outbox, &calls),
        )
        .await;
        assert!(sink.wait(LIMIT).await, "latency warmup stuck");
        *calls.lock().unwrap() = histogram();
        sink.arm(n, true, None);
        let duration = Duration::from_secs_f64(n as f64 / rate as f64);
        offered(
            rate,
            duration,
            timed_sends(&services.front, &payload, outbox, &calls),
        )
        .await;
        assert!(sink.wait(LIMIT).await, "latency run stuck");
        let delivered = sink.histogram().expect("latencies recorded");
        let call = calls.lock().unwrap().clone();
        services.close().await;
        Latencies { call, delivered }
    })
}

fn mean(runs: &[Run]) -> f64 {
    runs.iter().map(|r| r.rate).sum::<f64>() / runs.len().max(1) as f64
}

/// The `amqp-outbox` group. Both variants take turns in rounds, who goes first alternating,
/// so that a change of load on the machine (or a broker or server still writing the previous
/// run out) hits both alike.
pub fn amqp(scale: &Scale, url: &str, postgres: &str) -> Vec<Row> {
    let rounds = scale.amqp_rounds;
    let case = "amqp outbox, handler sending 1 command, 200 B";
    let per_round = scale.outbox_messages / rounds as u64;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for outbox in [round % 2 == 1, round % 2 == 0] {
            let how = if outbox { "with outbox" } else { "without" };
            progress(format!(
                "{case}: throughput round {round}/{rounds}, {how} ({per_round} msgs)"
            ));
            if outbox {
                let tables = Tables::new(postgres);
                with.push(throughput(url, Some(&tables), per_round));
            } else {
                without.push(throughput(url, None, per_round));
            }
        }
    }
    let mut rows = vec![Row::new(
        case,
        "throughput, both hops",
        "msg/s",
        mean(&with),
        mean(&without),
        true,
    )
    .note(format!(
        "the same bus without outbox; {CONCURRENCY} handlers, PostgreSQL pool 10"
    ))];

    let case = "amqp outbox, unit of work sending 1 command, 200 B";
    let rate = scale.amqp_rate;
    let per_round = scale.outbox_commits / rounds as u64;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for outbox in [round % 2 == 1, round % 2 == 0] {
            let how = if outbox {
                "commits with outbox"
            } else {
                "Bus::send"
            };
            progress(format!(
                "{case}: latency round {round}/{rounds} at {rate}/s, {how} ({per_round} msgs)"
            ));
            if outbox {
                let tables = Tables::new(postgres);
                with.push(latency(url, Some(&tables), rate, per_round));
            } else {
                without.push(latency(url, None, rate, per_round));
            }
        }
    }
    let nan = (f64::NAN, f64::NAN);
    let figures = |runs: &[Latencies], pick: fn(&Latencies) -> &Histogram<u64>| {
        let all: Vec<Histogram<u64>> = runs.iter().map(|l| pick(l).clone()).collect();
        merged(&all).and_then(|h| percentiles_us(&h)).unwrap_or(nan)
    };
    let (call50, call99) = figures(&with, |l| &l.call);
    let (send50, send99) = figures(&without, |l| &l.call);
    let (seen50, seen99) = figures(&with, |l| &l.delivered);
    let (sent50, sent99) = figures(&without, |l| &l.delivered);
    let note = "Bus::send (confirmed) on the same bus without outbox";
    rows.extend([
        Row::new(
            case,
            format!("commit p50 at {rate}/s"),
            "µs",
            call50,
            send50,
            false,
        )
        .note(note),
        Row::new(
            case,
            format!("commit p99 at {rate}/s"),
            "µs",
            call99,
            send99,
            false,
        )
        .note(note),
        Row::new(
            case,
            format!("commit to handler p50 at {rate}/s"),
            "µs",
            seen50,
            sent50,
            false,
        )
        .note(note),
        Row::new(
            case,
            format!("commit to handler p99 at {rate}/s"),
            "µs",
            seen99,
            sent99,
            false,
        )
        .note(note),
    ]);
    rows
}
