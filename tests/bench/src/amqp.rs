//! AMQP cases against the local RabbitMQ: the bus on the AMQP transport against raw lapin doing
//! the same work on the same settings (persistent messages, durable queues, publisher confirms
//! with 1,000 in flight, prefetch 1,000, manual acks, one consumer per queue).
//!
//! Every case declares its own queues under a unique prefix and deletes them at the end.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{Bus, BusError, HandlerError};
use bus_transport_amqp::{AmqpConfig, AmqpTransport, Naming};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::probe::{
    cpu_seconds, filler, handle, merged, now_ns, percentiles_us, progress, runtime, AmqpNoticed,
    AmqpWork, DynHandler, Sink,
};
use crate::report::Row;
use crate::Scale;
use hdrhistogram::Histogram;

/// Publisher confirms awaited at once, on both sides.
pub(crate) const WINDOW: usize = 1_000;
/// Prefetch of every consumer, on both sides.
const PREFETCH: u16 = 1_000;
/// Handlers the bus runs at once per endpoint: one, as the raw side's single consumer loop.
const BUS_CONCURRENCY: usize = 1;
/// Longest a single measurement may take.
const LIMIT: Duration = Duration::from_secs(120);
/// Body size of the end-to-end, publish-only and fan-out cases.
const BODY: usize = 200;
/// The bus endpoint of the command cases.
const ENDPOINT: &str = "bench-amqp";
/// The bus endpoints of the fan-out case.
const FAN_ENDPOINTS: [&str; 3] = ["bench-fan-1", "bench-fan-2", "bench-fan-3"];

/// Whether the broker answers, so the AMQP cases can be skipped with a reason if not.
pub fn reachable(url: &str) -> Result<(), String> {
    runtime().block_on(async {
        match tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(c)) => {
                let _ = c.close(200, "probe".into()).await;
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5 s".into()),
        }
    })
}

/// The highest delay level of the AMQP transport's scheduled messages (levels 0 to 31).
const SCHEDULE_LEVELS: u32 = 31;

