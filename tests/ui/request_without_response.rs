use bus_core::{Bus, Command};
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

async fn ask(bus: Bus) {
    let _ = bus.request(PlaceOrder { id: 1 }).await;
}

fn main() {}
