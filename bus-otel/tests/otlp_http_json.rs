//! Spans and metrics reach a real OTLP/HTTP receiver configured only through `OTEL_*`
//! variables. The environment is process-wide, hence this test's own file.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::{Bus, Command, HandlerError};
use bus_otel::Telemetry;
use bus_transport_memory::MemoryTransport;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

/// How long any wait in this test may take before it fails.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "otel_test.PlaceOrder", endpoint = "otel-sales")]
struct PlaceOrder {
    id: u32,
}

static HANDLED: AtomicU32 = AtomicU32::new(0);

#[bus_core::handler]
async fn place(order: PlaceOrder) -> Result<(), HandlerError> {
    tracing::info!(order = order.id, "order placed");
    HANDLED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// One request the receiver accepted.
#[derive(Debug, Clone)]
struct Export {
    path: String,
    content_type: String,
    body: Bytes,
}

type Exports = Arc<Mutex<Vec<Export>>>;

/// An OTLP/HTTP receiver on a free loopback port: stores each `POST /v1/traces` and
/// `POST /v1/metrics` body and answers as a collector does.
async fn start_receiver() -> (SocketAddr, Exports) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let exports = Exports::default();
    let stored = exports.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let stored = stored.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let stored = stored.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let known = req.method() == hyper::Method::POST
                            && (path == "/v1/traces" || path == "/v1/metrics");
                        let content_type = req
                            .headers()
                            .get(CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        if known {
                            stored.lock().unwrap().push(Export {
                                path,
                                content_type,
                                body,
                            });
                        }
                        let status = if known {
                            StatusCode::OK
                        } else {
                            StatusCode::NOT_FOUND
                        };
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(status)
                                .header(CONTENT_TYPE, "application/json")
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, exports)
}

