//! `bus-bench`: the bus against the raw library beneath it, on the same work, in the same run,
//! with fixed inputs. Prints one row per figure (bus, raw, bus/raw) and the machine facts.
//!
//! ```text
//! cargo run -p bus-bench --release -- --quick      # about a minute
//! cargo run -p bus-bench --release                 # the full run
//! cargo run -p bus-bench --release -- --json       # one JSON object per line
//! cargo run -p bus-bench --release -- --only memory-producers --producers 8   # 8 senders, 8 handlers
//! cargo run -p bus-bench --release --no-default-features   # on the system allocator
//! ```
//!
//! Where things live: `memory` (in-memory commands and events against tokio channels), `amqp`
//! (RabbitMQ against raw lapin), `requests` (request/response in memory against tokio `mpsc`
//! and `oneshot`, and on RabbitMQ against raw lapin with direct reply-to), `jetstream` (NATS
//! JetStream against raw async-nats), `streams` (Redis Streams against the raw `redis` crate),
//! `outbox` (a handler's sends and units of work through the PostgreSQL outbox on RabbitMQ,
//! against the same bus without storage), `rss` (memory held by queued messages, measured in
//! child processes), `probe` (messages, the shared handler, the sink and its histograms),
//! `machine` (facts printed with the table), `report` (table and JSON lines).

/// The allocator of both sides of every case (the `mimalloc` feature, on by default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod amqp;
mod jetstream;
mod machine;
mod memory;
mod outbox;
mod probe;
mod report;
mod requests;
mod rss;
mod streams;
#[cfg(feature = "telemetry")]
mod telemetry;

use std::time::{Duration, Instant};

use clap::Parser;

/// Benchmark the bus against tokio channels, raw lapin, async-nats and redis on the same work.
#[derive(Parser, Debug)]
#[command(name = "bus-bench", version)]
struct Args {
    /// Smaller counts and shorter latency runs (about a minute in all).
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per line (machine facts first, then one per figure).
    #[arg(long)]
    json: bool,
    /// Run only the cases whose group name contains this text: `memory-commands`,
    /// `memory-producers`, `memory-events`, `memory-requests`, `amqp-e2e`, `amqp-publish`,
    /// `amqp-sizes`, `amqp-requests`, `amqp-outbox` (with PostgreSQL), `nats-e2e`, `redis-e2e`,
    /// `footprint`, and with `--features telemetry` `telemetry`.
    #[arg(long)]
    only: Option<String>,
    /// The broker of the AMQP cases.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Skip the AMQP cases (the outbox case too).
    #[arg(long)]
    no_amqp: bool,
    /// The PostgreSQL server of the outbox case (libpq-style, or a `postgresql://` URL).
    #[arg(
        long,
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    )]
    postgres: String,
    /// The server of the NATS JetStream case.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The server of the Redis Streams case.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Handler counts of the in-memory command case instead of 1, 2 and 4, e.g.
    /// `--handlers 1` (repeat it for several). The no-op layer row comes with 1.
    #[arg(long = "handlers", value_parser = at_least_one)]
    handlers: Vec<usize>,
    /// Producer counts of the in-memory multi-producer case (`memory-producers`) instead of
    /// 2, 4 and 8, each with as many handlers, e.g. `--producers 8` (repeat it for several).
    #[arg(long = "producers", value_parser = at_least_one)]
    producers: Vec<usize>,
    /// Internal: tiny counts and one handler only, to run under a profiler.
    #[arg(long, hide = true)]
    reduced: bool,
    /// Internal: measure one memory footprint in this process and print it as JSON.
    #[arg(long, hide = true)]
    rss_child: Option<String>,
}

/// A count of tasks for `--handlers` and `--producers`: a whole number from 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}` is not a whole number from 1 up")),
    }
}

