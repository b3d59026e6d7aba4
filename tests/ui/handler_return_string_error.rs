use bus_core::{Command, MessageContext};
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

// `String` is not a `std::error::Error`, so it does not convert into `HandlerError`.
#[bus_core::handler]
async fn place(_cmd: PlaceOrder, _ctx: MessageContext) -> Result<(), String> {
    Ok(())
}

fn main() {}
