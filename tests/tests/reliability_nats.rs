//! Reliability on NATS JetStream (RELIABILITY.md part B): faults injected while messages flow,
//! each test checked by the tally (lost, phantom, duplicates) and printing one
//! `RELIABILITY ...` line.
//!
//! Every test runs against a `nats-server` of its own with JetStream on file storage (see
//! `bus_tests::nats_server`), so it can kill, freeze and restart the server without touching
//! the shared one; the process is killed and its store deleted when the test ends, also when
//! it fails. The tests run one at a time (a lock), as timing matters to them.
//! `BUS_RELIABILITY=full` runs the counts of RELIABILITY.md; by default the quick tier runs.
//!
//! - B13 connections dropped repeatedly (through a proxy) while commands flow; the consumer
//!   pulls again within [`RESUME_LIMIT`] of each cut.
//! - B14 the server killed (`kill -9`) and restarted mid-stream: JetStream recovers its file
//!   store, nothing it acknowledged is lost, and the consumer pulls again within
//!   [`RESUME_LIMIT`] of each restart.
//! - B15 the server down (killed, then frozen with `SIGSTOP`) while publishing: every publish
//!   returns `Ok` or a typed error within its timeout.
//! - B16 consumer process killed (`kill -9`) mid-stream and another started: JetStream hands
//!   the dead consumer's unacknowledged deliveries out again after the ack wait.
//!
//! A send that fails is tried again with the *same* message id (`SendOptions::message_id`),
//! as an application making its sends idempotent would: JetStream stores a repeated
//! `Nats-Msg-Id` once, so a failed attempt that did reach the server makes no duplicate. Any
//! duplicate counted comes from redelivery (an ack lost with a connection, a consumer killed
//! after handling) or from state the server lost in a `kill -9` (acked messages it restores,
//! a repeated publish it no longer remembers).

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::{Bus, BusError, SendOptions, TransportError};
use bus_tests::eventually;
use bus_tests::messages::Work;
use bus_tests::nats_server::NatsServer;
use bus_tests::proxy::Proxy;
use bus_tests::reliability::{report, tallied, Tally, Tier, BROKER_LOCK};
use bus_transport_nats::async_nats;
use bus_transport_nats::async_nats::jetstream::consumer::pull;
use bus_transport_nats::{Naming, NatsConfig, NatsTransport};

/// Subject prefix of every test (each test has a server of its own); streams carry it in
/// upper case, as the worker process names them.
const PREFIX: &str = "rel";

/// How long JetStream waits for the ack of a delivery (lost with a connection, or its
/// consumer dead) before handing it out again. Short, so the tests end soon.
const ACK_WAIT: Duration = Duration::from_secs(3);

/// How soon the consumer must pull again once the server is back (its reconnect backoff
/// is at most 2 s).
const RESUME_LIMIT: Duration = Duration::from_secs(5);

/// Prefetch of the consuming bus in B13 to B15.
const PREFETCH: usize = 200;

fn naming() -> Naming {
    Naming {
        subject_prefix: PREFIX.into(),
        stream_prefix: PREFIX.to_uppercase(),
        ..Naming::default()
    }
}

/// Settings for the test's server at `url` (possibly a proxy in front of it); every send is
/// limited to `publish_timeout`. The pull wait stays at its default (5 s), so a pull the
/// server forgot would show as a stall of that order.
fn config(url: &str, name: &str, publish_timeout: Duration) -> NatsConfig {
    NatsConfig::new(url)
        .connection_name(name)
        .naming(naming())
        .ack_wait(ACK_WAIT)
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2).min(publish_timeout / 2))
        .publish_timeout(publish_timeout)
}

/// A bus hosting `endpoint` with the tallying handler.
async fn consumer(url: &str, endpoint: &str, tally: &Tally) -> Bus {
    let transport = NatsTransport::connect(config(
        url,
        &format!("{endpoint}-consumer"),
        Duration::from_secs(5),
    ))
    .await
    .expect("connect the consumer");
    Bus::builder()
        .transport(transport)
        .without_discovery()
        .handler(endpoint.to_string(), tallied)
        .route::<Work>(endpoint)
        .state(tally.clone())
        .endpoint(endpoint, |e| e.concurrency(32).prefetch(PREFETCH))
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("start the consumer")
}

