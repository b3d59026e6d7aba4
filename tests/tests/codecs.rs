//! The MessagePack and CBOR codecs: every serde shape the messages use survives a round trip,
//! structs are maps keyed by field name, a body that is not one valid value is a typed
//! `CodecError::Decode` and never a panic, and a bus with either as its default codec sends
//! and handles messages as bytes, through the in-memory transport and through RabbitMQ, beside
//! senders that still speak JSON. MessagePack written by Python's `msgpack` package reads back.
//!
//! The RabbitMQ test skips with a printed reason when the broker is unreachable, and the
//! Python ones when python3 or its `msgpack` package is missing; with `BUS_REQUIRE_BROKERS=1`
//! they fail instead.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use bus_core::{
    decode, decode_any, header, Body, Bus, CborCodec, Codec, CodecError, Command, Event,
    HandlerError, JsonCodec, MessageContext, MessagePackCodec, State, CBOR, JSON, MSGPACK,
};
use bus_examples::fulfilment::Fulfilment;
use bus_examples::messages::{
    CancelOrder, GetOrderStatus, InvoiceCreated, OrderPlaced, OrderShipped, OrderStatus,
    PaymentOverdue, PaymentReceived, PlaceOrder, RemindDelivery, ShipOrder,
};
use bus_tests::broker::{brokers_required, AmqpScope};
use bus_tests::{eventually, then_clean, Ledger};
use bus_transport_memory::MemoryTransport;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

// ---- the shapes ----------------------------------------------------------------------------

/// Every serde shape a message is made of, each at least once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Shapes {
    small: u8,
    count: u32,
    largest: u64,
    negative: i32,
    smallest: i64,
    ratio: f64,
    flag: bool,
    letter: char,
    name: String,
    empty: String,
    unicode: String,
    present: Option<u32>,
    absent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    id: OrderId,
    address: Address,
    maybe_address: Option<Address>,
    lines: Vec<Line>,
    no_lines: Vec<Line>,
    quantities: BTreeMap<String, u32>,
    pair: (u16, String),
    status: Status,
    payment: Payment,
    refund: Payment,
    split: Payment,
    pending: Payment,
    kind: Kind,
    extras: Extras,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
