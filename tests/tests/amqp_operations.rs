//! Operating the AMQP transport against the running RabbitMQ: browsing queues, tearing
//! endpoints down, namespaces that keep buses on one broker apart, and the errors for a URL
//! that points at another server's port.
//!
//! Every test runs under a namespace of its own and skips with a printed reason when a broker
//! it needs is unreachable, and fails instead when `BUS_REQUIRE_BROKERS=1`.

use std::time::Duration;

use bus_core::probe::Protocol;
use bus_core::{
    header, Bus, BusError, Declared, Destination, EndpointTopology, Envelope, HandlerError,
    Headers, MessageContext, Outgoing, QueueKind, State, SubscribeOptions, Topology, Transport,
    TransportError,
};
use bus_tests::broker::AmqpScope;
use bus_tests::messages::{Noticed, Work};
use bus_tests::{eventually, record, Ledger};
use bus_transport_amqp::{AmqpConfig, AmqpError, AmqpTransport};
use lapin::options::QueueDeclareOptions;

/// Run a test body in a fresh namespace, then delete whatever is left under it even if the
/// body panicked.
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

/// The namespace of a scope. The scope's prefix is `{namespace}.` and its exchange
/// `{namespace}.bus.events`, exactly the names a transport under that namespace uses, so the
/// scope's cleanup removes what the test leaves.
fn namespace(scope: &AmqpScope) -> String {
    scope.naming.queue_prefix.trim_end_matches('.').to_string()
}

/// A transport config under the scope's namespace.
fn config(scope: &AmqpScope, name: &str) -> AmqpConfig {
    AmqpConfig::new(scope.url.clone())
        .connection_name(name)
        .connect_timeout(Duration::from_secs(10))
        .namespace(namespace(scope))
}

/// A transport under the scope's namespace.
async fn transport(scope: &AmqpScope, name: &str) -> AmqpTransport {
    AmqpTransport::connect(config(scope, name))
        .await
        .expect("connect to RabbitMQ")
}

/// The topology of one endpoint subscribed to `events`.
fn topology(endpoints: &[(&str, &[&str])]) -> Topology {
    Topology {
        endpoints: endpoints
            .iter()
            .map(|(name, events)| EndpointTopology {
                name: name.to_string(),
                events: events.iter().map(|e| e.to_string()).collect(),
                commands: Vec::new(),
            })
            .collect(),
    }
}

/// A message with id `id` for `destination`.
fn message(destination: Destination, id: &str, delay: Option<Duration>) -> Outgoing {
    Outgoing {
        destination,
        envelope: Envelope::from_bytes(
            Headers {
                message_id: id.into(),
                message_type: "tests.Work".into(),
                content_type: "application/json".into(),
                ..Headers::default()
            },
            format!("{{\"id\":\"{id}\"}}").into_bytes(),
        ),
        delay,
        deliver_at: None,
    }
}

fn ids(envelopes: &[Envelope]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| e.headers.message_id.to_string())
        .collect()
}

/// Messages ready in a queue, by its full name; `None` when the queue does not exist.
async fn ready(scope: &AmqpScope, queue: &str) -> Option<u32> {
    let conn = scope.raw().await;
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let found = ch
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .ok()
        .map(|q| q.message_count());
    let _ = conn.close(200, "checked".into()).await;
    found
}

