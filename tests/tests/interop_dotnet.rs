//! .NET interop: MassTransit's JSON envelope and NServiceBus's headers, read and written, as
//! pure mappings both ways; end to end on the in-memory transport (serializing); and, over
//! RabbitMQ, with a pika script in the frameworks' shapes as the producer and as the consumer.
//!
//! MassTransit: <https://masstransit.io/documentation/configuration/serialization>.
//! NServiceBus: <https://docs.particular.net/nservicebus/messaging/headers>.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_core::masstransit::{self, MassTransitError};
use bus_core::nservicebus::{self, NServiceBusError};
use bus_core::{
    header, Body, Bus, Codecs, Command, Destination, Envelope, Event, HandlerError, Headers,
    MassTransit, MessageContext, NServiceBus, Outgoing, SendOptions, State, Transport,
};
use bus_tests::broker::AmqpScope;
use bus_tests::eventually;
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "shop.sales.OrderPlaced")]
struct OrderPlaced {
    order: String,
    amount: u32,
}

/// Sent by the bus in MassTransit's envelope.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "shop.shipping.ShipOrder")]
struct ShipOrder {
    order: String,
}

/// Sent by the bus with NServiceBus headers.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "shop.shipping.PackOrder")]
struct PackOrder {
    order: String,
}

const MT_URN: &str = "urn:message:Shop.Contracts:OrderPlaced";
const SHIP_URN: &str = "urn:message:Shop.Contracts:ShipOrder";
const NSB_TYPE: &str =
    "Shop.Contracts.OrderPlaced, Shop.Contracts, Version=1.0.0.0, Culture=neutral, PublicKeyToken=null";
const PACK_TYPE: &str = "Shop.Contracts.PackOrder, Shop.Contracts, Version=1.0.0.0";
const CONVERSATION: &str = "5f1c4a4e-0d4b-4b8e-9a43-7c1c2f3a9b10";
const CORRELATION: &str = "0b8f3a52-6a55-4a0e-8f7e-2f8d9c1e4d21";

/// 2026-01-02T03:04:05.1234567Z, as far as microseconds go.
fn sent() -> SystemTime {
    UNIX_EPOCH + Duration::new(1_767_323_045, 123_456_700)
}

#[derive(Clone, Debug)]
struct Handled {
    body: serde_json::Value,
    headers: Headers,
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Handled>>>);