struct OrderId(u32);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Address {
    street: String,
    city: String,
    zip: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Line {
    sku: String,
    quantity: u32,
    unit_price_cents: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
enum Status {
    Accepted,
    Cancelled,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum Payment {
    Card { last4: String, amount_cents: u64 },
    Voucher(String),
    Split(u32, u32),
    Pending,
}

/// Internally tagged: decoded through serde's buffered `deserialize_any` path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Kind {
    Gift { message: String },
    Standard,
}

/// Flattened: serialized as a map of unknown length, decoded through the buffered path too.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Extras {
    id: u32,
    #[serde(flatten)]
    rest: BTreeMap<String, String>,
}

fn shapes() -> Shapes {
    let address = Address {
        street: "1 Infinite Loop".into(),
        city: "Cupertino".into(),
        zip: None,
    };
    Shapes {
        small: 255,
        count: 3_000_000_000,
        largest: u64::MAX,
        negative: -42,
        smallest: i64::MIN,
        ratio: 0.25,
        flag: true,
        letter: 'é',
        name: "ada".into(),
        empty: String::new(),
        unicode: "Grüße, 世界 🚀".into(),
        present: Some(7),
        absent: None,
        note: None,
        id: OrderId(1001),
        address: address.clone(),
        maybe_address: Some(Address {
            zip: Some("95014".into()),
            ..address
        }),
        lines: vec![
            Line {
                sku: "keyboard".into(),
                quantity: 1,
                unit_price_cents: 4900,
            },
            Line {
                sku: "mouse".into(),
                quantity: 2,
                unit_price_cents: 1999,
            },
        ],
        no_lines: Vec::new(),
        quantities: [("keyboard".to_string(), 1), ("mouse".to_string(), 2)].into(),
        pair: (7, "seven".into()),
        status: Status::Accepted,
        payment: Payment::Card {
            last4: "4242".into(),
            amount_cents: 8898,
        },
        refund: Payment::Voucher("SPRING".into()),
        split: Payment::Split(50, 50),
        pending: Payment::Pending,
        kind: Kind::Gift {
            message: "enjoy".into(),
        },
        extras: Extras {
            id: 9,
            rest: [
                ("colour".to_string(), "red".to_string()),
                ("size".to_string(), "L".to_string()),
            ]
            .into(),
        },
    }
}

/// `shapes()` as a Python literal, for the interop tests.
const SHAPES_PY: &str = r#"{
    "small": 255, "count": 3000000000, "largest": 2**64 - 1, "negative": -42,
    "smallest": -2**63, "ratio": 0.25, "flag": True, "letter": "é", "name": "ada",
    "empty": "", "unicode": "Grüße, 世界 🚀", "present": 7, "absent": None, "id": 1001,
    "address": {"street": "1 Infinite Loop", "city": "Cupertino", "zip": None},
    "maybe_address": {"street": "1 Infinite Loop", "city": "Cupertino", "zip": "95014"},
    "lines": [{"sku": "keyboard", "quantity": 1, "unit_price_cents": 4900},
              {"sku": "mouse", "quantity": 2, "unit_price_cents": 1999}],
    "no_lines": [], "quantities": {"keyboard": 1, "mouse": 2}, "pair": [7, "seven"],
    "status": "Accepted", "payment": {"Card": {"last4": "4242", "amount_cents": 8898}},
    "refund": {"Voucher": "SPRING"}, "split": {"Split": [50, 50]}, "pending": "Pending",
    "kind": {"type": "gift", "message": "enjoy"},
    "extras": {"id": 9, "colour": "red", "size": "L"},
}"#;

// ---- the messages the buses carry ----------------------------------------------------------

#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.codecs.Order", endpoint = "t-codecs-orders")]
struct Order {
    n: u32,
    shapes: Shapes,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "t.codecs.Ordered")]
struct Ordered {
    n: u32,
    shapes: Shapes,
}

