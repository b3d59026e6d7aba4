//! A value that cannot be honoured fails `from_env` with a message naming the variable,
//! and installs nothing, so fixing the value and retrying works. The environment is
//! process-wide, hence this test's own file.

use bus_otel::{OtelError, Telemetry};

#[test]
fn an_unknown_protocol_fails_with_a_message_naming_the_variable_and_installs_nothing() {
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            std::env::remove_var(name);
        }
    }
    // Port 9 (discard) on loopback: nothing is sent here, the exporter only gets built.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuff");

    let error = Telemetry::from_env("svc").unwrap_err();
    assert!(matches!(error, OtelError::InvalidValue { .. }), "{error:?}");
    let message = error.to_string();
    for needle in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "http/protobuff",
        "http/protobuf",
        "http/json",
    ] {
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }

    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    let message = Telemetry::from_env("svc").unwrap_err().to_string();
    assert!(
        message.contains("4318") && message.contains("http/protobuf"),
        "{message}"
    );

    // Nothing was installed by the failed attempts: the global subscriber is still free.
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    std::env::set_var("OTEL_TRACES_EXPORTER", "none");
    std::env::set_var("OTEL_METRICS_EXPORTER", "none");
    let telemetry = Telemetry::from_env("svc").expect("a fixed configuration installs");
    assert!(!telemetry.exporting_traces() && !telemetry.exporting_metrics());

    // A second installation is refused, with a message saying why.
    let message = Telemetry::from_env("svc").unwrap_err().to_string();
    assert!(message.contains("already installed"), "{message}");
    telemetry.shutdown();
}
