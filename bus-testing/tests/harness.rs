//! The harness on the in-memory transport: what it records (sends, publishes, attempts and
//! their outcomes, moves to the error queue), its waits (found, timed out with what was seen,
//! quiet only once delayed retries are done), reading the error queue, and its teardown.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{
    header, Body, Command, Destination, Envelope, Event, Failure, FailureReason, HandlerError,
    Headers, Layer, LayerFuture, MessageContext, Next, Outgoing, State,
};
use bus_testing::{Activity, HarnessError, TestHarness};
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

// --- an order flow: sales -> OrderPlaced -> billing -> InvoiceCreated -----------------------

#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.harness.PlaceOrder", endpoint = "t-harness-sales")]
struct PlaceOrder {
    id: u32,
    quantity: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "t.harness.OrderPlaced")]
struct OrderPlaced {
    id: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "t.harness.InvoiceCreated")]
struct InvoiceCreated {
    id: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "t.harness.NeverPublished")]
struct NeverPublished;

#[bus_core::handler]
async fn place_order(cmd: PlaceOrder, ctx: MessageContext) -> Result<(), HandlerError> {
    if cmd.quantity == 0 {
        return Err(HandlerError::unrecoverable(format!(
            "order {} is empty",
            cmd.id
        )));
    }
    ctx.publish(OrderPlaced { id: cmd.id }).await?;
    Ok(())
}

#[bus_core::handler(endpoint = "t-harness-billing")]
async fn create_invoice(evt: OrderPlaced, ctx: MessageContext) -> Result<(), HandlerError> {
    ctx.publish(InvoiceCreated { id: evt.id }).await?;
    Ok(())
}

const SALES: &str = "t-harness-sales";
const BILLING: &str = "t-harness-billing";

// --- a flaky carrier: fails the first `fail_times` attempts ---------------------------------

#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.harness.Ship", endpoint = "t-harness-shipping")]
struct Ship {
    id: u32,
    fail_times: u32,
}

#[bus_core::handler]
async fn ship(cmd: Ship, ctx: MessageContext) -> Result<(), HandlerError> {
    if ctx.attempt() <= cmd.fail_times {
        return Err(HandlerError::new(format!("carrier down for {}", cmd.id)));
    }
    Ok(())
}

const SHIPPING: &str = "t-harness-shipping";

// --- a slow handler, counting its calls -----------------------------------------------------

#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.harness.Sleep", endpoint = "t-harness-sleepy")]
struct Sleep {
    millis: u64,
}

#[derive(Clone, Default)]
struct Calls(Arc<AtomicU32>);

#[bus_core::handler]
async fn sleep(cmd: Sleep, State(calls): State<Calls>) -> Result<(), HandlerError> {
    calls.0.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(cmd.millis)).await;
    Ok(())
}

const SLEEPY: &str = "t-harness-sleepy";

/// Refuses every message without a `tenant` header.
struct RequireTenant;

impl Layer for RequireTenant {
    fn call<'a>(&'a self, ctx: &'a MessageContext, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            if ctx.headers().get("tenant").is_none() {
                return Err(Failure::reject("no tenant").with_handler("require-tenant"));
            }
            next.run(ctx).await
        })
    }
}

