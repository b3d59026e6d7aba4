//! Why telemetry could not be installed, worded as what to change.

/// Why [`Telemetry::from_env`](crate::Telemetry::from_env) could not install telemetry.
///
/// Every message names the variable or call at fault and what would be accepted, so a
/// service can print it and exit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// An `OTEL_*` variable holds a value this crate does not understand.
    #[error("{var}={value:?} is not supported: expected {expected}")]
    InvalidValue {
        /// The environment variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it may hold instead.
        expected: &'static str,
    },

    /// An OTLP protocol variable asks for gRPC, which is not built in.
    #[error(
        "{var}={value:?}: OTLP over gRPC is not built in, only OTLP over HTTP. \
         Set {var}=http/protobuf (or http/json) and point the endpoint at the \
         collector's OTLP/HTTP port (4318 by default) instead of its gRPC port (4317)"
    )]
    GrpcNotSupported {
        /// The environment variable.
        var: &'static str,
        /// Its value.
        value: String,
    },

    /// An OTLP endpoint uses `https`, and no TLS client is built in.
    #[error(
        "{var}={value:?}: this build sends OTLP over plain HTTP and has no TLS client. \
         Use an http:// endpoint, such as an OpenTelemetry Collector running next to \
         the service, which can forward over TLS"
    )]
    TlsNotSupported {
        /// The environment variable that gave the endpoint.
        var: &'static str,
        /// Its value.
        value: String,
    },

    /// A log or trace filter (such as `RUST_LOG`) does not parse.
    #[error(
        "{what} {value:?} is not a valid filter ({source}): \
         use directives such as `info` or `warn,bus_core=debug`"
    )]
    InvalidFilter {
        /// Where the filter came from, e.g. `RUST_LOG`.
        what: &'static str,
        /// The filter text.
        value: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    /// The OTLP exporter of a signal could not be built from the configuration.
    #[error("cannot build the OTLP {signal} exporter: {source}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The exporter's complaint, which names the setting at fault.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },

    /// The Prometheus reader could not be registered.
    #[error("cannot set up the Prometheus metrics reader: {0}")]
    Prometheus(#[source] opentelemetry_sdk::error::OTelSdkError),

    /// Something else already installed the process-wide tracing subscriber or `log` logger.
    #[error(
        "a global tracing subscriber or `log` logger is already installed ({0}): call \
         Telemetry::from_env once, at the start of main, instead of (not after) \
         tracing_subscriber's init()"
    )]
    SubscriberAlreadySet(#[source] tracing_subscriber::util::TryInitError),
}
