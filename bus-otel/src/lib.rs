//! # bus-otel: OpenTelemetry export for bus services, configured by environment
//!
//! One call at the start of `main` installs logging, tracing and metrics for a service:
//!
//! ```no_run
//! use bus_otel::{Telemetry, PROMETHEUS_CONTENT_TYPE};
//!
//! fn main() -> Result<(), bus_otel::OtelError> {
//!     // Reads the OTEL_* variables below; "sales" is the service name unless
//!     // OTEL_SERVICE_NAME says otherwise.
//!     let telemetry = Telemetry::from_env("sales")?;
//!     tracing::info!("sales started");
//!
//!     // ... run the bus ...
//!
//!     // What a `GET /metrics` handler answers, with this content type.
//!     let body: String = telemetry.prometheus_text();
//!     println!("Content-Type: {PROMETHEUS_CONTENT_TYPE}\n\n{body}");
//!
//!     // Flushes the last spans and metrics (also done on drop).
//!     telemetry.shutdown();
//!     Ok(())
//! }
//! ```
//!
//! [`Telemetry::from_env`] installs, process-wide:
//! - a [`tracing`] subscriber that writes logs to stderr, filtered by `RUST_LOG` (else
//!   [`DEFAULT_LOG_FILTER`], or the filter given to
//!   [`TelemetryBuilder::default_log_filter`]), plus a [`tracing_opentelemetry`] layer that
//!   turns spans into OpenTelemetry spans when traces are exported;
//! - the global OpenTelemetry tracer provider (when traces are exported) and the W3C
//!   text-map propagator (`traceparent`, `tracestate`, `baggage`), which carries a trace
//!   across services in message headers;
//! - the global meter provider, so `opentelemetry::global::meter("bus")` records into it:
//!   it always has a Prometheus reader, read by [`Telemetry::prometheus_text`] for a scrape
//!   endpoint, and pushes over OTLP too when metrics are exported.
//!
//! **Nothing is exported unless configured.** With no `OTEL_EXPORTER_OTLP_*ENDPOINT` set,
//! no exporter is created: logs still go to stderr, `/metrics` still works, and a service
//! without a collector runs exactly as before, with no connection attempts. Pointing
//! services at an OpenTelemetry Collector, Jaeger or Grafana Tempo is configuration only:
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318 cargo run --bin sales
//! ```
//!
//! ## Environment variables
//!
//! Empty values count as unset. Values this crate cannot honour are errors that say what
//! to write instead, rather than being ignored.
//!
//! | Variable | Meaning | Default |
//! | --- | --- | --- |
//! | `OTEL_SDK_DISABLED` | `true`: no OpenTelemetry at all (logs only; [`Telemetry::prometheus_text`] is empty) | `false` |
//! | `OTEL_SERVICE_NAME` | The `service.name` resource attribute | `service.name` from `OTEL_RESOURCE_ATTRIBUTES`, else the name given to `from_env` |
//! | `OTEL_RESOURCE_ATTRIBUTES` | More resource attributes, `key=value,…` (e.g. `deployment.environment=prod`) | none |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | Base URL of an OTLP/HTTP receiver; `/v1/traces` and `/v1/metrics` are appended | unset: nothing exported |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | Full URL for spans, used as is; alone, it exports traces only | the generic endpoint |
//! | `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` | Full URL for metrics, used as is; alone, it exports metrics only | the generic endpoint |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` or `http/json` (`grpc` is not built in: use port 4318) | `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL` | The same, per signal | the generic protocol |
//! | `OTEL_TRACES_EXPORTER` | `otlp` or `none`. An explicit `otlp` without an endpoint sends to `http://localhost:4318` | `otlp` when an endpoint is set |
//! | `OTEL_METRICS_EXPORTER` | `otlp`, `prometheus` (scrape only) or `none`, comma-separated; the Prometheus reader is always there | `otlp` when an endpoint is set |
//! | `OTEL_PROPAGATORS` | `tracecontext`, `baggage` or `none`, comma-separated | `tracecontext,baggage` |
//! | `RUST_LOG` | The stderr log filter | [`DEFAULT_LOG_FILTER`] |
//!
//! The OpenTelemetry SDK and OTLP exporter read these themselves:
//! `OTEL_EXPORTER_OTLP_HEADERS` / `_TIMEOUT` / `_COMPRESSION` (and their `_TRACES_` /
//! `_METRICS_` forms; compression is not built in), `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`,
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*` (span batching) and
//! `OTEL_METRIC_EXPORT_INTERVAL` (metric push period, 60 s by default).
//!
//! Logs are not exported over OTLP: they go to stderr, where a collector or the container
//! runtime can pick them up. Events logged inside a span are also recorded as that span's
//! events when traces are exported.
//!
//! Endpoints must be `http://`: no TLS client is built in, which keeps the build small. A
//! collector next to the service (same host, pod or network) can forward over TLS.
//!
//! ## Metric names in Prometheus
//!
//! [`Telemetry::prometheus_text`] follows the OpenTelemetry-to-Prometheus conventions:
//! dots become underscores, counters get `_total`, and known units a suffix, so the counter
//! `messaging.client.sent.messages` is scraped as `messaging_client_sent_messages_total`
//! and the histogram `messaging.process.duration` (unit `s`) as
//! `messaging_process_duration_seconds_bucket` / `_sum` / `_count`. Each series carries
//! `otel_scope_name` (the meter's name), and a `target_info` series carries the resource
//! (`service_name`, …).

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, Key};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod config;
mod error;

