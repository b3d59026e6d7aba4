#[bus_core::handler]
struct Sales;

fn main() {}
