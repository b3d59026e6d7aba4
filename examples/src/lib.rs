//! The shop: three services that know each other only through messages.
//!
//! - [`sales`] (the OrderService) owns the `PlaceOrder` command and publishes `OrderPlaced`.
//! - [`billing`] (the InvoiceService) subscribes to `OrderPlaced` and publishes `InvoiceCreated`.
//! - [`shipping`] (the ShippingService) subscribes to both events and ships invoiced orders.
//!
//! The sales module does not mention billing or shipping: adding a subscriber changes nothing
//! upstream. [`messages`] holds the contracts (the wire names) all of them share.
//!
//! The binaries: `shop` runs the three services in one process (on the in-memory transport
//! unless configured otherwise); `order-service`, `invoice-service` and `shipping-service` run
//! one service each as its own process, and `place-orders` sends orders to them, all over a
//! broker chosen by configuration (`BUS_TRANSPORT`, `bus.toml`). [`service`] holds what they
//! share, [`client`] the order client, [`ops`] the HTTP endpoints a service serves for
//! Prometheus and for probes (`/metrics`, `/healthz`, `/readyz`) when `BUS_METRICS_ADDR` is
//! set.

pub mod billing;
pub mod client;
pub mod messages;
pub mod ops;
pub mod sales;
pub mod service;
pub mod shipping;
pub mod trace;
