//! Operating the Redis Streams transport against the running Redis: browsing an endpoint's
//! error and input streams without taking anything, tearing down what a bus declared (a dry
//! run first), namespaces that keep two buses on one Redis apart, and connection errors that
//! say which protocol answered when the URL points at another broker's port.
//!
//! Every test runs under a namespace of its own, whose keys are deleted afterwards even when
//! the test fails. Every test skips with a printed reason when its server is unreachable, and
//! fails instead when `BUS_REQUIRE_BROKERS=1`.

use std::collections::BTreeSet;
use std::error::Error as _;
use std::time::{Duration, Instant};

use bus_core::probe::Protocol;
use bus_core::{
    header, Body, Bus, Declared, Destination, EndpointTopology, Envelope, HandlerError, Headers,
    MessageContext, Outgoing, QueueKind, State, SubscribeOptions, Subscription, Topology,
    Transport, TransportError,
};
use bus_tests::broker::{rabbitmq_or_skip, unique};
use bus_tests::messages::{Noticed, Work};
use bus_tests::nats_broker::nats_or_skip;
use bus_tests::redis_broker::redis_or_skip;
use bus_tests::{eventually, record, Ledger};
use bus_transport_redis::{Keys, RedisConfig, RedisError, RedisTransport};
use redis::aio::MultiplexedConnection;

/// One test's namespace on the shared Redis.
#[derive(Clone, Debug)]
struct Namespace {
    url: String,
    name: String,
}

impl Namespace {
    /// A transport config in this namespace, with short timings so tests run quickly.
    fn config(&self, consumer: &str) -> RedisConfig {
        RedisConfig::new(self.url.clone())
            .namespace(self.name.clone())
            .consumer_name(consumer)
            .block_timeout(Duration::from_millis(200))
            .claim_interval(Duration::from_millis(200))
            .operation_timeout(Duration::from_secs(5))
    }

    /// The key names of this namespace (default prefix).
    fn keys(&self) -> Keys {
        Keys::default().namespace(self.name.clone())
    }

    async fn transport(&self, consumer: &str) -> RedisTransport {
        RedisTransport::connect(self.config(consumer))
            .await
            .expect("connect to Redis")
    }

    async fn raw(&self) -> MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("raw Redis connection")
    }

    /// Every key under the namespace, sorted.
    async fn keys_left(&self) -> Vec<String> {
        let mut conn = self.raw().await;
        let mut cursor: u64 = 0;
        let mut out = BTreeSet::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.name))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("SCAN");
            out.extend(batch);
            if next == 0 {
                return out.into_iter().collect();
            }
            cursor = next;
        }
    }

    async fn cleanup(&self) {
        let keys = self.keys_left().await;
        if keys.is_empty() {
            return;
        }
        let mut conn = self.raw().await;
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
    }
}

/// Run a test body in fresh namespaces (`count` of them), then delete their keys even if the
/// body panicked.
async fn namespaced<F, Fut>(test: &str, count: usize, body: F)
where
    F: FnOnce(Vec<Namespace>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(url) = redis_or_skip(test).await else {
        return;
    };
    let spaces: Vec<Namespace> = (0..count)
        .map(|_| Namespace {
            url: url.clone(),
            name: unique("ns"),
        })
        .collect();
    let result =
        tokio::time::timeout(Duration::from_secs(120), tokio::spawn(body(spaces.clone()))).await;
    for ns in &spaces {
        ns.cleanup().await;
    }
    match result {
        Err(_) => panic!("{test}: no result within 120 s"),
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Ok(Ok(())) => {}
    }
}

async fn notice(
    evt: Noticed,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    ledger.record(format!("{}/{}", ctx.endpoint(), evt.n), ctx.endpoint());
    Ok(())
}