#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.codecs.AskOrder", endpoint = "t-codecs-orders", response = OrderAnswer)]
struct AskOrder {
    n: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct OrderAnswer {
    n: u32,
    shapes: Shapes,
}

/// Records each order under the content type it arrived in, and publishes `Ordered`.
#[bus_core::handler]
async fn take_order(
    cmd: Order,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    if cmd.shapes != shapes() {
        return Err(HandlerError::new(format!(
            "order {} arrived changed: {:?}",
            cmd.n, cmd.shapes
        )));
    }
    ledger.record(cmd.n.to_string(), &ctx.headers().content_type);
    ctx.publish(Ordered {
        n: cmd.n,
        shapes: cmd.shapes,
    })
    .await?;
    Ok(())
}

#[bus_core::handler(endpoint = "t-codecs-audit")]
async fn audit_ordered(
    evt: Ordered,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    if evt.shapes != shapes() {
        return Err(HandlerError::new(format!(
            "event {} arrived changed",
            evt.n
        )));
    }
    ledger.note(format!("event {} {}", evt.n, ctx.headers().content_type));
    Ok(())
}

#[bus_core::handler]
async fn answer_order(query: AskOrder) -> Result<OrderAnswer, HandlerError> {
    Ok(OrderAnswer {
        n: query.n,
        shapes: shapes(),
    })
}

fn order(n: u32) -> Order {
    Order {
        n,
        shapes: shapes(),
    }
}

// ---- helpers -------------------------------------------------------------------------------

/// The codecs under test, named for assertion messages.
fn binary_codecs() -> [(&'static str, &'static dyn Codec); 2] {
    [("msgpack", &MessagePackCodec), ("cbor", &CborCodec)]
}

fn round_trip<T>(name: &str, codec: &dyn Codec, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let body = codec
        .encode(value)
        .unwrap_or_else(|e| panic!("{name}: encode {value:?}: {e}"));
    let back: T = decode(codec, &body).unwrap_or_else(|e| panic!("{name}: decode {value:?}: {e}"));
    assert_eq!(&back, value, "{name}: the value changed on the way");
}

/// Whether `result` is a value or a typed decode error; anything else fails the test.
fn is_decode_error<T>(name: &str, body: &[u8], result: Result<T, CodecError>) -> bool {
    match result {
        Ok(_) => false,
        Err(CodecError::Decode(_)) => true,
        Err(other) => panic!("{name}: {body:02x?} gave {other:?}, not CodecError::Decode"),
    }
}

/// A small deterministic generator, so a failing body is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

// ---- round trips ---------------------------------------------------------------------------

#[test]
fn msgpack_and_cbor_round_trip_every_shop_message() {
    for (name, codec) in binary_codecs() {
        round_trip(
            name,
            codec,
            &PlaceOrder {
                order_id: 1001,
                customer: "ada".into(),
                sku: "keyboard".into(),
                quantity: 1,
                unit_price_cents: 4900,
            },
        );
        round_trip(
            name,
            codec,
            &OrderPlaced {
                order_id: 1001,
                customer: "ada".into(),
                sku: "keyboard".into(),
                quantity: 3,
                total_cents: 14_700,
            },
        );
        round_trip(
            name,
            codec,
            &InvoiceCreated {
                invoice_id: "INV-1001".into(),
                order_id: 1001,
                amount_cents: u64::MAX,
            },
        );
        round_trip(
            name,
            codec,
            &PaymentReceived {
                order_id: u32::MAX,
                amount_cents: 0,
            },
        );
        round_trip(name, codec, &ShipOrder { order_id: 1 });
        round_trip(name, codec, &CancelOrder { order_id: 2 });
        round_trip(name, codec, &PaymentOverdue { order_id: 3 });
        round_trip(
            name,
            codec,
            &OrderShipped {
                order_id: 4,
                tracking: "1Z999AA10123456784".into(),
            },
        );
        round_trip(name, codec, &GetOrderStatus { order_id: 5 });
        round_trip(
            name,
            codec,
            &OrderStatus {
                order_id: 5,
                state: "accepted".into(),
            },
        );
        round_trip(
            name,
            codec,
            &RemindDelivery {
                order_id: 6,
                tracking: String::new(),
            },
        );
        round_trip(
            name,
            codec,
            &Fulfilment {
                order_id: 7,
                placed: true,
                paid: false,
            },
        );
    }
}

#[test]
fn msgpack_and_cbor_round_trip_structs_strings_integers_nesting_options_and_enums() {
    for (name, codec) in binary_codecs() {
        round_trip(name, codec, &shapes());
        let mut other = shapes();
        other.status = Status::Cancelled;
        other.kind = Kind::Standard;
        other.note = Some("leave at the door".into());
        other.maybe_address = None;
        other.present = None;
        other.ratio = -1.5e300;
        other.extras.rest.clear();
        round_trip(name, codec, &other);
    }
}

#[test]
fn msgpack_and_cbor_round_trip_128_bit_integers() {
    for (name, codec) in binary_codecs() {
        for v in [0u128, u128::from(u64::MAX) + 1, u128::MAX] {
            round_trip(name, codec, &v);
        }
        for v in [
            0i128,
            -1,
            i128::from(i64::MIN),
            i128::from(i64::MIN) - 1,
            -(1i128 << 64),
            -(1i128 << 64) - 1,
            i128::MIN,
            i128::MAX,
        ] {
            round_trip(name, codec, &v);
        }
    }
}

#[test]
fn msgpack_and_cbor_messages_decode_by_name_through_decode_any() {
    let placed = Order {
        n: 17,
        shapes: shapes(),
    };
    for (name, codec) in binary_codecs() {
        let body = codec.encode(&placed).unwrap();
        let msg = decode_any(codec, "t.codecs.Order", &body)
            .unwrap_or_else(|e| panic!("{name}: decode_any: {e}"));
        assert_eq!(msg.downcast_ref::<Order>(), Some(&placed), "{name}");

        let body = codec.encode(&ShipOrder { order_id: 12 }).unwrap();
        let msg = decode_any(codec, "shop.shipping.ShipOrder", &body).unwrap();
        assert_eq!(
            msg.downcast_ref::<ShipOrder>(),
            Some(&ShipOrder { order_id: 12 }),
            "{name}"
        );
    }
}

#[test]
fn msgpack_and_cbor_write_structs_as_maps_keyed_by_field_name() {
    let place = PlaceOrder {
        order_id: 1001,
        customer: "ada".into(),
        sku: "keyboard".into(),
        quantity: 1,
        unit_price_cents: 4900,
    };
    // A map of five entries: fixmap 0x85 in MessagePack, major type 5 in CBOR.
    for (name, codec, first) in [
        ("msgpack", &MessagePackCodec as &dyn Codec, 0x85u8),
        ("cbor", &CborCodec, 0xa5),
    ] {
        let body = codec.encode(&place).unwrap();
        assert_eq!(body[0], first, "{name}: {body:02x?}");
        // Read back with no knowledge of the struct: the field names are in the body.
        let generic: serde_json::Value = decode(codec, &body).unwrap();
        assert_eq!(generic, serde_json::to_value(&place).unwrap(), "{name}");

        // Enums look as they do in JSON, so other languages read them the same way.
        let body = codec.encode(&shapes()).unwrap();
        let generic: serde_json::Value = decode(codec, &body).unwrap();
        assert_eq!(generic, serde_json::to_value(shapes()).unwrap(), "{name}");
        assert_eq!(generic["status"], "Accepted", "{name}");
        assert_eq!(generic["refund"], serde_json::json!({"Voucher": "SPRING"}));
        assert_eq!(generic["pending"], "Pending", "{name}");
    }
}

#[test]
fn a_missing_optional_field_decodes_as_none() {
    #[derive(Serialize)]
    struct Before {
        order_id: u32,
    }
    #[derive(Deserialize, Debug, PartialEq)]
    struct After {
        order_id: u32,
        #[serde(default)]
        coupon: Option<String>,
    }
    for (name, codec) in binary_codecs() {
        let body = codec.encode(&Before { order_id: 3 }).unwrap();
        let after: After = decode(codec, &body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            after,
            After {
                order_id: 3,
                coupon: None
            },
            "{name}"
        );
    }
}

// ---- bodies that are not one valid value ---------------------------------------------------

#[test]
fn random_bytes_are_a_decode_error_never_a_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for (name, codec) in binary_codecs() {
        for _ in 0..20_000 {
            let len = rng.below(48);
            let body = rng.bytes(len);
            assert!(
                is_decode_error(name, &body, decode::<PlaceOrder>(codec, &body)),
                "{name}: random bytes {body:02x?} decoded as an order"
            );
            is_decode_error(name, &body, decode::<Shapes>(codec, &body));
            is_decode_error(name, &body, decode::<serde_json::Value>(codec, &body));
            is_decode_error(name, &body, decode::<IgnoredAny>(codec, &body));
            is_decode_error(
                name,
                &body,
                decode_any(codec, "shop.sales.PlaceOrder", &body),
            );
        }
    }
}