impl Seen {
    fn push(&self, ctx: &MessageContext, body: serde_json::Value) {
        self.0.lock().unwrap().push(Handled {
            body,
            headers: ctx.headers().clone(),
        });
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn by_id(&self, id: &str) -> Option<Handled> {
        let all = self.0.lock().unwrap();
        all.iter().find(|h| h.headers.message_id == id).cloned()
    }
}

async fn on_placed(
    evt: OrderPlaced,
    ctx: MessageContext,
    State(seen): State<Seen>,
) -> Result<(), HandlerError> {
    seen.push(&ctx, serde_json::to_value(evt).unwrap());
    Ok(())
}

async fn on_ship(
    cmd: ShipOrder,
    ctx: MessageContext,
    State(seen): State<Seen>,
) -> Result<(), HandlerError> {
    seen.push(&ctx, serde_json::to_value(cmd).unwrap());
    Ok(())
}

async fn on_pack(
    cmd: PackOrder,
    ctx: MessageContext,
    State(seen): State<Seen>,
) -> Result<(), HandlerError> {
    seen.push(&ctx, serde_json::to_value(cmd).unwrap());
    Ok(())
}

fn bytes_of(envelope: &Envelope) -> &[u8] {
    match &envelope.body {
        Body::Bytes(b) => b,
        Body::Message(_) => panic!("a typed body"),
    }
}

/// A MassTransit envelope as MassTransit writes it, with `edit` applied to its JSON.
fn mt_envelope(id: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Envelope {
    let mut json = serde_json::json!({
        "messageId": id,
        "correlationId": CORRELATION,
        "conversationId": CONVERSATION,
        "initiatorId": "c0ffee00-0000-0000-0000-000000000001",
        "requestId": "c0ffee00-0000-0000-0000-000000000002",
        "sourceAddress": "rabbitmq://localhost/shop_sales",
        "destinationAddress": "rabbitmq://localhost/orders",
        "responseAddress": "rabbitmq://localhost/shop_sales_reply",
        "messageType": [MT_URN, "urn:message:Shop.Contracts:IOrderEvent"],
        "message": {"order": "o-1", "amount": 7},
        "sentTime": "2026-01-02T03:04:05.1234567Z",
        "headers": {"tenant": "acme", "attempt": 2},
        "host": {"machineName": "web-1", "processName": "Shop.Sales", "processId": 42}
    });
    edit(&mut json);
    let headers = Headers {
        content_type: masstransit::CONTENT_TYPE.into(),
        ..Headers::default()
    };
    Envelope::from_bytes(headers, serde_json::to_vec(&json).unwrap())
}

fn nsb_headers(id: &str) -> Headers {
    let mut headers = Headers {
        content_type: "application/json".into(),
        ..Headers::default()
    };
    for (k, v) in [
        (nservicebus::header::MESSAGE_ID, id),
        (nservicebus::header::ENCLOSED_MESSAGE_TYPES, NSB_TYPE),
        (nservicebus::header::CONVERSATION_ID, CONVERSATION),
        (nservicebus::header::CORRELATION_ID, CORRELATION),
        (nservicebus::header::MESSAGE_INTENT, "Publish"),
        (nservicebus::header::REPLY_TO_ADDRESS, "Shop.Sales"),
        (
            nservicebus::header::TIME_SENT,
            "2026-01-02 03:04:05:123456 Z",
        ),
        (nservicebus::header::CONTENT_TYPE, "application/json"),
    ] {
        headers.custom.insert(k.into(), v.into());
    }
    headers
}

fn nsb_envelope(id: &str, edit: impl FnOnce(&mut Headers)) -> Envelope {
    let mut headers = nsb_headers(id);
    edit(&mut headers);
    Envelope::from_bytes(headers, r#"{"order":"o-2","amount":9}"#)
}

fn bus_headers(message_type: &'static str) -> Headers {
    let mut h = Headers {
        message_id: "0190a000-0000-7000-8000-000000000001".into(),
        message_type: message_type.into(),
        content_type: "application/json".into(),
        sent_at: Some(UNIX_EPOCH + Duration::new(1_767_323_045, 123_456_000)),
        correlation_id: Some(CORRELATION.into()),
        ..Headers::default()
    };
    h.custom
        .insert(header::CAUSATION_ID.into(), "cause-1".into());
    h.custom
        .insert(header::CONVERSATION_ID.into(), CONVERSATION.into());
    h
}

// ---------------------------------------------------------------------------------------
// The mappings, as pure functions.

#[test]
fn a_masstransit_envelope_reads_as_a_bus_message_with_its_ids() {
    let mapped = MassTransit::new().map(MT_URN, "shop.sales.OrderPlaced");
    let read = masstransit::read(&mt_envelope("mt-1", |_| {}), &mapped)
        .unwrap()
        .expect("an envelope");
    let h = &read.headers;
    assert_eq!(h.message_id, "mt-1");
    assert_eq!(h.message_type, "shop.sales.OrderPlaced");
    assert_eq!(h.content_type, "application/json");
    assert_eq!(h.correlation_id.as_deref(), Some(CORRELATION));
    assert_eq!(h.conversation_id(), Some(CONVERSATION));
    assert_eq!(
        h.causation_id(),
        Some("c0ffee00-0000-0000-0000-000000000001")
    );
    let at = h.sent_at.expect("sentTime");
    assert!(at.duration_since(sent()).unwrap_or_else(|e| e.duration()) < Duration::from_micros(1));
    assert_eq!(h.get("tenant"), Some("acme"));
    assert_eq!(h.get("attempt"), Some("2"));
    assert_eq!(
        h.get(masstransit::header::REQUEST_ID),
        Some("c0ffee00-0000-0000-0000-000000000002")
    );
    assert_eq!(
        h.get(masstransit::header::SOURCE_ADDRESS),
        Some("rabbitmq://localhost/shop_sales")
    );
    assert_eq!(
        h.get(masstransit::header::RESPONSE_ADDRESS),
        Some("rabbitmq://localhost/shop_sales_reply")
    );
    assert_eq!(
        h.get(masstransit::header::MESSAGE_TYPES),
        Some("urn:message:Shop.Contracts:OrderPlaced,urn:message:Shop.Contracts:IOrderEvent")
    );
    let body: serde_json::Value = serde_json::from_slice(bytes_of(&read)).unwrap();
    assert_eq!(body, serde_json::json!({"order": "o-1", "amount": 7}));

    // Unmapped, a URN stands for its last part.
    let unmapped = masstransit::read(&mt_envelope("mt-2", |_| {}), &MassTransit::new())
        .unwrap()
        .unwrap();
    assert_eq!(unmapped.headers.message_type, "OrderPlaced");
    // A mapping of a less specific URN wins over an unmapped more specific one.
    let by_interface = MassTransit::new().map("urn:message:Shop.Contracts:IOrderEvent", "ev");
    let read = masstransit::read(&mt_envelope("mt-3", |_| {}), &by_interface)
        .unwrap()
        .unwrap();
    assert_eq!(read.headers.message_type, "ev");
}

#[test]
fn a_bus_message_without_the_masstransit_content_type_is_left_alone() {
    let plain = Envelope::from_bytes(bus_headers("x"), "{}");
    assert!(matches!(
        masstransit::read(&plain, &MassTransit::new()),
        Ok(None)
    ));
    assert!(matches!(
        nservicebus::read(&plain, &NServiceBus::new()),
        Ok(None)
    ));
}

#[test]
fn malformed_masstransit_envelopes_are_errors_that_say_why() {
    let none = MassTransit::new();
    let mut not_json = mt_envelope("x", |_| {});
    not_json.body = Body::Bytes("{not json".into());
    let e = masstransit::read(&not_json, &none).unwrap_err();
    assert!(e.to_string().contains("not JSON"), "{e}");
    for field in ["messageId", "messageType", "message"] {
        let env = mt_envelope("x", |j| {
            j.as_object_mut().unwrap().remove(field);
        });
        assert_eq!(
            masstransit::read(&env, &none).err(),
            Some(MassTransitError::MissingField(field))
        );
    }
    let env = mt_envelope("x", |j| j["messageType"] = serde_json::json!([]));
    assert_eq!(
        masstransit::read(&env, &none).err(),
        Some(MassTransitError::MissingField("messageType"))
    );
    let env = mt_envelope("x", |j| j["sentTime"] = "yesterday".into());
    let e = masstransit::read(&env, &none).unwrap_err();
    assert!(e.to_string().contains("sentTime"), "{e}");
    let env = mt_envelope("x", |j| *j = serde_json::json!([1, 2]));
    assert!(masstransit::read(&env, &none).is_err());
}

#[test]
fn masstransit_writing_wraps_the_body_and_reads_back_as_the_same_message() {
    let config = MassTransit::new()
        .message_type(SHIP_URN)
        .source_address("rabbitmq://localhost/rust_shipping");
    let to = Destination::Endpoint(Arc::from("shipping"));
    let (headers, body) = masstransit::write(
        &config,
        &to,
        bus_headers("shop.shipping.ShipOrder"),
        Body::Bytes(r#"{"order":"o-9"}"#.into()),
        &Codecs::default(),
    )
    .unwrap();
    assert_eq!(headers.content_type, masstransit::CONTENT_TYPE);
    let written = Envelope {
        headers: Arc::new(headers),
        body,
    };
    let json: serde_json::Value = serde_json::from_slice(bytes_of(&written)).unwrap();
    assert_eq!(json["messageId"], "0190a000-0000-7000-8000-000000000001");
    assert_eq!(json["correlationId"], CORRELATION);
    assert_eq!(json["conversationId"], CONVERSATION);
    assert_eq!(json["initiatorId"], "cause-1");
    assert_eq!(json["sourceAddress"], "rabbitmq://localhost/rust_shipping");
    assert_eq!(json["destinationAddress"], "queue:shipping");
    assert_eq!(json["messageType"], serde_json::json!([SHIP_URN]));
    assert_eq!(json["message"], serde_json::json!({"order": "o-9"}));
    assert_eq!(json["sentTime"], "2026-01-02T03:04:05.123456Z");
    assert!(json["host"].is_object());
    assert_eq!(json["headers"][header::CAUSATION_ID], "cause-1");

    let back = masstransit::read(
        &written,
        &config.clone().map(SHIP_URN, "shop.shipping.ShipOrder"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(back.headers.message_type, "shop.shipping.ShipOrder");
    assert_eq!(
        back.headers.message_id,
        "0190a000-0000-7000-8000-000000000001"
    );
    assert_eq!(back.headers.correlation_id.as_deref(), Some(CORRELATION));
    assert_eq!(back.headers.sent_at, bus_headers("x").sent_at);
    assert_eq!(bytes_of(&back), br#"{"order":"o-9"}"#);

    // A body that is not JSON cannot be a MassTransit message.
    let e = masstransit::write(
        &config,
        &to,
        bus_headers("t"),
        Body::Bytes(vec![0xff, 0x00].into()),
        &Codecs::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("JSON"), "{e}");
}

#[test]
fn nservicebus_headers_read_as_a_bus_message_with_its_ids() {
    let mapped = NServiceBus::new().map(
        "Shop.Contracts.OrderPlaced, Shop.Contracts",
        "shop.sales.OrderPlaced",
    );
    let read = nservicebus::read(&nsb_envelope("nsb-1", |_| {}), &mapped)
        .unwrap()
        .expect("NServiceBus headers");
    let h = &read.headers;
    assert_eq!(h.message_id, "nsb-1");
    assert_eq!(h.message_type, "shop.sales.OrderPlaced");
    assert_eq!(h.correlation_id.as_deref(), Some(CORRELATION));
    assert_eq!(h.conversation_id(), Some(CONVERSATION));
    assert_eq!(
        h.sent_at,
        Some(UNIX_EPOCH + Duration::new(1_767_323_045, 123_456_000))
    );
    assert_eq!(h.content_type, "application/json");
    assert_eq!(h.get(nservicebus::header::MESSAGE_INTENT), Some("Publish"));
    assert_eq!(
        h.get(nservicebus::header::REPLY_TO_ADDRESS),
        Some("Shop.Sales")
    );
    assert_eq!(bytes_of(&read), br#"{"order":"o-2","amount":9}"#);

    let unmapped = nservicebus::read(&nsb_envelope("nsb-2", |_| {}), &NServiceBus::new())
        .unwrap()
        .unwrap();
    assert_eq!(unmapped.headers.message_type, "Shop.Contracts.OrderPlaced");
    // Several types: the first, the most specific, counts.
    let several = nsb_envelope("nsb-3", |h| {
        h.custom.insert(
            nservicebus::header::ENCLOSED_MESSAGE_TYPES.into(),
            format!("{NSB_TYPE};Shop.Contracts.IOrderEvent, Shop.Contracts"),
        );
    });
    let read = nservicebus::read(&several, &mapped).unwrap().unwrap();
    assert_eq!(read.headers.message_type, "shop.sales.OrderPlaced");
}

#[test]
fn malformed_nservicebus_headers_are_errors_that_say_why() {
    let none = NServiceBus::new();
    let env = nsb_envelope("x", |h| {
        h.custom.remove(nservicebus::header::ENCLOSED_MESSAGE_TYPES);
    });
    assert_eq!(
        nservicebus::read(&env, &none).err(),
        Some(NServiceBusError::MissingHeader(
            nservicebus::header::ENCLOSED_MESSAGE_TYPES
        ))
    );
    let env = nsb_envelope("x", |h| {
        h.custom.remove(nservicebus::header::MESSAGE_ID);
    });
    assert_eq!(
        nservicebus::read(&env, &none).err(),
        Some(NServiceBusError::MissingHeader(
            nservicebus::header::MESSAGE_ID
        ))
    );
    let env = nsb_envelope("x", |h| {
        h.custom.insert(
            nservicebus::header::TIME_SENT.into(),
            "2026-01-02T03:04:05Z".into(),
        );
    });
    let e = nservicebus::read(&env, &none).unwrap_err();
    assert!(
        e.to_string().contains("yyyy-MM-dd HH:mm:ss:ffffff Z"),
        "{e}"
    );
    let env = nsb_envelope("x", |h| {
        h.custom.insert(
            nservicebus::header::ENCLOSED_MESSAGE_TYPES.into(),
            ", X".into(),
        );
    });
    assert!(nservicebus::read(&env, &none).is_err());
}

#[test]
fn nservicebus_writing_adds_the_headers_and_reads_back_as_the_same_message() {
    let config = NServiceBus::new()
        .message_type(PACK_TYPE)
        .reply_to_address("rust.shipping");
    let h = nservicebus::write(
        &config,
        &Destination::Endpoint(Arc::from("shipping")),
        bus_headers("shop.shipping.PackOrder"),
    );
    let get = |n: &str| h.get(n).map(str::to_string);
    use nservicebus::header as nsb;
    assert_eq!(
        get(nsb::MESSAGE_ID).as_deref(),
        Some("0190a000-0000-7000-8000-000000000001")
    );
    assert_eq!(get(nsb::ENCLOSED_MESSAGE_TYPES).as_deref(), Some(PACK_TYPE));
    assert_eq!(get(nsb::CONVERSATION_ID).as_deref(), Some(CONVERSATION));
    assert_eq!(get(nsb::CORRELATION_ID).as_deref(), Some(CORRELATION));
    assert_eq!(get(nsb::RELATED_TO).as_deref(), Some("cause-1"));
    assert_eq!(get(nsb::MESSAGE_INTENT).as_deref(), Some("Send"));
    assert_eq!(get(nsb::REPLY_TO_ADDRESS).as_deref(), Some("rust.shipping"));
    assert_eq!(
        get(nsb::TIME_SENT).as_deref(),
        Some("2026-01-02 03:04:05:123456 Z")
    );
    assert_eq!(get(nsb::CONTENT_TYPE).as_deref(), Some("application/json"));
    // The bus's own headers stay.
    assert_eq!(h.message_type, "shop.shipping.PackOrder");
    assert_eq!(h.causation_id(), Some("cause-1"));

    let published = nservicebus::write(
        &config,
        &Destination::Event(Arc::from("e")),
        bus_headers("shop.shipping.PackOrder"),
    );
    assert_eq!(
        published.get(nsb::MESSAGE_INTENT),
        Some("Publish"),
        "events are published"
    );

    let env = Envelope::from_bytes(h.clone(), "{}");
    let back = nservicebus::read(
        &env,
        &NServiceBus::new().map(PACK_TYPE, "shop.shipping.PackOrder"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(back.headers.message_type, "shop.shipping.PackOrder");
    assert_eq!(back.headers.message_id, h.message_id);
    assert_eq!(back.headers.sent_at, h.sent_at);
}

// ---------------------------------------------------------------------------------------
// End to end.

const ENDPOINT: &str = "dotnet-orders";

async fn bus_on(transport: Arc<dyn Transport>, seen: &Seen) -> Bus {
    Bus::builder()
        .transport_arc(transport)
        .without_discovery()
        .handler(ENDPOINT, on_placed)
        .handler(ENDPOINT, on_ship)
        .handler(ENDPOINT, on_pack)
        .state(seen.clone())
        .endpoint_defaults(
            bus_core::EndpointConfig::default().delayed_retries(0, Duration::from_millis(10)),
        )
        .masstransit(MassTransit::new().map(MT_URN, "shop.sales.OrderPlaced"))
        .nservicebus(NServiceBus::new().map(NSB_TYPE, "shop.sales.OrderPlaced"))
        .masstransit_for::<ShipOrder>(MassTransit::new().message_type(SHIP_URN))
        .nservicebus_for::<PackOrder>(NServiceBus::new().message_type(PACK_TYPE))
        .build()
        .await
        .expect("build")
}

async fn failed_within(bus: &Bus, n: usize) -> Vec<bus_core::FailedMessage> {
    let mut failed = Vec::new();
    for _ in 0..100 {
        failed = bus.failed_messages(ENDPOINT, 10).await.expect("errors");
        if failed.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    failed
}

#[tokio::test]
async fn foreign_and_own_dotnet_messages_reach_handlers_and_malformed_ones_the_error_queue() {
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new().serialize(true));
    let seen = Seen::default();
    let bus = bus_on(transport.clone(), &seen).await;
    let to = || Destination::Endpoint(Arc::from(ENDPOINT));
    let inject = |envelope: Envelope| transport.send(Outgoing::new(to(), envelope));
    inject(mt_envelope("mt-ok", |_| {})).await.unwrap();
    inject(nsb_envelope("nsb-ok", |_| {})).await.unwrap();
    inject(mt_envelope("mt-bad", |j| {
        j.as_object_mut().unwrap().remove("message");
    }))
    .await
    .unwrap();
    inject(nsb_envelope("nsb-bad", |h| {
        h.custom
            .insert(nservicebus::header::TIME_SENT.into(), "now".into());
    }))
    .await
    .unwrap();
    bus.send_with(
        ShipOrder {
            order: "o-mt".into(),
        },
        SendOptions::new().message_id("3f1c4a4e-0d4b-4b8e-9a43-7c1c2f3a9b11"),
    )
    .await
    .unwrap();
    bus.send_with(
        PackOrder {
            order: "o-nsb".into(),
        },
        SendOptions::new().message_id("3f1c4a4e-0d4b-4b8e-9a43-7c1c2f3a9b12"),
    )
    .await
    .unwrap();
    bus.start().await.expect("start");
    let handled = eventually(Duration::from_secs(20), || seen.len() >= 4).await;
    let failed = failed_within(&bus, 2).await;
    bus.shutdown().await;
    assert!(
        handled,
        "handled only {} of 4; errors {failed:?}",
        seen.len()
    );

    let mt = seen.by_id("mt-ok").expect("MassTransit handled");
    assert_eq!(mt.body, serde_json::json!({"order": "o-1", "amount": 7}));
    assert_eq!(mt.headers.correlation_id.as_deref(), Some(CORRELATION));
    assert_eq!(mt.headers.conversation_id(), Some(CONVERSATION));
    assert_eq!(mt.headers.get("tenant"), Some("acme"));
    let nsb = seen.by_id("nsb-ok").expect("NServiceBus handled");
    assert_eq!(nsb.body, serde_json::json!({"order": "o-2", "amount": 9}));
    assert_eq!(nsb.headers.conversation_id(), Some(CONVERSATION));
    let own_mt = seen
        .by_id("3f1c4a4e-0d4b-4b8e-9a43-7c1c2f3a9b11")
        .expect("own MassTransit handled");
    assert_eq!(own_mt.body, serde_json::json!({"order": "o-mt"}));
    let own_nsb = seen
        .by_id("3f1c4a4e-0d4b-4b8e-9a43-7c1c2f3a9b12")
        .expect("own NServiceBus handled");
    assert_eq!(own_nsb.body, serde_json::json!({"order": "o-nsb"}));

    assert_eq!(failed.len(), 2, "{failed:?}");
    let reason = |needle: &str| {
        failed
            .iter()
            .map(|f| {
                f.envelope()
                    .headers
                    .get(header::FAILURE_ERROR)
                    .unwrap_or_default()
                    .to_string()
            })
            .find(|e| e.contains(needle))
            .unwrap_or_else(|| panic!("no failure mentions {needle}: {failed:?}"))
    };
    reason("`message`");
    reason("NServiceBus.TimeSent");
    // ServicePulse's headers on the NServiceBus message, and only there.
    use nservicebus::header as nsb;
    let entry = |id: &str| {
        failed
            .iter()
            .map(|f| f.envelope().headers.clone())
            .find(|h| h.get(nsb::MESSAGE_ID) == Some(id) || h.message_id == id)
            .unwrap_or_else(|| panic!("{id} in the error queue"))
    };
    let nsb_failed = entry("nsb-bad");
    let message = nsb_failed.get(nsb::EXCEPTION_MESSAGE).unwrap_or_default();
    assert!(message.contains("NServiceBus.TimeSent"), "{message}");
    assert_eq!(
        nsb_failed.get(nsb::EXCEPTION_TYPE),
        Some("deserialization-failed")
    );
    assert!(nsb_failed.get(nsb::EXCEPTION_STACK_TRACE).is_some());
    assert_eq!(nsb_failed.get(nsb::FAILED_Q), Some(ENDPOINT));
    let at = nsb_failed.get(nsb::TIME_OF_FAILURE).unwrap_or_default();
    assert!(nservicebus::parse_time(at).is_some(), "{at}");
    assert_eq!(
        nsb_failed.get(nsb::TIME_SENT),
        Some("now"),
        "the error queue keeps the message as it arrived"
    );
    let mt_failed = failed
        .iter()
        .map(|f| f.envelope().headers.clone())
        .find(|h| h.content_type == masstransit::CONTENT_TYPE)
        .expect("the MassTransit one, as it arrived");
    assert!(mt_failed.get(nsb::FAILED_Q).is_none());
}

// ---------------------------------------------------------------------------------------
// With pika, over RabbitMQ.

async fn python_or_skip(test: &str) -> bool {
    bus_tests::python::python_or_skip(test, "pika", "pip install pika").await
}

async fn python(args: &[&str]) -> String {
    bus_tests::python::run_script("dotnet_amqp.py", args).await
}

#[tokio::test]
async fn masstransit_and_nservicebus_messages_from_pika_reach_a_rust_handler() {
    let test = "masstransit_and_nservicebus_messages_from_pika_reach_a_rust_handler";
    if !python_or_skip(test).await {
        return;
    }
    let Some(scope) = AmqpScope::new(test).await else {
        return;
    };
    let seen = Seen::default();
    let bus = Bus::builder()
        .transport(scope.transport("dotnet-py-in").await)
        .without_discovery()
        .handler("dotnet-py-in", on_placed)
        .state(seen.clone())
        .masstransit(MassTransit::new().map(MT_URN, "shop.sales.OrderPlaced"))
        .nservicebus(NServiceBus::new().map(NSB_TYPE, "shop.sales.OrderPlaced"))
        .start()
        .await
        .expect("start");
    let queue = scope.naming.queue("dotnet-py-in");
    let ids = [
        ("masstransit", "6a1c4a4e-0d4b-4b8e-9a43-7c1c2f3a9b01"),
        ("nservicebus", "6a1c4a4e-0d4b-4b8e-9a43-7c1c2f3a9b02"),
    ];
    for (kind, id) in ids {
        python(&["produce", &scope.url, &queue, kind, id]).await;
    }
    let done = eventually(Duration::from_secs(20), || seen.len() >= 2).await;
    let failed = bus.failed_messages("dotnet-py-in", 10).await.unwrap();
    bus.shutdown().await;
    scope.cleanup().await;
    assert!(done, "handled {} of 2; error queue: {failed:?}", seen.len());
    for (kind, id) in ids {
        let h = seen
            .by_id(id)
            .unwrap_or_else(|| panic!("{kind} not handled"));
        let order = if kind == "masstransit" {
            "py-mt"
        } else {
            "py-nsb"
        };
        assert_eq!(
            h.body,
            serde_json::json!({"order": order, "amount": 42}),
            "{kind}"
        );
        assert_eq!(h.headers.message_type, "shop.sales.OrderPlaced", "{kind}");
        assert_eq!(
            h.headers.correlation_id.as_deref(),
            Some(CORRELATION),
            "{kind}"
        );
        assert_eq!(h.headers.conversation_id(), Some(CONVERSATION), "{kind}");
        let at = h.headers.sent_at.expect("sent time");
        let off = at.duration_since(sent()).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_micros(1), "{kind}: {off:?}");
    }
    assert_eq!(
        seen.by_id(ids[0].1).unwrap().headers.get("tenant"),
        Some("acme")
    );
    assert_eq!(
        seen.by_id(ids[1].1)
            .unwrap()
            .headers
            .get(nservicebus::header::MESSAGE_INTENT),
        Some("Publish")
    );
}

#[tokio::test]
async fn masstransit_and_nservicebus_messages_the_bus_sends_read_with_pika() {
    let test = "masstransit_and_nservicebus_messages_the_bus_sends_read_with_pika";
    if !python_or_skip(test).await {
        return;
    }
    let Some(scope) = AmqpScope::new(test).await else {
        return;
    };
    let seen = Seen::default();
    // Built, not started: the endpoint's queue exists and nothing of this bus consumes it.
    let bus = bus_on(Arc::new(scope.transport("dotnet-py-out").await), &seen).await;
    bus.send(ShipOrder {
        order: "o-mt".into(),
    })
    .await
    .unwrap();
    bus.send(PackOrder {
        order: "o-nsb".into(),
    })
    .await
    .unwrap();
    let out = python(&["consume", &scope.url, &scope.naming.queue(ENDPOINT), "2"]).await;
    bus.shutdown().await;
    scope.cleanup().await;
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    let of = |format: &str| {
        lines
            .iter()
            .find(|l| l["format"] == format)
            .unwrap_or_else(|| panic!("{format} in {out}"))
            .clone()
    };
    let mt = of("masstransit");
    assert_eq!(mt["messageType"], serde_json::json!([SHIP_URN]));
    assert_eq!(mt["message"], serde_json::json!({"order": "o-mt"}));
    assert_eq!(mt["conversationId"], mt["messageId"], "a root message");
    assert_eq!(
        mt["destinationAddress"],
        format!("queue:{ENDPOINT}"),
        "{mt}"
    );
    let nsb = of("nservicebus");
    let h = &nsb["headers"];
    assert_eq!(h[nservicebus::header::ENCLOSED_MESSAGE_TYPES], PACK_TYPE);
    assert_eq!(h[nservicebus::header::MESSAGE_INTENT], "Send");
    assert_eq!(nsb["message"], serde_json::json!({"order": "o-nsb"}));
    assert_eq!(
        h[nservicebus::header::CONVERSATION_ID],
        h[nservicebus::header::MESSAGE_ID]
    );
}
