//! Reliability on RabbitMQ (RELIABILITY.md parts B and C): faults injected with real tools
//! while messages flow, bad input, and recoverability, each test checked by the tally (lost,
//! phantom, duplicates) and printing one `RELIABILITY ...` line.
//!
//! These tests disturb the shared broker (closing every connection, stopping it, raising a
//! memory alarm), so they run one at a time (a lock) in their own test binary, and always put
//! the broker back, also when they fail. `BUS_RELIABILITY=full` runs the counts of
//! RELIABILITY.md; by default the quick tier runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{
    header, Bus, BusError, CodecError, HandlerError, MessageContext, SendOptions, State, Transport,
};
use bus_tests::broker::AmqpScope;
use bus_tests::eventually;
use bus_tests::fault_run::scheduled_across_restart;
use bus_tests::faulty::FailingErrorQueue;
use bus_tests::messages::{Risky, Work};
use bus_tests::reliability::{
    self, report, risky, tallied, BrokerStopped, MemoryAlarm, Tally, Tier, BROKER_LOCK,
};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::AMQPValue;
use lapin::BasicProperties;

/// Runs a test body holding the broker lock, cleaning the scope up afterwards, also on panic.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(AmqpScope) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let _lock = BROKER_LOCK.lock().await;
    let Some(scope) = AmqpScope::new(test).await else {
        return;
    };
    let cleanup = async {
        reliability::wait_broker_ready();
        scope.cleanup().await;
    };
    bus_tests::then_clean(body(scope.clone()), cleanup).await;
}

struct Endpoint {
    bus: Bus,
    tally: Tally,
}

async fn consumer(
    scope: &AmqpScope,
    endpoint: &str,
    tally: &Tally,
    configure: impl FnOnce(bus_core::EndpointConfig) -> bus_core::EndpointConfig + Send + 'static,
) -> Endpoint {
    let bus = Bus::builder()
        .transport(scope.transport(&format!("{endpoint}-consumer")).await)
        .without_discovery()
        .handler(endpoint.to_string(), tallied)
        .handler(endpoint.to_string(), risky)
        .route::<Work>(endpoint)
        .route::<Risky>(endpoint)
        .state(tally.clone())
        .endpoint(endpoint, move |e| {
            configure(e.concurrency(32).prefetch(200))
        })
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("start consumer");
    Endpoint {
        bus,
        tally: tally.clone(),
    }
}

async fn producer(scope: &AmqpScope, endpoint: &str, publish_timeout: Duration) -> Bus {
    Bus::builder()
        .transport(
            bus_transport_amqp::AmqpTransport::connect(
                scope.config("producer").publish_timeout(publish_timeout),
            )
            .await
            .unwrap(),
        )
        .without_discovery()
        .route::<Work>(endpoint)
        .route::<Risky>(endpoint)
        .build()
        .await
        .unwrap()
}

