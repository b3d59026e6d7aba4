//! The NATS JetStream transport against the running server: round trip of body and headers,
//! competing instances, fan-out, delayed retries that survive a restart, the error stream,
//! the delivery limit, unroutable commands, deduplication, progress for long handlers,
//! reconnects, an unreachable server, credentials, TLS (on a server of the test's own), and
//! interoperability with a plain client.
//!
//! Every test skips with a printed reason when NATS is unreachable, and fails instead when
//! `BUS_REQUIRE_BROKERS=1`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bus_core::{
    header, Body, Bus, BusError, Destination, EndpointTopology, Envelope, FailureReason,
    HandlerError, Headers, MessageContext, Outgoing, SendOptions, State, SubscribeOptions,
    Topology, Transport, TransportError,
};
use bus_tests::messages::{Noticed, Work};
use bus_tests::nats_broker::NatsScope;
use bus_tests::nats_server::Nats;
use bus_tests::proxy::Proxy;
use bus_tests::server_process::{ServerKind, ServerProcess};
use bus_tests::tls::refused_quickly;
use bus_tests::tls::Ca;
use bus_tests::{eventually, record, Ledger};
use bus_transport_nats::async_nats;
use bus_transport_nats::{NatsConfig, NatsError, NatsTransport};
use futures_lite::StreamExt;

/// Run a test body, then delete the scope's streams even if the body panicked.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(NatsScope) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(scope) = NatsScope::new(test).await else {
        return;
    };
    bus_tests::then_clean(body(scope.clone()), scope.cleanup()).await;
}

