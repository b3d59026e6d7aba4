//! The InvoiceService: bills every placed order.

use bus_core::{HandlerError, MessageContext, State};

use crate::messages::{InvoiceCreated, OrderPlaced};
use crate::trace::{line, ShopStats};

/// Handle `OrderPlaced`: issue an invoice.
#[bus_core::handler(endpoint = "billing")]
pub async fn create_invoice(
    evt: OrderPlaced,
    ctx: MessageContext,
    State(stats): State<ShopStats>,
) -> Result<(), HandlerError> {
    let invoice_id = format!("INV-{}", evt.order_id);
    ctx.publish(InvoiceCreated {
        invoice_id: invoice_id.clone(),
        order_id: evt.order_id,
        amount_cents: evt.total_cents,
    })
    .await?;
    stats.invoice();
    line(
        &ctx,
        format!(
            "{invoice_id} for order #{} over {}.{:02} -> InvoiceCreated",
            evt.order_id,
            evt.total_cents / 100,
            evt.total_cents % 100
        ),
    );
    Ok(())
}