/// A bus in `ns` hosting `endpoint`: `Work` commands (the shared `record` handler, which
/// fails the first `fail_first` attempts) and `Noticed` events, with no retries, one message
/// at a time so failures reach the error stream in the order sent.
async fn host(ns: &Namespace, endpoint: &str, ledger: &Ledger) -> Bus {
    Bus::builder()
        .transport(ns.transport(endpoint).await)
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

fn topology(endpoints: &[(&str, &[&str])]) -> Topology {
    Topology {
        endpoints: endpoints
            .iter()
            .map(|(name, events)| EndpointTopology {
                name: name.to_string(),
                events: events.iter().map(|e| e.to_string()).collect(),
                commands: vec![],
            })
            .collect(),
    }
}

fn envelope(id: &str) -> Envelope {
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

fn to(destination: Destination, envelope: Envelope, delay: Option<Duration>) -> Outgoing {
    Outgoing {
        destination,
        envelope,
        delay,
        deliver_at: None,
    }
}

fn endpoint(name: &str) -> Destination {
    Destination::Endpoint(name.into())
}

fn ids(envelopes: &[Envelope]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| e.headers.message_id.to_string())
        .collect()
}

fn work_of(env: &Envelope) -> Work {
    match &env.body {
        Body::Bytes(b) => serde_json::from_slice(b).expect("a Work body"),
        other => panic!("expected bytes, got {other:?}"),
    }
}

async fn xlen(raw: &mut MultiplexedConnection, key: String) -> usize {
    redis::cmd("XLEN").arg(key).query_async(raw).await.unwrap()
}

fn declared(kind: &'static str, name: impl Into<String>) -> Declared {
    Declared {
        kind,
        name: name.into(),
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> bus_core::Delivery {
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("subscription error: {e}"),
        Ok(None) => panic!("subscription closed"),
        Err(_) => panic!("nothing delivered within 5 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_browse_lists_the_error_stream_oldest_first_and_leaves_it() {
    namespaced("redis browse error stream", 1, |spaces| async move {
        let ns = &spaces[0];
        let ledger = Ledger::new();
        let bus = host(ns, "ledger", &ledger).await;
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
            "three failed for good"
        );
        bus.shutdown().await;

        let t = ns.transport("browser").await;
        let failed = t.browse("ledger", QueueKind::Errors, 10).await.unwrap();
        let numbers: Vec<u64> = failed.iter().map(|e| work_of(e).n).collect();
        assert_eq!(numbers, [1, 2, 3], "oldest first");
        for env in &failed {
            let h = &env.headers;
            assert_eq!(h.message_type, "tests.Work");
            assert_eq!(h.get(header::FAILURE_REASON), Some("handler-error"));
            assert_eq!(h.get(header::FAILURE_ENDPOINT), Some("ledger"));
            assert_eq!(h.get(header::FAILURE_ATTEMPTS), Some("1"));
        }
        assert_eq!(
            failed[0].headers.get(header::FAILURE_ERROR),
            Some("work 1 failing on attempt 1")
        );

        // Left in place: the same again, and a limit takes the oldest.
        let again = t.browse("ledger", QueueKind::Errors, 10).await.unwrap();
        assert_eq!(ids(&again), ids(&failed));
        let first_two = t.browse("ledger", QueueKind::Errors, 2).await.unwrap();
        assert_eq!(ids(&first_two), ids(&failed)[..2]);
        assert!(t
            .browse("ledger", QueueKind::Errors, 0)
            .await
            .unwrap()
            .is_empty());
        let mut raw = ns.raw().await;
        assert_eq!(xlen(&mut raw, ns.keys().error_stream("ledger")).await, 3);
        // Nothing waits in the input stream; an endpoint never declared has nothing at all.
        assert!(t
            .browse("ledger", QueueKind::Input, 10)
            .await
            .unwrap()
            .is_empty());
        assert!(t
            .browse("nobody", QueueKind::Errors, 10)
            .await
            .unwrap()
            .is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_browse_of_the_input_stream_shows_what_is_still_to_be_handled_and_leaves_it() {
    namespaced("redis browse input stream", 1, |spaces| async move {
        let ns = &spaces[0];
        let keys = ns.keys();
        let t = ns.transport("input").await;
        t.declare(&topology(&[("orders", &[])])).await.unwrap();
        for id in ["o-1", "o-2", "o-3"] {
            t.send(to(endpoint("orders"), envelope(id), None))
                .await
                .unwrap();
        }
        // A delayed message waits in the delay set, not in the input stream.
        t.send(to(
            endpoint("orders"),
            envelope("later"),
            Some(Duration::from_secs(600)),
        ))
        .await
        .unwrap();
        let waiting = t.browse("orders", QueueKind::Input, 10).await.unwrap();
        assert_eq!(ids(&waiting), ["o-1", "o-2", "o-3"]);
        assert_eq!(*waiting[0].headers, *envelope("o-1").headers, "decoded");
        assert_eq!(
            ids(&t.browse("orders", QueueKind::Input, 2).await.unwrap()),
            ["o-1", "o-2"]
        );
        let mut raw = ns.raw().await;
        assert_eq!(xlen(&mut raw, keys.stream("orders")).await, 3, "left there");

        // One handled (acked), one in a handler (pending), one not handed out yet.
        let mut sub = t
            .subscribe("orders", SubscribeOptions { prefetch: 1 })
            .await
            .unwrap();
        let first = next(&mut sub).await;
        assert_eq!(first.envelope().headers.message_id, "o-1");
        first.ack().await.unwrap();
        let second = next(&mut sub).await;
        assert_eq!(second.envelope().headers.message_id, "o-2");
        let waiting = t.browse("orders", QueueKind::Input, 10).await.unwrap();
        assert_eq!(
            ids(&waiting),
            ["o-2", "o-3"],
            "in progress, then not handed out"
        );

        // An entry acked without being deleted (by another tool) is not still to be handled.
        let entry_id: String = {
            let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(keys.stream("orders"))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut raw)
                .await
                .unwrap();
            reply[0].0.clone()
        };
        let acked: i64 = redis::cmd("XACK")
            .arg(keys.stream("orders"))
            .arg(keys.group("orders"))
            .arg(&entry_id)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(acked, 1);
        let waiting = t.browse("orders", QueueKind::Input, 10).await.unwrap();
        assert_eq!(ids(&waiting), ["o-3"]);
        second.ack().await.unwrap();
        drop(sub);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_teardown_dry_run_lists_what_exists_and_deletes_nothing() {
    namespaced("redis teardown dry run", 1, |spaces| async move {
        let ns = &spaces[0];
        let keys = ns.keys();
        let t = ns.transport("dry").await;
        t.declare(&topology(&[
            ("billing", &["sales.Placed", "sales.Cancelled"]),
            ("audit", &["sales.Placed"]),
        ]))
        .await
        .unwrap();
        t.send(to(endpoint("billing"), envelope("b-1"), None))
            .await
            .unwrap();
        t.send(to(
            Destination::ErrorQueue("billing".into()),
            envelope("b-failed"),
            None,
        ))
        .await
        .unwrap();
        t.send(to(
            endpoint("billing"),
            envelope("b-later"),
            Some(Duration::from_secs(600)),
        ))
        .await
        .unwrap();
        let before = ns.keys_left().await;

        // The topology names no events: the subscriptions are found all the same.
        let report = t
            .teardown(&topology(&[("billing", &[])]), true)
            .await
            .unwrap();
        let stream = keys.stream("billing");
        assert_eq!(
            report,
            vec![
                declared("stream", stream.clone()),
                declared("consumer group", format!("{stream} billing")),
                declared("stream", keys.error_stream("billing")),
                declared("sorted set", keys.delayed("billing")),
                declared("set member", format!("{} billing", keys.endpoints())),
                // Only `billing` subscribes to it: the set goes.
                declared("set", keys.subscribers("sales.Cancelled")),
                // `audit` subscribes too: only the member goes.
                declared(
                    "set member",
                    format!("{} billing", keys.subscribers("sales.Placed"))
                ),
            ]
        );
        assert_eq!(ns.keys_left().await, before, "a dry run deletes nothing");
        // Still working: a command to `billing` is accepted.
        t.send(to(endpoint("billing"), envelope("b-2"), None))
            .await
            .unwrap();
        // Both endpoints: the registry and the shared set are left empty, so they go whole.
        let both = t
            .teardown(&topology(&[("billing", &[]), ("audit", &[])]), true)
            .await
            .unwrap();
        assert!(
            both.contains(&declared("set", keys.endpoints())),
            "{both:?}"
        );
        assert!(
            both.contains(&declared("set", keys.subscribers("sales.Placed"))),
            "{both:?}"
        );
        assert_eq!(ns.keys_left().await, before);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_teardown_deletes_what_a_bus_declared_and_a_second_teardown_reports_nothing() {
    namespaced("redis teardown", 1, |spaces| async move {
        let ns = &spaces[0];
        let ledger = Ledger::new();
        let bus = host(ns, "ledger", &ledger).await;
        bus.send(Work {
            n: 1,
            fail_first: 0,
        })
        .await
        .unwrap();
        bus.send(Work {
            n: 2,
            fail_first: u32::MAX,
        })
        .await
        .unwrap();
        bus.publish(Noticed { n: 3 }).await.unwrap();
        assert!(
            eventually(Duration::from_secs(15), || {
                ledger.total() == 2 && bus.stats().dead_lettered == 1
            })
            .await,
            "handled: {:?}",
            ledger.notes()
        );
        let topology = bus.topology().clone();
        bus.shutdown().await;
        assert!(!ns.keys_left().await.is_empty());

        let t = ns.transport("cleaner").await;
        let dry = t.teardown(&topology, true).await.unwrap();
        let report = t.teardown(&topology, false).await.unwrap();
        println!("redis teardown: {report:?}");
        assert_eq!(report, dry, "the dry run said what would go");
        let keys = ns.keys();
        for expected in [
            declared("stream", keys.stream("ledger")),
            declared("stream", keys.error_stream("ledger")),
            declared("set", keys.endpoints()),
            declared("set", keys.subscribers("tests.Noticed")),
        ] {
            assert!(report.contains(&expected), "{expected} in {report:?}");
        }
        assert_eq!(
            ns.keys_left().await,
            Vec::<String>::new(),
            "nothing left under the namespace"
        );

        // Idempotent: nothing left to report, and nothing fails.
        assert_eq!(t.teardown(&topology, false).await.unwrap(), vec![]);
        assert_eq!(t.teardown(&topology, true).await.unwrap(), vec![]);
        // A command to it is unroutable now, and says which endpoint.
        let err = t
            .send(to(endpoint("ledger"), envelope("gone"), None))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unroutable(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "unroutable: no queue receives messages for endpoint `ledger`; start a bus that hosts it once on this transport (starting declares its queue)"
        );
        // An event it subscribed to goes nowhere, and writes nothing.
        t.send(to(
            Destination::Event("tests.Noticed".into()),
            envelope("e"),
            None,
        ))
        .await
        .unwrap();
        assert_eq!(ns.keys_left().await, Vec::<String>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_namespaces_on_one_server_never_see_each_others_commands_or_events() {
    namespaced("redis namespaces", 2, |spaces| async move {
        let (a, b) = (&spaces[0], &spaces[1]);
        let (ledger_a, ledger_b) = (Ledger::new(), Ledger::new());
        // The same endpoint, commands and events in both.
        let bus_a = host(a, "ledger", &ledger_a).await;
        let bus_b = host(b, "ledger", &ledger_b).await;
        for n in 0..5 {
            bus_a
                .send(Work {
                    n: 100 + n,
                    fail_first: 0,
                })
                .await
                .unwrap();
            bus_b
                .send(Work {
                    n: 200 + n,
                    fail_first: 0,
                })
                .await
                .unwrap();
        }
        bus_a.publish(Noticed { n: 1 }).await.unwrap();
        bus_b.publish(Noticed { n: 2 }).await.unwrap();
        assert!(
            eventually(Duration::from_secs(15), || ledger_a.total() == 6
                && ledger_b.total() == 6)
            .await,
            "a: {}, b: {}",
            ledger_a.total(),
            ledger_b.total()
        );
        // Time for anything that crossed over to arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
        bus_a.shutdown().await;
        bus_b.shutdown().await;
        for n in 0..5 {
            assert_eq!(ledger_a.count(&(100 + n).to_string()), 1);
            assert_eq!(
                ledger_a.count(&(200 + n).to_string()),
                0,
                "b's command in a"
            );
            assert_eq!(ledger_b.count(&(200 + n).to_string()), 1);
            assert_eq!(
                ledger_b.count(&(100 + n).to_string()),
                0,
                "a's command in b"
            );
        }
        assert_eq!(ledger_a.count("ledger/1"), 1);
        assert_eq!(ledger_a.count("ledger/2"), 0, "b's event in a");
        assert_eq!(ledger_b.count("ledger/2"), 1);
        assert_eq!(ledger_b.count("ledger/1"), 0, "a's event in b");
        assert_eq!(ledger_a.total() + ledger_b.total(), 12);

        for ns in [a, b] {
            let left = ns.keys_left().await;
            let root = format!("{}:bus:", ns.name);
            assert!(!left.is_empty());
            assert!(left.iter().all(|k| k.starts_with(&root)), "{left:?}");
        }
        // Tearing down one namespace leaves the other alone.
        let t = a.transport("cleaner").await;
        t.teardown(&topology(&[("ledger", &[])]), false)
            .await
            .unwrap();
        assert!(a.keys_left().await.is_empty());
        assert!(!b.keys_left().await.is_empty());
    })
    .await;
}

/// `host:port` of a broker URL such as `amqp://guest:guest@127.0.0.1:5672/%2f`.
fn address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Connect the Redis transport to `address`, where `expected` answers, and check the error.
async fn connecting_to_another_broker_says_which(address: &str, expected: Protocol) {
    let connect_timeout = Duration::from_secs(5);
    let config = RedisConfig::new(format!("redis://:canary-Pa55word-77@{address}"))
        .connect_timeout(connect_timeout);
    let started = Instant::now();
    let err = RedisTransport::connect(config).await.unwrap_err();
    let took = started.elapsed();
    println!("connecting Redis to {address}: {err} after {took:?}");
    assert!(took < connect_timeout + Duration::from_secs(1), "{took:?}");
    match &err {
        RedisError::WrongProtocol { found, .. } => assert_eq!(*found, Some(expected)),
        other => panic!("expected a wrong protocol, got {other:?}"),
    }
    let err = TransportError::from(err);
    let text = err.to_string();
    println!("as a transport error: {text}");
    assert!(
        text.starts_with(&format!(
            "connection error: {address} answered, but not as a Redis server: it speaks {expected} (is this the {expected} port?)"
        )),
        "{text}"
    );
    assert!(!text.contains("canary-Pa55word-77"), "{text}");
    assert!(!format!("{err:?}").contains("canary-Pa55word-77"));
    assert!(matches!(err, TransportError::Connection { .. }), "{err:?}");
    let source = err.source().expect("the client's error is kept");
    assert!(source.downcast_ref::<redis::RedisError>().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connecting_to_the_amqp_port_says_an_amqp_broker_answered() {
    let Some(url) = rabbitmq_or_skip("redis connecting to the AMQP port").await else {
        return;
    };
    connecting_to_another_broker_says_which(&address(&url), Protocol::Amqp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connecting_to_the_nats_port_says_a_nats_server_answered() {
    let Some(url) = nats_or_skip("redis connecting to the NATS port").await else {
        return;
    };
    connecting_to_another_broker_says_which(&address(&url), Protocol::Nats).await;
}

#[test]
fn broker_addresses_are_read_from_their_urls() {
    assert_eq!(
        address("amqp://guest:guest@127.0.0.1:5672/%2f"),
        "127.0.0.1:5672"
    );
    assert_eq!(address("nats://127.0.0.1:4222"), "127.0.0.1:4222");
}
