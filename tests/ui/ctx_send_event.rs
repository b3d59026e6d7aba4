use bus_core::{Command, Event, HandlerError, MessageContext};
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

#[bus_core::handler]
async fn place(cmd: PlaceOrder, ctx: MessageContext) -> Result<(), HandlerError> {
    ctx.send(OrderPlaced { id: cmd.id }).await?;
    Ok(())
}

fn main() {}
