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
use std::path::Path;
use std::time::{Duration, Instant};

use bus_core::Bus;
use bus_tests::eventually;
use bus_tests::fault_run::{
    all_handled, burst, check_outcomes, confirmed_reach, handled_lines, logs, produce,
    produce_range, scheduled_across_restart, within, worker_lines, Outcome, TempDir, WorkIds,
    Worker,
};
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
        let (produced, dropped) = tokio::join!(
            produce(&p, &tally, &WorkIds::Fresh, n, 16, Duration::ZERO),
            faults
        );
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
        let (produced, ()) = tokio::join!(
            produce(&p, &tally, &WorkIds::Fresh, n, 8, Duration::from_secs(60)),
            faults
        );
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
        let before = burst(&p, &tally, &WorkIds::Fresh, 0..10).await;
        assert!(before.iter().all(|(r, _)| r.is_ok()), "{before:?}");
        // Settled before the fault, so this test counts only what the fault does.
        assert!(all_handled(&tally, Duration::from_secs(10)).await);
        assert!(drained(&url, "b15", Duration::from_secs(10)).await);

        // Killed: connections are refused.
        server.kill();
        let killed = burst(&p, &tally, &WorkIds::Fresh, 10..30).await;
        check_outcomes("redis-server killed", &killed, limit);
        server.restart().await;

        // Frozen: connections are accepted (by the kernel) but nothing is answered.
        server.freeze();
        let frozen = burst(&p, &tally, &WorkIds::Fresh, 30..50).await;
        server.thaw();
        check_outcomes("redis-server frozen", &frozen, limit);

        // Publishing works again by itself.
        let after = produce_range(&p, &tally, &WorkIds::Fresh, 50..60).await;
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

/// Worker process `i` of B16, consuming the endpoint `b16` of the server at `url`.
fn worker(url: &str, dir: &Path, i: u32) -> Worker {
    let env = [
        ("WORKER_REDIS_URL", url),
        ("WORKER_PREFIX", PREFIX),
        ("WORKER_ENDPOINT", "b16"),
        ("WORKER_DELAY_MS", "2"),
        ("WORKER_RECLAIM_IDLE_MS", "2000"),
    ];
    Worker::spawn(env!("CARGO_BIN_EXE_bus-test-worker"), &env, dir, i)
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
        let dir = TempDir::new("bus-kill");
        let mut first = worker(&url, dir.path(), 0);
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
            while (handled_lines(dir.path()).len() as u64) < n / 3 {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the first worker stalled"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            first.kill();
            let handled = handled_lines(dir.path()).len();
            let pending = pending_work(&mut conn, "b16").await;
            println!(
                "{test}: worker killed (kill -9) after {handled} handlings, \
                 {} deliveries pending on it",
                pending.len()
            );
            let second = worker(&url, dir.path(), 1);
            (second, Instant::now(), pending)
        };
        let (produced, (mut second, killed_at, pending)) = tokio::join!(
            produce(&p, &tally, &WorkIds::Fresh, n, 8, Duration::from_secs(30)),
            kill
        );
        let done = eventually(
            tier.pick(Duration::from_secs(120), Duration::from_secs(300)),
            || {
                let seen: HashSet<u64> = handled_lines(dir.path()).into_iter().collect();
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
        let by_second: HashSet<u64> = worker_lines(dir.path(), 1).into_iter().collect();
        let not_taken_over: Vec<u64> = pending
            .iter()
            .copied()
            .filter(|n| !by_second.contains(n))
            .collect();
        // Redelivered: what the next worker handled of what was pending on the dead one.
        for (i, lines) in [worker_lines(dir.path(), 0), worker_lines(dir.path(), 1)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e38_scheduled_messages_survive_the_sender_and_a_redis_restart() {
    let test = "E38 scheduled messages across restarts";
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(mut server) = RedisServer::start(test, Persistence::AppendOnly).await else {
        return;
    };
    let url = server.url();
    within(test, Duration::from_secs(180), async {
        let n = 100;
        let tally = Tally::new();
        // The endpoint exists before anything is scheduled for it.
        consumer(&url, "e38", &tally).await.shutdown().await;
        let p = producer(&url, "e38", Duration::from_secs(5)).await;
        let restart = async {
            server.kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            server.restart().await;
            println!("{test}: redis-server restarted");
        };
        let (bus, _) = scheduled_across_restart(test, p, &tally, n, restart, || {
            consumer(&url, "e38", &tally)
        })
        .await;
        bus.shutdown().await;
        report(
            "E38 scheduled messages across sender and broker restart",
            "redis",
            "sender gone; redis-server kill -9 and restart (append-only file)",
            &tally.summary(),
            0,
        );
    })
    .await;
}
