//! The OrderService (endpoint `sales`) as its own process, on the configured broker.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    bus_examples::service::run("order-service", &["sales"]).await
}
