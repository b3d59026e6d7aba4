//! The bus's spans, exported through `tracing-opentelemetry` to an in-memory exporter, on every
//! transport (bus-core's `opentelemetry` feature on): three endpoints in three bus instances,
//! sales -> billing -> shipping (a command, then two events), make one trace from the first
//! send to the last handler. Each `process` span is a child of the `send`/`publish` span of
//! its message (through the `traceparent` header), carries the messaging attributes, and says
//! how its delivery was settled; billing's first attempt fails, and its span records the error
//! and the retry before a second attempt's span records the ack.
//!
//! The broker tests skip with a printed reason when their broker is unreachable, and fail
//! instead with `BUS_REQUIRE_BROKERS=1`. Each works in a namespace of its own, torn down after.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bus_core::{Bus, Command, Event, HandlerError, MessageContext, SendOptions, State, Transport};
use bus_tests::broker::{rabbitmq_or_skip, unique};
use bus_tests::eventually;
use bus_tests::nats_broker::nats_or_skip;
use bus_tests::redis_broker::redis_or_skip;
use bus_transport_amqp::{AmqpConfig, AmqpTransport};
use bus_transport_memory::MemoryTransport;
use bus_transport_nats::{NatsConfig, NatsTransport};
use bus_transport_redis::{RedisConfig, RedisTransport};
use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer as _;

const SALES: &str = "tracing-sales";
const BILLING: &str = "tracing-billing";
const SHIPPING: &str = "tracing-shipping";

/// The spans of one run, by name, sorted.
const EXPECTED: [&str; 7] = [
    "process tracing-billing",
    "process tracing-billing",
    "process tracing-sales",
    "process tracing-shipping",
    "publish tracing.OrderBilled",
    "publish tracing.OrderPlaced",
    "send tracing-sales",
];

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "tracing.PlaceOrder", endpoint = "tracing-sales")]
struct PlaceOrder {
    id: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "tracing.OrderPlaced")]
struct OrderPlaced {
    id: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "tracing.OrderBilled")]
struct OrderBilled {
    id: u32,
}

/// Billing's first attempt at every order fails with it.
#[derive(Debug)]
struct CardDeclined;

impl std::fmt::Display for CardDeclined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("card declined")
    }
}

impl std::error::Error for CardDeclined {}

async fn place(cmd: PlaceOrder, ctx: MessageContext) -> Result<(), HandlerError> {
    tracing::info!(order = cmd.id, "placing order");
    ctx.publish(OrderPlaced { id: cmd.id }).await?;
    Ok(())
}

async fn bill(evt: OrderPlaced, ctx: MessageContext) -> Result<(), HandlerError> {
    if ctx.attempt() == 1 {
        return Err(CardDeclined.into());
    }
    ctx.publish(OrderBilled { id: evt.id }).await?;
    Ok(())
}

async fn ship(
    evt: OrderBilled,
    State(done): State<mpsc::UnboundedSender<u32>>,
) -> Result<(), HandlerError> {
    tracing::info!(order = evt.id, "shipping order");
    let _ = done.send(evt.id);
    Ok(())
}

/// The exporter every span of this test binary goes to, behind the global subscriber
/// (installed once). Tests tell their spans apart by trace id.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    let (exporter, _provider) = EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        // The bus's spans and this file's events; not the brokers' clients' own.
        let only_ours = Targets::new()
            .with_target("bus_core", tracing::Level::INFO)
            .with_target("tracing_spans", tracing::Level::INFO);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("bus-tests"))
            .with_filter(only_ours);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only global subscriber");
        (exporter, provider)
    });
    exporter
}

/// Run sales -> billing -> shipping on transports from `connect` (one per bus), and return
/// the spans of the trace that begins with the first send, once the last handler's span
/// ended, with the first message's id.
async fn one_trace<F, Fut>(connect: F) -> (Vec<SpanData>, String)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    let exporter = exporter();
    let (done, mut shipped) = mpsc::unbounded_channel::<u32>();
    let host = |transport: Arc<dyn Transport>| {
        Bus::builder()
            .transport_arc(transport)
            .without_discovery()
            .shutdown_grace(Duration::from_secs(5))
    };
    let sales = host(connect(SALES).await)
        .handler(SALES, place)
        .build()
        .await;
    let billing = host(connect(BILLING).await)
        .handler(BILLING, bill)
        .build()
        .await;
    let shipping = host(connect(SHIPPING).await)
        .handler(SHIPPING, ship)
        .state(done)
        .build()
        .await;
    let buses = [
        sales.expect("sales"),
        billing.expect("billing"),
        shipping.expect("shipping"),
    ];
    for bus in &buses {
        bus.start().await.expect("start");
    }

    let first = uuid::Uuid::now_v7().to_string();
    buses[0]
        .send_with(PlaceOrder { id: 7 }, SendOptions::new().message_id(&first))
        .await
        .expect("send");
    let order = tokio::time::timeout(Duration::from_secs(30), shipped.recv()).await;
    assert_eq!(order.expect("shipped within 30 s"), Some(7));

    // A span ends once its delivery is settled, just after its handler returned: billing's
    // may end after shipping's, whose message billing's released before it acked its own.
    let mut spans = Vec::new();
    let complete = eventually(Duration::from_secs(10), || {
        spans = trace_of(&exporter.get_finished_spans().unwrap(), &first);
        spans.len() >= EXPECTED.len()
    })
    .await;
    for bus in &buses {
        bus.shutdown().await;
        let _ = bus.teardown(false).await;
    }
    assert!(complete, "the trace never completed: {:#?}", names(&spans));
    (spans, first)
}

