//! The ShippingService: prepares a parcel when an order is placed, ships it once invoiced.
//! Added after sales and billing existed; neither changed for it.

use bus_core::{HandlerError, MessageContext, State};

use crate::messages::{InvoiceCreated, OrderPlaced, OrderShipped};
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

/// Handle `InvoiceCreated`: ship the order.
#[bus_core::handler(endpoint = "shipping")]
pub async fn ship_order(
    evt: InvoiceCreated,
    ctx: MessageContext,
    State(stats): State<ShopStats>,
) -> Result<(), HandlerError> {
    let tracking = format!("TRK{:06}", u64::from(evt.order_id) * 7919 % 1_000_000);
    ctx.publish(OrderShipped {
        order_id: evt.order_id,
        tracking: tracking.clone(),
    })
    .await?;
    stats.shipment();
    line(
        &ctx,
        format!(
            "order #{} shipped, tracking {tracking} -> OrderShipped",
            evt.order_id
        ),
    );
    Ok(())
}
