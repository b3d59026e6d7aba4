//! The Redis Streams transport against the running Redis: the round trip of body and headers,
//! competing consumers, fan-out, delayed retries (held in Redis across a restart of the
//! service), the error stream, unroutable commands, nack and reclaim of a dead consumer's
//! deliveries, recovery after Redis lost its keys, and timeouts with Redis unreachable.
//!
//! Every test runs under its own key prefix, deleted afterwards even when the test fails. Every
//! test skips with a printed reason when Redis is unreachable, and fails instead when
//! `BUS_REQUIRE_BROKERS=1`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bus_core::{
    header, Body, Bus, BusError, Destination, EndpointTopology, Envelope, HandlerError, Headers,
    MessageContext, Outgoing, SendOptions, State, SubscribeOptions, Subscription, Topology,
    Transport, TransportError,
};
use bus_tests::messages::{Noticed, Work};
use bus_tests::proxy::Proxy;
use bus_tests::redis_broker::RedisScope;
use bus_tests::tls::{refused_quickly, tls_proxy, Ca};
use bus_tests::{eventually, Ledger};
use bus_transport_redis::{RedisConfig, RedisError, RedisTransport};
use redis::AsyncCommands;

/// Run a test body, then delete the scope's keys even if the body panicked.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(RedisScope) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(scope) = RedisScope::new(test).await else {
        return;
    };
    let result =
        tokio::time::timeout(Duration::from_secs(120), tokio::spawn(body(scope.clone()))).await;
    scope.cleanup().await;
    match result {
        Err(_) => panic!("{test}: no result within 120 s"),
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Ok(Ok(())) => {}
    }
}

/// Which bus instance handled a message.
#[derive(Clone)]
struct Instance(String);

async fn record(
    cmd: Work,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
    State(me): State<Instance>,
) -> Result<(), HandlerError> {
    if ctx.attempt() <= cmd.fail_first {
        return Err(HandlerError::new(format!(
            "work {} failing on attempt {}",
            cmd.n,
            ctx.attempt()
        )));
    }
    ledger.record(cmd.n.to_string(), &me.0);
    ledger.note(format!("{} attempt {}", cmd.n, ctx.attempt()));
    Ok(())
}

/// A bus on its own transport hosting `endpoint` with the `record` handler.
async fn host(
    scope: &RedisScope,
    endpoint: &str,
    instance: &str,
    ledger: &Ledger,
    retries: (u32, u32, Duration),
) -> Bus {
    Bus::builder()
        .transport(scope.transport(instance).await)
        .without_discovery()
        .handler(endpoint.to_string(), record)
        .route::<Work>(endpoint)
        .state(ledger.clone())
        .state(Instance(instance.to_string()))
        .endpoint(endpoint, move |e| {
            e.immediate_retries(retries.0)
                .delayed_retries(retries.1, retries.2)
                .concurrency(8)
                .prefetch(32)
        })
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("start bus")
}

/// A send-only bus routing `Work` to `endpoint`.
async fn sender(scope: &RedisScope, endpoint: &str) -> Bus {
    Bus::builder()
        .transport(scope.transport("sender").await)
        .without_discovery()
        .route::<Work>(endpoint)
        .build()
        .await
        .expect("build sender")
}

fn topology(endpoint: &str, events: &[&str]) -> Topology {
    Topology {
        endpoints: vec![EndpointTopology {
            name: endpoint.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            commands: vec![],
        }],
    }
}

fn work_envelope(id: &str) -> Envelope {
    Envelope::from_bytes(
        Headers {
            message_id: id.into(),
            message_type: "tests.Work".into(),
            content_type: "application/json".into(),
            ..Headers::default()
        },
        format!(r#"{{"n":0,"id":"{id}"}}"#),
    )
}

fn to(endpoint: &str, envelope: Envelope) -> Outgoing {
    Outgoing::new(Destination::Endpoint(endpoint.into()), envelope)
}

async fn next(sub: &mut Box<dyn Subscription>, within: Duration) -> Option<bus_core::Delivery> {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(e))) => panic!("subscription error: {e}"),
        Ok(None) => panic!("subscription closed"),
        Err(_) => None,
    }
}

/// Entries in a stream (0 when it does not exist).
async fn xlen(raw: &mut redis::aio::MultiplexedConnection, key: String) -> usize {
    redis::cmd("XLEN").arg(key).query_async(raw).await.unwrap()
}