#[tokio::test]
async fn harness_records_sent_published_and_handled_messages_typed() {
    let harness = TestHarness::start([SALES, BILLING]).await.unwrap();
    harness
        .send(PlaceOrder { id: 1, quantity: 2 })
        .await
        .unwrap();

    let invoice = harness
        .wait_for_published::<InvoiceCreated>()
        .await
        .unwrap();
    assert_eq!(invoice, InvoiceCreated { id: 1 });
    harness.wait_until_quiet().await.unwrap();

    assert_eq!(
        harness.sent::<PlaceOrder>(),
        [PlaceOrder { id: 1, quantity: 2 }]
    );
    assert_eq!(harness.published::<OrderPlaced>(), [OrderPlaced { id: 1 }]);
    assert_eq!(harness.handled::<PlaceOrder>().len(), 1);
    assert_eq!(harness.handled::<OrderPlaced>(), [OrderPlaced { id: 1 }]);
    // Nobody here subscribes to InvoiceCreated: published, never handled.
    assert!(harness.handled::<InvoiceCreated>().is_empty());
    let attempts = harness.attempts::<OrderPlaced>();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].endpoint, BILLING);
    assert_eq!(attempts[0].attempt, 1);
    assert_eq!(attempts[0].outcome, Ok(()));
    // Encoded as a broker would: the bodies the harness saw are bytes.
    assert!(harness
        .activity()
        .iter()
        .all(|a| matches!(a.envelope().body, Body::Bytes(_))));
    assert!(harness.failed::<PlaceOrder>().is_empty());
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn harness_wait_for_published_times_out_with_what_was_seen() {
    let harness = TestHarness::start([SALES]).await.unwrap();
    harness
        .send(PlaceOrder { id: 5, quantity: 1 })
        .await
        .unwrap();
    let started = Instant::now();
    let error = harness
        .within(Duration::from_millis(300))
        .wait_for_published::<NeverPublished>()
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it gave up in time"
    );
    let timeout = error.as_timeout().expect("a timeout error");
    assert_eq!(timeout.what, "a published t.harness.NeverPublished");
    assert_eq!(timeout.after, Duration::from_millis(300));
    let seen = &timeout.seen;
    assert!(seen
        .activity
        .iter()
        .any(|a| matches!(a, Activity::Sent { endpoint, .. } if endpoint == SALES)));
    assert!(seen
        .activity
        .iter()
        .any(|a| matches!(a, Activity::Attempted(r) if r.outcome.is_ok() && r.endpoint == SALES)));
    let text = error.to_string();
    assert!(
        text.contains("timed out after 300ms waiting for a published t.harness.NeverPublished"),
        "{text}"
    );
    assert!(text.contains("sent t.harness.PlaceOrder"), "{text}");
    assert!(text.contains("published t.harness.OrderPlaced"), "{text}");
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn harness_wait_for_handled_where_returns_the_matching_message() {
    let harness = TestHarness::start([SALES, BILLING]).await.unwrap();
    for id in 1..=5 {
        harness.send(PlaceOrder { id, quantity: 1 }).await.unwrap();
    }
    let fourth = harness
        .wait_for_handled_where(|e: &OrderPlaced| e.id == 4)
        .await
        .unwrap();
    assert_eq!(fourth, OrderPlaced { id: 4 });
    let third = harness
        .wait_for_published_where(|e: &InvoiceCreated| e.id == 3)
        .await
        .unwrap();
    assert_eq!(third, InvoiceCreated { id: 3 });
    harness
        .wait_until("five invoices", |h| {
            h.published::<InvoiceCreated>().len() == 5
        })
        .await
        .unwrap();
    let error = harness
        .within(Duration::from_millis(100))
        .wait_for_handled_where(|e: &OrderPlaced| e.id == 6)
        .await
        .unwrap_err();
    assert!(matches!(error, HarnessError::TimedOut(_)), "{error}");
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn harness_records_each_attempt_and_the_move_to_the_error_queue() {
    let harness = TestHarness::builder()
        .host([SHIPPING])
        .configure(|bus| {
            bus.endpoint(SHIPPING, |e| {
                e.immediate_retries(2).delayed_retries(0, Duration::ZERO)
            })
        })
        .start()
        .await
        .unwrap();
    harness
        .send(Ship {
            id: 9,
            fail_times: u32::MAX,
        })
        .await
        .unwrap();
    let failed = harness.wait_for_failed::<Ship>().await.unwrap();
    assert_eq!(failed.message.id, 9);
    assert_eq!(failed.failure.endpoint, SHIPPING);
    assert_eq!(failed.failure.reason, "handler-error");
    assert_eq!(
        failed.failure.failure_reason(),
        Some(FailureReason::HandlerError)
    );
    assert_eq!(failed.failure.error, "carrier down for 9");
    assert_eq!(failed.failure.attempts, 3);
    assert_eq!(
        failed.failure.handler.as_deref(),
        Some(concat!(module_path!(), "::ship"))
    );
    assert_eq!(
        failed.headers.get(header::FAILURE_REASON),
        Some("handler-error")
    );

    let attempts = harness.attempts::<Ship>();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2, 3]);
    for a in &attempts {
        let failure = a.outcome.as_ref().expect_err("every attempt failed");
        assert_eq!(failure.reason, FailureReason::HandlerError);
        assert_eq!(failure.error, "carrier down for 9");
    }
    assert!(harness.handled::<Ship>().is_empty());
    assert_eq!(harness.failed::<Ship>().len(), 1);
    harness.wait_until_quiet().await.unwrap();
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn harness_error_queue_reads_failed_messages_through_the_transport() {
    let harness = TestHarness::start([SALES]).await.unwrap();
    harness
        .send(PlaceOrder { id: 1, quantity: 0 })
        .await
        .unwrap();
    harness
        .send(PlaceOrder { id: 2, quantity: 3 })
        .await
        .unwrap();
    harness
        .send(PlaceOrder { id: 3, quantity: 0 })
        .await
        .unwrap();
    harness
        .wait_until("two failed orders", |h| h.failed::<PlaceOrder>().len() == 2)
        .await
        .unwrap();

    let queued = harness.error_queue::<PlaceOrder>(SALES).await.unwrap();
    let ids: Vec<u32> = queued.iter().map(|f| f.message.id).collect();
    assert_eq!(ids, [1, 3], "oldest first, the handled order not there");
    assert_eq!(queued[0].failure.reason, "handler-error");
    assert_eq!(queued[0].failure.error, "order 1 is empty");
    assert_eq!(queued[0].failure.attempts, 1, "unrecoverable: no retry");
    // Another type's view of the same queue is empty; the raw envelopes are all there.
    assert!(harness.error_queue::<Ship>(SALES).await.unwrap().is_empty());
    assert_eq!(
        harness.error_queue_envelopes(SALES, 1).await.unwrap().len(),
        1,
        "the limit holds"
    );
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn harness_wait_until_quiet_waits_for_a_delayed_retry() {
    let harness = TestHarness::builder()
        .host([SHIPPING])
        .configure(|bus| {
            bus.endpoint(SHIPPING, |e| {
                e.immediate_retries(0)
                    .delayed_retries(1, Duration::from_millis(300))
                    .retry_jitter(0.0)
            })
        })
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    harness
        .send(Ship {
            id: 4,
            fail_times: 1,
        })
        .await
        .unwrap();
    harness.wait_until_quiet().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "quiet only after the retry's delay: {:?}",
        started.elapsed()
    );
    assert_eq!(
        harness.handled::<Ship>(),
        [Ship {
            id: 4,
            fail_times: 1
        }]
    );
    assert!(harness
        .activity()
        .iter()
        .any(|a| matches!(a, Activity::Retried { endpoint, .. } if endpoint == SHIPPING)));
    let outcomes: Vec<bool> = harness
        .attempts::<Ship>()
        .iter()
        .map(|a| a.outcome.is_ok())
        .collect();
    assert_eq!(outcomes, [false, true]);
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn harness_wait_until_quiet_times_out_listing_what_is_still_running() {
    let calls = Calls::default();
    let harness = TestHarness::builder()
        .host([SLEEPY])
        .configure({
            let calls = calls.clone();
            move |bus| bus.state(calls).shutdown_grace(Duration::from_millis(50))
        })
        .start()
        .await
        .unwrap();
    harness.send(Sleep { millis: 10_000 }).await.unwrap();
    harness
        .wait_until("the handler to start", |_| {
            calls.0.load(Ordering::SeqCst) == 1
        })
        .await
        .unwrap();
    let error = harness
        .within(Duration::from_millis(200))
        .wait_until_quiet()
        .await
        .unwrap_err();
    let timeout = error.as_timeout().expect("a timeout");
    assert!(timeout.what.starts_with("the bus to be quiet"), "{error}");
    assert_eq!(timeout.seen.in_flight, 1);
    assert_eq!(timeout.seen.pending.len(), 1);
    assert_eq!(timeout.seen.pending[0].endpoint, SLEEPY);
    assert_eq!(timeout.seen.pending[0].message_type, "t.harness.Sleep");
    assert!(
        error
            .to_string()
            .contains("not handled yet: t.harness.Sleep"),
        "{error}"
    );
    let report = harness.stop().await.unwrap();
    assert!(
        !report.shutdown.drained,
        "the sleeping handler was abandoned"
    );
}

#[tokio::test]
async fn harness_records_attempts_refused_by_a_layer_of_the_test() {
    let harness = TestHarness::builder()
        .host([SALES])
        .configure(|bus| bus.layer(RequireTenant))
        .start()
        .await
        .unwrap();
    harness
        .send(PlaceOrder { id: 8, quantity: 1 })
        .await
        .unwrap();
    let failed = harness.wait_for_failed::<PlaceOrder>().await.unwrap();
    assert_eq!(failed.failure.reason, "rejected");
    assert_eq!(failed.failure.error, "no tenant");
    assert_eq!(failed.failure.handler.as_deref(), Some("require-tenant"));
    let attempts = harness.attempts::<PlaceOrder>();
    assert_eq!(attempts.len(), 1);
    let refused = attempts[0].outcome.as_ref().unwrap_err();
    assert_eq!(refused.reason, FailureReason::Rejected);
    assert!(refused.unrecoverable);
    assert!(harness.published::<OrderPlaced>().is_empty());
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn harness_sees_a_message_that_fails_its_checks_reach_the_error_queue() {
    let harness = TestHarness::start([SALES]).await.unwrap();
    let headers = Headers {
        message_id: "not-json".into(),
        message_type: "t.harness.PlaceOrder".into(),
        content_type: "application/json".into(),
        ..Headers::default()
    };
    harness
        .bus()
        .transport()
        .send(Outgoing {
            destination: Destination::Endpoint(SALES.into()),
            envelope: Envelope::from_bytes(headers, "{not json"),
            delay: None,
            deliver_at: None,
        })
        .await
        .unwrap();
    harness.wait_until_quiet().await.unwrap();
    let moved: Vec<Activity> = harness
        .activity()
        .into_iter()
        .filter(|a| matches!(a, Activity::Failed { .. }))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].envelope().headers.message_id, "not-json");
    assert_eq!(
        moved[0].envelope().headers.get(header::FAILURE_REASON),
        Some("deserialization-failed")
    );
    assert!(
        harness.attempts::<PlaceOrder>().is_empty(),
        "no attempt was made"
    );
    assert!(
        harness.failed::<PlaceOrder>().is_empty(),
        "a body that does not decode is not a PlaceOrder"
    );
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn harness_on_a_typed_memory_transport_reads_typed_bodies() {
    let transport = MemoryTransport::new();
    let harness = TestHarness::builder()
        .host([SALES, BILLING])
        .transport(transport.clone())
        .start()
        .await
        .unwrap();
    assert!(
        harness.memory().is_some(),
        "known as an in-memory transport"
    );
    harness
        .send(PlaceOrder { id: 3, quantity: 1 })
        .await
        .unwrap();
    assert_eq!(
        harness.wait_for_handled::<OrderPlaced>().await.unwrap(),
        OrderPlaced { id: 3 }
    );
    assert!(matches!(
        harness.activity()[0].envelope().body,
        Body::Message(_)
    ));
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn harness_stop_tears_down_what_the_bus_declared() {
    let transport = MemoryTransport::new().serialize(true);
    let harness = TestHarness::builder()
        .host([SALES])
        .memory(transport.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(transport.depth(SALES), Some(0));
    let report = harness.stop().await.unwrap();
    assert!(report.shutdown.drained);
    let removed: Vec<String> = report.removed.iter().map(|d| d.name.clone()).collect();
    assert!(removed.contains(&SALES.to_string()), "{removed:?}");
    assert_eq!(transport.depth(SALES), None, "the queue is gone");
    // What was seen stays readable, and stopping again does no harm.
    assert!(harness.activity().is_empty());
    harness.stop().await.unwrap();

    let kept = MemoryTransport::new();
    let harness = TestHarness::builder()
        .host([SALES])
        .memory(kept.clone())
        .keep_topology()
        .start()
        .await
        .unwrap();
    let report = harness.stop().await.unwrap();
    assert!(report.removed.is_empty());
    assert_eq!(kept.depth(SALES), Some(0), "the queue stays");
}

#[tokio::test]
async fn harness_from_config_isolates_each_harness_under_its_own_namespace() {
    async fn start() -> Option<TestHarness> {
        match TestHarness::builder()
            .host([SALES])
            .from_config()
            .start()
            .await
        {
            Ok(harness) => Some(harness),
            Err(HarnessError::Config(e)) if std::env::var("BUS_REQUIRE_BROKERS").is_err() => {
                eprintln!("skipped: the configured transport is unreachable: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (Some(first), Some(second)) = (start().await, start().await) else {
        return;
    };
    let (a, b) = (first.namespace().unwrap(), second.namespace().unwrap());
    assert!(a.contains("test-") && b.contains("test-"), "{a} {b}");
    assert_ne!(a, b);
    assert!(first.configured().is_some());

    first
        .send(PlaceOrder {
            id: 100,
            quantity: 1,
        })
        .await
        .unwrap();
    second
        .send(PlaceOrder {
            id: 200,
            quantity: 1,
        })
        .await
        .unwrap();
    first.wait_until_quiet().await.unwrap();
    second.wait_until_quiet().await.unwrap();
    let ids =
        |h: &TestHarness| -> Vec<u32> { h.handled::<PlaceOrder>().iter().map(|o| o.id).collect() };
    assert_eq!(ids(&first), [100], "each bus handles its own order only");
    assert_eq!(ids(&second), [200]);
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

#[tokio::test]
async fn harness_from_memory_settings_encodes_messages_by_default() {
    let harness = TestHarness::builder()
        .host([SALES])
        .settings(bus_transport_config::TransportSettings::default())
        .namespace("unit")
        .start()
        .await
        .unwrap();
    assert_eq!(harness.namespace(), Some("unit"));
    assert!(harness.memory().is_some());
    harness
        .send(PlaceOrder { id: 1, quantity: 1 })
        .await
        .unwrap();
    harness.wait_for_handled::<PlaceOrder>().await.unwrap();
    assert!(matches!(
        harness.activity()[0].envelope().body,
        Body::Bytes(_)
    ));
    harness.stop().await.unwrap();
}
