//! Property tests of envelope and header decoding: whatever bytes and header tables arrive,
//! decoding yields a message or a typed error, never a panic or a hang; and through the bus
//! every such message is either handled or moved to the error queue.
//!
//! Cases per property: `PROPTEST_CASES` (256 by default; the full reliability tier raises it).

use std::time::Duration;

use bus_core::{
    decode_any, Bus, Destination, Envelope, HandlerError, Headers, JsonCodec, Outgoing, State,
    Transport,
};
use bus_tests::messages::Work;
use bus_tests::{eventually, Ledger};
use bus_transport_amqp::{decode_amqp_message, encode_amqp_properties};
use bus_transport_memory::MemoryTransport;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use proptest::prelude::*;

fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f64>().prop_map(AMQPValue::Double),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        "[a-z]{0,20}".prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(v.into())),
            proptest::collection::vec(("[a-z-]{1,12}", inner), 0..4).prop_map(|kv| {
                let mut t = FieldTable::default();
                for (k, v) in kv {
                    t.insert(ShortString::from(k), v);
                }
                AMQPValue::FieldTable(t)
            }),
        ]
    })
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    (
        proptest::option::of(".{0,40}"),
        proptest::option::of(prop_oneof![Just("tests.Work".to_string()), ".{0,30}"]),
        proptest::option::of(prop_oneof![Just("application/json".to_string()), ".{0,30}"]),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(("[a-zA-Z0-9-]{1,30}", amqp_value()), 0..6),
    )
        .prop_map(|(id, kind, ct, ts, headers)| {
            let mut p = BasicProperties::default();
            if let Some(id) = id {
                p = p.with_message_id(ShortString::from(id));
            }
            if let Some(k) = kind {
                p = p.with_type(ShortString::from(k));
            }
            if let Some(c) = ct {
                p = p.with_content_type(ShortString::from(c));
            }
            if let Some(t) = ts {
                p = p.with_timestamp(t);
            }
            let mut table = FieldTable::default();
            for (k, v) in headers {
                table.insert(ShortString::from(k), v);
            }
            p.with_headers(table)
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        Just(br#"{"n": 1, "fail_first": 0}"#.to_vec()),
        Just(b"[]".to_vec()),
        Just(Vec::new()),
        "\\PC{0,64}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #[test]
    fn amqp_messages_always_decode_to_an_envelope(props in properties(), data in body()) {
        let envelope = decode_amqp_message(&props, data.clone());
        match &envelope.body {
            bus_core::Body::Bytes(b) => prop_assert_eq!(b.as_ref(), data.as_slice()),
            other => prop_assert!(false, "bytes expected, got {:?}", other),
        }
        // Re-encoding what was decoded either works or is a typed error.
        let _ = encode_amqp_properties(&envelope.headers);
    }

    #[test]
    fn any_body_and_type_decode_to_a_message_or_a_typed_error(name in ".{0,40}", data in body()) {
        let _ = decode_any(&JsonCodec, &name, &data);
        let _ = decode_any(&JsonCodec, "tests.Work", &data);
    }
}

async fn handle(cmd: Work, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    ledger.record(cmd.n.to_string(), "fuzz");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32), ..ProptestConfig::default() })]

    /// Through the whole runtime: every message is handled or moved to the error queue; none
    /// is lost, none stalls the consumer.
    #[test]
    fn every_arbitrary_message_is_handled_or_dead_lettered(batch in proptest::collection::vec((properties(), body()), 1..12)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let transport = MemoryTransport::new().serialize(true);
            let ledger = Ledger::new();
            let bus = Bus::builder()
                .transport(transport.clone())
                .without_discovery()
                .handler("fuzz", handle)
                .route::<Work>("fuzz")
                .state(ledger.clone())
                .endpoint("fuzz", |e| e.immediate_retries(0).delayed_retries(0, Duration::ZERO))
                .start()
                .await
                .unwrap();
            let n = batch.len();
            for (props, data) in batch {
                let envelope: Envelope = decode_amqp_message(&props, data);
                let headers: Headers = (*envelope.headers).clone();
                transport
                    .send(Outgoing { destination: Destination::Endpoint("fuzz".into()), envelope: Envelope::from_bytes(headers, match envelope.body { bus_core::Body::Bytes(b) => b, _ => unreachable!() }), delay: None, deliver_at: None })
                    .await
                    .unwrap();
            }
            let settled = eventually(Duration::from_secs(10), || {
                let s = bus.stats();
                (s.handled + s.dead_lettered) as usize == n
            })
            .await;
            bus.shutdown().await;
            assert!(settled, "every message settled: {:?} of {n}", bus.stats());
            assert_eq!(transport.error_queue("fuzz").len() as u64, bus.stats().dead_lettered);
        });
    }
}