/// Queues and exchanges of one case, under a unique prefix, deleted at the end.
pub(crate) struct Scope {
    url: String,
    prefix: String,
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Scope {
    pub(crate) fn new(url: &str) -> Scope {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Scope {
            url: url.to_string(),
            prefix: format!("bench-{}.", &id[id.len() - 10..]),
            queues: Vec::new(),
            exchanges: Vec::new(),
        }
    }

    fn naming(&self) -> Naming {
        Naming {
            queue_prefix: self.prefix.clone(),
            events_exchange: format!("{}bus.events", self.prefix),
            ..Naming::default()
        }
    }

    /// Remember the bus's queues and exchange for an endpoint, for the cleanup.
    pub(crate) fn bus_endpoint(&mut self, endpoint: &str) {
        let naming = self.naming();
        self.queues.push(naming.queue(endpoint));
        self.queues.push(naming.error_queue(endpoint));
        if !self.exchanges.contains(&naming.events_exchange) {
            // A starting bus also declares the queues of scheduled messages under the prefix.
            self.queues
                .extend((0..=SCHEDULE_LEVELS).map(|l| naming.schedule_level_queue(l)));
            self.queues.push(naming.schedule_due_queue());
            self.exchanges.push(naming.events_exchange);
        }
    }

    /// A name under the prefix for the raw side, remembered for the cleanup.
    pub(crate) fn raw_queue(&mut self, name: &str) -> String {
        let q = format!("{}raw.{name}", self.prefix);
        self.queues.push(q.clone());
        q
    }

    fn raw_exchange(&mut self) -> String {
        let x = format!("{}raw.events", self.prefix);
        self.exchanges.push(x.clone());
        x
    }

    pub(crate) async fn cleanup(&self) {
        let Ok(conn) = Connection::connect(&self.url, ConnectionProperties::default()).await else {
            progress("cleanup: broker unreachable; queues left behind");
            return;
        };
        if let Ok(ch) = conn.create_channel().await {
            for q in &self.queues {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for x in &self.exchanges {
                let _ = ch
                    .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "bench done".into()).await;
    }
}

/// Longest a single send may wait for its confirm before the run is declared stuck (a client
/// connection that died without failing its pending confirms would otherwise hang the run).
const SEND_LIMIT: Duration = Duration::from_secs(60);

/// `send`, failed if its confirm does not come within [`SEND_LIMIT`].
async fn bounded<Fut: Future<Output = Result<(), String>>>(
    seq: u64,
    send: Fut,
) -> Result<(), String> {
    tokio::time::timeout(SEND_LIMIT, send)
        .await
        .unwrap_or_else(|_| Err(format!("send {seq} got no confirm in {SEND_LIMIT:?}")))
}

/// Run `n` sends with at most `WINDOW` unfinished at once (each send finishes on its confirm).
pub(crate) async fn windowed<F, Fut>(n: u64, send: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut inflight = FuturesUnordered::new();
    for seq in 0..n {
        if inflight.len() >= WINDOW {
            if let Some(Err(e)) = inflight.next().await {
                panic!("send failed: {e}");
            }
        }
        inflight.push(bounded(seq, send(seq)));
    }
    while let Some(r) = inflight.next().await {
        if let Err(e) = r {
            panic!("send failed: {e}");
        }
    }
}

/// Warm up with `warmup` messages, then time `n`: throughput and client CPU per message, each
/// run of sends made by `send()` and waited for on `sink` (`what` names a stuck run).
pub(crate) async fn warmed_run<S, F, Fut>(
    sink: &Sink,
    warmup: u64,
    n: u64,
    what: &str,
    send: S,
) -> Run
where
    S: Fn() -> F,
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    sink.arm(warmup, false, None);
    windowed(warmup, send()).await;
    assert!(sink.wait(LIMIT).await, "{what}: warmup stuck");
    sink.arm(n, false, None);
    let started = Instant::now();
    let cpu = cpu_seconds();
    windowed(n, send()).await;
    assert!(sink.wait(LIMIT).await, "{what} stuck");
    Run {
        rate: n as f64 / started.elapsed().as_secs_f64(),
        cpu_us: (cpu_seconds() - cpu) * 1e6 / n as f64,
    }
}

/// Offer `rate` messages per second for `duration`, each send in its own task.
pub(crate) async fn offered<F, Fut>(rate: u64, duration: Duration, send: F) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let n = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    for seq in 0..n {
        tick.tick().await;
        tasks.spawn(bounded(seq, send(seq)));
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            panic!("send failed: {e}");
        }
    }
    n
}

fn raw_properties() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// The properties the bus sends with every root message (see `docs/wire-format.md`; a root
/// message sent with no ids of its own has no correlation id and no header table): to tell the
/// broker's cost of carrying them from the client's cost of making them.
fn bus_like_properties(seq: u64) -> BasicProperties {
    let id = format!("0190aaaa-bbbb-7ccc-8ddd-{seq:012x}");
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.as_str().into())
        .with_type("bench.AmqpWork".into())
        .with_timestamp(1_700_000_000)
}

/// Which properties the raw side sends.
#[derive(Clone, Copy)]
enum RawProps {
    /// Persistent, content type: what a plain lapin program sends.
    Plain,
    /// Those the bus sends.
    LikeBus,
}

/// The confirm of a raw publish, as the bus reads it.
pub(crate) fn confirmed(c: Confirmation) -> Result<(), String> {
    match c {
        Confirmation::Ack(None) => Ok(()),
        other => Err(format!("not confirmed: {other:?}")),
    }
}

pub(crate) async fn raw_connection(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("raw lapin connection");
    let publisher = conn.create_channel().await.expect("channel");
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms on");
    (conn, publisher)
}

pub(crate) async fn raw_queue(ch: &Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .expect("declare raw queue");
}

