//! Metrics recorded through the global meter appear in the Prometheus scrape text with
//! Prometheus naming, without any exporter configured. The environment is process-wide,
//! hence this test's own file.

use bus_otel::{Telemetry, PROMETHEUS_CONTENT_TYPE};
use opentelemetry::KeyValue;

fn clear_otel_env() {
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            std::env::remove_var(name);
        }
    }
}

/// The value of the first series named `name` whose labels include all of `labels`.
fn value_of(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|lbl| l.contains(lbl))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn bus_meter_instruments_appear_in_prometheus_text_with_prometheus_names() {
    clear_otel_env();
    std::env::set_var("OTEL_SERVICE_NAME", "prometheus-test");
    let telemetry = Telemetry::from_env("unused").expect("telemetry installs");
    assert!(!telemetry.exporting_metrics(), "no endpoint, no OTLP push");
    assert_eq!(PROMETHEUS_CONTENT_TYPE, "text/plain; version=0.0.4");

    let meter = opentelemetry::global::meter("bus");
    let sent = meter
        .u64_counter("messaging.client.sent.messages")
        .with_unit("{message}")
        .build();
    let in_flight = meter
        .i64_up_down_counter("messaging.bus.handlers.in_flight")
        .with_unit("{handler}")
        .build();
    let duration = meter
        .f64_histogram("messaging.process.duration")
        .with_unit("s")
        .with_boundaries(vec![0.005, 0.01, 0.1, 1.0])
        .build();
    let sales = [
        KeyValue::new("messaging.system", "memory"),
        KeyValue::new("messaging.destination.name", "sales"),
    ];
    sent.add(2, &sales);
    sent.add(1, &sales);
    in_flight.add(3, &sales);
    in_flight.add(-1, &sales);
    duration.record(0.05, &sales);
    duration.record(2.0, &sales);

    let text = telemetry.prometheus_text();
    let sales_label = r#"messaging_destination_name="sales""#;

    assert!(
        text.contains("# TYPE messaging_client_sent_messages_total counter"),
        "counters get `_total` and dots become underscores:\n{text}"
    );
    assert_eq!(
        value_of(
            &text,
            "messaging_client_sent_messages_total",
            &[sales_label, r#"otel_scope_name="bus""#]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value_of(&text, "messaging_bus_handlers_in_flight", &[sales_label]),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE messaging_process_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        value_of(
            &text,
            "messaging_process_duration_seconds_bucket",
            &[sales_label, r#"le="0.1""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value_of(
            &text,
            "messaging_process_duration_seconds_count",
            &[sales_label]
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.contains(r#"service_name="prometheus-test""#),
        "target_info names the service:\n{text}"
    );

    // Counters are cumulative: a later scrape sees what was added since.
    sent.add(4, &sales);
    assert_eq!(
        value_of(
            &telemetry.prometheus_text(),
            "messaging_client_sent_messages_total",
            &[sales_label]
        ),
        Some(7.0)
    );
    telemetry.shutdown();
}
