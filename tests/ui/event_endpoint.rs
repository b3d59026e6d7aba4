use bus_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "ui.OrderPlaced", endpoint = "x")]
struct OrderPlaced {
    id: u32,
}

fn main() {}