#[test]
fn corrupted_messages_are_a_decode_error_never_a_panic() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for (name, codec) in binary_codecs() {
        let valid = codec.encode(&shapes()).unwrap().to_vec();
        for _ in 0..5_000 {
            let mut body = valid.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(body.len() as u64);
                body[at] = rng.next() as u8;
            }
            is_decode_error(name, &body, decode::<Shapes>(codec, &body));
            is_decode_error(name, &body, decode::<serde_json::Value>(codec, &body));
        }
    }
}

#[test]
fn truncated_bodies_are_a_decode_error() {
    for (name, codec) in binary_codecs() {
        let valid = codec.encode(&shapes()).unwrap();
        for len in 0..valid.len() {
            let body = &valid[..len];
            assert!(
                is_decode_error(name, body, decode::<Shapes>(codec, body)),
                "{name}: {len} of {} bytes decoded",
                valid.len()
            );
            assert!(
                is_decode_error(name, body, decode::<serde_json::Value>(codec, body)),
                "{name}: {len} of {} bytes decoded as a value",
                valid.len()
            );
        }
    }
}

#[test]
fn a_length_beyond_the_body_is_a_decode_error_without_allocating_it() {
    let msgpack: [&[u8]; 4] = [
        &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],             // str 32
        &[0xc6, 0xff, 0xff, 0xff, 0xff, 0x00],             // bin 32
        &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01],             // array 32
        &[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'a', 0x01], // map 32
    ];
    let cbor: [&[u8]; 4] = [
        &[0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'a'], // text, 64-bit length
        &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00], // bytes
        &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // array
        &[
            0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x61, b'a', 0x01,
        ], // map
    ];
    for (name, codec, bodies) in [
        ("msgpack", &MessagePackCodec as &dyn Codec, msgpack),
        ("cbor", &CborCodec, cbor),
    ] {
        for body in bodies {
            assert!(is_decode_error(
                name,
                body,
                decode::<serde_json::Value>(codec, body)
            ));
            assert!(is_decode_error(name, body, decode::<Shapes>(codec, body)));
            assert!(is_decode_error(name, body, decode::<Vec<u8>>(codec, body)));
            assert!(is_decode_error(name, body, decode::<String>(codec, body)));
        }
    }
}