/// One consumer on its own channel, prefetch 1,000: decode, run the handler, ack each message.
async fn raw_consumer<M>(
    conn: &Connection,
    queue: &str,
    handler: DynHandler<M>,
) -> tokio::task::JoinHandle<()>
where
    M: serde::de::DeserializeOwned + Send + 'static,
{
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    tokio::spawn(async move {
        let _ch = ch;
        while let Some(Ok(d)) = consumer.next().await {
            let m: M = serde_json::from_slice(&d.data).expect("raw body decodes");
            let _ = handler(m).await;
            if d.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
        }
    })
}

fn work_handler(sink: &Arc<Sink>) -> DynHandler<AmqpWork> {
    let s = sink.clone();
    Arc::new(move |m: AmqpWork| {
        Box::pin(handle(s.clone(), m.sent_ns)) as bus_core::BoxFuture<Result<(), HandlerError>>
    })
}

pub(crate) async fn bus_transport(scope: &Scope, name: &str) -> AmqpTransport {
    AmqpTransport::connect(
        AmqpConfig::new(scope.url.clone())
            .connection_name(name)
            .naming(scope.naming())
            .publish_timeout(Duration::from_secs(60)),
    )
    .await
    .expect("bus connects")
}

/// A bus hosting the command endpoint; consuming unless `publish_only`.
/// How the bus consumes in a command case.
#[derive(Clone, Copy)]
struct Consuming {
    /// Acks held back and sent as `multiple` acks.
    batched: bool,
    /// Handlers at once on the endpoint.
    concurrency: usize,
    /// `BusBuilder::telemetry`; its default when `None`.
    telemetry: Option<bool>,
}

/// As the raw side: acks one by one, one handler at a time.
const LIKE_RAW: Consuming = Consuming {
    telemetry: None,
    batched: false,
    concurrency: BUS_CONCURRENCY,
};

async fn command_bus(
    scope: &mut Scope,
    sink: &Arc<Sink>,
    publish_only: bool,
    consuming: Consuming,
) -> Bus {
    scope.bus_endpoint(ENDPOINT);
    let s = sink.clone();
    let builder = Bus::builder()
        .without_discovery()
        .transport(
            bus_transport(scope, "bench-bus")
                .await
                .with_batched_acks(consuming.batched),
        )
        .handler(ENDPOINT, move |m: AmqpWork| handle(s.clone(), m.sent_ns))
        .endpoint(ENDPOINT, move |e| {
            e.prefetch(usize::from(PREFETCH))
                .concurrency(consuming.concurrency)
        })
        .host([ENDPOINT]);
    let builder = match consuming.telemetry {
        Some(on) => builder.telemetry(on),
        None => builder,
    };
    if publish_only {
        builder.build().await.expect("bus builds")
    } else {
        builder.start().await.expect("bus starts")
    }
}

async fn close_bus(bus: Bus) {
    bus.shutdown().await;
}

fn bus_send(bus: &Bus, payload: &Arc<String>, stamp: bool) -> impl Fn(u64) -> BusSend {
    let bus = bus.clone();
    let payload = payload.clone();
    move |seq| {
        let bus = bus.clone();
        let payload = payload.clone();
        Box::pin(async move {
            let sent_ns = if stamp { now_ns() } else { 0 };
            bus.send(AmqpWork {
                seq,
                sent_ns,
                payload: String::clone(&payload),
            })
            .await
            .map_err(|e: BusError| e.to_string())
        })
    }
}

type BusSend = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

fn raw_send(
    ch: &Channel,
    exchange: &str,
    key: &str,
    mandatory: bool,
    payload: &Arc<String>,
    stamp: bool,
) -> impl Fn(u64) -> BusSend {
    raw_send_with(
        ch,
        exchange,
        key,
        mandatory,
        payload,
        stamp,
        RawProps::Plain,
    )
}

