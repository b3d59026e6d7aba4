use bus_core::{Command, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

#[bus_core::handler]
async fn place(cmd: PlaceOrder) -> Result<u32, HandlerError> {
    Ok(cmd.id)
}

fn main() {}
