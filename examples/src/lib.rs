//! The shop: three services that know each other only through messages.
//!
//! - [`sales`] (the OrderService) owns the `PlaceOrder` command and publishes `OrderPlaced`.
//! - [`billing`] (the InvoiceService) subscribes to `OrderPlaced` and publishes `InvoiceCreated`.
//! - [`shipping`] (the ShippingService) subscribes to both events and ships invoiced orders.
//!
//! The sales module does not mention billing or shipping: adding a subscriber changes nothing
//! upstream. [`messages`] holds the contracts (the wire names) all of them share.

pub mod billing;
pub mod messages;
pub mod sales;
pub mod shipping;
pub mod trace;
