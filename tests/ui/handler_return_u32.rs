use bus_core::{Command, MessageContext};
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

#[bus_core::handler]
async fn place(cmd: PlaceOrder, _ctx: MessageContext) -> u32 {
    cmd.id
}

fn main() {}