/// The spans of the trace whose first span is the send of message `first`.
fn trace_of(all: &[SpanData], first: &str) -> Vec<SpanData> {
    let Some(root) = all.iter().find(|s| {
        s.span_kind == SpanKind::Producer
            && attr(s, "messaging.message.id").as_deref() == Some(first)
    }) else {
        return Vec::new();
    };
    let trace = root.span_context.trace_id();
    all.iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .cloned()
        .collect()
}

/// An attribute's value as text.
fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn names(spans: &[SpanData]) -> Vec<String> {
    let mut names: Vec<String> = spans.iter().map(|s| s.name.to_string()).collect();
    names.sort();
    names
}

/// Everything the spans of one run must show. `system` is the `messaging.system`; `bytes`
/// whether bodies travel as bytes (then their size is known).
fn check(spans: &[SpanData], first: &str, system: &str, bytes: bool) {
    assert_eq!(
        names(spans),
        EXPECTED,
        "one trace from the first send to the last handler"
    );
    let root = spans
        .iter()
        .find(|s| s.name == format!("send {SALES}"))
        .unwrap();
    assert_eq!(
        root.parent_span_id,
        opentelemetry::trace::SpanId::INVALID,
        "the first send starts the trace"
    );

    let producers: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Producer)
        .collect();
    for producer in &producers {
        let has = |key: &str, value: &str| {
            assert_eq!(
                attr(producer, key).as_deref(),
                Some(value),
                "{key} of {}",
                producer.name
            )
        };
        has("messaging.system", system);
        has("messaging.operation.type", "send");
        has("messaging.message.conversation_id", first);
        assert!(
            attr(producer, "messaging.message.id").is_some(),
            "{}",
            producer.name
        );
        assert_eq!(
            attr(producer, "messaging.message.body.size").is_some(),
            bytes,
            "body size of {}",
            producer.name
        );
    }
    has_value(
        &producers,
        "send tracing-sales",
        "messaging.destination.name",
        SALES,
    );
    has_value(
        &producers,
        "publish tracing.OrderPlaced",
        "messaging.destination.name",
        "tracing.OrderPlaced",
    );

    for process in spans.iter().filter(|s| s.span_kind == SpanKind::Consumer) {
        let endpoint = process.name.strip_prefix("process ").unwrap();
        let has = |key: &str, value: &str| {
            assert_eq!(
                attr(process, key).as_deref(),
                Some(value),
                "{key} of {}",
                process.name
            )
        };
        has("messaging.system", system);
        has("messaging.operation.type", "process");
        has("messaging.destination.name", endpoint);
        has("messaging.consumer.group.name", endpoint);
        has("messaging.message.conversation_id", first);
        has("messaging.bus.correlation_id", first);
        assert!(
            attr(process, "messaging.bus.message.type").is_some_and(|t| t.starts_with("tracing."))
        );
        assert_eq!(
            attr(process, "messaging.message.body.size").is_some(),
            bytes,
            "body size of {}",
            process.name
        );
        // Its parent is the span that sent its message.
        let id = attr(process, "messaging.message.id").expect("message id");
        let sender = producers
            .iter()
            .find(|p| attr(p, "messaging.message.id").as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no send span for {}", process.name));
        assert_eq!(
            process.parent_span_id,
            sender.span_context.span_id(),
            "{} under {}",
            process.name,
            sender.name
        );
        assert!(
            process.parent_span_is_remote,
            "{}: its parent came in the headers",
            process.name
        );
    }

    // Billing: the first attempt fails and is retried, the second is acked.
    let mut billing: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == format!("process {BILLING}"))
        .collect();
    billing.sort_by_key(|s| attr(s, "messaging.bus.attempt"));
    let (failed, retried) = (billing[0], billing[1]);
    assert_eq!(attr(failed, "messaging.bus.attempt").as_deref(), Some("1"));
    assert!(
        attr(failed, "error.type").is_some_and(|t| t.ends_with("CardDeclined")),
        "{:?}",
        failed.attributes
    );
    assert_eq!(
        attr(failed, "messaging.bus.settle").as_deref(),
        Some("retry")
    );
    assert!(
        matches!(failed.status, Status::Error { .. }),
        "{:?}",
        failed.status
    );
    assert_eq!(attr(retried, "messaging.bus.attempt").as_deref(), Some("2"));
    assert_eq!(attr(retried, "error.type"), None);
    assert_eq!(
        attr(retried, "messaging.bus.settle").as_deref(),
        Some("ack")
    );
    // The event billing published comes from its successful attempt.
    let billed = spans
        .iter()
        .find(|s| s.name == "publish tracing.OrderBilled")
        .unwrap();
    assert_eq!(billed.parent_span_id, retried.span_context.span_id());

    // What a handler logs lands in its attempt's span.
    let shipped = spans
        .iter()
        .find(|s| s.name == format!("process {SHIPPING}"))
        .unwrap();
    assert_eq!(
        attr(shipped, "messaging.bus.settle").as_deref(),
        Some("ack")
    );
    assert!(
        shipped.events.iter().any(|e| e.name == "shipping order"),
        "{:?}",
        shipped.events
    );
}

