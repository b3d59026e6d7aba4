//! The InvoiceService: bills every placed order, and collects the payment of all but one
//! customer's.

use bus_core::{HandlerError, MessageContext, State};

use crate::messages::{InvoiceCreated, OrderPlaced, PaymentReceived};
use crate::trace::{line, ShopStats};

/// The customer whose payment never arrives: billing invoices the order and collects
/// nothing, so fulfilment cancels it once its payment window closes.
pub const UNPAID_CUSTOMER: &str = "mallory";

/// Handle `OrderPlaced`: issue an invoice, and collect its payment (a card payment, taken at
/// once), except from [`UNPAID_CUSTOMER`].
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
    let paid = evt.customer != UNPAID_CUSTOMER;
    if paid {
        ctx.publish(PaymentReceived {
            order_id: evt.order_id,
            amount_cents: evt.total_cents,
        })
        .await?;
    }
    stats.invoice();
    let payment = if paid {
        stats.payment();
        "paid -> InvoiceCreated, PaymentReceived"
    } else {
        "awaiting payment -> InvoiceCreated"
    };
    line(
        &ctx,
        format!(
            "{invoice_id} for order #{} over {}.{:02}, {payment}",
            evt.order_id,
            evt.total_cents / 100,
            evt.total_cents % 100
        ),
    );
    Ok(())
}