use config::{OtlpTarget, Settings};
pub use error::OtelError;

/// The `Content-Type` of [`Telemetry::prometheus_text`]: Prometheus text exposition 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The stderr log filter when `RUST_LOG` is unset: `info`, but only warnings from the
/// OpenTelemetry SDK and exporter, whose `info` lines describe their own setup.
pub const DEFAULT_LOG_FILTER: &str =
    "info,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn";

/// Which `tracing` spans and events become OpenTelemetry spans and span events.
///
/// It is separate from the log filter so that quiet logs (`RUST_LOG=warn`) still leave
/// complete traces. The exporter's own crates are off: their spans and events, emitted
/// while exporting, would otherwise be exported in turn.
pub const DEFAULT_TRACE_FILTER: &str = "info,opentelemetry=off,opentelemetry_sdk=off,\
opentelemetry_otlp=off,opentelemetry_http=off,reqwest=off,hyper=off,hyper_util=off,h2=off,tower=off";

/// How long [`Telemetry::shutdown`] waits for the last exports before giving up.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// The instrumentation scope of the spans made from `tracing` spans.
const SCOPE: &str = "bus";

/// The installed telemetry of a process: keep it alive for the life of the service.
///
/// Dropping it (or calling [`shutdown`](Telemetry::shutdown)) flushes the spans and
/// metrics not yet exported and shuts the providers down, within the shutdown deadline.
/// The tracing subscriber stays installed, so logs keep going to stderr afterwards.
///
/// Install it before building the bus: meters and instruments made earlier belong to the
/// no-op provider that was global then, and record nothing.
#[must_use = "telemetry shuts down when dropped: bind it (`let _telemetry = ...`) for the life of the service"]
pub struct Telemetry {
    service_name: String,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    registry: Option<prometheus::Registry>,
    traces: Option<OtlpTarget>,
    metrics: Option<OtlpTarget>,
    shutdown_deadline: Duration,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("service_name", &self.service_name)
            .field("traces", &self.traces)
            .field("metrics", &self.metrics)
            .field("prometheus", &self.registry.is_some())
            .field("shutdown_deadline", &self.shutdown_deadline)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Installs logging, tracing and metrics as the `OTEL_*` environment variables say
    /// (see the [crate documentation](crate) for the list), naming the service
    /// `default_service_name` unless `OTEL_SERVICE_NAME` is set.
    ///
    /// Call it once, early in `main`, before anything else installs a tracing subscriber.
    /// It needs no async runtime: exports run on the SDK's own threads.
    ///
    /// # Errors
    ///
    /// An [`OtelError`] saying which variable to fix when one holds a value that cannot
    /// be honoured, or when a global tracing subscriber is already installed. Nothing is
    /// installed then.
    pub fn from_env(default_service_name: &str) -> Result<Telemetry, OtelError> {
        Telemetry::builder(default_service_name).install()
    }