fn queue(name: String) -> Declared {
    Declared {
        kind: "queue",
        name,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_browse_lists_the_error_queue_oldest_first_and_leaves_it() {
    scoped("amqp browse error queue", |scope| async move {
        let endpoint = "payments";
        let transport = transport(&scope, endpoint).await;
        let bus = Bus::builder()
            .transport(transport.clone())
            .without_discovery()
            .host([endpoint])
            .handler(endpoint, record)
            .route::<Work>(endpoint)
            .state(Ledger::new())
            .endpoint(endpoint, |e| {
                // No retries, one message at a time: each failure goes to the error queue at
                // once, in the order sent.
                e.immediate_retries(0)
                    .delayed_retries(0, Duration::ZERO)
                    .concurrency(1)
                    .prefetch(1)
            })
            .shutdown_grace(Duration::from_secs(5))
            .start()
            .await
            .expect("start bus");
        for n in 1..=3 {
            bus.send(Work {
                n,
                fail_first: u32::MAX,
            })
            .await
            .unwrap();
        }
        assert!(
            eventually(Duration::from_secs(15), || bus.stats().dead_lettered == 3).await,
            "three messages failed for good"
        );
        bus.shutdown().await;

        let failed = transport
            .browse(endpoint, QueueKind::Errors, 10)
            .await
            .expect("browse the error queue");
        let bodies: Vec<Work> = failed
            .iter()
            .map(|e| match &e.body {
                bus_core::Body::Bytes(b) => serde_json::from_slice(b).unwrap(),
                other => panic!("a wire body, not {other:?}"),
            })
            .collect();
        assert_eq!(
            bodies.iter().map(|w| w.n).collect::<Vec<_>>(),
            [1, 2, 3],
            "oldest first"
        );
        for e in &failed {
            assert_eq!(e.headers.message_type, "tests.Work");
            assert_eq!(e.headers.get(header::FAILURE_REASON), Some("handler-error"));
            assert_eq!(e.headers.get(header::FAILURE_ENDPOINT), Some(endpoint));
            assert!(
                e.headers.get("x-delivery-count").is_none() && e.headers.get("x-death").is_none(),
                "decoded as a delivery: no broker headers"
            );
        }

        let first_two = transport
            .browse(endpoint, QueueKind::Errors, 2)
            .await
            .unwrap();
        assert_eq!(
            ids(&first_two),
            ids(&failed[..2]),
            "a limit takes the oldest"
        );
        let again = transport
            .browse(endpoint, QueueKind::Errors, 10)
            .await
            .unwrap();
        assert_eq!(ids(&again), ids(&failed), "same messages, same order");
        let error_queue = transport.config().naming.error_queue(endpoint);
        assert_eq!(ready(&scope, &error_queue).await, Some(3), "left in place");
        transport.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_browse_twice_leaves_the_messages_for_a_consumer() {
    scoped("amqp browse leaves messages", |scope| async move {
        let transport = transport(&scope, "orders").await;
        transport
            .declare(&topology(&[("orders", &[])]))
            .await
            .unwrap();
        let sent = ["m1", "m2", "m3"];
        transport
            .send_batch(
                sent.iter()
                    .map(|id| message(Destination::Endpoint("orders".into()), id, None))
                    .collect(),
            )
            .await
            .unwrap();

        for _ in 0..2 {
            let seen = transport
                .browse("orders", QueueKind::Input, 100)
                .await
                .unwrap();
            assert_eq!(ids(&seen), sent);
        }
        assert!(transport
            .browse("orders", QueueKind::Input, 0)
            .await
            .unwrap()
            .is_empty());

        let mut sub = transport
            .subscribe("orders", SubscribeOptions { prefetch: 10 })
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("a delivery in time")
                .expect("open")
                .expect("no error");
            got.push(d.envelope().headers.message_id.to_string());
            d.ack().await.unwrap();
        }
        sub.cancel().await;
        assert_eq!(got, sent, "the consumer gets them all, in order");
        assert!(transport
            .browse("orders", QueueKind::Input, 100)
            .await
            .unwrap()
            .is_empty());
        drop(sub);
        transport.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_browse_refuses_a_quorum_input_queue_and_reads_its_error_queue_in_place() {
    scoped("amqp browse quorum", |scope| async move {
        // A delivery limit of 1: a message returned twice would be dead-lettered.
        let transport = AmqpTransport::connect(config(&scope, "quorum").quorum_queues(1))
            .await
            .unwrap();
        transport
            .declare(&topology(&[("ledger", &[])]))
            .await
            .unwrap();
        transport
            .send(message(Destination::Endpoint("ledger".into()), "in", None))
            .await
            .unwrap();
        transport
            .send(message(
                Destination::ErrorQueue("ledger".into()),
                "failed",
                None,
            ))
            .await
            .unwrap();

        let err = transport
            .browse("ledger", QueueKind::Input, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("delivery limit"), "{err}");

        // The error queue has no limit: browsing it again and again loses nothing.
        for _ in 0..4 {
            let seen = transport
                .browse("ledger", QueueKind::Errors, 10)
                .await
                .unwrap();
            assert_eq!(ids(&seen), ["failed"]);
        }
        let naming = &transport.config().naming;
        assert_eq!(ready(&scope, &naming.queue("ledger")).await, Some(1));
        transport.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_browse_of_a_missing_queue_is_unroutable_and_names_it() {
    scoped("amqp browse missing", |scope| async move {
        let transport = transport(&scope, "browser").await;
        let err = transport
            .browse("nowhere", QueueKind::Errors, 10)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TransportError::Unroutable(t) if t == "error queue of `nowhere`"),
            "{err:?}"
        );
        let err = transport
            .browse("nowhere", QueueKind::Input, 10)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unroutable: no queue receives messages for endpoint `nowhere`; start a bus that hosts it once on this transport (starting declares its queue)"
        );
        transport.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_an_unroutable_command_names_its_endpoint_once() {
    scoped("amqp unroutable text", |scope| async move {
        let bus = Bus::builder()
            .transport(transport(&scope, "sender").await)
            .without_discovery()
            .route::<Work>("nowhere")
            .build()
            .await
            .unwrap();
        let err = bus
            .send(Work {
                n: 1,
                fail_first: 0,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BusError::Transport(TransportError::Unroutable(t)) if t == "endpoint `nowhere`"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "unroutable: no queue receives messages for endpoint `nowhere`; start a bus that hosts it once on this transport (starting declares its queue)"
        );
    })
    .await;
}

/// Declares `billing` (subscribed to `tests.Noticed`) and leaves a message in its input queue,
/// its error queue and a delay queue. Returns the queues, sorted as teardown reports them.
async fn billing_with_messages(transport: &AmqpTransport) -> Vec<Declared> {
    transport
        .declare(&topology(&[("billing", &["tests.Noticed"])]))
        .await
        .unwrap();
    let delay = Duration::from_secs(600);
    transport
        .send_batch(vec![
            message(Destination::Endpoint("billing".into()), "now", None),
            message(
                Destination::Endpoint("billing".into()),
                "later",
                Some(delay),
            ),
            message(Destination::ErrorQueue("billing".into()), "failed", None),
        ])
        .await
        .unwrap();
    let naming = &transport.config().naming;
    let mut queues = vec![
        queue(naming.queue("billing")),
        queue(naming.error_queue("billing")),
        queue(naming.delay_queue("billing", delay)),
    ];
    queues.sort();
    queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_teardown_dry_run_lists_what_exists_and_deletes_nothing() {
    scoped("amqp teardown dry run", |scope| async move {
        let transport = transport(&scope, "billing").await;
        let expected = billing_with_messages(&transport).await;
        let listed = transport
            .teardown(&topology(&[("billing", &["tests.Noticed"])]), true)
            .await
            .unwrap();
        assert_eq!(listed, expected);
        for q in &expected {
            assert_eq!(
                ready(&scope, &q.name).await,
                Some(1),
                "{q} kept, message and all"
            );
        }
        // The binding is kept too: an event still reaches the queue.
        transport
            .send(Outgoing {
                destination: Destination::Event("tests.Noticed".into()),
                ..message(Destination::Endpoint("x".into()), "event", None)
            })
            .await
            .unwrap();
        let input = transport.config().naming.queue("billing");
        let mut arrived = false;
        for _ in 0..50 {
            if ready(&scope, &input).await == Some(2) {
                arrived = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(arrived, "the event arrived through the kept binding");
        assert_eq!(
            transport.delete_events_exchange(true).await.unwrap(),
            Some(Declared {
                kind: "exchange",
                name: transport.config().naming.events_exchange_name()
            })
        );
        transport.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_teardown_deletes_the_queues_and_a_second_teardown_reports_nothing() {
    scoped("amqp teardown", |scope| async move {
        let transport = transport(&scope, "billing").await;
        let expected = billing_with_messages(&transport).await;
        // Another endpoint subscribed to the same event, left alone.
        transport
            .declare(&topology(&[("audit", &["tests.Noticed"])]))
            .await
            .unwrap();
        let billing = topology(&[("billing", &["tests.Noticed"])]);

        let removed = transport.teardown(&billing, false).await.unwrap();
        assert_eq!(removed, expected);
        for q in &expected {
            assert_eq!(ready(&scope, &q.name).await, None, "{q} deleted");
        }
        let naming = transport.config().naming.clone();
        assert_eq!(ready(&scope, &naming.queue("audit")).await, Some(0));
        let err = transport
            .send(message(Destination::Endpoint("billing".into()), "x", None))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unroutable(_)), "{err}");
        // A delayed retry after the teardown declares its delay queue again.
        transport
            .send(message(
                Destination::Endpoint("billing".into()),
                "again",
                Some(Duration::from_secs(600)),
            ))
            .await
            .unwrap();
        let delay_queue = naming.delay_queue("billing", Duration::from_secs(600));
        assert_eq!(ready(&scope, &delay_queue).await, Some(1));
        assert_eq!(
            transport.teardown(&billing, false).await.unwrap(),
            [queue(delay_queue)]
        );
        assert!(
            transport
                .teardown(&billing, false)
                .await
                .unwrap()
                .is_empty(),
            "nothing left to report"
        );
        assert!(transport.teardown(&billing, true).await.unwrap().is_empty());

        // The events exchange is shared: kept while `audit` is bound to it.
        assert_eq!(transport.delete_events_exchange(false).await.unwrap(), None);
        transport
            .teardown(&topology(&[("audit", &["tests.Noticed"])]), false)
            .await
            .unwrap();
        let exchange = Declared {
            kind: "exchange",
            name: naming.events_exchange_name(),
        };
        assert_eq!(
            transport.delete_events_exchange(false).await.unwrap(),
            Some(exchange)
        );
        assert_eq!(transport.delete_events_exchange(false).await.unwrap(), None);
        transport.close().await.unwrap();
    })
    .await;
}

async fn notice(
    evt: Noticed,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    ledger.record(format!("event {}", evt.n), ctx.endpoint());
    Ok(())
}

/// A bus under the scope's namespace hosting `shipping`, which handles `Work` and `Noticed`.
async fn shipping(scope: &AmqpScope, ledger: &Ledger) -> Bus {
    Bus::builder()
        .transport(transport(scope, "shipping").await)
        .without_discovery()
        .host(["shipping"])
        .handler("shipping", record)
        .handler("shipping", notice)
        .route::<Work>("shipping")
        .state(ledger.clone())
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("start bus")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_two_namespaces_on_one_broker_never_see_each_others_messages() {
    let Some(a) = AmqpScope::new("amqp namespaces a").await else {
        return;
    };
    let Some(b) = AmqpScope::new("amqp namespaces b").await else {
        return;
    };
    let body = {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let (in_a, in_b) = (Ledger::new(), Ledger::new());
            // The same endpoint, the same messages, in both namespaces.
            let bus_a = shipping(&a, &in_a).await;
            let bus_b = shipping(&b, &in_b).await;
            bus_a.publish(Noticed { n: 1 }).await.unwrap();
            bus_a
                .send(Work {
                    n: 10,
                    fail_first: 0,
                })
                .await
                .unwrap();
            bus_b.publish(Noticed { n: 2 }).await.unwrap();
            bus_b
                .send(Work {
                    n: 20,
                    fail_first: 0,
                })
                .await
                .unwrap();
            assert!(
                eventually(Duration::from_secs(15), || in_a.total() >= 2
                    && in_b.total() >= 2)
                .await,
                "each namespace receives its own: a {}, b {}",
                in_a.total(),
                in_b.total()
            );
            // Time for a stray message to arrive, if one were on its way.
            tokio::time::sleep(Duration::from_millis(500)).await;
            bus_a.shutdown().await;
            bus_b.shutdown().await;
            assert_eq!(in_a.count("event 1"), 1);
            assert_eq!(in_a.count("10"), 1);
            assert_eq!(in_b.count("event 2"), 1);
            assert_eq!(in_b.count("20"), 1);
            assert_eq!(in_a.total(), 2, "nothing from namespace b");
            assert_eq!(in_b.total(), 2, "nothing from namespace a");
        }
    };
    bus_tests::then_clean(body, async {
        a.cleanup().await;
        b.cleanup().await;
    })
    .await;
}

/// `host:port` of a broker URL such as `nats://127.0.0.1:4222`.
fn address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_string()
}

/// Connect with AMQP to `addr`, where something else listens; the error.
async fn connect_to_wrong_port(addr: &str) -> AmqpError {
    let config = AmqpConfig::new(format!("amqp://app:s3cret-pw@{addr}/%2f"))
        .connect_timeout(Duration::from_secs(3));
    AmqpTransport::connect(config)
        .await
        .expect_err("no AMQP broker there")
}

/// The error names what answered, keeps the client error as the source, and has no password.
fn assert_says_who_answered(err: AmqpError, addr: &str, found: Protocol) {
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "{addr} answered, but not as an AMQP broker: it speaks {found} (is this the {found} port?)"
        )),
        "{text}"
    );
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(
        matches!(&err, AmqpError::WrongProtocol { found: Some(f), .. } if *f == found),
        "{err:?}"
    );
    let transport_error = TransportError::from(err);
    assert!(
        matches!(&transport_error, TransportError::Connection { context, .. }
            if context == &bus_core::probe::wrong_protocol(addr, Protocol::Amqp, Some(found))),
        "{transport_error:?}"
    );
    assert!(!transport_error.to_string().contains("s3cret-pw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_connecting_to_the_nats_port_says_nats_answered() {
    let Some(url) = bus_tests::nats_broker::nats_or_skip("amqp to the NATS port").await else {
        return;
    };
    let addr = address(&url);
    let err = connect_to_wrong_port(&addr).await;
    assert!(
        std::error::Error::source(&err).is_some_and(|s| s.is::<lapin::Error>()),
        "the client's parse error is kept: {err:?}"
    );
    assert_says_who_answered(err, &addr, Protocol::Nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_connecting_to_the_redis_port_says_redis_answered() {
    let Some(url) = bus_tests::redis_broker::redis_or_skip("amqp to the Redis port").await else {
        return;
    };
    // Redis waits for the end of a line that the AMQP header never sends, so the connection
    // would wait out its timeout; the transport asks what is listening before that.
    let addr = address(&url);
    let started = std::time::Instant::now();
    let err = connect_to_wrong_port(&addr).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "told before the connect timeout: {:?}",
        started.elapsed()
    );
    assert_says_who_answered(err, &addr, Protocol::Redis);
}
