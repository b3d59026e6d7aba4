//! CloudEvents 1.0 interop: the mapping between bus messages and CloudEvents in binary and
//! structured content mode, both ways; end to end on the in-memory transport (serializing),
//! RabbitMQ, NATS and Redis; and, over RabbitMQ, with the CloudEvents Python SDK and pika as
//! the producer and as the consumer.
//!
//! Spec sections cited are those of CloudEvents 1.0 (`spec.md`), its JSON event format
//! (`json-format.md`) and its AMQP protocol binding (`amqp-protocol-binding.md`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_core::cloudevents::{self, Binding, CloudEventsError};
use bus_core::{
    header, Body, Bus, Codecs, Command, Destination, Envelope, Event, HandlerError, Headers,
    MessageContext, Outgoing, QueueKind, SendOptions, State, Transport,
};
use bus_tests::broker::AmqpScope;
use bus_tests::eventually;
use bus_tests::nats_broker::NatsScope;
use bus_tests::redis_broker::RedisScope;
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

/// What a producer outside the bus publishes: its CloudEvents `type` is the wire name.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "com.example.order.placed")]
struct OrderPlaced {
    order: String,
    amount: u32,
}

/// Sent by the bus as a binary CloudEvent.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "com.example.order.ship")]
struct ShipOrder {
    order: String,
}

/// Sent by the bus as a structured CloudEvent.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "com.example.order.pack")]
struct PackOrder {
    order: String,
}

/// What a handler saw: the message type, its JSON body, and its headers.
#[derive(Clone, Debug)]
struct Handled {
    message_type: String,
    body: serde_json::Value,
    headers: Headers,
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Handled>>>);

