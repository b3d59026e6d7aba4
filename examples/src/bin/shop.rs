//! The all-in-one shop demo: sales, billing, fulfilment and shipping as four endpoints of one
//! process, on the configured transport (the embedded in-memory one unless `BUS_TRANSPORT` or
//! `bus.toml` names a broker), with their units of work in memory.
//!
//! A client places orders. One order fails once and succeeds on retry; one is poison and ends
//! in the error queue. The fulfilment saga ships each order once it is placed and paid, and
//! cancels the one whose customer never pays when its payment window closes. The client then
//! asks sales where each order stands (request/response), and shipping's delivery reminders,
//! scheduled as each order ships, come due. The exit status says whether the demo reached
//! that end.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bus_core::{decode_envelope, header, MemoryStorage, Saga, SendOptions};
use bus_examples::billing::UNPAID_CUSTOMER;
use bus_examples::fulfilment::{Fulfilment, PAYMENT_WINDOW};
use bus_examples::messages::{GetOrderStatus, PlaceOrder};
use bus_examples::sales::FLAKY_SKU;
use bus_examples::service::{error_queue_location, init_tracing, shop_bus_with_storage};
use bus_examples::trace::ShopStats;
use bus_transport_config::TransportSettings;

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("off");
    let settings = match TransportSettings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("shop: {e}");
            return ExitCode::from(2);
        }
    };
    let transport = match settings.open("shop").await {
        Ok(transport) => transport,
        Err(e) => {
            eprintln!("shop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let memory = transport.as_memory().cloned();
    let stats = ShopStats::default();
    let storage = MemoryStorage::new();
    let bus = match shop_bus_with_storage(transport.shared(), &stats, storage.clone())
        .start()
        .await
    {
        Ok(bus) => bus,
        Err(e) => {
            eprintln!("shop: {e}");
            return ExitCode::FAILURE;
        }
    };

    println!(
        "shop demo: endpoints {:?} on the {} transport\n",
        bus.endpoint_names(),
        bus.transport().name()
    );
    let orders = [
        (1001, "ada", "keyboard", 1, 4_900),
        (1002, "grace", "monitor", 2, 18_900),
        (1003, "linus", FLAKY_SKU, 1, 3_500),
        (1004, "barbara", "chair", 0, 12_000),
        (1005, "ken", "desk", 1, 29_900),
        (1006, UNPAID_CUSTOMER, "lamp", 1, 3_500),
    ];
    for (order_id, customer, sku, quantity, unit_price_cents) in orders {
        println!("client: PlaceOrder #{order_id} ({customer}, {quantity} x {sku})");
        let sent = bus
            .send_with(
                PlaceOrder {
                    order_id,
                    customer: customer.into(),
                    sku: sku.into(),
                    quantity,
                    unit_price_cents,
                },
                SendOptions::new().correlation_id(format!("order-{order_id}")),
            )
            .await;
        if let Err(e) = sent {
            eprintln!("shop: sending order #{order_id} failed: {e}");
            bus.shutdown().await;
            let _ = transport.close().await;
            return ExitCode::FAILURE;
        }
    }
    println!();

    let accepted = orders.iter().filter(|o| o.3 > 0).count() as u64;
    let unpaid: Vec<u32> = orders
        .iter()
        .filter(|o| o.3 > 0 && o.1 == UNPAID_CUSTOMER)
        .map(|o| o.0)
        .collect();
    let good = accepted - unpaid.len() as u64;
    let deadline = Instant::now() + PAYMENT_WINDOW + Duration::from_secs(30);
    // Every order's payment window closes too, the shipped ones' included: none is left
    // scheduled on a broker for the next run to find.
    while (stats.shipments() < good
        || bus.stats().dead_lettered == 0
        || stats.windows_closed() < accepted
        || stats.cancelled_orders().len() < unpaid.len())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!();
    let mut statuses = 0;
    let mut cancelled_answers = Vec::new();
    for (order_id, ..) in orders {
        match bus.request(GetOrderStatus { order_id }).await {
            Ok(status) => {
                println!("client: order #{order_id} is {}", status.state);
                statuses += 1;
                if status.state == "cancelled" {
                    cancelled_answers.push(order_id);
                }
            }
            Err(e) => eprintln!("shop: asking for order #{order_id} failed: {e}"),
        }
    }
    println!();
    while stats.reminders() < good && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = bus.shutdown().await;
    let _ = transport.close().await;

    let bus_stats = bus.stats();
    println!("\nsummary");
    println!("  orders placed     {}", orders.len());
    println!("  orders accepted   {}", stats.orders());
    println!("  invoices          {}", stats.invoices());
    println!("  payments          {}", stats.payments());
    println!("  parcels packed    {}", stats.parcels());
    println!(
        "  shipments         {} (on fulfilment's ShipOrder: placed and paid)",
        stats.shipments()
    );
    println!(
        "  cancelled         {} ({:?}: not paid within {PAYMENT_WINDOW:?})",
        stats.cancelled_orders().len(),
        stats.cancelled_orders()
    );
    println!(
        "  windows closed    {} (sagas still running: {})",
        stats.windows_closed(),
        storage.running(Fulfilment::NAME)
    );
    println!("  status answers    {statuses}");
    println!("  reminders due     {}", stats.reminders());
    println!(
        "  failed attempts   {} (retried: immediately, then after a delay)",
        bus_stats.failed_attempts
    );
    println!("  delayed retries   {}", bus_stats.delayed_retries);
    println!(
        "  shutdown          {} in {:?}",
        if report.drained {
            "drained"
        } else {
            "abandoned in-flight work"
        },
        report.elapsed
    );
    let dead_ok = match &memory {
        Some(memory) => {
            let dead = memory.error_queue("sales");
            println!("  error queue sales {} message(s)", dead.len());
            for envelope in &dead {
                let h = &envelope.headers;
                let message = decode_envelope(bus.codecs(), envelope)
                    .map(|m| format!("{m:?}"))
                    .unwrap_or_else(|e| format!("<undecodable: {e}>"));
                println!("    - {} {}", h.message_type, message);
                println!(
                    "      corr={} reason={} attempts={} error={:?}",
                    h.correlation_id().unwrap_or("-"),
                    h.get(header::FAILURE_REASON).unwrap_or("-"),
                    h.get(header::FAILURE_ATTEMPTS).unwrap_or("-"),
                    h.get(header::FAILURE_ERROR).unwrap_or("-"),
                );
            }
            dead.len() == 1
        }
        None => {
            // On a broker the error queue is a queue like any other: this run can tell how
            // many messages it moved there, and the broker shows them.
            println!(
                "  to error queue    {} message(s) moved to the {} by this run (browse it in the broker)",
                bus_stats.dead_lettered,
                error_queue_location(&transport, "sales")
            );
            bus_stats.dead_lettered == 1
        }
    };
    if stats.shipments() != good
        || !dead_ok
        || statuses != orders.len()
        || stats.reminders() != good
        || stats.cancelled_orders() != unpaid
        || cancelled_answers != unpaid
        || stats.windows_closed() != accepted
        || storage.running(Fulfilment::NAME) != 0
    {
        eprintln!("the demo did not reach its expected end state");
        if memory.is_none() {
            eprintln!(
                "(on a broker, other processes consuming the same queues take part of the work: stop them, or run with BUS_TRANSPORT=memory)"
            );
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
