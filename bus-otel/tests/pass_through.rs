//! A service that exports no traces is still a link in the trace of a message it handles: what
//! its handler sends carries the incoming trace on (same trace id, a new parent span), so a
//! trace across several services does not break at the one without an exporter. The
//! environment is process-wide, hence this test's own file.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::{
    header, Bus, Command, Destination, Envelope, HandlerError, Headers, MessageContext, Outgoing,
    Transport,
};
use bus_otel::Telemetry;
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "pt.Reserve", endpoint = "pt-stock")]
struct Reserve {
    sku: String,
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "pt.Ship", endpoint = "pt-shipping")]
struct Ship {
    sku: String,
}

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

#[tokio::test]
async fn a_service_without_a_trace_exporter_carries_the_incoming_trace_on() {
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            std::env::remove_var(name);
        }
    }
    let telemetry = Telemetry::from_env("stock-service").expect("telemetry installs");
    assert!(!telemetry.exporting_traces());

    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let transport = MemoryTransport::new().serialize(true);
    let record = seen.clone();
    let bus = Bus::builder()
        .transport(transport.clone())
        .without_discovery()
        .handler("pt-stock", |cmd: Reserve, ctx: MessageContext| async move {
            ctx.send(Ship { sku: cmd.sku }).await?;
            Ok::<(), HandlerError>(())
        })
        .handler("pt-shipping", move |_: Ship, ctx: MessageContext| {
            let record = record.clone();
            async move {
                *record.lock().unwrap() = ctx.headers().get(header::TRACEPARENT).map(String::from);
                Ok::<(), HandlerError>(())
            }
        })
        .route::<Reserve>("pt-stock")
        .route::<Ship>("pt-shipping")
        .start()
        .await
        .expect("the bus starts");

    // As another service, which traces, would send it.
    let mut headers = Headers {
        message_id: "pt-1".into(),
        message_type: Cow::Borrowed("pt.Reserve"),
        content_type: Cow::Borrowed("application/json"),
        ..Headers::default()
    };
    headers.custom.insert(
        header::TRACEPARENT.into(),
        format!("00-{TRACE_ID}-{PARENT}-01"),
    );
    transport
        .send(Outgoing {
            destination: Destination::Endpoint("pt-stock".into()),
            envelope: Envelope::from_bytes(headers, &br#"{"sku":"kettle"}"#[..]),
            delay: None,
            deliver_at: None,
        })
        .await
        .unwrap();

    let started = Instant::now();
    let traceparent = loop {
        if let Some(tp) = seen.lock().unwrap().clone() {
            break tp;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the shipment was handled, with a traceparent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    bus.shutdown().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();

    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], TRACE_ID, "the same trace: {traceparent}");
    assert_ne!(parts[2], PARENT, "a span of this service is the parent");
    assert_eq!(parts[3], "01", "still sampled");
}
