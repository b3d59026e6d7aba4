//! The all-in-one shop demo on the embedded in-memory transport.
//!
//! A client places orders; sales, billing and shipping run as three endpoints in one process.
//! One order fails once and succeeds on retry; one is poison and ends in the error queue.

use std::time::{Duration, Instant};

use bus_core::{decode_envelope, header, Bus, BusError, SendOptions};
use bus_examples::messages::PlaceOrder;
use bus_examples::sales::FLAKY_SKU;
use bus_examples::trace::ShopStats;
use bus_transport_memory::MemoryTransport;

#[tokio::main]
async fn main() -> Result<(), BusError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_target(false)
        .compact()
        .init();

    let transport = MemoryTransport::new();
    let stats = ShopStats::default();
    let bus = Bus::builder()
        .transport(transport.clone())
        .state(stats.clone())
        .endpoint("sales", |e| {
            e.immediate_retries(1)
                .delayed_retries(1, Duration::from_millis(200))
        })
        .start()
        .await?;

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
    ];
    for (order_id, customer, sku, quantity, unit_price_cents) in orders {
        println!("client: PlaceOrder #{order_id} ({customer}, {quantity} x {sku})");
        bus.send_with(
            PlaceOrder {
                order_id,
                customer: customer.into(),
                sku: sku.into(),
                quantity,
                unit_price_cents,
            },
            SendOptions::new().correlation_id(format!("order-{order_id}")),
        )
        .await?;
    }
    println!();

    let good = orders.iter().filter(|o| o.3 > 0).count() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (stats.shipments() < good || transport.error_queue("sales").is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = bus.shutdown().await;

    let bus_stats = bus.stats();
    println!("\nsummary");
    println!("  orders placed     {}", orders.len());
    println!("  orders accepted   {}", stats.orders());
    println!("  invoices          {}", stats.invoices());
    println!("  parcels packed    {}", stats.parcels());
    println!("  shipments         {}", stats.shipments());
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
    let dead = transport.error_queue("sales");
    println!("  error queue sales {} message(s)", dead.len());
    for envelope in &dead {
        let h = &envelope.headers;
        let message = decode_envelope(bus.codecs(), envelope)
            .map(|m| format!("{m:?}"))
            .unwrap_or_else(|e| format!("<undecodable: {e}>"));
        println!("    - {} {}", h.message_type, message);
        println!(
            "      corr={} reason={} attempts={} error={:?}",
            h.correlation_id.as_deref().unwrap_or("-"),
            h.get(header::FAILURE_REASON).unwrap_or("-"),
            h.get(header::FAILURE_ATTEMPTS).unwrap_or("-"),
            h.get(header::FAILURE_ERROR).unwrap_or("-"),
        );
    }
    if stats.shipments() != good || dead.len() != 1 {
        eprintln!("the demo did not reach its expected end state");
        std::process::exit(1);
    }
    Ok(())
}
