//! Each handler of the shop on its own, with a test context: what it publishes, when it
//! fails, and what it counts.

use bus_core::State;
use bus_examples::billing::{create_invoice, UNPAID_CUSTOMER};
use bus_examples::messages::{
    CancelOrder, GetOrderStatus, InvoiceCreated, OrderPlaced, OrderShipped, PaymentReceived,
    PlaceOrder, ShipOrder,
};
use bus_examples::sales::{cancel_order, order_status, place_order, FLAKY_SKU};
use bus_examples::shipping::{prepare_parcel, ship_order};
use bus_examples::trace::ShopStats;
use bus_testing::TestContext;

fn order(sku: &str, quantity: u32) -> PlaceOrder {
    PlaceOrder {
        order_id: 7,
        customer: "grace".into(),
        sku: sku.into(),
        quantity,
        unit_price_cents: 18_900,
    }
}

fn placed() -> OrderPlaced {
    OrderPlaced {
        order_id: 7,
        customer: "grace".into(),
        sku: "monitor".into(),
        quantity: 2,
        total_cents: 37_800,
    }
}

/// A context in `endpoint` with the shop's counters as state.
fn context(endpoint: &str, stats: &ShopStats) -> TestContext {
    TestContext::new()
        .endpoint(endpoint)
        .correlation_id("order-7")
        .state(stats.clone())
}

#[tokio::test]
async fn place_order_publishes_order_placed_with_the_total() {
    let stats = ShopStats::default();
    let test = context("sales", &stats).message::<PlaceOrder>();
    place_order(order("monitor", 2), test.context(), test.extract().unwrap())
        .await
        .unwrap();
    assert_eq!(test.published::<OrderPlaced>(), [placed()]);
    assert_eq!(
        test.outgoing()[0].envelope.headers.correlation_id(),
        Some("order-7")
    );
    assert_eq!(stats.orders(), 1);
}

#[tokio::test]
async fn place_order_fails_a_quantity_of_zero_and_publishes_nothing() {
    let stats = ShopStats::default();
    let test = context("sales", &stats);
    let error = place_order(order("monitor", 0), test.context(), test.extract().unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.message(), "order #7 has quantity 0");
    assert!(
        !error.is_unrecoverable(),
        "retried, then to the error queue"
    );
    assert!(test.outgoing().is_empty());
    assert_eq!(stats.orders(), 0);
}

#[tokio::test]
async fn place_order_fails_the_flaky_sku_only_on_the_first_attempt() {
    let stats = ShopStats::default();
    let first = context("sales", &stats);
    let error = place_order(
        order(FLAKY_SKU, 1),
        first.context(),
        first.extract().unwrap(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.message(), "inventory service timed out");
    assert!(first.published::<OrderPlaced>().is_empty());

    let retry = context("sales", &stats).attempt(2);
    place_order(
        order(FLAKY_SKU, 1),
        retry.context(),
        retry.extract().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(retry.published::<OrderPlaced>().len(), 1);
    assert_eq!(stats.orders(), 1);
}

#[tokio::test]
async fn create_invoice_publishes_an_invoice_and_its_payment_for_the_order_total() {
    let stats = ShopStats::default();
    let test = context("billing", &stats).message::<OrderPlaced>();
    create_invoice(placed(), test.context(), test.extract().unwrap())
        .await
        .unwrap();
    assert_eq!(
        test.published::<InvoiceCreated>(),
        [InvoiceCreated {
            invoice_id: "INV-7".into(),
            order_id: 7,
            amount_cents: 37_800,
        }]
    );
    assert_eq!(
        test.published::<PaymentReceived>(),
        [PaymentReceived {
            order_id: 7,
            amount_cents: 37_800,
        }]
    );
    assert_eq!((stats.invoices(), stats.payments()), (1, 1));
}

#[tokio::test]
async fn create_invoice_collects_no_payment_from_the_unpaid_customer() {
    let stats = ShopStats::default();
    let test = context("billing", &stats).message::<OrderPlaced>();
    let unpaid = OrderPlaced {
        customer: UNPAID_CUSTOMER.into(),
        ..placed()
    };
    create_invoice(unpaid, test.context(), test.extract().unwrap())
        .await
        .unwrap();
    assert_eq!(test.published::<InvoiceCreated>().len(), 1);
    assert!(test.published::<PaymentReceived>().is_empty());
    assert_eq!((stats.invoices(), stats.payments()), (1, 0));
}

#[tokio::test]
async fn a_cancelled_order_answers_cancelled_to_status_requests() {
    let stats = ShopStats::default();
    stats.order(7);
    let before = order_status(GetOrderStatus { order_id: 7 }, State(stats.clone()))
        .await
        .unwrap();
    assert_eq!(before.state, "accepted");

    let test = context("sales", &stats);
    cancel_order(
        CancelOrder { order_id: 7 },
        test.context(),
        test.extract().unwrap(),
    )
    .await
    .unwrap();
    assert!(test.outgoing().is_empty(), "cancelling announces nothing");
    let after = order_status(GetOrderStatus { order_id: 7 }, State(stats.clone()))
        .await
        .unwrap();
    assert_eq!(after.state, "cancelled");
    assert_eq!(stats.cancelled_orders(), [7]);
}

#[tokio::test]
async fn shipping_packs_on_order_placed_and_ships_on_ship_order() {
    let stats = ShopStats::default();
    let packing = context("shipping", &stats);
    prepare_parcel(placed(), packing.context(), packing.extract().unwrap())
        .await
        .unwrap();
    assert!(packing.outgoing().is_empty(), "packing announces nothing");
    assert_eq!((stats.parcels(), stats.shipments()), (1, 0));

    let shipping = context("shipping", &stats);
    ship_order(
        ShipOrder { order_id: 7 },
        shipping.context(),
        shipping.extract().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        shipping.published::<OrderShipped>(),
        [OrderShipped {
            order_id: 7,
            tracking: "TRK055433".into(),
        }]
    );
    assert_eq!(stats.shipments(), 1);
}