fn raw_send_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    mandatory: bool,
    payload: &Arc<String>,
    stamp: bool,
    props: RawProps,
) -> impl Fn(u64) -> BusSend {
    let ch = ch.clone();
    let exchange = exchange.to_string();
    let key = key.to_string();
    let payload = payload.clone();
    move |seq| {
        let ch = ch.clone();
        let exchange = exchange.clone();
        let key = key.clone();
        let payload = payload.clone();
        Box::pin(async move {
            let sent_ns = if stamp { now_ns() } else { 0 };
            let body = serde_json::to_vec(&AmqpWork {
                seq,
                sent_ns,
                payload: String::clone(&payload),
            })
            .map_err(|e| e.to_string())?;
            let confirm = ch
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    match props {
                        RawProps::Plain => raw_properties(),
                        RawProps::LikeBus => bus_like_properties(seq),
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            confirmed(confirm.await.map_err(|e| e.to_string())?)
        })
    }
}

pub(crate) fn payload_of(body: usize) -> Arc<String> {
    // {"seq":N,"sent_ns":N,"payload":""} takes about 45 bytes with realistic numbers.
    Arc::new(filler(body.saturating_sub(45)))
}

/// End to end: throughput over `n` messages of `body` bytes.
fn bus_e2e_throughput(url: &str, n: u64, body: usize, warmup: u64, how: Consuming) -> Run {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        let sink = Sink::new();
        let bus = command_bus(&mut scope, &sink, false, how).await;
        let payload = payload_of(body);
        let run = warmed_run(&sink, warmup, n, "bus end-to-end run", || {
            bus_send(&bus, &payload, false)
        })
        .await;
        close_bus(bus).await;
        scope.cleanup().await;
        run
    })
}

fn raw_e2e_throughput(url: &str, n: u64, body: usize, warmup: u64, props: RawProps) -> Run {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        let sink = Sink::new();
        let (conn, publisher) = raw_connection(url).await;
        let queue = scope.raw_queue("work");
        raw_queue(&publisher, &queue).await;
        let consumer = raw_consumer(&conn, &queue, work_handler(&sink)).await;
        let payload = payload_of(body);
        let send = || raw_send_with(&publisher, "", &queue, true, &payload, false, props);
        let run = warmed_run(&sink, warmup, n, "raw end-to-end run", send).await;
        consumer.abort();
        let _ = conn.close(200, "bench done".into()).await;
        scope.cleanup().await;
        run
    })
}

fn bus_e2e_latency(url: &str, rate: u64, duration: Duration) -> Histogram<u64> {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        let sink = Sink::new();
        let bus = command_bus(&mut scope, &sink, false, LIKE_RAW).await;
        let payload = payload_of(BODY);
        sink.arm(200, false, None);
        windowed(200, bus_send(&bus, &payload, false)).await;
        assert!(sink.wait(LIMIT).await, "bus warmup stuck");
        sink.arm(
            (rate as f64 * duration.as_secs_f64()).round() as u64,
            true,
            None,
        );
        offered(rate, duration, bus_send(&bus, &payload, true)).await;
        assert!(sink.wait(LIMIT).await, "bus latency run stuck");
        let h = sink.histogram().expect("latencies recorded");
        close_bus(bus).await;
        scope.cleanup().await;
        h
    })
}

fn raw_e2e_latency(url: &str, rate: u64, duration: Duration) -> Histogram<u64> {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        let sink = Sink::new();
        let (conn, publisher) = raw_connection(url).await;
        let queue = scope.raw_queue("work");
        raw_queue(&publisher, &queue).await;
        let consumer = raw_consumer(&conn, &queue, work_handler(&sink)).await;
        let payload = payload_of(BODY);
        sink.arm(200, false, None);
        windowed(200, raw_send(&publisher, "", &queue, true, &payload, false)).await;
        assert!(sink.wait(LIMIT).await, "raw warmup stuck");
        sink.arm(
            (rate as f64 * duration.as_secs_f64()).round() as u64,
            true,
            None,
        );
        offered(
            rate,
            duration,
            raw_send(&publisher, "", &queue, true, &payload, true),
        )
        .await;
        assert!(sink.wait(LIMIT).await, "raw latency run stuck");
        let h = sink.histogram().expect("latencies recorded");
        consumer.abort();
        let _ = conn.close(200, "bench done".into()).await;
        scope.cleanup().await;
        h
    })
}

