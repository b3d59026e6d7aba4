use bus_core::{Command, HandlerError, MessageContext};
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

#[bus_core::handler]
fn place(_cmd: PlaceOrder, _ctx: MessageContext) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