    /// A builder for the less common settings (default log filter, trace filter,
    /// shutdown deadline); [`TelemetryBuilder::install`] then acts as [`Telemetry::from_env`].
    pub fn builder(default_service_name: &str) -> TelemetryBuilder {
        TelemetryBuilder {
            default_service_name: default_service_name.to_owned(),
            default_log_filter: DEFAULT_LOG_FILTER.to_owned(),
            trace_filter: DEFAULT_TRACE_FILTER.to_owned(),
            shutdown_deadline: DEFAULT_SHUTDOWN_DEADLINE,
        }
    }

    /// The `service.name` in effect.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// Whether spans are sent to an OTLP receiver.
    pub fn exporting_traces(&self) -> bool {
        self.traces.is_some()
    }

    /// Whether metrics are pushed to an OTLP receiver (the Prometheus reader is there
    /// regardless).
    pub fn exporting_metrics(&self) -> bool {
        self.metrics.is_some()
    }

    /// The URL spans are sent to, when they are.
    pub fn traces_endpoint(&self) -> Option<&str> {
        self.traces.as_ref().map(|t| t.url.as_str())
    }

    /// The URL metrics are pushed to, when they are.
    pub fn metrics_endpoint(&self) -> Option<&str> {
        self.metrics.as_ref().map(|t| t.url.as_str())
    }

    /// The current value of every metric recorded through the global meter provider, in
    /// the Prometheus text exposition format: serve it with the content type
    /// [`PROMETHEUS_CONTENT_TYPE`].
    ///
    /// Counters and histograms are cumulative since the start of the process. With
    /// `OTEL_SDK_DISABLED=true` there is no meter provider and the text is empty.
    pub fn prometheus_text(&self) -> String {
        let Some(registry) = &self.registry else {
            return String::new();
        };
        let mut text = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
            tracing::warn!(error = %e, "cannot encode the metrics for Prometheus");
        }
        text
    }

    /// Flushes what was not exported yet and shuts the tracer and meter providers down,
    /// waiting at most the shutdown deadline (5 s unless set on the builder). Failures
    /// are logged, not returned: at this point there is nothing left to do about them.
    ///
    /// Dropping the `Telemetry` does the same. Either blocks the calling thread; from
    /// async code, prefer `tokio::task::spawn_blocking`.
    pub fn shutdown(mut self) {
        self.shutdown_providers();
    }

    fn shutdown_providers(&mut self) {
        let deadline = Instant::now() + self.shutdown_deadline;
        let (done, finished) = mpsc::channel();
        let mut pending = 0;
        // Each provider shuts down on its own thread so that one stuck on an unreachable
        // collector can be abandoned at the deadline instead of holding up the process.
        if let Some(provider) = self.tracer_provider.take() {
            let timeout = self.shutdown_deadline;
            pending += spawn_shutdown(&done, "traces", move || {
                provider.shutdown_with_timeout(timeout)
            });
        }
        if let Some(provider) = self.meter_provider.take() {
            pending += spawn_shutdown(&done, "metrics", move || provider.shutdown());
        }
        drop(done);
        for _ in 0..pending {
            match finished.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((_, Ok(()))) => {}
                Ok((signal, Err(e))) => {
                    tracing::warn!(signal, error = %e, "OpenTelemetry shutdown failed");
                }
                Err(_) => {
                    tracing::warn!(
                        deadline = ?self.shutdown_deadline,
                        "OpenTelemetry shutdown did not finish in time; unexported data is lost"
                    );
                    break;
                }
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown_providers();
    }
}