/// A send-only bus routing `Work` to `endpoint`, each send limited to `timeout`.
async fn producer(url: &str, endpoint: &str, timeout: Duration) -> Bus {
    let transport = NatsTransport::connect(config(url, "producer", timeout))
        .await
        .expect("connect the producer");
    Bus::builder()
        .transport(transport)
        .without_discovery()
        .route::<Work>(endpoint)
        .build()
        .await
        .expect("build the producer")
}

/// The message id of `Work` number `n` in a run: the same on every try.
fn message_id(run: &str, n: u64) -> String {
    format!("{run}-{n}")
}

/// Send `Work` number `n` with its message id.
async fn send(bus: &Bus, run: &str, n: u64) -> Result<(), BusError> {
    bus.send_with(
        Work { n, fail_first: 0 },
        SendOptions::new().message_id(message_id(run, n)),
    )
    .await
}

/// What producing went through.
#[derive(Debug, Default)]
struct Produced {
    /// The slowest single send attempt.
    slowest: Duration,
    /// Send attempts that failed (and were tried again).
    failed: u64,
    /// Messages given up on (never confirmed).
    abandoned: u64,
    /// Failures that were not typed transport errors.
    untyped: Vec<String>,
}

/// Send `0..n` from `tasks` concurrent senders. A failed send is tried again after a pause,
/// with the same message id, until it is confirmed or `give_up` passed since its first try.
/// Only `Ok` counts as confirmed.
async fn produce(bus: &Bus, tally: &Tally, n: u64, tasks: u64, give_up: Duration) -> Produced {
    let run = bus_tests::broker::unique("run");
    let slowest = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let abandoned = Arc::new(AtomicU64::new(0));
    let untyped = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (bus, tally, run) = (bus.clone(), tally.clone(), run.clone());
        let (slowest, failed, abandoned, untyped) = (
            slowest.clone(),
            failed.clone(),
            abandoned.clone(),
            untyped.clone(),
        );
        handles.push(tokio::spawn(async move {
            for i in (t..n).step_by(tasks as usize) {
                tally.sent(i);
                let first = Instant::now();
                loop {
                    let started = Instant::now();
                    let result = send(&bus, &run, i).await;
                    slowest.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    match result {
                        Ok(()) => {
                            tally.confirmed(i);
                            break;
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if !matches!(e, BusError::Transport(_)) {
                                untyped.lock().unwrap().push(format!("send {i}: {e}"));
                            }
                            if first.elapsed() > give_up {
                                eprintln!("send {i} failed, not tried again: {e}");
                                abandoned.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let untyped = std::mem::take(&mut *untyped.lock().unwrap());
    Produced {
        slowest: Duration::from_millis(slowest.load(Ordering::Relaxed)),
        failed: failed.load(Ordering::Relaxed),
        abandoned: abandoned.load(Ordering::Relaxed),
        untyped,
    }
}

/// Log to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=bus_transport_nats=debug`).
fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Run `body`, failing the test if it takes longer than `limit` (a hang is a failure).
async fn within<F: Future>(test: &str, limit: Duration, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("{test}: no result within {limit:?}"),
    }
}

/// A plain JetStream client of the test's server, reconnecting every 100 ms while it is down.
async fn raw(url: &str) -> async_nats::jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(2)))
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url)
        .await
        .expect("plain NATS connection");
    async_nats::jetstream::new(client)
}

/// What the server says about an endpoint's input.
#[derive(Clone, Copy, Debug)]
struct Input {
    /// Deliveries the consumer made so far (redeliveries included).
    deliveries: u64,
    /// Messages the consumer has not delivered yet.
    undelivered: u64,
    /// Deliveries not acked yet.
    unacked: usize,
    /// Messages stored in the stream.
    stored: u64,
}

impl Input {
    /// Nothing more to deliver, nothing waiting for an ack: every duplicate has shown.
    fn settled(&self) -> bool {
        self.undelivered == 0 && self.unacked == 0
    }
}

/// The endpoint's consumer and stream figures; `None` when the server does not answer.
async fn input(js: &async_nats::jetstream::Context, endpoint: &str) -> Option<Input> {
    let read = async {
        let stream = js
            .get_stream(naming().endpoint_stream(endpoint))
            .await
            .ok()?;
        let stored = stream.cached_info().state.messages;
        let mut consumer = stream
            .get_consumer::<pull::Config>(&naming().consumer)
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        Some(Input {
            deliveries: info.delivered.consumer_sequence,
            undelivered: info.num_pending,
            unacked: info.num_ack_pending,
            stored,
        })
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .ok()
        .flatten()
}

/// Wait until the endpoint's input is settled (so every duplicate has shown); the last
/// figures read.
async fn settled(
    js: &async_nats::jetstream::Context,
    endpoint: &str,
    limit: Duration,
) -> Option<Input> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        last = input(js, endpoint).await.or(last);
        if last.is_some_and(|i| i.settled()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// How long after now the endpoint's consumer delivers again (to a pull of the bus, so
/// consuming resumed), or has nothing left to deliver; `None` if neither within `limit`.
async fn resumed(
    js: &async_nats::jetstream::Context,
    endpoint: &str,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut first: Option<u64> = None;
    while started.elapsed() < limit {
        if let Some(now) = input(js, endpoint).await {
            match first {
                None => first = Some(now.deliveries),
                Some(_) if now.settled() => return Some(started.elapsed()),
                Some(at) if now.deliveries > at => return Some(started.elapsed()),
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Wait until every confirmed message is handled, polling every 20 ms.
async fn all_handled(tally: &Tally, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if tally.all_confirmed_handled() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tally.all_confirmed_handled()
}

/// Wait until at least `at` sends were confirmed.
async fn confirmed_reach(tally: &Tally, at: usize) {
    while tally.summary().confirmed < at {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- B. faults -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b13_connections_dropped_repeatedly_mid_stream() {
    let test = "B13 connections dropped repeatedly (nats)";
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(server) = NatsServer::start(test).await else {
        return;
    };
    let tier = Tier::current();
    let limit = tier.pick(Duration::from_secs(240), Duration::from_secs(1200));
    within(test, limit, async {
        let (n, cuts) = (tier.pick(5_000u64, 100_000), tier.pick(2u64, 5));
        let proxy = Proxy::start(server.addr()).await.expect("start the proxy");
        let url = format!("nats://{}", proxy.addr());
        let tally = Tally::new();
        let c = consumer(&url, "b13", &tally).await;
        let send_timeout = Duration::from_secs(5);
        let p = producer(&url, "b13", send_timeout).await;
        // Straight to the server, not through the proxy.
        let js = raw(&server.url()).await;
        let faults = async {
            let mut dropped = 0;
            let mut resumes = Vec::new();
            for k in 1..=cuts {
                confirmed_reach(&tally, (k * n / (cuts + 1)) as usize).await;
                dropped += proxy.drop_connections();
                let after = resumed(&js, "b13", Duration::from_secs(30)).await;
                println!(
                    "{test}: cut {k}: {dropped} connections dropped so far; \
                     consuming again after {after:?}"
                );
                resumes.push(after);
            }
            (dropped, resumes)
        };
        let (produced, (dropped, resumes)) =
            tokio::join!(produce(&p, &tally, n, 16, Duration::from_secs(60)), faults);
        let done = all_handled(
            &tally,
            tier.pick(Duration::from_secs(120), Duration::from_secs(600)),
        )
        .await;
        let left = settled(&js, "b13", Duration::from_secs(60)).await;
        let health = c.health();
        c.shutdown().await;
        let slowest_resume = resumes.iter().flatten().max().copied().unwrap_or_default();
        report(
            "B13 connections dropped repeatedly mid-stream",
            "nats",
            &format!(
                "{cuts} x all connections dropped ({dropped} in all), consuming again \
                 within {slowest_resume:.1?}; {} sends failed and were tried again with the \
                 same message id",
                produced.failed
            ),
            &tally.summary(),
            (n / 100) as usize,
        );
        assert!(done, "not every confirmed message handled in time");
        assert!(
            left.is_some_and(|i| i.settled()),
            "deliveries left unsettled: {left:?}"
        );
        assert!(
            resumes.iter().all(|r| r.is_some_and(|r| r <= RESUME_LIMIT)),
            "the consumer did not pull again within {RESUME_LIMIT:?} of a cut: {resumes:?}"
        );
        assert!(
            produced.untyped.is_empty(),
            "untyped errors: {:?}",
            produced.untyped
        );
        assert_eq!(produced.abandoned, 0, "the producer did not recover");
        // Each cut fails at most the sends in flight on the dropped connection (one per
        // sender), give or take one that meets the reconnect: the producer recovered at once.
        assert!(
            produced.failed <= 2 * 16 * cuts,
            "{} sends failed over {cuts} cuts",
            produced.failed
        );
        assert!(
            produced.slowest <= send_timeout + Duration::from_secs(1),
            "a send blocked {:?}, past its {send_timeout:?} timeout",
            produced.slowest
        );
        assert!(
            health.is_ready(),
            "the consumer reconnected by itself: {health:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b14_server_killed_and_restarted_mid_stream_with_file_storage() {
    let test = "B14 nats-server killed and restarted";
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(mut server) = NatsServer::start(test).await else {
        return;
    };
    let tier = Tier::current();
    let url = server.url();
    let limit = tier.pick(Duration::from_secs(240), Duration::from_secs(900));
    within(test, limit, async {
        let n = tier.pick(2_000u64, 20_000);
        let restarts = tier.pick(1u64, 2);
        let down = Duration::from_secs(2);
        let tally = Tally::new();
        let c = consumer(&url, "b14", &tally).await;
        let send_timeout = Duration::from_secs(5);
        let p = producer(&url, "b14", send_timeout).await;
        let js = raw(&url).await;
        let faults = async {
            let mut resumes = Vec::new();
            let mut restored_total = 0u64;
            for k in 1..=restarts {
                confirmed_reach(&tally, (k * n / (restarts + 1)) as usize).await;
                let at = tally.summary();
                server.kill();
                println!(
                    "{test}: nats-server killed with {} confirmed, {} handled",
                    at.confirmed, at.handled
                );
                tokio::time::sleep(down).await;
                let restarted = Instant::now();
                server.restart().await;
                println!(
                    "{test}: nats-server serving again after {:?}",
                    restarted.elapsed()
                );
                // What JetStream found in the input stream's files: the messages not yet
                // acked, plus any whose removal after their ack had not reached the disk.
                let log = std::fs::read_to_string(server.dir().join("nats.log"));
                let restored = log.unwrap_or_default().lines().rev().find_map(|l| {
                    let at = l.find("Restored ")?;
                    l.contains(&naming().endpoint_stream("b14"))
                        .then(|| l[at..].to_string())
                });
                restored_total += restored
                    .as_deref()
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .unwrap_or(0);
                let after = resumed(&js, "b14", Duration::from_secs(30)).await;
                println!(
                    "{test}: {}; consuming again {after:?} after the restart",
                    restored.unwrap_or_default()
                );
                resumes.push(after);
            }
            (resumes, restored_total)
        };
        let (produced, (resumes, restored_total)) =
            tokio::join!(produce(&p, &tally, n, 8, Duration::from_secs(60)), faults);
        let done = all_handled(
            &tally,
            tier.pick(Duration::from_secs(120), Duration::from_secs(300)),
        )
        .await;
        let left = settled(&js, "b14", Duration::from_secs(60)).await;
        if let Some(left) = left.filter(|i| i.stored > 0) {
            // Acked before a kill, their removal lost with it, and behind the consumer's
            // ack floor: JetStream does not deliver them again; they only take space.
            println!(
                "{test}: {} acked messages left in the work-queue stream after the restarts",
                left.stored
            );
        }
        // Duplicates are the at-least-once price of a kill: each kill can make the consumer
        // handle again what it held (up to its prefetch, handled while the server was gone,
        // the acks lost), and what JetStream 2.9 brings back from its files because the
        // removal of acked messages from the work-queue stream had not reached the disk
        // (they come back as first deliveries). How many of those there are is the server's
        // doing: its log says how many messages it restored. Bounded: the prefetch per kill,
        // plus 1 % or what the server restored, whichever is more.
        let max_duplicates = (restarts * PREFETCH as u64 + (n / 100).max(restored_total)) as usize;
        let health = c.health();
        c.shutdown().await;
        let slowest_resume = resumes.iter().flatten().max().copied().unwrap_or_default();
        report(
            "B14 NATS server killed (kill -9) and restarted mid-stream, JetStream file storage",
            "nats",
            &format!(
                "{restarts} x kill -9 of nats-server, down {down:?}, consuming again within \
                 {slowest_resume:.1?} of the restart; {} sends failed and were tried again \
                 with the same message id",
                produced.failed
            ),
            &tally.summary(),
            max_duplicates,
        );
        assert!(
            done,
            "not every confirmed message handled after the restart"
        );
        assert!(
            left.is_some_and(|i| i.settled()),
            "deliveries left unsettled: {left:?}"
        );
        assert!(
            resumes.iter().all(|r| r.is_some_and(|r| r <= RESUME_LIMIT)),
            "the consumer did not pull again within {RESUME_LIMIT:?} of a restart: {resumes:?}"
        );
        assert!(
            produced.untyped.is_empty(),
            "untyped errors: {:?}",
            produced.untyped
        );
        assert_eq!(produced.abandoned, 0, "the producer did not recover");
        assert!(
            produced.slowest <= send_timeout + Duration::from_secs(1),
            "a send blocked {:?}, past its {send_timeout:?} timeout",
            produced.slowest
        );
        assert!(
            health.is_ready(),
            "the consumer resumed by itself: {health:?}"
        );
    })
    .await;
}

/// What one send returned, and how long it took.
type Outcome = (Result<(), BusError>, Duration);

/// Send `ns` at once, each with the producer's timeout; returns each outcome and its time.
async fn burst(p: &Bus, tally: &Tally, run: &str, ns: std::ops::Range<u64>) -> Vec<Outcome> {
    let mut tasks = Vec::new();
    for n in ns {
        let (p, t, run) = (p.clone(), tally.clone(), run.to_string());
        tasks.push(tokio::spawn(async move {
            t.sent(n);
            let started = Instant::now();
            let r = send(&p, &run, n).await;
            if r.is_ok() {
                t.confirmed(n);
            }
            (r, started.elapsed())
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// Every outcome came within `limit`, and every failure is a connection error or a timeout.
fn check_outcomes(what: &str, outcomes: &[Outcome], limit: Duration) {
    for (r, took) in outcomes {
        assert!(*took <= limit, "{what}: a publish took {took:?}");
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    BusError::Transport(
                        TransportError::Connection(_) | TransportError::Timeout { .. }
                    )
                ),
                "{what}: not a typed connection error or timeout: {e}"
            );
        }
    }
}

/// Send `ns` one by one, each tried again (same message id) until confirmed (at most 20 s);
/// returns how many attempts failed.
async fn produce_range(p: &Bus, tally: &Tally, run: &str, ns: std::ops::Range<u64>) -> u64 {
    let mut failed = 0;
    for n in ns {
        tally.sent(n);
        let first = Instant::now();
        loop {
            match send(p, run, n).await {
                Ok(()) => {
                    tally.confirmed(n);
                    break;
                }
                Err(e) => {
                    failed += 1;
                    assert!(
                        first.elapsed() < Duration::from_secs(20),
                        "publishing did not recover: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b15_server_down_while_publishing() {
    let test = "B15 nats-server down while publishing";
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(mut server) = NatsServer::start(test).await else {
        return;
    };
    let url = server.url();
    within(test, Duration::from_secs(180), async {
        let run = bus_tests::broker::unique("run");
        let tally = Tally::new();
        let c = consumer(&url, "b15", &tally).await;
        let timeout = Duration::from_secs(2);
        let limit = timeout + Duration::from_secs(1);
        let p = producer(&url, "b15", timeout).await;
        let before = burst(&p, &tally, &run, 0..10).await;
        assert!(before.iter().all(|(r, _)| r.is_ok()), "{before:?}");
        // Settled before the fault, so this test counts only what the fault does.
        assert!(all_handled(&tally, Duration::from_secs(10)).await);
        let js = raw(&url).await;
        let left = settled(&js, "b15", Duration::from_secs(10)).await;
        assert!(left.is_some_and(|i| i.settled()), "{left:?}");

        // Killed: connections are refused.
        server.kill();
        let killed = burst(&p, &tally, &run, 10..30).await;
        check_outcomes("nats-server killed", &killed, limit);
        server.restart().await;

        // Frozen: connections are accepted (by the kernel) but nothing is answered.
        server.freeze();
        let frozen = burst(&p, &tally, &run, 30..50).await;
        server.thaw();
        check_outcomes("nats-server frozen", &frozen, limit);

        // Publishing works again by itself.
        let after = produce_range(&p, &tally, &run, 50..60).await;
        let done = all_handled(&tally, Duration::from_secs(60)).await;
        let left = settled(&js, "b15", Duration::from_secs(30)).await;
        c.shutdown().await;
        let refused = |o: &[Outcome]| o.iter().filter(|(r, _)| r.is_err()).count();
        let slowest = killed
            .iter()
            .chain(&frozen)
            .map(|(_, took)| *took)
            .max()
            .unwrap_or_default();
        let summary = tally.summary();
        report(
            "B15 NATS server down while publishing (killed, then frozen)",
            "nats",
            &format!(
                "kill -9: {} of 20 publishes failed, SIGSTOP: {} of 20 failed, \
                 slowest {slowest:?} (timeout {timeout:?}); {after} failed after; \
                 {} failed ones handled all the same (the client sent what it held once \
                 the server was back)",
                refused(&killed),
                refused(&frozen),
                summary.handled.saturating_sub(summary.confirmed)
            ),
            &summary,
            0,
        );
        assert!(done, "not every confirmed message handled");
        assert!(
            left.is_some_and(|i| i.settled()),
            "deliveries left unsettled: {left:?}"
        );
    })
    .await;
}

/// A worker process, killed when dropped (also when the test fails).
struct Worker(std::process::Child);

impl Worker {
    fn spawn(url: &str, dir: &Path, i: u32) -> Worker {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_bus-test-worker"))
            .env("WORKER_NATS_URL", url)
            .env("WORKER_PREFIX", PREFIX)
            .env("WORKER_ENDPOINT", "b16")
            .env("WORKER_DELAY_MS", "2")
            .env("WORKER_ACK_WAIT_MS", "2000")
            .env("WORKER_OUT", dir.join(format!("w{i}.txt")))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn worker");
        Worker(child)
    }

    /// The exit status, once it ended.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// `kill -9`, and reap it.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// `SIGTERM` (graceful shutdown), and wait for it.
    fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The numbers a worker wrote, one per handling.
fn worker_lines(dir: &Path, i: u32) -> Vec<u64> {
    std::fs::read_to_string(dir.join(format!("w{i}.txt")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').next().and_then(|v| v.parse().ok()))
        .collect()
}

/// The numbers both workers wrote.
fn handled_lines(dir: &Path) -> Vec<u64> {
    let mut all = worker_lines(dir, 0);
    all.extend(worker_lines(dir, 1));
    all
}

/// Whether the endpoint's durable consumer exists (the worker declared its endpoint).
async fn consumer_declared(js: &async_nats::jetstream::Context, endpoint: &str) -> bool {
    let Ok(stream) = js
        .get_stream_no_info(naming().endpoint_stream(endpoint))
        .await
    else {
        return false;
    };
    stream
        .get_consumer::<pull::Config>(&naming().consumer)
        .await
        .is_ok()
}

/// The `Work` numbers of the messages delivered by the endpoint's consumer and not acked:
/// in a work-queue stream, the messages still stored between the consumer's ack floor and
/// its last delivered sequence.
async fn pending_work(js: &async_nats::jetstream::Context, endpoint: &str) -> Vec<u64> {
    let stream = js
        .get_stream_no_info(naming().endpoint_stream(endpoint))
        .await
        .expect("the endpoint stream");
    let mut consumer = stream
        .get_consumer::<pull::Config>(&naming().consumer)
        .await
        .expect("the endpoint consumer");
    let info = consumer.info().await.expect("consumer info").clone();
    let mut out = Vec::new();
    for seq in info.ack_floor.stream_sequence + 1..=info.delivered.stream_sequence {
        if let Ok(message) = stream.get_raw_message(seq).await {
            let work: Work = serde_json::from_slice(&message.payload).expect("a Work body");
            out.push(work.n);
        }
    }
    assert!(
        out.len() >= info.num_ack_pending,
        "{} pending by the consumer's count, {} found",
        info.num_ack_pending,
        out.len()
    );
    out
}

/// Removes a directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b16_consumer_process_killed_and_restarted() {
    let test = "B16 consumer killed (nats)";
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(server) = NatsServer::start(test).await else {
        return;
    };
    let tier = Tier::current();
    let url = server.url();
    let limit = tier.pick(Duration::from_secs(240), Duration::from_secs(900));
    within(test, limit, async {
        let n = tier.pick(2_000u64, 20_000);
        let prefetch = 50;
        let dir = TempDir(std::env::temp_dir().join(bus_tests::broker::unique("bus-kill")));
        std::fs::create_dir_all(&dir.0).unwrap();
        let mut first = Worker::spawn(&url, &dir.0, 0);
        // Wait until the worker declared its endpoint (and so created the consumer with its
        // short ack wait), then produce.
        let js = raw(&url).await;
        let started = Instant::now();
        while !consumer_declared(&js, "b16").await {
            if let Some(status) = first.exited() {
                panic!("the worker ended before declaring its endpoint: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the worker did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tally = Tally::new();
        let p = producer(&url, "b16", Duration::from_secs(10)).await;
        let kill = async {
            let started = Instant::now();
            while (handled_lines(&dir.0).len() as u64) < n / 3 {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the first worker stalled"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            first.kill();
            let handled = handled_lines(&dir.0).len();
            let pending = pending_work(&js, "b16").await;
            println!(
                "{test}: worker killed (kill -9) after {handled} handlings, \
                 {} deliveries pending on it",
                pending.len()
            );
            let second = Worker::spawn(&url, &dir.0, 1);
            (second, Instant::now(), pending)
        };
        let (produced, (mut second, killed_at, pending)) =
            tokio::join!(produce(&p, &tally, n, 8, Duration::from_secs(30)), kill);
        let done = eventually(
            tier.pick(Duration::from_secs(120), Duration::from_secs(300)),
            || {
                let seen: HashSet<u64> = handled_lines(&dir.0).into_iter().collect();
                seen.len() as u64 >= n
            },
        )
        .await;
        println!(
            "{test}: all handled {:?} after the kill",
            killed_at.elapsed()
        );
        let left = settled(&js, "b16", Duration::from_secs(30)).await;
        second.terminate();
        let by_second: HashSet<u64> = worker_lines(&dir.0, 1).into_iter().collect();
        let not_taken_over: Vec<u64> = pending
            .iter()
            .copied()
            .filter(|n| !by_second.contains(n))
            .collect();
        // Redelivered: what the next worker handled of what was pending on the dead one.
        for (i, lines) in [worker_lines(&dir.0, 0), worker_lines(&dir.0, 1)]
            .into_iter()
            .enumerate()
        {
            for n in lines {
                tally.delivered(n, i == 1 && pending.contains(&n), 1);
                tally.handled(n);
            }
        }
        let summary = tally.summary();
        report(
            "B16 consumer process killed (kill -9) and restarted",
            "nats",
            &format!(
                "kill -9 of the consumer process with {} deliveries pending on it, \
                 all handed to the next one after the 2 s ack wait",
                pending.len()
            ),
            &summary,
            prefetch,
        );
        assert!(done, "not every message handled after the restart");
        assert!(
            not_taken_over.is_empty(),
            "pending on the dead worker, not handled by the next: {not_taken_over:?}"
        );
        assert!(
            left.is_some_and(|i| i.settled() && i.stored == 0),
            "deliveries left unsettled (the dead consumer's?): {left:?}"
        );
        assert_eq!(produced.failed, 0, "sends failed: {produced:?}");
        let _ = js.client().drain().await;
    })
    .await;
}
