//! Operating the NATS JetStream transport against the running server: browsing an endpoint's
//! input and error streams without consuming them, tearing endpoints down (dry run, for real,
//! and again), namespaces that keep two buses on one server apart, the server's `max_payload`
//! as the transport's limit, and connection errors that name the protocol a wrong port speaks.
//!
//! Every test works in a namespace of its own, whose streams are deleted afterwards even when
//! the test fails. Every test skips with a printed reason when a server it needs is
//! unreachable, and fails instead when `BUS_REQUIRE_BROKERS=1`.

use std::time::{Duration, Instant};

use bus_core::probe::{wrong_protocol, Protocol};
use bus_core::{
    header, Body, Bus, Declared, Destination, EndpointTopology, Envelope, HandlerError, Headers,
    MessageContext, Outgoing, QueueKind, SendOptions, State, SubscribeOptions, Topology, Transport,
    TransportError,
};
use bus_tests::broker::{rabbitmq_or_skip, unique};
use bus_tests::messages::{Noticed, Work};
use bus_tests::nats_broker::nats_or_skip;
use bus_tests::redis_broker::redis_or_skip;
use bus_tests::{eventually, record, Ledger};
use bus_transport_nats::async_nats;
use bus_transport_nats::{NatsConfig, NatsError, NatsTransport};
use futures_lite::StreamExt;

/// One test's namespace on the shared server.
#[derive(Clone, Debug)]
struct Space {
    url: String,
    namespace: String,
}

impl Space {
    /// A new namespace, or `None` (test skipped) when NATS is unusable.
    async fn new(test: &str) -> Option<Space> {
        let url = nats_or_skip(test).await?;
        Some(Space {
            url,
            namespace: unique("ns"),
        })
    }

    /// A transport config in this namespace.
    fn config(&self, name: &str) -> NatsConfig {
        NatsConfig::new(self.url.clone())
            .connection_name(name)
            .namespace(self.namespace.clone())
    }

    /// A connected transport in this namespace.
    async fn transport(&self, name: &str) -> NatsTransport {
        NatsTransport::connect(self.config(name))
            .await
            .expect("connect to NATS")
    }

    /// Names of the streams of this namespace on the server, sorted.
    async fn streams(&self) -> Vec<String> {
        let prefix = self.config("list").naming.stream_name_prefix();
        let client = async_nats::connect(self.url.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let mut names = Vec::new();
        let mut listing = js.stream_names();
        while let Some(name) = listing.next().await {
            let name = name.unwrap();
            if name.starts_with(&prefix) {
                names.push(name);
            }
        }
        let _ = client.drain().await;
        names.sort();
        names
    }

    /// Messages stored in a stream (by its full name); 0 when it does not exist.
    async fn stored(&self, stream: &str) -> u64 {
        let client = async_nats::connect(self.url.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let n = match js.get_stream(stream).await {
            Ok(s) => s.cached_info().state.messages,
            Err(_) => 0,
        };
        let _ = client.drain().await;
        n
    }

    /// Delete every stream of this namespace.
    async fn cleanup(&self) {
        let work = async {
            let names = self.streams().await;
            let Ok(client) = async_nats::connect(self.url.as_str()).await else {
                return;
            };
            let js = async_nats::jetstream::new(client.clone());
            for name in names {
                let _ = js.delete_stream(&name).await;
            }
            let _ = client.drain().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(20), work).await;
    }
}

/// Run a test body in a fresh namespace, then delete its streams even if the body panicked.
async fn spaced<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Space) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(space) = Space::new(test).await else {
        return;
    };
    bus_tests::then_clean(body(space.clone()), space.cleanup()).await;
}

async fn notice(
    evt: Noticed,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    ledger.record(format!("evt-{}", evt.n), ctx.endpoint());
    Ok(())
}