/// Messages per second, and client CPU per message in microseconds.
pub(crate) struct Run {
    pub(crate) rate: f64,
    pub(crate) cpu_us: f64,
}

fn bus_publish_only(url: &str, n: u64) -> Run {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        let sink = Sink::new();
        let bus = command_bus(&mut scope, &sink, true, LIKE_RAW).await;
        let payload = payload_of(BODY);
        windowed(1_000, bus_send(&bus, &payload, false)).await;
        let started = Instant::now();
        let cpu = cpu_seconds();
        windowed(n, bus_send(&bus, &payload, false)).await;
        let run = Run {
            rate: n as f64 / started.elapsed().as_secs_f64(),
            cpu_us: (cpu_seconds() - cpu) * 1e6 / n as f64,
        };
        close_bus(bus).await;
        scope.cleanup().await;
        run
    })
}

/// `n` commands from one task, either each awaited before the next (`batch` off) or with one
/// `Bus::send_all` call: what a user's loop of sends costs against the batch call.
fn bus_sends_from_one_task(url: &str, n: u64, batch: bool) -> Run {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        let sink = Sink::new();
        let bus = command_bus(&mut scope, &sink, true, LIKE_RAW).await;
        let payload = payload_of(BODY);
        let work = |seq| AmqpWork {
            seq,
            sent_ns: 0,
            payload: String::clone(&payload),
        };
        bus.send_all((0..100).map(work))
            .await
            .expect("warm-up batch");
        let started = Instant::now();
        let cpu = cpu_seconds();
        if batch {
            bus.send_all((0..n).map(work)).await.expect("batch send");
        } else {
            for seq in 0..n {
                bus.send(work(seq)).await.expect("sequential send");
            }
        }
        let run = Run {
            rate: n as f64 / started.elapsed().as_secs_f64(),
            cpu_us: (cpu_seconds() - cpu) * 1e6 / n as f64,
        };
        close_bus(bus).await;
        scope.cleanup().await;
        run
    })
}

fn raw_publish_only(url: &str, n: u64, props: RawProps) -> Run {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        let (conn, publisher) = raw_connection(url).await;
        let queue = scope.raw_queue("work");
        raw_queue(&publisher, &queue).await;
        let payload = payload_of(BODY);
        let send = || raw_send_with(&publisher, "", &queue, true, &payload, false, props);
        windowed(1_000, send()).await;
        let started = Instant::now();
        let cpu = cpu_seconds();
        windowed(n, send()).await;
        let run = Run {
            rate: n as f64 / started.elapsed().as_secs_f64(),
            cpu_us: (cpu_seconds() - cpu) * 1e6 / n as f64,
        };
        let _ = conn.close(200, "bench done".into()).await;
        scope.cleanup().await;
        run
    })
}

fn bus_fanout(url: &str, n: u64) -> f64 {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        let sink = Sink::new();
        let mut builder = Bus::builder()
            .without_discovery()
            .transport(bus_transport(&scope, "bench-bus-fanout").await)
            .host(FAN_ENDPOINTS);
        for ep in FAN_ENDPOINTS {
            scope.bus_endpoint(ep);
            let s = sink.clone();
            builder = builder
                .handler(ep, move |m: AmqpNoticed| handle(s.clone(), m.sent_ns))
                .endpoint(ep, |e| {
                    e.prefetch(usize::from(PREFETCH))
                        .concurrency(BUS_CONCURRENCY)
                });
        }
        let bus = builder.start().await.expect("bus starts");
        let payload = payload_of(BODY);
        let publish = |bus: &Bus| {
            let bus = bus.clone();
            let payload = payload.clone();
            move |seq| {
                let bus = bus.clone();
                let payload = payload.clone();
                async move {
                    bus.publish(AmqpNoticed {
                        seq,
                        sent_ns: 0,
                        payload: String::clone(&payload),
                    })
                    .await
                    .map_err(|e| e.to_string())
                }
            }
        };
        sink.arm(3 * 500, false, None);
        windowed(500, publish(&bus)).await;
        assert!(sink.wait(LIMIT).await, "bus fan-out warmup stuck");
        sink.arm(3 * n, false, None);
        let started = Instant::now();
        windowed(n, publish(&bus)).await;
        assert!(sink.wait(LIMIT).await, "bus fan-out run stuck");
        let rate = n as f64 / started.elapsed().as_secs_f64();
        close_bus(bus).await;
        scope.cleanup().await;
        rate
    })
}

