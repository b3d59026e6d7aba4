//! The bus's metrics (bus-core's `opentelemetry` feature on), read back through an in-memory
//! metric exporter installed as the global meter provider before the bus is built: messages
//! sent, consumed, retried and dead-lettered are counted with their destination, endpoint and
//! type; each attempt's duration and each message's age are recorded; nothing is left in
//! flight once the bus is idle.
//!
//! A file of its own: the meter provider is global to the test binary.

use std::collections::BTreeMap;
use std::time::Duration;

use bus_core::telemetry::metric;
use bus_core::{Bus, Command, HandlerError, MessageContext};
use bus_tests::eventually;
use bus_transport_memory::MemoryTransport;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use serde::{Deserialize, Serialize};

const BILLING: &str = "metrics-billing";

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "metrics.Charge", endpoint = "metrics-billing")]
struct Charge {
    /// Attempts that fail before one succeeds; `u32::MAX` never succeeds.
    fail_times: u32,
}

async fn charge(cmd: Charge, ctx: MessageContext) -> Result<(), HandlerError> {
    if ctx.attempt() <= cmd.fail_times {
        return Err(HandlerError::new("gateway down"));
    }
    Ok(())
}

/// One data point: its attributes (as text) and its value.
#[derive(Debug)]
struct Point {
    attributes: BTreeMap<String, String>,
    value: f64,
    /// Measurements, for a histogram.
    count: u64,
}

/// The data points of every metric of meter `bus` in the latest export.
fn points(exported: &[ResourceMetrics]) -> BTreeMap<String, Vec<Point>> {
    let mut out = BTreeMap::new();
    let Some(latest) = exported.last() else {
        return out;
    };
    for scope in latest
        .scope_metrics()
        .filter(|s| s.scope().name() == bus_core::telemetry::METER_NAME)
    {
        for m in scope.metrics() {
            let attributes = |kvs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                kvs.map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
                    .collect::<BTreeMap<_, _>>()
            };
            let list: Vec<Point> = match m.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
                    .data_points()
                    .map(|p| Point {
                        attributes: attributes(&mut p.attributes()),
                        value: p.value() as f64,
                        count: 0,
                    })
                    .collect(),
                AggregatedMetrics::I64(MetricData::Sum(sum)) => sum
                    .data_points()
                    .map(|p| Point {
                        attributes: attributes(&mut p.attributes()),
                        value: p.value() as f64,
                        count: 0,
                    })
                    .collect(),
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => histogram
                    .data_points()
                    .map(|p| Point {
                        attributes: attributes(&mut p.attributes()),
                        value: p.sum(),
                        count: p.count(),
                    })
                    .collect(),
                other => panic!("unexpected data for {}: {other:?}", m.name()),
            };
            out.insert(m.name().to_string(), list);
        }
    }
    out
}

/// The value (or, for a histogram, the count) of `name`'s one data point.
fn only(points: &BTreeMap<String, Vec<Point>>, name: &str) -> (f64, u64) {
    let list = points
        .get(name)
        .unwrap_or_else(|| panic!("no metric {name}: {points:#?}"));
    assert_eq!(list.len(), 1, "{name}: {list:#?}");
    (list[0].value, list[0].count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_metrics_counters_move_as_messages_flow() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    let bus = Bus::builder()
        .transport(MemoryTransport::new().serialize(true))
        .without_discovery()
        .handler(BILLING, charge)
        .endpoint(BILLING, |e| {
            e.immediate_retries(1).delayed_retries(0, Duration::ZERO)
        })
        .start()
        .await
        .expect("start");
    // Handled at once; handled at the second attempt; never handled (error queue).
    for fail_times in [0, 1, u32::MAX] {
        bus.send(Charge { fail_times }).await.expect("send");
    }
    let settled = eventually(Duration::from_secs(10), || {
        let stats = bus.stats();
        stats.handled == 2 && stats.dead_lettered == 1
    })
    .await;
    assert!(settled, "{:?}", bus.stats());
    bus.shutdown().await;
    provider.force_flush().expect("flush");
    let points = points(&exporter.get_finished_metrics().expect("metrics"));

    let sent = &points[metric::SENT_MESSAGES][0];
    assert_eq!(sent.value, 3.0);
    assert_eq!(sent.attributes["messaging.system"], "memory");
    assert_eq!(sent.attributes["messaging.destination.name"], BILLING);
    assert_eq!(
        sent.attributes["messaging.bus.message.type"],
        "metrics.Charge"
    );

    let consumed = &points[metric::CONSUMED_MESSAGES][0];
    assert_eq!(consumed.value, 3.0, "deliveries, not attempts");
    assert_eq!(
        consumed.attributes["messaging.consumer.group.name"],
        BILLING
    );
    assert_eq!(consumed.attributes["messaging.destination.name"], BILLING);
    assert_eq!(
        consumed.attributes["messaging.bus.message.type"],
        "metrics.Charge"
    );

    // One retry of the second message, one of the third before it gave up.
    assert_eq!(only(&points, metric::RETRIES).0, 2.0);
    assert_eq!(only(&points, metric::DEAD_LETTERED).0, 1.0);
    assert_eq!(
        only(&points, metric::HANDLERS_IN_FLIGHT).0,
        0.0,
        "nothing in flight when idle"
    );
    let (took, attempts) = only(&points, metric::PROCESS_DURATION);
    assert_eq!(attempts, 5, "1 + 2 + 2 attempts");
    assert!(took >= 0.0);
    let (_, aged) = only(&points, metric::MESSAGE_AGE);
    assert_eq!(aged, 3, "one age per delivery");
    let _ = provider.shutdown();
}