/// Runs `shutdown` on a named thread, reporting to `done`; returns how many threads started.
fn spawn_shutdown(
    done: &mpsc::Sender<(&'static str, opentelemetry_sdk::error::OTelSdkResult)>,
    signal: &'static str,
    shutdown: impl FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send + 'static,
) -> usize {
    let done = done.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("otel-shutdown-{signal}"))
        .spawn(move || {
            let _ = done.send((signal, shutdown()));
        });
    match spawned {
        Ok(_) => 1,
        Err(e) => {
            tracing::warn!(signal, error = %e, "cannot start the OpenTelemetry shutdown thread");
            0
        }
    }
}

/// Settings of [`Telemetry`] beyond the environment. Start with [`Telemetry::builder`].
#[derive(Debug, Clone)]
#[must_use = "call install() to install the telemetry"]
pub struct TelemetryBuilder {
    default_service_name: String,
    default_log_filter: String,
    trace_filter: String,
    shutdown_deadline: Duration,
}

impl TelemetryBuilder {
    /// The stderr log filter when `RUST_LOG` is unset, in `RUST_LOG` syntax (e.g.
    /// `warn,bus_core=info`). Defaults to [`DEFAULT_LOG_FILTER`].
    pub fn default_log_filter(mut self, filter: &str) -> Self {
        filter.clone_into(&mut self.default_log_filter);
        self
    }

    /// Which spans and events are exported, in `RUST_LOG` syntax. Defaults to
    /// [`DEFAULT_TRACE_FILTER`]; keep the exporter's own crates off.
    pub fn trace_filter(mut self, filter: &str) -> Self {
        filter.clone_into(&mut self.trace_filter);
        self
    }

    /// How long shutdown waits for the last exports. Defaults to
    /// [`DEFAULT_SHUTDOWN_DEADLINE`].
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.shutdown_deadline = deadline;
        self
    }

    /// Reads the environment and installs everything, as described on
    /// [`Telemetry::from_env`].
    ///
    /// # Errors
    ///
    /// As [`Telemetry::from_env`].
    pub fn install(self) -> Result<Telemetry, OtelError> {
        let settings = Settings::from_env()?;
        let log_filter = match std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            Some(value) => parse_filter("RUST_LOG", value)?,
            None => parse_filter("the default log filter", self.default_log_filter.clone())?,
        };
        let service_name = service_name(&settings, &self.default_service_name);

        let mut telemetry = Telemetry {
            service_name,
            tracer_provider: None,
            meter_provider: None,
            registry: None,
            traces: None,
            metrics: None,
            shutdown_deadline: self.shutdown_deadline,
        };

        let fmt_layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .compact()
            .with_filter(log_filter);

        if settings.disabled {
            tracing_subscriber::registry()
                .with(fmt_layer)
                .try_init()
                .map_err(OtelError::SubscriberAlreadySet)?;
            tracing::debug!("OTEL_SDK_DISABLED=true: OpenTelemetry is off");
            return Ok(telemetry);
        }

        let resource = Resource::builder()
            .with_service_name(telemetry.service_name.clone())
            .build();

        // Everything fallible is built before anything global is installed, so an error
        // leaves the process as it was. Dropping `telemetry` on an error path shuts down
        // what was built.
        let otel_layer;
        if let Some(target) = &settings.traces {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(target.protocol.to_otlp())
                .build()
                .map_err(|source| OtelError::Exporter {
                    signal: "traces",
                    source,
                })?;
            let provider = SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_batch_exporter(exporter)
                .build();
            let tracer = provider.tracer_with_scope(
                InstrumentationScope::builder(SCOPE)
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            );
            let trace_filter = parse_filter("the trace filter", self.trace_filter.clone())?;
            otel_layer = Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(trace_filter),
            );
            telemetry.tracer_provider = Some(provider);
            telemetry.traces = Some(target.clone());
        } else {
            // Not exporting, yet a link in someone's trace: a message that arrives with a
            // sampled `traceparent` gets a span (recorded, then dropped: no exporter) whose
            // context the messages its handler sends carry on, so the trace does not break at
            // this service. A message without one starts nothing: the root sampler is off.
            let provider = SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
                .build();
            let tracer = provider.tracer_with_scope(
                InstrumentationScope::builder(SCOPE)
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            );
            let trace_filter = parse_filter("the trace filter", self.trace_filter.clone())?;
            otel_layer = Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(trace_filter),
            );
            telemetry.tracer_provider = Some(provider);
        }

        let registry = prometheus::Registry::new();
        let prometheus_reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(OtelError::Prometheus)?;
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(prometheus_reader);
        if let Some(target) = &settings.metrics {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(target.protocol.to_otlp())
                .build()
                .map_err(|source| OtelError::Exporter {
                    signal: "metrics",
                    source,
                })?;
            meters = meters.with_periodic_exporter(exporter);
            telemetry.metrics = Some(target.clone());
        }
        let meter_provider = meters.build();
        telemetry.meter_provider = Some(meter_provider.clone());
        telemetry.registry = Some(registry);

        tracing_subscriber::registry()
            .with(fmt_layer)
            .with(otel_layer)
            .try_init()
            .map_err(OtelError::SubscriberAlreadySet)?;

        let mut propagators: Vec<
            Box<dyn opentelemetry::propagation::TextMapPropagator + Send + Sync>,
        > = Vec::new();
        if settings.propagators.trace_context {
            propagators.push(Box::new(TraceContextPropagator::new()));
        }
        if settings.propagators.baggage {
            propagators.push(Box::new(BaggagePropagator::new()));
        }
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(
            propagators,
        ));
        if let Some(provider) = &telemetry.tracer_provider {
            opentelemetry::global::set_tracer_provider(provider.clone());
        }
        opentelemetry::global::set_meter_provider(meter_provider);

        tracing::info!(
            service.name = %telemetry.service_name,
            traces = %describe(&telemetry.traces),
            metrics = %describe(&telemetry.metrics),
            "OpenTelemetry ready"
        );
        Ok(telemetry)
    }
}

