//! The ShippingService: prepares a parcel when an order is placed, ships it when fulfilment
//! says so (placed and paid: see [`crate::fulfilment`]). Added after sales and billing
//! existed; neither changed for it.

use std::time::Duration;

use bus_core::{HandlerError, MessageContext, SendOptions, State};

use crate::messages::{OrderPlaced, OrderShipped, RemindDelivery, ShipOrder};

/// How long after shipping the delivery reminder is due (a real shop would wait days).
pub const REMINDER_AFTER: Duration = Duration::from_secs(1);
use crate::trace::{line, ShopStats};

/// Handle `OrderPlaced`: pick and pack.
#[bus_core::handler(endpoint = "shipping")]
pub async fn prepare_parcel(
    evt: OrderPlaced,
    ctx: MessageContext,
    State(stats): State<ShopStats>,
) -> Result<(), HandlerError> {
    stats.parcel();
    line(
        &ctx,
        format!(
            "parcel for order #{} packed ({} x {})",
            evt.order_id, evt.quantity, evt.sku
        ),
    );
    Ok(())
}

/// Handle `ShipOrder`: ship the order.
#[bus_core::handler]
pub async fn ship_order(
    cmd: ShipOrder,
    ctx: MessageContext,
    State(stats): State<ShopStats>,
) -> Result<(), HandlerError> {
    let tracking = format!("TRK{:06}", u64::from(cmd.order_id) * 7919 % 1_000_000);
    ctx.publish(OrderShipped {
        order_id: cmd.order_id,
        tracking: tracking.clone(),
    })
    .await?;
    // Scheduled: on a broker it waits there, so a restart of this service does not lose it.
    ctx.send_with(
        RemindDelivery {
            order_id: cmd.order_id,
            tracking: tracking.clone(),
        },
        SendOptions::new().deliver_after(REMINDER_AFTER),
    )
    .await?;
    stats.shipment();
    line(
        &ctx,
        format!(
            "order #{} shipped, tracking {tracking} -> OrderShipped",
            cmd.order_id
        ),
    );
    Ok(())
}

/// Handle `RemindDelivery`, due a while after the order shipped.
#[bus_core::handler]
pub async fn remind_delivery(
    cmd: RemindDelivery,
    ctx: MessageContext,
    State(stats): State<ShopStats>,
) -> Result<(), HandlerError> {
    stats.reminder();
    line(
        &ctx,
        format!(
            "reminder: is order #{} ({}) delivered yet?",
            cmd.order_id, cmd.tracking
        ),
    );
    Ok(())
}
