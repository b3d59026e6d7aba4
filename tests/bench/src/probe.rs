//! What every case shares: the messages, the handler both sides run, and the sink that handler
//! reports to (a count, and a latency histogram when a case measures latency).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bus_core::{BoxFuture, Command, Event, HandlerError};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

/// A small command for the in-memory cases.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "bench.MemWork", endpoint = "bench-mem")]
pub struct MemWork {
    /// Position in the run.
    pub seq: u64,
    /// [`now_ns`] when it was sent.
    pub sent_ns: u64,
}

/// A small event for the in-memory fan-out case.
#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "bench.MemNoticed")]
pub struct MemNoticed {
    /// Position in the run.
    pub seq: u64,
    /// [`now_ns`] when it was published.
    pub sent_ns: u64,
}

/// A command for the AMQP cases; `payload` sets the body size.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "bench.AmqpWork", endpoint = "bench-amqp")]
pub struct AmqpWork {
    /// Position in the run.
    pub seq: u64,
    /// [`now_ns`] when it was sent.
    pub sent_ns: u64,
    /// Filler.
    pub payload: String,
}

/// A command for the NATS and Redis cases; `payload` sets the body size.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "bench.StreamWork", endpoint = "bench-stream")]
pub struct StreamWork {
    /// Position in the run.
    pub seq: u64,
    /// [`now_ns`] when it was sent.
    pub sent_ns: u64,
    /// Filler.
    pub payload: String,
}

/// An event for the AMQP fan-out case.
#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "bench.AmqpNoticed")]
pub struct AmqpNoticed {
    /// Position in the run.
    pub seq: u64,
    /// [`now_ns`] when it was published.
    pub sent_ns: u64,
    /// Filler.
    pub payload: String,
}

/// `n` bytes of printable filler.
pub fn filler(n: usize) -> String {
    "abcdefghijklmnopqrstuvwxyz0123456789"
        .chars()
        .cycle()
        .take(n)
        .collect()
}

/// Nanoseconds since the first call in this process: the clock both ends of a message read.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The raw side's handler: called through dynamic dispatch with a boxed future, as the bus
/// calls its handlers.
pub type DynHandler<M> = Arc<dyn Fn(M) -> BoxFuture<Result<(), HandlerError>> + Send + Sync>;

/// The handler both sides run: report the message to the sink.
pub async fn handle(sink: Arc<Sink>, sent_ns: u64) -> Result<(), HandlerError> {
    sink.record(sent_ns);
    Ok(())
}

/// Counts handled messages, records latencies when asked, and wakes the waiting case once the
/// expected number arrived.
pub struct Sink {
    handled: AtomicU64,
    target: AtomicU64,
    done: Notify,
    latency: Mutex<Option<Histogram<u64>>>,
    window: Mutex<Option<Arc<Semaphore>>>,
}

impl Sink {
    /// A sink that only counts.
    pub fn new() -> Arc<Sink> {
        Arc::new(Sink {
            handled: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
            latency: Mutex::new(None),
            window: Mutex::new(None),
        })
    }

    /// Start a measurement: expect `target` handled messages; record latencies if `latency`;
    /// give a permit back to `window` per handled message if set.
    pub fn arm(&self, target: u64, latency: bool, window: Option<Arc<Semaphore>>) {
        *self.latency.lock().unwrap() = latency
            .then(|| Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds"));
        *self.window.lock().unwrap() = window;
        self.handled.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
    }

    /// One handled message, sent at `sent_ns`.
    pub fn record(&self, sent_ns: u64) {
        if sent_ns != 0 {
            let elapsed = now_ns().saturating_sub(sent_ns).max(1);
            if let Some(h) = self.latency.lock().unwrap().as_mut() {
                h.saturating_record(elapsed);
            }
            if let Some(w) = self.window.lock().unwrap().as_ref() {
                w.add_permits(1);
            }
        }
        let n = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }

    /// Messages handled since the last [`Sink::arm`].
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Acquire)
    }

    /// Wait until the target is reached, at most `limit`. `false` on timeout.
    pub async fn wait(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.handled() >= self.target.load(Ordering::Acquire) {
                return true;
            }
            if tokio::time::timeout_at(deadline, self.done.notified())
                .await
                .is_err()
            {
                return self.handled() >= self.target.load(Ordering::Acquire);
            }
        }
    }

    /// p50 and p99 latency in microseconds, if latencies were recorded.
    pub fn percentiles_us(&self) -> Option<(f64, f64)> {
        percentiles_us(self.latency.lock().unwrap().as_ref()?)
    }

    /// The latencies recorded since the last [`Sink::arm`], if asked for.
    pub fn histogram(&self) -> Option<Histogram<u64>> {
        self.latency.lock().unwrap().clone()
    }
}

/// p50 and p99 of a histogram of nanoseconds, in microseconds; `None` if it is empty.
pub fn percentiles_us(h: &Histogram<u64>) -> Option<(f64, f64)> {
    if h.is_empty() {
        return None;
    }
    Some((
        h.value_at_quantile(0.50) as f64 / 1_000.0,
        h.value_at_quantile(0.99) as f64 / 1_000.0,
    ))
}

/// The histograms of several rounds as one.
pub fn merged(rounds: &[Histogram<u64>]) -> Option<Histogram<u64>> {
    let mut all = rounds.first()?.clone();
    for h in &rounds[1..] {
        all.add(h).expect("same bounds");
    }
    Some(all)
}

/// CPU time this process has used so far (user and system), in seconds. Read from
/// `/proc/self/stat` (clock ticks of 10 ms), so only meaningful over runs of a second or more.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// A fresh multi-threaded runtime, one per case, so no case inherits another's tasks.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The median of some figures (they are few; sorting is fine).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Progress for whoever watches the run (stderr, so `--json` output stays clean).
pub fn progress(text: impl AsRef<str>) {
    eprintln!("[bus-bench] {}", text.as_ref());
}

/// The bus side of the NATS and Redis cases: a bus on `transport` hosting `endpoint` with
/// `concurrency` handlers and `prefetch`, `n` messages of `body` bytes sent through it after
/// `warmup` ones; the bus is shut down after.
pub async fn stream_bus_run(
    transport: impl bus_core::Transport,
    endpoint: &'static str,
    (prefetch, concurrency): (usize, usize),
    (body, warmup, n): (usize, u64, u64),
    what: &str,
) -> crate::amqp::Run {
    let sink = Sink::new();
    let s = sink.clone();
    let bus = bus_core::Bus::builder()
        .without_discovery()
        .transport(transport)
        .handler(endpoint, move |m: StreamWork| handle(s.clone(), m.sent_ns))
        .endpoint(endpoint, move |e| {
            e.prefetch(prefetch).concurrency(concurrency)
        })
        .host([endpoint])
        .start()
        .await
        .expect("bus starts");
    let payload = crate::amqp::payload_of(body);
    let send = || {
        let bus = bus.clone();
        let payload = payload.clone();
        move |seq| {
            let bus = bus.clone();
            let payload = payload.clone();
            async move {
                bus.send(StreamWork {
                    seq,
                    sent_ns: 0,
                    payload: String::clone(&payload),
                })
                .await
                .map_err(|e| e.to_string())
            }
        }
    };
    let run = crate::amqp::warmed_run(&sink, warmup, n, what, send).await;
    bus.shutdown().await;
    run
}
