//! In-memory cases: commands through the bus on the memory transport against a tokio `mpsc`
//! channel (from one producer task, through a bus with a no-op layer, and from several producer
//! tasks at once), events to three endpoints against a tokio `broadcast` channel. Both sides run
//! the same handler through the same kind of dynamic dispatch (a boxed future).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{Bus, HandlerError, Layer, LayerFuture, MessageContext, Next};
use bus_transport_memory::MemoryTransport;
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::probe::{
    handle, median, now_ns, progress, runtime, DynHandler, MemNoticed, MemWork, Sink,
};
use crate::report::Row;
use crate::Scale;

/// Queue bound on both sides (the memory transport's default).
const CAPACITY: usize = 10_000;
/// Longest a single measurement may take before the case is declared stuck.
const LIMIT: Duration = Duration::from_secs(120);

/// Throughput (msg/s) and latency (p50, p99 in µs) of one side.
struct Figures {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Who sends and who handles in a command case.
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// Tasks sending at once; a throughput run's messages are split between them.
    producers: usize,
    /// Handlers of the endpoint at once, and tasks draining the raw channel.
    handlers: usize,
    /// No-op layers around every handler attempt on the bus side (`BusBuilder::layer`).
    layers: usize,
    /// `BusBuilder::telemetry` on the bus side; its default when `None`.
    telemetry: Option<bool>,
}

impl Shape {
    /// One producer task, `handlers` handlers, no layer: the shape of case 1's main rows.
    fn one_producer(handlers: usize) -> Shape {
        Shape {
            producers: 1,
            handlers,
            layers: 0,
            telemetry: None,
        }
    }
}

/// A layer that only calls the rest of the pipeline, so that its row shows what a layer costs
/// by itself: the pipeline's layered path and one boxed future per attempt.
struct NoopLayer;

impl Layer for NoopLayer {
    fn call<'a>(&'a self, ctx: &'a MessageContext, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move { next.run(ctx).await })
    }
}

