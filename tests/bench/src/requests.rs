//! Request/response cases: round trips through `Bus::request` (the handler answering with
//! `MessageContext::reply`) against the same exchange written by hand, with 1 request in flight
//! and with [`WIDE`] callers each making requests one after another.
//!
//! The bus hosts the answering endpoint itself, with as many handlers at once as requests in
//! flight. In memory the raw side is a tokio `mpsc` channel of `(request, oneshot sender)` pairs
//! read by one task, which answers inline with 1 in flight and spawns a task per request with
//! more. On AMQP the raw side is lapin with RabbitMQ's direct reply-to, on the bus's settings:
//! requests persistent to a durable queue with publisher confirms, prefetch 1,000, the reply
//! published (not persistent) with a confirm before the request is acked by hand; the client
//! consumes `amq.rabbitmq.reply-to` without acks on the channel it publishes on and finds each
//! caller by correlation id. Both sides of a case run in the same process, time every round
//! trip the same way, and answer through the same kind of dynamic dispatch (a boxed future).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::{BoxFuture, Bus, Command, HandlerError, MessageContext, RequestOptions};
use bus_transport_memory::MemoryTransport;
use futures_util::stream::StreamExt;
use hdrhistogram::Histogram;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::amqp::{bus_transport, confirmed, raw_connection, raw_queue, Scope};
use crate::probe::{median, merged, percentiles_us, progress, runtime};
use crate::report::Row;
use crate::Scale;

/// The endpoint answering requests on the bus side.
const ENDPOINT: &str = "bench-rpc";
/// Requests in flight in the wide rows: callers at once, and the endpoint's concurrency.
const WIDE: usize = 64;
/// Queue bound of the raw in-memory channel (the memory transport's default).
const CAPACITY: usize = 10_000;
/// Prefetch of the answering consumer on AMQP, on both sides (as the other AMQP cases).
const PREFETCH: u16 = 1_000;
/// Longest one round trip may take: past it the run is stuck, not slow.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);
/// Longest all the round trips of one measurement may take.
const LIMIT: Duration = Duration::from_secs(180);
/// RabbitMQ's pseudo-queue for direct reply-to: replies go straight to the consuming channel.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The answer to a [`Ping`].
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Pong {
    /// The request's `n`, so that a crossed answer shows.
    pub n: u64,
}

/// A request answered with a [`Pong`].
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "bench.Ping", endpoint = "bench-rpc", response = Pong)]
pub struct Ping {
    /// Position in the run.
    pub n: u64,
}

/// The raw side's answering function, called through a boxed future as the bus calls its
/// handlers.
type Answer = Arc<dyn Fn(Ping) -> BoxFuture<Pong> + Send + Sync>;

fn answer() -> Answer {
    Arc::new(|p: Ping| Box::pin(async move { Pong { n: p.n } }) as BoxFuture<Pong>)
}

/// Round trips per second and the latency of each, from one run.
struct Trips {
    per_sec: f64,
    latency: Histogram<u64>,
}

/// Round trips per second and p50, p99 of a round trip in µs.
struct Figures {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Figures {
    fn of(per_sec: f64, latency: Option<&Histogram<u64>>) -> Figures {
        let (p50_us, p99_us) = latency
            .and_then(percentiles_us)
            .unwrap_or((f64::NAN, f64::NAN));
        Figures {
            per_sec,
            p50_us,
            p99_us,
        }
    }
}

/// `n` round trips made by `callers` tasks, each making its share one after another with
/// `call(seq)`; every round trip timed from before the call to its checked answer.
async fn round_trips<F, Fut>(what: &str, n: u64, callers: usize, call: F) -> Trips
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    let started = Instant::now();
    let c = callers as u64;
    let tasks: Vec<_> = (0..c)
        .map(|i| {
            let call = call.clone();
            let (from, to) = (n * i / c, n * (i + 1) / c);
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)
                    .expect("histogram bounds");
                for seq in from..to {
                    let sent = Instant::now();
                    call(seq).await;
                    let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    latency.saturating_record(ns.max(1));
                }
                latency
            })
        })
        .collect();
    let mut all = Vec::with_capacity(tasks.len());
    for task in tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(latency)) => all.push(latency),
            // Keep the caller's own message (a timed-out request, say) for `once_more`.
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("{what}: a caller task ended: {e}"),
            Err(_) => panic!("{what}: {n} round trips not done in {LIMIT:?}"),
        }
    }
    let per_sec = n as f64 / started.elapsed().as_secs_f64();
    Trips {
        per_sec,
        latency: merged(&all).expect("at least one caller"),
    }
}

