//! The OrderService: validates orders and announces them. It knows nothing of who listens.

use bus_core::{HandlerError, MessageContext, State};

use crate::messages::{CancelOrder, GetOrderStatus, OrderPlaced, OrderStatus, PlaceOrder};
use crate::trace::{line, ShopStats};

/// The SKU our flaky inventory lookup times out on, once.
pub const FLAKY_SKU: &str = "lamp-flaky";

/// Handle `PlaceOrder`: check it, then publish `OrderPlaced` (released once this succeeds).
#[bus_core::handler]
pub async fn place_order(
    cmd: PlaceOrder,
    ctx: MessageContext,
    State(stats): State<ShopStats>,
) -> Result<(), HandlerError> {
    if cmd.sku == FLAKY_SKU && ctx.attempt() == 1 {
        line(
            &ctx,
            format!(
                "order #{} inventory lookup timed out (transient)",
                cmd.order_id
            ),
        );
        return Err(HandlerError::new("inventory service timed out"));
    }
    if cmd.quantity == 0 {
        line(
            &ctx,
            format!("order #{} rejected: quantity 0", cmd.order_id),
        );
        return Err(HandlerError::new(format!(
            "order #{} has quantity 0",
            cmd.order_id
        )));
    }
    let total_cents = cmd.unit_price_cents * u64::from(cmd.quantity);
    ctx.publish(OrderPlaced {
        order_id: cmd.order_id,
        customer: cmd.customer.clone(),
        sku: cmd.sku.clone(),
        quantity: cmd.quantity,
        total_cents,
    })
    .await?;
    stats.order(cmd.order_id);
    line(
        &ctx,
        format!(
            "order #{} accepted for {} ({} x {}) -> OrderPlaced",
            cmd.order_id, cmd.customer, cmd.quantity, cmd.sku
        ),
    );
    Ok(())
}

/// Handle `CancelOrder`: fulfilment gave up on the order's payment.
#[bus_core::handler]
pub async fn cancel_order(
    cmd: CancelOrder,
    ctx: MessageContext,
    State(stats): State<ShopStats>,
) -> Result<(), HandlerError> {
    stats.cancel(cmd.order_id);
    line(&ctx, format!("order #{} cancelled", cmd.order_id));
    Ok(())
}

/// Answer `GetOrderStatus`: the reply goes back to the asking instance alone.
#[bus_core::handler]
pub async fn order_status(
    query: GetOrderStatus,
    State(stats): State<ShopStats>,
) -> Result<OrderStatus, HandlerError> {
    let state = if stats.cancelled(query.order_id) {
        "cancelled"
    } else if stats.accepted(query.order_id) {
        "accepted"
    } else {
        "unknown"
    };
    Ok(OrderStatus {
        order_id: query.order_id,
        state: state.into(),
    })
}