/// `1 handler`, `2 handlers`.
fn counted(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Case 1: commands from one producer task, with 1, 2 and 4 concurrent handlers; after the
/// 1-handler rows, the same through a bus with one no-op layer, against the same raw figures.
pub fn commands(scale: &Scale) -> Vec<Row> {
    let mut rows = Vec::new();
    for &concurrency in &scale.concurrencies {
        let case = format!("memory commands, {}", counted(concurrency, "handler"));
        let plain = Shape::one_producer(concurrency);
        let (bus, layered) = if concurrency == 1 && scale.layer_row {
            // Taken in turns with the plain bus, so that the difference between the two, the
            // cost of the layer, is not a change in the machine's load between them.
            progress(format!("{case}: bus, in turns with one no-op layer"));
            let layered = Shape { layers: 1, ..plain };
            let (bus, with_layer) = repeat_in_turns(
                scale,
                || bus_commands(scale, plain),
                || bus_commands(scale, layered),
            );
            (bus, Some(with_layer))
        } else {
            progress(format!("{case}: bus"));
            (repeat(scale, || bus_commands(scale, plain)), None)
        };
        progress(format!("{case}: raw mpsc"));
        let raw = repeat(scale, || raw_commands(scale, plain));
        rows.extend(figure_rows(
            &case,
            &bus,
            &raw,
            "tokio mpsc + boxed handler",
            concurrency,
        ));
        if let Some(layered) = layered {
            let case = "memory commands, 1 handler, 1 no-op layer";
            progress(format!(
                "{case}: {:+.0} ns per message against no layer",
                1e9 / layered.per_sec - 1e9 / bus.per_sec
            ));
            // The raw side does not change with the bus's layers: its figures are the ones
            // just measured, so this row and the one above share their denominator.
            rows.extend(figure_rows(
                case,
                &layered,
                &raw,
                "tokio mpsc + boxed handler, as 1 handler",
                1,
            ));
        }
    }
    rows
}

/// Case 1, several producers: P tasks sending commands at once into one endpoint with P
/// handlers, against a tokio `mpsc` channel of the same bound with P cloned senders drained by
/// P tasks. Throughput only: the one-producer rows measure latency with that many in flight.
pub fn producers(scale: &Scale) -> Vec<Row> {
    let mut rows = Vec::new();
    for &producers in &scale.producers {
        let shape = Shape {
            producers,
            handlers: producers,
            layers: 0,
            telemetry: None,
        };
        let case = format!(
            "memory commands, {}, {}",
            counted(producers, "producer"),
            counted(producers, "handler")
        );
        progress(format!("{case}: bus"));
        let bus = repeat(scale, || bus_commands(scale, shape));
        progress(format!("{case}: raw mpsc"));
        let raw = repeat(scale, || raw_commands(scale, shape));
        rows.push(
            Row::new(case, "throughput", "msg/s", bus.per_sec, raw.per_sec, true).note(format!(
                "tokio mpsc, {} + boxed handler",
                counted(producers, "sender")
            )),
        );
    }
    rows
}

/// Case 7 (memory part): one producer, one handler, the bus with its spans and metrics on
/// under an installed SDK against the same bus with them off, taken in turns.
#[cfg(feature = "telemetry")]
pub fn telemetry(scale: &Scale) -> Vec<Row> {
    crate::telemetry::install();
    let case = "memory commands, 1 handler, tracing and metrics on";
    progress(format!("{case}: in turns with them off"));
    let off = Shape {
        telemetry: Some(false),
        ..Shape::one_producer(1)
    };
    let on = Shape {
        telemetry: Some(true),
        ..off
    };
    let (on, off) = repeat_in_turns(
        scale,
        || bus_commands(scale, on),
        || bus_commands(scale, off),
    );
    vec![
        Row::new(case, "throughput", "msg/s", on.per_sec, off.per_sec, true)
            .note("the same bus with telemetry off; SDK: all spans sampled, batch processor"),
    ]
}

/// Case 2: one event to three endpoints.
pub fn events(scale: &Scale) -> Vec<Row> {
    let case = "memory events to 3 endpoints";
    progress(format!("{case}: bus"));
    let bus = repeat(scale, || bus_events(scale));
    progress(format!("{case}: raw broadcast"));
    let raw = repeat(scale, || raw_events(scale));
    figure_rows(case, &bus, &raw, "tokio broadcast, 3 receivers", 1)
}

fn figure_rows(case: &str, bus: &Figures, raw: &Figures, note: &str, window: usize) -> Vec<Row> {
    vec![
        Row::new(case, "throughput", "msg/s", bus.per_sec, raw.per_sec, true).note(note),
        Row::new(
            case,
            format!("latency p50, {window} in flight"),
            "µs",
            bus.p50_us,
            raw.p50_us,
            false,
        )
        .note(note),
        Row::new(
            case,
            format!("latency p99, {window} in flight"),
            "µs",
            bus.p99_us,
            raw.p99_us,
            false,
        )
        .note(note),
    ]
}

/// Run a measurement `scale.repeats` times; report the median of each figure.
fn repeat(scale: &Scale, mut run: impl FnMut() -> Figures) -> Figures {
    let runs: Vec<Figures> = (0..scale.repeats).map(|_| run()).collect();
    medians(&runs)
}

/// Like [`repeat`] for two measurements taken in turns (a, b, a, b, ...).
fn repeat_in_turns(
    scale: &Scale,
    mut a: impl FnMut() -> Figures,
    mut b: impl FnMut() -> Figures,
) -> (Figures, Figures) {
    let (mut runs_a, mut runs_b) = (Vec::new(), Vec::new());
    for _ in 0..scale.repeats {
        runs_a.push(a());
        runs_b.push(b());
    }
    (medians(&runs_a), medians(&runs_b))
}

/// The median of each figure over some runs.
fn medians(runs: &[Figures]) -> Figures {
    Figures {
        per_sec: median(runs.iter().map(|f| f.per_sec).collect()),
        p50_us: median(runs.iter().map(|f| f.p50_us).collect()),
        p99_us: median(runs.iter().map(|f| f.p99_us).collect()),
    }
}

/// Send `n` messages through `send` from `producers` tasks of the runtime (each with its own
/// clone of `send` and its own share of the sequence numbers); the rate at which the sink saw
/// them all.
async fn flood<F, Fut>(sink: &Arc<Sink>, n: u64, producers: usize, send: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    sink.arm(n, false, None);
    let started = Instant::now();
    let p = producers as u64;
    let tasks: Vec<_> = (0..p)
        .map(|i| {
            let send = send.clone();
            let (from, to) = (n * i / p, n * (i + 1) / p);
            tokio::spawn(async move {
                for seq in from..to {
                    send(seq).await;
                }
            })
        })
        .collect();
    for producer in tasks {
        producer.await.expect("producer task");
    }
    assert!(sink.wait(LIMIT).await, "throughput run stuck");
    n as f64 / started.elapsed().as_secs_f64()
}

/// Send `n` messages, at most `window` unhandled at a time (each stamped at send), and return
/// p50 and p99 of send-to-handler latency. `copies` is how many handlers see each message.
async fn paced<F, Fut>(sink: &Arc<Sink>, n: u64, window: usize, copies: u32, send: F) -> (f64, f64)
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let permits = Arc::new(Semaphore::new(window * copies as usize));
    sink.arm(n * u64::from(copies), true, Some(permits.clone()));
    let producer = tokio::spawn(async move {
        for seq in 0..n {
            permits
                .acquire_many(copies)
                .await
                .expect("window open")
                .forget();
            send(seq).await;
        }
    });
    producer.await.expect("producer task");
    assert!(sink.wait(LIMIT).await, "latency run stuck");
    sink.percentiles_us().unwrap_or((f64::NAN, f64::NAN))
}

