use bus_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(nme = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

fn main() {}