fn raw_fanout(url: &str, n: u64) -> f64 {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        let sink = Sink::new();
        let (conn, publisher) = raw_connection(url).await;
        let exchange = scope.raw_exchange();
        publisher
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare raw exchange");
        let mut consumers = Vec::new();
        for i in 1..=3 {
            let queue = scope.raw_queue(&format!("fan-{i}"));
            raw_queue(&publisher, &queue).await;
            publisher
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "bench.AmqpNoticed".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind raw queue");
            let s = sink.clone();
            let handler: DynHandler<AmqpNoticed> = Arc::new(move |m: AmqpNoticed| {
                Box::pin(handle(s.clone(), m.sent_ns))
                    as bus_core::BoxFuture<Result<(), HandlerError>>
            });
            consumers.push(raw_consumer(&conn, &queue, handler).await);
        }
        let payload = payload_of(BODY);
        let publish = || {
            raw_send(
                &publisher,
                &exchange,
                "bench.AmqpNoticed",
                false,
                &payload,
                false,
            )
        };
        sink.arm(3 * 500, false, None);
        windowed(500, publish()).await;
        assert!(sink.wait(LIMIT).await, "raw fan-out warmup stuck");
        sink.arm(3 * n, false, None);
        let started = Instant::now();
        windowed(n, publish()).await;
        assert!(sink.wait(LIMIT).await, "raw fan-out run stuck");
        let rate = n as f64 / started.elapsed().as_secs_f64();
        for c in consumers {
            c.abort();
        }
        let _ = conn.close(200, "bench done".into()).await;
        scope.cleanup().await;
        rate
    })
}

