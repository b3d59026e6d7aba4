//! A configured collector that is down costs nothing but lost telemetry: recording goes on
//! and shutdown gives up at its deadline. The environment is process-wide, hence this
//! test's own file.

use std::time::{Duration, Instant};

use bus_otel::Telemetry;

#[test]
fn an_unreachable_collector_does_not_hold_up_shutdown_past_its_deadline() {
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            std::env::remove_var(name);
        }
    }
    // A loopback port that was free a moment ago: connections to it are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    );
    std::env::set_var("OTEL_EXPORTER_OTLP_TIMEOUT", "500");

    let telemetry = Telemetry::builder("down-collector")
        .shutdown_deadline(Duration::from_secs(1))
        .install()
        .expect("building exporters does not connect");
    assert!(telemetry.exporting_traces() && telemetry.exporting_metrics());

    for i in 0..10 {
        tracing::info_span!("send sales", i).in_scope(|| ());
    }
    opentelemetry::global::meter("bus")
        .u64_counter("messaging.client.sent.messages")
        .build()
        .add(10, &[]);
    assert!(telemetry
        .prometheus_text()
        .contains("messaging_client_sent_messages_total"));

    let started = Instant::now();
    telemetry.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?} with a 1 s deadline",
        started.elapsed()
    );
}
