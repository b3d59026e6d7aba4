//! The operational HTTP endpoints of the example services (`bus_examples::ops`), over real
//! HTTP with a real client: `/metrics` shows the bus's counters move while orders flow over
//! RabbitMQ, `/readyz` follows the broker connection (503 while it is cut through a proxy,
//! 200 once it is back) and the bus's life, `/healthz` answers while the process is up.
//!
//! The RabbitMQ tests skip with a printed reason when RabbitMQ is unreachable, and fail
//! instead when `BUS_REQUIRE_BROKERS=1`. Each one puts its queues under a namespace of its
//! own and removes them afterwards.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bus_core::{Bus, SendOptions};
use bus_examples::messages::PlaceOrder;
use bus_examples::ops::{MetricsSource, OpsServer};
use bus_examples::service::shop_bus;
use bus_examples::trace::ShopStats;
use bus_tests::broker::{rabbitmq_or_skip, unique};
use bus_tests::proxy::Proxy;
use bus_transport_amqp::{AmqpConfig, AmqpTransport};
use bus_transport_memory::MemoryTransport;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest a single HTTP exchange may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// What a GET answered.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

/// `GET http://{addr}{path}` with hyper's HTTP/1 client on a connection of its own, bounded
/// in time: a server that does not answer fails the test instead of hanging it.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.into_body().collect().await?.to_bytes();
        drop(sender);
        driver.abort();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Reply {
            status,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    match tokio::time::timeout(REQUEST_DEADLINE, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => panic!("GET {path} on {addr} failed: {e}"),
        Err(_) => panic!("GET {path} on {addr}: no answer within {REQUEST_DEADLINE:?}"),
    }
}

