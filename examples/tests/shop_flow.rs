//! The shop's flows through the test harness, with all its endpoints in one bus set up as the
//! binaries set them up (`shop_bus`): an order leads to its invoice, its payment and, through
//! the fulfilment saga, its shipment; a flaky inventory lookup recovers on retry; a poison
//! order ends in the `sales` error queue; an unpaid order is cancelled.

use std::sync::Arc;
use std::time::Duration;

use bus_core::{FailureReason, SendOptions};
use bus_examples::billing::UNPAID_CUSTOMER;
use bus_examples::fulfilment::PAYMENT_WINDOW;
use bus_examples::messages::{
    CancelOrder, GetOrderStatus, InvoiceCreated, OrderPlaced, OrderShipped, PaymentReceived,
    PlaceOrder, RemindDelivery, ShipOrder,
};
use bus_examples::sales::FLAKY_SKU;
use bus_examples::service::shop_bus;
use bus_examples::shipping::REMINDER_AFTER;
use bus_examples::trace::ShopStats;
use bus_testing::TestHarness;
use bus_transport_memory::MemoryTransport;

/// The shop's bus in a harness; `stats` are the services' counters.
async fn shop(stats: &ShopStats) -> TestHarness {
    // `shop_bus` wants a transport; the harness replaces it with its own.
    let builder = shop_bus(Arc::new(MemoryTransport::new()), stats);
    TestHarness::builder()
        .bus_builder(builder)
        .host(["sales", "billing", "fulfilment", "shipping"])
        .start()
        .await
        .expect("the shop starts")
}

