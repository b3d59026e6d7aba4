use bus_core::{Command, MessageContext};
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

#[bus_core::handler]
async fn place(_cmd: PlaceOrder, _ctx: MessageContext) -> Option<()> {
    Some(())
}

fn main() {}