/// Case 3: end to end, throughput and latency at a fixed offered rate. Raw and bus take turns
/// in rounds (raw, bus, raw, bus, ...) so a change of load on the machine hits both alike.
pub fn end_to_end(scale: &Scale, url: &str) -> Vec<Row> {
    let case = "amqp end to end, 200 B";
    let note = "lapin: same queue, confirms, prefetch, acks";
    let rounds = scale.amqp_rounds;
    let per_round = scale.amqp_messages / rounds as u64;
    let (mut raw, mut bus, mut batched, mut wide, mut like) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Alternate who goes first (raw, bus, bus, raw, ...): a broker still busy with the previous
    // run's disk writes or queue deletion slows whoever follows.
    for round in 1..=rounds {
        let raw_first = round % 2 == 1;
        if raw_first {
            progress(format!(
                "{case}: throughput round {round}/{rounds}, raw lapin ({per_round} msgs)"
            ));
            raw.push(raw_e2e_throughput(
                url,
                per_round,
                BODY,
                1_000,
                RawProps::Plain,
            ));
        }
        progress(format!(
            "{case}: throughput round {round}/{rounds}, bus ({per_round} msgs)"
        ));
        bus.push(bus_e2e_throughput(url, per_round, BODY, 1_000, LIKE_RAW));
        progress(format!(
            "{case}: throughput round {round}/{rounds}, bus with batched acks ({per_round} msgs)"
        ));
        let how = Consuming {
            batched: true,
            ..LIKE_RAW
        };
        batched.push(bus_e2e_throughput(url, per_round, BODY, 1_000, how));
        progress(format!(
            "{case}: throughput round {round}/{rounds}, bus with 16 handlers ({per_round} msgs)"
        ));
        let how = Consuming {
            concurrency: 16,
            ..LIKE_RAW
        };
        wide.push(bus_e2e_throughput(url, per_round, BODY, 1_000, how));
        progress(format!(
            "{case}: throughput round {round}/{rounds}, raw lapin with the bus's properties ({per_round} msgs)"
        ));
        like.push(raw_e2e_throughput(
            url,
            per_round,
            BODY,
            1_000,
            RawProps::LikeBus,
        ));
        if !raw_first {
            progress(format!(
                "{case}: throughput round {round}/{rounds}, raw lapin ({per_round} msgs)"
            ));
            raw.push(raw_e2e_throughput(
                url,
                per_round,
                BODY,
                1_000,
                RawProps::Plain,
            ));
        }
    }
    let rate = scale.amqp_rate;
    let slice = scale.amqp_latency / rounds as u32;
    let (mut raw_h, mut bus_h) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let secs = slice.as_secs_f64();
        let raw_latency = |raw_h: &mut Vec<Histogram<u64>>| {
            progress(format!(
                "{case}: latency round {round}/{rounds} at {rate} msg/s for {secs:.1} s, raw lapin"
            ));
            raw_h.push(raw_e2e_latency(url, rate, slice));
        };
        if round % 2 == 1 {
            raw_latency(&mut raw_h);
        }
        progress(format!(
            "{case}: latency round {round}/{rounds} at {rate} msg/s for {secs:.1} s, bus"
        ));
        bus_h.push(bus_e2e_latency(url, rate, slice));
        if round % 2 == 0 {
            raw_latency(&mut raw_h);
        }
    }
    let nan = (f64::NAN, f64::NAN);
    let (raw50, raw99) = merged(&raw_h)
        .and_then(|h| percentiles_us(&h))
        .unwrap_or(nan);
    let (bus50, bus99) = merged(&bus_h)
        .and_then(|h| percentiles_us(&h))
        .unwrap_or(nan);
    vec![
        Row::new(
            case,
            "throughput",
            "msg/s",
            rate_of(&bus),
            rate_of(&raw),
            true,
        )
        .note(note),
        Row::new(
            case,
            "client CPU per message",
            "µs",
            cpu_of(&bus),
            cpu_of(&raw),
            false,
        )
        .note(note),
        Row::new(
            format!("{case}, bus acks batched"),
            "throughput",
            "msg/s",
            rate_of(&batched),
            rate_of(&raw),
            true,
        )
        .note("lapin: same, acks one by one"),
        Row::new(
            format!("{case}, bus 16 handlers (its default)"),
            "throughput",
            "msg/s",
            rate_of(&wide),
            rate_of(&raw),
            true,
        )
        .note("lapin: same, one message at a time"),
        Row::new(
            format!("{case}, raw with the bus's properties"),
            "throughput",
            "msg/s",
            rate_of(&bus),
            rate_of(&like),
            true,
        )
        .note("lapin: same, plus message id, type, time"),
        Row::new(
            format!("{case}, raw with the bus's properties"),
            "client CPU per message",
            "µs",
            cpu_of(&bus),
            cpu_of(&like),
            false,
        )
        .note("lapin: same, plus message id, type, time"),
        Row::new(
            case,
            format!("latency p50 at {rate} msg/s"),
            "µs",
            bus50,
            raw50,
            false,
        )
        .note(note),
        Row::new(
            case,
            format!("latency p99 at {rate} msg/s"),
            "µs",
            bus99,
            raw99,
            false,
        )
        .note(note),
    ]
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}

fn rate_of(runs: &[Run]) -> f64 {
    mean(runs.iter().map(|r| r.rate))
}

fn cpu_of(runs: &[Run]) -> f64 {
    mean(runs.iter().map(|r| r.cpu_us))
}

