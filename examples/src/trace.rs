//! A readable trace of the flow, and the counters behind the demo's summary.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bus_core::MessageContext;

/// Counters shared by the services of one process.
#[derive(Clone, Default, Debug)]
pub struct ShopStats {
    inner: Arc<Counters>,
}

#[derive(Default, Debug)]
struct Counters {
    orders: AtomicU64,
    invoices: AtomicU64,
    parcels_prepared: AtomicU64,
    shipments: AtomicU64,
    reminders: AtomicU64,
    payments: AtomicU64,
    accepted: Mutex<BTreeSet<u32>>,
    // Sets rather than counters: what runs again (an attempt of the saga's endpoint retried
    // after a conflict, a message delivered twice) must not count twice.
    cancelled: Mutex<BTreeSet<u32>>,
    windows_closed: Mutex<BTreeSet<String>>,
}

fn locked<T>(set: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

impl ShopStats {
    /// Count an accepted order, and remember it for status requests.
    pub fn order(&self, order_id: u32) {
        self.inner.orders.fetch_add(1, Ordering::Relaxed);
        locked(&self.inner.accepted).insert(order_id);
    }
    /// Whether this process accepted the order.
    pub fn accepted(&self, order_id: u32) -> bool {
        locked(&self.inner.accepted).contains(&order_id)
    }
    /// Remember a cancelled order, for status requests.
    pub fn cancel(&self, order_id: u32) {
        locked(&self.inner.cancelled).insert(order_id);
    }
    /// Whether this process cancelled the order.
    pub fn cancelled(&self, order_id: u32) -> bool {
        locked(&self.inner.cancelled).contains(&order_id)
    }
    /// The orders this process cancelled.
    pub fn cancelled_orders(&self) -> Vec<u32> {
        locked(&self.inner.cancelled).iter().copied().collect()
    }
    /// Remember that a payment window closed: its timeout, by message id, came due.
    pub fn window_closed(&self, message_id: &str) {
        locked(&self.inner.windows_closed).insert(message_id.to_string());
    }
    /// Payment windows that closed.
    pub fn windows_closed(&self) -> u64 {
        locked(&self.inner.windows_closed).len() as u64
    }
    /// Count a payment received.
    pub fn payment(&self) {
        self.inner.payments.fetch_add(1, Ordering::Relaxed);
    }
    /// Payments received.
    pub fn payments(&self) -> u64 {
        self.inner.payments.load(Ordering::Relaxed)
    }
    /// Count a delivery reminder that came due.
    pub fn reminder(&self) {
        self.inner.reminders.fetch_add(1, Ordering::Relaxed);
    }
    /// Delivery reminders that came due.
    pub fn reminders(&self) -> u64 {
        self.inner.reminders.load(Ordering::Relaxed)
    }
    /// Count an invoice.
    pub fn invoice(&self) {
        self.inner.invoices.fetch_add(1, Ordering::Relaxed);
    }
    /// Count a prepared parcel.
    pub fn parcel(&self) {
        self.inner.parcels_prepared.fetch_add(1, Ordering::Relaxed);
    }
    /// Count a shipment.
    pub fn shipment(&self) {
        self.inner.shipments.fetch_add(1, Ordering::Relaxed);
    }
    /// Orders accepted.
    pub fn orders(&self) -> u64 {
        self.inner.orders.load(Ordering::Relaxed)
    }
    /// Invoices created.
    pub fn invoices(&self) -> u64 {
        self.inner.invoices.load(Ordering::Relaxed)
    }
    /// Parcels prepared.
    pub fn parcels(&self) -> u64 {
        self.inner.parcels_prepared.load(Ordering::Relaxed)
    }
    /// Orders shipped.
    pub fn shipments(&self) -> u64 {
        self.inner.shipments.load(Ordering::Relaxed)
    }
    /// The counters an endpoint of the shop moves, labelled, for a service's summary.
    pub fn of_endpoint(&self, endpoint: &str) -> Vec<(&'static str, u64)> {
        match endpoint {
            "sales" => vec![
                ("orders accepted", self.orders()),
                ("orders cancelled", self.cancelled_orders().len() as u64),
            ],
            "billing" => vec![("invoices", self.invoices()), ("payments", self.payments())],
            "shipping" => vec![
                ("parcels packed", self.parcels()),
                ("shipments", self.shipments()),
                ("delivery reminders", self.reminders()),
            ],
            "fulfilment" => vec![("windows closed", self.windows_closed())],
            _ => Vec::new(),
        }
    }
}

/// Print one line of the trace: endpoint, correlation id, attempt, what happened.
pub fn line(ctx: &MessageContext, what: impl std::fmt::Display) {
    println!(
        "  [{:<10}] corr={:<10} attempt={} {}",
        ctx.endpoint(),
        ctx.correlation_id().unwrap_or("-"),
        ctx.attempt(),
        what
    );
}