/// Warm up, then throughput, then (with one producer) latency, sending with `send(stamp)`:
/// the same measurement for the bus and the raw side of the command cases.
async fn measure<S, F, Fut>(sink: &Arc<Sink>, scale: &Scale, shape: Shape, send: S) -> Figures
where
    S: Fn(bool) -> F,
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    flood(sink, scale.mem_warmup, shape.producers, send(false)).await;
    let per_sec = flood(sink, scale.mem_messages, shape.producers, send(false)).await;
    let (p50_us, p99_us) = if shape.producers == 1 {
        paced(
            sink,
            scale.mem_latency_messages,
            shape.handlers,
            1,
            send(true),
        )
        .await
    } else {
        // Several producers: throughput only (see `producers`).
        (f64::NAN, f64::NAN)
    };
    Figures {
        per_sec,
        p50_us,
        p99_us,
    }
}

fn bus_commands(scale: &Scale, shape: Shape) -> Figures {
    runtime().block_on(async {
        let sink = Sink::new();
        let s = sink.clone();
        let concurrency = shape.handlers;
        let mut builder = Bus::builder()
            .without_discovery()
            .transport(MemoryTransport::new().capacity(CAPACITY))
            .handler("bench-mem", move |m: MemWork| handle(s.clone(), m.sent_ns))
            .endpoint("bench-mem", move |e| e.concurrency(concurrency))
            .host(["bench-mem"]);
        for _ in 0..shape.layers {
            builder = builder.layer(NoopLayer);
        }
        if let Some(on) = shape.telemetry {
            builder = builder.telemetry(on);
        }
        let bus = builder.start().await.expect("bus starts");
        let send = |stamp: bool| {
            let bus = bus.clone();
            move |seq| {
                let bus = bus.clone();
                async move {
                    let sent_ns = if stamp { now_ns() } else { 0 };
                    bus.send(MemWork { seq, sent_ns }).await.expect("send");
                }
            }
        };
        let figures = measure(&sink, scale, shape, send).await;
        bus.shutdown().await;
        figures
    })
}

fn raw_commands(scale: &Scale, shape: Shape) -> Figures {
    runtime().block_on(async {
        let concurrency = shape.handlers;
        let sink = Sink::new();
        let s = sink.clone();
        let handler: DynHandler<MemWork> = Arc::new(move |m: MemWork| {
            Box::pin(handle(s.clone(), m.sent_ns)) as bus_core::BoxFuture<Result<(), HandlerError>>
        });
        let (tx, rx) = mpsc::channel::<MemWork>(CAPACITY);
        let mut workers = Vec::new();
        if concurrency == 1 {
            let mut rx = rx;
            let h = handler.clone();
            workers.push(tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    let _ = h(m).await;
                }
            }));
        } else {
            // N tasks draining one channel: the receiver is shared behind a lock.
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..concurrency {
                let rx = rx.clone();
                let h = handler.clone();
                workers.push(tokio::spawn(async move {
                    loop {
                        let next = rx.lock().await.recv().await;
                        match next {
                            Some(m) => {
                                let _ = h(m).await;
                            }
                            None => break,
                        }
                    }
                }));
            }
        }
        let send = |stamp: bool| {
            let tx = tx.clone();
            move |seq| {
                let tx = tx.clone();
                async move {
                    let sent_ns = if stamp { now_ns() } else { 0 };
                    tx.send(MemWork { seq, sent_ns }).await.expect("send");
                }
            }
        };
        let figures = measure(&sink, scale, shape, send).await;
        drop(tx);
        for w in workers {
            let _ = w.await;
        }
        figures
    })
}