/// Case 4: publish only (confirms, no consumer), and fan-out to three services.
pub fn publish_and_fanout(scale: &Scale, url: &str) -> Vec<Row> {
    let case = "amqp publish only, 200 B";
    let n = scale.amqp_messages;
    progress(format!("{case}: raw lapin ({n} msgs)"));
    let raw = raw_publish_only(url, n, RawProps::Plain);
    progress(format!("{case}: bus ({n} msgs)"));
    let bus = bus_publish_only(url, n);
    progress(format!(
        "{case}: raw lapin with the bus's properties ({n} msgs)"
    ));
    let like = raw_publish_only(url, n, RawProps::LikeBus);
    let mut rows = vec![
        Row::new(case, "throughput", "msg/s", bus.rate, raw.rate, true)
            .note("lapin: confirms, 1,000 in flight"),
        Row::new(
            case,
            "client CPU per message",
            "µs",
            bus.cpu_us,
            raw.cpu_us,
            false,
        )
        .note("lapin: confirms, 1,000 in flight"),
        Row::new(
            format!("{case}, raw with the bus's properties"),
            "throughput",
            "msg/s",
            bus.rate,
            like.rate,
            true,
        )
        .note("lapin: same, plus message id, type, time"),
    ];
    let case = "amqp sends from one task, 200 B";
    let n = scale.batch_messages;
    progress(format!("{case}: one await per send ({n} msgs)"));
    let one_by_one = bus_sends_from_one_task(url, n, false);
    progress(format!("{case}: Bus::send_all ({n} msgs)"));
    let batch = bus_sends_from_one_task(url, n, true);
    rows.push(
        Row::new(
            case,
            "send_all vs sequential sends",
            "msg/s",
            batch.rate,
            one_by_one.rate,
            true,
        )
        .note("both the bus; the raw column: one awaited send at a time"),
    );
    let case = "amqp fan-out to 3 services";
    progress(format!(
        "{case}: raw lapin ({} events)",
        scale.fanout_messages
    ));
    let raw = raw_fanout(url, scale.fanout_messages);
    progress(format!("{case}: bus ({} events)", scale.fanout_messages));
    let bus = bus_fanout(url, scale.fanout_messages);
    rows.push(
        Row::new(case, "events published", "ev/s", bus, raw, true)
            .note("lapin: topic exchange, 3 bound queues"),
    );
    rows
}

/// Case 7 (AMQP part): end to end, the bus with its spans and metrics on under an installed
/// SDK against the same bus with them off, in turns.
#[cfg(feature = "telemetry")]
pub fn telemetry(scale: &Scale, url: &str) -> Vec<Row> {
    crate::telemetry::install();
    let case = "amqp end to end, tracing and metrics on";
    let n = scale.amqp_messages / 2;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 1..=scale.amqp_rounds {
        progress(format!("{case}: round {round}, on ({n} msgs)"));
        let how = Consuming {
            telemetry: Some(true),
            ..LIKE_RAW
        };
        on.push(bus_e2e_throughput(url, n, BODY, 1_000, how).rate);
        progress(format!("{case}: round {round}, off ({n} msgs)"));
        let how = Consuming {
            telemetry: Some(false),
            ..LIKE_RAW
        };
        off.push(bus_e2e_throughput(url, n, BODY, 1_000, how).rate);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    vec![
        Row::new(case, "throughput", "msg/s", mean(&on), mean(&off), true)
            .note("the same bus with telemetry off; SDK: all spans sampled, batch processor"),
    ]
}

/// Case 5 (AMQP part): end-to-end throughput by body size.
pub fn body_sizes(scale: &Scale, url: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for &(size, n) in &scale.sizes {
        let case = format!("amqp end to end, {} KiB", size / 1024);
        progress(format!("{case}: raw lapin ({n} msgs)"));
        let raw = raw_e2e_throughput(url, n, size, 100, RawProps::Plain).rate;
        progress(format!("{case}: bus ({n} msgs)"));
        let bus = bus_e2e_throughput(url, n, size, 100, LIKE_RAW).rate;
        rows.push(
            Row::new(case, "throughput", "msg/s", bus, raw, true)
                .note("lapin: same queue, confirms, prefetch, acks"),
        );
    }
    rows
}