/// GET `path` every 100 ms until it answers `status` or `deadline` passes; the last reply
/// either way.
async fn wait_for_status(
    addr: SocketAddr,
    path: &str,
    status: u16,
    deadline: Duration,
) -> Result<Reply, Reply> {
    let until = Instant::now() + deadline;
    loop {
        let reply = get(addr, path).await;
        if reply.status == status {
            return Ok(reply);
        }
        if Instant::now() >= until {
            return Err(reply);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The metrics source the services use, set up once for this test binary: the tracing
/// subscriber and the meter provider are process-wide.
fn metrics() -> Arc<dyn MetricsSource> {
    static TELEMETRY: OnceLock<Arc<dyn MetricsSource>> = OnceLock::new();
    TELEMETRY
        .get_or_init(|| {
            let telemetry = bus_otel::Telemetry::from_env("observability-http-test")
                .expect("telemetry from the OTEL_* variables");
            Arc::new(telemetry)
        })
        .clone()
}

/// The sum of every sample of the metric family `family` (a counter's `_total`, or a
/// histogram's `_count`) in a Prometheus text, whatever its labels; 0 when absent.
fn sum_of(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, rest) = line.split_at(line.find(['{', ' '])?);
            (name == family).then_some(rest)
        })
        .filter_map(|rest| {
            // The value follows the labels (if any); a timestamp may follow the value.
            let after_labels = rest.rfind('}').map_or(rest, |i| &rest[i + 1..]);
            after_labels.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// An order for the sales endpoint that the handler accepts.
fn order(order_id: u32) -> PlaceOrder {
    PlaceOrder {
        order_id,
        customer: "ada".into(),
        sku: "keyboard".into(),
        quantity: 1,
        unit_price_cents: 4_900,
    }
}

/// The shop's `sales` endpoint, set up as the order-service sets it up, on `transport`.
async fn sales_bus(transport: AmqpTransport, stats: &ShopStats) -> Bus {
    shop_bus(Arc::new(transport), stats)
        .host(["sales"])
        .start()
        .await
        .expect("the sales endpoint starts")
}

/// Remove what the bus declared (its namespace keeps it apart from every other test), and the
/// namespace's events exchange, bounded in time.
async fn teardown(bus: &Bus, transport: &AmqpTransport) {
    let removing = async {
        bus.teardown(false).await?;
        transport.delete_events_exchange(false).await?;
        Ok::<_, bus_core::BusError>(())
    };
    match tokio::time::timeout(Duration::from_secs(30), removing).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("teardown failed: {e}"),
        Err(_) => eprintln!("teardown did not finish within 30 s"),
    }
}

/// Forward connections on `addr` to `target` again, as the proxy did before it was cut: the
/// broker is reachable at the same address once more. Binding is retried briefly, since the
/// cut proxy's listener closes as its task is dropped.
async fn reopen(addr: SocketAddr, target: SocketAddr) -> JoinHandle<()> {
    let until = Instant::now() + Duration::from_secs(5);
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(e) if Instant::now() >= until => panic!("cannot listen on {addr} again: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_metrics_show_the_bus_counters_moving_while_orders_flow_over_amqp() {
    const TEST: &str = "ops metrics over amqp";
    // Before the bus is built: the bus makes its instruments from the meter provider then.
    let metrics = metrics();
    let Some(url) = rabbitmq_or_skip(TEST).await else {
        return;
    };
    let config = AmqpConfig::new(url)
        .namespace(unique("obs"))
        .connection_name("ops-metrics-test")
        .publish_timeout(Duration::from_secs(10));
    let transport = AmqpTransport::connect(config)
        .await
        .expect("connect to RabbitMQ");
    let stats = ShopStats::default();
    let bus = sales_bus(transport.clone(), &stats).await;
    let server = OpsServer::start("127.0.0.1:0".parse().unwrap(), bus.clone(), metrics)
        .await
        .expect("serve the ops endpoints");
    let addr = server.local_addr();

    let body = {
        let bus = bus.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let before = get(addr, "/metrics").await;
            assert_eq!(before.status, 200, "{before:?}");
            assert_eq!(before.content_type, bus_otel::PROMETHEUS_CONTENT_TYPE);

            const ORDERS: u32 = 5;
            for n in 0..ORDERS {
                bus.send_with(
                    order(9_000 + n),
                    SendOptions::new().correlation_id(format!("ops-{n}")),
                )
                .await
                .expect("send an order");
            }
            let handled = bus_tests::eventually(Duration::from_secs(30), || {
                stats.orders() >= u64::from(ORDERS)
            })
            .await;
            assert!(
                handled,
                "only {} of {ORDERS} orders handled",
                stats.orders()
            );

            // Every sale sends a command and publishes an event, and consumes the command;
            // other tests of this binary only add to the process-wide counters.
            let families = [
                ("messaging_client_sent_messages_total", 2 * ORDERS),
                ("messaging_client_consumed_messages_total", ORDERS),
                ("messaging_process_duration_seconds_count", ORDERS),
            ];
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                let after = get(addr, "/metrics").await;
                assert_eq!(after.status, 200, "{after:?}");
                let moved: Vec<(&str, f64)> = families
                    .iter()
                    .map(|(family, _)| {
                        (
                            *family,
                            sum_of(&after.body, family) - sum_of(&before.body, family),
                        )
                    })
                    .collect();
                let all_moved = families
                    .iter()
                    .zip(&moved)
                    .all(|((_, least), (_, delta))| *delta >= f64::from(*least));
                if all_moved {
                    println!("ops metrics moved: {moved:?}");
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "the counters did not move as expected within 10 s: {moved:?}\n{}",
                    after.body
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let result = body.await;
    bus.shutdown().await;
    server.shutdown().await.expect("the ops server stops");
    teardown(&bus, &transport).await;
    let _ = transport.close().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_readyz_is_503_while_the_amqp_connection_is_down_and_200_after() {
    const TEST: &str = "ops readyz over amqp";
    let metrics = metrics();
    let Some(url) = rabbitmq_or_skip(TEST).await else {
        return;
    };
    let mut proxied = url::Url::parse(&url).expect("the RabbitMQ URL parses");
    let target = proxied
        .socket_addrs(|| Some(5672))
        .expect("the RabbitMQ address resolves")[0];
    let proxy = Proxy::start(target).await.expect("start the proxy");
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.addr().port())).unwrap();
    let config = AmqpConfig::new(proxied.to_string())
        .namespace(unique("obs"))
        .connection_name("ops-readyz-test")
        .publish_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2));
    let transport = AmqpTransport::connect(config)
        .await
        .expect("connect to RabbitMQ through the proxy");
    let stats = ShopStats::default();
    let bus = sales_bus(transport.clone(), &stats).await;
    let server = OpsServer::start("127.0.0.1:0".parse().unwrap(), bus.clone(), metrics)
        .await
        .expect("serve the ops endpoints");
    let addr = server.local_addr();

    let body = {
        let bus = bus.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let ready = wait_for_status(addr, "/readyz", 200, Duration::from_secs(15)).await;
            let ready = ready.unwrap_or_else(|r| panic!("never ready before the cut: {r:?}"));
            assert_eq!(ready.body, "ready\n");

            proxy.cut();
            let down = wait_for_status(addr, "/readyz", 503, Duration::from_secs(15))
                .await
                .unwrap_or_else(|r| panic!("still ready 15 s after the cut: {r:?}"));
            assert!(down.body.starts_with("not ready: "), "{down:?}");
            println!("readyz with the broker away: {}", down.body.trim_end());
            // Still 503 a while later: the broker stays away until the proxy reopens.
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let again = get(addr, "/readyz").await;
                assert_eq!(again.status, 503, "ready with the broker away: {again:?}");
            }
            // Liveness does not depend on the broker.
            assert_eq!(get(addr, "/healthz").await.status, 200);

            let forwarder = reopen(proxy.addr(), target).await;
            let back = wait_for_status(addr, "/readyz", 200, Duration::from_secs(30)).await;
            let back =
                back.unwrap_or_else(|r| panic!("not ready 30 s after the broker came back: {r:?}"));
            assert_eq!(back.body, "ready\n");

            // Ready means consuming: an order sent now is handled.
            bus.send(order(9_100)).await.expect("send after recovery");
            let handled =
                bus_tests::eventually(Duration::from_secs(30), || stats.orders() >= 1).await;
            assert!(handled, "the order sent after recovery was not handled");
            // The forwarder outlives this body: the teardown below goes through it.
            forwarder.abort_handle()
        })
    };
    let result = body.await;
    bus.shutdown().await;
    server.shutdown().await.expect("the ops server stops");
    teardown(&bus, &transport).await;
    let _ = transport.close().await;
    match result {
        Ok(forwarder) => forwarder.abort(),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_healthz_is_200_ok_and_readyz_follows_the_bus_from_start_to_shutdown() {
    let metrics = metrics();
    let bus = shop_bus(Arc::new(MemoryTransport::new()), &ShopStats::default())
        .host(["sales"])
        .build()
        .await
        .expect("build the sales endpoint");
    let server = OpsServer::start("127.0.0.1:0".parse().unwrap(), bus.clone(), metrics)
        .await
        .expect("serve the ops endpoints");
    let addr = server.local_addr();

    let health = get(addr, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let before = get(addr, "/readyz").await;
    assert_eq!(before.status, 503, "ready before start: {before:?}");
    assert!(before.body.contains("not running"), "{before:?}");

    bus.start().await.expect("start the bus");
    let ready = wait_for_status(addr, "/readyz", 200, Duration::from_secs(5))
        .await
        .unwrap_or_else(|r| panic!("not ready after start: {r:?}"));
    assert_eq!(ready.body, "ready\n");
    assert_eq!(get(addr, "/nothing-here").await.status, 404);

    bus.shutdown().await;
    let after = get(addr, "/readyz").await;
    assert_eq!(after.status, 503, "ready after shutdown: {after:?}");
    // Alive for as long as the process answers, shut down or not.
    assert_eq!(get(addr, "/healthz").await.status, 200);

    server.shutdown().await.expect("the ops server stops");
    let refused = tokio::time::timeout(REQUEST_DEADLINE, TcpStream::connect(addr)).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "still accepting connections after shutdown"
    );
}

#[test]
fn sum_of_adds_a_family_across_labels_and_ignores_other_families() {
    let text = "\
# HELP messaging_client_sent_messages_total Sent.
# TYPE messaging_client_sent_messages_total counter
messaging_client_sent_messages_total{destination=\"a\"} 3
messaging_client_sent_messages_total{destination=\"b\",x=\"}\"} 4 1700000000000
messaging_client_sent_messages_total_other 100
messaging_process_duration_seconds_count 2
";
    assert_eq!(sum_of(text, "messaging_client_sent_messages_total"), 7.0);
    assert_eq!(
        sum_of(text, "messaging_process_duration_seconds_count"),
        2.0
    );
    assert_eq!(sum_of(text, "absent"), 0.0);
}