/// How much work each case does; fixed per mode, so runs compare.
pub struct Scale {
    /// Handler counts of the in-memory command case.
    pub concurrencies: Vec<usize>,
    /// Whether the in-memory command case adds its row through a bus with one no-op layer
    /// (after its 1-handler rows).
    pub layer_row: bool,
    /// Producer counts of the in-memory multi-producer case, each with as many handlers.
    pub producers: Vec<usize>,
    /// Repetitions of each in-memory measurement (the median is reported).
    pub repeats: usize,
    /// Messages before an in-memory measurement starts.
    pub mem_warmup: u64,
    /// Messages of an in-memory throughput measurement.
    pub mem_messages: u64,
    /// Messages of an in-memory latency measurement.
    pub mem_latency_messages: u64,
    /// Round trips of an in-memory request/response measurement (after `mem_warmup` ones).
    pub mem_requests: u64,
    /// Messages of the AMQP end-to-end and publish-only throughput runs.
    pub amqp_messages: u64,
    /// Turns raw and bus take in the AMQP end-to-end case (the counts and the time are split).
    pub amqp_rounds: usize,
    /// Offered rate of the AMQP latency run, msg/s.
    pub amqp_rate: u64,
    /// Length of the AMQP latency run.
    pub amqp_latency: Duration,
    /// Events of the AMQP fan-out run.
    pub fanout_messages: u64,
    /// Commands of the AMQP batch-send run (sent one by one, then with one `send_all`).
    pub batch_messages: u64,
    /// Body sizes and message counts of the AMQP size runs.
    pub sizes: Vec<(usize, u64)>,
    /// Messages of the NATS and Redis end-to-end runs.
    pub stream_messages: u64,
    /// Round trips of the AMQP request/response run with 1 in flight (split over the rounds).
    pub amqp_requests: u64,
    /// Round trips of the AMQP request/response run with 64 in flight (split over the rounds).
    pub amqp_requests_wide: u64,
    /// Messages through both hops of the AMQP outbox run, per variant (split over the rounds).
    pub outbox_messages: u64,
    /// Units of work (and sends) timed in the AMQP outbox run, per variant (split over the
    /// rounds), offered at `amqp_rate`.
    pub outbox_commits: u64,
}

impl Scale {
    fn new(quick: bool, reduced: bool) -> Scale {
        if reduced {
            Scale {
                concurrencies: vec![1],
                // Nothing beyond the one-handler run, so a profile holds only that.
                layer_row: false,
                producers: Vec::new(),
                repeats: 1,
                mem_warmup: 2_000,
                mem_messages: 50_000,
                mem_latency_messages: 2_000,
                mem_requests: 5_000,
                amqp_messages: 2_000,
                amqp_rounds: 1,
                amqp_rate: 1_000,
                amqp_latency: Duration::from_secs(1),
                fanout_messages: 1_000,
                batch_messages: 1_000,
                sizes: vec![(1024, 500)],
                stream_messages: 1_000,
                amqp_requests: 200,
                amqp_requests_wide: 1_000,
                outbox_messages: 1_000,
                outbox_commits: 500,
            }
        } else if quick {
            Scale {
                concurrencies: vec![1, 2, 4],
                layer_row: true,
                producers: vec![2, 4, 8],
                repeats: 3,
                mem_warmup: 10_000,
                mem_messages: 300_000,
                mem_latency_messages: 20_000,
                mem_requests: 50_000,
                amqp_messages: 10_000,
                amqp_rounds: 2,
                amqp_rate: 1_000,
                amqp_latency: Duration::from_secs(3),
                fanout_messages: 5_000,
                batch_messages: 2_000,
                sizes: vec![(1024, 5_000), (16 * 1024, 2_000), (256 * 1024, 200)],
                stream_messages: 5_000,
                amqp_requests: 4_000,
                amqp_requests_wide: 20_000,
                outbox_messages: 6_000,
                outbox_commits: 3_000,
            }
        } else {
            Scale {
                concurrencies: vec![1, 2, 4],
                layer_row: true,
                producers: vec![2, 4, 8],
                repeats: 5,
                mem_warmup: 50_000,
                mem_messages: 2_000_000,
                mem_latency_messages: 100_000,
                mem_requests: 300_000,
                amqp_messages: 100_000,
                amqp_rounds: 2,
                amqp_rate: 1_000,
                amqp_latency: Duration::from_secs(10),
                fanout_messages: 30_000,
                batch_messages: 10_000,
                sizes: vec![(1024, 30_000), (16 * 1024, 10_000), (256 * 1024, 1_000)],
                stream_messages: 30_000,
                amqp_requests: 20_000,
                amqp_requests_wide: 100_000,
                outbox_messages: 40_000,
                outbox_commits: 20_000,
            }
        }
    }
}

