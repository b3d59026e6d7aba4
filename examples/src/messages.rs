//! Message contracts of the shop. Wire names are explicit, so renaming a Rust type never
//! changes what travels between services.

use bus_core::{Command, Event};
use serde::{Deserialize, Serialize};

/// A customer places an order. Owned by the sales endpoint.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "shop.sales.PlaceOrder", endpoint = "sales")]
pub struct PlaceOrder {
    /// Order number.
    pub order_id: u32,
    /// Customer name.
    pub customer: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Items ordered.
    pub quantity: u32,
    /// Price of one item, in cents.
    pub unit_price_cents: u64,
}

/// Sales accepted an order.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "shop.sales.OrderPlaced")]
pub struct OrderPlaced {
    /// Order number.
    pub order_id: u32,
    /// Customer name.
    pub customer: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Items ordered.
    pub quantity: u32,
    /// Order total, in cents.
    pub total_cents: u64,
}

/// Billing issued an invoice for an order.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "shop.billing.InvoiceCreated")]
pub struct InvoiceCreated {
    /// Invoice number.
    pub invoice_id: String,
    /// Order number.
    pub order_id: u32,
    /// Amount, in cents.
    pub amount_cents: u64,
}

/// Billing received the payment of an order's invoice.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "shop.billing.PaymentReceived")]
pub struct PaymentReceived {
    /// Order number.
    pub order_id: u32,
    /// Amount paid, in cents.
    pub amount_cents: u64,
}

/// Fulfilment tells shipping to ship an order that is placed and paid. Owned by shipping.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "shop.shipping.ShipOrder", endpoint = "shipping")]
pub struct ShipOrder {
    /// Order number.
    pub order_id: u32,
}

/// Fulfilment gives up on an order whose payment did not arrive in time. Owned by sales.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "shop.sales.CancelOrder", endpoint = "sales")]
pub struct CancelOrder {
    /// Order number.
    pub order_id: u32,
}

/// The fulfilment saga's timeout: the payment window of an order closed. Scheduled by the
/// saga to itself when an order's fulfilment starts.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "shop.fulfilment.PaymentOverdue", endpoint = "fulfilment")]
pub struct PaymentOverdue {
    /// Order number.
    pub order_id: u32,
}

/// Shipping sent an order on its way.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "shop.shipping.OrderShipped")]
pub struct OrderShipped {
    /// Order number.
    pub order_id: u32,
    /// Parcel tracking number.
    pub tracking: String,
}

/// The client asks sales where an order stands: a request, answered with [`OrderStatus`].
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "shop.sales.GetOrderStatus", endpoint = "sales", response = OrderStatus)]
pub struct GetOrderStatus {
    /// Order number.
    pub order_id: u32,
}

/// Where an order stands, as sales knows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OrderStatus {
    /// Order number.
    pub order_id: u32,
    /// `accepted`, `cancelled` (not paid in time), or `unknown` for an order sales has not
    /// accepted.
    pub state: String,
}

/// Shipping reminds itself to check on a delivery: scheduled when the order ships.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "shop.shipping.RemindDelivery", endpoint = "shipping")]
pub struct RemindDelivery {
    /// Order number.
    pub order_id: u32,
    /// Parcel tracking number.
    pub tracking: String,
}
