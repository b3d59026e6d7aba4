//! Unit tests of one handler with a test context: what it sent and published, typed; the
//! headers, attempt and state it reads; routing as on a bus; and bodies encoded as for a
//! broker.

use bus_core::{
    Body, BusError, CodecError, Command, Destination, Event, HandlerError, Headers, MessageContext,
    State,
};
use bus_testing::TestContext;
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.ctx.PlaceOrder", endpoint = "t-ctx-sales")]
struct PlaceOrder {
    id: u32,
    quantity: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "t.ctx.OrderPlaced")]
struct OrderPlaced {
    id: u32,
    tenant: String,
    retried: bool,
}

/// Owned by an endpoint: routed there.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.ctx.Reserve", endpoint = "t-ctx-stock")]
struct Reserve {
    id: u32,
}

/// No declared owner; its handler lives in `t-ctx-audit`: routed there, as on a bus.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.ctx.Audit")]
struct Audit {
    id: u32,
}

/// No declared owner and no handler anywhere: only an explicit route sends it.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.ctx.Notify")]
struct Notify {
    id: u32,
}

/// Carries text of any size.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.ctx.Note", endpoint = "t-ctx-notes")]
struct Note {
    text: String,
}

#[derive(Clone, Debug)]
struct Limits {
    max_quantity: u32,
}

#[bus_core::handler(endpoint = "t-ctx-audit")]
async fn audit(_: Audit) -> Result<(), HandlerError> {
    Ok(())
}

#[bus_core::handler]
async fn place_order(
    cmd: PlaceOrder,
    ctx: MessageContext,
    State(limits): State<Limits>,
) -> Result<(), HandlerError> {
    if cmd.quantity > limits.max_quantity {
        return Err(HandlerError::unrecoverable("too many"));
    }
    ctx.send(Reserve { id: cmd.id }).await?;
    ctx.send(Audit { id: cmd.id }).await?;
    ctx.publish(OrderPlaced {
        id: cmd.id,
        tenant: ctx.headers().get("tenant").unwrap_or("-").to_string(),
        retried: ctx.attempt() > 1,
    })
    .await?;
    Ok(())
}

fn order(id: u32, quantity: u32) -> PlaceOrder {
    PlaceOrder { id, quantity }
}

#[tokio::test]
async fn test_context_records_what_a_handler_sends_and_publishes_typed() {
    let test = TestContext::new()
        .message::<PlaceOrder>()
        .header("tenant", "acme")
        .state(Limits { max_quantity: 5 });
    place_order(order(1, 2), test.context(), test.extract().unwrap())
        .await
        .unwrap();
    assert_eq!(test.sent::<Reserve>(), [Reserve { id: 1 }]);
    assert_eq!(test.sent::<Audit>(), [Audit { id: 1 }]);
    assert_eq!(
        test.published::<OrderPlaced>(),
        [OrderPlaced {
            id: 1,
            tenant: "acme".into(),
            retried: false
        }]
    );
    let kinds: Vec<String> = test
        .outgoing()
        .iter()
        .map(|o| o.envelope.headers.message_type.to_string())
        .collect();
    assert_eq!(kinds, ["t.ctx.Reserve", "t.ctx.Audit", "t.ctx.OrderPlaced"]);
}

#[tokio::test]
async fn test_context_failed_handler_leaves_what_it_staged_before_failing_visible() {
    let test = TestContext::new().state(Limits { max_quantity: 1 });
    let error = place_order(order(2, 9), test.context(), test.extract().unwrap())
        .await
        .unwrap_err();
    assert!(error.is_unrecoverable());
    assert_eq!(error.message(), "too many");
    assert!(test.outgoing().is_empty(), "it failed before sending");
}