/// A bus on `transport` hosting `endpoint` with the `record` handler for `Work` and `notice`
/// for `Noticed`, one message at a time, without retries: a failure goes straight to the
/// error queue.
async fn host(transport: &NatsTransport, endpoint: &str, ledger: &Ledger) -> Bus {
    Bus::builder()
        .transport(transport.clone())
        .without_discovery()
        .host([endpoint])
        .handler(endpoint.to_string(), record)
        .handler(endpoint.to_string(), notice)
        .route::<Work>(endpoint)
        .state(ledger.clone())
        .endpoint(endpoint, |e| {
            e.immediate_retries(0)
                .delayed_retries(0, Duration::ZERO)
                .concurrency(1)
                .prefetch(1)
        })
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("start bus")
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

fn command(endpoint: &str, id: &str, body: &str) -> Outgoing {
    let mut headers = Headers {
        message_id: id.into(),
        message_type: "tests.Work".into(),
        content_type: "application/json".into(),
        correlation_id: Some(format!("corr-{id}")),
        sent_at: Some(std::time::SystemTime::now()),
        ..Headers::default()
    };
    headers
        .custom
        .insert("multi-line".into(), format!("{id}\r\nsecond line"));
    headers.custom.insert("unicode".into(), "grüße ✓".into());
    Outgoing {
        destination: Destination::Endpoint(endpoint.into()),
        envelope: Envelope::from_bytes(headers, body.as_bytes().to_vec()),
        delay: None,
        deliver_at: None,
    }
}

fn body_text(envelope: &Envelope) -> String {
    match &envelope.body {
        Body::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("a NATS envelope carries bytes, not {other:?}"),
    }
}

fn declared(kind: &'static str, name: String) -> Declared {
    Declared { kind, name }
}

/// `host:port` of a broker URL (`scheme://[user[:password]@]host:port[/...]`).
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_browse_lists_the_error_stream_oldest_first_and_leaves_it() {
    spaced("nats browse error stream", |space| async move {
        let transport = space.transport("ledger").await;
        let ledger = Ledger::new();
        let bus = host(&transport, "ledger", &ledger).await;
        for n in 1..=3u64 {
            bus.send_with(
                Work {
                    n,
                    fail_first: u32::MAX,
                },
                SendOptions::new().header("order", format!("o-{n}")),
            )
            .await
            .unwrap();
        }
        assert!(
            eventually(Duration::from_secs(20), || bus.stats().dead_lettered == 3).await,
            "three messages failed for good: {:?}",
            bus.stats()
        );
        bus.shutdown().await;

        let error_stream = transport.config().naming.error_stream("ledger");
        assert!(error_stream.starts_with(&space.namespace.to_uppercase()));
        let browsed = transport
            .browse("ledger", QueueKind::Errors, 10)
            .await
            .unwrap();
        assert_eq!(browsed.len(), 3);
        for (n, envelope) in (1..=3u64).zip(&browsed) {
            let h = &envelope.headers;
            assert_eq!(h.message_type, "tests.Work");
            assert_eq!(
                h.get("order"),
                Some(format!("o-{n}").as_str()),
                "oldest first"
            );
            assert_eq!(h.get(header::FAILURE_REASON), Some("handler-error"));
            assert_eq!(h.get(header::FAILURE_ENDPOINT), Some("ledger"));
            assert_eq!(
                h.get(header::FAILURE_ERROR),
                Some(format!("work {n} failing on attempt 1").as_str())
            );
            let work: Work = serde_json::from_str(&body_text(envelope)).unwrap();
            assert_eq!(work.n, n);
        }
        // Left in place: the stream still holds them, and a second look sees the same.
        assert_eq!(space.stored(&error_stream).await, 3);
        let again = transport
            .browse("ledger", QueueKind::Errors, 10)
            .await
            .unwrap();
        let ids = |list: &[Envelope]| {
            list.iter()
                .map(|e| e.headers.message_id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&again), ids(&browsed));
        let first_two = transport
            .browse("ledger", QueueKind::Errors, 2)
            .await
            .unwrap();
        assert_eq!(ids(&first_two), ids(&browsed)[..2].to_vec());
        assert!(transport
            .browse("ledger", QueueKind::Errors, 0)
            .await
            .unwrap()
            .is_empty());
        // The input queue is empty: every message was acked (into the error queue).
        assert!(transport
            .browse("ledger", QueueKind::Input, 10)
            .await
            .unwrap()
            .is_empty());
        transport.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_browse_of_the_input_queue_shows_unacked_messages_as_delivered_and_leaves_them() {
    spaced("nats browse input", |space| async move {
        let t = space.transport("browse-input").await;
        t.declare(&one_endpoint("inbox", &[])).await.unwrap();
        let sent: Vec<Outgoing> = (1..=3)
            .map(|i| command("inbox", &format!("m-{i}"), &format!("{{\"n\":{i}}}")))
            .collect();
        for out in &sent {
            t.send(out.clone()).await.unwrap();
        }
        let browsed = t.browse("inbox", QueueKind::Input, 10).await.unwrap();
        assert_eq!(browsed.len(), 3);
        for (out, got) in sent.iter().zip(&browsed) {
            assert_eq!(*got.headers, *out.envelope.headers, "headers as sent");
            assert_eq!(body_text(got), body_text(&out.envelope));
        }
        // Browsing consumed nothing: the first deliveries are the first messages, decoded alike.
        let mut sub = t
            .subscribe("inbox", SubscribeOptions { prefetch: 2 })
            .await
            .unwrap();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("delivered in time")
                .unwrap()
                .unwrap()
        };
        let first = next().await;
        let second = next().await;
        for (d, b) in [(&first, &browsed[0]), (&second, &browsed[1])] {
            assert_eq!(d.delivery_count(), 1, "browsing is no delivery");
            assert_eq!(*d.envelope().headers, *b.headers);
            assert_eq!(body_text(d.envelope()), body_text(b));
        }
        // Being handled, not acked yet: still shown.
        let during = t.browse("inbox", QueueKind::Input, 10).await.unwrap();
        assert_eq!(during.len(), 3);
        // Acked out of order: the gap it leaves in the stream is skipped.
        second.ack().await.unwrap();
        let ids_once = async |n: usize| {
            let waiting = async {
                loop {
                    let now = t.browse("inbox", QueueKind::Input, 10).await.unwrap();
                    if now.len() == n {
                        return now
                            .iter()
                            .map(|e| e.headers.message_id.to_string())
                            .collect::<Vec<_>>();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), waiting)
                .await
                .expect("the acked message leaves the input queue")
        };
        assert_eq!(ids_once(2).await, ["m-1", "m-3"]);
        first.ack().await.unwrap();
        assert_eq!(ids_once(1).await, ["m-3"]);
        sub.cancel().await;
        drop(sub);
        let stream = t.config().naming.endpoint_stream("inbox");
        assert_eq!(space.stored(&stream).await, 1);

        // A queue nobody declared is unroutable, and says so in the destination's words.
        let err = t.browse("nobody", QueueKind::Errors, 10).await.unwrap_err();
        assert!(matches!(err, TransportError::Unroutable(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with("unroutable: no queue receives messages for error queue of `nobody`"),
            "{err}"
        );
        t.close().await.unwrap();
    })
    .await;
}

/// What declaring `orders` (subscribed to `tests.Noticed`) creates, in teardown's order.
fn orders_topology(t: &NatsTransport) -> Vec<Declared> {
    let n = &t.config().naming;
    vec![
        declared("consumer", format!("{}/bus", n.endpoint_stream("orders"))),
        declared("stream", n.endpoint_stream("orders")),
        declared("consumer", format!("{}/bus", n.delay_stream("orders"))),
        declared("stream", n.delay_stream("orders")),
        declared("stream", n.error_stream("orders")),
        declared("stream", n.event_stream("tests.Noticed")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_teardown_dry_run_lists_what_exists_and_deletes_nothing() {
    spaced("nats teardown dry run", |space| async move {
        let t = space.transport("dry-run").await;
        let topology = one_endpoint("orders", &["tests.Noticed"]);
        // Nothing declared yet: nothing to list.
        assert_eq!(t.teardown(&topology, true).await.unwrap(), vec![]);
        t.declare(&topology).await.unwrap();
        t.send(command("orders", "kept-1", "{}")).await.unwrap();
        let before = space.streams().await;
        assert_eq!(before.len(), 4, "{before:?}");

        let listed = t.teardown(&topology, true).await.unwrap();
        assert_eq!(listed, orders_topology(&t));
        assert_eq!(space.streams().await, before, "nothing deleted");
        assert_eq!(
            space
                .stored(&t.config().naming.endpoint_stream("orders"))
                .await,
            1,
            "the message is still there"
        );
        // The endpoint still works.
        let mut sub = t
            .subscribe("orders", SubscribeOptions { prefetch: 1 })
            .await
            .unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.envelope().headers.message_id, "kept-1");
        d.ack().await.unwrap();
        sub.cancel().await;
        drop(sub);
        t.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_teardown_deletes_everything_and_a_second_teardown_reports_nothing() {
    spaced("nats teardown", |space| async move {
        let t = space.transport("teardown").await;
        let topology = one_endpoint("orders", &["tests.Noticed"]);
        t.declare(&topology).await.unwrap();
        t.send(command("orders", "gone-1", "{}")).await.unwrap();

        let deleted = t.teardown(&topology, false).await.unwrap();
        assert_eq!(deleted, orders_topology(&t));
        assert_eq!(space.streams().await, Vec::<String>::new());
        assert_eq!(t.teardown(&topology, false).await.unwrap(), vec![]);
        assert_eq!(t.teardown(&topology, true).await.unwrap(), vec![]);

        // A command to it is unroutable now, and the error reads well.
        let err = t
            .send(command("orders", "after-1", "{}"))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unroutable(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "unroutable: no queue receives messages for endpoint `orders`; start a bus that hosts it once on this transport (starting declares its queue)"
        );
        t.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_teardown_keeps_an_event_stream_another_endpoint_still_takes() {
    spaced("nats teardown shared event", |space| async move {
        let t = space.transport("shared-event").await;
        let first = one_endpoint("first", &["tests.Noticed"]);
        let second = one_endpoint("second", &["tests.Noticed"]);
        t.declare(&first).await.unwrap();
        t.declare(&second).await.unwrap();
        let naming = t.config().naming.clone();
        let event_stream = naming.event_stream("tests.Noticed");

        let deleted = t.teardown(&first, false).await.unwrap();
        assert!(
            !deleted.iter().any(|d| d.name == event_stream),
            "{deleted:?}"
        );
        assert_eq!(deleted.len(), 5, "{deleted:?}");
        // The other endpoint still gets the event.
        let event = Outgoing {
            destination: Destination::Event("tests.Noticed".into()),
            envelope: Envelope::from_bytes(
                Headers {
                    message_id: "evt-1".into(),
                    message_type: "tests.Noticed".into(),
                    content_type: "application/json".into(),
                    ..Headers::default()
                },
                b"{\"n\":1}".to_vec(),
            ),
            delay: None,
            deliver_at: None,
        };
        t.send(event).await.unwrap();
        let mut sub = t
            .subscribe("second", SubscribeOptions { prefetch: 1 })
            .await
            .unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the event reaches the endpoint left standing")
            .unwrap()
            .unwrap();
        assert_eq!(d.envelope().headers.message_id, "evt-1");
        d.ack().await.unwrap();
        sub.cancel().await;
        drop(sub);

        // Once the last subscriber goes, so does the event stream.
        let deleted = t.teardown(&second, false).await.unwrap();
        assert_eq!(
            deleted.last(),
            Some(&declared("stream", event_stream.clone()))
        );
        assert_eq!(space.streams().await, Vec::<String>::new());
        t.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_two_namespaces_on_one_server_isolate_commands_and_events() {
    let Some(blue) = Space::new("nats namespaces").await else {
        return;
    };
    let green = Space {
        url: blue.url.clone(),
        namespace: unique("ns"),
    };
    let (b, g) = (blue.clone(), green.clone());
    let body = async move {
        let (blue, green) = (b, g);
        let blue_t = blue.transport("blue").await;
        let green_t = green.transport("green").await;
        // The same endpoint name in both: separate subjects and streams.
        let endpoint = "ledger";
        assert_ne!(
            blue_t.config().naming.endpoint_stream(endpoint),
            green_t.config().naming.endpoint_stream(endpoint)
        );
        assert_eq!(
            blue_t.config().naming.command_subject(endpoint),
            format!("{}.bus.cmd.{endpoint}", blue.namespace)
        );
        let (blue_ledger, green_ledger) = (Ledger::new(), Ledger::new());
        let blue_bus = host(&blue_t, endpoint, &blue_ledger).await;
        let green_bus = host(&green_t, endpoint, &green_ledger).await;

        blue_bus
            .send(Work {
                n: 1,
                fail_first: 0,
            })
            .await
            .unwrap();
        blue_bus.publish(Noticed { n: 10 }).await.unwrap();
        green_bus
            .send(Work {
                n: 2,
                fail_first: 0,
            })
            .await
            .unwrap();
        green_bus.publish(Noticed { n: 20 }).await.unwrap();

        assert!(
            eventually(Duration::from_secs(15), || blue_ledger.total() == 2
                && green_ledger.total() == 2)
            .await,
            "blue {} green {}",
            blue_ledger.total(),
            green_ledger.total()
        );
        // Time for a stray copy to arrive, if there were one.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            (blue_ledger.count("1"), blue_ledger.count("evt-10")),
            (1, 1)
        );
        assert_eq!(
            (green_ledger.count("2"), green_ledger.count("evt-20")),
            (1, 1)
        );
        assert_eq!(blue_ledger.total(), 2, "blue saw nothing of green");
        assert_eq!(green_ledger.total(), 2, "green saw nothing of blue");
        blue_bus.shutdown().await;
        green_bus.shutdown().await;

        // A third namespace has no such endpoint at all.
        let red = Space {
            url: blue.url.clone(),
            namespace: unique("ns"),
        };
        let red_t = red.transport("red").await;
        let err = red_t
            .send(command(endpoint, "red-1", "{}"))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unroutable(_)), "{err}");
        for t in [blue_t, green_t, red_t] {
            t.close().await.unwrap();
        }
    };
    let cleanup = async {
        blue.cleanup().await;
        green.cleanup().await;
    };
    bus_tests::then_clean(body, cleanup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_an_invalid_namespace_is_a_configuration_error() {
    let Some(url) = nats_or_skip("nats invalid namespace").await else {
        return;
    };
    let err = NatsTransport::connect(NatsConfig::new(url).namespace("two words"))
        .await
        .unwrap_err();
    assert!(matches!(err, NatsError::Config(_)), "{err}");
    assert!(err.to_string().contains("namespace `two words`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_limits_report_the_server_max_payload_and_an_oversized_send_is_refused() {
    spaced("nats limits", |space| async move {
        let t = space.transport("limits").await;
        let max = t.client().server_info().max_payload;
        assert!(max > 0);
        assert_eq!(t.limits().max_message_size, Some(max));
        // The test server runs with nats-server's default.
        if space.url == "nats://127.0.0.1:4222" {
            assert_eq!(max, 1024 * 1024);
        }
        t.declare(&one_endpoint("big", &[])).await.unwrap();
        let mut big = command("big", "too-big", "");
        big.envelope = Envelope::from_bytes((*big.envelope.headers).clone(), vec![b'x'; max]);
        let err = t.send(big).await.unwrap_err();
        let TransportError::Refused { context, .. } = &err else {
            panic!("expected a refusal, got {err:?}");
        };
        let text = err.to_string();
        assert!(context.contains(&format!("{max} bytes")), "{text}");
        assert!(text.contains("max_payload"), "{text}");
        assert!(text.contains("raise `max_payload`"), "{text}");
        let size: usize = context
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the size in {text}"));
        assert!(size > max, "{text}");
        // The connection is fine, and a message that fits goes through.
        assert!(t.is_connected());
        t.send(command("big", "fits", "{}")).await.unwrap();
        assert_eq!(
            space
                .stored(&t.config().naming.endpoint_stream("big"))
                .await,
            1
        );
        t.close().await.unwrap();
    })
    .await;
}

/// Connect the NATS transport to `addr`, which speaks `found`: the error names it, quickly.
async fn connect_to_the_wrong_port(addr: &str, found: Protocol) {
    // Credentials in the URL stay out of the text.
    let config = NatsConfig::new(format!("nats://app:s3cret-pw@{addr}"))
        .connect_timeout(Duration::from_secs(10));
    let started = Instant::now();
    let err = NatsTransport::connect(config).await.unwrap_err();
    let took = started.elapsed();
    let expected = wrong_protocol(addr, Protocol::Nats, Some(found));
    assert!(
        matches!(&err, NatsError::WrongProtocol { found: Some(p), .. } if *p == found),
        "{err:?}"
    );
    assert_eq!(err.to_string(), expected);
    assert!(!format!("{err:?}").contains("s3cret-pw"));
    assert!(
        took < Duration::from_secs(5),
        "well before the connect timeout: {took:?}"
    );
    match TransportError::from(err) {
        TransportError::Connection { context, .. } => assert_eq!(context, expected),
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_connecting_to_the_amqp_port_says_an_amqp_broker_answered() {
    let Some(url) = rabbitmq_or_skip("nats on the AMQP port").await else {
        return;
    };
    connect_to_the_wrong_port(&host_port(&url), Protocol::Amqp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_connecting_to_the_redis_port_says_redis_answered() {
    let Some(url) = redis_or_skip("nats on the Redis port").await else {
        return;
    };
    connect_to_the_wrong_port(&host_port(&url), Protocol::Redis).await;
}