/// Warm up with `warmup` round trips, then measure `n`.
async fn warmed<F, Fut>(what: &str, warmup: u64, n: u64, callers: usize, call: F) -> Trips
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    round_trips(&format!("{what} warmup"), warmup, callers, call.clone()).await;
    round_trips(what, n, callers, call).await
}

fn rows(case: &str, bus: &Figures, raw: &Figures, note: &str) -> Vec<Row> {
    vec![
        Row::new(case, "throughput", "req/s", bus.per_sec, raw.per_sec, true).note(note),
        Row::new(case, "round trip p50", "µs", bus.p50_us, raw.p50_us, false).note(note),
        Row::new(case, "round trip p99", "µs", bus.p99_us, raw.p99_us, false).note(note),
    ]
}

/// In memory: 1 and [`WIDE`] requests in flight, the bus and the raw side taken in turns
/// `scale.repeats` times (the median of each figure is reported).
pub fn memory(scale: &Scale) -> Vec<Row> {
    let mut out = Vec::new();
    for window in [1, WIDE] {
        let case = format!("memory requests, {window} in flight");
        progress(format!(
            "{case}: bus and raw mpsc + oneshot in turns, {} round trips each",
            scale.mem_requests
        ));
        let (mut bus, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..scale.repeats {
            bus.push(bus_memory(scale, window));
            raw.push(raw_memory(scale, window));
        }
        let note = if window == 1 {
            "tokio mpsc + oneshot, one answering task"
        } else {
            "tokio mpsc + oneshot, a task spawned per request"
        };
        out.extend(rows(&case, &medians(&bus), &medians(&raw), note));
    }
    out
}

fn medians(runs: &[Figures]) -> Figures {
    Figures {
        per_sec: median(runs.iter().map(|f| f.per_sec).collect()),
        p50_us: median(runs.iter().map(|f| f.p50_us).collect()),
        p99_us: median(runs.iter().map(|f| f.p99_us).collect()),
    }
}

/// The bus's handler: answer with the request's `n`.
async fn pong(p: Ping, ctx: MessageContext) -> Result<(), HandlerError> {
    ctx.reply(Pong { n: p.n }).await?;
    Ok(())
}

/// One request through `bus`, its answer checked.
fn bus_call(bus: &Bus) -> impl Fn(u64) -> BoxFuture<()> + Clone + Send + 'static {
    let bus = bus.clone();
    move |n| {
        let bus = bus.clone();
        Box::pin(async move {
            let pong: Pong = bus
                .request_with(Ping { n }, RequestOptions::timeout(REQUEST_LIMIT))
                .await
                .unwrap_or_else(|e| panic!("bus request {n}: {e}"));
            assert_eq!(pong.n, n, "bus request {n}: answered for another request");
        })
    }
}

fn bus_memory(scale: &Scale, window: usize) -> Figures {
    runtime().block_on(async {
        let bus = Bus::builder()
            .without_discovery()
            .transport(MemoryTransport::new())
            .handler(ENDPOINT, pong)
            .endpoint(ENDPOINT, move |e| e.concurrency(window))
            .host([ENDPOINT])
            .start()
            .await
            .expect("bus starts");
        let trips = warmed(
            "bus in-memory requests",
            scale.mem_warmup,
            scale.mem_requests,
            window,
            bus_call(&bus),
        )
        .await;
        bus.shutdown().await;
        Figures::of(trips.per_sec, Some(&trips.latency))
    })
}

