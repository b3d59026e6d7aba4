//! Case 7 (`telemetry`, built with `--features telemetry`): what tracing and metrics cost. The
//! bus with its spans and metrics on, under an installed OpenTelemetry SDK as a service runs it
//! (every span sampled and handed to a batch processor, whose exporter drops them; a meter
//! provider with a reader), against the same bus with `BusBuilder::telemetry(false)`, taken in
//! turns in one run.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt as _;

/// An exporter that drops what it is given: the cost measured is the bus's and the SDK's,
/// not a network's.
#[derive(Debug)]
struct Dropping;

impl SpanExporter for Dropping {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

/// Install the SDK once for the process: a tracing subscriber with the OpenTelemetry layer,
/// and the global meter provider. Runs with telemetry off are not affected: their bus makes no
/// spans and records no metrics.
pub fn install() {
    static INSTALLED: OnceLock<(SdkTracerProvider, SdkMeterProvider)> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(Dropping)
            .build();
        let tracer = tracer_provider.tracer("bus-bench");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other tracing subscriber in the benchmark");
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(ManualReader::builder().build())
            .build();
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        (tracer_provider, meter_provider)
    });
}