const EVENT_ENDPOINTS: [&str; 3] = ["bench-ev-1", "bench-ev-2", "bench-ev-3"];

fn bus_events(scale: &Scale) -> Figures {
    runtime().block_on(async {
        let sink = Sink::new();
        let mut builder = Bus::builder()
            .without_discovery()
            .transport(MemoryTransport::new().capacity(CAPACITY))
            .host(EVENT_ENDPOINTS);
        for ep in EVENT_ENDPOINTS {
            let s = sink.clone();
            builder = builder
                .handler(ep, move |m: MemNoticed| handle(s.clone(), m.sent_ns))
                .endpoint(ep, |e| e.concurrency(1));
        }
        let bus = builder.start().await.expect("bus starts");
        let publish = |stamp: bool| {
            let bus = bus.clone();
            move |seq| {
                let bus = bus.clone();
                async move {
                    let sent_ns = if stamp { now_ns() } else { 0 };
                    bus.publish(MemNoticed { seq, sent_ns })
                        .await
                        .expect("publish");
                }
            }
        };
        flood3(&sink, scale.mem_warmup, publish(false)).await;
        let per_sec = flood3(&sink, scale.mem_messages / 3, publish(false)).await;
        let (p50_us, p99_us) =
            paced(&sink, scale.mem_latency_messages / 3, 1, 3, publish(true)).await;
        bus.shutdown().await;
        Figures {
            per_sec,
            p50_us,
            p99_us,
        }
    })
}

/// Like [`flood`], for events handled three times each; the figure is events published per
/// second (each delivered three times).
async fn flood3<F, Fut>(sink: &Arc<Sink>, n: u64, publish: F) -> f64
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    sink.arm(3 * n, false, None);
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        for seq in 0..n {
            publish(seq).await;
        }
    });
    producer.await.expect("producer task");
    assert!(sink.wait(LIMIT).await, "throughput run stuck");
    n as f64 / started.elapsed().as_secs_f64()
}

fn raw_events(scale: &Scale) -> Figures {
    runtime().block_on(async {
        let sink = Sink::new();
        let s = sink.clone();
        let handler: DynHandler<MemNoticed> = Arc::new(move |m: MemNoticed| {
            Box::pin(handle(s.clone(), m.sent_ns)) as bus_core::BoxFuture<Result<(), HandlerError>>
        });
        let (tx, _) = broadcast::channel::<MemNoticed>(CAPACITY);
        let mut workers = Vec::new();
        for _ in 0..3 {
            let mut rx = tx.subscribe();
            let h = handler.clone();
            workers.push(tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(m) => {
                            let _ = h(m).await;
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            panic!(
                                "broadcast receiver lagged by {n}: the producer outran the bound"
                            )
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            }));
        }
        let publish = |stamp: bool| {
            let tx = tx.clone();
            move |seq| {
                let tx = tx.clone();
                async move {
                    // broadcast never blocks a sender; wait for room as the bus's bounded
                    // queues make it, so both sides hold at most CAPACITY messages.
                    while tx.len() >= CAPACITY {
                        tokio::task::yield_now().await;
                    }
                    let sent_ns = if stamp { now_ns() } else { 0 };
                    tx.send(MemNoticed { seq, sent_ns })
                        .expect("receivers alive");
                }
            }
        };
        flood3(&sink, scale.mem_warmup, publish(false)).await;
        let per_sec = flood3(&sink, scale.mem_messages / 3, publish(false)).await;
        let (p50_us, p99_us) =
            paced(&sink, scale.mem_latency_messages / 3, 1, 3, publish(true)).await;
        drop(tx);
        for w in workers {
            let _ = w.await;
        }
        Figures {
            per_sec,
            p50_us,
            p99_us,
        }
    })
}