/// Waits until `exports` holds a request to `path`, up to the deadline.
async fn wait_for(exports: &Exports, path: &str) -> Vec<Export> {
    let start = Instant::now();
    loop {
        let found: Vec<Export> = exports
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.path == path)
            .cloned()
            .collect();
        if !found.is_empty() {
            return found;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no POST {path} within {DEADLINE:?}; received: {:?}",
            exports
                .lock()
                .unwrap()
                .iter()
                .map(|e| &e.path)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A span as OTLP/JSON carries it, with the service it came from.
#[derive(Debug, Clone)]
struct SpanSeen {
    service: String,
    name: String,
    kind: i64,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, Value)>,
}

impl SpanSeen {
    fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

fn string_attribute(attributes: &Value, key: &str) -> Option<String> {
    attributes.as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
        .map(str::to_owned)
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Every span in OTLP/JSON `ExportTraceServiceRequest` bodies.
fn spans(exports: &[Export]) -> Vec<SpanSeen> {
    let mut seen = Vec::new();
    for export in exports {
        let request: Value = serde_json::from_slice(&export.body)
            .unwrap_or_else(|e| panic!("the traces body is not JSON ({e}): {:?}", export.body));
        for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
            let service =
                string_attribute(&resource_spans["resource"]["attributes"], "service.name")
                    .unwrap_or_default();
            for scope_spans in resource_spans["scopeSpans"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for span in scope_spans["spans"].as_array().into_iter().flatten() {
                    seen.push(SpanSeen {
                        service: service.clone(),
                        name: text(&span["name"]),
                        kind: span["kind"].as_i64().unwrap_or_default(),
                        trace_id: text(&span["traceId"]),
                        span_id: text(&span["spanId"]),
                        parent_span_id: text(&span["parentSpanId"]),
                        attributes: span["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| (text(&a["key"]), a["value"].clone()))
                            .collect(),
                    });
                }
            }
        }
    }
    seen
}

/// Every metric name in OTLP/JSON `ExportMetricsServiceRequest` bodies, with its service.
fn metric_names(exports: &[Export]) -> Vec<(String, String)> {
    let mut names = Vec::new();
    for export in exports {
        let request: Value = serde_json::from_slice(&export.body).unwrap();
        for resource in request["resourceMetrics"].as_array().into_iter().flatten() {
            let service = string_attribute(&resource["resource"]["attributes"], "service.name")
                .unwrap_or_default();
            for scope in resource["scopeMetrics"].as_array().into_iter().flatten() {
                for metric in scope["metrics"].as_array().into_iter().flatten() {
                    names.push((service.clone(), text(&metric["name"])));
                }
            }
        }
    }
    names
}

fn clear_otel_env() {
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            std::env::remove_var(name);
        }
    }
}

// OTLP span kinds, as numbers in OTLP/JSON.
const SPAN_KIND_PRODUCER: i64 = 4;
const SPAN_KIND_CONSUMER: i64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_json_exporter_sends_spans_to_a_receiver_from_the_otel_env_vars() {
    let (addr, exports) = start_receiver().await;
    clear_otel_env();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
    std::env::set_var("OTEL_SERVICE_NAME", "otel-test-sales");

    let telemetry = Telemetry::from_env("not-this-name").expect("telemetry installs");
    assert!(telemetry.exporting_traces());
    assert!(telemetry.exporting_metrics());
    assert_eq!(telemetry.service_name(), "otel-test-sales");
    assert_eq!(
        telemetry.traces_endpoint(),
        Some(format!("http://{addr}/v1/traces").as_str())
    );

    // A span made by hand, as any instrumented code would.
    tracing::info_span!(
        "send sales",
        otel.kind = "producer",
        messaging.system = "memory"
    )
    .in_scope(|| tracing::info!("inside the hand-made span"));

    // Real bus spans: a command sent to a handler on the in-memory transport, inside a
    // parent span so the whole flow is one trace.
    let bus = Bus::builder()
        .transport(MemoryTransport::new())
        .host(["otel-sales"])
        .start()
        .await
        .expect("the bus starts");
    bus.send(PlaceOrder { id: 7 })
        .instrument(tracing::info_span!("checkout"))
        .await
        .expect("the command is sent");
    let start = Instant::now();
    while HANDLED.load(Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the handler did not run within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(DEADLINE, bus.shutdown())
        .await
        .expect("the bus shuts down in time");

    // Shutdown flushes the batched spans and pushes the metrics one last time. It blocks,
    // so it runs off the async workers (the receiver needs them to answer).
    let shutdown_started = Instant::now();
    tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || telemetry.shutdown()),
    )
    .await
    .expect("telemetry shuts down in time")
    .unwrap();
    assert!(
        shutdown_started.elapsed() < Duration::from_secs(6),
        "shutdown took {:?}, past its 5 s deadline",
        shutdown_started.elapsed()
    );

    let trace_exports = wait_for(&exports, "/v1/traces").await;
    for export in &trace_exports {
        assert!(
            export.content_type.starts_with("application/json"),
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/json sends JSON, got {:?}",
            export.content_type
        );
    }
    let spans = spans(&trace_exports);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(
        spans.iter().all(|s| s.service == "otel-test-sales"),
        "every span carries OTEL_SERVICE_NAME: {spans:#?}"
    );

    let manual = spans
        .iter()
        .find(|s| s.name == "send sales")
        .unwrap_or_else(|| panic!("the hand-made span is exported: {names:?}"));
    assert_eq!(
        manual.kind, SPAN_KIND_PRODUCER,
        "otel.kind sets the span kind"
    );
    assert_eq!(
        manual
            .attribute("messaging.system")
            .and_then(|v| v["stringValue"].as_str()),
        Some("memory")
    );

    let checkout = spans
        .iter()
        .find(|s| s.name == "checkout")
        .unwrap_or_else(|| panic!("the parent span is exported: {names:?}"));
    let send = spans
        .iter()
        .find(|s| s.name == "send otel-sales")
        .unwrap_or_else(|| panic!("the bus's producer span is exported: {names:?}"));
    let process = spans
        .iter()
        .find(|s| s.name == "process otel-sales")
        .unwrap_or_else(|| panic!("the bus's consumer span is exported: {names:?}"));
    assert_eq!(send.kind, SPAN_KIND_PRODUCER);
    assert_eq!(process.kind, SPAN_KIND_CONSUMER);
    assert_eq!(
        send.parent_span_id, checkout.span_id,
        "send is a child of checkout"
    );
    assert_eq!(
        process.trace_id, send.trace_id,
        "the handler's span joins the sender's trace through the message headers"
    );
    assert_eq!(
        process.parent_span_id, send.span_id,
        "process is a child of send"
    );

    let metric_exports = wait_for(&exports, "/v1/metrics").await;
    let metrics = metric_names(&metric_exports);
    for expected in [
        "messaging.client.sent.messages",
        "messaging.process.duration",
    ] {
        assert!(
            metrics
                .iter()
                .any(|(service, name)| name == expected && service == "otel-test-sales"),
            "{expected} is pushed over OTLP: {metrics:?}"
        );
    }
}
