//! Failed messages operated the same way on every transport: poison messages put in an error
//! queue by a real failing handler are listed with their reasons, shown byte-exact, retried
//! once the handler is fixed (handled once each, by the handler's own count), deleted; a retry
//! cut off by a lost connection loses nothing; the `bus` command's `--json` output parses.
//! On the in-memory transport through the library, on RabbitMQ, NATS and Redis through the
//! library and the command. A broker test skips with a printed reason when its broker is
//! unreachable, and fails instead when `BUS_REQUIRE_BROKERS=1`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_cli::{Operations, Selection};
use bus_core::{Bus, Command, HandlerError, MessageId, SendOptions, Transport};
use bus_tests::broker::rabbitmq_or_skip;
use bus_tests::nats_broker::nats_or_skip;
use bus_tests::proxy::Proxy;
use bus_tests::redis_broker::redis_or_skip;
use bus_transport_config::TransportSettings;
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

const ENDPOINT: &str = "ops-sales";

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ops.PlaceOrder", endpoint = "ops-sales")]
struct PlaceOrder {
    order: u32,
    note: String,
}

/// The handler's own view: whether it is broken, and how often it handled each message id.
#[derive(Clone, Default)]
struct Shop {
    broken: Arc<AtomicBool>,
    handled: Arc<Mutex<HashMap<String, u32>>>,
}