#[tokio::test]
async fn test_context_sets_the_attempt_headers_and_ids_the_handler_reads() {
    let test = TestContext::new()
        .attempt(3)
        .redelivered(true)
        .endpoint("t-ctx-sales")
        .message_id("incoming-1")
        .correlation_id("order-7")
        .header("tenant", "globex")
        .state(Limits { max_quantity: 5 });
    let ctx = test.context();
    assert_eq!(ctx.attempt(), 3);
    assert!(ctx.redelivered());
    assert_eq!(ctx.endpoint(), "t-ctx-sales");
    assert_eq!(ctx.message_id(), "incoming-1");
    assert_eq!(ctx.correlation_id(), Some("order-7"));

    place_order(order(3, 1), ctx, test.extract().unwrap())
        .await
        .unwrap();
    let published = test.published::<OrderPlaced>();
    assert!(published[0].retried, "the handler saw attempt 3");
    assert_eq!(published[0].tenant, "globex");
    // What the handler sent carries the ids of the message it handled.
    for out in test.outgoing() {
        let h = &out.envelope.headers;
        assert_eq!(h.correlation_id(), Some("order-7"));
        assert_eq!(h.causation_id(), Some("incoming-1"));
    }
}

#[tokio::test]
async fn test_context_routes_commands_as_a_bus_with_discovery_would() {
    let test = TestContext::new().state(Limits { max_quantity: 5 });
    place_order(order(4, 1), test.context(), test.extract().unwrap())
        .await
        .unwrap();
    assert_eq!(
        test.sent_to::<Reserve>(),
        [("t-ctx-stock".to_string(), Reserve { id: 4 })],
        "the declared owner"
    );
    assert_eq!(
        test.sent_to::<Audit>(),
        [("t-ctx-audit".to_string(), Audit { id: 4 })],
        "where its handler lives"
    );
    let published = test.outgoing().pop().unwrap();
    assert_eq!(
        published.destination,
        Destination::Event("t.ctx.OrderPlaced".into())
    );

    // A command nothing routes is refused, as a bus would refuse it; a route fixes that.
    let ctx = TestContext::new().context();
    let error = ctx.send(Notify { id: 1 }).await.unwrap_err();
    assert!(matches!(error, BusError::NoRoute(ref name) if name == "t.ctx.Notify"));
    let routed = TestContext::new().route::<Notify>("t-ctx-mail");
    routed.context().send(Notify { id: 2 }).await.unwrap();
    assert_eq!(
        routed.sent_to::<Notify>(),
        [("t-ctx-mail".to_string(), Notify { id: 2 })]
    );
}

#[tokio::test]
async fn test_context_extracts_state_and_headers_as_a_bus_would() {
    let test = TestContext::new()
        .header("tenant", "initech")
        .state(Limits { max_quantity: 7 });
    let State(limits) = test.extract::<State<Limits>>().unwrap();
    assert_eq!(limits.max_quantity, 7);
    let headers = test.extract::<Headers>().unwrap();
    assert_eq!(headers.get("tenant"), Some("initech"));
    let missing = TestContext::new().extract::<State<Limits>>().unwrap_err();
    assert!(missing.is_unrecoverable());
    assert!(
        missing.message().contains("Limits"),
        "{}",
        missing.message()
    );
}

#[tokio::test]
async fn message_context_for_test_encodes_what_is_sent_as_for_a_broker() {
    let ctx = MessageContext::for_test().build();
    ctx.send(Reserve { id: 5 }).await.unwrap();
    let staged = ctx.staged();
    assert_eq!(staged.len(), 1);
    match &staged[0].envelope.body {
        Body::Bytes(bytes) => assert_eq!(&bytes[..], br#"{"id":5}"#),
        other => panic!("expected bytes, got {other:?}"),
    }
    assert_eq!(staged[0].envelope.headers.content_type, "application/json");
    // Clones share one outbox: what a clone stages, the test sees.
    ctx.clone().send(Reserve { id: 6 }).await.unwrap();
    assert_eq!(ctx.staged().len(), 2);
}

#[tokio::test]
async fn message_context_for_test_refuses_a_body_over_the_default_limit() {
    let ctx = MessageContext::for_test().build();
    let text = "x".repeat(5 * 1024 * 1024);
    let error = ctx.send(Note { text }).await.unwrap_err();
    assert!(
        matches!(error, BusError::Codec(CodecError::TooLarge { .. })),
        "{error}"
    );
    assert!(ctx.staged().is_empty());
    ctx.send(Note { text: "ok".into() }).await.unwrap();
    assert_eq!(ctx.staged().len(), 1);
}