fn has_value(spans: &[&SpanData], name: &str, key: &str, value: &str) {
    let span = spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name}"));
    assert_eq!(attr(span, key).as_deref(), Some(value), "{key} of {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_trace_spans_one_trace_from_first_send_to_last_handler() {
    let memory = MemoryTransport::new();
    let (spans, first) = one_trace(|_| {
        let transport: Arc<dyn Transport> = Arc::new(memory.clone());
        async move { transport }
    })
    .await;
    // Typed bodies in process: no size to report.
    check(&spans, &first, "memory", false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_serialized_trace_spans_report_body_sizes() {
    let memory = MemoryTransport::new().serialize(true);
    let (spans, first) = one_trace(|_| {
        let transport: Arc<dyn Transport> = Arc::new(memory.clone());
        async move { transport }
    })
    .await;
    check(&spans, &first, "memory", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_trace_spans_one_trace_from_first_send_to_last_handler() {
    let test = "amqp_trace_spans_one_trace_from_first_send_to_last_handler";
    let Some(url) = rabbitmq_or_skip(test).await else {
        return;
    };
    let namespace = unique("trace");
    let (spans, first) = one_trace(|name| {
        let config = AmqpConfig::new(url.clone())
            .connection_name(name)
            .namespace(namespace.clone());
        async move {
            let transport = AmqpTransport::connect(config)
                .await
                .expect("connect to RabbitMQ");
            Arc::new(transport) as Arc<dyn Transport>
        }
    })
    .await;
    // The namespace's events exchange outlives the endpoints' teardown: it goes too.
    let config = AmqpConfig::new(url.clone()).namespace(namespace.clone());
    if let Ok(transport) = AmqpTransport::connect(config).await {
        let _ = transport.delete_events_exchange(false).await;
        let _ = transport.close().await;
    }
    check(&spans, &first, "rabbitmq", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_trace_spans_one_trace_from_first_send_to_last_handler() {
    let test = "nats_trace_spans_one_trace_from_first_send_to_last_handler";
    let Some(url) = nats_or_skip(test).await else {
        return;
    };
    let namespace = unique("trace");
    let (spans, first) = one_trace(|name| {
        let config = NatsConfig::new(url.clone())
            .connection_name(name)
            .namespace(namespace.clone());
        async move {
            let transport = NatsTransport::connect(config)
                .await
                .expect("connect to NATS");
            Arc::new(transport) as Arc<dyn Transport>
        }
    })
    .await;
    check(&spans, &first, "nats", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_trace_spans_one_trace_from_first_send_to_last_handler() {
    let test = "redis_trace_spans_one_trace_from_first_send_to_last_handler";
    let Some(url) = redis_or_skip(test).await else {
        return;
    };
    let namespace = unique("trace");
    let (spans, first) = one_trace(|name| {
        let config = RedisConfig::new(url.clone())
            .namespace(namespace.clone())
            .consumer_name(name)
            .block_timeout(Duration::from_millis(200))
            .claim_interval(Duration::from_millis(200))
            .operation_timeout(Duration::from_secs(5));
        async move {
            let transport = RedisTransport::connect(config)
                .await
                .expect("connect to Redis");
            Arc::new(transport) as Arc<dyn Transport>
        }
    })
    .await;
    check(&spans, &first, "redis", true);
}

/// With telemetry off, nothing is traced and no trace header travels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_trace_spans_none_with_telemetry_off() {
    exporter();
    let memory = MemoryTransport::new().serialize(true);
    let (done, mut shipped) = mpsc::unbounded_channel::<u32>();
    let bus = Bus::builder()
        .transport(memory.clone())
        .without_discovery()
        .telemetry(false)
        .handler(SHIPPING, ship)
        .state(done)
        .start()
        .await
        .expect("start");
    let first = uuid::Uuid::now_v7().to_string();
    bus.publish_with(OrderBilled { id: 9 }, SendOptions::new().message_id(&first))
        .await
        .expect("publish");
    let order = tokio::time::timeout(Duration::from_secs(10), shipped.recv()).await;
    assert_eq!(order.expect("shipped"), Some(9));
    bus.shutdown().await;
    let spans = exporter().get_finished_spans().unwrap();
    assert!(
        !spans
            .iter()
            .any(|s| attr(s, "messaging.message.id").as_deref() == Some(first.as_str())),
        "no span names the message"
    );
}