fn body_of(env: &Envelope) -> Vec<u8> {
    match &env.body {
        Body::Bytes(b) => b.to_vec(),
        other => panic!("expected bytes, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_headers_survive_the_round_trip() {
    scoped("redis round trip", |scope| async move {
        let t = scope.transport("rt").await;
        t.declare(&topology("rt", &[])).await.unwrap();
        let mut sub = t
            .subscribe("rt", SubscribeOptions { prefetch: 4 })
            .await
            .unwrap();

        let mut custom = BTreeMap::new();
        custom.insert("bus-conversation-id".to_string(), "会話-🚚-ünï".to_string());
        custom.insert("empty".to_string(), String::new());
        custom.insert("big".to_string(), "x".repeat(4096));
        custom.insert("Ünïcödé-näme".to_string(), "ωμέγα".to_string());
        let headers = Headers {
            message_id: "0190a3b4-0000-7000-8000-000000000001".into(),
            message_type: "tests.Binary".into(),
            content_type: "application/octet-stream".into(),
            correlation_id: Some("corr-€".into()),
            sent_at: Some(UNIX_EPOCH + Duration::from_millis(1_760_000_000_123)),
            custom,
        };
        let body: Vec<u8> = (0..=255u8).chain([0, 0, 255, b'\r', b'\n']).collect();
        t.send(to(
            "rt",
            Envelope::from_bytes(headers.clone(), body.clone()),
        ))
        .await
        .unwrap();

        let d = next(&mut sub, Duration::from_secs(5))
            .await
            .expect("delivered");
        assert_eq!(*d.envelope().headers, headers, "headers equal");
        assert_eq!(body_of(d.envelope()), body, "body byte-identical");
        assert_eq!(d.delivery_count(), 1);
        assert!(!d.redelivered());
        d.ack().await.unwrap();

        // An acked entry is removed from the stream and from the pending list.
        let mut raw = scope.raw().await;
        let len: usize = xlen(&mut raw, scope.keys.stream("rt")).await;
        assert_eq!(len, 0, "acked entries are deleted");
        drop(sub);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_commands_over_two_instances_are_each_handled_once() {
    scoped("redis competing consumers", |scope| async move {
        let ledger = Ledger::new();
        let a = host(&scope, "work", "a", &ledger, (0, 0, Duration::ZERO)).await;
        let b = host(&scope, "work", "b", &ledger, (0, 0, Duration::ZERO)).await;
        let bus = sender(&scope, "work").await;
        const N: u64 = 2_000;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let bus = bus.clone();
            tasks.push(tokio::spawn(async move {
                for n in (t..N).step_by(8) {
                    bus.send(Work { n, fail_first: 0 }).await.expect("send");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let done = eventually(Duration::from_secs(60), || ledger.distinct() == N as usize).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.shutdown().await;
        b.shutdown().await;
        let per = ledger.by_instance();
        let lost = (0..N).filter(|n| ledger.count(&n.to_string()) == 0).count();
        println!(
            "redis competing consumers: sent {N}, handled {}, lost {lost}, duplicates {}, per instance {per:?}, {:?}",
            ledger.total(),
            ledger.duplicates(),
            started.elapsed()
        );
        assert!(done, "not all commands handled in time");
        assert_eq!(lost, 0);
        assert_eq!(ledger.duplicates(), 0);
        assert!(
            per.get("a").copied().unwrap_or(0) > 0 && per.get("b").copied().unwrap_or(0) > 0,
            "both instances shared the work: {per:?}"
        );
        let mut raw = scope.raw().await;
        let len: usize = xlen(&mut raw, scope.keys.stream("work")).await;
        assert_eq!(len, 0, "the stream is empty once everything is acked");
    })
    .await;
}

async fn notice(
    evt: Noticed,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
    State(me): State<Instance>,
) -> Result<(), HandlerError> {
    ledger.record(format!("{}/{}", ctx.endpoint(), evt.n), ctx.endpoint());
    ledger.note(me.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_fans_out_to_three_services_and_instances_of_one_compete() {
    scoped("redis fan-out", |scope| async move {
        let ledger = Ledger::new();
        let mut buses = Vec::new();
        // Two instances of `shipping`: they compete, the service still gets each event once.
        for (ep, instance) in [
            ("invoicing", "invoicing-1"),
            ("shipping", "shipping-1"),
            ("shipping", "shipping-2"),
            ("audit", "audit-1"),
        ] {
            let bus = Bus::builder()
                .transport(scope.transport(instance).await)
                .without_discovery()
                .handler(ep, notice)
                .state(ledger.clone())
                .state(Instance(instance.to_string()))
                .start()
                .await
                .unwrap();
            buses.push(bus);
        }
        let publisher = Bus::builder()
            .transport(scope.transport("publisher").await)
            .without_discovery()
            .build()
            .await
            .unwrap();
        for n in 0..200 {
            publisher.publish(Noticed { n }).await.unwrap();
        }
        assert!(
            eventually(Duration::from_secs(30), || ledger.total() == 600).await,
            "got {}",
            ledger.total()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        for b in &buses {
            b.shutdown().await;
        }
        assert_eq!(ledger.total(), 600);
        assert_eq!(ledger.duplicates(), 0);
        for ep in ["invoicing", "shipping", "audit"] {
            assert_eq!(ledger.by_instance()[ep], 200, "{ep} got every event once");
        }
        let notes = ledger.notes();
        for instance in ["shipping-1", "shipping-2"] {
            assert!(
                notes.iter().any(|n| n == instance),
                "{instance} took part in the work"
            );
        }
        let mut raw = scope.raw().await;
        let subscribers: Vec<String> = raw
            .smembers(scope.keys.subscribers("tests.Noticed"))
            .await
            .unwrap();
        assert_eq!(subscribers.len(), 3, "{subscribers:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_retry_is_held_in_redis_across_a_service_restart() {
    scoped("redis delayed retry", |scope| async move {
        let ledger = Ledger::new();
        let delay = Duration::from_secs(2);
        let bus = host(&scope, "billing", "billing-1", &ledger, (0, 1, delay)).await;
        let sent = Instant::now();
        bus.send(Work {
            n: 7,
            fail_first: 1,
        })
        .await
        .unwrap();
        assert!(eventually(Duration::from_secs(10), || bus.stats().delayed_retries == 1).await);
        // The service stops while the retry waits in Redis.
        bus.shutdown().await;
        assert_eq!(ledger.total(), 0);
        let mut raw = scope.raw().await;
        let held: usize = raw.zcard(scope.keys.delayed("billing")).await.unwrap();
        assert_eq!(held, 1, "the retry is held by Redis");
        let in_stream: usize = xlen(&mut raw, scope.keys.stream("billing")).await;
        assert_eq!(in_stream, 0, "the original was acked");

        let bus = host(&scope, "billing", "billing-2", &ledger, (0, 1, delay)).await;
        assert!(
            eventually(Duration::from_secs(15), || ledger.total() == 1).await,
            "the retry arrived after the restart"
        );
        let took = sent.elapsed();
        bus.shutdown().await;
        assert!(took >= delay, "not before its delay: {took:?}");
        assert_eq!(ledger.notes(), vec!["7 attempt 2".to_string()]);
        let held: usize = raw.zcard(scope.keys.delayed("billing")).await.unwrap();
        assert_eq!(held, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_land_in_the_error_stream_with_failure_headers() {
    scoped("redis error stream", |scope| async move {
        let ledger = Ledger::new();
        let bus = host(
            &scope,
            "payments",
            "payments-1",
            &ledger,
            (2, 0, Duration::ZERO),
        )
        .await;
        bus.send_with(
            Work {
                n: 13,
                fail_first: u32::MAX,
            },
            SendOptions::new().header("tenant", "acme"),
        )
        .await
        .unwrap();
        assert!(eventually(Duration::from_secs(15), || bus.stats().dead_lettered == 1).await);
        bus.shutdown().await;

        let mut raw = scope.raw().await;
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(scope.keys.error_stream("payments"))
            .arg("-")
            .arg("+")
            .query_async(&mut raw)
            .await
            .unwrap();
        let entries = entries(reply);
        assert_eq!(entries.len(), 1, "one copy in the error stream");
        let f = &entries[0];
        let text = |k: &str| {
            String::from_utf8(f.get(k).unwrap_or_else(|| panic!("field {k}")).clone()).unwrap()
        };
        assert_eq!(
            f["body"],
            serde_json::to_vec(&Work {
                n: 13,
                fail_first: u32::MAX
            })
            .unwrap(),
            "body byte-identical"
        );
        assert_eq!(text("bus-message-type"), "tests.Work");
        assert_eq!(text(header::FAILURE_REASON), "handler-error");
        assert_eq!(text(header::FAILURE_ATTEMPTS), "3");
        assert_eq!(text(header::FAILURE_ENDPOINT), "payments");
        assert_eq!(text(header::FAILURE_ERROR), "work 13 failing on attempt 3");
        assert_eq!(text("tenant"), "acme", "original headers kept");
        assert!(!text(header::FAILURE_TIME).is_empty());
        let in_stream: usize = xlen(&mut raw, scope.keys.stream("payments")).await;
        assert_eq!(in_stream, 0, "the source stream is empty");
    })
    .await;
}

/// Field maps of an `XRANGE` reply.
fn entries(reply: redis::Value) -> Vec<BTreeMap<String, Vec<u8>>> {
    let redis::Value::Array(items) = reply else {
        panic!("{reply:?}")
    };
    items
        .into_iter()
        .map(|item| {
            let redis::Value::Array(mut parts) = item else {
                panic!("{item:?}")
            };
            let redis::Value::Array(flat) = parts.pop().unwrap() else {
                panic!("fields")
            };
            let mut map = BTreeMap::new();
            let mut it = flat.into_iter();
            while let (Some(redis::Value::BulkString(k)), Some(redis::Value::BulkString(v))) =
                (it.next(), it.next())
            {
                map.insert(String::from_utf8(k).unwrap(), v);
            }
            map
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_command_is_a_typed_error() {
    scoped("redis unroutable", |scope| async move {
        let bus = sender(&scope, "nobody-declared-this").await;
        let err = bus
            .send(Work {
                n: 1,
                fail_first: 0,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, BusError::Transport(TransportError::Unroutable(_))),
            "{err}"
        );
        // Nothing was written for it.
        let mut raw = scope.raw().await;
        let exists: bool = raw
            .exists(scope.keys.stream("nobody-declared-this"))
            .await
            .unwrap();
        assert!(!exists);
        // A delayed send to it is unroutable too.
        let t = scope.transport("raw").await;
        let mut out = to("nobody-declared-this", work_envelope("d-1"));
        out.delay = Some(Duration::from_secs(1));
        assert!(matches!(
            t.send(out).await,
            Err(TransportError::Unroutable(_))
        ));
        // An event nobody subscribes to is fine.
        bus.publish(Noticed { n: 1 }).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_redelivers_promptly_and_the_count_rises() {
    scoped("redis nack", |scope| async move {
        let t = scope.transport("nack").await;
        t.declare(&topology("nacks", &[])).await.unwrap();
        let mut sub = t
            .subscribe("nacks", SubscribeOptions { prefetch: 1 })
            .await
            .unwrap();
        t.send(to("nacks", work_envelope("n-1"))).await.unwrap();
        for expected in 1..=3u32 {
            let started = Instant::now();
            let d = next(&mut sub, Duration::from_secs(5))
                .await
                .expect("delivered");
            assert_eq!(d.envelope().headers.message_id, "n-1");
            assert_eq!(d.delivery_count(), expected);
            assert_eq!(d.redelivered(), expected > 1);
            if expected > 1 {
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "redelivered promptly: {:?}",
                    started.elapsed()
                );
            }
            if expected < 3 {
                d.nack().await.unwrap();
            } else {
                d.ack().await.unwrap();
            }
        }
        assert!(next(&mut sub, Duration::from_millis(600)).await.is_none());

        // A delivery dropped unsettled comes back too.
        t.send(to("nacks", work_envelope("n-2"))).await.unwrap();
        let d = next(&mut sub, Duration::from_secs(5)).await.unwrap();
        drop(d);
        let d = next(&mut sub, Duration::from_secs(5))
            .await
            .expect("an abandoned delivery is redelivered");
        assert_eq!(d.envelope().headers.message_id, "n-2");
        assert_eq!(d.delivery_count(), 2);
        d.ack().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_deliveries_are_taken_over_after_the_idle_time() {
    scoped("redis reclaim", |scope| async move {
        let idle = Duration::from_secs(2);
        let config = |name: &str| scope.config(name).reclaim_idle(idle);
        let doomed = RedisTransport::connect(config("doomed")).await.unwrap();
        doomed.declare(&topology("orders", &[])).await.unwrap();
        for i in 0..5 {
            doomed
                .send(to("orders", work_envelope(&format!("o-{i}"))))
                .await
                .unwrap();
        }
        // A consumer takes all five and dies: its deliveries are never settled, not even
        // returned (as when its process is killed).
        let mut sub = doomed
            .subscribe("orders", SubscribeOptions { prefetch: 10 })
            .await
            .unwrap();
        for _ in 0..5 {
            let d = next(&mut sub, Duration::from_secs(5)).await.expect("taken");
            std::mem::forget(d);
        }
        drop(sub);
        let died = Instant::now();

        let survivor = RedisTransport::connect(config("survivor")).await.unwrap();
        let mut sub = survivor
            .subscribe("orders", SubscribeOptions { prefetch: 10 })
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            let d = next(&mut sub, Duration::from_secs(10))
                .await
                .expect("taken over");
            assert!(
                died.elapsed() >= idle - Duration::from_millis(100),
                "not before the idle time: {:?}",
                died.elapsed()
            );
            assert!(d.redelivered());
            assert_eq!(d.delivery_count(), 2);
            got.push(d.envelope().headers.message_id.clone());
            d.ack().await.unwrap();
        }
        got.sort();
        assert_eq!(got, ["o-0", "o-1", "o-2", "o-3", "o-4"]);
        println!(
            "redis reclaim: 5 deliveries of a dead consumer taken over after {:?}",
            died.elapsed()
        );
        let mut raw = scope.raw().await;
        let len: usize = xlen(&mut raw, scope.keys.stream("orders")).await;
        assert_eq!(len, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_keeps_its_delivery_past_the_idle_time() {
    slow_handler_keeps_its_delivery(false).await;
}

/// A shutdown cancels the subscription at once, while handlers still run: what they hold is
/// still renewed until they settle it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_keeps_its_delivery_after_its_subscription_is_cancelled() {
    slow_handler_keeps_its_delivery(true).await;
}

async fn slow_handler_keeps_its_delivery(cancel_first: bool) {
    scoped("redis renew", |scope| async move {
        let idle = Duration::from_millis(900);
        let a = RedisTransport::connect(scope.config("a").reclaim_idle(idle))
            .await
            .unwrap();
        let b = RedisTransport::connect(scope.config("b").reclaim_idle(idle))
            .await
            .unwrap();
        a.declare(&topology("slow", &[])).await.unwrap();
        let mut sub_a = a
            .subscribe("slow", SubscribeOptions { prefetch: 1 })
            .await
            .unwrap();
        a.send(to("slow", work_envelope("s-1"))).await.unwrap();
        let d = next(&mut sub_a, Duration::from_secs(5)).await.unwrap();
        if cancel_first {
            sub_a.cancel().await;
        }
        let mut sub_b = b
            .subscribe("slow", SubscribeOptions { prefetch: 1 })
            .await
            .unwrap();
        // Three idle times pass while `a` is still working on it: `b` must not take it.
        assert!(next(&mut sub_b, idle * 3).await.is_none());
        d.ack().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_resumes_after_redis_lost_its_keys() {
    scoped("redis keys lost", |scope| async move {
        let ledger = Ledger::new();
        let bus = host(
            &scope,
            "ledger",
            "ledger-1",
            &ledger,
            (0, 0, Duration::ZERO),
        )
        .await;
        bus.send(Work {
            n: 1,
            fail_first: 0,
        })
        .await
        .unwrap();
        assert!(eventually(Duration::from_secs(10), || ledger.total() == 1).await);
        // As after a restart of a Redis without persistence.
        scope.cleanup().await;
        // Senders see an unroutable command until the subscription declared it again.
        let started = Instant::now();
        while let Err(e) = bus
            .send(Work {
                n: 2,
                fail_first: 0,
            })
            .await
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the endpoint was not declared again: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "redis keys lost: sending again after {:?}",
            started.elapsed()
        );
        assert!(
            eventually(Duration::from_secs(10), || ledger.count("2") >= 1).await,
            "and consumed again"
        );
        bus.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_redis_unreachable_fails_within_its_timeout() {
    scoped("redis unreachable", |scope| async move {
        let target: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let proxy = Proxy::start(target).await.unwrap();
        let config = RedisConfig::new(format!("redis://{}", proxy.addr()))
            .key_prefix(scope.keys.prefix.clone())
            .operation_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2));
        let transport = RedisTransport::connect(config.clone()).await.unwrap();
        let bus = Bus::builder()
            .transport(transport.clone())
            .without_discovery()
            .build()
            .await
            .unwrap();
        bus.publish(Noticed { n: 1 }).await.unwrap();
        assert!(bus.health().transport_connected);

        proxy.cut();
        for n in 2..4 {
            let started = Instant::now();
            let err = bus.publish(Noticed { n }).await.unwrap_err();
            let took = started.elapsed();
            println!("publish with Redis unreachable: {err} after {took:?}");
            assert!(took < Duration::from_secs(4), "returned after {took:?}");
            assert!(
                matches!(
                    err,
                    BusError::Transport(
                        TransportError::Timeout { .. } | TransportError::Connection { .. }
                    )
                ),
                "{err}"
            );
        }
        assert!(!bus.health().transport_connected);

        // Connecting while it is unreachable fails within the connect timeout, too.
        let started = Instant::now();
        let err = RedisTransport::connect(config).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                err,
                RedisError::Connection { .. } | RedisError::Timeout { .. }
            ),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_fast_and_never_shows() {
    scoped("redis wrong password", |scope| async move {
        let url = scope
            .url
            .replacen("redis://", "redis://:canary-Pa55word-91@", 1);
        let config = RedisConfig::new(url);
        assert!(!format!("{config:?}").contains("canary-Pa55word-91"));
        let started = Instant::now();
        let err = RedisTransport::connect(config).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        println!("wrong password: {err}");
        assert!(
            matches!(
                err,
                RedisError::Authentication { .. } | RedisError::Connection { .. }
            ),
            "{err:?}"
        );
        assert!(!err.to_string().contains("canary-Pa55word-91"), "{err}");
        assert!(
            !format!("{err:?}").contains("canary-Pa55word-91"),
            "{err:?}"
        );
        let transport_error = TransportError::from(err);
        assert!(!transport_error.to_string().contains("canary-Pa55word-91"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_body_is_refused_with_a_clear_error() {
    scoped("redis typed body", |scope| async move {
        let t = scope.transport("typed").await;
        t.declare(&topology("typed", &[])).await.unwrap();
        let envelope = Envelope {
            headers: Arc::new(Headers {
                message_id: "x".into(),
                message_type: "tests.Noticed".into(),
                content_type: "application/json".into(),
                ..Headers::default()
            }),
            body: Body::Message(Arc::new(Noticed { n: 1 })),
        };
        let err = t.send(to("typed", envelope)).await.unwrap_err();
        assert!(err.to_string().contains("needs bytes"), "{err}");
    })
    .await;
}

/// `rediss://` through a TLS-terminating proxy in front of the running Redis, with a
/// certificate authority made by the test: the right CA carries a message end to end; a wrong
/// CA, or a host name the certificate does not name, fails to connect within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connects_with_the_right_ca_and_fails_fast_otherwise() {
    scoped("redis TLS", |scope| async move {
        let target = scope
            .url
            .trim_start_matches("redis://")
            .split(['/', '@'])
            .find(|part| part.contains(':') && !part.starts_with(':'))
            .unwrap_or("127.0.0.1:6379")
            .to_string();
        let target: SocketAddr = tokio::net::lookup_host(target.as_str())
            .await
            .expect("the Redis address")
            .next()
            .expect("an address");
        let good = Ca::new("bus Redis test CA");
        let proxy = tls_proxy(&good, target).await;
        let dir = std::env::temp_dir().join(bus_tests::broker::unique("bus-redis-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let (good_ca, _, _) = good.write_files(&dir);
        let wrong_ca = dir.join("wrong.pem");
        std::fs::write(&wrong_ca, Ca::new("some other CA").pem).unwrap();
        let config = |host: &str, ca: &std::path::Path| {
            RedisConfig::new(format!("rediss://{host}:{}", proxy.port()))
                .key_prefix(scope.keys.prefix.clone())
                .consumer_name("tls")
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(5))
                .tls_ca_file(ca)
        };

        let t = RedisTransport::connect(config("localhost", &good_ca))
            .await
            .expect("TLS with the right CA");
        t.declare(&topology("tls-work", &[])).await.unwrap();
        let mut sub = t
            .subscribe("tls-work", SubscribeOptions { prefetch: 4 })
            .await
            .unwrap();
        let headers = Headers {
            message_id: "tls-1".into(),
            message_type: "tests.Work".into(),
            content_type: "application/json".into(),
            ..Headers::default()
        };
        t.send(to(
            "tls-work",
            Envelope::from_bytes(headers, b"{\"n\":1,\"fail_first\":0}".to_vec()),
        ))
        .await
        .expect("sent over TLS");
        let d = next(&mut sub, Duration::from_secs(5))
            .await
            .expect("delivered over TLS");
        assert_eq!(d.envelope().headers.message_id, "tls-1");
        d.ack().await.unwrap();
        drop(sub);
        drop(t);

        for (what, config) in [
            ("the wrong CA", config("localhost", &wrong_ca)),
            (
                "a host name the certificate does not name",
                config("127.0.0.1", &good_ca),
            ),
        ] {
            let limit = Duration::from_secs(8);
            refused_quickly(what, limit, RedisTransport::connect(config)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