/// Send `0..n` from `tasks` concurrent senders; returns the slowest single send.
async fn produce(bus: &Bus, tally: &Tally, n: u64, tasks: u64) -> Duration {
    let slowest = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (bus, tally, slowest) = (bus.clone(), tally.clone(), slowest.clone());
        handles.push(tokio::spawn(async move {
            for i in (t..n).step_by(tasks as usize) {
                tally.sent(i);
                let started = Instant::now();
                let result = bus
                    .send(Work {
                        n: i,
                        fail_first: 0,
                    })
                    .await;
                slowest.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                match result {
                    Ok(()) => tally.confirmed(i),
                    Err(e) => eprintln!("send {i}: {e}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    Duration::from_millis(slowest.load(Ordering::Relaxed))
}

// ---- B. faults -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b13_connections_force_closed_repeatedly() {
    scoped("B13 connections force-closed", |scope| async move {
        let tier = Tier::current();
        let (n, closes) = (tier.pick(5_000u64, 100_000), tier.pick(2u64, 5));
        let tally = Tally::new();
        let c = consumer(&scope, "b13", &tally, |e| e).await;
        let p = producer(&scope, "b13", Duration::from_secs(10)).await;
        let t = tally.clone();
        let faults = tokio::spawn(async move {
            for k in 1..=closes {
                let at = (k * n / (closes + 1)) as usize;
                while t.summary().confirmed < at {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                reliability::close_all_connections();
            }
        });
        let slowest = produce(&p, &tally, n, 16).await;
        faults.await.unwrap();
        let done = eventually(
            tier.pick(Duration::from_secs(120), Duration::from_secs(900)),
            || tally.all_confirmed_handled(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.bus.shutdown().await;
        report(
            "B13 connections force-closed repeatedly",
            "amqp",
            &format!("{closes} x close_all_connections"),
            &c.tally.summary(),
            // 1% of the messages (RELIABILITY.md), but never less than what one close can
            // legitimately return: every unacked delivery of the prefetch window (200), per
            // close. The full tier's 100,000 messages make 1% the binding figure.
            ((n / 100) as usize).max(closes as usize * 200),
        );
        assert!(done, "not every confirmed message handled in time");
        assert!(
            slowest <= Duration::from_secs(11),
            "a send blocked {slowest:?}, past its 10 s timeout"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b14_broker_restart_mid_stream() {
    scoped("B14 broker restart", |scope| async move {
        let tier = Tier::current();
        let n = tier.pick(3_000u64, 30_000);
        let tally = Tally::new();
        let c = consumer(&scope, "b14", &tally, |e| e).await;
        let p = producer(&scope, "b14", Duration::from_secs(20)).await;
        let t = tally.clone();
        let restarts = tier.pick(1u64, 2);
        let faults = tokio::task::spawn(async move {
            for k in 1..=restarts {
                let at = (k * n / (restarts + 1)) as usize;
                while t.summary().confirmed < at {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let stopped = tokio::task::spawn_blocking(BrokerStopped::stop)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(3)).await;
                tokio::task::spawn_blocking(move || stopped.restore())
                    .await
                    .unwrap();
            }
        });
        produce(&p, &tally, n, 16).await;
        faults.await.unwrap();
        let done = eventually(Duration::from_secs(300), || tally.all_confirmed_handled()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Readiness follows the connection's state, which can lag the first deliveries after
        // a restart by a few seconds.
        eventually(Duration::from_secs(30), || c.bus.health().is_ready()).await;
        let health = c.bus.health();
        c.bus.shutdown().await;
        report(
            "B14 broker restart mid-stream",
            "amqp",
            &format!("{restarts} x stop_app/start_app"),
            &c.tally.summary(),
            (n / 100) as usize,
        );
        assert!(
            done,
            "not every confirmed message handled after the restart"
        );
        assert!(
            health.is_ready(),
            "consumers resumed by themselves: {health:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b15_broker_down_while_publishing() {
    scoped("B15 broker down while publishing", |scope| async move {
        let tally = Tally::new();
        let c = consumer(&scope, "b15", &tally, |e| e).await;
        let p = producer(&scope, "b15", Duration::from_secs(2)).await;
        let stopped = tokio::task::spawn_blocking(BrokerStopped::stop)
            .await
            .unwrap();
        let mut outcomes = Vec::new();
        let mut tasks = Vec::new();
        for n in 0..20u64 {
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
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        tokio::task::spawn_blocking(move || stopped.restore())
            .await
            .unwrap();
        for (r, took) in &outcomes {
            assert!(
                *took < Duration::from_secs(3),
                "a publish took {took:?} with a 2 s timeout"
            );
            if let Err(e) = r {
                assert!(
                    matches!(e, BusError::Transport(_)),
                    "typed transport error: {e}"
                );
            }
        }
        let done = eventually(Duration::from_secs(60), || tally.all_confirmed_handled()).await;
        c.bus.shutdown().await;
        let errors = outcomes.iter().filter(|(r, _)| r.is_err()).count();
        report(
            "B15 broker down while publishing",
            "amqp",
            &format!("stop_app; {errors} of 20 publishes refused in time"),
            &c.tally.summary(),
            0,
        );
        assert!(done);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b16_consumer_process_killed_and_restarted() {
    scoped("B16 consumer killed", |scope| async move {
        let tier = Tier::current();
        let n = tier.pick(2_000u64, 20_000);
        let dir = std::env::temp_dir().join(bus_tests::broker::unique("bus-kill"));
        std::fs::create_dir_all(&dir).unwrap();
        let spawn = |i: u32| {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bus-test-worker"));
            child
                .env("WORKER_AMQP_URL", &scope.url)
                .env("WORKER_PREFIX", &scope.naming.queue_prefix)
                .env("WORKER_ENDPOINT", "b16")
                .env("WORKER_DELAY_MS", "2")
                .env("WORKER_OUT", dir.join(format!("w{i}.txt")))
                .stdout(std::process::Stdio::null());
            child.spawn().expect("spawn worker")
        };
        let lines = |dir: &std::path::Path| -> Vec<u64> {
            let mut all = Vec::new();
            for i in 0..2 {
                for l in std::fs::read_to_string(dir.join(format!("w{i}.txt")))
                    .unwrap_or_default()
                    .lines()
                {
                    if let Some(n) = l.split(' ').next().and_then(|v| v.parse().ok()) {
                        all.push(n);
                    }
                }
            }
            all
        };
        let mut first = spawn(0);
        // Wait until the worker declared its queue, then produce.
        assert!(
            eventually(Duration::from_secs(30), || std::process::Command::new(
                "rabbitmqctl"
            )
            .args(["list_queues", "-q", "name"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&scope.naming.queue("b16")))
            .unwrap_or(false))
            .await
        );
        let tally = Tally::new();
        let p = producer(&scope, "b16", Duration::from_secs(10)).await;
        produce(&p, &tally, n, 8).await;
        assert!(
            eventually(Duration::from_secs(60), || lines(&dir).len() as u64
                >= n / 3)
            .await
        );
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &first.id().to_string()])
            .status();
        let _ = first.wait();
        let mut second = spawn(1);
        let done = eventually(Duration::from_secs(180), || {
            let seen: std::collections::HashSet<u64> = lines(&dir).into_iter().collect();
            seen.len() as u64 >= n
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &second.id().to_string()])
            .status();
        let _ = second.wait();
        for l in lines(&dir) {
            tally.delivered(l, false, 1);
            tally.handled(l);
        }
        report(
            "B16 consumer process killed (SIGKILL) and restarted",
            "amqp",
            "kill -9 of the consumer process",
            &tally.summary(),
            50,
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(done);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b17_memory_alarm_blocks_publishers_with_a_typed_timeout() {
    scoped("B17 memory alarm", |scope| async move {
        let tally = Tally::new();
        let c = consumer(&scope, "e38", &tally, |e| e).await;
        let p = producer(&scope, "e38", Duration::from_secs(2)).await;
        let alarm = tokio::task::spawn_blocking(MemoryAlarm::raise)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut outcomes = Vec::new();
        for n in 0..5u64 {
            tally.sent(n);
            let started = Instant::now();
            let r = p.send(Work { n, fail_first: 0 }).await;
            if r.is_ok() {
                tally.confirmed(n);
            }
            outcomes.push((r, started.elapsed()));
        }
        tokio::task::spawn_blocking(move || alarm.clear())
            .await
            .unwrap();
        for (r, took) in &outcomes {
            assert!(*took < Duration::from_secs(3), "publish took {took:?}");
            if let Err(e) = r {
                assert!(
                    matches!(
                        e,
                        BusError::Transport(bus_core::TransportError::Timeout { .. })
                    ),
                    "{e}"
                );
            }
        }
        let blocked = outcomes.iter().filter(|(r, _)| r.is_err()).count();
        // Publishing works again once the alarm clears.
        for n in 5..50u64 {
            tally.sent(n);
            if tokio::time::timeout(Duration::from_secs(30), p.send(Work { n, fail_first: 0 }))
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false)
            {
                tally.confirmed(n);
            }
        }
        let done = eventually(Duration::from_secs(60), || tally.all_confirmed_handled()).await;
        c.bus.shutdown().await;
        report(
            "B17 memory alarm (blocked connection)",
            "amqp",
            &format!("vm_memory_high_watermark alarm; {blocked} of 5 publishes timed out"),
            &c.tally.summary(),
            0,
        );
        assert!(blocked > 0, "the alarm blocked publishing");
        assert!(done);
        assert_eq!(
            tally.summary().confirmed,
            45 + (5 - blocked),
            "publishing resumed"
        );
    })
    .await;
}

// ---- C. recoverability and bad input ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c19_c20_transient_and_exhausted_failures() {
    scoped("C19/C20 retries", |scope| async move {
        let tally = Tally::new();
        let c = consumer(&scope, "c19", &tally, |e| {
            e.immediate_retries(2)
                .delayed_retries(1, Duration::from_millis(500))
        })
        .await;
        let p = producer(&scope, "c19", Duration::from_secs(10)).await;
        tally.sent(1);
        p.send(Work {
            n: 1,
            fail_first: 2,
        })
        .await
        .unwrap();
        tally.confirmed(1);
        p.send(Work {
            n: 2,
            fail_first: u32::MAX,
        })
        .await
        .unwrap();
        assert!(
            eventually(Duration::from_secs(20), || tally.handled_count() == 1
                && c.bus.stats().dead_lettered == 1)
            .await
        );
        let stats = c.bus.stats();
        c.bus.shutdown().await;
        // 1: fails twice, then succeeds: 3 attempts. 2: (2 + 1) x (1 + 1) = 6 attempts.
        assert_eq!(stats.failed_attempts, 2 + 6);
        let conn = scope.raw().await;
        let ch = conn.create_channel().await.unwrap();
        let dead = ch
            .basic_get(
                scope.naming.error_queue("c19").as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("in the error queue");
        let h = dead.delivery.properties.headers().clone().unwrap();
        assert_eq!(
            h.inner().get(header::FAILURE_ATTEMPTS),
            Some(&AMQPValue::LongString("6".into()))
        );
        assert_eq!(
            dead.delivery.data,
            serde_json::to_vec(&Work {
                n: 2,
                fail_first: u32::MAX
            })
            .unwrap()
        );
        assert!(
            ch.basic_get(
                scope.naming.error_queue("c19").as_str().into(),
                BasicGetOptions { no_ack: true }
            )
            .await
            .unwrap()
            .is_none(),
            "exactly one copy"
        );
        report(
            "C19 transient failure, C20 exhausted retries",
            "amqp",
            "handler errors",
            &tally.summary(),
            0,
        );
    })
    .await;
}

async fn publish_raw(scope: &AmqpScope, queue: &str, props: BasicProperties, body: &[u8]) {
    let conn = scope.raw().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        "".into(),
        scope.naming.queue(queue).as_str().into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

fn props(id: Option<&str>, kind: Option<&str>, content_type: &str) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_content_type(content_type.into())
        .with_delivery_mode(2);
    if let Some(id) = id {
        p = p.with_message_id(id.into());
    }
    if let Some(k) = kind {
        p = p.with_type(k.into());
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c21_to_c23_bad_input_goes_to_the_error_queue_at_once() {
    scoped("C21-C23 bad input", |scope| async move {
        let tally = Tally::new();
        let c = Bus::builder()
            .transport(scope.transport("c21").await)
            .without_discovery()
            .handler("c21", tallied)
            .route::<Work>("c21")
            .state(tally.clone())
            .max_body_size(1024)
            .endpoint("c21", |e| e.immediate_retries(3).delayed_retries(2, Duration::from_secs(1)))
            .start()
            .await
            .unwrap();
        let json = "application/json";
        let bad: Vec<(BasicProperties, Vec<u8>, &str)> = vec![
            (props(Some("m1"), Some("tests.Work"), json), b"[]".to_vec(), "deserialization-failed"),
            (props(Some("m2"), Some("tests.Work"), json), Vec::new(), "deserialization-failed"),
            (props(Some("m3"), Some("tests.Work"), json), vec![0x9f, 0x00, 0xfe, 0x13, 0x37], "deserialization-failed"),
            (props(Some("m4"), Some("tests.Work"), json), b"{\"n\": \"\xff\xfe\"}".to_vec(), "deserialization-failed"),
            (props(Some("m5"), Some("tests.Unknown"), json), b"{}".to_vec(), "unknown-message-type"),
            (props(None, Some("tests.Work"), json), br#"{"n":1,"fail_first":0}"#.to_vec(), "missing-header"),
            (props(Some("m7"), None, json), br#"{"n":1,"fail_first":0}"#.to_vec(), "missing-header"),
            (props(Some("m8"), Some("tests.Work"), "application/x-msgpack"), br#"{"n":1,"fail_first":0}"#.to_vec(), "unsupported-content-type"),
            (props(Some("m9"), Some("tests.Work"), json), vec![b' '; 4096], "body-too-large"),
        ];
        let expected: Vec<&str> = bad.iter().map(|b| b.2).collect();
        let p = producer(&scope, "c21", Duration::from_secs(10)).await;
        for (i, (pr, body, _)) in bad.into_iter().enumerate() {
            publish_raw(&scope, "c21", pr, &body).await;
            // A good message behind each bad one.
            tally.sent(i as u64);
            p.send(Work { n: i as u64, fail_first: 0 }).await.unwrap();
            tally.confirmed(i as u64);
        }
        // C23: an oversized message is refused on publish with a typed error.
        let big = Bus::builder().transport(scope.transport("c23").await).without_discovery().route::<Work>("c21").max_body_size(16).build().await.unwrap();
        let err = big.send(Work { n: 999, fail_first: 0 }).await.unwrap_err();
        assert!(matches!(err, BusError::Codec(CodecError::TooLarge { .. })), "{err}");

        assert!(eventually(Duration::from_secs(20), || tally.all_confirmed_handled() && c.stats().dead_lettered == expected.len() as u64).await);
        let stats = c.stats();
        c.shutdown().await;
        assert_eq!(stats.failed_attempts, 0, "bad input is never retried");
        let conn = scope.raw().await;
        let ch = conn.create_channel().await.unwrap();
        let mut reasons = Vec::new();
        while let Some(m) = ch.basic_get(scope.naming.error_queue("c21").as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            let h = m.delivery.properties.headers().clone().unwrap();
            let text = |k: &str| match h.inner().get(k) {
                Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                _ => String::new(),
            };
            assert_eq!(text(header::FAILURE_ATTEMPTS), "1");
            reasons.push(text(header::FAILURE_REASON));
        }
        let mut expected: Vec<String> = expected.into_iter().map(String::from).collect();
        reasons.sort();
        expected.sort();
        assert_eq!(reasons, expected);
        let mut summary = tally.summary();
        summary.sent += expected.len();
        report("C21 malformed bodies, C22 unknown type / missing headers / content type, C23 oversized", "amqp", "9 bad messages published raw", &summary, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c24_to_c26_panic_timeout_and_failure_after_send() {
    scoped("C24-C26", |scope| async move {
        let tally = Tally::new();
        let downstream = Tally::new();
        // Downstream endpoint: receives the Work that "send-then-fail" sends.
        let d = consumer(&scope, "c26-down", &downstream, |e| e).await;
        let c = Bus::builder()
            .transport(scope.transport("c24").await)
            .without_discovery()
            .handler("c24", risky)
            .route::<Work>("c26-down")
            .state(tally.clone())
            .endpoint("c24", |e| {
                e.immediate_retries(2)
                    .delayed_retries(0, Duration::ZERO)
                    .handler_timeout(Duration::from_millis(500))
            })
            .start()
            .await
            .unwrap();
        let sender = Bus::builder()
            .transport(scope.transport("c24-sender").await)
            .without_discovery()
            .route::<Risky>("c24")
            .build()
            .await
            .unwrap();
        for (n, mode) in [
            (1u64, "panic"),
            (2, "hang"),
            (3, "send-then-fail"),
            (4, "ok"),
            (5, "ok"),
        ] {
            tally.sent(n);
            sender
                .send(Risky {
                    n,
                    mode: mode.into(),
                })
                .await
                .unwrap();
            if matches!(mode, "ok" | "send-then-fail") {
                tally.confirmed(n);
            }
        }
        assert!(
            eventually(Duration::from_secs(30), || {
                tally.all_confirmed_handled()
                    && c.stats().dead_lettered == 2
                    && downstream.handled_count() == 1
            })
            .await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.shutdown().await;
        d.bus.shutdown().await;
        let conn = scope.raw().await;
        let ch = conn.create_channel().await.unwrap();
        let mut reasons = Vec::new();
        while let Some(m) = ch
            .basic_get(
                scope.naming.error_queue("c24").as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let h = m.delivery.properties.headers().clone().unwrap();
            let text = |k: &str| match h.inner().get(k) {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                _ => String::new(),
            };
            reasons.push((
                text(header::FAILURE_REASON),
                text(header::FAILURE_ERROR),
                text(header::FAILURE_ATTEMPTS),
            ));
        }
        reasons.sort();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert_eq!(reasons[0].0, "panic");
        assert_eq!(reasons[0].1, "risky 1 panicked");
        assert_eq!(reasons[0].2, "3");
        assert_eq!(reasons[1].0, "timeout");
        assert_eq!(reasons[1].2, "3");
        let down = downstream.summary();
        assert_eq!(
            (down.handled, down.duplicates),
            (1, 0),
            "the Work sent before failing left exactly once"
        );
        report(
            "C24 panic, C25 timeout, C26 failure after send",
            "amqp",
            "panicking, hanging and failing-after-send handlers",
            &tally.summary(),
            0,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c27_error_queue_write_fails_and_nothing_is_lost() {
    scoped("C27 error-queue write fails", |scope| async move {
        let tally = Tally::new();
        let transport: Arc<dyn Transport> = Arc::new(scope.transport("c27").await);
        let failing = Arc::new(FailingErrorQueue::new(transport, 3));
        let c = Bus::builder()
            .transport_arc(failing.clone())
            .without_discovery()
            .handler("c27", tallied)
            .route::<Work>("c27")
            .state(tally.clone())
            .endpoint("c27", |e| {
                e.immediate_retries(0).delayed_retries(0, Duration::ZERO)
            })
            .start()
            .await
            .unwrap();
        c.send(Work {
            n: 1,
            fail_first: u32::MAX,
        })
        .await
        .unwrap();
        assert!(eventually(Duration::from_secs(30), || c.stats().dead_lettered == 1).await);
        c.shutdown().await;
        assert_eq!(
            failing.refused(),
            3,
            "three error-queue writes refused, the original kept each time"
        );
        assert!(
            tally.summary().redelivered >= 3,
            "the original was returned to its queue and redelivered"
        );
        let conn = scope.raw().await;
        let ch = conn.create_channel().await.unwrap();
        assert!(ch
            .basic_get(
                scope.naming.error_queue("c27").as_str().into(),
                BasicGetOptions { no_ack: true }
            )
            .await
            .unwrap()
            .is_some());
        let mut summary = tally.summary();
        summary.sent = 1;
        report(
            "C27 error-queue write fails",
            "amqp",
            "3 refused error-queue writes",
            &summary,
            0,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c28_duplicates_with_an_inbox() {
    scoped("C28 duplicates", |scope| async move {
        let tally = Tally::new();
        let c = consumer(&scope, "c28", &tally, |e| {
            e.inbox(bus_core::MemoryInbox::new(10_000))
        })
        .await;
        let p = producer(&scope, "c28", Duration::from_secs(10)).await;
        for n in 0..100u64 {
            tally.sent(n);
            for _ in 0..2 {
                p.send_with(
                    Work { n, fail_first: 0 },
                    SendOptions::new().message_id(format!("c28-{n}")),
                )
                .await
                .unwrap();
            }
            tally.confirmed(n);
        }
        assert!(
            eventually(Duration::from_secs(30), || tally.all_confirmed_handled()
                && c.bus.stats().duplicates_skipped == 100)
            .await
        );
        c.bus.shutdown().await;
        report(
            "C28 duplicates with the inbox on",
            "amqp",
            "every message delivered twice",
            &tally.summary(),
            0,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c29_graceful_shutdown_with_handlers_in_flight() {
    scoped("C29 graceful shutdown", |scope| async move {
        async fn slow(
            cmd: Work,
            ctx: MessageContext,
            State(t): State<Tally>,
        ) -> Result<(), HandlerError> {
            t.delivered(cmd.n, ctx.redelivered(), ctx.attempt());
            // `fail_first` doubles as the handler's duration in ms here.
            tokio::time::sleep(Duration::from_millis(u64::from(cmd.fail_first))).await;
            t.handled(cmd.n);
            Ok(())
        }
        let tally = Tally::new();
        let grace = Duration::from_millis(500);
        let start = || async {
            Bus::builder()
                .transport(scope.transport("c29").await)
                .without_discovery()
                .handler("c29", slow)
                .route::<Work>("c29")
                .state(tally.clone())
                .shutdown_grace(grace)
                .endpoint("c29", |e| e.concurrency(4).prefetch(4))
                .start()
                .await
                .unwrap()
        };
        let bus = start().await;
        for n in 0..40u64 {
            tally.sent(n);
            let millis = if n % 10 == 0 { 5_000 } else { 50 };
            bus.send(Work {
                n,
                fail_first: millis,
            })
            .await
            .unwrap();
            tally.confirmed(n);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let report_ = bus.shutdown().await;
        assert!(
            t.elapsed() < grace + Duration::from_secs(1),
            "shutdown took {:?}",
            t.elapsed()
        );
        let bus = start().await;
        assert!(eventually(Duration::from_secs(60), || tally.all_confirmed_handled()).await);
        bus.shutdown().await;
        report(
            "C29 graceful shutdown with handlers in flight",
            "amqp",
            &format!("shutdown mid-stream (drained: {})", report_.drained),
            &tally.summary(),
            4,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e38_scheduled_messages_survive_the_sender_and_a_broker_restart() {
    scoped(
        "E38 scheduled messages across restarts",
        |scope| async move {
            let test = "E38 scheduled messages across restarts";
            let n = 100;
            let tally = Tally::new();
            // The endpoint exists before anything is scheduled for it.
            consumer(&scope, "e38", &tally, |e| e)
                .await
                .bus
                .shutdown()
                .await;
            let p = producer(&scope, "e38", Duration::from_secs(10)).await;
            let restart = async {
                let stopped = tokio::task::spawn_blocking(BrokerStopped::stop)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
                tokio::task::spawn_blocking(move || stopped.restore())
                    .await
                    .unwrap();
                println!("{test}: broker restarted");
            };
            let (bus, _) = scheduled_across_restart(test, p, &tally, n, restart, || async {
                consumer(&scope, "e38", &tally, |e| e).await.bus
            })
            .await;
            bus.shutdown().await;
            report(
                "E38 scheduled messages across sender and broker restart",
                "amqp",
                "sender gone; stop_app/start_app",
                &tally.summary(),
                0,
            );
        },
    )
    .await;
}
