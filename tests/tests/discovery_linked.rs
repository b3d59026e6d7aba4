//! Discovery of handlers in another crate: naming the crate once (`use ... as _`) links it,
//! and its `#[handler]`s are found and run. (`discovery_unlinked.rs` is the same binary
//! without that line.)

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

// The documented way to link a handler crate that nothing else in the binary names.
use bus_test_handlers as _;

use bus_core::{Bus, Destination, Envelope, Headers, Outgoing, Transport};
use bus_tests::eventually;
use bus_transport_memory::MemoryTransport;

#[tokio::test]
async fn a_handler_crate_named_with_use_as_underscore_is_discovered_and_handles_messages() {
    let transport = MemoryTransport::new().serialize(true);
    let bus = Bus::builder()
        .transport(transport.clone())
        .host(["t-audit"])
        .start()
        .await
        .expect("the linked crate's handler makes the endpoint buildable");
    assert_eq!(bus.endpoint_names(), vec!["t-audit".to_string()]);
    // Sent by wire name, as another service would: this binary never names the crate's types.
    let headers = Headers {
        message_id: "audit-1".into(),
        message_type: Cow::Borrowed("t.discovery.Audited"),
        content_type: Cow::Borrowed("application/json"),
        ..Headers::default()
    };
    transport
        .send(Outgoing {
            destination: Destination::Event(Arc::from("t.discovery.Audited")),
            envelope: Envelope::from_bytes(headers, &br#"{"what":"login"}"#[..]),
            delay: None,
            deliver_at: None,
        })
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || bus.stats().handled == 1).await);
    bus.shutdown().await;
    assert_eq!(bus.stats().dead_lettered, 0);
}
