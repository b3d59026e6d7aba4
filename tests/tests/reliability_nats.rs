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
        let ids = WorkIds::per_run();
        let (produced, (dropped, resumes)) = tokio::join!(
            produce(&p, &tally, &ids, n, 16, Duration::from_secs(60)),
            faults
        );
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
            // A cut can redeliver what was taken and not yet acked: at most the prefetch, as
            // for the AMQP connection closes.
            ((n / 100) as usize).max(cuts as usize * PREFETCH),
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
        let ids = WorkIds::per_run();
        let (produced, (resumes, restored_total)) = tokio::join!(
            produce(&p, &tally, &ids, n, 8, Duration::from_secs(60)),
            faults
        );
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
        let ids = WorkIds::per_run();
        let tally = Tally::new();
        let c = consumer(&url, "b15", &tally).await;
        let timeout = Duration::from_secs(2);
        let limit = timeout + Duration::from_secs(1);
        let p = producer(&url, "b15", timeout).await;
        let before = burst(&p, &tally, &ids, 0..10).await;
        assert!(before.iter().all(|(r, _)| r.is_ok()), "{before:?}");
        // Settled before the fault, so this test counts only what the fault does.
        assert!(all_handled(&tally, Duration::from_secs(10)).await);
        let js = raw(&url).await;
        let left = settled(&js, "b15", Duration::from_secs(10)).await;
        assert!(left.is_some_and(|i| i.settled()), "{left:?}");

        // Killed: connections are refused.
        server.kill();
        let killed = burst(&p, &tally, &ids, 10..30).await;
        check_outcomes("nats-server killed", &killed, limit);
        server.restart().await;

        // Frozen: connections are accepted (by the kernel) but nothing is answered.
        server.freeze();
        let frozen = burst(&p, &tally, &ids, 30..50).await;
        server.thaw();
        check_outcomes("nats-server frozen", &frozen, limit);

        // Publishing works again by itself.
        let after = produce_range(&p, &tally, &ids, 50..60).await;
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

/// Worker process `i` of B16, consuming the endpoint `b16` of the server at `url`.
fn worker(url: &str, dir: &Path, i: u32) -> Worker {
    let env = [
        ("WORKER_NATS_URL", url),
        ("WORKER_PREFIX", PREFIX),
        ("WORKER_ENDPOINT", "b16"),
        ("WORKER_DELAY_MS", "2"),
        ("WORKER_ACK_WAIT_MS", "2000"),
    ];
    Worker::spawn(env!("CARGO_BIN_EXE_bus-test-worker"), &env, dir, i)
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
        let dir = TempDir::new("bus-kill");
        let mut first = worker(&url, dir.path(), 0);
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
            while (handled_lines(dir.path()).len() as u64) < n / 3 {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the first worker stalled"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            first.kill();
            let handled = handled_lines(dir.path()).len();
            let pending = pending_work(&js, "b16").await;
            println!(
                "{test}: worker killed (kill -9) after {handled} handlings, \
                 {} deliveries pending on it",
                pending.len()
            );
            let second = worker(&url, dir.path(), 1);
            (second, Instant::now(), pending)
        };
        let ids = WorkIds::per_run();
        let (produced, (mut second, killed_at, pending)) = tokio::join!(
            produce(&p, &tally, &ids, n, 8, Duration::from_secs(30)),
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
        let left = settled(&js, "b16", Duration::from_secs(30)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e38_scheduled_messages_survive_the_sender_and_a_nats_restart() {
    let test = "E38 scheduled messages across restarts";
    let _lock = BROKER_LOCK.lock().await;
    logs();
    let Some(mut server) = NatsServer::start(test).await else {
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
            println!("{test}: nats-server restarted");
        };
        let (bus, _) = scheduled_across_restart(test, p, &tally, n, restart, || {
            consumer(&url, "e38", &tally)
        })
        .await;
        bus.shutdown().await;
        report(
            "E38 scheduled messages across sender and broker restart",
            "nats",
            "sender gone; nats-server kill -9 and restart (file storage)",
            &tally.summary(),
            0,
        );
    })
    .await;
}
