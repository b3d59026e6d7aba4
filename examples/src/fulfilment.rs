//! The fulfilment process, a saga: an order ships once it is both placed (`OrderPlaced`, from
//! sales) and paid (`PaymentReceived`, from billing), whichever comes first; an order not paid
//! within [`PAYMENT_WINDOW`] is cancelled instead.
//!
//! Sales and billing publish on their own, and the two events reach the `fulfilment` endpoint
//! in either order, or at the same time. The saga remembers per order what it has seen (its
//! state lives in the bus's storage, [`crate::service::shop_bus`]), and when both have arrived
//! it sends `ShipOrder` to shipping and completes. The first message of an order also
//! schedules `PaymentOverdue` to the saga itself: if the instance is still running when that
//! comes due, the order was not paid in time and sales is told to cancel it. Once the saga
//! completed, the timeout finds no instance and bus-core drops it.
//!
//! Two messages of one order handled at the same moment both load the same version of its
//! state; the second to commit fails with a conflict and is retried on the state the first
//! one left (the `fulfilment` endpoint's default retries), so an order never ships twice.

use std::time::Duration;

use bus_core::{
    HandlerError, Layer, LayerFuture, Message, MessageContext, Next, Saga, SagaContext,
    SagaHandles, SendOptions,
};
use serde::{Deserialize, Serialize};

use crate::messages::{CancelOrder, OrderPlaced, PaymentOverdue, PaymentReceived, ShipOrder};
use crate::trace::{line, ShopStats};

/// How long after an order's first message its payment may arrive. Short for the demo; a
/// real shop would wait days.
pub const PAYMENT_WINDOW: Duration = Duration::from_secs(2);

/// The state of one order's fulfilment, kept in the storage between its messages.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct Fulfilment {
    /// Order number.
    pub order_id: u32,
    /// `OrderPlaced` arrived.
    pub placed: bool,
    /// `PaymentReceived` arrived.
    pub paid: bool,
}

impl Saga for Fulfilment {
    const NAME: &'static str = "shop.fulfilment.Fulfilment";
}

/// The instance an order's messages belong to.
fn instance_of(order_id: u32) -> String {
    order_id.to_string()
}

impl Fulfilment {
    /// Neither message has arrived: the instance was started by the message being handled.
    fn is_new(&self) -> bool {
        !self.placed && !self.paid
    }

    /// Ship once placed and paid; otherwise, for a new instance, open its payment window.
    async fn advance(&self, new: bool, ctx: &SagaContext) -> Result<(), HandlerError> {
        let order_id = self.order_id;
        if self.placed && self.paid {
            ctx.send(ShipOrder { order_id }).await?;
            ctx.complete();
            line(
                ctx,
                format!("order #{order_id} placed and paid -> ShipOrder"),
            );
        } else if new {
            // The window opens with whichever message comes first, so a payment that matches
            // no order (it came after the cancellation) does not keep an instance forever.
            ctx.send_with(
                PaymentOverdue { order_id },
                SendOptions::new().deliver_after(PAYMENT_WINDOW),
            )
            .await?;
            let waiting = if self.placed { "payment" } else { "the order" };
            line(
                ctx,
                format!(
                    "order #{order_id}: waiting {PAYMENT_WINDOW:?} for {waiting} -> PaymentOverdue scheduled"
                ),
            );
        }
        Ok(())
    }
}

/// Sales accepted the order.
#[bus_core::saga(endpoint = "fulfilment")]
impl SagaHandles<OrderPlaced> for Fulfilment {
    const STARTS: bool = true;

    fn correlate(message: &OrderPlaced) -> String {
        instance_of(message.order_id)
    }

    async fn handle(
        &mut self,
        message: OrderPlaced,
        ctx: &SagaContext,
    ) -> Result<(), HandlerError> {
        let new = self.is_new();
        self.order_id = message.order_id;
        self.placed = true;
        self.advance(new, ctx).await
    }
}

/// Billing received the payment.
#[bus_core::saga(endpoint = "fulfilment")]
impl SagaHandles<PaymentReceived> for Fulfilment {
    const STARTS: bool = true;

    fn correlate(message: &PaymentReceived) -> String {
        instance_of(message.order_id)
    }

    async fn handle(
        &mut self,
        message: PaymentReceived,
        ctx: &SagaContext,
    ) -> Result<(), HandlerError> {
        let new = self.is_new();
        self.order_id = message.order_id;
        self.paid = true;
        self.advance(new, ctx).await
    }
}

/// The payment window closed while the instance still runs: the order was placed and not
/// paid, or paid and never placed.
#[bus_core::saga(endpoint = "fulfilment")]
impl SagaHandles<PaymentOverdue> for Fulfilment {
    // A timeout outliving its instance (the order shipped) must not start a new one.
    const STARTS: bool = false;

    fn correlate(message: &PaymentOverdue) -> String {
        instance_of(message.order_id)
    }

    async fn handle(
        &mut self,
        message: PaymentOverdue,
        ctx: &SagaContext,
    ) -> Result<(), HandlerError> {
        let order_id = message.order_id;
        if self.paid {
            // Nothing to cancel: the order was cancelled before, or sales never accepted it.
            // A real shop would refund the payment here.
            line(
                ctx,
                format!("payment for order #{order_id} matches no placed order: refund due"),
            );
        } else {
            ctx.send(CancelOrder { order_id }).await?;
            line(
                ctx,
                format!("order #{order_id} not paid within {PAYMENT_WINDOW:?} -> CancelOrder"),
            );
        }
        ctx.complete();
        Ok(())
    }
}

/// Counts the fulfilment endpoint's timeouts as they come due, shipped orders' included
/// (the saga sees only those of running instances), so that the demo knows none is still
/// scheduled on the broker when it stops. A layer, since a command has exactly one handler.
#[derive(Clone, Debug)]
pub struct CountClosedWindows(pub ShopStats);

impl Layer for CountClosedWindows {
    fn call<'a>(&'a self, ctx: &'a MessageContext, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            let outcome = next.run(ctx).await;
            if outcome.is_ok() && ctx.headers().message_type == PaymentOverdue::NAME {
                self.0.window_closed(ctx.message_id());
            }
            outcome
        })
    }
}