/// A bus on its own connection hosting `endpoint` with the `record` handler.
async fn host(
    config: NatsConfig,
    endpoint: &str,
    ledger: &Ledger,
    retries: (u32, u32, Duration),
) -> (Bus, NatsTransport) {
    let transport = NatsTransport::connect(config).await.expect("connect");
    let bus = Bus::builder()
        .transport(transport.clone())
        .without_discovery()
        .handler(endpoint.to_string(), record)
        .route::<Work>(endpoint)
        .state(ledger.clone())
        .endpoint(endpoint, move |e| {
            e.immediate_retries(retries.0)
                .delayed_retries(retries.1, retries.2)
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
async fn sender(scope: &NatsScope, endpoint: &str) -> (Bus, NatsTransport) {
    let transport = scope.transport("sender").await;
    let bus = Bus::builder()
        .transport(transport.clone())
        .without_discovery()
        .route::<Work>(endpoint)
        .build()
        .await
        .expect("build sender");
    (bus, transport)
}

fn one_endpoint(name: &str, events: &[&str]) -> Topology {
    Topology {
        endpoints: vec![EndpointTopology {
            name: name.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            commands: vec![],
        }],
    }
}

fn tricky_headers(id: &str, message_type: &str) -> Headers {
    let mut custom = BTreeMap::new();
    custom.insert(header::CONVERSATION_ID.into(), "conv-ü".into());
    custom.insert("unicode".into(), "grüße, 世界 ✓ — \u{1F680}".into());
    custom.insert("empty".into(), String::new());
    custom.insert("multi-line".into(), "first\r\nsecond\nthird".into());
    custom.insert("padded".into(), "  spaces around\t".into());
    custom.insert("colon".into(), "a: b: c".into());
    custom.insert("big".into(), "0123456789abcdef".repeat(256));
    Headers {
        message_id: id.into(),
        message_type: message_type.to_string().into(),
        content_type: "application/octet-stream".into(),
        correlation_id: Some("corr-1".into()),
        sent_at: Some(SystemTime::now()),
        custom,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_headers_round_trip_for_commands_and_events() {
    scoped("nats round trip", |scope| async move {
        let t = scope.transport("round-trip").await;
        t.declare(&one_endpoint("rt", &["tests.Noticed"]))
            .await
            .unwrap();
        let mut sub = t
            .subscribe("rt", SubscribeOptions { prefetch: 4 })
            .await
            .unwrap();
        let body: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xfe]).collect();
        for (destination, id, kind) in [
            (Destination::Endpoint("rt".into()), "id-cmd", "tests.Work"),
            (
                Destination::Event("tests.Noticed".into()),
                "id-evt",
                "tests.Noticed",
            ),
        ] {
            let headers = tricky_headers(id, kind);
            t.send(Outgoing {
                destination,
                envelope: Envelope::from_bytes(headers.clone(), body.clone()),
                delay: None,
                deliver_at: None,
            })
            .await
            .unwrap();
            let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("delivered in time")
                .unwrap()
                .unwrap();
            assert_eq!(*d.envelope().headers, headers, "headers of {id}");
            match &d.envelope().body {
                Body::Bytes(b) => assert_eq!(b.as_ref(), body.as_slice(), "body of {id}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(d.delivery_count(), 1);
            assert!(!d.redelivered());
            d.ack().await.unwrap();
        }
        // An empty body travels too.
        t.send(Outgoing {
            destination: Destination::Endpoint("rt".into()),
            envelope: Envelope::from_bytes(tricky_headers("id-empty", "tests.Work"), Vec::new()),
            delay: None,
            deliver_at: None,
        })
        .await
        .unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(&d.envelope().body, Body::Bytes(b) if b.is_empty()));
        // A nack redelivers, counted.
        d.nack().await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.envelope().headers.message_id, "id-empty");
        assert_eq!(d.delivery_count(), 2);
        assert!(d.redelivered());
        d.ack().await.unwrap();
        sub.cancel().await;
        drop(sub);
        assert_eq!(scope.stored(&scope.naming.endpoint_stream("rt")).await, 0);
        t.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscription_gets_later_events_only_and_declaring_again_changes_nothing() {
    scoped("nats later subscription", |scope| async move {
        let t = scope.transport("later").await;
        let event = |id: &str| Outgoing {
            destination: Destination::Event("tests.Noticed".into()),
            envelope: Envelope::from_bytes(tricky_headers(id, "tests.Noticed"), b"{}".to_vec()),
            delay: None,
            deliver_at: None,
        };
        // Another service subscribes first, so the event is stored.
        t.declare(&one_endpoint("early", &["tests.Noticed"]))
            .await
            .unwrap();
        t.declare(&one_endpoint("late", &[])).await.unwrap();
        t.send(event("before")).await.unwrap();
        // The late service now subscribes too (its stream gains a source), twice over.
        for _ in 0..2 {
            t.declare(&one_endpoint("late", &["tests.Noticed"]))
                .await
                .unwrap();
        }
        t.send(event("after")).await.unwrap();
        let mut sub = t
            .subscribe("late", SubscribeOptions { prefetch: 4 })
            .await
            .unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the later event arrives")
            .unwrap()
            .unwrap();
        assert_eq!(d.envelope().headers.message_id, "after");
        d.ack().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(700), sub.next())
                .await
                .is_err(),
            "nothing else: the earlier event is not replayed, and no source was added twice"
        );
        assert_eq!(
            scope.stored(&scope.naming.endpoint_stream("early")).await,
            2
        );
        drop(sub);
        t.close().await.unwrap();
    })
    .await;
}

/// With acks not confirmed (sent, not awaited) every command is still handled once and the
/// work-queue stream empties: the acks reach the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_acks_still_settle_every_delivery() {
    scoped("nats unconfirmed acks", |scope| async move {
        let endpoint = "fast-acks";
        let ledger = Ledger::new();
        let config = scope.config("fast").confirm_acks(false);
        let (bus_a, ta) = host(config, endpoint, &ledger, (0, 0, Duration::ZERO)).await;
        let (bus, ts) = sender(&scope, endpoint).await;
        const N: u64 = 500;
        for n in 0..N {
            bus.send(Work { n, fail_first: 0 }).await.expect("send");
        }
        let done = eventually(Duration::from_secs(30), || ledger.total() >= N).await;
        assert!(done, "handled {} of {N}", ledger.total());
        let stream = scope.naming.endpoint_stream(endpoint);
        let mut left = u64::MAX;
        for _ in 0..50 {
            left = scope.stored(&stream).await;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bus_a.shutdown().await;
        assert_eq!(left, 0, "every ack reached the server");
        assert_eq!(ledger.distinct(), N as usize);
        assert_eq!(ledger.duplicates(), 0);
        ta.close().await.unwrap();
        ts.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_two_thousand_commands_each_handled_once() {
    scoped("nats competing consumers", |scope| async move {
        let endpoint = "work";
        let (a, b) = (Ledger::new(), Ledger::new());
        let (bus_a, ta) = host(scope.config("a"), endpoint, &a, (0, 0, Duration::ZERO)).await;
        let (bus_b, tb) = host(scope.config("b"), endpoint, &b, (0, 0, Duration::ZERO)).await;
        let (bus, ts) = sender(&scope, endpoint).await;
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
        let done = eventually(Duration::from_secs(60), || a.total() + b.total() >= N).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        bus_a.shutdown().await;
        bus_b.shutdown().await;
        assert!(done, "handled {} of {N}", a.total() + b.total());
        let mut lost = 0;
        let mut dups = 0;
        for n in 0..N {
            match a.count(&n.to_string()) + b.count(&n.to_string()) {
                0 => lost += 1,
                1 => {}
                _ => dups += 1,
            }
        }
        println!(
            "competing instances: sent {N}, handled {}, lost {lost}, duplicates {dups}, per instance [{}, {}], {:?}",
            a.total() + b.total(),
            a.total(),
            b.total(),
            started.elapsed()
        );
        assert_eq!(lost, 0);
        assert_eq!(dups, 0);
        assert!(a.total() > 0 && b.total() > 0, "both instances shared the work");
        for t in [ta, tb, ts] {
            t.close().await.unwrap();
        }
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
    scoped("nats fan-out", |scope| async move {
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
        // A second instance of one service competes with the first: still once per service.
        buses.push(
            Bus::builder()
                .transport(scope.transport("audit-2").await)
                .without_discovery()
                .handler("audit", notice)
                .state(ledger.clone())
                .start()
                .await
                .unwrap(),
        );
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
        tokio::time::sleep(Duration::from_millis(500)).await;
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
    scoped("nats delayed retry across restart", |scope| async move {
        let ledger = Ledger::new();
        let retries = (0, 1, Duration::from_secs(3));
        let (bus, transport) = host(scope.config("billing"), "billing", &ledger, retries).await;
        let sent = Instant::now();
        bus.send(Work {
            n: 7,
            fail_first: 1,
        })
        .await
        .unwrap();
        assert!(eventually(Duration::from_secs(10), || bus.stats().delayed_retries == 1).await);
        // The service stops while the retry waits in the delay stream.
        bus.shutdown().await;
        transport.close().await.unwrap();
        assert_eq!(ledger.total(), 0);
        assert_eq!(
            scope.stored(&scope.naming.delay_stream("billing")).await,
            1,
            "the retry is held by the server"
        );

        tokio::time::sleep(Duration::from_secs(1)).await;
        let (bus, transport) = host(scope.config("billing"), "billing", &ledger, retries).await;
        assert!(
            eventually(Duration::from_secs(15), || ledger.total() == 1).await,
            "the retry arrived after the restart"
        );
        let waited = sent.elapsed();
        bus.shutdown().await;
        transport.close().await.unwrap();
        assert!(
            waited >= Duration::from_secs(3),
            "not before its delay: {waited:?}"
        );
        assert_eq!(ledger.notes(), vec!["7 attempt 2".to_string()]);
        assert_eq!(scope.stored(&scope.naming.delay_stream("billing")).await, 0);
    })
    .await;
}

/// The first stored message of a stream, read without a consumer.
async fn first_message(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> async_nats::jetstream::message::StreamMessage {
    let s = js.get_stream(stream).await.unwrap();
    let first = s.cached_info().state.first_sequence;
    s.get_raw_message(first).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_land_in_the_error_stream_with_failure_headers() {
    scoped("nats error stream", |scope| async move {
        let ledger = Ledger::new();
        let (bus, transport) = host(
            scope.config("payments"),
            "payments",
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
        transport.close().await.unwrap();

        let js = scope.jetstream().await;
        let error_stream = scope.naming.error_stream("payments");
        assert_eq!(scope.stored(&error_stream).await, 1);
        let got = first_message(&js, &error_stream).await;
        assert_eq!(
            got.payload.as_ref(),
            serde_json::to_vec(&Work {
                n: 13,
                fail_first: u32::MAX
            })
            .unwrap(),
            "body byte-identical"
        );
        let text = |k: &str| {
            got.headers
                .get(k)
                .unwrap_or_else(|| panic!("header {k} in {:?}", got.headers))
                .as_str()
                .to_string()
        };
        assert_eq!(text("bus-message-type"), "tests.Work");
        assert_eq!(text(header::FAILURE_REASON), "handler-error");
        assert_eq!(text(header::FAILURE_ATTEMPTS), "3");
        assert_eq!(text(header::FAILURE_ENDPOINT), "payments");
        assert_eq!(text(header::FAILURE_ERROR), "work 13 failing on attempt 3");
        assert_eq!(text("tenant"), "acme", "original headers kept");
        assert!(!text(header::FAILURE_TIME).is_empty());
        assert_eq!(
            scope
                .stored(&scope.naming.endpoint_stream("payments"))
                .await,
            0,
            "source stream empty"
        );
        let _ = js.client().drain().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_the_delivery_limit_moves_to_the_error_stream() {
    scoped("nats delivery limit", |scope| async move {
        let t = NatsTransport::connect(scope.config("limit").max_deliver(2))
            .await
            .unwrap();
        t.declare(&one_endpoint("crashy", &[])).await.unwrap();
        let headers = tricky_headers("poison-1", "tests.Work");
        t.send(Outgoing {
            destination: Destination::Endpoint("crashy".into()),
            envelope: Envelope::from_bytes(headers, b"{\"n\":1}".to_vec()),
            delay: None,
            deliver_at: None,
        })
        .await
        .unwrap();
        let mut sub = t
            .subscribe("crashy", SubscribeOptions { prefetch: 1 })
            .await
            .unwrap();
        // Two deliveries dropped unsettled, as a crashing handler process would.
        for attempt in 1..=2 {
            let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(d.delivery_count(), attempt);
            drop(d);
        }
        let error_stream = scope.naming.error_stream("crashy");
        let moved = async {
            loop {
                if scope.stored(&error_stream).await == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(15), moved)
            .await
            .expect("moved to the error stream");
        let js = scope.jetstream().await;
        let got = first_message(&js, &error_stream).await;
        assert_eq!(got.payload.as_ref(), b"{\"n\":1}");
        assert_eq!(
            got.headers.get(header::FAILURE_REASON).unwrap().as_str(),
            FailureReason::DeliveryLimit.as_str()
        );
        assert_eq!(
            got.headers.get("bus-message-id").unwrap().as_str(),
            "poison-1"
        );
        assert_eq!(
            scope.stored(&scope.naming.endpoint_stream("crashy")).await,
            0
        );
        drop(sub);
        t.close().await.unwrap();
        let _ = js.client().drain().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_command_is_a_typed_error() {
    scoped("nats unroutable", |scope| async move {
        let (bus, t) = sender(&scope, "nobody-declared-this").await;
        let started = Instant::now();
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
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // An event nobody subscribes to is fine.
        bus.publish(Noticed { n: 1 }).await.unwrap();
        // So is an error queue nobody declared not: it is unroutable too.
        let err = t
            .send(Outgoing {
                destination: Destination::ErrorQueue("nobody".into()),
                envelope: Envelope::from_bytes(tricky_headers("x", "tests.Work"), Vec::new()),
                delay: None,
                deliver_at: None,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unroutable(_)), "{err}");
        t.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_and_the_connection_stays_up() {
    scoped("nats oversized", |scope| async move {
        let t = scope.transport("big").await;
        t.declare(&one_endpoint("big", &[])).await.unwrap();
        let limit = t.client().server_info().max_payload;
        let send = |body: Vec<u8>, id: &str| {
            t.send(Outgoing {
                destination: Destination::Endpoint("big".into()),
                envelope: Envelope::from_bytes(tricky_headers(id, "tests.Work"), body),
                delay: None,
                deliver_at: None,
            })
        };
        let err = send(vec![b'x'; limit], "too-big").await.unwrap_err();
        assert!(matches!(err, TransportError::Refused { .. }), "{err}");
        // Just under the limit, headers included, still goes through on the same connection.
        send(vec![b'x'; limit - 8 * 1024], "fits").await.unwrap();
        assert!(t.is_connected());
        assert_eq!(scope.stored(&scope.naming.endpoint_stream("big")).await, 1);
        t.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_subscriber_on_the_subjects_does_not_break_publishing() {
    scoped("nats plain subscriber", |scope| async move {
        // A monitoring `nats sub '<prefix>.>'` takes publish requests without answering them.
        let client = async_nats::connect(scope.url.as_str()).await.unwrap();
        let _tap = client
            .subscribe(format!("{}.>", scope.naming.subject_prefix))
            .await
            .unwrap();
        client
            .request("$JS.API.INFO", Default::default())
            .await
            .unwrap();
        let t = NatsTransport::connect(
            scope
                .config("tapped")
                .request_timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let headers = tricky_headers("tapped-1", "tests.Noticed");
        t.send(Outgoing {
            destination: Destination::Event("tests.Noticed".into()),
            envelope: Envelope::from_bytes(headers.clone(), b"{}".to_vec()),
            delay: None,
            deliver_at: None,
        })
        .await
        .expect("an event without subscribers is still fine");
        let err = t
            .send(Outgoing {
                destination: Destination::Endpoint("nobody".into()),
                envelope: Envelope::from_bytes(headers, b"{}".to_vec()),
                delay: None,
                deliver_at: None,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unroutable(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        t.close().await.unwrap();
        let _ = client.drain().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_id_twice_is_handled_once() {
    scoped("nats dedup", |scope| async move {
        let ledger = Ledger::new();
        let (bus, t) = host(
            scope.config("dedup"),
            "dedup",
            &ledger,
            (0, 0, Duration::ZERO),
        )
        .await;
        for _ in 0..3 {
            bus.send_with(
                Work {
                    n: 42,
                    fail_first: 0,
                },
                SendOptions::new().message_id("fixed-id-42"),
            )
            .await
            .unwrap();
        }
        bus.send(Work {
            n: 43,
            fail_first: 0,
        })
        .await
        .unwrap();
        assert!(eventually(Duration::from_secs(10), || ledger.count("43") == 1).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        bus.shutdown().await;
        t.close().await.unwrap();
        assert_eq!(ledger.count("42"), 1);
    })
    .await;
}

async fn slow(
    cmd: Work,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    ledger.record(cmd.n.to_string(), ctx.endpoint());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_longer_than_the_ack_wait_keeps_its_delivery() {
    scoped("nats progress", |scope| async move {
        let ledger = Ledger::new();
        let mut buses = Vec::new();
        for i in 0..2 {
            let config = scope
                .config(&format!("slow-{i}"))
                .ack_wait(Duration::from_secs(1));
            let bus = Bus::builder()
                .transport(NatsTransport::connect(config).await.unwrap())
                .without_discovery()
                .handler("slow", slow)
                .route::<Work>("slow")
                .state(ledger.clone())
                .endpoint("slow", |e| {
                    e.concurrency(1).prefetch(4).no_handler_timeout()
                })
                .start()
                .await
                .unwrap();
            buses.push(bus);
        }
        for n in 0..4 {
            buses[0].send(Work { n, fail_first: 0 }).await.unwrap();
        }
        assert!(
            eventually(Duration::from_secs(30), || ledger.distinct() == 4).await,
            "handled {}",
            ledger.distinct()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        for b in &buses {
            b.shutdown().await;
        }
        assert_eq!(ledger.duplicates(), 0, "no redelivery while handlers ran");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_go_on_after_the_connection_is_reestablished() {
    scoped("nats reconnect", |scope| async move {
        let ledger = Ledger::new();
        let (bus, t) = host(
            scope.config("reco"),
            "reco",
            &ledger,
            (0, 0, Duration::ZERO),
        )
        .await;
        let (producer, pt) = sender(&scope, "reco").await;
        for n in 0..100 {
            producer.send(Work { n, fail_first: 0 }).await.unwrap();
        }
        assert!(eventually(Duration::from_secs(10), || ledger.distinct() == 100).await);
        t.client().force_reconnect().await.unwrap();
        pt.client().force_reconnect().await.unwrap();
        for n in 100..200 {
            producer.send(Work { n, fail_first: 0 }).await.unwrap();
        }
        assert!(
            eventually(Duration::from_secs(30), || ledger.distinct() == 200).await,
            "handled {} after the reconnect",
            ledger.distinct()
        );
        assert!(bus.health().transport_connected);
        bus.shutdown().await;
        t.close().await.unwrap();
        pt.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_the_server_unreachable_fails_within_its_timeout() {
    scoped("nats server unreachable", |scope| async move {
        let target: SocketAddr = scope
            .url
            .trim_start_matches("nats://")
            .parse()
            .unwrap_or_else(|_| "127.0.0.1:4222".parse().unwrap());
        let proxy = Proxy::start(target).await.unwrap();
        let config = scope
            .config("unreachable")
            .publish_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(1));
        let via_proxy = NatsConfig::new(format!("nats://{}", proxy.addr()))
            .naming(config.naming.clone())
            .publish_timeout(config.publish_timeout)
            .connect_timeout(config.connect_timeout)
            .request_timeout(config.request_timeout);
        let transport = NatsTransport::connect(via_proxy.clone()).await.unwrap();
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
        println!("publish with the server unreachable: {err} after {took:?}");
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
        assert!(
            eventually(Duration::from_secs(5), || !bus.health().transport_connected).await,
            "health shows the lost connection"
        );

        // Connecting while it is unreachable fails within the connect timeout, too.
        let started = Instant::now();
        let err = NatsTransport::connect(via_proxy).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                err,
                NatsError::Connection { .. } | NatsError::Timeout { .. }
            ),
            "{err}"
        );
    })
    .await;
}

/// A private nats-server with a password, on a free port; `None` when it cannot be started.
async fn server_with_password(password: &str) -> Option<(tokio::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let args = [
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--user",
        "app",
        "--pass",
        password,
    ];
    let child = ["nats-server", "/usr/sbin/nats-server"]
        .into_iter()
        .find_map(|bin| {
            tokio::process::Command::new(bin)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .ok()
        })?;
    let up = eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    up.then_some((child, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_fast_and_never_show_the_password() {
    let Some((mut server, port)) = server_with_password("right-Pa55").await else {
        if bus_tests::broker::brokers_required() {
            panic!("nats wrong credentials: cannot start a private nats-server and BUS_REQUIRE_BROKERS=1");
        }
        eprintln!("skipping nats wrong credentials: cannot start a private nats-server");
        return;
    };
    let canary = "canary-Pa55word-91";
    let config = NatsConfig::new(format!("nats://app:{canary}@127.0.0.1:{port}"));
    assert!(!format!("{config:?}").contains(canary));
    let started = Instant::now();
    let err = NatsTransport::connect(config).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, NatsError::Authentication { .. }), "{err:?}");
    assert!(!err.to_string().contains(canary), "{err}");
    assert!(!format!("{err:?}").contains(canary), "{err:?}");
    let _ = server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_nats_client_can_send_commands_and_read_events() {
    scoped("nats interop", |scope| async move {
        let ledger = Ledger::new();
        let (bus, t) = host(
            scope.config("orders"),
            "orders",
            &ledger,
            (0, 0, Duration::ZERO),
        )
        .await;

        // A client that is not this crate: plain JetStream publish with the documented headers.
        let client = async_nats::connect(scope.url.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "ext-1");
        headers.insert("bus-message-type", "tests.Work");
        headers.insert("bus-content-type", "application/json");
        headers.insert("bus-correlation-id", "corr-ext");
        let ack = js
            .publish_with_headers(
                scope.naming.command_subject("orders"),
                headers,
                br#"{"n": 99, "fail_first": 0}"#.as_slice().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(!ack.duplicate);
        assert!(
            eventually(Duration::from_secs(10), || ledger.count("99") == 1).await,
            "the Rust service handled it"
        );

        // The same client reads an event the bus publishes, with a core subscription. (The
        // event's stream exists because some endpoint subscribes to it: without one, the core
        // subscriber would take the publish request and leave it unanswered.)
        t.declare(&one_endpoint("audit", &["tests.Noticed"]))
            .await
            .unwrap();
        let mut events = client
            .subscribe(scope.naming.event_subject("tests.Noticed"))
            .await
            .unwrap();
        // A round trip on the same connection: the server has registered the subscription
        // once it answers (a flush only empties the client's buffer).
        client
            .request("$JS.API.INFO", Default::default())
            .await
            .unwrap();
        bus.publish_with(
            Noticed { n: 5 },
            SendOptions::new().correlation_id("corr-evt"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let m = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap();
        let h = m.headers.as_ref().unwrap();
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
        assert_eq!(get("bus-message-type").as_deref(), Some("tests.Noticed"));
        assert_eq!(get("bus-content-type").as_deref(), Some("application/json"));
        assert_eq!(get("bus-correlation-id").as_deref(), Some("corr-evt"));
        assert_eq!(
            get("bus-message-id").map(|s| s.len()),
            Some(36),
            "a UUID message id"
        );
        assert_eq!(
            get("bus-message-id").as_deref(),
            h.get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            "the message id is also the dedup key"
        );
        assert!(get("bus-sent-time").is_some());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap(),
            serde_json::json!({"n": 5})
        );
        bus.shutdown().await;
        t.close().await.unwrap();
        let _ = client.drain().await;
    })
    .await;
}

// ---- TLS --------------------------------------------------------------------------------------

/// A `nats-server` of the test's own with TLS on its client port: a certificate for `localhost`
/// signed by a certificate authority made for the test.
struct NatsTls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    ca: std::path::PathBuf,
}

impl ServerKind for NatsTls {
    const NAME: &'static str = "nats-server";
    const LOG: &'static str = "nats.log";

    fn binaries(&self) -> &[&'static str] {
        &["/usr/sbin/nats-server", "nats-server"]
    }

    fn args(&self, port: u16, dir: &std::path::Path) -> Vec<String> {
        let mut args = Nats.args(port, dir);
        args.extend([
            "--tls".into(),
            "--tlscert".into(),
            self.cert.to_string_lossy().into_owned(),
            "--tlskey".into(),
            self.key.to_string_lossy().into_owned(),
        ]);
        args
    }

    async fn serving(&self, port: u16) -> bool {
        let check = async_nats::ConnectOptions::new()
            .add_root_certificates(self.ca.clone())
            .require_tls(true)
            .connection_timeout(Duration::from_secs(1))
            .connect(format!("tls://localhost:{port}"));
        match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(Ok(client)) => {
                let _ = client.drain().await;
                true
            }
            _ => false,
        }
    }
}

/// A CA of the test's own, and a certificate for `localhost` signed by it, as PEM files in
/// `dir`.
fn tls_files(dir: &std::path::Path) -> NatsTls {
    let (ca, cert, key) = Ca::new("bus NATS test CA").write_files(dir);
    NatsTls { cert, key, ca }
}

/// `tls://` with the right CA carries a command end to end; the wrong CA, or a plain client
/// without it, fails to connect with an error within the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connects_with_the_right_ca_and_fails_fast_otherwise() {
    let dir = std::env::temp_dir().join(bus_tests::broker::unique("bus-nats-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let files = tls_files(&dir);
    let ca = files.ca.clone();
    let wrong_dir = std::env::temp_dir().join(bus_tests::broker::unique("bus-nats-tls-wrong"));
    std::fs::create_dir_all(&wrong_dir).unwrap();
    let wrong = tls_files(&wrong_dir);
    let Some(server) = ServerProcess::start_kind("nats TLS", files).await else {
        return;
    };
    let url = format!("tls://localhost:{}", server.port());

    let ledger = Ledger::new();
    // By configuration, as an application would set it (`BUS_TRANSPORT`, `BUS_TLS_CA_FILE`).
    let settings = bus_transport_config::TransportSettings {
        url: url.clone(),
        tls_ca_file: Some(ca.clone()),
        connect_timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let config = settings.nats_config("tls-work").expect("TLS settings");
    let (bus, _transport) = host(config, "tls-work", &ledger, (0, 0, Duration::ZERO)).await;
    bus.send(Work {
        n: 1,
        fail_first: 0,
    })
    .await
    .expect("sent over TLS");
    assert!(
        eventually(Duration::from_secs(10), || ledger.distinct() == 1).await,
        "handled over TLS"
    );
    bus.shutdown().await;

    for (what, config) in [
        ("the wrong CA", NatsConfig::new(&url).tls_ca_file(&wrong.ca)),
        (
            "no CA and a plain URL",
            NatsConfig::new(format!("nats://127.0.0.1:{}", server.port())),
        ),
    ] {
        let config = config.connect_timeout(Duration::from_secs(5));
        refused_quickly(what, Duration::from_secs(8), NatsTransport::connect(config)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&wrong_dir);
}