fn raw_memory(scale: &Scale, window: usize) -> Figures {
    runtime().block_on(async {
        let (tx, mut rx) = mpsc::channel::<(Ping, oneshot::Sender<Pong>)>(CAPACITY);
        let answer = answer();
        let server = tokio::spawn(async move {
            while let Some((ping, reply)) = rx.recv().await {
                if window == 1 {
                    let _ = reply.send(answer(ping).await);
                } else {
                    // As many answers at once as requests arrive, the way an endpoint of
                    // that concurrency runs its handlers.
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(answer(ping).await);
                    });
                }
            }
        });
        let call = {
            let tx = tx.clone();
            move |n| {
                let tx = tx.clone();
                async move {
                    let (reply, answered) = oneshot::channel();
                    tx.send((Ping { n }, reply))
                        .await
                        .expect("the answering task runs");
                    let pong = tokio::time::timeout(REQUEST_LIMIT, answered)
                        .await
                        .unwrap_or_else(|_| panic!("raw request {n}: no answer in time"))
                        .expect("the answering task answers");
                    assert_eq!(pong.n, n, "raw request {n}: answered for another request");
                }
            }
        };
        let trips = warmed(
            "raw in-memory requests",
            scale.mem_warmup,
            scale.mem_requests,
            window,
            call,
        )
        .await;
        drop(tx);
        let _ = tokio::time::timeout(REQUEST_LIMIT, server).await;
        Figures::of(trips.per_sec, Some(&trips.latency))
    })
}

/// On AMQP: 1 and [`WIDE`] requests in flight; raw and bus take turns in rounds, who goes
/// first alternating, each round on fresh connections and queues.
pub fn amqp(scale: &Scale, url: &str) -> Vec<Row> {
    let mut out = Vec::new();
    let rounds = scale.amqp_rounds;
    for (window, n) in [(1, scale.amqp_requests), (WIDE, scale.amqp_requests_wide)] {
        let case = format!("amqp requests, {window} in flight");
        let per_round = n / rounds as u64;
        let (mut raw, mut bus) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let raw_round = |raw: &mut Vec<Trips>| {
                progress(format!(
                    "{case}: round {round}/{rounds}, raw lapin ({per_round} round trips)"
                ));
                raw.push(raw_amqp(url, window, per_round));
            };
            if round % 2 == 1 {
                raw_round(&mut raw);
            }
            progress(format!(
                "{case}: round {round}/{rounds}, bus ({per_round} round trips)"
            ));
            bus.push(bus_amqp(url, window, per_round));
            if round % 2 == 0 {
                raw_round(&mut raw);
            }
        }
        let combined = |runs: &[Trips]| {
            let per_sec = runs.iter().map(|t| t.per_sec).sum::<f64>() / runs.len() as f64;
            let latency: Vec<_> = runs.iter().map(|t| t.latency.clone()).collect();
            Figures::of(per_sec, merged(&latency).as_ref())
        };
        let note = if window == 1 {
            "lapin direct reply-to; same confirms, prefetch, acks; one consumer loop"
        } else {
            "lapin direct reply-to; same confirms, prefetch, acks; a task per request"
        };
        out.extend(rows(&case, &combined(&bus), &combined(&raw), note));
    }
    out
}

/// Round trips before an AMQP measurement: enough for every caller to have made a few.
fn amqp_warmup(window: usize) -> u64 {
    (10 * window as u64).max(200)
}

fn bus_amqp(url: &str, window: usize, n: u64) -> Trips {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        scope.bus_endpoint(ENDPOINT);
        let bus = Bus::builder()
            .without_discovery()
            .transport(bus_transport(&scope, "bench-bus-rpc").await)
            .handler(ENDPOINT, pong)
            .endpoint(ENDPOINT, move |e| {
                e.prefetch(usize::from(PREFETCH)).concurrency(window)
            })
            .host([ENDPOINT])
            .start()
            .await
            .expect("bus starts");
        let trips = warmed(
            "bus AMQP requests",
            amqp_warmup(window),
            n,
            window,
            bus_call(&bus),
        )
        .await;
        // The reply queue is exclusive to the bus's connection: it goes when the bus does.
        bus.shutdown().await;
        scope.cleanup().await;
        trips
    })
}

/// Callers waiting for their answer on the raw side, by correlation id.
type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>>;

