//! The AMQP transport against the running RabbitMQ: competing consumers across processes,
//! fan-out, delayed retries that survive a restart, the error queue, unroutable commands,
//! timeouts with the broker unreachable, and interoperability with a plain AMQP client.
//!
//! Every test skips with a printed reason when RabbitMQ is unreachable, and fails instead when
//! `BUS_REQUIRE_BROKERS=1`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bus_core::{
    header, Bus, BusError, HandlerError, MessageContext, SendOptions, State, TransportError,
};
use bus_tests::broker::AmqpScope;
use bus_tests::messages::{Noticed, Work};
use bus_tests::proxy::Proxy;
use bus_tests::{eventually, record, Ledger};
use bus_transport_amqp::{AmqpConfig, AmqpError, AmqpTransport};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// Run a test body, then clean the scope up even if the body panicked.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(AmqpScope) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(scope) = AmqpScope::new(test).await else {
        return;
    };
    bus_tests::then_clean(body(scope.clone()), scope.cleanup()).await;
}

/// A bus on its own connection hosting `endpoint` with the `record` handler.
async fn host(
    scope: &AmqpScope,
    endpoint: &str,
    ledger: &Ledger,
    retries: (u32, u32, Duration),
) -> (Bus, AmqpTransport) {
    let transport = scope.transport(endpoint).await;
    let bus = Bus::builder()
        .transport(transport.clone())
        .without_discovery()
        .handler(endpoint.to_string(), record)
        .route::<Work>(endpoint)
        .state(ledger.clone())
        .endpoint(endpoint, move |e| {
            // Exact delays, so a waiting retry is found in its delay queue by name.
            e.immediate_retries(retries.0)
                .delayed_retries(retries.1, retries.2)
                .retry_jitter(0.0)
                .concurrency(8)
                .prefetch(32)
        })
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("start bus");
    (bus, transport)
}