#[test]
fn deep_nesting_is_a_decode_error_not_a_stack_overflow() {
    // One-element arrays, nested 100,000 deep around a null.
    for (name, codec, array_of_one, null) in [
        ("msgpack", &MessagePackCodec as &dyn Codec, 0x91u8, 0xc0u8),
        ("cbor", &CborCodec, 0x81, 0xf6),
    ] {
        let nested = |depth: usize| {
            let mut body = vec![array_of_one; depth];
            body.push(null);
            body
        };
        let deep = nested(100_000);
        assert!(is_decode_error(
            name,
            &deep[..16],
            decode::<serde_json::Value>(codec, &deep)
        ));
        assert!(is_decode_error(
            name,
            &deep[..16],
            decode::<IgnoredAny>(codec, &deep)
        ));
        // Nesting as deep as JSON allows still decodes.
        let fine = nested(100);
        let value: serde_json::Value =
            decode(codec, &fine).unwrap_or_else(|e| panic!("{name}: 100 levels: {e}"));
        assert!(value.is_array(), "{name}");
    }
}

#[test]
fn trailing_bytes_after_one_value_are_a_decode_error_as_with_json() {
    let ship = ShipOrder { order_id: 9 };
    for (name, codec) in binary_codecs() {
        let one = codec.encode(&ship).unwrap().to_vec();
        assert_eq!(decode::<ShipOrder>(codec, &one).unwrap(), ship, "{name}");

        let mut two = one.clone();
        two.extend_from_slice(&one);
        let mut one_more_byte = one.clone();
        one_more_byte.push(0x00);
        for body in [two, one_more_byte] {
            match decode::<ShipOrder>(codec, &body) {
                Err(CodecError::Decode(e)) => assert!(e.contains("trailing"), "{name}: {e}"),
                other => panic!("{name}: {body:02x?} gave {other:?}"),
            }
            assert!(is_decode_error(
                name,
                &body,
                decode_any(codec, "shop.shipping.ShipOrder", &body)
            ));
        }
    }
    // JSON, for comparison: one value, then only whitespace.
    assert!(decode::<ShipOrder>(&JsonCodec, br#"{"order_id":9} "#).is_ok());
    assert!(matches!(
        decode::<ShipOrder>(&JsonCodec, br#"{"order_id":9}{}"#),
        Err(CodecError::Decode(_))
    ));
}

#[test]
fn cbor_reads_indefinite_lengths_and_looks_through_semantic_tags() {
    fn text(s: &str) -> Vec<u8> {
        assert!(s.len() < 24);
        let mut out = vec![0x60 | s.len() as u8];
        out.extend_from_slice(s.as_bytes());
        out
    }
    let mut body = vec![0xbf]; // a map of indefinite length
    body.extend(text("order_id"));
    body.extend([0x19, 0x03, 0xe9]); // 1001
    body.extend(text("customer"));
    body.push(0x7f); // a text of indefinite length, in two chunks
    body.extend(text("ad"));
    body.extend(text("a"));
    body.push(0xff);
    body.extend(text("sku"));
    body.extend([0xd8, 0x20]); // tag 32, a URI
    body.extend(text("keyboard"));
    body.extend(text("quantity"));
    body.push(0x01);
    body.extend(text("unit_price_cents"));
    body.extend([0x19, 0x13, 0x24]); // 4900
    body.push(0xff);
    assert_eq!(
        decode::<PlaceOrder>(&CborCodec, &body).unwrap(),
        PlaceOrder {
            order_id: 1001,
            customer: "ada".into(),
            sku: "keyboard".into(),
            quantity: 1,
            unit_price_cents: 4900,
        }
    );
}

// ---- through a bus -------------------------------------------------------------------------

/// A bus with `codec` as its default, over a transport that serializes every message, sends
/// orders, handles them, publishes events from the handler and answers a request: every body
/// on the way is `content_type`.
async fn memory_bus_sends_and_handles_with_default(codec: impl Codec, content_type: &str) {
    let transport = MemoryTransport::new().serialize(true);
    let ledger = Ledger::new();
    let bus = Bus::builder()
        .transport(transport.clone())
        .host(["t-codecs-orders", "t-codecs-audit"])
        .codec(codec, true)
        .state(ledger.clone())
        .start()
        .await
        .unwrap();
    for n in 0..20 {
        bus.send(order(n)).await.unwrap();
    }
    let answer = bus.request(AskOrder { n: 5 }).await.unwrap();
    assert_eq!(
        answer,
        OrderAnswer {
            n: 5,
            shapes: shapes()
        }
    );
    assert!(
        eventually(Duration::from_secs(10), || ledger.notes().len() == 20).await,
        "handled {} orders, audited {} events",
        ledger.distinct(),
        ledger.notes().len()
    );
    bus.shutdown().await;
    assert_eq!(ledger.by_instance().get(content_type), Some(&20));
    assert_eq!(ledger.duplicates(), 0);
    assert!(
        ledger
            .notes()
            .iter()
            .all(|n| n.ends_with(&format!(" {content_type}"))),
        "{:?}",
        ledger.notes()
    );
    assert!(transport.error_queue("t-codecs-orders").is_empty());
    assert!(transport.error_queue("t-codecs-audit").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bus_with_msgpack_as_default_sends_and_handles_serialized_messages() {
    memory_bus_sends_and_handles_with_default(MessagePackCodec, MSGPACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bus_with_cbor_as_default_sends_and_handles_serialized_messages() {
    memory_bus_sends_and_handles_with_default(CborCodec, CBOR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_both_codecs_handles_json_msgpack_and_cbor_bodies_side_by_side() {
    let transport = MemoryTransport::new().serialize(true);
    let ledger = Ledger::new();
    // JSON stays the receiver's default: the others are only understood.
    let receiver = Bus::builder()
        .transport(transport.clone())
        .host(["t-codecs-orders", "t-codecs-audit"])
        .codec(MessagePackCodec, false)
        .codec(CborCodec, false)
        .state(ledger.clone())
        .start()
        .await
        .unwrap();
    let sender = |builder: bus_core::BusBuilder| {
        builder
            .transport(transport.clone())
            .without_discovery()
            .build()
    };
    let json = sender(Bus::builder()).await.unwrap();
    let msgpack = sender(Bus::builder().codec(MessagePackCodec, true))
        .await
        .unwrap();
    let cbor = sender(Bus::builder().codec(CborCodec, true)).await.unwrap();
    for n in 0..10 {
        json.send(order(n)).await.unwrap();
        msgpack.send(order(100 + n)).await.unwrap();
        cbor.send(order(200 + n)).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || ledger.notes().len() == 30).await,
        "handled {}, audited {}",
        ledger.distinct(),
        ledger.notes().len()
    );
    receiver.shutdown().await;
    let by_type = ledger.by_instance();
    assert_eq!(by_type.get(JSON), Some(&10), "{by_type:?}");
    assert_eq!(by_type.get(MSGPACK), Some(&10), "{by_type:?}");
    assert_eq!(by_type.get(CBOR), Some(&10), "{by_type:?}");
    for n in (0..10).chain(100..110).chain(200..210) {
        assert_eq!(ledger.count(&n.to_string()), 1, "order {n}");
    }
    // What the receiver publishes is in its own default codec.
    assert!(ledger
        .notes()
        .iter()
        .all(|n| n.ends_with(" application/json")));
    assert!(transport.error_queue("t-codecs-orders").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_without_the_codec_moves_msgpack_bodies_to_the_error_queue() {
    let transport = MemoryTransport::new().serialize(true);
    let ledger = Ledger::new();
    let receiver = Bus::builder()
        .transport(transport.clone())
        .host(["t-codecs-orders", "t-codecs-audit"])
        .state(ledger.clone())
        .start()
        .await
        .unwrap();
    let sender = Bus::builder()
        .transport(transport.clone())
        .without_discovery()
        .codec(MessagePackCodec, true)
        .build()
        .await
        .unwrap();
    sender.send(order(1)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || transport
            .error_queue("t-codecs-orders")
            .len()
            == 1)
        .await
    );
    receiver.shutdown().await;
    assert_eq!(ledger.total(), 0);
    let failed = &transport.error_queue("t-codecs-orders")[0];
    assert_eq!(
        failed.headers.get(header::FAILURE_REASON),
        Some("unsupported-content-type")
    );
    // The body is kept as it was sent: MessagePack bytes.
    assert_eq!(failed.headers.content_type, MSGPACK);
    let Body::Bytes(bytes) = &failed.body else {
        panic!("the body was not serialized: {:?}", failed.body)
    };
    assert_eq!(decode::<Order>(&MessagePackCodec, bytes).unwrap(), order(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_bus_with_msgpack_as_default_sends_and_handles_beside_a_json_sender() {
    let Some(scope) = AmqpScope::new("amqp_bus_with_msgpack_as_default").await else {
        return;
    };
    let cleanup = scope.clone();
    then_clean(
        async move {
            let ledger = Ledger::new();
            let receiver = Bus::builder()
                .transport(scope.transport("codecs-receiver").await)
                .host(["t-codecs-orders", "t-codecs-audit"])
                .codec(MessagePackCodec, true)
                .state(ledger.clone())
                .shutdown_grace(Duration::from_secs(5))
                .start()
                .await
                .expect("start the receiver");
            let json = Bus::builder()
                .transport(scope.transport("codecs-json-sender").await)
                .without_discovery()
                .build()
                .await
                .expect("build the JSON sender");
            for n in 0..10 {
                receiver.send(order(n)).await.unwrap();
                json.send(order(100 + n)).await.unwrap();
            }
            let answer = receiver.request(AskOrder { n: 3 }).await.unwrap();
            assert_eq!(
                answer,
                OrderAnswer {
                    n: 3,
                    shapes: shapes()
                }
            );
            assert!(
                eventually(Duration::from_secs(30), || ledger.notes().len() == 20).await,
                "handled {}, audited {}",
                ledger.distinct(),
                ledger.notes().len()
            );
            receiver.shutdown().await;
            json.shutdown().await;
            let by_type = ledger.by_instance();
            assert_eq!(by_type.get(MSGPACK), Some(&10), "{by_type:?}");
            assert_eq!(by_type.get(JSON), Some(&10), "{by_type:?}");
            assert!(
                ledger
                    .notes()
                    .iter()
                    .all(|n| n.ends_with(" application/msgpack")),
                "{:?}",
                ledger.notes()
            );
        },
        cleanup.cleanup(),
    )
    .await;
}

// ---- interoperability with Python's msgpack ------------------------------------------------

/// Run `script` with python3, `stdin` on its standard input; `None` (test skipped) when
/// python3 or its `msgpack` package is missing.
fn python_msgpack(test: &str, script: &str, stdin: &[u8]) -> Option<Vec<u8>> {
    let probe = Process::new("python3")
        .args(["-c", "import msgpack"])
        .output();
    let missing = match probe {
        Ok(out) if out.status.success() => None,
        // The traceback's last line says what is missing.
        Ok(out) => Some(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("python3 failed")
                .to_string(),
        ),
        Err(e) => Some(format!("python3: {e}")),
    };
    if let Some(why) = missing {
        if brokers_required() {
            panic!("{test}: python3 with msgpack is unavailable ({why}) and BUS_REQUIRE_BROKERS=1");
        }
        eprintln!("skipping {test}: python3 with msgpack is unavailable ({why}); `python3 -m pip install msgpack`, or set BUS_REQUIRE_BROKERS=1 to fail instead");
        return None;
    }
    let mut child = Process::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

#[test]
fn msgpack_decodes_what_python_msgpack_writes() {
    let script = format!(
        r#"
import sys, msgpack
order = {{"order_id": 1001, "customer": "ada", "sku": "keyboard", "quantity": 1,
          "unit_price_cents": 4900}}
positional = [1001, "ada", "keyboard", 1, 4900]
shapes = {SHAPES_PY}
for value in (order, positional, shapes):
    print(msgpack.packb(value).hex())
"#
    );
    let Some(out) = python_msgpack("msgpack_decodes_what_python_msgpack_writes", &script, b"")
    else {
        return;
    };
    let bodies: Vec<Vec<u8>> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| {
            (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect();
    assert_eq!(bodies.len(), 3);
    let place = PlaceOrder {
        order_id: 1001,
        customer: "ada".into(),
        sku: "keyboard".into(),
        quantity: 1,
        unit_price_cents: 4900,
    };
    assert_eq!(
        decode::<PlaceOrder>(&MessagePackCodec, &bodies[0]).unwrap(),
        place
    );
    // Both write the smallest forms, so a map with the same key order is the same bytes.
    assert_eq!(MessagePackCodec.encode(&place).unwrap(), bodies[0]);
    let msg = decode_any(&MessagePackCodec, "shop.sales.PlaceOrder", &bodies[0]).unwrap();
    assert_eq!(msg.downcast_ref::<PlaceOrder>(), Some(&place));
    // Positional arrays, as `rmp_serde::to_vec` and other encoders write structs, read too.
    assert_eq!(
        decode::<PlaceOrder>(&MessagePackCodec, &bodies[1]).unwrap(),
        place
    );
    assert_eq!(
        decode::<Shapes>(&MessagePackCodec, &bodies[2]).unwrap(),
        shapes()
    );
}

#[test]
fn python_msgpack_reads_the_field_names_msgpack_writes() {
    let body = MessagePackCodec.encode(&shapes()).unwrap();
    let script = r#"
import sys, json, msgpack
print(json.dumps(msgpack.unpackb(sys.stdin.buffer.read())))
"#;
    let Some(out) = python_msgpack(
        "python_msgpack_reads_the_field_names_msgpack_writes",
        script,
        &body,
    ) else {
        return;
    };
    let read: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(read, serde_json::to_value(shapes()).unwrap());
}