/// `OTEL_SERVICE_NAME`, else `service.name` from `OTEL_RESOURCE_ATTRIBUTES`, else the default.
fn service_name(settings: &Settings, default: &str) -> String {
    if let Some(name) = &settings.service_name {
        return name.clone();
    }
    if settings.disabled {
        return default.to_owned();
    }
    // The SDK's resource detectors read OTEL_RESOURCE_ATTRIBUTES and fall back to
    // `unknown_service:<executable>` when nothing names the service.
    let detected = Resource::builder().build();
    match detected.get(&Key::from_static_str("service.name")) {
        Some(name) if !name.as_str().starts_with("unknown_service") => name.to_string(),
        _ => default.to_owned(),
    }
}

fn parse_filter(what: &'static str, value: String) -> Result<EnvFilter, OtelError> {
    EnvFilter::builder()
        .parse(&value)
        .map_err(|source| OtelError::InvalidFilter {
            what,
            value,
            source,
        })
}

fn describe(target: &Option<OtlpTarget>) -> String {
    match target {
        Some(t) => format!("{} ({})", t.url, t.protocol.as_str()),
        None => "not exported".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_type_is_the_one_the_encoder_writes() {
        assert_eq!(PROMETHEUS_CONTENT_TYPE, prometheus::TEXT_FORMAT);
    }

    #[test]
    fn the_default_filters_parse() {
        parse_filter("log", DEFAULT_LOG_FILTER.to_owned()).unwrap();
        parse_filter("trace", DEFAULT_TRACE_FILTER.to_owned()).unwrap();
    }

    #[test]
    fn a_bad_filter_says_where_it_came_from() {
        let message = parse_filter("RUST_LOG", "info,=[".to_owned())
            .unwrap_err()
            .to_string();
        assert!(message.contains("RUST_LOG"), "{message}");
    }
}
