//! The InvoiceService (endpoint `billing`) as its own process, on the configured broker.
//! Start it twice and the two instances share the work.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    bus_examples::service::run("invoice-service", &["billing"]).await
}