impl Shop {
    fn times(&self, id: &str) -> u32 {
        self.handled.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

/// A bus hosting the endpoint on `transport`, failing every message while `shop` is broken,
/// without retries.
async fn sales(transport: Arc<dyn Transport>, shop: &Shop) -> Bus {
    let shop = shop.clone();
    Bus::builder()
        .transport_arc(transport)
        .without_discovery()
        .handler(
            ENDPOINT,
            move |cmd: PlaceOrder, ctx: bus_core::MessageContext| {
                let shop = shop.clone();
                async move {
                    if shop.broken.load(Ordering::SeqCst) {
                        return Err(HandlerError::new(format!(
                            "stock service down for {}",
                            cmd.order
                        )));
                    }
                    *shop
                        .handled
                        .lock()
                        .unwrap()
                        .entry(ctx.message_id().to_string())
                        .or_default() += 1;
                    Ok(())
                }
            },
        )
        .route::<PlaceOrder>(ENDPOINT)
        .endpoint(ENDPOINT, |e| {
            e.immediate_retries(0)
                .delayed_retries(0, Duration::ZERO)
                // One at a time: the error queue then holds the failures in sending order.
                .concurrency(1)
        })
        .start()
        .await
        .expect("the sales bus starts")
}

async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` poison orders `m-0`.. in the error queue, put there by the broken handler.
async fn poison(bus: &Bus, shop: &Shop, n: u32) -> Vec<String> {
    shop.broken.store(true, Ordering::SeqCst);
    let before = bus.stats().dead_lettered;
    let mut ids = Vec::new();
    for order in 0..n {
        let id = format!("m-{order}-{}", uuid::Uuid::now_v7().simple());
        bus.send_with(
            PlaceOrder {
                order,
                note: "  spaced  ".into(),
            },
            SendOptions::new().message_id(id.clone()),
        )
        .await
        .unwrap();
        ids.push(id);
    }
    until(
        Duration::from_secs(30),
        "the poison orders in the error queue",
        || bus.stats().dead_lettered == before + u64::from(n),
    )
    .await;
    ids
}

/// The whole life of failed messages through the library, on `transport`.
async fn failed_messages_through_the_library(transport: Arc<dyn Transport>) {
    let shop = Shop::default();
    let bus = sales(transport.clone(), &shop).await;
    let ops = Operations::new(transport.clone());
    let ids = poison(&bus, &shop, 3).await;

    // Listed with their reason (in the order they failed, which the settling of one message
    // while the next is handled may swap); paged.
    let listed = ops.list(ENDPOINT, None, 10).await.unwrap();
    let mut listed_ids: Vec<&str> = listed.iter().map(|f| f.message_id()).collect();
    let first_two: Vec<String> = listed_ids.iter().take(2).map(|s| s.to_string()).collect();
    listed_ids.sort();
    assert_eq!(
        listed_ids,
        ids.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(listed.iter().all(|f| f.reason() == Some("handler-error")));
    let page = ops.list(ENDPOINT, Some(&first_two[0]), 1).await.unwrap();
    assert_eq!(
        page[0].message_id(),
        first_two[1],
        "the page after the first"
    );

    // Shown byte-exact: the body is what the bus encoded.
    let shown = ops.get(ENDPOINT, &ids[1]).await.unwrap();
    let record = bus_cli::MessageRecord::of(ENDPOINT, shown.envelope());
    let expected = serde_json::to_vec(&PlaceOrder {
        order: 1,
        note: "  spaced  ".into(),
    })
    .unwrap();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&record.body_base64)
            .unwrap(),
        expected
    );
    assert_eq!(
        record
            .headers
            .get(bus_core::header::FAILURE_ERROR)
            .map(String::as_str),
        Some("stock service down for 1")
    );

    // Fixed, then retried one: handled once, and out of the error queue.
    shop.broken.store(false, Ordering::SeqCst);
    let outcome = ops
        .retry(
            ENDPOINT,
            &Selection::Ids(vec![MessageId::from(ids[0].as_str())]),
        )
        .await
        .unwrap();
    assert_eq!(outcome.done, vec![ids[0].clone()]);
    until(Duration::from_secs(30), "the retried order handled", || {
        shop.times(&ids[0]) == 1
    })
    .await;
    assert_eq!(ops.list(ENDPOINT, None, 10).await.unwrap().len(), 2);

    // Deleted: gone, never handled.
    let deleted = ops
        .delete(
            ENDPOINT,
            &Selection::Ids(vec![MessageId::from(ids[2].as_str()), "nope".into()]),
        )
        .await
        .unwrap();
    assert_eq!(deleted.done, vec![ids[2].clone()]);
    assert_eq!(deleted.not_found, vec!["nope".to_string()]);

    // The rest, by reason.
    let rest = ops
        .retry(ENDPOINT, &Selection::Reason("handler-error".into()))
        .await
        .unwrap();
    assert_eq!(rest.done, vec![ids[1].clone()]);
    until(Duration::from_secs(30), "the last order handled", || {
        shop.times(&ids[1]) == 1
    })
    .await;
    assert!(ops.list(ENDPOINT, None, 10).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shop.times(&ids[0]), 1, "handled once");
    assert_eq!(shop.times(&ids[1]), 1, "handled once");
    assert_eq!(shop.times(&ids[2]), 0, "deleted, never handled");
    bus.shutdown().await;
}

#[tokio::test]
async fn memory_failed_messages_are_listed_shown_retried_and_deleted() {
    failed_messages_through_the_library(Arc::new(MemoryTransport::new().serialize(true))).await;
}

/// Settings for `url` under a namespace of this test's own.
fn settings(url: &str) -> TransportSettings {
    let id = uuid::Uuid::now_v7().simple().to_string();
    TransportSettings {
        url: url.to_string(),
        prefix: Some(format!("ops-{}", &id[id.len() - 10..])),
        ..TransportSettings::default()
    }
}

/// The library's life of failed messages, then the command's `--json` output, then a retry
/// cut off by a lost connection, on the broker at `url`.
async fn on_broker(url: String) {
    let settings = settings(&url);
    let opened = settings.open("ops-test").await.unwrap();
    failed_messages_through_the_library(opened.shared()).await;
    command_json_parses(&settings, opened.shared()).await;
    a_cut_retry_loses_nothing(&settings, opened.shared()).await;
    let topology = bus_core::Topology {
        endpoints: vec![bus_core::EndpointTopology {
            name: ENDPOINT.into(),
            ..Default::default()
        }],
    };
    let _ = opened.shared().teardown(&topology, false).await;
    // The namespace's events exchange outlives the endpoints' teardown: it goes too.
    if let bus_transport_config::ConfiguredTransport::Amqp(amqp) = &opened {
        let _ = amqp.delete_events_exchange(false).await;
    }
    let _ = opened.close().await;
}

/// Run the `bus` command against the test's broker and namespace.
fn bus_command(settings: &TransportSettings, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bus"))
        .args(["--transport", &settings.url, "--json"])
        .args(["--prefix", settings.prefix.as_deref().unwrap()])
        .args(args)
        .env_remove("BUS_TRANSPORT")
        .env_remove("BUS_PREFIX")
        .output()
        .expect("the bus command runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bus {args:?} failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bus {args:?}: not JSON ({e}): {text}"))
}

async fn command_json_parses(settings: &TransportSettings, transport: Arc<dyn Transport>) {
    let shop = Shop::default();
    let bus = sales(transport, &shop).await;
    let ids = poison(&bus, &shop, 2).await;
    let list = bus_command(settings, &["errors", "list", ENDPOINT]);
    let rows = list.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().any(|r| r["id"] == ids[0].as_str()));
    assert_eq!(rows[0]["reason"], "handler-error");
    let shown = bus_command(settings, &["errors", "show", ENDPOINT, &ids[1]]);
    assert_eq!(shown["body"]["order"], 1);
    let endpoints = bus_command(settings, &["endpoints"]);
    let ours = endpoints
        .as_array()
        .expect("a JSON array")
        .iter()
        .find(|e| e["name"] == ENDPOINT)
        .unwrap_or_else(|| panic!("{ENDPOINT} is listed: {endpoints}"));
    if !ours["error_depth"].is_null() {
        assert_eq!(ours["error_depth"], 2);
    }
    shop.broken.store(false, Ordering::SeqCst);
    let retried = bus_command(settings, &["errors", "retry", ENDPOINT, "--all"]);
    assert_eq!(retried["done"].as_array().map(Vec::len), Some(2));
    until(
        Duration::from_secs(30),
        "both handled after the command's retry",
        || ids.iter().all(|id| shop.times(id) == 1),
    )
    .await;
    bus.shutdown().await;
}

async fn a_cut_retry_loses_nothing(settings: &TransportSettings, direct: Arc<dyn Transport>) {
    let shop = Shop::default();
    let bus = sales(direct.clone(), &shop).await;
    let ids = poison(&bus, &shop, 20).await;
    shop.broken.store(false, Ordering::SeqCst);

    // The operator's connection goes through a proxy that drops it mid-way.
    let hostport = broker_hostport(&settings.url);
    let target = std::net::ToSocketAddrs::to_socket_addrs(hostport.as_str())
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await.unwrap();
    let via_proxy = TransportSettings {
        url: settings.url.replace(&hostport, &proxy.addr().to_string()),
        connect_timeout: Some(Duration::from_secs(5)),
        publish_timeout: Some(Duration::from_secs(5)),
        ..settings.clone()
    };
    let opened = via_proxy.open("ops-cut").await.unwrap();
    let ops = Operations::new(opened.shared());
    let retry = tokio::spawn(async move { ops.retry(ENDPOINT, &Selection::All).await });
    until(Duration::from_secs(30), "some retried", || {
        ids.iter().any(|id| shop.times(id) > 0)
    })
    .await;
    proxy.cut();
    let _ = tokio::time::timeout(Duration::from_secs(60), retry).await;

    // Nothing lost: each order is handled or still in the error queue.
    let ops = Operations::new(direct);
    let left: Vec<String> = ops
        .list(ENDPOINT, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|f| f.message_id().to_string())
        .collect();
    for id in &ids {
        assert!(
            shop.times(id) > 0 || left.contains(id),
            "{id} is neither handled nor in the error queue"
        );
    }
    // And the rest goes through once the connection is back.
    ops.retry(ENDPOINT, &Selection::All).await.unwrap();
    until(Duration::from_secs(30), "every order handled", || {
        ids.iter().all(|id| shop.times(id) > 0)
    })
    .await;
    let _ = opened.close().await;
    bus.shutdown().await;
}

/// `host:port` of a broker URL, as written in it.
fn broker_hostport(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap();
    rest.rsplit('@')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_failed_messages_are_operated_by_library_and_command_and_a_cut_retry_loses_nothing() {
    if let Some(url) = rabbitmq_or_skip("amqp_failed_messages").await {
        on_broker(url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_failed_messages_are_operated_by_library_and_command_and_a_cut_retry_loses_nothing() {
    if let Some(url) = nats_or_skip("nats_failed_messages").await {
        on_broker(url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failed_messages_are_operated_by_library_and_command_and_a_cut_retry_loses_nothing() {
    if let Some(url) = redis_or_skip("redis_failed_messages").await {
        on_broker(url).await;
    }
}
