//! The ShippingService (endpoint `shipping`) and the fulfilment saga that tells it when to
//! ship (endpoint `fulfilment`), as one process on the configured broker.
//!
//! The saga's state is in this process's memory (`MemoryStorage`): run one shipping-service
//! at a time, since two would each see part of an order's messages, and a restart forgets
//! the orders in progress. A database's storage (`bus_postgres::PostgresStorage`) lifts both
//! limits.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    bus_examples::service::run("shipping-service", &["shipping", "fulfilment"]).await
}
