//! Sends orders to the order-service instances on the configured broker.
//! `place-orders --help` lists the options.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    bus_examples::client::run("place-orders", std::env::args().skip(1)).await
}
