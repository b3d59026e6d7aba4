//! The bridge between brokers: commands and events published on one broker reach the handlers
//! on another with their message ids and custom headers, none lost, also when the bridge's
//! source connection is cut while it forwards. The bridge reads the source through a proxy
//! (tests/src/proxy.rs), so the cut hits its connection alone and no other test's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_core::{
    Bridge, Bus, EndpointTopology, HandlerError, MessageContext, SendOptions, State, Topology,
    Transport,
};
use bus_tests::broker::AmqpScope;
use bus_tests::messages::{Noticed, Work};
use bus_tests::nats_broker::NatsScope;
use bus_tests::proxy::Proxy;
use bus_tests::redis_broker::RedisScope;
use bus_tests::{eventually, Ledger};
use bus_transport_amqp::{AmqpConfig, AmqpTransport};
use bus_transport_redis::{RedisConfig, RedisTransport};

/// The endpoint that handles the bridged commands and events on the target.
const ENDPOINT: &str = "bridged";
const BRIDGE: &str = "test";
const HEADER: &str = "x-origin";

/// What the target's handlers saw: each message id, and headers that did not arrive intact.
#[derive(Clone, Default)]
struct Seen {
    ledger: Ledger,
    bad_headers: Arc<AtomicU64>,
}

impl Seen {
    fn saw(&self, ctx: &MessageContext) {
        let id = ctx.message_id().to_string();
        if ctx.headers().get(HEADER) != Some(origin(&id).as_str()) {
            self.bad_headers.fetch_add(1, Ordering::Relaxed);
        }
        self.ledger.record(id, "target");
    }
}

fn origin(id: &str) -> String {
    format!("from-source-{id}")
}

async fn on_work(
    _cmd: Work,
    ctx: MessageContext,
    State(seen): State<Seen>,
) -> Result<(), HandlerError> {
    seen.saw(&ctx);
    Ok(())
}

async fn on_noticed(
    _evt: Noticed,
    ctx: MessageContext,
    State(seen): State<Seen>,
) -> Result<(), HandlerError> {
    seen.saw(&ctx);
    Ok(())
}

/// One run: `n` messages (half commands, half events) published on the source, forwarded by
/// a bridge reading the source through `proxy`, whose connections are dropped once when a
/// quarter has been forwarded.
struct Run {
    label: &'static str,
    /// The publisher's connection to the source (direct).
    source: Arc<dyn Transport>,
    /// The bridge's connection to the source (through the proxy).
    bridge_from: Arc<dyn Transport>,
    /// The bridge's connection to the target.
    bridge_to: Arc<dyn Transport>,
    /// The consuming bus's connection to the target.
    target: Arc<dyn Transport>,
    proxy: Proxy,
    n: u64,
}

