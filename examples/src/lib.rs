//! The shop: three services that know each other only through messages, and a saga that
//! decides when an order ships.
//!
//! - [`sales`] (the OrderService) owns the `PlaceOrder` command and publishes `OrderPlaced`;
//!   it cancels an order on `CancelOrder`.
//! - [`billing`] (the InvoiceService) subscribes to `OrderPlaced`, publishes `InvoiceCreated`
//!   and, once paid, `PaymentReceived`.
//! - [`fulfilment`] (endpoint `fulfilment`) is a saga: an order both placed and paid, in
//!   either order, it has shipping ship (`ShipOrder`); an order not paid in time it has sales
//!   cancel (`CancelOrder`).
//! - [`shipping`] (the ShippingService) packs a parcel on `OrderPlaced` and ships on
//!   `ShipOrder`.
//!
//! The sales module does not mention billing, fulfilment or shipping: adding a subscriber
//! changes nothing upstream. [`messages`] holds the contracts (the wire names) all of them
//! share.
//!
//! The binaries: `shop` runs all the endpoints in one process (on the in-memory transport
//! unless configured otherwise); `order-service` (`sales`), `invoice-service` (`billing`) and
//! `shipping-service` (`shipping` and `fulfilment`) run as processes of their own, and
//! `place-orders` sends orders to them, all over a broker chosen by configuration
//! (`BUS_TRANSPORT`, `bus.toml`). [`service`] holds what they share, [`client`] the order
//! client, [`ops`] the HTTP endpoints a service serves for Prometheus and for probes
//! (`/metrics`, `/healthz`, `/readyz`) when `BUS_METRICS_ADDR` is set.

pub mod billing;
pub mod client;
pub mod fulfilment;
pub mod messages;
pub mod ops;
pub mod sales;
pub mod service;
pub mod shipping;
pub mod trace;

/// The code blocks of the page on sagas, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/sagas.md")]
pub struct SagasDoctests;
