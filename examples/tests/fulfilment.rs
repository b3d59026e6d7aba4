//! The fulfilment saga through the test harness, in the shop's bus as the binaries set it up
//! (`shop_bus_with_storage`, a `MemoryStorage` the tests look into): an order ships once it is
//! placed and paid, in either order; an unpaid order is cancelled when its payment window
//! closes; a payment after that ships nothing.
//!
//! The orders are the unpaid customer's, whose payment billing never collects: each test pays
//! (or does not) itself, when it wants to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{MemoryStorage, Saga};
use bus_examples::billing::UNPAID_CUSTOMER;
use bus_examples::fulfilment::{Fulfilment, PAYMENT_WINDOW};
use bus_examples::messages::{
    CancelOrder, GetOrderStatus, OrderPlaced, OrderShipped, PaymentOverdue, PaymentReceived,
    PlaceOrder, ShipOrder,
};
use bus_examples::service::shop_bus_with_storage;
use bus_examples::trace::ShopStats;
use bus_testing::TestHarness;
use bus_transport_memory::MemoryTransport;

/// Long enough for a payment window to close and what follows to be handled.
const AFTER_THE_WINDOW: Duration = Duration::from_secs(15);

/// The shop's bus in a harness, with its storage.
async fn shop(stats: &ShopStats) -> (TestHarness, MemoryStorage) {
    let storage = MemoryStorage::new();
    // `shop_bus_with_storage` wants a transport; the harness replaces it with its own.
    let builder = shop_bus_with_storage(Arc::new(MemoryTransport::new()), stats, storage.clone());
    let harness = TestHarness::builder()
        .bus_builder(builder)
        .host(["sales", "billing", "fulfilment", "shipping"])
        .wait_timeout(AFTER_THE_WINDOW)
        .start()
        .await
        .expect("the shop starts");
    (harness, storage)
}

/// An order billing invoices without collecting its payment.
fn unpaid_order(order_id: u32) -> PlaceOrder {
    PlaceOrder {
        order_id,
        customer: UNPAID_CUSTOMER.into(),
        sku: "lamp".into(),
        quantity: 1,
        unit_price_cents: 3_500,
    }
}

fn payment(order_id: u32) -> PaymentReceived {
    PaymentReceived {
        order_id,
        amount_cents: 3_500,
    }
}

/// The order's saga instance, while it runs.
fn instance(storage: &MemoryStorage, order_id: u32) -> Option<Fulfilment> {
    storage
        .saga(Fulfilment::NAME, &order_id.to_string())
        .map(|record| serde_json::from_slice(&record.state).expect("the state reads back"))
}

async fn status(harness: &TestHarness, order_id: u32) -> String {
    harness
        .bus()
        .request(GetOrderStatus { order_id })
        .await
        .unwrap()
        .state
}