/// A send-only bus routing `Work` to `endpoint`.
async fn sender(scope: &AmqpScope, endpoint: &str) -> Bus {
    Bus::builder()
        .transport(scope.transport("sender").await)
        .without_discovery()
        .route::<Work>(endpoint)
        .build()
        .await
        .expect("build sender")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_commands_over_two_processes_are_each_handled_once() {
    scoped("amqp competing processes", |scope| async move {
        let endpoint = "work";
        let dir = std::env::temp_dir().join(bus_tests::broker::unique("bus-workers"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut children = Vec::new();
        for i in 0..2 {
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bus-test-worker"))
                .env("WORKER_AMQP_URL", &scope.url)
                .env("WORKER_PREFIX", &scope.naming.queue_prefix)
                .env("WORKER_ENDPOINT", endpoint)
                .env("WORKER_OUT", dir.join(format!("w{i}.txt")))
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn worker");
            let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line))
                .await
                .expect("worker ready in time")
                .unwrap();
            assert_eq!(line.trim(), "ready");
            children.push(child);
        }
        let bus = sender(&scope, endpoint).await;
        const N: u64 = 10_000;
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
        let read = |i: usize| std::fs::read_to_string(dir.join(format!("w{i}.txt"))).unwrap_or_default();
        let done = eventually(Duration::from_secs(120), || read(0).lines().count() + read(1).lines().count() >= N as usize).await;
        // Give a duplicate, if any, time to show up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for mut c in children {
            let pid = c.id().unwrap() as i32;
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
        assert!(done, "not all commands handled in time");
        let mut seen: HashMap<u64, u32> = HashMap::new();
        let mut per_worker = [0usize; 2];
        for (i, count) in per_worker.iter_mut().enumerate() {
            for l in read(i).lines() {
                let n: u64 = l.split(' ').next().unwrap().parse().unwrap();
                *seen.entry(n).or_default() += 1;
                *count += 1;
            }
        }
        let lost = (0..N).filter(|n| !seen.contains_key(n)).count();
        let dups = seen.values().filter(|&&c| c > 1).count();
        println!("competing processes: sent {N}, handled {}, lost {lost}, duplicates {dups}, per worker {per_worker:?}, {:?}", seen.len(), started.elapsed());
        assert_eq!(lost, 0);
        assert_eq!(dups, 0);
        assert!(per_worker[0] > 0 && per_worker[1] > 0, "both processes shared the work: {per_worker:?}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

async fn notice(
    evt: Noticed,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    ledger.record(format!("{}/{}", ctx.endpoint(), evt.n), ctx.endpoint());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_fans_out_to_three_services() {
    scoped("amqp fan-out", |scope| async move {
        let ledger = Ledger::new();
        let mut buses = Vec::new();
        for ep in ["invoicing", "shipping", "audit"] {
            let bus = Bus::builder()
                .transport(scope.transport(ep).await)
                .without_discovery()
                .handler(ep, notice)
                .state(ledger.clone())
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
        tokio::time::sleep(Duration::from_millis(200)).await;
        for b in &buses {
            b.shutdown().await;
        }
        assert_eq!(ledger.total(), 600);
        assert_eq!(ledger.duplicates(), 0);
        for ep in ["invoicing", "shipping", "audit"] {
            assert_eq!(ledger.by_instance()[ep], 200, "{ep} got every event once");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_retry_survives_a_consumer_restart() {
    scoped("amqp delayed retry across restart", |scope| async move {
        let ledger = Ledger::new();
        let (bus, transport) =
            host(&scope, "billing", &ledger, (0, 1, Duration::from_secs(2))).await;
        bus.send(Work {
            n: 7,
            fail_first: 1,
        })
        .await
        .unwrap();
        assert!(eventually(Duration::from_secs(10), || bus.stats().delayed_retries == 1).await);
        // The service stops while the retry waits in the broker's delay queue.
        bus.shutdown().await;
        transport.close().await.unwrap();
        assert_eq!(ledger.total(), 0);
        let delay_queue = scope.naming.delay_queue("billing", Duration::from_secs(2));
        assert_eq!(
            scope.ready(&delay_queue).await,
            1,
            "the retry is held by the broker"
        );

        tokio::time::sleep(Duration::from_secs(1)).await;
        let (bus, transport) =
            host(&scope, "billing", &ledger, (0, 1, Duration::from_secs(2))).await;
        assert!(
            eventually(Duration::from_secs(15), || ledger.total() == 1).await,
            "the retry arrived after the restart"
        );
        bus.shutdown().await;
        transport.close().await.unwrap();
        assert_eq!(ledger.notes(), vec!["7 attempt 2".to_string()]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_land_in_the_error_queue_with_failure_headers() {
    scoped("amqp error queue", |scope| async move {
        let ledger = Ledger::new();
        let (bus, transport) = host(&scope, "payments", &ledger, (2, 0, Duration::ZERO)).await;
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
        transport.close().await.unwrap();

        let conn = scope.raw().await;
        let ch = conn.create_channel().await.unwrap();
        let got = ch
            .basic_get(
                scope.naming.error_queue("payments").as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("one message in the error queue");
        assert_eq!(
            got.delivery.data,
            serde_json::to_vec(&Work {
                n: 13,
                fail_first: u32::MAX
            })
            .unwrap(),
            "body byte-identical"
        );
        let p = &got.delivery.properties;
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("tests.Work"));
        let h = p.headers().as_ref().unwrap().inner();
        let text = |k: &str| match h.get(k) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("header {k}: {other:?}"),
        };
        assert_eq!(text(header::FAILURE_REASON), "handler-error");
        assert_eq!(text(header::FAILURE_ATTEMPTS), "3");
        assert_eq!(text(header::FAILURE_ENDPOINT), "payments");
        assert_eq!(text(header::FAILURE_ERROR), "work 13 failing on attempt 3");
        assert_eq!(text("tenant"), "acme", "original headers kept");
        assert!(!text(header::FAILURE_TIME).is_empty());
        assert!(
            ch.basic_get(
                scope.naming.queue("payments").as_str().into(),
                BasicGetOptions { no_ack: true }
            )
            .await
            .unwrap()
            .is_none(),
            "source queue empty"
        );
        let _ = conn.close(200, "done".into()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_command_is_a_typed_error() {
    scoped("amqp unroutable", |scope| async move {
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
        // An event nobody subscribes to is fine.
        bus.publish(Noticed { n: 1 }).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_the_broker_unreachable_fails_within_its_timeout() {
    scoped("amqp broker unreachable", |scope| async move {
        let target: SocketAddr = "127.0.0.1:5672".parse().unwrap();
        let proxy = Proxy::start(target).await.unwrap();
        let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
        let config = AmqpConfig::new(url)
            .naming(scope.naming.clone())
            .publish_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2));
        let transport = AmqpTransport::connect(config.clone()).await.unwrap();
        let bus = Bus::builder()
            .transport(transport.clone())
            .without_discovery()
            .build()
            .await
            .unwrap();
        bus.publish(Noticed { n: 1 }).await.unwrap();
        assert!(bus.health().transport_connected);

        proxy.cut();
        let started = Instant::now();
        let err = bus.publish(Noticed { n: 2 }).await.unwrap_err();
        let took = started.elapsed();
        println!("publish with the broker unreachable: {err} after {took:?}");
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

        // Connecting while it is unreachable fails within the connect timeout, too.
        let started = Instant::now();
        let err = AmqpTransport::connect(config).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                err,
                AmqpError::Connection { .. } | AmqpError::Timeout { .. }
            ),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_fast_and_never_show_the_password() {
    scoped("amqp wrong credentials", |scope| async move {
        let config = AmqpConfig::new(scope.url.clone()).credentials("guest", "canary-Pa55word-91");
        assert!(!format!("{config:?}").contains("canary-Pa55word-91"));
        let started = Instant::now();
        let err = AmqpTransport::connect(config).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, AmqpError::Authentication { .. }), "{err:?}");
        assert!(!err.to_string().contains("canary-Pa55word-91"), "{err}");
        assert!(
            !format!("{err:?}").contains("canary-Pa55word-91"),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_amqp_client_can_send_commands_and_read_events() {
    scoped("amqp interop", |scope| async move {
        let ledger = Ledger::new();
        let (bus, transport) = host(&scope, "orders", &ledger, (0, 0, Duration::ZERO)).await;

        // A client that is not this crate, following docs/wire-format.md.
        let conn = scope.raw().await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        let mut headers = FieldTable::default();
        headers.insert(
            "bus-conversation-id".into(),
            AMQPValue::LongString("conv-ext-1".into()),
        );
        let props = BasicProperties::default()
            .with_message_id("ext-1".into())
            .with_type("tests.Work".into())
            .with_content_type("application/json".into())
            .with_correlation_id("corr-ext".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = ch
            .basic_publish(
                "".into(),
                scope.naming.queue("orders").as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                br#"{"n": 99, "fail_first": 0}"#,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack() && confirm.take_message().is_none());
        assert!(
            eventually(Duration::from_secs(10), || ledger.count("99") == 1).await,
            "the Rust service handled it"
        );

        // The same client reads an event the bus publishes.
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        ch.queue_bind(
            q.name().clone(),
            scope.naming.events_exchange.as_str().into(),
            "tests.Noticed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut consumer = ch
            .basic_consume(
                q.name().clone(),
                "interop".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        bus.publish_with(
            Noticed { n: 5 },
            SendOptions::new().correlation_id("corr-evt"),
        )
        .await
        .unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let p = &d.properties;
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "tests.Noticed");
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "corr-evt");
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.message_id().as_ref().unwrap().as_str().len(),
            36,
            "a UUID message id"
        );
        assert!(p.timestamp().is_some());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&d.data).unwrap(),
            serde_json::json!({"n": 5})
        );
        d.ack(BasicAckOptions::default()).await.unwrap();

        bus.shutdown().await;
        transport.close().await.unwrap();
        let _ = conn.close(200, "done".into()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_with_a_delivery_limit_work_end_to_end() {
    scoped("amqp quorum queues", |scope| async move {
        let ledger = Ledger::new();
        let transport = AmqpTransport::connect(scope.config("quorum").quorum_queues(5))
            .await
            .unwrap();
        let bus = Bus::builder()
            .transport(transport.clone())
            .without_discovery()
            .handler("quorum-ep", record)
            .route::<Work>("quorum-ep")
            .state(ledger.clone())
            .endpoint("quorum-ep", |e| {
                e.immediate_retries(1).delayed_retries(0, Duration::ZERO)
            })
            .start()
            .await
            .unwrap();
        for n in 0..50 {
            bus.send(Work {
                n,
                fail_first: u32::from(n == 7),
            })
            .await
            .unwrap();
        }
        assert!(
            eventually(Duration::from_secs(20), || ledger.distinct() == 50).await,
            "handled {}",
            ledger.distinct()
        );
        bus.shutdown().await;
        transport.close().await.unwrap();
        assert_eq!(ledger.duplicates(), 0);

        // The broker really made a quorum queue.
        let out = std::process::Command::new("rabbitmqctl")
            .args(["list_queues", "-q", "--no-table-headers", "name", "type"])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        let queue = scope.naming.queue("quorum-ep");
        assert!(
            listing
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [queue.as_str(), "quorum"]),
            "{listing}"
        );
    })
    .await;
}
