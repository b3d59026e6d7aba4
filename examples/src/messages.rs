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
    /// `accepted`, or `unknown` for an order sales has not accepted.
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
