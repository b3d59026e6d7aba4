use bus_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

async fn place(bus: &bus_core::Bus) -> Result<(), bus_core::BusError> {
    bus.publish(PlaceOrder { id: 1 }).await
}

fn main() {}
