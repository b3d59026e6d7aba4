//! Reliability on Redis Streams (RELIABILITY.md part B): faults injected while messages flow,
//! each test checked by the tally (lost, phantom, duplicates) and printing one
//! `RELIABILITY ...` line.
//!
//! Every test runs against a `redis-server` of its own (see `bus_tests::redis_server`), so it
//! can kill, freeze and restart Redis without touching the shared server; the process is
//! killed when the test ends, also when it fails. The tests run one at a time (a lock), as
//! timing matters to them. `BUS_RELIABILITY=full` runs the counts of RELIABILITY.md; by
//! default the quick tier runs.
//!
//! - B13 connections dropped repeatedly (through a proxy) while commands flow.
//! - B14 Redis killed (`kill -9`) and restarted mid-stream, with the append-only file fsynced
//!   on every write: nothing acknowledged is lost.
//! - B15 Redis down (killed, then frozen with `SIGSTOP`) while publishing: every publish
//!   returns `Ok` or a typed error within its timeout.
//! - B16 consumer process killed (`kill -9`) mid-stream and another started: it takes over
//!   the dead consumer's pending entries after the idle time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::{Bus, BusError, TransportError};
use bus_tests::eventually;
use bus_tests::messages::Work;
use bus_tests::proxy::Proxy;
use bus_tests::redis_server::{Persistence, RedisServer};
use bus_tests::reliability::{report, tallied, Tally, Tier, BROKER_LOCK};
use bus_transport_redis::{Keys, RedisConfig, RedisTransport};

/// Key prefix of every test (each test has a server of its own).
const PREFIX: &str = "rel";

/// How long a delivery left unsettled (its ack lost with a connection, or its consumer dead)
/// waits before another consumer takes it over. Short, so the tests end soon.
const RECLAIM_IDLE: Duration = Duration::from_secs(3);

/// Settings for the test's server at `url` (possibly a proxy in front of it).
fn config(url: &str, name: &str, operation_timeout: Duration) -> RedisConfig {
    RedisConfig::new(url)
        .key_prefix(PREFIX)
        .consumer_name(name)
        .block_timeout(Duration::from_millis(200))
        .claim_interval(Duration::from_millis(200))
        .reclaim_idle(RECLAIM_IDLE)
        .operation_timeout(operation_timeout)
        .connect_timeout(Duration::from_secs(2))
}