fn order(order_id: u32, sku: &str, quantity: u32, unit_price_cents: u64) -> PlaceOrder {
    PlaceOrder {
        order_id,
        customer: "ada".into(),
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

#[tokio::test]
async fn placing_an_order_leads_to_an_invoice_a_payment_and_a_shipment() {
    let stats = ShopStats::default();
    let harness = shop(&stats).await;
    harness
        .bus()
        .send_with(
            order(1001, "keyboard", 2, 4_900),
            SendOptions::new().correlation_id("order-1001"),
        )
        .await
        .unwrap();

    let shipped = harness.wait_for_published::<OrderShipped>().await.unwrap();
    assert_eq!(
        shipped,
        OrderShipped {
            order_id: 1001,
            tracking: format!("TRK{:06}", 1001u64 * 7919 % 1_000_000),
        }
    );
    harness.wait_until_quiet().await.unwrap();

    assert_eq!(
        harness.published::<OrderPlaced>(),
        [OrderPlaced {
            order_id: 1001,
            customer: "ada".into(),
            sku: "keyboard".into(),
            quantity: 2,
            total_cents: 9_800,
        }]
    );
    assert_eq!(
        harness.published::<InvoiceCreated>(),
        [InvoiceCreated {
            invoice_id: "INV-1001".into(),
            order_id: 1001,
            amount_cents: 9_800,
        }]
    );
    assert_eq!(
        harness.published::<PaymentReceived>(),
        [PaymentReceived {
            order_id: 1001,
            amount_cents: 9_800,
        }]
    );
    assert_eq!(harness.sent::<ShipOrder>(), [ShipOrder { order_id: 1001 }]);
    // Billing, fulfilment and shipping each handle their own copy of the event (fulfilment
    // perhaps twice, when the payment changed the saga's state first).
    let mut handlers: Vec<String> = harness
        .attempts::<OrderPlaced>()
        .into_iter()
        .filter(|a| a.outcome.is_ok())
        .map(|a| a.endpoint)
        .collect();
    handlers.sort();
    handlers.dedup();
    assert_eq!(handlers, ["billing", "fulfilment", "shipping"]);
    // The correlation id travels with everything the order caused, through the saga too.
    for attempt in harness.attempts::<ShipOrder>() {
        assert_eq!(attempt.headers.correlation_id(), Some("order-1001"));
    }
    assert_eq!(
        (
            stats.orders(),
            stats.invoices(),
            stats.parcels(),
            stats.shipments()
        ),
        (1, 1, 1, 1)
    );
    assert!(harness.failed::<PlaceOrder>().is_empty());
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn a_poison_order_ends_in_the_sales_error_queue_after_its_retries() {
    let stats = ShopStats::default();
    let harness = shop(&stats).await;
    harness.send(order(1004, "chair", 0, 12_000)).await.unwrap();

    let failed = harness.wait_for_failed::<PlaceOrder>().await.unwrap();
    assert_eq!(failed.message.order_id, 1004);
    assert_eq!(failed.failure.endpoint, "sales");
    assert_eq!(
        failed.failure.failure_reason(),
        Some(FailureReason::HandlerError)
    );
    assert_eq!(failed.failure.error, "order #1004 has quantity 0");
    // `sales` retries once at once, then once after a delay: two rounds of two attempts.
    assert_eq!(failed.failure.attempts, 4);
    let numbers: Vec<u32> = harness
        .attempts::<PlaceOrder>()
        .iter()
        .map(|a| a.attempt)
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4]);

    let queued = harness.error_queue::<PlaceOrder>("sales").await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].message, order(1004, "chair", 0, 12_000));
    harness.wait_until_quiet().await.unwrap();
    assert!(harness.published::<OrderPlaced>().is_empty());
    assert_eq!(stats.orders(), 0);
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn a_flaky_inventory_lookup_recovers_on_the_immediate_retry() {
    let stats = ShopStats::default();
    let harness = shop(&stats).await;
    harness
        .send(order(1003, FLAKY_SKU, 1, 3_500))
        .await
        .unwrap();

    harness
        .wait_for_published_where(|s: &OrderShipped| s.order_id == 1003)
        .await
        .unwrap();
    let attempts = harness.attempts::<PlaceOrder>();
    assert_eq!(attempts.len(), 2);
    let first = attempts[0].outcome.as_ref().unwrap_err();
    assert_eq!(first.error, "inventory service timed out");
    assert_eq!(attempts[1].attempt, 2);
    assert!(attempts[1].outcome.is_ok());
    assert!(harness.failed::<PlaceOrder>().is_empty());
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn the_demo_orders_end_with_four_shipments_one_poison_order_and_one_cancelled() {
    let stats = ShopStats::default();
    let harness = shop(&stats).await;
    let orders = [
        order(1001, "keyboard", 1, 4_900),
        order(1002, "monitor", 2, 18_900),
        order(1003, FLAKY_SKU, 1, 3_500),
        order(1004, "chair", 0, 12_000),
        order(1005, "desk", 1, 29_900),
        PlaceOrder {
            customer: UNPAID_CUSTOMER.into(),
            ..order(1006, "lamp", 1, 3_500)
        },
    ];
    for o in orders {
        harness.send(o).await.unwrap();
    }
    // The poison order's delayed retry and the payment windows are part of the work: quiet
    // means they are done.
    harness
        .within(PAYMENT_WINDOW + Duration::from_secs(20))
        .wait_until_quiet()
        .await
        .unwrap();

    let mut shipped: Vec<u32> = harness
        .published::<OrderShipped>()
        .iter()
        .map(|s| s.order_id)
        .collect();
    shipped.sort();
    assert_eq!(shipped, [1001, 1002, 1003, 1005]);
    let failed: Vec<u32> = harness
        .failed::<PlaceOrder>()
        .iter()
        .map(|f| f.message.order_id)
        .collect();
    assert_eq!(failed, [1004]);
    assert_eq!(stats.shipments(), 4);
    assert_eq!(
        harness.sent::<CancelOrder>(),
        [CancelOrder { order_id: 1006 }]
    );
    assert_eq!(stats.cancelled_orders(), [1006]);
    assert_eq!(
        stats.windows_closed(),
        5,
        "one payment window per accepted order"
    );
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn the_shop_answers_order_status_requests_and_reminds_of_deliveries_in_memory() {
    let stats = ShopStats::default();
    let harness = shop(&stats).await;
    harness
        .send(order(1001, "keyboard", 1, 4_900))
        .await
        .unwrap();
    harness
        .wait_until("the order shipped", |h| {
            h.published::<OrderShipped>().len() == 1
        })
        .await
        .unwrap();
    let bus = harness.bus();
    let accepted = bus
        .request(GetOrderStatus { order_id: 1001 })
        .await
        .unwrap();
    assert_eq!(accepted.state, "accepted");
    let unknown = bus.request(GetOrderStatus { order_id: 9 }).await.unwrap();
    assert_eq!(unknown.state, "unknown");
    // The reminder is scheduled as the order ships, and comes due a moment later.
    let reminder = harness
        .within(REMINDER_AFTER + Duration::from_secs(10))
        .wait_for_sent::<RemindDelivery>()
        .await
        .unwrap();
    assert_eq!(reminder.order_id, 1001);
    harness
        .within(REMINDER_AFTER + Duration::from_secs(10))
        .wait_until("the reminder came due", |_| stats.reminders() == 1)
        .await
        .unwrap();
    harness.stop().await.unwrap();
}