/// Run a group of broker cases; if it fails (a send with no confirm in time, a dead client
/// connection, a run that stalls: each of these panics), say so and run the whole group once
/// more on fresh connections. A second failure ends the program with that panic.
fn once_more(group: &str, run: impl Fn() -> Vec<report::Row>) -> Vec<report::Row> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&run)) {
        Ok(rows) => rows,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            probe::progress(format!("{group} failed ({why}); running it once more"));
            run()
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Some(which) = &args.rss_child {
        rss::child(which);
        return;
    }
    if cfg!(debug_assertions) {
        probe::progress("warning: a debug build; figures mean little (use --release)");
    }
    let started = Instant::now();
    let machine = machine::Machine::probe(args.quick);
    let mut scale = Scale::new(args.quick, args.reduced);
    if !args.handlers.is_empty() {
        scale.concurrencies.clone_from(&args.handlers);
    }
    if !args.producers.is_empty() {
        scale.producers.clone_from(&args.producers);
    }
    let wanted = |group: &str| args.only.as_deref().is_none_or(|o| group.contains(o));

    let mut rows = Vec::new();
    if wanted("memory-commands") {
        rows.extend(memory::commands(&scale));
    }
    if wanted("memory-producers") {
        rows.extend(memory::producers(&scale));
    }
    if wanted("memory-events") {
        rows.extend(memory::events(&scale));
    }
    if wanted("memory-requests") {
        rows.extend(requests::memory(&scale));
    }
    let amqp_groups = [
        "amqp-e2e",
        "amqp-publish",
        "amqp-sizes",
        "amqp-requests",
        "amqp-outbox",
    ];
    if !args.no_amqp && amqp_groups.iter().any(|g| wanted(g)) {
        match amqp::reachable(&args.amqp_url) {
            Err(why) => probe::progress(format!(
                "skipping the AMQP cases: the broker is unreachable ({why})"
            )),
            Ok(()) => {
                if wanted("amqp-e2e") {
                    rows.extend(once_more("amqp-e2e", || {
                        amqp::end_to_end(&scale, &args.amqp_url)
                    }));
                }
                if wanted("amqp-publish") {
                    rows.extend(once_more("amqp-publish", || {
                        amqp::publish_and_fanout(&scale, &args.amqp_url)
                    }));
                }
                if wanted("amqp-sizes") {
                    rows.extend(once_more("amqp-sizes", || {
                        amqp::body_sizes(&scale, &args.amqp_url)
                    }));
                }
                if wanted("amqp-requests") {
                    rows.extend(once_more("amqp-requests", || {
                        requests::amqp(&scale, &args.amqp_url)
                    }));
                }
                if wanted("amqp-outbox") {
                    match outbox::reachable(&args.postgres) {
                        Err(why) => probe::progress(format!(
                            "skipping the outbox case: PostgreSQL is unreachable ({why})"
                        )),
                        Ok(()) => rows.extend(once_more("amqp-outbox", || {
                            outbox::amqp(&scale, &args.amqp_url, &args.postgres)
                        })),
                    }
                }
            }
        }
    }
    if wanted("nats-e2e") {
        match jetstream::reachable(&args.nats_url) {
            Err(why) => probe::progress(format!(
                "skipping the NATS case: the server is unreachable ({why})"
            )),
            Ok(()) => rows.extend(once_more("nats-e2e", || {
                jetstream::end_to_end(&scale, &args.nats_url)
            })),
        }
    }
    if wanted("redis-e2e") {
        match streams::reachable(&args.redis_url) {
            Err(why) => probe::progress(format!(
                "skipping the Redis case: the server is unreachable ({why})"
            )),
            Ok(()) => rows.extend(once_more("redis-e2e", || {
                streams::end_to_end(&scale, &args.redis_url)
            })),
        }
    }
    #[cfg(feature = "telemetry")]
    if args
        .only
        .as_deref()
        .is_some_and(|o| "telemetry".contains(o))
    {
        // Only when asked for: the SDK it installs stays for the rest of the process.
        rows.extend(memory::telemetry(&scale));
        if !args.no_amqp && amqp::reachable(&args.amqp_url).is_ok() {
            rows.extend(once_more("telemetry", || {
                amqp::telemetry(&scale, &args.amqp_url)
            }));
        }
    }
    if wanted("footprint") {
        rows.extend(rss::footprint());
    }
    probe::progress(format!("done in {:.1} s", started.elapsed().as_secs_f64()));
    if args.json {
        print!("{}", report::json_lines(&machine, &rows));
    } else {
        print!("{}", report::table(&machine, &rows));
    }
}