impl Seen {
    fn push(&self, ctx: &MessageContext, body: serde_json::Value) {
        self.0.lock().unwrap().push(Handled {
            message_type: ctx.headers().message_type.to_string(),
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

    fn by_type(&self, message_type: &str) -> Option<Handled> {
        let all = self.0.lock().unwrap();
        all.iter().find(|h| h.message_type == message_type).cloned()
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

const TIME: &str = "2026-01-02T03:04:05.123456789Z";

fn time() -> SystemTime {
    UNIX_EPOCH + Duration::new(1_767_323_045, 123_456_789)
}

fn custom(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A CloudEvent in binary mode as a producer outside the bus writes it: only attributes
/// under `prefix`, no bus header of its own.
fn foreign_binary(prefix: &str, id: &str, attributes: &[(&str, &str)]) -> Envelope {
    let mut headers = Headers::default();
    let mut pairs = vec![
        ("specversion", "1.0"),
        ("id", id),
        ("source", "urn:other:shop"),
        ("type", "com.example.order.placed"),
        ("time", TIME),
    ];
    pairs.extend_from_slice(attributes);
    for (name, value) in pairs {
        headers
            .custom
            .insert(format!("{prefix}{name}"), value.into());
    }
    Envelope::from_bytes(headers, r#"{"order":"o-1","amount":7}"#)
}

fn bytes_of(envelope: &Envelope) -> &[u8] {
    match &envelope.body {
        Body::Bytes(b) => b,
        Body::Message(_) => panic!("a typed body"),
    }
}

// ---------------------------------------------------------------------------------------
// The mapping, as pure functions.
// ---------------------------------------------------------------------------------------

#[test]
fn binary_attributes_under_every_binding_prefix_read_as_a_bus_message() {
    for prefix in ["cloudEvents_", "cloudEvents:", "ce_", "ce-", "CE-"] {
        let envelope = foreign_binary(
            prefix,
            "ev-1",
            &[("subject", "order-1"), ("tenant", "acme")],
        );
        let read = cloudevents::read(&envelope)
            .unwrap()
            .unwrap_or_else(|| panic!("{prefix}: not read as a CloudEvent"));
        let h = &read.headers;
        assert_eq!(h.message_id, "ev-1", "{prefix}");
        assert_eq!(h.message_type, "com.example.order.placed", "{prefix}");
        // Spec 3.1.1: without `datacontenttype`, JSON is assumed by the bus.
        assert_eq!(h.content_type, "application/json", "{prefix}");
        assert_eq!(h.sent_at, Some(time()), "{prefix}");
        assert_eq!(
            h.get(cloudevents::header::SOURCE),
            Some("urn:other:shop"),
            "{prefix}"
        );
        assert_eq!(h.get(cloudevents::header::SPECVERSION), Some("1.0"));
        assert_eq!(h.get(cloudevents::header::SUBJECT), Some("order-1"));
        assert_eq!(h.get("bus-ce-tenant"), Some("acme"), "extension kept");
        assert!(
            h.custom.keys().all(|k| k.starts_with("bus-ce-")),
            "{prefix}: the binding's headers are replaced: {:?}",
            h.custom
        );
        assert_eq!(bytes_of(&read), bytes_of(&envelope), "the body as it is");
    }
}

#[test]
fn binary_values_under_the_http_prefix_are_percent_decoded_and_the_native_content_type_wins() {
    let mut envelope = foreign_binary("ce-", "ev-2", &[("subject", "caf%C3%A9%20au%20lait")]);
    let mut headers = (*envelope.headers).clone();
    headers.content_type = "application/json".into();
    headers
        .custom
        .insert("ce-datacontenttype".into(), "text/plain".into());
    envelope.headers = Arc::new(headers);
    let read = cloudevents::read(&envelope).unwrap().unwrap();
    assert_eq!(read.headers.get("bus-ce-subject"), Some("café au lait"));
    assert_eq!(read.headers.content_type, "application/json");
}

#[test]
fn a_bus_message_without_cloudevents_headers_is_left_alone() {
    let plain = Envelope::from_bytes(
        Headers {
            message_id: "m-1".into(),
            message_type: "t.Plain".into(),
            content_type: "application/json".into(),
            custom: custom(&[(header::CAUSATION_ID, "m-0"), ("traceparent", "00-x")]),
            ..Headers::default()
        },
        "{}",
    );
    assert!(cloudevents::read(&plain).unwrap().is_none());
    // An application header that merely looks like an attribute, on a complete bus message.
    let mut headers = (*plain.headers).clone();
    headers.custom.insert("ce-note".into(), "mine".into());
    let own = Envelope::from_bytes(headers, "{}");
    assert!(cloudevents::read(&own).unwrap().is_none());
}

#[test]
fn structured_json_data_and_base64_data_read_as_a_bus_message() {
    let json = r#"{"specversion":"1.0","id":"ev-3","source":"urn:other:shop",
        "type":"com.example.order.placed","time":"2026-01-02T05:04:05.123456789+02:00",
        "subject":"order-3","tenant":"acme","traceflag":true,"count":3,"dataschema":null,
        "data":{"order":"o-3","amount":7}}"#;
    let envelope = Envelope::from_bytes(
        Headers {
            content_type: cloudevents::STRUCTURED_CONTENT_TYPE.into(),
            ..Headers::default()
        },
        json,
    );
    let read = cloudevents::read(&envelope).unwrap().unwrap();
    let h = &read.headers;
    assert_eq!(h.message_id, "ev-3");
    assert_eq!(h.message_type, "com.example.order.placed");
    assert_eq!(
        h.content_type, "application/json",
        "JSON format 3.1 default"
    );
    assert_eq!(h.sent_at, Some(time()), "an offset is honoured");
    assert_eq!(h.get("bus-ce-subject"), Some("order-3"));
    assert_eq!(h.get("bus-ce-tenant"), Some("acme"));
    assert_eq!(h.get("bus-ce-traceflag"), Some("true"));
    assert_eq!(h.get("bus-ce-count"), Some("3"));
    assert_eq!(h.get("bus-ce-dataschema"), None, "null is absent");
    let body: serde_json::Value = serde_json::from_slice(bytes_of(&read)).unwrap();
    assert_eq!(body, serde_json::json!({"order": "o-3", "amount": 7}));

    // JSON format 3.1: binary data travels as `data_base64`.
    let b64 = r#"{"specversion":"1.0","id":"ev-4","source":"s","type":"t.Bin",
        "datacontenttype":"application/octet-stream","data_base64":"AAEC/w=="}"#;
    let envelope = Envelope::from_bytes(
        Headers {
            content_type: "application/cloudevents+json; charset=utf-8".into(),
            ..Headers::default()
        },
        b64,
    );
    let read = cloudevents::read(&envelope).unwrap().unwrap();
    assert_eq!(read.headers.content_type, "application/octet-stream");
    assert_eq!(bytes_of(&read), &[0u8, 1, 2, 255][..]);
}

#[test]
fn missing_or_wrong_attributes_are_errors_that_name_the_attribute() {
    for missing in ["id", "source", "type"] {
        let mut envelope = foreign_binary("ce-", "ev-5", &[]);
        let mut headers = (*envelope.headers).clone();
        headers.custom.remove(&format!("ce-{missing}"));
        envelope.headers = Arc::new(headers);
        match cloudevents::read(&envelope) {
            Err(e @ CloudEventsError::MissingAttribute { attribute, .. }) => {
                assert_eq!(attribute, missing);
                assert!(e.to_string().contains(&format!("`{missing}`")), "{e}");
            }
            other => panic!("{missing}: {other:?}"),
        }
    }
    let headers = Headers {
        custom: custom(&[("ce-id", "x"), ("ce-type", "t")]),
        ..Headers::default()
    };
    let no_version = Envelope::from_bytes(headers, "{}");
    assert!(matches!(
        cloudevents::read(&no_version),
        Err(CloudEventsError::MissingAttribute {
            attribute: "specversion",
            ..
        })
    ));
    let mut old = foreign_binary("ce-", "ev-6", &[]);
    let mut headers = (*old.headers).clone();
    headers.custom.insert("ce-specversion".into(), "0.3".into());
    old.headers = Arc::new(headers);
    let e = cloudevents::read(&old).unwrap_err();
    assert!(e.to_string().contains("`0.3`"), "{e}");
    let bad_time = foreign_binary("ce_", "ev-7", &[("time", "yesterday")]);
    let e = cloudevents::read(&bad_time).unwrap_err();
    assert!(e.to_string().contains("`time`"), "{e}");
    let not_json = Envelope::from_bytes(
        Headers {
            content_type: cloudevents::STRUCTURED_CONTENT_TYPE.into(),
            ..Headers::default()
        },
        "not json",
    );
    let e = cloudevents::read(&not_json).unwrap_err();
    assert!(e.to_string().contains("not a JSON object"), "{e}");
}

fn bus_headers() -> Headers {
    Headers {
        message_id: "m-8".into(),
        message_type: "com.example.order.ship".into(),
        content_type: "application/json".into(),
        correlation_id: Some("c-8".into()),
        sent_at: Some(time()),
        custom: custom(&[("bus-ce-subject", "order 8"), (header::CAUSATION_ID, "m-7")]),
    }
}

#[test]
fn binary_writing_names_attributes_for_the_transport_and_keeps_the_bus_headers() {
    let config = bus_core::CloudEvents::binary()
        .source("urn:shop:sales")
        .extension("tenant", "acme");
    let codecs = Codecs::default();
    let body = Body::Bytes(r#"{"order":"o-8"}"#.into());

    let (amqp, _) =
        cloudevents::write(&config, Binding::Amqp, bus_headers(), body.clone(), &codecs).unwrap();
    // AMQP binding 3.1.3: `cloudEvents_` application properties; 3.1.1: the content type is
    // the native property, not an application property.
    assert_eq!(
        amqp.custom,
        custom(&[
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_id", "m-8"),
            ("cloudEvents_source", "urn:shop:sales"),
            ("cloudEvents_type", "com.example.order.ship"),
            ("cloudEvents_time", TIME),
            ("cloudEvents_subject", "order 8"),
            ("cloudEvents_tenant", "acme"),
            (header::CAUSATION_ID, "m-7"),
        ])
    );
    assert_eq!(amqp.message_id, "m-8");
    assert_eq!(amqp.correlation_id.as_deref(), Some("c-8"));

    let (http, _) =
        cloudevents::write(&config, Binding::Http, bus_headers(), body.clone(), &codecs).unwrap();
    assert_eq!(http.get("ce-subject"), Some("order%208"), "percent-encoded");
    assert_eq!(http.get("ce-datacontenttype"), Some("application/json"));

    // And back: what the bus writes, the bus reads as the same message.
    for headers in [amqp, http] {
        let read = cloudevents::read(&Envelope {
            headers: Arc::new(headers),
            body: body.clone(),
        })
        .unwrap()
        .unwrap();
        let h = &read.headers;
        assert_eq!(h.message_id, "m-8");
        assert_eq!(h.message_type, "com.example.order.ship");
        assert_eq!(h.sent_at, Some(time()));
        assert_eq!(h.correlation_id.as_deref(), Some("c-8"));
        assert_eq!(h.get("bus-ce-subject"), Some("order 8"));
        assert_eq!(h.get("bus-ce-source"), Some("urn:shop:sales"));
        assert_eq!(h.get(header::CAUSATION_ID), Some("m-7"));
    }
}

#[test]
fn structured_writing_wraps_the_body_and_reads_back_as_the_same_message() {
    let config = bus_core::CloudEvents::structured().source("urn:shop:sales");
    let codecs = Codecs::default();
    let body = Body::Bytes(r#"{"order":"o-9"}"#.into());
    let (headers, wrapped) =
        cloudevents::write(&config, Binding::Http, bus_headers(), body, &codecs).unwrap();
    assert_eq!(headers.content_type, cloudevents::STRUCTURED_CONTENT_TYPE);
    assert_eq!(headers.message_id, "m-8", "the bus headers stay");
    let Body::Bytes(bytes) = &wrapped else {
        panic!("bytes")
    };
    let json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    // JSON format 3: the attributes as members, JSON data as a value of its own.
    assert_eq!(
        json,
        serde_json::json!({
            "specversion": "1.0", "id": "m-8", "source": "urn:shop:sales",
            "type": "com.example.order.ship", "time": TIME, "subject": "order 8",
            "datacontenttype": "application/json", "data": {"order": "o-9"}
        })
    );
    let read = cloudevents::read(&Envelope {
        headers: Arc::new(headers),
        body: wrapped,
    })
    .unwrap()
    .unwrap();
    assert_eq!(read.headers.content_type, "application/json");
    assert_eq!(bytes_of(&read), br#"{"order":"o-9"}"#);
    assert_eq!(read.headers.get("bus-ce-subject"), Some("order 8"));

    // Data that is not JSON goes as `data_base64`.
    let mut headers = bus_headers();
    headers.content_type = "application/msgpack".into();
    let (_, wrapped) = cloudevents::write(
        &config,
        Binding::Amqp,
        headers,
        Body::Bytes(vec![0x81, 0xa1].into()),
        &codecs,
    )
    .unwrap();
    let Body::Bytes(bytes) = &wrapped else {
        panic!("bytes")
    };
    let json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(json["data_base64"], "gaE=");
    assert_eq!(json["datacontenttype"], "application/msgpack");
}

#[test]
fn an_extension_name_cloudevents_does_not_allow_is_an_error_on_writing() {
    let config = bus_core::CloudEvents::binary().extension("Bad-Name", "x");
    let e = cloudevents::write(
        &config,
        Binding::Http,
        bus_headers(),
        Body::Bytes("{}".into()),
        &Codecs::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("`Bad-Name`"), "{e}");
}

// ---------------------------------------------------------------------------------------
// End to end, on each transport.
// ---------------------------------------------------------------------------------------

const ENDPOINT: &str = "ce-orders";

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
        .cloudevents(bus_core::CloudEvents::binary().source("urn:test:sales"))
        .cloudevents_for::<PackOrder>(bus_core::CloudEvents::structured().source("urn:test:pack"))
        .build()
        .await
        .expect("build")
}

/// Send a binary and a structured CloudEvent through the bus, look at them on the broker
/// under the transport's binding, inject a foreign binary CloudEvent (prefix `foreign`) and
/// one without `source`, then let the endpoint handle them all.
async fn round_trip(transport: Arc<dyn Transport>, prefix: &str, foreign: &str) {
    let seen = Seen::default();
    let bus = bus_on(transport.clone(), &seen).await;
    bus.send_with(
        ShipOrder {
            order: "o-1".into(),
        },
        SendOptions::new()
            .message_id("ship-1")
            .header(cloudevents::header::SUBJECT, "order-1"),
    )
    .await
    .expect("send binary");
    bus.send_with(
        PackOrder {
            order: "o-2".into(),
        },
        SendOptions::new().message_id("pack-1"),
    )
    .await
    .expect("send structured");

    // What the broker holds, as any consumer would read it.
    let mut stored = Vec::new();
    for _ in 0..50 {
        stored = transport
            .browse(ENDPOINT, QueueKind::Input, 10)
            .await
            .expect("browse");
        if stored.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let binary = stored
        .iter()
        .find(|e| e.headers.message_id == "ship-1")
        .expect("the binary one is stored");
    let h = &binary.headers;
    assert_eq!(h.get(&format!("{prefix}specversion")), Some("1.0"));
    assert_eq!(h.get(&format!("{prefix}id")), Some("ship-1"));
    assert_eq!(h.get(&format!("{prefix}source")), Some("urn:test:sales"));
    assert_eq!(
        h.get(&format!("{prefix}type")),
        Some("com.example.order.ship")
    );
    assert_eq!(h.get(&format!("{prefix}subject")), Some("order-1"));
    assert!(h.get(&format!("{prefix}time")).is_some());
    let structured = stored
        .iter()
        .find(|e| e.headers.message_id == "pack-1")
        .expect("the structured one is stored");
    assert_eq!(
        structured.headers.content_type,
        cloudevents::STRUCTURED_CONTENT_TYPE
    );
    let json: serde_json::Value = serde_json::from_slice(bytes_of(structured)).unwrap();
    assert_eq!(json["source"], "urn:test:pack");
    assert_eq!(json["data"], serde_json::json!({"order": "o-2"}));

    let to = || Destination::Endpoint(Arc::from(ENDPOINT));
    let event = foreign_binary(foreign, "foreign-1", &[("tenant", "acme")]);
    transport
        .send(Outgoing::new(to(), event))
        .await
        .expect("inject foreign");
    let mut sourceless = foreign_binary(foreign, "foreign-2", &[]);
    let mut headers = (*sourceless.headers).clone();
    headers.custom.remove(&format!("{foreign}source"));
    sourceless.headers = Arc::new(headers);
    transport
        .send(Outgoing::new(to(), sourceless))
        .await
        .expect("inject sourceless");

    bus.start().await.expect("start");
    let handled = eventually(Duration::from_secs(20), || seen.len() >= 3).await;
    let mut failed = Vec::new();
    for _ in 0..100 {
        failed = bus.failed_messages(ENDPOINT, 10).await.expect("errors");
        if !failed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bus.shutdown().await;
    assert!(handled, "handled only {} of 3", seen.len());

    let ship = seen.by_id("ship-1").expect("binary handled");
    assert_eq!(ship.body, serde_json::json!({"order": "o-1"}));
    assert_eq!(ship.headers.get("bus-ce-source"), Some("urn:test:sales"));
    assert_eq!(ship.headers.get("bus-ce-subject"), Some("order-1"));
    let pack = seen.by_id("pack-1").expect("structured handled");
    assert_eq!(pack.body, serde_json::json!({"order": "o-2"}));
    assert_eq!(pack.headers.content_type, "application/json");
    assert_eq!(pack.headers.get("bus-ce-source"), Some("urn:test:pack"));
    let placed = seen.by_id("foreign-1").expect("foreign handled");
    assert_eq!(placed.message_type, "com.example.order.placed");
    assert_eq!(
        placed.body,
        serde_json::json!({"order": "o-1", "amount": 7})
    );
    assert_eq!(placed.headers.sent_at, Some(time()));
    assert_eq!(placed.headers.get("bus-ce-source"), Some("urn:other:shop"));
    assert_eq!(placed.headers.get("bus-ce-tenant"), Some("acme"));
    assert!(seen.by_id("foreign-2").is_none());

    assert_eq!(failed.len(), 1, "{failed:?}");
    let entry = failed[0].envelope();
    assert_eq!(
        entry.headers.get(header::FAILURE_REASON),
        Some("missing-header")
    );
    let error = entry.headers.get(header::FAILURE_ERROR).unwrap_or_default();
    assert!(error.contains("`source`"), "{error}");
    assert_eq!(
        entry.headers.get(&format!("{foreign}id")),
        Some("foreign-2"),
        "the error queue keeps the message as it arrived"
    );
}

#[tokio::test]
async fn cloudevents_round_trip_on_memory_serializing() {
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new().serialize(true));
    round_trip(transport, "ce-", "ce_").await;
}

#[tokio::test]
async fn cloudevents_round_trip_on_rabbitmq() {
    let Some(scope) = AmqpScope::new("cloudevents_round_trip_on_rabbitmq").await else {
        return;
    };
    let transport: Arc<dyn Transport> = Arc::new(scope.transport("ce-amqp").await);
    round_trip(transport, "cloudEvents_", "cloudEvents:").await;
    scope.cleanup().await;
}

#[tokio::test]
async fn cloudevents_round_trip_on_nats() {
    let Some(scope) = NatsScope::new("cloudevents_round_trip_on_nats").await else {
        return;
    };
    let transport: Arc<dyn Transport> = Arc::new(scope.transport("ce-nats").await);
    round_trip(transport, "ce-", "ce-").await;
    scope.cleanup().await;
}

#[tokio::test]
async fn cloudevents_round_trip_on_redis() {
    let Some(scope) = RedisScope::new("cloudevents_round_trip_on_redis").await else {
        return;
    };
    let transport: Arc<dyn Transport> = Arc::new(scope.transport("ce-redis").await);
    round_trip(transport, "ce-", "ce_").await;
    scope.cleanup().await;
}

#[tokio::test]
async fn a_typed_in_process_bus_sends_and_reads_cloudevents_too() {
    let seen = Seen::default();
    let bus = bus_on(Arc::new(MemoryTransport::new()), &seen).await;
    bus.start().await.unwrap();
    bus.send(ShipOrder {
        order: "o-t".into(),
    })
    .await
    .unwrap();
    bus.send(PackOrder {
        order: "o-p".into(),
    })
    .await
    .unwrap();
    let done = eventually(Duration::from_secs(10), || seen.len() >= 2).await;
    bus.shutdown().await;
    assert!(done, "handled {}", seen.len());
    let pack = seen.by_type("com.example.order.pack").unwrap();
    assert_eq!(pack.body, serde_json::json!({"order": "o-p"}));
    assert_eq!(pack.headers.get("bus-ce-source"), Some("urn:test:pack"));
}

// ---------------------------------------------------------------------------------------
// With the CloudEvents Python SDK and pika, over RabbitMQ.
// ---------------------------------------------------------------------------------------

async fn python_or_skip(test: &str) -> bool {
    bus_tests::python::python_or_skip(
        test,
        "cloudevents.core.bindings.amqp, pika",
        "pip install 'cloudevents>=2.0' pika",
    )
    .await
}

async fn python(args: &[&str]) -> String {
    bus_tests::python::run_script("ce_amqp.py", args).await
}

#[tokio::test]
async fn cloudevents_from_the_python_sdk_over_rabbitmq_reach_a_rust_handler() {
    let test = "cloudevents_from_the_python_sdk_over_rabbitmq_reach_a_rust_handler";
    if !python_or_skip(test).await {
        return;
    }
    let Some(scope) = AmqpScope::new(test).await else {
        return;
    };
    let seen = Seen::default();
    let bus = Bus::builder()
        .transport(scope.transport("ce-py-in").await)
        .without_discovery()
        .handler("ce-py-in", on_placed)
        .state(seen.clone())
        .start()
        .await
        .expect("start");
    let queue = scope.naming.queue("ce-py-in");
    for (mode, id) in [("binary", "py-bin-1"), ("structured", "py-str-1")] {
        python(&[
            "produce",
            &scope.url,
            &queue,
            mode,
            id,
            "com.example.order.placed",
            TIME,
        ])
        .await;
    }
    let done = eventually(Duration::from_secs(20), || seen.len() >= 2).await;
    let failed = bus.failed_messages("ce-py-in", 10).await.unwrap();
    bus.shutdown().await;
    scope.cleanup().await;
    assert!(done, "handled {} of 2; error queue: {failed:?}", seen.len());
    for (mode, id) in [("binary", "py-bin-1"), ("structured", "py-str-1")] {
        let h = seen
            .by_id(id)
            .unwrap_or_else(|| panic!("{mode} not handled"));
        assert_eq!(h.message_type, "com.example.order.placed", "{mode}");
        assert_eq!(
            h.body,
            serde_json::json!({"order": format!("py-{mode}"), "amount": 42}),
            "{mode}"
        );
        assert_eq!(h.headers.get("bus-ce-source"), Some("urn:python:shop"));
        assert_eq!(h.headers.get("bus-ce-subject"), Some("order-7"));
        assert_eq!(h.headers.get("bus-ce-tenant"), Some("acme"), "{mode}");
        assert_eq!(h.headers.get("bus-ce-specversion"), Some("1.0"));
        let sent = h.headers.sent_at.expect("time");
        // The SDK's AMQP binding writes `time` in binary mode as an AMQP timestamp in
        // milliseconds (AMQP binding 3.1.3.2); structured mode keeps microseconds.
        let off = sent.duration_since(time()).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_millis(1), "{mode}: {off:?}");
    }
}

#[tokio::test]
async fn cloudevents_the_bus_sends_over_rabbitmq_parse_with_the_python_sdk() {
    let test = "cloudevents_the_bus_sends_over_rabbitmq_parse_with_the_python_sdk";
    if !python_or_skip(test).await {
        return;
    }
    let Some(scope) = AmqpScope::new(test).await else {
        return;
    };
    let seen = Seen::default();
    // Built, not started: the endpoint's queue exists and nothing of this bus consumes it.
    let bus = bus_on(Arc::new(scope.transport("ce-py-out").await), &seen).await;
    bus.send_with(
        ShipOrder {
            order: "o-b".into(),
        },
        SendOptions::new()
            .message_id("rust-bin-1")
            .header(cloudevents::header::SUBJECT, "order-b"),
    )
    .await
    .unwrap();
    bus.send_with(
        PackOrder {
            order: "o-s".into(),
        },
        SendOptions::new().message_id("rust-str-1"),
    )
    .await
    .unwrap();
    let out = python(&["consume", &scope.url, &scope.naming.queue(ENDPOINT), "2"]).await;
    bus.shutdown().await;
    scope.cleanup().await;

    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["attributes"]["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {out}"))
            .clone()
    };

    let binary = by_id("rust-bin-1");
    let a = &binary["attributes"];
    // spec 3.1: the REQUIRED attributes id, source, specversion, type.
    assert_eq!(a["specversion"], "1.0");
    assert_eq!(a["source"], "urn:test:sales");
    assert_eq!(a["type"], "com.example.order.ship");
    // spec 3.1.1 (OPTIONAL): subject, time as RFC 3339, datacontenttype per RFC 2046.
    assert_eq!(a["subject"], "order-b");
    assert!(
        a["time"].as_str().is_some_and(|t| t.starts_with("20")),
        "{a}"
    );
    // AMQP binding 3.1.1: `datacontenttype` is the message's content-type property.
    assert_eq!(a["datacontenttype"], "application/json");
    assert_eq!(binary["content_type"], "application/json");
    assert_eq!(binary["data"], serde_json::json!({"order": "o-b"}));
    // AMQP binding 3.1.3.1: attributes are application properties `cloudEvents_<name>`,
    // next to the bus's own headers.
    let props: Vec<&str> = binary["application_properties"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for name in ["id", "source", "specversion", "type", "time", "subject"] {
        assert!(
            props.contains(&format!("cloudEvents_{name}").as_str()),
            "{name}: {props:?}"
        );
    }

    let structured = by_id("rust-str-1");
    let a = &structured["attributes"];
    assert_eq!(a["specversion"], "1.0");
    assert_eq!(a["source"], "urn:test:pack");
    assert_eq!(a["type"], "com.example.order.pack");
    assert_eq!(a["datacontenttype"], "application/json");
    assert!(a["time"].as_str().is_some(), "{a}");
    // AMQP binding 3.2: structured mode is the event format's media type on content-type;
    // JSON format 3.1: JSON data is the `data` member as it is.
    assert_eq!(
        structured["content_type"],
        cloudevents::STRUCTURED_CONTENT_TYPE
    );
    assert_eq!(structured["data"], serde_json::json!({"order": "o-s"}));
}