async fn run_bridged(run: Run) {
    let seen = Seen::default();
    let consumer = Bus::builder()
        .transport_arc(run.target.clone())
        .without_discovery()
        .handler(ENDPOINT, on_work)
        .handler(ENDPOINT, on_noticed)
        .route::<Work>(ENDPOINT)
        .state(seen.clone())
        .endpoint(ENDPOINT, |e| e.concurrency(16).prefetch(100))
        .start()
        .await
        .expect("start the consuming bus on the target");

    // The bridge declares the same on start; declared here too so that nothing published
    // before it subscribed goes unrouted.
    let bridge_endpoint = format!("bridge.{BRIDGE}");
    run.source
        .declare(&Topology {
            endpoints: vec![
                EndpointTopology {
                    name: ENDPOINT.into(),
                    ..EndpointTopology::default()
                },
                EndpointTopology {
                    name: bridge_endpoint,
                    events: vec!["tests.Noticed".into()],
                    commands: Vec::new(),
                },
            ],
        })
        .await
        .expect("declare on the source");

    let bridge = Bridge::new(run.bridge_from.clone(), run.bridge_to.clone())
        .name(BRIDGE)
        .commands([ENDPOINT])
        .events(["tests.Noticed"])
        .prefetch(32)
        .retry_pause(Duration::from_millis(100))
        // An ack stuck on the connection the proxy cut is not waited for long; the source
        // redelivers it, and the count below would show it.
        .shutdown_grace(Duration::from_secs(3));
    let stats = bridge.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let bridging = tokio::spawn(bridge.run_until(async {
        let _ = stopped.await;
    }));

    let publisher = Bus::builder()
        .transport_arc(run.source.clone())
        .without_discovery()
        .route::<Work>(ENDPOINT)
        .build()
        .await
        .expect("build the publisher on the source");

    let n = run.n;
    let cut = {
        let (stats, proxy_cut) = (stats.clone(), Arc::new(run.proxy));
        let proxy = proxy_cut.clone();
        let task = tokio::spawn(async move {
            let reached = eventually(Duration::from_secs(60), || stats.forwarded() >= n / 4).await;
            assert!(reached, "the bridge did not forward a quarter in time");
            proxy.drop_connections()
        });
        (task, proxy_cut)
    };

    let confirmed = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for t in 0..8u64 {
        let (publisher, confirmed) = (publisher.clone(), confirmed.clone());
        senders.push(tokio::spawn(async move {
            for i in (t..n).step_by(8) {
                let (id, result) = if i % 2 == 0 {
                    let id = format!("w-{i}");
                    let options = SendOptions::new()
                        .message_id(id.clone())
                        .header(HEADER, origin(&id));
                    let work = Work {
                        n: i,
                        fail_first: 0,
                    };
                    (id, publisher.send_with(work, options).await)
                } else {
                    let id = format!("e-{i}");
                    let options = SendOptions::new()
                        .message_id(id.clone())
                        .header(HEADER, origin(&id));
                    (id, publisher.publish_with(Noticed { n: i }, options).await)
                };
                match result {
                    Ok(()) => {
                        confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("publishing {id} on the source: {e}"),
                }
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let dropped = cut.0.await.unwrap();

    let ledger = seen.ledger.clone();
    let arrived = eventually(Duration::from_secs(60), || ledger.distinct() as u64 >= n).await;
    // Late duplicates (a redelivery after the cut) would still be counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    let stats = bridging
        .await
        .unwrap()
        .expect("the bridge stopped with an error");
    consumer.shutdown().await;
    drop(cut.1);

    let lost = n - ledger.distinct() as u64;
    let bad_headers = seen.bad_headers.load(Ordering::Relaxed);
    println!(
        "BRIDGE {}: sent {}, received {} distinct ({} handlings), lost {lost}, duplicates {}, \
         headers changed {bad_headers}, forwarded {}, failed sends {}, connections cut {dropped}",
        run.label,
        confirmed.load(Ordering::Relaxed),
        ledger.distinct(),
        ledger.total(),
        ledger.duplicates(),
        stats.forwarded(),
        stats.failed(),
    );
    assert_eq!(confirmed.load(Ordering::Relaxed), n);
    assert!(dropped > 0, "the bridge's source connection was not cut");
    assert!(arrived, "not every message arrived in time: lost {lost}");
    assert_eq!(lost, 0);
    assert_eq!(bad_headers, 0, "custom headers changed on the way");
    for i in 0..n {
        let id = if i % 2 == 0 {
            format!("w-{i}")
        } else {
            format!("e-{i}")
        };
        assert!(ledger.count(&id) >= 1, "{id} did not arrive with its id");
    }
}

/// Closes AMQP connections before the runtime goes, so that no connection outlives it
/// trying to reconnect.
async fn close_amqp(transports: impl IntoIterator<Item = AmqpTransport>) {
    for transport in transports {
        let _ = tokio::time::timeout(Duration::from_secs(5), transport.close()).await;
    }
}

async fn proxy_to(port: u16) -> Proxy {
    Proxy::start(([127, 0, 0, 1], port).into())
        .await
        .expect("start the proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_to_nats_keeps_ids_and_headers_and_loses_nothing_across_a_source_cut() {
    let test = "bridge rabbitmq to nats";
    let Some(amqp) = AmqpScope::new(test).await else {
        return;
    };
    let Some(nats) = NatsScope::new(test).await else {
        amqp.cleanup().await;
        return;
    };
    let body = {
        let (amqp, nats) = (amqp.clone(), nats.clone());
        async move {
            let proxy = proxy_to(5672).await;
            let bridge_from = AmqpTransport::connect(
                AmqpConfig::new(format!("amqp://guest:guest@{}/%2f", proxy.addr()))
                    .connection_name("bridge-source")
                    .naming(amqp.naming.clone())
                    .publish_timeout(Duration::from_secs(10)),
            )
            .await
            .expect("connect the bridge to RabbitMQ through the proxy");
            let publisher = amqp.transport("publisher").await;
            run_bridged(Run {
                label: "amqp -> nats",
                source: Arc::new(publisher.clone()),
                bridge_from: Arc::new(bridge_from.clone()),
                bridge_to: Arc::new(nats.transport("bridge-target").await),
                target: Arc::new(nats.transport("consumer").await),
                proxy,
                n: 1_000,
            })
            .await;
            close_amqp([publisher, bridge_from]).await;
        }
    };
    let cleanup = async {
        amqp.cleanup().await;
        nats.cleanup().await;
    };
    bus_tests::then_clean(body, cleanup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_rabbitmq_keeps_ids_and_headers_and_loses_nothing_across_a_source_cut() {
    let test = "bridge redis to rabbitmq";
    let Some(redis) = RedisScope::new(test).await else {
        return;
    };
    let Some(amqp) = AmqpScope::new(test).await else {
        redis.cleanup().await;
        return;
    };
    let body = {
        let (redis, amqp) = (redis.clone(), amqp.clone());
        async move {
            let proxy = proxy_to(6379).await;
            let bridge_from = RedisTransport::connect(
                RedisConfig::new(format!("redis://{}", proxy.addr()))
                    .key_prefix(redis.keys.prefix.clone())
                    .consumer_name("bridge-source")
                    .block_timeout(Duration::from_millis(200))
                    .claim_interval(Duration::from_millis(200))
                    // What was taken before the cut and not settled is reclaimed after this.
                    .reclaim_idle(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(5)),
            )
            .await
            .expect("connect the bridge to Redis through the proxy");
            let bridge_to = amqp.transport("bridge-target").await;
            let target = amqp.transport("consumer").await;
            run_bridged(Run {
                label: "redis -> amqp",
                source: Arc::new(redis.transport("publisher").await),
                bridge_from: Arc::new(bridge_from),
                bridge_to: Arc::new(bridge_to.clone()),
                target: Arc::new(target.clone()),
                proxy,
                n: 1_000,
            })
            .await;
            close_amqp([bridge_to, target]).await;
        }
    };
    let cleanup = async {
        redis.cleanup().await;
        amqp.cleanup().await;
    };
    bus_tests::then_clean(body, cleanup).await;
}

#[tokio::test]
async fn typed_in_process_body_is_refused_and_left_on_the_source() {
    use bus_core::{AnyMessage, Body, BridgeError, Destination, Envelope, Headers, Outgoing};
    use bus_transport_memory::MemoryTransport;

    let from: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let to: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let topology = Topology {
        endpoints: vec![EndpointTopology {
            name: ENDPOINT.into(),
            ..EndpointTopology::default()
        }],
    };
    from.declare(&topology).await.unwrap();
    to.declare(&topology).await.unwrap();
    let typed: Arc<dyn AnyMessage> = Arc::new(Work {
        n: 1,
        fail_first: 0,
    });
    let envelope = Envelope {
        headers: Arc::new(Headers {
            message_id: "typed-1".into(),
            message_type: "tests.Work".into(),
            ..Headers::default()
        }),
        body: Body::Message(typed),
    };
    from.send(Outgoing::new(
        Destination::Endpoint(ENDPOINT.into()),
        envelope,
    ))
    .await
    .unwrap();

    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        Bridge::new(from.clone(), to.clone())
            .commands([ENDPOINT])
            .run_until(std::future::pending()),
    )
    .await
    .expect("the bridge stops by itself");
    let error = outcome.expect_err("a typed body cannot cross");
    assert!(
        matches!(&error, BridgeError::TypedBody { message_id, .. } if message_id == "typed-1"),
        "{error}"
    );
    assert!(error.to_string().contains("typed in-process body"));

    let mut left = from
        .subscribe(ENDPOINT, bus_core::SubscribeOptions { prefetch: 1 })
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), left.next())
        .await
        .expect("the message is still on the source")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.envelope().headers.message_id, "typed-1");
}

#[tokio::test]
async fn a_bridge_with_nothing_to_forward_is_refused() {
    use bus_transport_memory::MemoryTransport;

    let from: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let to: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let error = Bridge::new(from, to)
        .run_until(std::future::pending())
        .await
        .expect_err("nothing chosen");
    assert!(error.to_string().contains("nothing to forward"), "{error}");
}
