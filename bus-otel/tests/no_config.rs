//! With no `OTEL_*` variable a service runs as before: no exporter, no connection
//! attempt, a quick shutdown. The environment is process-wide, hence this test's own file.

use std::time::{Duration, Instant};

use bus_otel::Telemetry;

#[test]
fn without_otel_variables_from_env_succeeds_and_creates_no_exporter() {
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            std::env::remove_var(name);
        }
    }

    let telemetry = Telemetry::from_env("quiet-service").expect("telemetry installs");
    assert!(!telemetry.exporting_traces());
    assert!(!telemetry.exporting_metrics());
    assert_eq!(telemetry.traces_endpoint(), None);
    assert_eq!(telemetry.metrics_endpoint(), None);
    assert_eq!(telemetry.service_name(), "quiet-service");

    // Spans and metrics are still fine to make; they just go nowhere but the scrape text.
    tracing::info_span!("send sales", otel.kind = "producer")
        .in_scope(|| tracing::info!("logged to stderr only"));
    opentelemetry::global::meter("bus")
        .u64_counter("messaging.bus.retries")
        .build()
        .add(1, &[]);
    assert!(telemetry
        .prometheus_text()
        .contains("messaging_bus_retries_total"));

    // Nothing to flush and no collector to wait for.
    let started = Instant::now();
    telemetry.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shutdown without exporters took {:?}",
        started.elapsed()
    );
}