/// A bus hosting `endpoint` with the tallying handler.
async fn consumer(url: &str, endpoint: &str, tally: &Tally) -> Bus {
    let transport = RedisTransport::connect(config(
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
        .endpoint(endpoint, |e| e.concurrency(32).prefetch(200))
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("start the consumer")
}

/// A send-only bus routing `Work` to `endpoint`, each send limited to `timeout`.
async fn producer(url: &str, endpoint: &str, timeout: Duration) -> Bus {
    let transport = RedisTransport::connect(config(url, "producer", timeout))
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

/// Send `0..n` from `tasks` concurrent senders. A failed send is tried again after a pause
/// until it is confirmed or `give_up` passed since its first try; each attempt is a new
/// message (a new id), so a failed attempt that did reach Redis shows as a duplicate. Only
/// `Ok` counts as confirmed.
async fn produce(bus: &Bus, tally: &Tally, n: u64, tasks: u64, give_up: Duration) -> Produced {
    let slowest = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let abandoned = Arc::new(AtomicU64::new(0));
    let untyped = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (bus, tally) = (bus.clone(), tally.clone());
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
                    let result = bus
                        .send(Work {
                            n: i,
                            fail_first: 0,
                        })
                        .await;
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

/// Log to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=bus_transport_redis=debug`).
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

/// A plain connection to the test's server.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("raw Redis connection")
}

/// Entries left in the endpoint's stream: acked entries are deleted, so 0 means every
/// delivery was settled and nothing more will come.
async fn left_in_stream(url: &str, endpoint: &str) -> Option<usize> {
    let mut conn = tokio::time::timeout(Duration::from_secs(2), raw(url))
        .await
        .ok()?;
    redis::cmd("XLEN")
        .arg(Keys::new(PREFIX).stream(endpoint))
        .query_async(&mut conn)
        .await
        .ok()
}

/// Wait until the endpoint's stream is empty (so every duplicate has shown); whether it did.
async fn drained(url: &str, endpoint: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if left_in_stream(url, endpoint).await == Some(0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
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
    let test = "B13 connections dropped repeatedly (redis)";
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(server) = RedisServer::start(test, Persistence::Off).await else {
        return;
    };
    let tier = Tier::current();
    let limit = tier.pick(Duration::from_secs(240), Duration::from_secs(1200));
    within(test, limit, async {
        let (n, cuts) = (tier.pick(5_000u64, 100_000), tier.pick(2u64, 5));
        let proxy = Proxy::start(server.addr()).await.expect("start the proxy");
        let url = format!("redis://{}", proxy.addr());
        let tally = Tally::new();
        let c = consumer(&url, "b13", &tally).await;
        let send_timeout = Duration::from_secs(5);
        let p = producer(&url, "b13", send_timeout).await;
        let faults = async {
            let mut dropped = 0;
            for k in 1..=cuts {
                confirmed_reach(&tally, (k * n / (cuts + 1)) as usize).await;
                dropped += proxy.drop_connections();
                println!("{test}: cut {k}: {dropped} connections dropped so far");
            }
            dropped
        };
        // A failed send is not tried again here (it may have reached Redis, and a second
        // copy would count as a duplicate of the bus's making): it stays unconfirmed.
        let (produced, dropped) = tokio::join!(produce(&p, &tally, n, 16, Duration::ZERO), faults);
        let done = all_handled(
            &tally,
            tier.pick(Duration::from_secs(120), Duration::from_secs(600)),
        )
        .await;
        let empty = drained(&url, "b13", Duration::from_secs(60)).await;
        let health = c.health();
        c.shutdown().await;
        report(
            "B13 connections dropped repeatedly mid-stream",
            "redis",
            &format!(
                "{cuts} x all connections dropped ({dropped} in all); \
                 {} sends failed (unconfirmed)",
                produced.failed
            ),
            &tally.summary(),
            (n / 100) as usize,
        );
        assert!(done, "not every confirmed message handled in time");
        assert!(empty, "deliveries left unsettled in the stream");
        assert!(
            produced.untyped.is_empty(),
            "untyped errors: {:?}",
            produced.untyped
        );
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
async fn b14_redis_killed_and_restarted_mid_stream_with_persistence() {
    let test = "B14 redis killed and restarted";
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(mut server) = RedisServer::start(test, Persistence::AppendOnly).await else {
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
        let faults = async {
            for k in 1..=restarts {
                confirmed_reach(&tally, (k * n / (restarts + 1)) as usize).await;
                let at = tally.summary();
                server.kill();
                println!(
                    "{test}: redis-server killed with {} confirmed, {} handled",
                    at.confirmed, at.handled
                );
                tokio::time::sleep(down).await;
                let restarted = Instant::now();
                server.restart().await;
                println!(
                    "{test}: redis-server serving again after {:?}",
                    restarted.elapsed()
                );
            }
        };
        let (produced, ()) =
            tokio::join!(produce(&p, &tally, n, 8, Duration::from_secs(60)), faults);
        let done = all_handled(
            &tally,
            tier.pick(Duration::from_secs(120), Duration::from_secs(300)),
        )
        .await;
        let empty = drained(&url, "b14", Duration::from_secs(60)).await;
        let health = c.health();
        c.shutdown().await;
        report(
            "B14 Redis killed (kill -9) and restarted mid-stream, appendonly fsync always",
            "redis",
            &format!(
                "{restarts} x kill -9 of redis-server, down {down:?}; \
                 {} sends failed and were tried again \
                 (one that had reached Redis makes a duplicate)",
                produced.failed
            ),
            &tally.summary(),
            (n / 100) as usize,
        );
        assert!(
            done,
            "not every confirmed message handled after the restart"
        );
        assert!(empty, "deliveries left unsettled in the stream");
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
async fn burst(p: &Bus, tally: &Tally, ns: std::ops::Range<u64>) -> Vec<Outcome> {
    let mut tasks = Vec::new();
    for n in ns {
        let (p, t) = (p.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            t.sent(n);
            let started = Instant::now();
            let r = p.send(Work { n, fail_first: 0 }).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b15_redis_down_while_publishing() {
    let test = "B15 redis down while publishing";
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(mut server) = RedisServer::start(test, Persistence::AppendOnly).await else {
        return;
    };
    let url = server.url();
    within(test, Duration::from_secs(180), async {
        let tally = Tally::new();
        let c = consumer(&url, "b15", &tally).await;
        let timeout = Duration::from_secs(2);
        let limit = timeout + Duration::from_secs(1);
        let p = producer(&url, "b15", timeout).await;
        let before = burst(&p, &tally, 0..10).await;
        assert!(before.iter().all(|(r, _)| r.is_ok()), "{before:?}");
        // Settled before the fault, so this test counts only what the fault does.
        assert!(all_handled(&tally, Duration::from_secs(10)).await);
        assert!(drained(&url, "b15", Duration::from_secs(10)).await);

        // Killed: connections are refused.
        server.kill();
        let killed = burst(&p, &tally, 10..30).await;
        check_outcomes("redis-server killed", &killed, limit);
        server.restart().await;

        // Frozen: connections are accepted (by the kernel) but nothing is answered.
        server.freeze();
        let frozen = burst(&p, &tally, 30..50).await;
        server.thaw();
        check_outcomes("redis-server frozen", &frozen, limit);

        // Publishing works again by itself.
        let after = produce_range(&p, &tally, 50..60).await;
        let done = all_handled(&tally, Duration::from_secs(60)).await;
        let empty = drained(&url, "b15", Duration::from_secs(30)).await;
        c.shutdown().await;
        let refused = |o: &[Outcome]| o.iter().filter(|(r, _)| r.is_err()).count();
        let slowest = killed
            .iter()
            .chain(&frozen)
            .map(|(_, took)| *took)
            .max()
            .unwrap_or_default();
        report(
            "B15 Redis down while publishing (killed, then frozen)",
            "redis",
            &format!(
                "kill -9: {} of 20 publishes failed, SIGSTOP: {} of 20 failed, \
                 slowest {slowest:?} (timeout {timeout:?}); {after} failed after",
                refused(&killed),
                refused(&frozen)
            ),
            &tally.summary(),
            0,
        );
        assert!(done, "not every confirmed message handled");
        assert!(empty, "deliveries left unsettled in the stream");
    })
    .await;
}

/// Send `ns` one by one, each retried until confirmed (at most 20 s); returns how many
/// attempts failed.
async fn produce_range(p: &Bus, tally: &Tally, ns: std::ops::Range<u64>) -> u64 {
    let mut failed = 0;
    for n in ns {
        tally.sent(n);
        let first = Instant::now();
        loop {
            match p.send(Work { n, fail_first: 0 }).await {
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

/// A worker process, killed when dropped (also when the test fails).
struct Worker(std::process::Child);

impl Worker {
    fn spawn(url: &str, dir: &Path, i: u32) -> Worker {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_bus-test-worker"))
            .env("WORKER_REDIS_URL", url)
            .env("WORKER_PREFIX", PREFIX)
            .env("WORKER_ENDPOINT", "b16")
            .env("WORKER_DELAY_MS", "2")
            .env("WORKER_RECLAIM_IDLE_MS", "2000")
            .env("WORKER_OUT", dir.join(format!("w{i}.txt")))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn worker");
        Worker(child)
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

/// The `Work` numbers of the entries pending in the endpoint's group (delivered to a
/// consumer, not acked).
async fn pending_work(conn: &mut redis::aio::MultiplexedConnection, endpoint: &str) -> Vec<u64> {
    let stream = Keys::new(PREFIX).stream(endpoint);
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg(endpoint)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query_async(conn)
        .await
        .expect("XPENDING");
    let mut out = Vec::new();
    for (id, _consumer, _idle, _count) in pending {
        let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(&id)
            .arg(&id)
            .query_async(conn)
            .await
            .expect("XRANGE");
        for (_, fields) in entries {
            let work: Work = serde_json::from_slice(&fields["body"]).expect("a Work body");
            out.push(work.n);
        }
    }
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
    let test = "B16 consumer killed (redis)";
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(server) = RedisServer::start(test, Persistence::Off).await else {
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
        // Wait until the worker declared its endpoint, then produce.
        let mut conn = raw(&url).await;
        let keys = Keys::new(PREFIX);
        let started = Instant::now();
        loop {
            let declared: bool = redis::cmd("SISMEMBER")
                .arg(keys.endpoints())
                .arg("b16")
                .query_async(&mut conn)
                .await
                .unwrap();
            if declared {
                break;
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
            let pending = pending_work(&mut conn, "b16").await;
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
        let empty = drained(&url, "b16", Duration::from_secs(30)).await;
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
            "redis",
            &format!(
                "kill -9 of the consumer process with {} deliveries pending on it, \
                 all taken over by the next one after 2 s idle",
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
            empty,
            "deliveries left unsettled in the stream (the dead consumer's?)"
        );
        assert_eq!(produced.failed, 0, "sends failed: {produced:?}");
    })
    .await;
}