fn raw_amqp(url: &str, window: usize, n: u64) -> Trips {
    runtime().block_on(async {
        let mut scope = Scope::new(url);
        // Its channel publishes the requests with confirms and consumes the direct replies:
        // RabbitMQ delivers a direct reply only to the channel that sent the request.
        let (conn, client) = raw_connection(url).await;
        let queue = scope.raw_queue("rpc");
        raw_queue(&client, &queue).await;

        let server_ch = conn.create_channel().await.expect("channel");
        server_ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms on");
        server_ch
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut requests = server_ch
            .basic_consume(
                queue.as_str().into(),
                "bench-raw-rpc".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume requests");
        let answer = answer();
        let server = tokio::spawn(async move {
            while let Some(Ok(d)) = requests.next().await {
                if window == 1 {
                    raw_answer(&server_ch, d, &answer).await;
                } else {
                    let (ch, answer) = (server_ch.clone(), answer.clone());
                    tokio::spawn(async move { raw_answer(&ch, d, &answer).await });
                }
            }
        });

        let waiting: Waiting = Arc::default();
        let mut replies = client
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "bench-raw-replies".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume direct replies");
        let reader = {
            let waiting = waiting.clone();
            tokio::spawn(async move {
                while let Some(Ok(d)) = replies.next().await {
                    let id = d
                        .properties
                        .correlation_id()
                        .as_ref()
                        .and_then(|c| c.as_str().parse::<u64>().ok());
                    let caller = id.and_then(|id| waiting.lock().unwrap().remove(&id));
                    if let Some(caller) = caller {
                        let _ = caller.send(d.data);
                    }
                }
            })
        };

        let call = {
            let queue: Arc<str> = Arc::from(queue.as_str());
            move |n: u64| {
                let (client, queue, waiting) = (client.clone(), queue.clone(), waiting.clone());
                async move {
                    let (tx, rx) = oneshot::channel();
                    waiting.lock().unwrap().insert(n, tx);
                    let body = serde_json::to_vec(&Ping { n }).expect("request encodes");
                    let props = BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_reply_to(DIRECT_REPLY_TO.into())
                        .with_correlation_id(n.to_string().into());
                    let confirm = client
                        .basic_publish(
                            "".into(),
                            (*queue).into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            &body,
                            props,
                        )
                        .await
                        .unwrap_or_else(|e| panic!("raw request {n}: publish: {e}"));
                    let answered = async {
                        confirmed(confirm.await.map_err(|e| e.to_string())?)?;
                        rx.await.map_err(|_| "the reply reader stopped".to_string())
                    };
                    let data = tokio::time::timeout(REQUEST_LIMIT, answered)
                        .await
                        .unwrap_or_else(|_| {
                            panic!("raw request {n}: no answer in {REQUEST_LIMIT:?}")
                        })
                        .unwrap_or_else(|e| panic!("raw request {n}: {e}"));
                    let pong: Pong = serde_json::from_slice(&data).expect("reply decodes");
                    assert_eq!(pong.n, n, "raw request {n}: answered for another request");
                }
            }
        };
        let trips = warmed("raw AMQP requests", amqp_warmup(window), n, window, call).await;
        server.abort();
        reader.abort();
        let _ = conn.close(200, "bench done".into()).await;
        scope.cleanup().await;
        trips
    })
}

/// Answer one request as the bus's endpoint does: run the answering function, publish the
/// reply and wait for its confirm, then ack the request.
async fn raw_answer(ch: &Channel, d: Delivery, answer: &Answer) {
    let ping: Ping = serde_json::from_slice(&d.data).expect("request decodes");
    let pong = answer(ping).await;
    let body = serde_json::to_vec(&pong).expect("reply encodes");
    let (Some(reply_to), Some(correlation)) = (
        d.properties.reply_to().as_ref(),
        d.properties.correlation_id().as_ref(),
    ) else {
        panic!("a raw request without reply-to or correlation id");
    };
    // Not persistent: nothing of a direct reply is written to disk, as with the bus's
    // non-durable reply queue.
    let props = BasicProperties::default()
        .with_delivery_mode(1)
        .with_content_type("application/json".into())
        .with_correlation_id(correlation.clone());
    let confirm = ch
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
        .expect("publish a raw reply");
    confirmed(confirm.await.expect("raw reply confirm")).expect("raw reply confirmed");
    d.ack(BasicAckOptions::default())
        .await
        .expect("ack a raw request");
}
