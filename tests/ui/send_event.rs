use bus_core::{Command, Event};
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "ui.OrderPlaced")]
struct OrderPlaced {
    id: u32,
}

async fn announce(bus: &bus_core::Bus) -> Result<(), bus_core::BusError> {
    bus.send(OrderPlaced { id: 1 }).await
}

fn main() {}