#[tokio::test]
async fn a_payment_before_the_placement_ships_the_order_once() {
    let stats = ShopStats::default();
    let (harness, storage) = shop(&stats).await;
    harness.publish(payment(3001)).await.unwrap();
    harness
        .wait_until("the payment started the saga", |_| {
            instance(&storage, 3001).is_some()
        })
        .await
        .unwrap();
    assert_eq!(
        instance(&storage, 3001),
        Some(Fulfilment {
            order_id: 3001,
            placed: false,
            paid: true,
        })
    );

    harness.send(unpaid_order(3001)).await.unwrap();
    let shipped = harness.wait_for_published::<OrderShipped>().await.unwrap();
    assert_eq!(shipped.order_id, 3001);
    // Quiet once the payment window closed too: its timeout found the saga completed.
    harness.wait_until_quiet().await.unwrap();

    assert_eq!(harness.sent::<ShipOrder>(), [ShipOrder { order_id: 3001 }]);
    assert_eq!(harness.published::<OrderShipped>().len(), 1);
    assert!(harness.sent::<CancelOrder>().is_empty());
    assert_eq!(stats.shipments(), 1);
    assert_eq!(storage.running(Fulfilment::NAME), 0, "completed");
    assert_eq!(status(&harness, 3001).await, "accepted");
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn a_placement_before_the_payment_ships_the_order_once() {
    let stats = ShopStats::default();
    let (harness, storage) = shop(&stats).await;
    harness.send(unpaid_order(3002)).await.unwrap();
    harness
        .wait_until("the placement started the saga", |_| {
            instance(&storage, 3002).is_some()
        })
        .await
        .unwrap();
    assert_eq!(
        instance(&storage, 3002),
        Some(Fulfilment {
            order_id: 3002,
            placed: true,
            paid: false,
        })
    );
    assert_eq!(
        harness.sent::<PaymentOverdue>(),
        [PaymentOverdue { order_id: 3002 }],
        "the payment window opened"
    );

    harness.publish(payment(3002)).await.unwrap();
    let shipped = harness.wait_for_published::<OrderShipped>().await.unwrap();
    assert_eq!(shipped.order_id, 3002);
    harness.wait_until_quiet().await.unwrap();

    assert_eq!(harness.sent::<ShipOrder>(), [ShipOrder { order_id: 3002 }]);
    assert_eq!(harness.published::<OrderShipped>().len(), 1);
    // The window closed after all, and found nothing to do.
    assert_eq!(stats.windows_closed(), 1);
    assert!(harness.sent::<CancelOrder>().is_empty());
    assert_eq!(storage.running(Fulfilment::NAME), 0);
    assert_eq!(status(&harness, 3002).await, "accepted");
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn an_unpaid_order_is_cancelled_when_its_payment_window_closes_and_never_ships() {
    let stats = ShopStats::default();
    let (harness, storage) = shop(&stats).await;
    let placed_at = Instant::now();
    harness.send(unpaid_order(3003)).await.unwrap();

    let cancel = harness.wait_for_sent::<CancelOrder>().await.unwrap();
    assert_eq!(cancel, CancelOrder { order_id: 3003 });
    assert!(
        placed_at.elapsed() >= PAYMENT_WINDOW,
        "cancelled after {:?}, before the window of {PAYMENT_WINDOW:?} closed",
        placed_at.elapsed()
    );
    harness.wait_until_quiet().await.unwrap();

    assert!(harness.sent::<ShipOrder>().is_empty());
    assert!(harness.published::<OrderShipped>().is_empty());
    assert_eq!(stats.shipments(), 0);
    assert_eq!(stats.cancelled_orders(), [3003]);
    assert_eq!(storage.running(Fulfilment::NAME), 0, "completed");
    assert_eq!(status(&harness, 3003).await, "cancelled");
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn a_payment_after_the_cancellation_does_not_ship_the_order() {
    let stats = ShopStats::default();
    let (harness, storage) = shop(&stats).await;
    harness.send(unpaid_order(3004)).await.unwrap();
    harness.wait_for_sent::<CancelOrder>().await.unwrap();
    harness.wait_until_quiet().await.unwrap();

    harness.publish(payment(3004)).await.unwrap();
    // The late payment starts an instance of its own, which waits a window for an order that
    // never comes, and ends.
    harness.wait_until_quiet().await.unwrap();

    assert!(harness.sent::<ShipOrder>().is_empty());
    assert!(harness.published::<OrderShipped>().is_empty());
    assert_eq!(stats.shipments(), 0);
    assert_eq!(
        harness.sent::<PaymentOverdue>(),
        [
            PaymentOverdue { order_id: 3004 },
            PaymentOverdue { order_id: 3004 }
        ]
    );
    assert_eq!(
        harness.sent::<CancelOrder>(),
        [CancelOrder { order_id: 3004 }],
        "cancelled once"
    );
    assert_eq!(storage.running(Fulfilment::NAME), 0, "none left behind");
    assert_eq!(status(&harness, 3004).await, "cancelled");
    harness.stop().await.unwrap();
}

#[tokio::test]
async fn placements_and_payments_arriving_together_ship_each_order_once() {
    let stats = ShopStats::default();
    let (harness, storage) = shop(&stats).await;
    let orders: Vec<u32> = (3101..3121).collect();
    // Both messages of an order at once: whichever commits second either sees the first's
    // state, or conflicts with it and is retried on that state.
    for &order_id in &orders {
        let placed = OrderPlaced {
            order_id,
            customer: UNPAID_CUSTOMER.into(),
            sku: "lamp".into(),
            quantity: 1,
            total_cents: 3_500,
        };
        let (placed, paid) =
            tokio::join!(harness.publish(placed), harness.publish(payment(order_id)));
        placed.unwrap();
        paid.unwrap();
    }
    harness.wait_until_quiet().await.unwrap();

    let mut shipped: Vec<u32> = harness
        .sent::<ShipOrder>()
        .iter()
        .map(|s| s.order_id)
        .collect();
    shipped.sort();
    assert_eq!(shipped, orders);
    assert!(harness.sent::<CancelOrder>().is_empty());
    assert_eq!(storage.running(Fulfilment::NAME), 0);
    harness.stop().await.unwrap();
}
